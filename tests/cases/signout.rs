//! Ending sessions as a user sees it: a sign-out holds against a copied
//! cookie, a sign-out at the provider reaches the gate over the back channel,
//! logout tokens are checked before anything ends, and a session's open
//! WebSockets and streams end with it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use futures_util::{SinkExt as _, StreamExt as _};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{ACCEPT, CONTENT_TYPE, COOKIE};
use serde_json::{Value, json};
use ssogate::config::Secret;
use ssogate::session::{CookieNames, CookieStore, MAX_COOKIE_AGE_SECS, Sealer, Store as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::signin::{assert_sign_in_redirect, assert_unauthorized};
use super::websocket::connect;
use crate::assert_eventually;
use crate::support::browser::Browser;
use crate::support::gate::{CLIENT_ID, CLIENT_SECRET, COOKIE_SECRET, Setup, World};
use crate::support::idp::Idp;

type Ws = WebSocketStream<TlsStream<TcpStream>>;

const HTML: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
const SESSION_COOKIE: &str = "__Host-ssogate";
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// The contract: a live connection closes within 5 s of its session's end.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);
/// WebSocket close code "policy violation".
const POLICY_VIOLATION: u16 = 1008;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ------------------------------------------------------------ sessions

/// The gate's session cookie(s) in the browser's jar (the session may be
/// split into parts), as a `Cookie` header another client can replay.
fn session_cookie(w: &World, b: &Browser) -> String {
    let parts: Vec<String> = b
        .cookies_for(&w.url("/"))
        .into_iter()
        .filter(|(name, _)| name.starts_with(SESSION_COOKIE))
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    assert!(
        !parts.is_empty(),
        "the browser holds no gate session cookie"
    );
    parts.join("; ")
}

/// One request from a fresh client (no jar), carrying `cookie` as it is.
async fn get_with_cookie(w: &World, path: &str, accept: &str, cookie: &str) -> reqwest::Response {
    w.api()
        .get(w.url(path))
        .header(ACCEPT, accept)
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap()
}

/// The cookie opens a session of `sub`: an API call reaches the upstream as `sub`.
async fn assert_session_of(w: &World, cookie: &str, sub: &str, what: &str) {
    let resp = get_with_cookie(w, "/api/still-here", "application/json", cookie).await;
    assert_eq!(
        resp.status(),
        200,
        "{what}: the session of {sub} was refused"
    );
    let seen = w.upstream.last_request().expect("forwarded");
    assert_eq!(seen.path(), "/api/still-here", "{what}");
    assert_eq!(seen.header("x-forwarded-user"), Some(sub), "{what}");
}

/// The cookie is refused: a navigation is sent to sign in, an API call and
/// userinfo get 401, and the upstream sees none of it.
async fn assert_refused(w: &World, cookie: &str, what: &str) {
    let before = w.upstream.requests().len();
    let nav = get_with_cookie(w, "/app/page?x=1", HTML, cookie).await;
    let location = nav
        .headers()
        .get(reqwest::header::LOCATION)
        .map(|v| v.to_str().unwrap().to_owned());
    assert_sign_in_redirect(
        nav.status().as_u16(),
        location.as_deref(),
        "/app/page?x=1",
        what,
    );
    let api = get_with_cookie(w, "/api/items", "application/json", cookie).await;
    assert_unauthorized(api, what).await;
    let info = get_with_cookie(w, "/sso/userinfo", "application/json", cookie).await;
    assert_eq!(info.status(), 401, "{what}: userinfo");
    assert_eq!(
        w.upstream.requests().len(),
        before,
        "{what}: the upstream saw a request: {:?}",
        w.upstream.last_request()
    );
}

/// Waits until the wall clock has passed `second`: sessions are stamped in
/// whole seconds, and a revocation "of every session of alice until now"
/// rightly covers one created in the same second.
async fn next_second_after(second: u64) {
    assert_eventually!(
        now() > second,
        Duration::from_secs(2),
        "the clock did not move"
    );
}

// ------------------------------------------------------------ websockets

/// A WebSocket through the gate carrying the browser's cookies, as a page of
/// the gate would open it; checked to echo.
async fn open_websocket(w: &World, b: &Browser) -> Ws {
    let cookies = b
        .cookies_for(&w.url("/"))
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let origin = w.url("");
    let mut ws = connect(w, &[("cookie", &cookies), ("origin", &origin)])
        .await
        .expect("WebSocket through the gate");
    assert_echoes(&mut ws, "just opened").await;
    ws
}

async fn assert_echoes(ws: &mut Ws, what: &str) {
    let text = format!("ping {what}");
    ws.send(Message::text(text.clone()))
        .await
        .unwrap_or_else(|e| panic!("{what}: cannot send: {e}"));
    let reply = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: no echo within 10 s"))
        .unwrap_or_else(|| panic!("{what}: the WebSocket ended"))
        .unwrap_or_else(|e| panic!("{what}: WebSocket error {e}"));
    assert_eq!(reply, Message::text(text), "{what}");
}

/// Reads until the server's close frame, which must come before `deadline`;
/// returns its code. Panics when the connection ends without one.
async fn close_code(ws: &mut Ws, deadline: Instant, what: &str) -> u16 {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => panic!(
                "{what}: the WebSocket is still open {CLOSE_WITHIN:?} after the session ended"
            ),
            Ok(None) => panic!("{what}: the WebSocket ended without a close frame"),
            Ok(Some(Err(e))) => panic!("{what}: the WebSocket failed without a close frame: {e}"),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return frame.map_or(1005, |f| u16::from(f.code));
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

// ------------------------------------------------------------ logout tokens

/// A `jti` not used before in this process.
fn fresh_jti() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("e2e-jti-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The claims of a valid logout token for every session of `sub`.
fn logout_claims(idp: &Idp, sub: &str) -> Value {
    json!({
        "iss": idp.issuer,
        "aud": CLIENT_ID,
        "iat": now(),
        "jti": fresh_jti(),
        "sub": sub,
        "events": { BACKCHANNEL_EVENT: {} },
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

/// Signed with the provider's own RS256 key, `typ` `logout+jwt`.
fn sign_logout(idp: &Idp, claims: &Value) -> String {
    ssogate::app::install_crypto();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(idp.kid.clone());
    header.typ = Some("logout+jwt".to_owned());
    let key = EncodingKey::from_rsa_pem(idp.private_key_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// HS256 with the client secret as the key and the provider's `kid`.
fn sign_hs256_with_client_secret(idp: &Idp, claims: &Value) -> String {
    ssogate::app::install_crypto();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(idp.kid.clone());
    header.typ = Some("logout+jwt".to_owned());
    let key = EncodingKey::from_secret(CLIENT_SECRET.as_bytes());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// The same token with one bit of its signature flipped.
fn tampered(token: &str) -> String {
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let mut sig = B64.decode(signature).unwrap();
    let mid = sig.len() / 2;
    sig[mid] ^= 0x01;
    format!("{signed}.{}", B64.encode(sig))
}

fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// POSTs `body` to the back-channel logout endpoint as the provider would.
async fn post_backchannel(w: &World, content_type: &str, body: String) -> reqwest::Response {
    w.api()
        .post(w.url("/sso/backchannel-logout"))
        .header(CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn post_logout_token(w: &World, token: &str) -> reqwest::Response {
    post_backchannel(
        w,
        "application/x-www-form-urlencoded",
        form(&[("logout_token", token)]),
    )
    .await
}

/// 400 with an OAuth error body (`invalid_request`).
async fn assert_logout_refused(resp: reqwest::Response, what: &str) {
    assert_eq!(resp.status(), 400, "{what}");
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{what}: Content-Type {content_type:?}"
    );
    let body: Value = resp
        .json()
        .await
        .unwrap_or_else(|e| panic!("{what}: the 400 body is not JSON: {e}"));
    assert_eq!(body["error"], "invalid_request", "{what}: {body}");
}

// ------------------------------------------------------------ cases

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_session_cookie_is_refused_after_sign_out_and_other_users_keep_theirs() {
    let w = World::start().await;
    let alice = w.signed_in("alice").await;
    let bob = w.signed_in("bob").await;
    let alice_copy = session_cookie(&w, &alice);
    let bob_copy = session_cookie(&w, &bob);
    // The copy is a working session before the sign-out.
    assert_session_of(&w, &alice_copy, "alice", "alice's copy before sign-out").await;

    let page = alice.get(&w.url("/sso/logout")).await;
    assert_eq!(page.status, 302, "sign-out: {}", page.body);
    assert!(
        alice.cookie(&w.url("/"), SESSION_COOKIE).is_none(),
        "the browser still holds its session cookie"
    );

    // The cookie copied before the sign-out, replayed by another client.
    w.upstream.clear();
    assert_refused(&w, &alice_copy, "alice's copied cookie after sign-out").await;
    assert_eq!(w.upstream.connections(), 0, "the upstream was contacted");

    // Bob's session is untouched: his copy and his browser both still work.
    assert_session_of(&w, &bob_copy, "bob", "bob's session after alice signed out").await;
    let page = bob.get(&w.url("/bob/page")).await;
    assert_eq!(page.status, 200, "bob's browser: {}", page.body);
    assert_eq!(
        w.upstream
            .last_request()
            .unwrap()
            .header("x-forwarded-user"),
        Some("bob")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_out_at_the_provider_reaches_the_gate_by_back_channel_and_ends_only_that_user() {
    let w = World::with(Setup {
        backchannel: true,
        ..Setup::default()
    })
    .await;
    let alice = w.signed_in("alice").await;
    let bob = w.signed_in("bob").await;
    let alice_copy = session_cookie(&w, &alice);
    let mut alice_ws = open_websocket(&w, &alice).await;
    let mut bob_ws = open_websocket(&w, &bob).await;
    assert_eq!(w.upstream.open_websockets(), 2);
    let stats = w.idp.stats().await;
    let (ok_before, err_before) = (
        stats["backchannel_logout"]["success"].as_u64().unwrap(),
        stats["backchannel_logout"]["error"].as_u64().unwrap(),
    );

    // Alice signs out at the provider itself, not through the gate: the gate
    // can only learn of it from the provider's back-channel call.
    let started = Instant::now();
    let end_session = w.idp.url(&format!("/session/end?client_id={CLIENT_ID}"));
    let (page, visited) = alice.sign_out(&end_session).await;
    assert_eq!(page.status, 200, "{} {}", page.url, page.body);
    assert!(
        visited.iter().any(|u| u.ends_with("/session/end/confirm")),
        "the provider's sign-out was not confirmed: {visited:?}"
    );
    assert!(
        !visited.iter().any(|u| u.starts_with(&w.gate.url)),
        "the browser went through the gate: {visited:?}"
    );
    assert_eq!(
        session_cookie(&w, &alice),
        alice_copy,
        "the gate never saw the browser, so its cookie is still there"
    );

    let code = close_code(&mut alice_ws, started + CLOSE_WITHIN, "alice's WebSocket").await;
    assert_eq!(code, POLICY_VIOLATION, "alice's WebSocket close code");

    let stats = w.idp.stats().await;
    assert_eq!(
        stats["backchannel_logout"]["success"].as_u64().unwrap(),
        ok_before + 1,
        "the provider's back-channel call did not succeed: {stats}"
    );
    assert_eq!(
        stats["backchannel_logout"]["error"].as_u64().unwrap(),
        err_before,
        "{stats}"
    );

    // Alice's browser, still holding its cookie, is sent to sign in; the
    // same cookie from an API client gets 401; the upstream sees neither.
    let before = w.upstream.requests().len();
    let page = alice.get(&w.url("/app")).await;
    assert_sign_in_redirect(
        page.status,
        page.header("location"),
        "/app",
        "alice after the back-channel logout",
    );
    assert_refused(
        &w,
        &alice_copy,
        "alice's cookie after the back-channel logout",
    )
    .await;
    assert_eq!(w.upstream.requests().len(), before);

    // Bob carries on.
    assert_echoes(&mut bob_ws, "bob after alice's logout").await;
    let page = bob.get(&w.url("/bob/page")).await;
    assert_eq!(page.status, 200, "bob's browser: {}", page.body);
    assert_eventually!(
        w.upstream.open_websockets() == 1,
        CLOSE_WITHIN,
        "the upstream still has {} WebSockets open, expected bob's only",
        w.upstream.open_websockets()
    );
    assert_echoes(&mut bob_ws, "bob at the end").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_tokens_signed_by_the_provider_end_sessions_and_invalid_ones_change_nothing() {
    let w = World::start().await;
    let idp = &w.idp;
    // Two sessions of alice (two browsers) and one of bob, all before the token.
    let alice_1 = session_cookie(&w, &w.signed_in("alice").await);
    let alice_2 = session_cookie(&w, &w.signed_in("alice").await);
    let bob = session_cookie(&w, &w.signed_in("bob").await);
    assert_session_of(&w, &alice_1, "alice", "alice's first session").await;
    assert_session_of(&w, &alice_2, "alice", "alice's second session").await;

    let valid = sign_logout(idp, &logout_claims(idp, "alice"));
    let resp = post_logout_token(&w, &valid).await;
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    let ended_at = now();
    assert_refused(&w, &alice_1, "alice's first session after the logout token").await;
    assert_refused(
        &w,
        &alice_2,
        "alice's second session after the logout token",
    )
    .await;
    assert_session_of(&w, &bob, "bob", "bob after alice's logout token").await;

    // Alice signs in again afterwards: that session is not covered.
    next_second_after(ended_at).await;
    let alice_3 = session_cookie(&w, &w.signed_in("alice").await);
    assert_session_of(&w, &alice_3, "alice", "alice signed in again").await;

    // Each of these would end alice's new session if it were accepted.
    let good = || logout_claims(idp, "alice");
    let form_type = "application/x-www-form-urlencoded";
    let bad: Vec<(&str, &str, String)> = vec![
        (
            "bad signature",
            form_type,
            form(&[("logout_token", &tampered(&sign_logout(idp, &good())))]),
        ),
        (
            "wrong audience",
            form_type,
            form(&[(
                "logout_token",
                &sign_logout(idp, &with(good(), "aud", json!("another-client"))),
            )]),
        ),
        (
            "issued 10 minutes ago",
            form_type,
            form(&[(
                "logout_token",
                &sign_logout(idp, &with(good(), "iat", json!(now() - 600))),
            )]),
        ),
        (
            "replayed jti (the token that was accepted above)",
            form_type,
            form(&[("logout_token", &valid)]),
        ),
        (
            "a nonce",
            form_type,
            form(&[(
                "logout_token",
                &sign_logout(idp, &with(good(), "nonce", json!("n-0S6_WzA2Mj"))),
            )]),
        ),
        (
            "a nonce that is null",
            form_type,
            form(&[(
                "logout_token",
                &sign_logout(idp, &with(good(), "nonce", serde_json::Value::Null)),
            )]),
        ),
        (
            "wrong issuer",
            form_type,
            form(&[(
                "logout_token",
                &sign_logout(idp, &with(good(), "iss", json!("https://evil.example"))),
            )]),
        ),
        (
            "neither sid nor sub",
            form_type,
            form(&[("logout_token", &sign_logout(idp, &without(good(), "sub")))]),
        ),
        (
            "no events",
            form_type,
            form(&[(
                "logout_token",
                &sign_logout(idp, &without(good(), "events")),
            )]),
        ),
        (
            "HS256 with the client secret",
            form_type,
            form(&[("logout_token", &sign_hs256_with_client_secret(idp, &good()))]),
        ),
        (
            "a JSON body",
            "application/json",
            json!({ "logout_token": sign_logout(idp, &good()) }).to_string(),
        ),
        (
            "a form body labelled text/plain",
            "text/plain",
            form(&[("logout_token", &sign_logout(idp, &good()))]),
        ),
        (
            "no logout_token field",
            form_type,
            form(&[("token", &sign_logout(idp, &good()))]),
        ),
        (
            "a body over 64 KiB",
            form_type,
            form(&[
                ("logout_token", &sign_logout(idp, &good())),
                ("padding", &"p".repeat(70 * 1024)),
            ]),
        ),
    ];
    for (what, content_type, body) in bad {
        let resp = post_backchannel(&w, content_type, body).await;
        assert_logout_refused(resp, what).await;
        assert_session_of(&w, &alice_3, "alice", &format!("after {what}")).await;
    }

    // GET is not the back-channel, even with a valid token in the query.
    let resp = w
        .api()
        .get(w.url(&format!(
            "/sso/backchannel-logout?{}",
            form(&[("logout_token", &sign_logout(idp, &good()))])
        )))
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_client_error(),
        "GET /sso/backchannel-logout: {}",
        resp.status()
    );
    assert_session_of(&w, &alice_3, "alice", "after a GET").await;
    assert_session_of(&w, &bob, "bob", "at the end").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_closes_the_users_websocket_and_cuts_its_stream() {
    let w = World::start().await;
    let alice = w.signed_in("alice").await;
    let bob = w.signed_in("bob").await;
    let mut alice_ws = open_websocket(&w, &alice).await;
    let mut bob_ws = open_websocket(&w, &bob).await;

    // A stream of alice's that would run for 30 s.
    let resp = alice
        .client()
        .get(w.url("/slow?chunks=300&interval_ms=100"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"chunk 0"), "{first:?}");
    assert_eq!(w.upstream.open_streams(), 1);
    assert_eq!(w.upstream.open_websockets(), 2);

    let started = Instant::now();
    let page = alice.get(&w.url("/sso/logout")).await;
    assert_eq!(page.status, 302, "sign-out: {}", page.body);

    let code = close_code(&mut alice_ws, started + CLOSE_WITHIN, "alice's WebSocket").await;
    assert_eq!(code, POLICY_VIOLATION, "alice's WebSocket close code");

    // The stream fails (it is cut, not finished) before the 5 s are up.
    let mut received = first.len();
    let ended = loop {
        let left = (started + CLOSE_WITHIN).saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Err(_) => panic!("the stream still runs {CLOSE_WITHIN:?} after sign-out"),
            Ok(Some(Ok(bytes))) => received += bytes.len(),
            Ok(Some(Err(e))) => break Ok(e),
            Ok(None) => break Err("the stream finished cleanly"),
        }
    };
    assert!(ended.is_ok(), "{ended:?} after {received} bytes");
    assert!(
        received < "chunk 299\n".len() * 300,
        "the whole stream arrived"
    );
    assert_eventually!(
        w.upstream.open_streams() == 0,
        CLOSE_WITHIN,
        "the upstream still streams for a session that ended"
    );
    assert_eventually!(
        w.upstream.open_websockets() == 1,
        CLOSE_WITHIN,
        "the upstream still has {} WebSockets open, expected bob's only",
        w.upstream.open_websockets()
    );
    assert_echoes(&mut bob_ws, "bob after alice signed out").await;
}

/// A sign-out is remembered only until the signed-out cookie would have
/// expired (at most [`MAX_COOKIE_AGE_SECS`] after sign-in, the session
/// cookie's lifetime); then the revocation is dropped. That holds only if
/// the gate itself refuses a session past that lifetime: a client replaying
/// a copied cookie ignores its `Max-Age`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cookie_past_its_lifetime_is_refused_so_old_sign_outs_keep_holding() {
    let w = World::with(Setup {
        refresh: true,
        ..Setup::default()
    })
    .await;
    let alice = w.signed_in("alice").await;
    let copy = session_cookie(&w, &alice);
    let key = Secret::new(STANDARD.decode(COOKIE_SECRET).unwrap());
    let store = CookieStore::new(
        std::sync::Arc::new(Sealer::new(&[key]).unwrap()),
        CookieNames::new(true),
    );
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::COOKIE, copy.parse().unwrap());
    let mut session = store.load(&headers).expect("the gate's own cookie opens");
    assert!(
        session.refresh_token.is_some(),
        "the session has a refresh token, so its cookie lives {MAX_COOKIE_AGE_SECS} s"
    );
    // The same session, signed in 31 days ago (and so refreshed since).
    session.created_at = now() - MAX_COOKIE_AGE_SECS - 24 * 3600;
    let mut set_cookies = Vec::new();
    store
        .save(&session, &http::HeaderMap::new(), now(), &mut set_cookies)
        .unwrap();
    let old = set_cookies
        .iter()
        .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_owned())
        .filter(|pair| pair.starts_with(SESSION_COOKIE) && !pair.ends_with('='))
        .collect::<Vec<_>>()
        .join("; ");
    assert_refused(&w, &old, "a session cookie older than its lifetime").await;
}

// ------------------------------------------------------------ a held upstream

/// An upstream that holds its answer to every request until released: a
/// WebSocket upgrade then gets `101` (and the connection is held open), any
/// other request a chunked stream that would run for 30 s. Counts what is
/// still open on its side.
struct HeldUpstream {
    url: String,
    /// One message per request received (its request line).
    arrived: tokio::sync::mpsc::UnboundedReceiver<String>,
    release: tokio::sync::watch::Sender<bool>,
    open: std::sync::Arc<AtomicU64>,
}

impl HeldUpstream {
    async fn start() -> HeldUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (arrived_tx, arrived) = tokio::sync::mpsc::unbounded_channel();
        let (release, release_rx) = tokio::sync::watch::channel(false);
        let open = std::sync::Arc::new(AtomicU64::new(0));
        let counter = open.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(held_connection(
                    tcp,
                    arrived_tx.clone(),
                    release_rx.clone(),
                    counter.clone(),
                ));
            }
        });
        HeldUpstream {
            url,
            arrived,
            release,
            open,
        }
    }

    fn open(&self) -> u64 {
        self.open.load(Ordering::SeqCst)
    }
}

async fn held_connection(
    mut tcp: TcpStream,
    arrived: tokio::sync::mpsc::UnboundedSender<String>,
    mut release: tokio::sync::watch::Receiver<bool>,
    open: std::sync::Arc<AtomicU64>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read_exact(&mut byte).await.is_err() {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let key = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim().to_owned())
    });
    let _ = arrived.send(head.lines().next().unwrap_or_default().to_owned());
    if release.wait_for(|r| *r).await.is_err() {
        return;
    }
    open.fetch_add(1, Ordering::SeqCst);
    match key {
        Some(key) => {
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
            );
            if tcp.write_all(answer.as_bytes()).await.is_ok() {
                // Held open (frames from the client are ignored) until the gate lets go.
                let mut sink = [0u8; 1024];
                while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
            }
        }
        None => {
            let answer =
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
            if tcp.write_all(answer.as_bytes()).await.is_ok() {
                for i in 0..300 {
                    let line = format!("chunk {i}\n");
                    let chunk = format!("{:x}\r\n{line}\r\n", line.len());
                    if tcp.write_all(chunk.as_bytes()).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    open.fetch_sub(1, Ordering::SeqCst);
}

/// A WebSocket and a stream whose upstream answers only after the sign-out
/// (an upgrade or a long poll still under way when the user signs out) end
/// like the others: the session is over before they start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_and_a_stream_still_opening_at_sign_out_end_too() {
    let mut held = HeldUpstream::start().await;
    let w = World::with(Setup {
        vars: vec![("CT_UPSTREAM_URL".into(), held.url.clone())],
        ..Setup::default()
    })
    .await;
    // Signed in without landing on the upstream (which holds every answer).
    let alice = w.browser();
    let callback = alice
        .sign_in_until_callback(&w.url("/sso/login?rd=/"), "alice", "alice-pass")
        .await;
    let page = alice.get(&callback).await;
    assert_eq!(page.status, 302, "callback: {}", page.body);
    let cookies = session_cookie(&w, &alice);
    let origin = w.url("");

    // Both are past the gate's check and waiting for the upstream...
    let ws_headers = [("cookie", cookies.as_str()), ("origin", origin.as_str())];
    let opening = async {
        tokio::join!(
            connect(&w, &ws_headers),
            alice
                .client()
                .get(w.url("/long-poll"))
                .header(ACCEPT, "text/plain")
                .send()
        )
    };
    let signing_out = async {
        let mut arrived = vec![
            held.arrived.recv().await.unwrap(),
            held.arrived.recv().await.unwrap(),
        ];
        arrived.sort();
        assert!(
            arrived[0].starts_with("GET /long-poll ") && arrived[1].starts_with("GET /ws "),
            "{arrived:?}"
        );
        // ...when alice signs out; only then does the upstream answer.
        let started = Instant::now();
        let page = alice.get(&w.url("/sso/logout")).await;
        assert_eq!(page.status, 302, "sign-out: {}", page.body);
        held.release.send(true).unwrap();
        started
    };
    let ((ws, stream), started) = tokio::join!(opening, signing_out);
    let deadline = started + CLOSE_WITHIN;

    // Refusing the upgrade late is as good as closing it at once.
    if let Ok(mut ws) = ws {
        let code = close_code(&mut ws, deadline, "the WebSocket opened at sign-out").await;
        assert_eq!(code, POLICY_VIOLATION, "close code");
    }
    // The stream may be reset before its head reaches the client, or refused.
    if let Ok(resp) = stream.inspect_err(|e| assert!(e.is_request(), "{e:?}"))
        && resp.status() == 200
    {
        let mut stream = resp.bytes_stream();
        let ended = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.next()).await {
                Err(_) => panic!("the stream opened at sign-out still runs {CLOSE_WITHIN:?} later"),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => break Ok(e),
                Ok(None) => break Err("the stream finished cleanly"),
            }
        };
        assert!(ended.is_ok(), "{ended:?}");
    }
    assert_eventually!(
        held.open() == 0,
        deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1),
        "the upstream still has {} connections of the ended session",
        held.open()
    );
}
