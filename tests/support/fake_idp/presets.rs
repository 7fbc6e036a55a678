//! Discovery documents, users and keys shaped like real providers', all on
//! the fake's own address (`{base}` = `http://127.0.0.1:PORT`). Each vendor
//! module names the published documents its field set was copied from
//! (hosts replaced by `{base}`, long vendor scope lists shortened).

mod auth0;
mod keycloak;
mod microsoft;
mod okta;

use serde_json::{Map, Value, json};

use super::FakeOptions;
use super::routes::with_base;

/// A made-up Entra tenant id (a GUID, as Entra's `tid` always is).
pub const ENTRA_TENANT_ID: &str = "3f2a8c1e-5b7d-4e69-9a0b-c1d2e3f4a5b6";

/// A real provider's document shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// Shaped like node `oidc-provider` (the real test provider): issuer at
    /// the root, `/auth`, `/token`, `/me`, `/jwks`, `/session/end`, `iss` in
    /// the authorization response.
    Generic,
    /// Okta org authorization server: issuer `{base}`, `/oauth2/v1/…`.
    OktaOrg,
    /// Okta custom authorization server `default`: issuer `{base}/oauth2/default`.
    OktaCustom,
    /// Entra ID v2.0, single tenant: issuer `{base}/{ENTRA_TENANT_ID}/v2.0`.
    EntraTenant,
    /// Entra ID v2.0 `/common/v2.0`: issuer `{base}/{tenantid}/v2.0` (template).
    EntraCommon,
    /// Entra ID v2.0 `/organizations/v2.0`: issuer template as for common.
    EntraOrganizations,
    /// AD FS: issuer `{base}/adfs`.
    Adfs,
    /// Auth0: issuer `{base}/` (trailing slash).
    Auth0,
    /// Keycloak realm `ssogate`: issuer `{base}/realms/ssogate`.
    Keycloak,
}

pub(super) fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

pub(super) fn map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// The Entra ID token "groups overage" claims: instead of `groups`, a
/// pointer to where they can be fetched (Microsoft identity platform,
/// "Groups overage claim"). `{base}` is replaced when served.
pub fn groups_overage_claims(tenant_id: &str, object_id: &str) -> Map<String, Value> {
    map(json!({
        "_claim_names": { "groups": "src1" },
        "_claim_sources": {
            "src1": {
                "endpoint": format!("{{base}}/{tenant_id}/users/{object_id}/getMemberObjects")
            }
        }
    }))
}

/// The served document for `opts` at `base`.
pub(super) fn document(opts: &FakeOptions, base: &str) -> Map<String, Value> {
    let url = |path: &str| Value::from(format!("{base}{path}"));
    let mut doc = Map::new();
    doc.insert(
        "issuer".into(),
        Value::from(opts.issuer.replace("{base}", base)),
    );
    doc.insert(
        "authorization_endpoint".into(),
        url(&opts.authorization_path),
    );
    doc.insert("token_endpoint".into(), url(&opts.token_path));
    if let Some(p) = &opts.userinfo_path {
        doc.insert("userinfo_endpoint".into(), url(p));
    }
    doc.insert("jwks_uri".into(), url(&opts.jwks_path));
    if let Some(p) = &opts.end_session_path {
        doc.insert("end_session_endpoint".into(), url(p));
    }
    let lists = [
        ("response_types_supported", &opts.response_types_supported),
        ("subject_types_supported", &opts.subject_types_supported),
        (
            "id_token_signing_alg_values_supported",
            &opts.id_token_signing_algs,
        ),
        ("scopes_supported", &opts.scopes_supported),
        (
            "token_endpoint_auth_methods_supported",
            &opts.token_endpoint_auth_methods,
        ),
    ];
    for (name, values) in lists {
        doc.insert(name.into(), Value::from(values.clone()));
    }
    for (k, v) in &opts.extra {
        doc.insert(k.clone(), with_base(v, base));
    }
    doc
}

/// Sets everything `preset` decides; the client and TLS stay.
pub(super) fn apply(o: &mut FakeOptions, preset: Preset) {
    o.preset = preset;
    o.response_types_supported = strings(&["code"]);
    o.subject_types_supported = strings(&["public"]);
    o.id_token_signing_algs = strings(&["RS256"]);
    match preset {
        Preset::Generic => generic(o),
        Preset::OktaOrg => okta::okta(o, ""),
        Preset::OktaCustom => okta::okta(o, "/oauth2/default"),
        Preset::EntraTenant => microsoft::entra(o, ENTRA_TENANT_ID, false),
        Preset::EntraCommon => microsoft::entra(o, "common", true),
        Preset::EntraOrganizations => microsoft::entra(o, "organizations", true),
        Preset::Adfs => microsoft::adfs(o),
        Preset::Auth0 => auth0::auth0(o),
        Preset::Keycloak => keycloak::keycloak(o),
    }
}

pub(super) fn paths(
    o: &mut FakeOptions,
    issuer_path: &str,
    endpoints: [&str; 3],
    userinfo: &str,
    end_session: &str,
) {
    o.issuer_path = issuer_path.to_owned();
    o.issuer = format!("{{base}}{issuer_path}");
    o.authorization_path = endpoints[0].to_owned();
    o.token_path = endpoints[1].to_owned();
    o.jwks_path = endpoints[2].to_owned();
    o.userinfo_path = Some(userinfo.to_owned());
    o.end_session_path = Some(end_session.to_owned());
}

fn generic(o: &mut FakeOptions) {
    paths(o, "", ["/auth", "/token", "/jwks"], "/me", "/session/end");
    o.token_endpoint_auth_methods = strings(&["client_secret_basic", "client_secret_post"]);
    o.scopes_supported = strings(&["openid", "offline_access", "profile", "email"]);
    o.extra = map(json!({
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "response_modes_supported": ["form_post", "fragment", "query"],
        "code_challenge_methods_supported": ["S256"],
        "claims_parameter_supported": false,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "authorization_response_iss_parameter_supported": true,
        "claims_supported": ["sub", "email", "email_verified", "name", "preferred_username",
            "acr", "auth_time", "iss", "sid"],
    }));
    o.behaviour.authorize_iss = true;
}
