//! What differs between providers, in one place: how the issuer is matched,
//! which tenants are accepted, and where identity claims come from when the
//! standard ones are missing. See the README's compatibility table.

use serde::Deserialize;

use crate::identity::Identity;

/// A provider's quirks, chosen by `CT_SSO_PROVIDER`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quirks {
    Generic,
    /// Okta org and custom authorization servers: standard OpenID Connect;
    /// the value is accepted for CodeTogether compatibility.
    Okta,
    /// Microsoft Entra ID (v2.0, single- or multi-tenant) and AD FS.
    Microsoft,
}

/// The placeholder Entra ID puts in the issuer of its multi-tenant documents.
pub const TENANT_PLACEHOLDER: &str = "{tenantid}";

/// How the `iss` of a token is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IssuerRule {
    /// Exactly the issuer of the discovery document.
    Exact(String),
    /// Entra ID multi-tenant (`…/common/v2.0`, `…/organizations/v2.0`): the
    /// document's issuer is a template, filled with the token's `tid`.
    TenantTemplate(String),
}

impl IssuerRule {
    /// Chooses the rule after discovery. The discovered issuer must be the
    /// configured one (a trailing slash either way does not matter: Auth0's
    /// issuer ends in `/`, operators often leave it off), except for a
    /// Microsoft multi-tenant template.
    pub fn for_discovery(
        configured: &str,
        discovered: &str,
        quirks: Quirks,
    ) -> Result<Self, String> {
        let template =
            discovered.contains(TENANT_PLACEHOLDER) || discovered.contains("%7Btenantid%7D");
        if quirks == Quirks::Microsoft && template {
            return Ok(IssuerRule::TenantTemplate(
                discovered.replace("%7Btenantid%7D", TENANT_PLACEHOLDER),
            ));
        }
        if configured.trim_end_matches('/') == discovered.trim_end_matches('/') && !template {
            return Ok(IssuerRule::Exact(discovered.to_string()));
        }
        if template {
            return Err(format!(
                "the discovery document's issuer `{discovered}` is a multi-tenant template: set CT_SSO_PROVIDER=MICROSOFT"
            ));
        }
        Err(format!(
            "the discovery document names issuer `{discovered}`, not `{configured}`"
        ))
    }

    /// Whether a token's `iss` (with its `tid`) is acceptable.
    pub fn accepts(&self, iss: &str, tid: Option<&str>) -> bool {
        match self {
            IssuerRule::Exact(expected) => iss == expected,
            IssuerRule::TenantTemplate(template) => match tid {
                Some(tid) if is_tenant_id(tid) => iss == template.replace(TENANT_PLACEHOLDER, tid),
                _ => false,
            },
        }
    }

    pub fn is_template(&self) -> bool {
        matches!(self, IssuerRule::TenantTemplate(_))
    }
}

/// A tenant id is a GUID (or, for some national clouds, a simple name): never
/// anything that could change the issuer's structure.
pub fn is_tenant_id(tid: &str) -> bool {
    !tid.is_empty()
        && tid.len() <= 64
        && tid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Tenant restriction (`CT_SSO_ALLOWED_TENANTS`): empty allows any.
pub fn tenant_allowed(allowed: &[String], tid: Option<&str>) -> bool {
    allowed.is_empty() || tid.is_some_and(|t| allowed.iter().any(|a| a.eq_ignore_ascii_case(t)))
}

/// Claims `CT_SSO_EMAIL_FALLBACK` may name.
pub const EMAIL_FALLBACK_CLAIMS: &[&str] = &["preferred_username", "upn", "unique_name"];

/// Claims read for quirks, besides the standard ones.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Extra {
    #[serde(default)]
    pub sid: Option<String>,
    #[serde(default)]
    pub tid: Option<String>,
    #[serde(default)]
    pub upn: Option<String>,
    #[serde(default)]
    pub unique_name: Option<String>,
    #[serde(default)]
    pub preferred_username: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
}

