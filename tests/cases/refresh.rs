//! The session lifecycle: refreshing past token expiry (and only with
//! `CT_SSO_TOKEN_ENDPT`), one refresh for many concurrent requests under
//! rotation with reuse detection, refresh failures (revoked, provider down,
//! grace), the absolute maximum age, and live connections (WebSockets,
//! streams) that end with their session — or outlive token expiry through
//! background refreshes.
//!
//! Tokens mostly live 2–3 s with `CT_SSO_REFRESH_SKEW=0s`, so a session is
//! due for a refresh exactly when its tokens expire; waiting for an expiry
//! is the only sleeping these tests do.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::header::{self, HeaderMap};
use ssogate::config::Secret;
use ssogate::session::{Sealer, Session};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::proxy::cookie_header;
use super::signin::{assert_sign_in_redirect, assert_unauthorized};
use super::websocket::connect;
use crate::assert_eventually;
use crate::support::browser::Browser;
use crate::support::gate::{CLIENT_ID, CLIENT_SECRET, COOKIE_SECRET, Setup, World};

const HTML: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
const JSON: &str = "application/json";
const SESSION_COOKIE: &str = "__Host-ssogate";

/// Unix time in seconds, with fractions.
fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn now() -> u64 {
    now_f64() as u64
}

/// Tokens that live `ttl` seconds; refreshed (or not) once they expired.
fn short_tokens(ttl: u64, refresh: bool) -> Setup {
    Setup {
        refresh,
        idp: Box::new(move |o| {
            o.id_token_ttl = ttl;
            o.access_token_ttl = ttl;
        }),
        vars: vec![("CT_SSO_REFRESH_SKEW".into(), "0s".into())],
        ..Setup::default()
    }
}

/// The same with refresh tokens rotated on every refresh (reuse revokes the grant).
fn short_rotating_tokens(ttl: u64) -> Setup {
    Setup {
        idp: Box::new(move |o| {
            o.id_token_ttl = ttl;
            o.access_token_ttl = ttl;
            o.rotate_refresh_tokens = true;
        }),
        ..short_tokens(ttl, true)
    }
}

/// Waits until a token expiring at `expires_at` (unix seconds) has expired.
async fn wait_past(expires_at: u64) {
    let until = UNIX_EPOCH + Duration::from_secs(expires_at) + Duration::from_millis(150);
    if let Ok(left) = until.duration_since(SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
}

fn sealer() -> Sealer {
    Sealer::new(&[Secret::new(STANDARD.decode(COOKIE_SECRET).unwrap())]).unwrap()
}

/// What a session cookie holds, opened with the gate's key.
fn open_session(value: &str) -> Session {
    let plain = sealer()
        .open(SESSION_COOKIE, value)
        .expect("the session cookie opens with the gate's key");
    serde_json::from_slice(&plain).unwrap()
}

/// A session cookie value sealed with the gate's key.
fn seal_session(session: &Session) -> String {
    sealer()
        .seal(SESSION_COOKIE, &serde_json::to_vec(session).unwrap())
        .unwrap()
}

/// The browser's session cookie value.
fn browser_cookie(w: &World, b: &Browser) -> String {
    b.cookie(&w.url("/"), SESSION_COOKIE)
        .expect("the browser holds a session cookie")
}

/// The new session cookie value a response sets, if any.
fn new_session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|c| c.split(';').next()?.split_once('='))
        .find(|(name, value)| *name == SESSION_COOKIE && !value.is_empty())
        .map(|(_, value)| value.to_owned())
}

/// Whether a response deletes the session cookie.
fn deletes_session_cookie(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|c| c.starts_with(&format!("{SESSION_COOKIE}=;")) && c.contains("Max-Age=0"))
}

/// One request without a jar: `accept` and the session cookie `value`.
async fn get(w: &World, path: &str, accept: &str, value: &str) -> reqwest::Response {
    w.api()
        .get(w.url(path))
        .header(header::ACCEPT, accept)
        .header(header::COOKIE, format!("{SESSION_COOKIE}={value}"))
        .send()
        .await
        .unwrap()
}

