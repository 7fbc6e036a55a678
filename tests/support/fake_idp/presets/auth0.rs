//! Auth0 tenant (`https://{tenant}.auth0.com/`, with the trailing slash).
//! Shape: the "Auth0" document in redpanda-data/redpanda
//! `src/v/security/tests/jwt_test.cc`, plus `end_session_endpoint`
//! (`/oidc/logout`) and back-channel logout support that tenants with
//! RP-initiated logout enabled publish.

use serde_json::json;

use super::{map, paths, strings};
use crate::support::fake_idp::{FakeOptions, FakeUser, PublishedKey, SigningKey};

pub(super) fn auth0(o: &mut FakeOptions) {
    paths(
        o,
        "",
        ["/authorize", "/oauth/token", "/.well-known/jwks.json"],
        "/userinfo",
        "/oidc/logout",
    );
    o.issuer = "{base}/".to_owned();
    o.response_types_supported = strings(&[
        "code",
        "token",
        "id_token",
        "code token",
        "code id_token",
        "token id_token",
        "code token id_token",
    ]);
    o.id_token_signing_algs = strings(&["HS256", "RS256", "PS256"]);
    o.token_endpoint_auth_methods = strings(&[
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    ]);
    o.scopes_supported = strings(&[
        "openid",
        "profile",
        "offline_access",
        "name",
        "given_name",
        "family_name",
        "nickname",
        "email",
        "email_verified",
        "picture",
        "created_at",
        "identities",
        "phone",
        "address",
    ]);
    o.extra = map(json!({
        "device_authorization_endpoint": "{base}/oauth/device/code",
        "mfa_challenge_endpoint": "{base}/mfa/challenge",
        "registration_endpoint": "{base}/oidc/register",
        "revocation_endpoint": "{base}/oauth/revoke",
        "code_challenge_methods_supported": ["S256", "plain"],
        "response_modes_supported": ["query", "fragment", "form_post"],
        "claims_supported": ["aud", "auth_time", "created_at", "email", "email_verified", "exp",
            "family_name", "given_name", "iat", "identities", "iss", "name", "nickname",
            "phone_number", "picture", "sub"],
        "request_uri_parameter_supported": false,
        "request_parameter_supported": false,
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "RS384", "PS256"],
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
    }));
    let mut key = PublishedKey::new(SigningKey::Rsa1);
    key.extra = map(json!({ "x5t": "k1" }));
    o.behaviour.keys = vec![key];
    let mut user = FakeUser::new("alice");
    user.sub = "auth0|64f1c0ffee0123456789abcd".to_owned();
    // A database user's `name` is its email; no preferred_username.
    user.name = Some("alice@example.com".to_owned());
    user.preferred_username = None;
    user.extra = map(json!({
        "nickname": "alice",
        "email_verified": true,
        "updated_at": "2024-01-01T00:00:00.000Z",
        "sid": "fake-auth0-session-1",
    }));
    o.behaviour.user = user;
}