impl Extra {
    fn claim(&self, name: &str) -> Option<&String> {
        match name {
            "upn" => self.upn.as_ref(),
            "unique_name" => self.unique_name.as_ref(),
            "preferred_username" => self.preferred_username.as_ref(),
            "email" => self.email.as_ref(),
            _ => None,
        }
    }
}

/// Fills what the standard claims left out: with MICROSOFT, the preferred
/// username from `upn` or `unique_name` (AD FS sends no
/// `preferred_username`); for every provider, the email from the claims
/// listed in `CT_SSO_EMAIL_FALLBACK` (Entra ID often omits `email`).
pub fn fill_identity(
    identity: &mut Identity,
    extra: &Extra,
    quirks: Quirks,
    email_fallback: &[String],
) {
    if identity.preferred_username.is_none() && quirks == Quirks::Microsoft {
        identity.preferred_username = extra.upn.clone().or_else(|| extra.unique_name.clone());
    }
    if identity.email.is_none() {
        identity.email = email_fallback
            .iter()
            .find_map(|name| {
                if name == "preferred_username" {
                    identity
                        .preferred_username
                        .as_ref()
                        .or_else(|| extra.claim(name))
                } else {
                    extra.claim(name)
                }
            })
            .cloned();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";

    #[test]
    fn issuer_rules() {
        let exact = IssuerRule::for_discovery(
            "https://a.auth0.com",
            "https://a.auth0.com/",
            Quirks::Generic,
        )
        .unwrap();
        assert!(exact.accepts("https://a.auth0.com/", None));
        assert!(
            !exact.accepts("https://a.auth0.com", None),
            "tokens carry exactly the discovered issuer"
        );
        assert!(
            IssuerRule::for_discovery("https://idp", "https://other", Quirks::Generic).is_err()
        );
        let tpl = "https://login.microsoftonline.com/{tenantid}/v2.0";
        assert!(
            IssuerRule::for_discovery(
                "https://login.microsoftonline.com/common/v2.0",
                tpl,
                Quirks::Generic
            )
            .is_err()
        );
        let rule = IssuerRule::for_discovery(
            "https://login.microsoftonline.com/common/v2.0",
            tpl,
            Quirks::Microsoft,
        )
        .unwrap();
        assert!(rule.accepts(
            &format!("https://login.microsoftonline.com/{TID}/v2.0"),
            Some(TID)
        ));
        assert!(!rule.accepts(
            &format!("https://login.microsoftonline.com/{TID}/v2.0"),
            Some("other")
        ));
        assert!(!rule.accepts("https://login.microsoftonline.com/x/v2.0", None));
        assert!(!rule.accepts("https://evil.example/v2.0", Some("../../evil.example")));
    }

    #[test]
    fn tenants_and_fallbacks() {
        assert!(tenant_allowed(&[], None));
        assert!(tenant_allowed(&[TID.to_uppercase()], Some(TID)));
        assert!(!tenant_allowed(&[TID.into()], Some("other")));
        assert!(!tenant_allowed(&[TID.into()], None));
        let extra = Extra {
            upn: Some("a@corp.example".into()),
            ..Default::default()
        };
        let mut id = Identity {
            sub: "s".into(),
            ..Default::default()
        };
        fill_identity(
            &mut id,
            &extra,
            Quirks::Microsoft,
            &["preferred_username".into()],
        );
        assert_eq!(id.preferred_username.as_deref(), Some("a@corp.example"));
        assert_eq!(id.email.as_deref(), Some("a@corp.example"));
        let mut generic = Identity {
            sub: "s".into(),
            ..Default::default()
        };
        fill_identity(&mut generic, &extra, Quirks::Generic, &[]);
        assert_eq!(
            generic,
            Identity {
                sub: "s".into(),
                ..Default::default()
            },
            "nothing invented unless configured"
        );
    }
}