/// The request reached the upstream as `user`.
fn assert_upstream_saw(w: &World, path: &str, user: &str, what: &str) {
    let seen = w
        .upstream
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path() == path)
        .unwrap_or_else(|| panic!("{what}: the upstream never saw {path}"));
    assert_eq!(seen.header("x-forwarded-user"), Some(user), "{what}");
    assert_eq!(
        seen.header("x-forwarded-email"),
        Some(format!("{user}@example.com").as_str()),
        "{what}"
    );
}

async fn stat(w: &World, path: &[&str]) -> u64 {
    let mut v = w.idp.stats().await;
    for key in path {
        v = v[*key].take();
    }
    v.as_u64().unwrap_or(0)
}

async fn refresh_grants(w: &World) -> u64 {
    w.idp.token_count("refresh_token").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_endpoint_a_session_outlives_its_tokens_without_a_new_sign_in() {
    let w = World::with(short_tokens(2, true)).await;
    let b = w.signed_in("alice").await;
    let first = browser_cookie(&w, &b);
    let gen0 = open_session(&first);
    assert!(
        gen0.refresh_token.is_some(),
        "the provider gave a refresh token"
    );
    assert!(gen0.expires_at <= now() + 2, "the tokens live 2 s");
    let sign_ins = w.idp.token_count("authorization_code").await;
    assert_eq!(refresh_grants(&w).await, 0);

    // A browser navigation after expiry: answered by the upstream, not sent to sign in.
    wait_past(gen0.expires_at).await;
    let page = b.get(&w.url("/app/later")).await;
    assert_eq!(page.status, 200, "after expiry: {}", page.body);
    assert_upstream_saw(&w, "/app/later", "alice", "navigation after expiry");
    let second = new_session_cookie(&page.headers).expect("the refreshed session is set");
    let gen1 = open_session(&second);
    assert!(
        gen1.expires_at > gen0.expires_at,
        "new tokens, later expiry"
    );
    assert_eq!(gen1.identity.sub, "alice");
    assert_eq!(
        browser_cookie(&w, &b),
        second,
        "the browser keeps the new cookie"
    );
    assert_eq!(refresh_grants(&w).await, 1);

    // An API call after the next expiry, with the new cookie: refreshed again.
    wait_past(gen1.expires_at).await;
    let resp = get(&w, "/api/items", JSON, &second).await;
    assert_eq!(resp.status(), 200);
    let third = new_session_cookie(resp.headers()).expect("refreshed again");
    assert!(open_session(&third).expires_at > gen1.expires_at);
    assert_upstream_saw(
        &w,
        "/api/items",
        "alice",
        "API call after the second expiry",
    );
    assert_eq!(refresh_grants(&w).await, 2);

    assert_eq!(
        w.idp.token_count("authorization_code").await,
        sign_ins,
        "nobody signed in again"
    );
    assert_eq!(stat(&w, &["token_errors"]).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_endpoint_an_expired_session_must_sign_in_again() {
    let w = World::with(short_tokens(2, false)).await;
    let b = w.signed_in("alice").await;
    let cookie = browser_cookie(&w, &b);
    let gen0 = open_session(&cookie);
    wait_past(gen0.expires_at).await;
    let before = w.upstream.requests().len();

    let page = b.get(&w.url("/app/later?x=1")).await;
    assert_sign_in_redirect(
        page.status,
        page.header("location"),
        "/app/later?x=1",
        "navigation after expiry",
    );
    let resp = get(&w, "/api/items", JSON, &cookie).await;
    assert_unauthorized(resp, "API call after expiry").await;

    assert_eq!(
        w.upstream.requests().len(),
        before,
        "the upstream saw a request"
    );
    assert_eq!(refresh_grants(&w).await, 0, "the gate refreshed anyway");
    assert_eq!(
        stat(&w, &["token_errors"]).await,
        0,
        "the gate tried to refresh"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_requests_share_one_refresh_under_rotation() {
    let w = World::with(short_rotating_tokens(2)).await;
    let b = w.signed_in("alice").await;
    let old = browser_cookie(&w, &b);
    let gen0 = open_session(&old);
    wait_past(gen0.expires_at).await;

    let client = w.api();
    let requests = (0..20).map(|i| {
        let (client, url, old) = (
            client.clone(),
            w.url(&format!("/api/burst/{i}")),
            old.clone(),
        );
        tokio::spawn(async move {
            client
                .get(url)
                .header(header::ACCEPT, JSON)
                .header(header::COOKIE, format!("{SESSION_COOKIE}={old}"))
                .send()
                .await
                .unwrap()
        })
    });
    let responses = futures_util::future::join_all(requests).await;
    let mut newest = Vec::new();
    for (i, resp) in responses.into_iter().enumerate() {
        let resp = resp.unwrap();
        assert_eq!(resp.status(), 200, "request {i} of the burst");
        newest
            .push(new_session_cookie(resp.headers()).expect("each answer carries the new session"));
        assert_upstream_saw(&w, &format!("/api/burst/{i}"), "alice", "burst");
    }
    assert_eq!(
        refresh_grants(&w).await,
        1,
        "one refresh for the whole burst"
    );
    assert_eq!(
        stat(&w, &["token_errors"]).await,
        0,
        "a rotated token was replayed"
    );
    let gen1 = open_session(&newest[19]);
    assert!(gen1.expires_at > gen0.expires_at);
    assert_ne!(gen1.refresh_token, None);

    // The new cookie works; the old one too, for a while: the gate remembers
    // the result instead of replaying the rotated refresh token.
    let resp = get(&w, "/api/next", JSON, &newest[19]).await;
    assert_eq!(resp.status(), 200);
    let resp = get(&w, "/api/late", JSON, &old).await;
    assert_eq!(resp.status(), 200, "a late request with the old cookie");
    assert!(new_session_cookie(resp.headers()).is_some());
    assert_eq!(refresh_grants(&w).await, 1);
    assert_eq!(stat(&w, &["token_errors"]).await, 0);

    // The grant survived: the next generation refreshes at the provider.
    wait_past(gen1.expires_at).await;
    let page = b.get(&w.url("/app/after")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_upstream_saw(
        &w,
        "/app/after",
        "alice",
        "the browser after the next expiry",
    );
    assert_eq!(refresh_grants(&w).await, 2);
    assert_eq!(stat(&w, &["token_errors"]).await, 0);
}

/// Revokes a refresh token at the provider, as an administrator would.
async fn revoke_at_provider(w: &World, refresh_token: &str) {
    let resp = w
        .api()
        .post(w.idp.url("/token/revocation"))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("token", refresh_token),
            ("token_type_hint", "refresh_token"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "revocation: {}",
        resp.text().await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_ends_the_session() {
    let w = World::with(short_tokens(2, true)).await;
    // alice's refresh token is revoked; bob signs out at the provider alone
    // (another tab), which revokes his grant.
    let alice = w.signed_in("alice").await;
    let bob = w.signed_in("bob").await;
    let alice_cookie = browser_cookie(&w, &alice);
    let bob_cookie = browser_cookie(&w, &bob);
    let (a0, b0) = (open_session(&alice_cookie), open_session(&bob_cookie));
    revoke_at_provider(&w, a0.refresh_token.as_ref().unwrap().expose()).await;
    let (page, visited) = bob
        .sign_out(&w.idp.url(&format!("/session/end?client_id={CLIENT_ID}")))
        .await;
    assert_eq!(page.status, 200, "{visited:?}");
    assert_eq!(stat(&w, &["end_session"]).await, 1, "{visited:?}");
    wait_past(a0.expires_at.max(b0.expires_at)).await;
    let before = w.upstream.requests().len();

    for (who, b, cookie) in [("alice", &alice, &alice_cookie), ("bob", &bob, &bob_cookie)] {
        let resp = get(&w, "/api/items", JSON, cookie).await;
        assert!(
            deletes_session_cookie(resp.headers()),
            "{who}: API answer keeps the session cookie: {:?}",
            resp.headers()
        );
        assert_unauthorized(resp, who).await;

        let page = b.get(&w.url("/app/next")).await;
        assert_sign_in_redirect(page.status, page.header("location"), "/app/next", who);
        assert!(
            deletes_session_cookie(&page.headers),
            "{who}: {:?}",
            page.headers
        );
        assert_eq!(b.cookie(&w.url("/"), SESSION_COOKIE), None, "{who}");
    }
    assert_eq!(
        w.upstream.requests().len(),
        before,
        "the upstream saw a request"
    );
    assert_eq!(refresh_grants(&w).await, 0);
    assert!(stat(&w, &["token_error_codes", "invalid_grant"]).await >= 2);

    // Signing in again works.
    let page = alice
        .sign_in(&w.url("/app/again"), "alice", "alice-pass")
        .await;
    assert_eq!(page.status, 200, "{} {}", page.url, page.body);
    assert_upstream_saw(&w, "/app/again", "alice", "signed in again");
}

/// A TCP relay in front of the provider that the test can cut off, as a
/// network outage between the gate and the token endpoint would.
struct Relay {
    port: u16,
    target: Arc<AtomicU16>,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Relay {
    async fn start() -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(AtomicU16::new(0));
        let up = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(Vec::<AbortHandle>::new()));
        let (t, u, c) = (target.clone(), up.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if !u.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is closed at once
                }
                let to = SocketAddr::from(([127, 0, 0, 1], t.load(Ordering::SeqCst)));
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                c.lock().unwrap().push(task.abort_handle());
            }
        })
        .abort_handle();
        Relay {
            port,
            target,
            up,
            connections,
            accept,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn forward_to(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
    }

    /// Down: open connections are cut and new ones closed at once.
    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            for c in self.connections.lock().unwrap().drain(..) {
                c.abort();
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.set_up(false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_provider_answers_503_and_keeps_the_session() {
    let relay = Relay::start().await;
    let mut setup = short_tokens(2, false);
    setup
        .vars
        .push(("CT_SSO_TOKEN_ENDPT".into(), relay.url("/token")));
    let w = World::with(setup).await;
    relay.forward_to(w.idp.port);
    let b = w.signed_in("alice").await;
    let cookie = browser_cookie(&w, &b);
    let gen0 = open_session(&cookie);

    relay.set_up(false);
    wait_past(gen0.expires_at).await;
    let before = w.upstream.requests().len();

    let resp = get(&w, "/api/items", JSON, &cookie).await;
    assert_eq!(resp.status(), 503);
    assert!(
        resp.headers().contains_key(header::RETRY_AFTER),
        "{:?}",
        resp.headers()
    );
    assert!(
        !deletes_session_cookie(resp.headers()),
        "{:?}",
        resp.headers()
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");

    let page = b.get(&w.url("/app/page")).await;
    assert_eq!(page.status, 503, "{}", page.body);
    assert!(
        page.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{:?}",
        page.headers
    );
    assert!(!deletes_session_cookie(&page.headers), "{:?}", page.headers);
    assert_eq!(browser_cookie(&w, &b), cookie, "the session is kept");
    assert_eq!(
        w.upstream.requests().len(),
        before,
        "the upstream saw a request"
    );
    assert_eq!(refresh_grants(&w).await, 0);

    // The provider is back: the very same session refreshes and carries on.
    relay.set_up(true);
    let page = b.get(&w.url("/app/back")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        new_session_cookie(&page.headers).is_some(),
        "{:?}",
        page.headers
    );
    assert_upstream_saw(&w, "/app/back", "alice", "after the provider came back");
    assert_eq!(refresh_grants(&w).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_refresh_grace_a_session_outlasts_a_provider_outage_for_that_long() {
    let mut setup = short_tokens(2, true);
    setup
        .vars
        .push(("CT_SSO_REFRESH_GRACE".into(), "4s".into()));
    let mut w = World::with(setup).await;
    let b = w.signed_in("alice").await;
    let cookie = browser_cookie(&w, &b);
    let gen0 = open_session(&cookie);
    w.idp.stop().await;

    wait_past(gen0.expires_at).await;
    let resp = get(&w, "/api/items", JSON, &cookie).await;
    assert_eq!(resp.status(), 200, "within the grace");
    assert_upstream_saw(&w, "/api/items", "alice", "API call within the grace");
    let page = b.get(&w.url("/app/page")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_upstream_saw(&w, "/app/page", "alice", "navigation within the grace");

    // Past the grace, the provider still down: 503, and the session is kept.
    wait_past(gen0.expires_at + 4).await;
    let resp = get(&w, "/api/items", JSON, &cookie).await;
    assert_eq!(resp.status(), 503, "past the grace");
    assert!(resp.headers().contains_key(header::RETRY_AFTER));
    assert!(!deletes_session_cookie(resp.headers()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maximum_age_ends_a_session_and_its_websocket_whatever_the_refreshes() {
    // CT_SESSION_MAX_AGE is at least 60 s: the session is resealed as if
    // signed in 57 s ago (its tokens are good for an hour, and refreshable).
    let w = World::with(Setup {
        refresh: true,
        vars: vec![("CT_SESSION_MAX_AGE".into(), "60s".into())],
        ..Setup::default()
    })
    .await;
    let b = w.signed_in("alice").await;
    let genuine = browser_cookie(&w, &b);
    let mut session = open_session(&genuine);
    assert!(session.refresh_token.is_some());
    session.created_at = now() - 57;
    let hard_end = session.created_at + 60;
    let aged = seal_session(&session);

    let resp = get(&w, "/api/young", JSON, &aged).await;
    assert_eq!(resp.status(), 200, "57 s old: still within the maximum age");
    let origin = w.url("");
    let mut ws = connect(
        &w,
        &[
            ("cookie", &format!("{SESSION_COOKIE}={aged}")),
            ("origin", &origin),
        ],
    )
    .await
    .expect("WebSocket");
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(next_message(&mut ws, 5).await, Message::text("ping"));

    let message = next_message(&mut ws, hard_end.saturating_sub(now()) + 5).await;
    assert_policy_close(&message, "maximum age reached");
    assert!(
        now_f64() + 0.5 >= hard_end as f64,
        "closed before the maximum age"
    );
    assert_eventually!(
        w.upstream.open_websockets() == 0,
        Duration::from_secs(5),
        "the upstream WebSocket stayed open"
    );

    let resp = get(&w, "/api/old", JSON, &aged).await;
    assert_unauthorized(resp, "past the maximum age").await;
    let resp = get(&w, "/app/old", HTML, &aged).await;
    let location = resp
        .headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_owned());
    assert_sign_in_redirect(
        resp.status().as_u16(),
        location.as_deref(),
        "/app/old",
        "past the maximum age",
    );
    // Expired tokens past the maximum age: refused without asking the provider.
    session.expires_at = now() - 1;
    let resp = get(&w, "/api/expired", JSON, &seal_session(&session)).await;
    assert_unauthorized(resp, "expired and past the maximum age").await;
    assert_eq!(
        refresh_grants(&w).await,
        0,
        "a session past its maximum age was refreshed"
    );

    let resp = get(&w, "/api/genuine", JSON, &genuine).await;
    assert_eq!(resp.status(), 200, "the real, young session is unaffected");
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// The next message within `secs` seconds.
async fn next_message(ws: &mut Ws, secs: u64) -> Message {
    tokio::time::timeout(Duration::from_secs(secs), ws.next())
        .await
        .unwrap_or_else(|_| panic!("nothing within {secs} s"))
        .expect("the WebSocket ended without a close frame")
        .expect("WebSocket error")
}

fn assert_policy_close(message: &Message, what: &str) {
    match message {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode::Policy, "{what}: {frame:?}");
        }
        other => panic!("{what}: expected a close frame with 1008, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_refresh_an_open_websocket_is_closed_with_1008_at_expiry() {
    let w = World::with(short_tokens(3, false)).await;
    let b = w.signed_in("alice").await;
    let gen0 = open_session(&browser_cookie(&w, &b));
    let origin = w.url("");
    let mut ws = connect(
        &w,
        &[("cookie", &cookie_header(&w, &b)), ("origin", &origin)],
    )
    .await
    .expect("WebSocket");
    ws.send(Message::text("before expiry")).await.unwrap();
    assert_eq!(
        next_message(&mut ws, 5).await,
        Message::text("before expiry")
    );
    assert_eq!(w.upstream.open_websockets(), 1);

    let message = next_message(&mut ws, gen0.expires_at.saturating_sub(now()) + 5).await;
    assert_policy_close(&message, "tokens expired");
    assert!(
        now_f64() + 0.5 >= gen0.expires_at as f64,
        "closed before expiry"
    );
    assert_eventually!(
        w.upstream.open_websockets() == 0,
        Duration::from_secs(5),
        "the upstream WebSocket stayed open after the session expired"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_refresh_an_open_websocket_outlives_token_expiry() {
    let w = World::with(short_rotating_tokens(2)).await;
    let b = w.signed_in("alice").await;
    let cookie = browser_cookie(&w, &b);
    let gen0 = open_session(&cookie);
    let origin = w.url("");
    let mut ws = connect(
        &w,
        &[("cookie", &cookie_header(&w, &b)), ("origin", &origin)],
    )
    .await
    .expect("WebSocket");

    // Past two expiries with nothing else going on: the gate refreshes in
    // the background (within a second of each expiry).
    assert_eventually!(
        refresh_grants(&w).await >= 2,
        Duration::from_secs(2 * 2 + 4),
        "the gate did not refresh the WebSocket's session twice"
    );
    wait_past(gen0.expires_at + 2).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_message(&mut ws, 5).await, Message::text("still here"));
    assert_eq!(w.upstream.open_websockets(), 1);

    // The browser's cookie is two rotations behind; the gate knows the newest
    // generation and neither replays the old refresh token nor refreshes again.
    let resp = get(&w, "/api/meanwhile", JSON, &cookie).await;
    assert_eq!(resp.status(), 200);
    assert!(new_session_cookie(resp.headers()).is_some());
    assert_upstream_saw(&w, "/api/meanwhile", "alice", "the old cookie");
    assert_eq!(
        stat(&w, &["token_errors"]).await,
        0,
        "a rotated token was replayed"
    );

    ws.close(None).await.unwrap();
    assert_eventually!(
        w.upstream.open_websockets() == 0,
        Duration::from_secs(5),
        "the upstream WebSocket stayed open after the client closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_refresh_a_streamed_response_is_cut_at_expiry() {
    let w = World::with(short_tokens(3, false)).await;
    let b = w.signed_in("alice").await;
    let gen0 = open_session(&browser_cookie(&w, &b));
    let resp = b
        .client()
        .get(w.url("/slow?chunks=100&interval_ms=100"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get(header::CONTENT_LENGTH).is_none());
    assert_eq!(w.upstream.open_streams(), 1);

    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    let deadline = gen0.expires_at.saturating_sub(now()) + 5;
    let ended = tokio::time::timeout(Duration::from_secs(deadline), async {
        loop {
            match stream.next().await {
                Some(Ok(piece)) => text.push_str(std::str::from_utf8(&piece).unwrap()),
                Some(Err(e)) => return Some(e),
                None => return None,
            }
        }
    })
    .await
    .expect("the stream went on long after the session expired");
    let chunks = text.matches('\n').count();
    assert!(
        ended.is_some(),
        "the stream finished cleanly after {chunks} chunks; it must be cut"
    );
    assert!(
        now_f64() + 0.5 >= gen0.expires_at as f64,
        "cut before expiry"
    );
    assert!(
        (1..100).contains(&chunks),
        "{chunks} chunks arrived before the cut"
    );
    assert_eventually!(
        w.upstream.open_streams() == 0,
        Duration::from_secs(5),
        "the upstream's stream stayed open"
    );
}

/// CPU seconds used so far by this process's threads whose name starts with
/// `prefix` (Linux: `/proc/self/task/*/stat`, 100 ticks a second).
fn cpu_seconds(prefix: &str) -> f64 {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // After "pid (comm)": state is field 3; utime and stime are fields 14 and 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        if fields.len() > 12 {
            ticks += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        }
    }
    ticks as f64 / 100.0
}

/// Tokens that live shorter than the refresh skew (default 60 s) keep a
/// session always "due"; an open WebSocket must still be refreshed at a
/// calm pace, not in a loop that burns a core.
#[test]
fn tokens_shorter_than_the_skew_keep_a_websocket_alive_without_spinning() {
    const THREADS: &str = "skew-short";
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(THREADS)
        .enable_all()
        .build()
        .unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(tokens_shorter_than_the_skew(THREADS));
    }));
    // A spinning task would keep a plain drop of the runtime waiting forever.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The body of the test above, on its named runtime.
async fn tokens_shorter_than_the_skew(threads: &str) {
    let w = World::with(Setup {
        refresh: true,
        idp: Box::new(|o| {
            o.id_token_ttl = 4;
            o.access_token_ttl = 4;
        }),
        ..Setup::default()
    })
    .await;
    let b = w.signed_in("alice").await;
    let origin = w.url("");
    let mut ws = connect(
        &w,
        &[("cookie", &cookie_header(&w, &b)), ("origin", &origin)],
    )
    .await
    .expect("WebSocket");
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(next_message(&mut ws, 5).await, Message::text("one"));
    let (cpu, grants) = (cpu_seconds(threads), refresh_grants(&w).await);
    let expires_at = open_session(&browser_cookie(&w, &b)).expires_at;

    // Past the tokens' expiry.
    wait_past(expires_at + 1).await;
    ws.send(Message::text("two")).await.unwrap();
    assert_eq!(next_message(&mut ws, 5).await, Message::text("two"));
    let used = cpu_seconds(threads) - cpu;
    let refreshed = refresh_grants(&w).await - grants;
    assert!(
        used < 1.0,
        "the gate used {used:.2} s of CPU in ~5 s with one idle WebSocket"
    );
    assert!(
        (1..=5).contains(&refreshed),
        "{refreshed} refreshes in ~5 s for 4 s tokens"
    );
    ws.close(None).await.unwrap();
}

/// Tokens that live shorter than `CT_SSO_REFRESH_SKEW` (30 s tokens, the
/// default 60 s skew) are refreshed halfway through their lifetime, not on
/// every request of a browser that keeps its cookie up to date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_shorter_than_the_skew_are_not_refreshed_on_every_request() {
    let w = World::with(Setup {
        refresh: true,
        idp: Box::new(|o| {
            o.id_token_ttl = 30;
            o.access_token_ttl = 30;
        }),
        ..Setup::default()
    })
    .await;
    let b = w.signed_in("alice").await;
    let before = refresh_grants(&w).await;
    for i in 0..5 {
        let page = b.get(&w.url(&format!("/app/{i}"))).await;
        assert_eq!(page.status, 200, "{}", page.body);
    }
    let refreshed = refresh_grants(&w).await - before;
    assert!(
        refreshed <= 1,
        "{refreshed} refreshes for 5 requests in a row with 30 s tokens"
    );
}
