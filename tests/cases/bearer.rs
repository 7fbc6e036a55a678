//! `Authorization: Bearer` JWTs signed with the provider's real key: valid
//! ones are forwarded with the identity, anything else is refused before
//! the upstream.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{ACCEPT, WWW_AUTHENTICATE};
use serde_json::{Value, json};

use super::websocket::connect;
use crate::support::gate::{CLIENT_ID, CLIENT_SECRET, World};
use crate::support::idp::Idp;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims of a valid access token for `sub`.
fn claims(idp: &Idp, sub: &str) -> Value {
    json!({
        "iss": idp.issuer,
        "aud": CLIENT_ID,
        "sub": sub,
        "email": format!("{sub}@api.example"),
        "iat": now(),
        "exp": now() + 600,
    })
}

/// Signs `claims` with the provider's own RS256 key, naming its `kid`.
pub(crate) fn sign(idp: &Idp, claims: &Value) -> String {
    sign_with_kid(idp, claims, &idp.kid)
}

fn sign_with_kid(idp: &Idp, claims: &Value, kid: &str) -> String {
    ssogate::app::install_crypto();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let key = EncodingKey::from_rsa_pem(idp.private_key_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// A valid token for `sub`.
pub(crate) fn token(idp: &Idp, sub: &str) -> String {
    sign(idp, &claims(idp, sub))
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

/// The same token with one byte of its signature flipped.
pub(crate) fn tampered(token: &str) -> String {
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let mut sig = B64.decode(signature).unwrap();
    let mid = sig.len() / 2;
    sig[mid] ^= 0x01;
    format!("{signed}.{}", B64.encode(sig))
}

/// An unsigned token (`alg: none`) with valid claims.
fn unsigned(idp: &Idp, claims: &Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT", "kid": idp.kid});
    format!(
        "{}.{}.",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    )
}

/// HS256 with the client secret as the key and the provider's `kid`: the
/// classic algorithm-confusion forgery.
fn hs256_with_client_secret(idp: &Idp, claims: &Value) -> String {
    ssogate::app::install_crypto();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(idp.kid.clone());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_secret(CLIENT_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_bearer_token_is_forwarded_with_its_identity() {
    let w = World::start().await;
    let resp = w
        .api()
        .post(w.url("/api/items?page=2"))
        .bearer_auth(token(&w.idp, "svc-robot"))
        .header(ACCEPT, "application/json")
        .header("x-forwarded-user", "mallory")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = w.upstream.last_request().expect("forwarded");
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path_and_query, "/api/items?page=2");
    assert_eq!(seen.body_len, 7);
    assert_eq!(seen.header_all("x-forwarded-user"), vec!["svc-robot"]);
    assert_eq!(
        seen.header("x-forwarded-email"),
        Some("svc-robot@api.example")
    );
}

/// One connection, several tokens in turn (as through a proxy that pools
/// connections): the connection remembers the token it verified last, and
/// that memo must answer for exactly that token and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_connection_every_token_is_judged_as_itself() {
    let w = World::start().await;
    let (alice, bob) = (token(&w.idp, "alice"), token(&w.idp, "bob"));
    let api = w.api();
    let turns = [
        (&alice, Some("alice")),
        (&alice, Some("alice")),
        (&tampered(&alice), None),
        (&bob, Some("bob")),
        (&alice, Some("alice")),
        (&tampered(&bob), None),
        (&bob, Some("bob")),
    ];
    for (i, (token, user)) in turns.iter().enumerate() {
        let before = w.upstream.requests().len();
        let resp = api
            .get(w.url("/api/me"))
            .bearer_auth(token)
            .header(ACCEPT, "application/json")
            .send()
            .await
            .unwrap();
        match user {
            Some(user) => {
                assert_eq!(resp.status(), 200, "turn {i}");
                let seen = w.upstream.last_request().expect("forwarded");
                assert_eq!(seen.header_all("x-forwarded-user"), vec![*user], "turn {i}");
            }
            None => {
                assert_eq!(resp.status(), 401, "turn {i}");
                assert_eq!(
                    w.upstream.requests().len(),
                    before,
                    "turn {i} reached the upstream"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userinfo_answers_for_a_valid_bearer_token() {
    let w = World::start().await;
    let resp = w
        .api()
        .get(w.url("/sso/userinfo"))
        .bearer_auth(token(&w.idp, "svc-robot"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["sub"], "svc-robot", "{body}");
    assert_eq!(body["email"], "svc-robot@api.example", "{body}");
    assert!(body["expires_at"].as_i64().unwrap() > now(), "{body}");

    let resp = w
        .api()
        .get(w.url("/sso/userinfo"))
        .bearer_auth(tampered(&token(&w.idp, "svc-robot")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_misaddressed_tokens_are_refused_before_the_upstream() {
    let w = World::start().await;
    let idp = &w.idp;
    let good = claims(idp, "svc-robot");
    let cases: Vec<(&str, String)> = vec![
        ("tampered signature", tampered(&sign(idp, &good))),
        (
            "expired two hours ago",
            sign(
                idp,
                &with(
                    with(good.clone(), "exp", json!(now() - 7200)),
                    "iat",
                    json!(now() - 10800),
                ),
            ),
        ),
        (
            "wrong audience",
            sign(idp, &with(good.clone(), "aud", json!("another-client"))),
        ),
        (
            "wrong issuer",
            sign(
                idp,
                &with(good.clone(), "iss", json!("https://evil.example")),
            ),
        ),
        (
            "another client as azp",
            sign(idp, &with(good.clone(), "azp", json!("another-client"))),
        ),
        (
            "several audiences without azp",
            sign(
                idp,
                &with(good.clone(), "aud", json!([CLIENT_ID, "another-client"])),
            ),
        ),
        ("alg none", unsigned(idp, &good)),
        (
            "HS256 with the client secret",
            hs256_with_client_secret(idp, &good),
        ),
        (
            "not yet valid",
            sign(idp, &with(good.clone(), "nbf", json!(now() + 7200))),
        ),
        ("not a JWT", "not-a-jwt".to_owned()),
    ];
    let api = w.api();
    for (what, token) in &cases {
        let resp = api
            .get(w.url("/api/items"))
            .bearer_auth(token)
            .header(ACCEPT, "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{what}");
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"))
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            challenge.starts_with("Bearer") && challenge.contains("invalid_token"),
            "{what}: {challenge}"
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "invalid_token", "{what}: {body}");
    }
    // A browser navigation with a bad token is refused too, not sent to sign in.
    let resp = api
        .get(w.url("/"))
        .bearer_auth(&cases[0].1)
        .header(ACCEPT, "text/html,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(
        w.upstream.requests().is_empty(),
        "a refused token reached the upstream: {:?}",
        w.upstream.requests()
    );
    // The same claims, properly signed, pass: the refusals were about the token.
    let resp = api
        .get(w.url("/api/items"))
        .bearer_auth(sign(idp, &good))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// A token naming a key the provider never published. The gate reloads the
/// provider's keys at most once per 10 s for such tokens; the test provider
/// does not count JWKS fetches, so the rate limit itself is not observed
/// here, only that a burst is refused promptly and never forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_with_an_unknown_key_id_are_refused_even_in_a_burst() {
    let w = World::start().await;
    let unknown = sign_with_kid(&w.idp, &claims(&w.idp, "svc-robot"), "never-published");
    let api = w.api();
    let started = std::time::Instant::now();
    let statuses = futures_util::future::join_all((0..20).map(|_| {
        api.get(w.url("/api/items"))
            .bearer_auth(&unknown)
            .header(ACCEPT, "application/json")
            .send()
    }))
    .await;
    for s in statuses {
        let resp = s.unwrap();
        assert_eq!(resp.status(), 401);
        let challenge = resp.headers()[WWW_AUTHENTICATE].to_str().unwrap();
        assert!(challenge.contains("invalid_token"), "{challenge}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the burst took {:?}",
        started.elapsed()
    );
    assert!(w.upstream.requests().is_empty());
    // The real key still works right after.
    let resp = api
        .get(w.url("/api/items"))
        .bearer_auth(token(&w.idp, "svc-robot"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ide_plugin_opens_a_websocket_with_a_bearer_token() {
    let w = World::start().await;
    let auth = format!("Bearer {}", token(&w.idp, "svc-robot"));
    let ws = connect(&w, &[("authorization", &auth)]).await;
    assert!(ws.is_ok(), "{:?}", ws.err());
    let seen = w.upstream.last_request().unwrap();
    assert_eq!(seen.path(), "/ws");
    assert_eq!(seen.header("x-forwarded-user"), Some("svc-robot"));
}
