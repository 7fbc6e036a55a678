//! The configurable fake provider (`support::fake_idp`) against the gate:
//! proof that it works before provider-quirk tests rely on it.

use std::sync::Arc;

use openidconnect::core::{CoreJsonWebKeySet, CoreProviderMetadata};

use crate::support::certs::TestPki;
use crate::support::fake_idp::{
    ENTRA_TENANT_ID, FakeIdp, FakeOptions, FakeUser, Preset, PublishedKey, SigningKey, sign_compact,
};
use crate::support::fake_rig::Rig;
use crate::support::gate::api_client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_in_through_the_fake_provider_with_identity_headers() {
    let rig = Rig::start(Preset::Generic, &[]).await;
    let b = rig.browser();
    let (page, visited) = b.follow(&rig.gate.url("/app?x=1")).await;
    assert_eq!(page.status, 200, "{visited:?}\n{}", page.body);
    assert!(page.url.ends_with("/app?x=1"), "landed on {}", page.url);
    assert!(
        visited.iter().any(|u| u.starts_with(&rig.idp.base)),
        "never went to the fake provider: {visited:?}"
    );

    let seen = rig
        .upstream
        .last_request()
        .expect("the upstream saw the request");
    assert_eq!(seen.path_and_query, "/app?x=1");
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
    assert_eq!(seen.header("x-forwarded-email"), Some("alice@example.com"));
    assert_eq!(seen.header("x-forwarded-preferred-username"), Some("alice"));

    // What the gate sent the provider.
    assert_eq!(rig.idp.authorize_requests(), 1);
    assert_eq!(rig.idp.token_requests(), 1);
    let auth = &rig.idp.authorize_log()[0];
    let param = |n: &str| auth.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    assert_eq!(param("code_challenge_method"), Some("S256"));
    assert!(param("nonce").is_some_and(|n| !n.is_empty()), "{auth:?}");
    assert!(param("state").is_some_and(|s| !s.is_empty()), "{auth:?}");
    let token = &rig.idp.token_log()[0];
    assert_eq!(token.grant_type.as_deref(), Some("authorization_code"));
    assert_eq!(token.auth_method, "client_secret_basic");
    assert!(token.field("code_verifier").is_some(), "{token:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_token_without_nonce_fails_the_callback_and_makes_no_session() {
    let rig = Rig::start(Preset::Generic, &[]).await;
    rig.idp
        .set(|b| b.token_hook = Some(Arc::new(|d| d.remove_claim("nonce"))));
    let b = rig.browser();
    let (page, visited) = b.follow(&rig.gate.url("/app")).await;
    assert!(
        (400..500).contains(&page.status),
        "expected a 4xx sign-in failure, got {} at {}: {visited:?}\n{}",
        page.status,
        page.url,
        page.body
    );
    assert!(
        page.url.contains("/sso/authorization-code/callback"),
        "failed elsewhere: {}",
        page.url
    );
    assert!(
        page.body.contains("nonce"),
        "refused for another reason: {}",
        page.body
    );
    assert_eq!(rig.idp.token_requests(), 1);
    assert!(
        rig.upstream.requests().is_empty(),
        "the upstream saw a request without a session"
    );
    let me = b.get(&rig.gate.url("/sso/userinfo")).await;
    assert_eq!(me.status, 401, "a session exists: {}", me.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_signing_key_is_fetched_once_and_counted() {
    let rig = Rig::start(Preset::Generic, &[]).await;
    assert!(rig.idp.discovery_fetches() >= 1);
    assert_eq!(rig.idp.jwks_fetches(), 1, "the gate loads the keys once");

    // Rotate: publish k2 beside k1 and sign with k2. The gate meets an
    // unknown kid, fetches the JWKS again and accepts the token.
    rig.idp.set(|b| {
        b.keys.push(PublishedKey::new(SigningKey::Rsa2));
        b.signing_key = SigningKey::Rsa2;
        b.user = FakeUser::new("bob");
    });
    let b = rig.browser();
    let (page, visited) = b.follow(&rig.gate.url("/after-rotation")).await;
    assert_eq!(page.status, 200, "{visited:?}\n{}", page.body);
    assert_eq!(rig.idp.jwks_fetches(), 2, "one refetch for the new kid");
    let seen = rig.upstream.last_request().expect("forwarded");
    assert_eq!(seen.header("x-forwarded-user"), Some("bob"));
}

/// Every preset's document and key set reads as OpenID Connect metadata
/// (no gate: the Entra template and Auth0 slash presets need gate quirks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_preset_serves_readable_discovery_and_keys() {
    let presets = [
        Preset::Generic,
        Preset::OktaOrg,
        Preset::OktaCustom,
        Preset::EntraTenant,
        Preset::EntraCommon,
        Preset::EntraOrganizations,
        Preset::Adfs,
        Preset::Auth0,
        Preset::Keycloak,
    ];
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for preset in presets {
        let idp = FakeIdp::start(FakeOptions::preset(preset, "https://localhost:9")).await;
        let doc_url = format!("{}/.well-known/openid-configuration", idp.authority);
        let doc = client.get(&doc_url).send().await.unwrap();
        assert_eq!(doc.status(), 200, "{preset:?}: {doc_url}");
        let doc = doc.bytes().await.unwrap();
        let meta: CoreProviderMetadata = serde_json::from_slice(&doc)
            .unwrap_or_else(|e| panic!("{preset:?}: metadata does not parse: {e}"));
        assert_eq!(meta.issuer().as_str(), idp.issuer, "{preset:?}");
        let jwks = client
            .get(meta.jwks_uri().url().as_str())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let keys: CoreJsonWebKeySet = serde_json::from_slice(&jwks)
            .unwrap_or_else(|e| panic!("{preset:?}: JWKS does not parse: {e}"));
        assert_eq!(keys.keys().len(), 1, "{preset:?}");
        assert_eq!(idp.discovery_fetches(), 1);
        assert_eq!(idp.jwks_fetches(), 1);
        let template = idp.issuer.contains("{tenantid}");
        assert_eq!(
            template,
            matches!(preset, Preset::EntraCommon | Preset::EntraOrganizations),
            "{preset:?}: {}",
            idp.issuer
        );
        if template {
            let iss = idp.token_issuer(&idp.current().user);
            assert_eq!(iss, format!("{}/{ENTRA_TENANT_ID}/v2.0", idp.base));
        }
    }

    // And over HTTPS with the test PKI.
    let pki = TestPki::new();
    let idp = FakeIdp::start(
        FakeOptions::preset(Preset::OktaCustom, "https://localhost:9").with_tls(&pki),
    )
    .await;
    assert!(
        idp.issuer.starts_with("https://127.0.0.1:"),
        "{}",
        idp.issuer
    );
    let doc = api_client(&pki)
        .get(format!(
            "{}/.well-known/openid-configuration",
            idp.authority
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(doc.status(), 200);
}

/// The fake's signatures verify against its own published keys, and its
/// hostile variants (corrupted, unsigned) do not.
#[test]
fn fake_signatures_verify_against_the_published_keys() {
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    use serde_json::{Map, Value, json};

    let Value::Object(claims) = json!({ "sub": "alice", "exp": 4_000_000_000u64 }) else {
        unreachable!()
    };
    let verify = |token: &str, key: &DecodingKey, alg: Algorithm| {
        let mut v = Validation::new(alg);
        v.validate_aud = false;
        jsonwebtoken::decode::<Value>(token, key, &v).is_ok()
    };
    for key in [
        SigningKey::Rsa1,
        SigningKey::Rsa2,
        SigningKey::Rsa3,
        SigningKey::Ec1,
    ] {
        let mut header = Map::new();
        header.insert("alg".into(), key.default_alg().into());
        header.insert("kid".into(), key.default_kid().into());
        let jwk: Jwk =
            serde_json::from_value(Value::Object(key.public_jwk("s3cret").unwrap())).unwrap();
        let public = DecodingKey::from_jwk(&jwk).unwrap();
        let alg: Algorithm = key.default_alg().parse().unwrap();
        let good = sign_compact(&header, &claims, &key, "s3cret", false);
        assert!(verify(&good, &public, alg), "{key:?}");
        let bad = sign_compact(&header, &claims, &key, "s3cret", true);
        assert!(!verify(&bad, &public, alg), "{key:?} corrupted");
    }
    let mut header = Map::new();
    header.insert("alg".into(), "HS256".into());
    let hs = sign_compact(&header, &claims, &SigningKey::Hs256Secret, "s3cret", false);
    assert!(verify(
        &hs,
        &DecodingKey::from_secret(b"s3cret"),
        Algorithm::HS256
    ));
    header.insert("alg".into(), "none".into());
    let unsigned = sign_compact(&header, &claims, &SigningKey::None, "s3cret", false);
    assert!(unsigned.ends_with('.') && unsigned.matches('.').count() == 2);
}
