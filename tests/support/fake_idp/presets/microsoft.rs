//! Microsoft Entra ID v2.0 and AD FS.
//!
//! Entra, tenant-specific `https://login.microsoftonline.com/{tid}/v2.0`: the
//! "Azure AD" document in redpanda-data/redpanda
//! `src/v/security/tests/jwt_test.cc` (also Azure SDK test recordings).
//! Multi-tenant `/common/v2.0` and `/organizations/v2.0`: panva/wellknown
//! `issuers/entra-common/entra-common.mjs` and
//! `issuers/entra-organizations/entra-organizations.mjs`: the issuer is the
//! literal template `https://login.microsoftonline.com/{tenantid}/v2.0`,
//! `tenant_region_scope` is null, and every JWKS entry carries that template
//! as `issuer` (and no `alg`). The userinfo endpoint really is
//! `https://graph.microsoft.com/oidc/userinfo`.
//!
//! AD FS 2016+: the example document in Microsoft Learn "AD FS OpenID
//! Connect/OAuth single log-out" (windowsserverdocs `ad-fs-logout-openid-connect`)
//! and the "AD-FS example" in redpanda's `jwt_test.cc`: issuer
//! `https://{host}/adfs`, endpoints with trailing slashes,
//! `access_token_issuer` `http://{host}/adfs/services/trust`, no
//! `offline_access` scope.

use serde_json::{Value, json};

use super::{ENTRA_TENANT_ID, map, paths, strings};
use crate::support::fake_idp::{FakeOptions, FakeUser, PublishedKey, SigningKey};

/// A made-up Entra object id for the default user.
const ENTRA_OBJECT_ID: &str = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a";

/// Entra ID v2.0 for `tenant` (a tenant id, `common` or `organizations`).
pub(super) fn entra(o: &mut FakeOptions, tenant: &str, multi_tenant: bool) {
    let t = format!("/{tenant}");
    paths(
        o,
        &format!("{t}/v2.0"),
        [
            &format!("{t}/oauth2/v2.0/authorize"),
            &format!("{t}/oauth2/v2.0/token"),
            &format!("{t}/discovery/v2.0/keys"),
        ],
        // Really https://graph.microsoft.com/oidc/userinfo.
        "/oidc/userinfo",
        &format!("{t}/oauth2/v2.0/logout"),
    );
    if multi_tenant {
        o.issuer = "{base}/{tenantid}/v2.0".to_owned();
    }
    o.response_types_supported = strings(&["code", "id_token", "code id_token", "id_token token"]);
    o.subject_types_supported = strings(&["pairwise"]);
    o.scopes_supported = strings(&["openid", "profile", "email", "offline_access"]);
    o.token_endpoint_auth_methods = strings(&[
        "client_secret_post",
        "private_key_jwt",
        "client_secret_basic",
    ]);
    o.extra = map(json!({
        "response_modes_supported": ["query", "fragment", "form_post"],
        "request_uri_parameter_supported": false,
        "device_authorization_endpoint": format!("{{base}}{t}/oauth2/v2.0/devicecode"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
            "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr",
            "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
        "kerberos_endpoint": format!("{{base}}{t}/kerberos"),
        "tenant_region_scope": if multi_tenant { Value::Null } else { Value::from("WW") },
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    }));
    // Entra publishes no `alg`; each key names the issuer it signs for.
    let key_issuer = if multi_tenant {
        "{base}/{tenantid}/v2.0".to_owned()
    } else {
        format!("{{base}}/{ENTRA_TENANT_ID}/v2.0")
    };
    let mut key = PublishedKey::new(SigningKey::Rsa1).alg(None);
    key.extra = map(json!({ "x5t": "k1", "issuer": key_issuer }));
    o.behaviour.keys = vec![key];
    let mut user = FakeUser::new("alice");
    // Pairwise, per application; no `email` unless configured as optional claim.
    user.sub = "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ".to_owned();
    user.email = None;
    user.preferred_username = Some("alice@contoso.example".to_owned());
    user.tid = Some(ENTRA_TENANT_ID.to_owned());
    user.extra = map(json!({ "oid": ENTRA_OBJECT_ID, "ver": "2.0" }));
    o.behaviour.user = user;
}

pub(super) fn adfs(o: &mut FakeOptions) {
    paths(
        o,
        "/adfs",
        [
            "/adfs/oauth2/authorize/",
            "/adfs/oauth2/token/",
            "/adfs/discovery/keys",
        ],
        "/adfs/userinfo",
        "/adfs/oauth2/logout",
    );
    o.token_endpoint_auth_methods = strings(&[
        "client_secret_post",
        "client_secret_basic",
        "private_key_jwt",
        "windows_client_authentication",
    ]);
    o.response_types_supported = strings(&[
        "code",
        "id_token",
        "code id_token",
        "id_token token",
        "code token",
        "code id_token token",
    ]);
    o.subject_types_supported = strings(&["pairwise"]);
    // AD FS lists no offline_access: refresh tokens come with `openid`.
    o.scopes_supported = strings(&[
        "allatclaims",
        "openid",
        "email",
        "aza",
        "user_impersonation",
        "profile",
        "logon_cert",
        "winhello_cert",
        "vpn_cert",
    ]);
    o.extra = map(json!({
        "response_modes_supported": ["query", "fragment", "form_post"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials",
            "urn:ietf:params:oauth:grant-type:jwt-bearer", "implicit", "password",
            "srv_challenge", "urn:ietf:params:oauth:grant-type:device_code", "device_code"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256"],
        "access_token_issuer": "{base}/adfs/services/trust",
        "claims_supported": ["aud", "iss", "iat", "exp", "auth_time", "nonce", "at_hash",
            "c_hash", "sub", "upn", "unique_name", "pwd_url", "pwd_exp", "mfa_auth_time", "sid",
            "nbf"],
        "microsoft_multi_refresh_token": true,
        "capabilities": ["kdf_ver2"],
        "as_access_token_token_binding_supported": true,
        "as_refresh_token_token_binding_supported": true,
        "resource_access_token_token_binding_supported": true,
        "op_id_token_token_binding_supported": true,
        "rp_id_token_token_binding_supported": true,
        "frontchannel_logout_supported": true,
        "frontchannel_logout_session_supported": true,
        "device_authorization_endpoint": "{base}/adfs/oauth2/devicecode",
    }));
    let mut key = PublishedKey::new(SigningKey::Rsa1);
    key.extra = map(json!({ "x5t": "k1" }));
    o.behaviour.keys = vec![key];
    let client_id = o.client_id.clone();
    let mut user = FakeUser::new("alice");
    user.sub = "q3kU9Cz3HKp2R6fDz0dDMPSd3Gn7bJ6Zx1xwYdqH1Hs=".to_owned();
    user.email = None;
    user.name = None;
    user.preferred_username = None;
    user.upn = Some("alice@contoso.example".to_owned());
    user.extra = map(json!({
        "unique_name": "CONTOSO\\alice",
        "apptype": "Confidential",
        "appid": client_id,
        "authmethod": "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport",
        "ver": "1.0",
        "scp": "openid",
    }));
    o.behaviour.user = user;
}
