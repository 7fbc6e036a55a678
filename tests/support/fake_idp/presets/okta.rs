//! Okta org (`https://{org}.okta.com`, `/oauth2/v1/…`) and custom
//! (`https://{org}.okta.com/oauth2/{server}`, `{issuer}/v1/…`) authorization
//! servers. Shape: the documents in redpanda-data/redpanda
//! `src/v/security/tests/jwt_test.cc` ("Okta example") and alerta/alerta
//! `tests/test_auth.py` (`test_openid_okta`); developer.okta.com "OpenID
//! Connect & OAuth 2.0 API" (`/.well-known/openid-configuration`).

use serde_json::json;

use super::{map, paths, strings};
use crate::support::fake_idp::{FakeOptions, FakeUser};

/// Okta org (`server` = "") or custom (`/oauth2/default`) authorization server.
pub(super) fn okta(o: &mut FakeOptions, server: &str) {
    let v1 = if server.is_empty() {
        "/oauth2/v1".to_owned()
    } else {
        format!("{server}/v1")
    };
    let ep = |name: &str| format!("{v1}/{name}");
    paths(
        o,
        server,
        [&ep("authorize"), &ep("token"), &ep("keys")],
        &ep("userinfo"),
        &ep("logout"),
    );
    o.response_types_supported = strings(&[
        "code",
        "id_token",
        "code id_token",
        "code token",
        "id_token token",
        "code id_token token",
    ]);
    o.token_endpoint_auth_methods = strings(&[
        "client_secret_basic",
        "client_secret_post",
        "client_secret_jwt",
        "private_key_jwt",
        "none",
    ]);
    o.scopes_supported = if server.is_empty() {
        strings(&[
            "openid",
            "email",
            "profile",
            "address",
            "phone",
            "offline_access",
            "groups",
        ])
    } else {
        strings(&[
            "openid",
            "profile",
            "email",
            "address",
            "phone",
            "offline_access",
            "device_sso",
        ])
    };
    let auth_methods = json!([
        "client_secret_basic",
        "client_secret_post",
        "client_secret_jwt",
        "private_key_jwt",
        "none"
    ]);
    let request_algs = json!([
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"
    ]);
    o.extra = map(json!({
        "registration_endpoint": "{base}/oauth2/v1/clients",
        "response_modes_supported": ["query", "fragment", "form_post", "okta_post_message"],
        "grant_types_supported": ["authorization_code", "implicit", "refresh_token", "password",
            "urn:ietf:params:oauth:grant-type:device_code", "urn:openid:params:grant-type:ciba"],
        "claims_supported": ["iss", "ver", "sub", "aud", "iat", "exp", "jti", "auth_time", "amr",
            "idp", "nonce", "name", "nickname", "preferred_username", "given_name", "middle_name",
            "family_name", "email", "email_verified", "profile", "zoneinfo", "locale", "address",
            "phone_number", "picture", "website", "gender", "birthdate", "updated_at", "at_hash",
            "c_hash"],
        "code_challenge_methods_supported": ["S256"],
        "introspection_endpoint": format!("{{base}}{}", ep("introspect")),
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint": format!("{{base}}{}", ep("revoke")),
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "request_parameter_supported": true,
        "request_object_signing_alg_values_supported": request_algs,
        "device_authorization_endpoint": format!("{{base}}{}", ep("device/authorize")),
        "pushed_authorization_request_endpoint": format!("{{base}}{}", ep("par")),
        "backchannel_token_delivery_modes_supported": ["poll"],
        "backchannel_authentication_request_signing_alg_values_supported": request_algs,
    }));
    let mut user = FakeUser::new("alice");
    user.sub = "00u1a2b3c4d5e6f7g8h9".to_owned();
    user.preferred_username = Some("alice@example.com".to_owned());
    user.extra = map(json!({
        "ver": 1,
        "idp": "00o1a2b3c4d5e6f7g8h9",
        "amr": ["pwd"],
        "email_verified": true,
    }));
    o.behaviour.user = user;
}
