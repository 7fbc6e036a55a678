//! The preflight of `ssogate check-config`: what the loaded discovery
//! document, the keys and the provider's clock say about the configuration,
//! one finding per line, each problem with its fix. Pure: the network part
//! (discovery, keys, the `Date` header) is done by the caller.

use openidconnect::ResponseTypes;
use openidconnect::core::{CoreClientAuthMethod, CoreResponseType};

use super::Settings;
use super::discovery::Loaded;
use super::quirks::Quirks;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warning,
    Error,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub text: String,
}

impl Finding {
    fn ok(text: impl Into<String>) -> Self {
        Self {
            level: Level::Ok,
            text: text.into(),
        }
    }

    fn warn(what: impl std::fmt::Display, fix: impl std::fmt::Display) -> Self {
        Self {
            level: Level::Warning,
            text: format!("{what}; fix: {fix}"),
        }
    }

    fn error(what: impl std::fmt::Display, fix: impl std::fmt::Display) -> Self {
        Self {
            level: Level::Error,
            text: format!("{what}; fix: {fix}"),
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.level {
            Level::Ok => write!(f, "ok: {}", self.text),
            Level::Warning => write!(f, "warning: {}", self.text),
            Level::Error => write!(f, "error: {}", self.text),
        }
    }
}

/// Everything the document (`doc`, as served, for what openidconnect does
/// not model) and the clock say; `clock_skew` is the provider's `Date`
/// minus ours, in seconds, when it sent one.
pub fn findings(
    settings: &Settings,
    loaded: &Loaded,
    doc: &serde_json::Value,
    clock_skew: Option<i64>,
) -> Vec<Finding> {
    let meta = &loaded.metadata;
    let mut out = vec![Finding::ok(format!(
        "provider {} answered discovery; {} usable signing keys",
        meta.issuer().as_str(),
        loaded.keys.len()
    ))];
    if loaded.keys.is_empty() {
        out.push(Finding::error(
            "the provider publishes no usable signing key (RSA, EC P-256/P-384 or Ed25519 with use=sig)",
            "check the provider's jwks_uri; symmetric keys are never accepted",
        ));
    }
    let code = ResponseTypes::new(vec![CoreResponseType::Code]);
    if !meta.response_types_supported().contains(&code) {
        out.push(Finding::error(
            "the provider does not list the authorization-code flow (response type `code`)",
            "enable the authorization code grant for this application",
        ));
    }
    if doc
        .get("code_challenge_methods_supported")
        .and_then(|m| m.as_array())
        .is_some_and(|m| !m.iter().any(|x| x == "S256"))
    {
        out.push(Finding::error(
            "the provider does not list PKCE S256, which the gate always sends",
            "enable PKCE (S256) for this application",
        ));
    }
    if let Some(methods) = meta.token_endpoint_auth_methods_supported() {
        let secret = [
            CoreClientAuthMethod::ClientSecretBasic,
            CoreClientAuthMethod::ClientSecretPost,
        ];
        if !methods.iter().any(|m| secret.contains(m)) {
            out.push(Finding::error(
                "the provider lists neither client_secret_basic nor client_secret_post",
                "make the application a confidential client authenticated by client secret",
            ));
        }
    }
    out.extend(refresh(settings, loaded));
    out.extend(clock(settings, clock_skew));
    out.extend(profile(settings, loaded));
    out.push(Finding::ok(match &loaded.end_session {
        Some(url) => format!("sign-out also ends the provider session at {url}"),
        None => {
            "the provider has no end_session_endpoint: sign-out ends the gate's session only".into()
        }
    }));
    out
}

fn refresh(settings: &Settings, loaded: &Loaded) -> Vec<Finding> {
    let meta = &loaded.metadata;
    let Some(configured) = &settings.token_endpoint else {
        return vec![Finding::ok(
            "CT_SSO_TOKEN_ENDPT is not set: sessions end when their tokens expire (users sign in again)",
        )];
    };
    let mut out = Vec::new();
    match meta.token_endpoint() {
        Some(discovered) if discovered.url() == configured => out.push(Finding::ok(format!(
            "sessions are refreshed at {configured}, the discovery document's token_endpoint"
        ))),
        Some(discovered) => out.push(Finding::warn(
            format!(
                "CT_SSO_TOKEN_ENDPT is {configured}, but the discovery document's token_endpoint is {}",
                discovered.url()
            ),
            format!("set CT_SSO_TOKEN_ENDPT={}", discovered.url()),
        )),
        None => out.push(Finding::warn(
            "the discovery document names no token_endpoint",
            "check CT_SSO_AUTHORIZATION_ENDPT",
        )),
    }
    let listed = meta
        .scopes_supported()
        .map(|l| l.iter().any(|s| s.as_str() == "offline_access"));
    let asked = settings.scopes.iter().any(|s| s == "offline_access");
    match (listed, asked) {
        (Some(false), _) => out.push(Finding::ok(
            "the provider lists no offline_access scope, so the gate does not request it (AD FS issues refresh tokens without it)",
        )),
        (_, false) => out.push(Finding::warn(
            "refresh is on but CT_SSO_SCOPES lacks offline_access: most providers then issue no refresh token",
            "add offline_access to CT_SSO_SCOPES",
        )),
        _ => out.push(Finding::ok("offline_access is requested and supported")),
    }
    if let Some(grants) = meta.grant_types_supported()
        && !grants.iter().any(|g| g.as_ref() == "refresh_token")
    {
        out.push(Finding::warn(
            "the provider does not list the refresh_token grant",
            "enable refresh tokens for this application, or unset CT_SSO_TOKEN_ENDPT",
        ));
    }
    out
}

fn clock(settings: &Settings, skew: Option<i64>) -> Option<Finding> {
    let skew = skew?;
    let leeway = i64::try_from(settings.leeway.as_secs()).unwrap_or(i64::MAX);
    Some(if skew.abs() > leeway {
        Finding::error(
            format!(
                "the provider's clock is {} s {} this machine's, more than CT_SSO_LEEWAY ({leeway} s): tokens will be refused",
                skew.abs(),
                if skew > 0 { "ahead of" } else { "behind" }
            ),
            "synchronise this machine's clock (NTP), or raise CT_SSO_LEEWAY",
        )
    } else {
        Finding::ok(format!(
            "the provider's clock is within {} s of this machine's",
            skew.abs()
        ))
    })
}

fn profile(settings: &Settings, loaded: &Loaded) -> Vec<Finding> {
    let host = settings.issuer.host_str().unwrap_or_default();
    let path = settings.issuer.path();
    let entra = host.ends_with("login.microsoftonline.com") || host.ends_with("microsoftonline.us");
    let adfs = path.trim_end_matches('/').ends_with("/adfs");
    let mut out = Vec::new();
    match settings.quirks {
        Quirks::Microsoft => {
            if !entra && !adfs {
                out.push(Finding::warn(
                    "CT_SSO_PROVIDER=MICROSOFT but the issuer looks like neither Entra ID nor AD FS",
                    "check CT_SSO_AUTHORIZATION_ENDPT, or unset CT_SSO_PROVIDER",
                ));
            }
            if loaded.issuer.is_template() {
                out.push(if settings.allowed_tenants.is_empty() {
                    Finding::warn(
                        "the multi-tenant issuer lets users of any Entra tenant sign in",
                        "set CT_SSO_ALLOWED_TENANTS to your tenant id(s), or use the tenant's own issuer",
                    )
                } else {
                    Finding::ok(format!(
                        "multi-tenant issuer; tenants allowed: {}",
                        settings.allowed_tenants.join(", ")
                    ))
                });
            }
            if settings.email_fallback.is_empty() && !adfs {
                out.push(Finding::warn(
                    "Entra ID often sends no email claim, so X-Forwarded-Email may be missing",
                    "add the email optional claim at Entra, or set CT_SSO_EMAIL_FALLBACK=upn,preferred_username",
                ));
            }
        }
        Quirks::Okta => {
            if !path.contains("/oauth2/") {
                out.push(Finding::ok(
                    "Okta org authorization server; for API access tokens use a custom server (https://{domain}/oauth2/default)",
                ));
            }
        }
        Quirks::Generic if entra || adfs => out.push(Finding::warn(
            "the issuer looks like Microsoft Entra ID or AD FS",
            "set CT_SSO_PROVIDER=MICROSOFT",
        )),
        Quirks::Generic => {}
    }
    out
}

#[cfg(test)]
mod tests;
