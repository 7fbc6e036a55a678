//! Keycloak realm (`https://{host}/realms/{realm}`). Shape: the "Keycloak"
//! document in redpanda-data/redpanda `src/v/security/tests/jwt_test.cc`,
//! plus `authorization_response_iss_parameter_supported` (Keycloak 15+ sends
//! `iss` in the authorization response).

use serde_json::json;

use super::{map, paths, strings};
use crate::support::fake_idp::{FakeOptions, FakeUser};

/// The realm of [`super::Preset::Keycloak`].
const KEYCLOAK_REALM: &str = "ssogate";

pub(super) fn keycloak(o: &mut FakeOptions) {
    let realm = format!("/realms/{KEYCLOAK_REALM}");
    let oc = format!("{realm}/protocol/openid-connect");
    paths(
        o,
        &realm,
        [
            &format!("{oc}/auth"),
            &format!("{oc}/token"),
            &format!("{oc}/certs"),
        ],
        &format!("{oc}/userinfo"),
        &format!("{oc}/logout"),
    );
    let algs = [
        "PS384", "ES384", "RS384", "HS256", "HS512", "ES256", "RS256", "HS384", "ES512", "PS256",
        "PS512", "RS512",
    ];
    o.id_token_signing_algs = strings(&algs);
    o.response_types_supported = strings(&[
        "code",
        "none",
        "id_token",
        "token",
        "id_token token",
        "code id_token",
        "code token",
        "code id_token token",
    ]);
    o.subject_types_supported = strings(&["public", "pairwise"]);
    o.scopes_supported = strings(&[
        "openid",
        "web-origins",
        "microprofile-jwt",
        "roles",
        "email",
        "offline_access",
        "profile",
        "phone",
        "acr",
        "address",
    ]);
    let methods = [
        "private_key_jwt",
        "client_secret_basic",
        "client_secret_post",
        "tls_client_auth",
        "client_secret_jwt",
    ];
    o.token_endpoint_auth_methods = strings(&methods);
    let b = format!("{{base}}{oc}");
    let enc_alg = json!(["RSA-OAEP", "RSA-OAEP-256", "RSA1_5"]);
    let enc_enc = json!([
        "A256GCM",
        "A192GCM",
        "A128GCM",
        "A128CBC-HS256",
        "A192CBC-HS384",
        "A256CBC-HS512"
    ]);
    let mut with_none = algs.to_vec();
    with_none.push("none");
    o.extra = map(json!({
        "introspection_endpoint": format!("{b}/token/introspect"),
        "frontchannel_logout_session_supported": true,
        "frontchannel_logout_supported": true,
        "check_session_iframe": format!("{b}/login-status-iframe.html"),
        "grant_types_supported": ["authorization_code", "implicit", "refresh_token", "password",
            "client_credentials", "urn:ietf:params:oauth:grant-type:device_code",
            "urn:openid:params:grant-type:ciba"],
        "acr_values_supported": ["0", "1"],
        "id_token_encryption_alg_values_supported": enc_alg,
        "id_token_encryption_enc_values_supported": enc_enc,
        "userinfo_signing_alg_values_supported": with_none,
        "request_object_signing_alg_values_supported": with_none,
        "response_modes_supported": ["query", "fragment", "form_post", "query.jwt",
            "fragment.jwt", "form_post.jwt", "jwt"],
        "registration_endpoint": format!("{{base}}{realm}/clients-registrations/openid-connect"),
        "token_endpoint_auth_signing_alg_values_supported": algs,
        "introspection_endpoint_auth_methods_supported": methods,
        "claims_supported": ["aud", "sub", "iss", "auth_time", "name", "given_name",
            "family_name", "preferred_username", "email", "acr"],
        "claim_types_supported": ["normal"],
        "claims_parameter_supported": true,
        "request_parameter_supported": true,
        "request_uri_parameter_supported": true,
        "require_request_uri_registration": true,
        "code_challenge_methods_supported": ["plain", "S256"],
        "tls_client_certificate_bound_access_tokens": true,
        "revocation_endpoint": format!("{b}/revoke"),
        "revocation_endpoint_auth_methods_supported": methods,
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
        "device_authorization_endpoint": format!("{b}/auth/device"),
        "backchannel_token_delivery_modes_supported": ["poll", "ping"],
        "backchannel_authentication_endpoint": format!("{b}/ext/ciba/auth"),
        "require_pushed_authorization_requests": false,
        "pushed_authorization_request_endpoint": format!("{b}/ext/par/request"),
        "mtls_endpoint_aliases": {
            "token_endpoint": format!("{b}/token"),
            "revocation_endpoint": format!("{b}/revoke"),
            "introspection_endpoint": format!("{b}/token/introspect"),
            "userinfo_endpoint": format!("{b}/userinfo"),
        },
        "authorization_response_iss_parameter_supported": true,
    }));
    o.behaviour.authorize_iss = true;
    o.behaviour.azp = true;
    let mut user = FakeUser::new("alice");
    user.sub = "2c8f2f3a-6a4b-4a8e-9d3c-0b1f5e7a9c11".to_owned();
    user.extra = map(json!({
        "typ": "ID",
        "acr": "1",
        "sid": "fake-keycloak-session-1",
        "email_verified": true,
        "given_name": "Alice",
        "family_name": "Example",
    }));
    o.behaviour.user = user;
}
