//! Hostile clients: paths that try to dodge the gate's routing, spoofed
//! forwarding headers, connection and header floods, stalled bodies,
//! request smuggling shapes, absolute-form targets, CR/LF injection,
//! HTTP/2 rapid reset and stream floods, slowloris, and a timed flood of
//! all of it against the real binary while its memory is watched.
//!
//! Malformed requests go out as raw bytes over plain TCP to a plain-HTTP
//! gate on loopback: HTTP client libraries normalise what they send and
//! cannot produce them. Requests that WOULD be forwarded if they passed
//! carry a session cookie sealed here with the gate's key, so "the upstream
//! saw nothing" means something.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ssogate::config::Secret;
use ssogate::identity::Identity;
use ssogate::session::{CookieNames, CookieStore, Sealer, Session, Store as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

use super::binary::Served;
use crate::assert_eventually;
use crate::support::gate::{
    CLIENT_ID, CLIENT_SECRET, COOKIE_SECRET, Gate, Setup, World, base_vars, override_vars, reserve,
};
use crate::support::idp::{Idp, IdpOptions};
use crate::support::upstream::Upstream;

/// How long one raw exchange may take before the test gives up on it.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 over TCP
// ---------------------------------------------------------------------------

/// What came back on one raw connection.
#[derive(Debug)]
struct Reply {
    bytes: Vec<u8>,
    /// The gate closed (or reset) the connection within the limit.
    closed: bool,
    /// From just before connecting until the close (or the limit).
    after: Duration,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The status of the first response, if there was one.
    fn status(&self) -> Option<u16> {
        let text = self.text();
        let line = text.lines().next()?;
        let mut parts = line.split(' ');
        let version = parts.next()?;
        if !version.starts_with("HTTP/1.") {
            return None;
        }
        parts.next()?.parse().ok()
    }

    /// The head of the first response (status line and headers).
    fn head(&self) -> String {
        let text = self.text();
        text.split_once("\r\n\r\n")
            .map_or(text.clone(), |(h, _)| h.to_owned())
    }

    fn body(&self) -> String {
        let text = self.text();
        text.split_once("\r\n\r\n")
            .map_or(String::new(), |(_, b)| b.to_owned())
    }

    /// Every value of header `name` in the first response.
    fn headers(&self, name: &str) -> Vec<String> {
        header_values(&self.head(), name)
    }
}

/// Every value of header `name` in a response head.
pub(crate) fn header_values(head: &str, name: &str) -> Vec<String> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

/// Reads until the peer closes or errors (`true`), or `limit` after `since` (`false`).
async fn read_until_close<R>(r: &mut R, since: Instant, limit: Duration) -> (Vec<u8>, bool)
where
    R: AsyncRead + Unpin,
{
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = tokio::time::timeout(limit.saturating_sub(since.elapsed()), async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (out, closed)
}

/// Sends `request` on a fresh connection to `127.0.0.1:port` (writing and
/// reading at once, so an answer given before the request is complete is
/// seen too) and reads until the gate closes or `limit` passes.
async fn raw_within(port: u16, request: &[u8], limit: Duration) -> Reply {
    let since = Instant::now();
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the gate");
    let (mut rd, mut wr) = tcp.into_split();
    let request = request.to_vec();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        let _ = wr.flush().await;
        // Keep the write side open: a half-close would end the exchange early.
        tokio::time::sleep(limit).await;
        drop(wr);
    });
    let (bytes, closed) = read_until_close(&mut rd, since, limit).await;
    writer.abort();
    Reply {
        bytes,
        closed,
        after: since.elapsed(),
    }
}

async fn raw(port: u16, request: &[u8]) -> Reply {
    raw_within(port, request, EXCHANGE_LIMIT).await
}

/// `GET path` with `Host`, the extra header lines, and `Connection: close`.
fn get(port: u16, path: &str, extra: &[String]) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\n");
    for line in extra {
        r.push_str(line);
        r.push_str("\r\n");
    }
    r.push_str("Connection: close\r\n\r\n");
    r.into_bytes()
}

fn cookie_line(cookie: &str) -> String {
    format!("Cookie: {cookie}")
}

pub(crate) const JSON: &str = "Accept: application/json";
const HTML: &str = "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

// ---------------------------------------------------------------------------
// Sessions sealed with the gate's key
// ---------------------------------------------------------------------------

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The `Cookie` header value of a valid one-hour session for `sub`, as a
/// gate with `COOKIE_SECRET` seals it (`https` picks the cookie names).
pub(crate) fn session_cookie(https: bool, sub: &str) -> String {
    let keys = vec![Secret::new(STANDARD.decode(COOKIE_SECRET).unwrap())];
    let store = CookieStore::new(
        Arc::new(Sealer::new(&keys).unwrap()),
        CookieNames::new(https),
    );
    let session = Session {
        id: ssogate::session::random_id(),
        option: "oidc".into(),
        identity: Identity {
            sub: sub.into(),
            email: Some(format!("{sub}@example.com")),
            name: Some(format!("{sub} Hostile")),
            preferred_username: Some(sub.into()),
        },
        sid: None,
        created_at: now(),
        issued_at: now(),
        expires_at: now() + 3600,
        refresh_token: None,
        id_token: None,
    };
    let mut out = Vec::new();
    store
        .save(&session, &http::HeaderMap::new(), now(), &mut out)
        .unwrap();
    out.iter()
        .map(|v| {
            v.to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A plain-HTTP world (loopback) with extra gate variables.
pub(crate) async fn plain_world(vars: &[(&str, &str)]) -> World {
    World::with(Setup {
        tls: false,
        vars: vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Setup::default()
    })
    .await
}

/// A second plain gate beside `w` (same provider, upstream and cookie key).
pub(crate) async fn extra_gate(w: &World, vars: &[(&str, &str)]) -> Gate {
    let (listener, url) = reserve(false).await;
    let mut all = base_vars(&url, &w.upstream.url, &w.idp.issuer, &w.pki, false);
    override_vars(
        &mut all,
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    );
    let gate = Gate::start_on(listener, url, all).await.unwrap();
    let port = gate.port;
    assert_eventually!(
        raw(port, &get(port, "/sso/readyz", &[])).await.status() == Some(200),
        Duration::from_secs(20),
        "the extra gate on {port} never became ready"
    );
    gate
}

/// The upstream's side of an `/upload` of `length` bytes ended (its
/// `/upload` records what it got) within `limit`, short of `length`; `how`
/// says where the client's body stopped.
pub(crate) async fn assert_upload_ended_short(
    upstream: &Upstream,
    length: u64,
    limit: Duration,
    how: &str,
) {
    let upload = || {
        upstream
            .requests()
            .into_iter()
            .find(|r| r.path() == "/upload")
    };
    assert_eventually!(
        upload().is_some(),
        limit,
        "the upstream's request body never ended"
    );
    let seen = upload().unwrap();
    assert!(
        seen.body_len < length,
        "the upstream read {} bytes of a body {how}",
        seen.body_len
    );
}

/// The gate on `port` still answers `/sso/healthz` and forwards a request
/// with `cookie` to `upstream`.
async fn assert_still_serving(port: u16, upstream: &Upstream, cookie: &str, after: &str) {
    let health = raw(port, &get(port, "/sso/healthz", &[])).await;
    assert_eq!(
        health.status(),
        Some(200),
        "after {after}: /sso/healthz was not served: {health:?}"
    );
    let path = format!("/still/serving/{}", now());
    let fwd = raw(port, &get(port, &path, &[JSON.into(), cookie_line(cookie)])).await;
    assert_eq!(
        fwd.status(),
        Some(200),
        "after {after}: an authenticated request was not forwarded: {}",
        fwd.text()
    );
    assert!(
        upstream.requests().iter().any(|r| r.path() == path),
        "after {after}: the upstream never saw {path}"
    );
}

/// Paths the upstream has seen since `before` (an index into `requests()`).
fn seen_since(upstream: &Upstream, before: usize) -> Vec<String> {
    upstream
        .requests()
        .iter()
        .skip(before)
        .map(|r| r.path_and_query.clone())
        .collect()
}

// ---------------------------------------------------------------------------
// Path normal form
// ---------------------------------------------------------------------------

/// Sends each path with a session; returns what went wrong for each path
/// that did not get the gate's 400 or that reached the upstream.
async fn refused_paths(w: &World, cookie: &str, paths: &[&str]) -> Vec<String> {
    let port = w.gate.port;
    let mut wrong = Vec::new();
    for path in paths {
        let before = w.upstream.requests().len();
        let reply = raw(port, &get(port, path, &[JSON.into(), cookie_line(cookie)])).await;
        let seen = seen_since(&w.upstream, before);
        if reply.status() != Some(400) || !seen.is_empty() {
            wrong.push(format!(
                "{path}: {:?}, upstream saw {seen:?}",
                reply.status()
            ));
        }
    }
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_get_400_from_the_gate_and_never_reach_the_upstream() {
    let w = plain_world(&[]).await;
    let cookie = session_cookie(false, "alice");
    let wrong = refused_paths(
        &w,
        &cookie,
        &[
            "/a%zz",
            "/a%4",
            "/app%",
            "/a%00b",
            "/a\\b",
            "/\\evil.example/x",
            "/../etc/passwd",
            "/a/../../x",
            "/a/%2e%2e/%2e%2e/x",
            "/%2E%2E/x",
        ],
    )
    .await;
    assert!(wrong.is_empty(), "not refused with 400: {wrong:#?}");
    assert_still_serving(w.gate.port, &w.upstream, &cookie, "hostile paths").await;
}

/// An encoded `/` or `\` is data inside one segment (file names hold it):
/// it stays encoded, is never read as the gate's prefix, and such a path
/// needs a session like any other (README "One path, one meaning").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slashes_stay_data_and_never_open_the_gates_routes() {
    let w = plain_world(&[]).await;
    let port = w.gate.port;
    let cookie = session_cookie(false, "alice");
    for (sent, forwarded) in [
        ("/a%2Fb", "/a%2Fb"),
        ("/a%2fb", "/a%2Fb"),
        ("/sso%2flogout", "/sso%2Flogout"),
        ("/a%5cb", "/a%5Cb"),
    ] {
        let before = w.upstream.requests().len();
        let anonymous = raw(port, &get(port, sent, &[JSON.into()])).await;
        assert_eq!(anonymous.status(), Some(401), "{sent} without a session");
        assert_eq!(
            w.upstream.requests().len(),
            before,
            "{sent}: upstream reached"
        );
        let reply = raw(port, &get(port, sent, &[JSON.into(), cookie_line(&cookie)])).await;
        assert_eq!(reply.status(), Some(200), "{sent}: {}", reply.text());
        assert_eq!(seen_since(&w.upstream, before), [forwarded], "{sent}");
    }
    assert_still_serving(w.gate.port, &w.upstream, &cookie, "encoded separators").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalised_before_routing_and_forwarded_normalised() {
    let w = plain_world(&[]).await;
    let port = w.gate.port;
    let cookie = session_cookie(false, "alice");
    let with_session = |path: &str| get(port, path, &[JSON.into(), cookie_line(&cookie)]);

    // Forwarded, in normal form.
    for (sent, forwarded) in [
        ("/sso/../x", "/x"),
        ("/app/%2e%2E/y?q=%2F", "/y?q=%2F"),
        ("/a/./b//c/", "/a/b/c/"),
        ("//app", "/app"),
        ("/a%20b/%7euser", "/a%20b/~user"),
        ("/a%3fb", "/a%3Fb"),
    ] {
        let before = w.upstream.requests().len();
        let reply = raw(port, &with_session(sent)).await;
        assert_eq!(reply.status(), Some(200), "{sent}: {}", reply.text());
        assert_eq!(
            seen_since(&w.upstream, before),
            [forwarded],
            "{sent} must reach the upstream as {forwarded}"
        );
    }

    // `/sso/../x` is `/x`: it needs a session like any other path.
    let reply = raw(port, &get(port, "/sso/../x", &[JSON.into()])).await;
    assert_eq!(
        reply.status(),
        Some(401),
        "/sso/../x without a session: {}",
        reply.text()
    );

    let before = w.upstream.requests().len();
    // `//sso/healthz` is the gate's own health check.
    let reply = raw(port, &get(port, "//sso/healthz", &[])).await;
    assert_eq!(reply.status(), Some(200), "//sso/healthz: {}", reply.text());
    assert!(reply.body().contains("ok"), "{}", reply.text());
    // `/app/../sso/userinfo` (encoded dots) is the gate's userinfo.
    let reply = raw(port, &with_session("/app/%2e%2E/sso/userinfo")).await;
    assert_eq!(reply.status(), Some(200), "{}", reply.text());
    assert!(reply.body().contains("\"alice\""), "{}", reply.text());
    // `/%73so/logout` is the gate's sign-out, answered as `/sso/logout` is.
    let direct = raw(port, &get(port, "/sso/logout", &[HTML.into()])).await;
    let encoded = raw(port, &get(port, "/%73so/logout", &[HTML.into()])).await;
    assert_eq!(
        encoded.status(),
        direct.status(),
        "/%73so/logout: {}\n/sso/logout: {}",
        encoded.text(),
        direct.text()
    );
    assert_eq!(encoded.headers("location"), direct.headers("location"));

    // Every other spelling of the gate's prefix is the gate's too: 404.
    for path in [
        "/SSO/anything",
        "/sso./x",
        "/Sso/healthz",
        "/sSo/userinfo",
        "/sso../x",
        "/%53SO/x",
        "/SSO",
    ] {
        let reply = raw(port, &with_session(path)).await;
        assert_eq!(
            reply.status(),
            Some(404),
            "{path}: expected the gate's 404: {}",
            reply.text()
        );
    }
    assert!(
        seen_since(&w.upstream, before).is_empty(),
        "gate-reserved paths reached the upstream: {:?}",
        seen_since(&w.upstream, before)
    );
    assert_still_serving(port, &w.upstream, &cookie, "path tricks").await;
}

// ---------------------------------------------------------------------------
// Forwarding headers and trusted proxies
// ---------------------------------------------------------------------------

/// Every spelling of the headers the gate owns, as a hostile client sends them.
fn spoofed_lines() -> Vec<String> {
    [
        "X-Forwarded-For: 6.6.6.6",
        "x_forwarded_for: 7.7.7.7",
        "x-FORWARDED-user: mallory",
        "X_Forwarded_User: mallory2",
        "X-Forwarded-Email: mallory@evil.example",
        "X-Forwarded-Proto: https",
        "X-Forwarded-Host: evil.example",
        "X-Forwarded-Port: 1",
        "Forwarded: for=6.6.6.6;host=evil.example;proto=https",
        "X-Real-IP: 6.6.6.6",
        "x_real_ip: 6.6.6.6",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Sends the spoofed headers with a session through the gate on `port` and
/// returns what the upstream saw.
async fn forward_spoofed(
    port: u16,
    upstream: &Upstream,
    cookie: &str,
    what: &str,
) -> crate::support::upstream::Recorded {
    let path = format!("/spoof/{what}");
    let mut lines = vec![JSON.to_owned(), cookie_line(cookie)];
    lines.extend(spoofed_lines());
    let reply = raw(port, &get(port, &path, &lines)).await;
    assert_eq!(reply.status(), Some(200), "{what}: {}", reply.text());
    upstream
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path() == path)
        .unwrap_or_else(|| panic!("{what}: the upstream never saw {path}"))
}

fn assert_owned_headers_are_the_gates(
    seen: &crate::support::upstream::Recorded,
    port: u16,
    xff: &str,
    what: &str,
) {
    let all = |n: &str| seen.header_all(n);
    assert_eq!(all("x-forwarded-for"), [xff], "{what}: {:?}", seen.headers);
    assert_eq!(all("x-forwarded-user"), ["alice"], "{what}");
    assert_eq!(all("x-forwarded-email"), ["alice@example.com"], "{what}");
    assert_eq!(all("x-forwarded-proto"), ["http"], "{what}");
    assert_eq!(
        all("x-forwarded-host"),
        [format!("localhost:{port}")],
        "{what}"
    );
    assert_eq!(all("host"), [format!("localhost:{port}")], "{what}");
    for gone in [
        "x_forwarded_for",
        "x_forwarded_user",
        "x-forwarded-port",
        "forwarded",
        "x-real-ip",
        "x_real_ip",
    ] {
        assert!(
            all(gone).is_empty(),
            "{what}: {gone} reached the upstream: {:?}",
            all(gone)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_the_gates_and_only_a_trusted_proxy_extends_x_forwarded_for() {
    let w = plain_world(&[]).await;
    let cookie = session_cookie(false, "alice");

    // Default (no trusted proxies): the client's X-Forwarded-For is replaced.
    let seen = forward_spoofed(w.gate.port, &w.upstream, &cookie, "untrusted").await;
    assert_owned_headers_are_the_gates(&seen, w.gate.port, "127.0.0.1", "no trusted proxies");

    // The peer (127.0.0.1) is a trusted proxy: its X-Forwarded-For is kept and extended.
    let trusted = extra_gate(&w, &[("CT_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")]).await;
    let seen = forward_spoofed(trusted.port, &w.upstream, &cookie, "trusted").await;
    assert_owned_headers_are_the_gates(
        &seen,
        trusted.port,
        "6.6.6.6, 127.0.0.1",
        "peer in CT_TRUSTED_PROXIES",
    );
    // ... and without one from the client, it is just the peer.
    let path = "/spoof/trusted-without-xff";
    let reply = raw(
        trusted.port,
        &get(trusted.port, path, &[JSON.into(), cookie_line(&cookie)]),
    )
    .await;
    assert_eq!(reply.status(), Some(200), "{}", reply.text());
    let seen = w.upstream.last_request().unwrap();
    assert_eq!(seen.path(), path);
    assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.1"]);

    // Trusted proxies that do not include the peer: replaced again.
    let other = extra_gate(&w, &[("CT_TRUSTED_PROXIES", "10.0.0.0/8,192.168.0.1")]).await;
    let seen = forward_spoofed(other.port, &w.upstream, &cookie, "other").await;
    assert_owned_headers_are_the_gates(&seen, other.port, "127.0.0.1", "peer not trusted");

    for port in [w.gate.port, trusted.port, other.port] {
        assert_still_serving(port, &w.upstream, &cookie, "spoofed headers").await;
    }
}

// ---------------------------------------------------------------------------
// Connection limit
// ---------------------------------------------------------------------------

/// Reads one response (head and `Content-Length` body) off a kept-alive
/// connection: its status, or `None` if the connection ended first.
pub(crate) async fn read_one_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let len: usize = header_values(&head, "content-length")
                    .first()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < end + 4 + len {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return None,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                return head.split(' ').nth(1).and_then(|c| c.parse().ok());
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()
        .flatten()
}

/// A connection that was served `/sso/healthz` and is kept alive.
async fn served_connection(port: u16) -> Option<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let req = format!("GET /sso/healthz HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    (read_one_response(&mut s).await == Some(200)).then_some(s)
}

/// A served, kept-alive connection, retrying until `limit` (slots free up
/// only once the gate has noticed earlier connections closing).
pub(crate) async fn served_within(port: u16, limit: Duration) -> Option<TcpStream> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = served_connection(port).await {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_ct_max_connections_are_closed_without_a_response() {
    const LIMIT: usize = 4;
    let w = plain_world(&[
        ("CT_MAX_CONNECTIONS", "4"),
        ("CT_HEADER_READ_TIMEOUT", "60s"),
    ])
    .await;
    let port = w.gate.port;
    // Fill the gate (the readiness client's connection may still be closing).
    let mut held = Vec::new();
    for i in 0..LIMIT {
        let s = served_within(port, Duration::from_secs(15)).await;
        held.push(s.unwrap_or_else(|| panic!("connection {i} of {LIMIT} was not served")));
    }

    // One more: closed at once, not a byte of response.
    for attempt in 0..3 {
        let req = format!("GET /sso/healthz HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n");
        let reply = raw_within(port, req.as_bytes(), Duration::from_secs(5)).await;
        assert!(
            reply.closed && reply.bytes.is_empty(),
            "connection {} (over CT_MAX_CONNECTIONS={LIMIT}, attempt {attempt}) was not closed \
             at once without a response: closed={} after {:?}, got {:?}",
            LIMIT + 1,
            reply.closed,
            reply.after,
            reply.text()
        );
    }
    // The held ones still work.
    for (i, s) in held.iter_mut().enumerate() {
        let req = format!("GET /sso/healthz HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        assert_eq!(read_one_response(s).await, Some(200), "held connection {i}");
    }

    // Once one closes, a new connection is served.
    drop(held.pop());
    let again = served_within(port, Duration::from_secs(10)).await;
    assert!(again.is_some(), "a freed connection slot was never reused");
    drop(again);
    held.clear();
    let cookie = session_cookie(false, "alice");
    assert_eventually!(
        raw(port, &get(port, "/sso/healthz", &[])).await.status() == Some(200),
        Duration::from_secs(10),
        "the gate did not serve again after the held connections closed"
    );
    assert_still_serving(port, &w.upstream, &cookie, "a full connection table").await;
}

/// A plain WebSocket to `/ws` through the gate with `cookie`.
async fn open_websocket(
    port: u16,
    cookie: &str,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the gate");
    let mut req = format!("ws://127.0.0.1:{port}/ws")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert(http::header::COOKIE, cookie.parse().unwrap());
    tokio_tungstenite::client_async(req, tcp)
        .await
        .map(|(ws, _)| ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_websockets_count_toward_ct_max_connections() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    const LIMIT: usize = 2;
    let w = plain_world(&[
        ("CT_MAX_CONNECTIONS", "2"),
        ("CT_HEADER_READ_TIMEOUT", "60s"),
    ])
    .await;
    let port = w.gate.port;
    let cookie = session_cookie(false, "alice");
    let mut sockets = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while sockets.len() < LIMIT {
        // Slots free up only once the gate has seen earlier connections
        // (the readiness check's) close.
        match open_websocket(port, &cookie).await {
            Ok(ws) => sockets.push(ws),
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "WebSocket {} not opened: {e}",
                    sockets.len()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eventually!(
        w.upstream.open_websockets() == LIMIT,
        Duration::from_secs(5),
        "the upstream never saw both WebSockets"
    );

    // Switched connections hold their slots: one more is closed unserved.
    for attempt in 0..3 {
        let req = format!("GET /sso/healthz HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n");
        let reply = raw_within(port, req.as_bytes(), Duration::from_secs(5)).await;
        assert!(
            reply.closed && reply.bytes.is_empty(),
            "a connection beyond {LIMIT} open WebSockets (attempt {attempt}) was served: {:?}",
            reply.text()
        );
    }
    // The WebSockets themselves still echo.
    for ws in &mut sockets {
        ws.send(Message::text("still here")).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no echo within 10 s")
            .expect("the WebSocket ended")
            .expect("WebSocket error");
        assert_eq!(echoed, Message::text("still here"));
    }

    // Once one closes, its slot serves a new connection.
    let mut first = sockets.remove(0);
    first.close(None).await.unwrap();
    drop(first);
    let again = served_within(port, Duration::from_secs(10)).await;
    assert!(
        again.is_some(),
        "a closed WebSocket's slot was never reused"
    );
}

// ---------------------------------------------------------------------------
// Header size limit
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_over_ct_max_header_bytes_get_431_and_the_connection_closes() {
    let w = plain_world(&[]).await;
    let small = extra_gate(&w, &[("CT_MAX_HEADER_BYTES", "8192")]).await;
    let cookie = session_cookie(false, "alice");

    // (gate port, limit)
    for (port, limit) in [(small.port, 8192usize), (w.gate.port, 65536)] {
        let before = w.upstream.requests().len();
        let one_big = format!("Cookie: big={}", "b".repeat(limit + 100));
        let many_in_one = format!(
            "Cookie: {}",
            (0..limit / 40 + 10)
                .map(|i| format!("c{i:04}={}", "v".repeat(40)))
                .collect::<Vec<_>>()
                .join("; ")
        );
        let many_lines: Vec<String> = (0..100)
            .map(|i| format!("Cookie: l{i:03}={}", "w".repeat(limit / 100 + 20)))
            .collect();
        let cases: Vec<(&str, Vec<String>)> = vec![
            ("one huge cookie", vec![JSON.into(), one_big]),
            ("many cookies in one header", vec![JSON.into(), many_in_one]),
            ("many Cookie lines", {
                let mut v = vec![JSON.to_owned()];
                v.extend(many_lines);
                v
            }),
            (
                "a huge cookie beside a session",
                vec![
                    JSON.into(),
                    cookie_line(&format!("{cookie}; big={}", "s".repeat(limit))),
                ],
            ),
        ];
        for (what, lines) in cases {
            let mut req = String::from_utf8(get(port, "/app/big-head", &lines)).unwrap();
            // Keep-alive, so a close is the gate's decision.
            req = req.replace("Connection: close\r\n", "");
            let reply = raw(port, req.as_bytes()).await;
            assert_eq!(
                reply.status(),
                Some(431),
                "{what} over {limit} bytes: expected 431: {}",
                reply.head()
            );
            assert!(
                reply.closed,
                "{what} over {limit} bytes: the connection stayed open"
            );
        }
        assert!(
            seen_since(&w.upstream, before).is_empty(),
            "oversized heads reached the upstream: {:?}",
            seen_since(&w.upstream, before)
        );
        // Just under the limit is served.
        let under = format!("Cookie: {cookie}; pad={}", "p".repeat(limit - 2048));
        let reply = raw(port, &get(port, "/app/under", &[JSON.into(), under])).await;
        assert_eq!(
            reply.status(),
            Some(200),
            "a head under {limit} bytes: {}",
            reply.head()
        );
        assert_still_serving(port, &w.upstream, &cookie, "oversized heads").await;
    }
}

// ---------------------------------------------------------------------------
// Stalled request body
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stalls_is_cut_after_ct_body_idle_timeout() {
    let w = plain_world(&[("CT_BODY_IDLE_TIMEOUT", "2s")]).await;
    let port = w.gate.port;
    let cookie = session_cookie(false, "alice");
    let req = format!(
        "POST /upload HTTP/1.1\r\nHost: localhost:{port}\r\n{JSON}\r\nCookie: {cookie}\r\n\
Content-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n0123456789"
    );
    let reply = raw_within(port, req.as_bytes(), Duration::from_secs(15)).await;
    assert!(
        reply.closed,
        "a body stalled after 10 of 100 bytes was still open after {:?} (CT_BODY_IDLE_TIMEOUT=2s): {}",
        reply.after,
        reply.text()
    );
    assert!(
        reply.after >= Duration::from_millis(1500),
        "the stalled upload was cut after only {:?}",
        reply.after
    );
    assert!(
        reply.after <= Duration::from_secs(12),
        "the stalled upload was cut only after {:?}",
        reply.after
    );
    assert_upload_ended_short(&w.upstream, 100, Duration::from_secs(10), "stalled at 10").await;
    assert_still_serving(port, &w.upstream, &cookie, "a stalled body").await;
}

// ---------------------------------------------------------------------------
// Request smuggling
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_are_refused_with_400_and_a_close_and_never_smuggle_a_request() {
    let w = plain_world(&[]).await;
    let port = w.gate.port;
    let cookie = session_cookie(false, "alice");
    let start = format!(
        "POST /app/smuggle HTTP/1.1\r\nHost: localhost:{port}\r\n{JSON}\r\nCookie: {cookie}\r\n"
    );
    let smuggled =
        format!("GET /smuggled HTTP/1.1\r\nHost: localhost:{port}\r\nCookie: {cookie}\r\n\r\n");
    // hyper alone would read the first two as chunked, having dropped
    // Content-Length, and merge the third; the gate's framing watch sees the
    // raw head and refuses all three.
    let cases: Vec<(&str, String)> = vec![
        (
            "Content-Length then Transfer-Encoding: chunked",
            format!(
                "{start}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "Transfer-Encoding: chunked then Content-Length",
            format!(
                "{start}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "two equal Content-Length headers",
            format!("{start}Content-Length: 4\r\ncontent-length: 4\r\n\r\nabcd{smuggled}"),
        ),
        (
            "two different Content-Length headers",
            format!("{start}Content-Length: 4\r\nContent-Length: 60\r\n\r\nabcd{smuggled}"),
        ),
        (
            "Content-Length: 1, 2",
            format!("{start}Content-Length: 1, 2\r\n\r\nab{smuggled}"),
        ),
        (
            "obs-fold (space)",
            format!("{start}X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n{smuggled}"),
        ),
        (
            "obs-fold (tab)",
            format!(
                "{start}X-Folded: a\r\n\tContent-Length: 40\r\nContent-Length: 0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "Transfer-Encoding: chunked, identity",
            format!("{start}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "chunked then identity in two Transfer-Encoding headers",
            format!(
                "{start}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, req) in &cases {
        let before = w.upstream.requests().len();
        let reply = raw(port, req.as_bytes()).await;
        let seen = seen_since(&w.upstream, before);
        let responses = reply.text().matches("HTTP/1.1 ").count();
        if reply.status() != Some(400) || !reply.closed || responses != 1 || !seen.is_empty() {
            wrong.push(format!(
                "{what}: status {:?}, closed {}, {responses} responses, upstream saw {seen:?}",
                reply.status(),
                reply.closed
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "smuggling shapes not refused with 400 and a close: {wrong:#?}"
    );
    assert!(
        w.upstream
            .requests()
            .iter()
            .all(|r| r.path() != "/smuggled"),
        "a smuggled request reached the upstream"
    );
    assert_still_serving(port, &w.upstream, &cookie, "smuggling shapes").await;
}

/// Keep-alive traffic is followed request by request: clean requests before
/// an ambiguous one on the same connection are served (bodies whole), the
/// ambiguous one gets 400 and the close, and what follows is never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_served_until_the_ambiguous_one() {
    let w = plain_world(&[]).await;
    let port = w.gate.port;
    let cookie = session_cookie(false, "alice");
    let head = |method: &str, path: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost:{port}\r\n{JSON}\r\nCookie: {cookie}\r\n"
        )
    };
    // A fixed-length body that itself looks like an ambiguous request.
    let inner = format!(
        "{}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        head("POST", "/inner")
    );
    let mut bytes = head("GET", "/pipe/1");
    bytes.push_str("\r\n");
    bytes.push_str(&head("POST", "/pipe/2"));
    bytes.push_str(&format!("Content-Length: {}\r\n\r\n{inner}", inner.len()));
    bytes.push_str(&head("POST", "/pipe/3"));
    bytes.push_str("Transfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n");
    bytes.push_str(&head("POST", "/pipe/4"));
    bytes.push_str("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    bytes.push_str(&head("GET", "/smuggled"));
    bytes.push_str("\r\n");

    let before = w.upstream.requests().len();
    let reply = raw(port, bytes.as_bytes()).await;
    let text = reply.text();
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "200", "400"], "{text}");
    assert!(reply.closed, "the connection stays open after the 400");
    let seen = seen_since(&w.upstream, before);
    assert_eq!(seen, ["/pipe/1", "/pipe/2", "/pipe/3"]);
    let bodies: Vec<u64> = w
        .upstream
        .requests()
        .iter()
        .skip(before)
        .map(|r| r.body_len)
        .collect();
    assert_eq!(bodies, [0, inner.len() as u64, 5]);
    assert_still_serving(port, &w.upstream, &cookie, "a pipelined smuggling attempt").await;
}

// ---------------------------------------------------------------------------
// Absolute-form targets and Host
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_targets_and_a_foreign_host_never_steer_the_gate() {
    let w = plain_world(&[]).await;
    let port = w.gate.port;
    let ours = format!("localhost:{port}");
    let cookie = session_cookie(false, "alice");

    let req = format!(
        "GET http://evil.example/app/abs?q=1 HTTP/1.1\r\nHost: evil.example\r\n{JSON}\r\n\
Cookie: {cookie}\r\nConnection: close\r\n\r\n"
    );
    let reply = raw(port, req.as_bytes()).await;
    assert_eq!(reply.status(), Some(200), "{}", reply.text());
    let seen = w.upstream.last_request().unwrap();
    assert_eq!(seen.path_and_query, "/app/abs?q=1");
    assert_eq!(
        seen.header_all("host"),
        std::slice::from_ref(&ours),
        "{:?}",
        seen.headers
    );
    assert_eq!(
        seen.header_all("x-forwarded-host"),
        std::slice::from_ref(&ours)
    );
    assert!(
        !format!("{:?}", seen.headers).contains("evil.example"),
        "evil.example reached the upstream: {:?}",
        seen.headers
    );

    // Sign-in builds its redirect_uri from CT_SERVER_URL, whatever the client says.
    let callback = format!("http://{ours}/sso/authorization-code/callback");
    for (what, req) in [
        (
            "Host: evil.example",
            format!(
                "GET /sso/login?rd=/x HTTP/1.1\r\nHost: evil.example\r\n{HTML}\r\nConnection: close\r\n\r\n"
            ),
        ),
        (
            "absolute-form",
            format!(
                "GET http://evil.example/sso/login?rd=/x HTTP/1.1\r\nHost: evil.example\r\n{HTML}\r\nConnection: close\r\n\r\n"
            ),
        ),
        (
            "X-Forwarded-Host: evil.example",
            format!(
                "GET /sso/login?rd=/x HTTP/1.1\r\nHost: {ours}\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n{HTML}\r\nConnection: close\r\n\r\n"
            ),
        ),
    ] {
        let reply = raw(port, req.as_bytes()).await;
        assert_eq!(reply.status(), Some(302), "{what}: {}", reply.text());
        let location = reply.headers("location");
        assert_eq!(location.len(), 1, "{what}: {location:?}");
        let to = url::Url::parse(&location[0]).unwrap();
        assert!(
            location[0].starts_with(&w.idp.issuer),
            "{what}: sign-in went to {location:?}, not the provider"
        );
        let redirect_uri = to
            .query_pairs()
            .find(|(k, _)| k == "redirect_uri")
            .map(|(_, v)| v.into_owned());
        assert_eq!(redirect_uri.as_deref(), Some(callback.as_str()), "{what}");
        assert!(
            !reply.head().contains("evil.example"),
            "{what}: {}",
            reply.head()
        );
    }
    assert_still_serving(port, &w.upstream, &cookie, "absolute-form targets").await;
}

// ---------------------------------------------------------------------------
// CR/LF injection
// ---------------------------------------------------------------------------

/// No header was injected into `head`, and Location (if any) is one sane value.
fn assert_nothing_injected(head: &str, what: &str) {
    for line in head.split("\r\n").skip(1) {
        let name = line.split(':').next().unwrap_or_default().trim();
        assert!(
            !name.eq_ignore_ascii_case("x-injected"),
            "{what}: injected header: {head}"
        );
    }
    for c in header_values(head, "set-cookie") {
        assert!(!c.starts_with("x="), "{what}: injected cookie {c}: {head}");
    }
    let location = header_values(head, "location");
    assert!(location.len() <= 1, "{what}: several Locations: {head}");
    for l in &location {
        assert!(
            !l.starts_with("http://evil") && !l.contains('\r') && !l.contains('\n'),
            "{what}: Location {l:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_cr_lf_never_becomes_a_header() {
    let w = plain_world(&[]).await;
    let port = w.gate.port;
    let cookie = session_cookie(false, "alice");

    for (target, accept) in [
        ("/sso/login?rd=%0d%0aSet-Cookie:%20x=1", HTML),
        ("/sso/login?rd=/x%0d%0aLocation:%20http://evil", HTML),
        ("/sso/login?rd=/x%0aX-Injected:%201", HTML),
        ("/sso/login?rd=%0d%0aX-Injected:%201", JSON),
        ("/app%0d%0aX-Injected:%201", HTML),
        ("/app?x=%0d%0aX-Injected:%201", HTML),
    ] {
        let reply = raw(port, &get(port, target, &[accept.into()])).await;
        let status = reply.status();
        assert!(
            matches!(status, Some(200..=499)),
            "{target}: {}",
            reply.text()
        );
        assert_nothing_injected(&reply.head(), target);
    }
    // Signed in, the return path comes back sane too.
    for target in [
        "/sso/login?rd=%0d%0aSet-Cookie:%20x=1",
        "/sso/login?rd=/x%0d%0aLocation:%20http://evil",
    ] {
        let reply = raw(
            port,
            &get(port, target, &[HTML.into(), cookie_line(&cookie)]),
        )
        .await;
        assert_eq!(reply.status(), Some(302), "{target}: {}", reply.text());
        assert_nothing_injected(&reply.head(), target);
        let location = reply.headers("location");
        assert!(
            location.len() == 1 && location[0].starts_with('/') && !location[0].starts_with("//"),
            "{target} (signed in): Location {location:?}"
        );
    }

    // Forwarded with a session: the encoded CR/LF stays encoded in the path.
    let before = w.upstream.requests().len();
    let reply = raw(
        port,
        &get(
            port,
            "/app%0d%0aX-Injected:%201",
            &[JSON.into(), cookie_line(&cookie)],
        ),
    )
    .await;
    assert_eq!(reply.status(), Some(200), "{}", reply.text());
    assert_nothing_injected(&reply.head(), "forwarded");
    let seen = seen_since(&w.upstream, before);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        !seen[0].contains('\r') && !seen[0].contains('\n'),
        "{seen:?}"
    );
    let last = w.upstream.last_request().unwrap();
    assert!(
        last.header("x-injected").is_none(),
        "the upstream got an injected header: {:?}",
        last.headers
    );
    assert_still_serving(port, &w.upstream, &cookie, "CR/LF injection").await;
}

// ---------------------------------------------------------------------------
// HTTP/2 by prior knowledge, in raw frames (the h2 crate is no dev-dependency)
// ---------------------------------------------------------------------------

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const H2_HEADERS: u8 = 0x1;
const H2_RST_STREAM: u8 = 0x3;
const H2_SETTINGS: u8 = 0x4;
const H2_GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK integer with an N-bit prefix.
fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u8, mut v: usize) {
    let max = (1usize << prefix_bits) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literal fields without indexing (no Huffman).
fn hpack_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

fn h2_request(
    stream: u32,
    method: &str,
    path: &str,
    port: u16,
    cookie: &str,
    end: bool,
) -> Vec<u8> {
    let authority = format!("localhost:{port}");
    let mut fields = vec![
        (":method", method),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority.as_str()),
        ("accept", "application/json"),
    ];
    if !cookie.is_empty() {
        fields.push(("cookie", cookie));
    }
    let flags = END_HEADERS | if end { END_STREAM } else { 0 };
    h2_frame(H2_HEADERS, flags, stream, &hpack_block(&fields))
}

async fn h2_read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok((head[3], head[4], stream, payload))
}

/// What the gate sent on a raw HTTP/2 connection.
#[derive(Clone, Debug, Default)]
struct H2Seen {
    responses: usize,
    refused: usize,
    other_resets: usize,
    goaway: Option<u32>,
    closed: bool,
}

/// A raw HTTP/2 connection: settings exchanged, a task reading every frame.
struct H2Conn {
    wr: OwnedWriteHalf,
    seen: Arc<Mutex<H2Seen>>,
    reader: tokio::task::JoinHandle<()>,
}

impl H2Conn {
    async fn open(port: u16) -> H2Conn {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (mut rd, mut wr) = tcp.into_split();
        let mut hello = H2_PREFACE.to_vec();
        hello.extend(h2_frame(H2_SETTINGS, 0, 0, &[]));
        wr.write_all(&hello).await.unwrap();
        // The server's SETTINGS first, then our ACK.
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let (kind, flags, _, _) = h2_read_frame(&mut rd)
                    .await
                    .expect("the gate speaks h2c by prior knowledge");
                if kind == H2_SETTINGS && flags & 1 == 0 {
                    break;
                }
            }
        })
        .await
        .expect("no SETTINGS from the gate");
        wr.write_all(&h2_frame(H2_SETTINGS, 1, 0, &[]))
            .await
            .unwrap();
        let seen = Arc::new(Mutex::new(H2Seen::default()));
        let s = seen.clone();
        let reader = tokio::spawn(async move {
            loop {
                let Ok((kind, _, _, payload)) = h2_read_frame(&mut rd).await else {
                    s.lock().unwrap().closed = true;
                    return;
                };
                let mut s = s.lock().unwrap();
                match kind {
                    H2_HEADERS => s.responses += 1,
                    H2_RST_STREAM if payload.len() >= 4 => {
                        let code =
                            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                        if code == REFUSED_STREAM {
                            s.refused += 1;
                        } else {
                            s.other_resets += 1;
                        }
                    }
                    H2_GOAWAY if payload.len() >= 8 => {
                        s.goaway = Some(u32::from_be_bytes([
                            payload[4], payload[5], payload[6], payload[7],
                        ]));
                    }
                    _ => {}
                }
            }
        });
        H2Conn { wr, seen, reader }
    }

    /// Writes `bytes`; false once the gate is gone.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        self.wr.write_all(bytes).await.is_ok()
    }

    fn seen(&self) -> H2Seen {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for H2Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A fresh HTTP/2 (prior knowledge) connection is served: health and a forward.
async fn assert_h2_still_serving(port: u16, upstream: &Upstream, cookie: &str, after: &str) {
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let resp = client
        .get(format!("http://localhost:{port}/sso/healthz"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("after {after}: h2 /sso/healthz failed: {e}"));
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200, "after {after}");
    let resp = client
        .get(format!("http://localhost:{port}/h2/after"))
        .header("accept", "application/json")
        .header("cookie", cookie)
        .send()
        .await
        .unwrap_or_else(|e| panic!("after {after}: h2 forward failed: {e}"));
    assert_eq!(resp.status(), 200, "after {after}");
    assert_eq!(upstream.last_request().unwrap().path(), "/h2/after");
    assert_still_serving(port, upstream, cookie, after).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_rapid_reset_flood_leaves_the_gate_serving() {
    const STREAMS: u32 = 2000;
    let w = plain_world(&[]).await;
    let port = w.gate.port;
    let cookie = session_cookie(false, "alice");
    w.upstream.clear();
    let mut conn = H2Conn::open(port).await;
    let started = Instant::now();
    let mut sent = 0u32;
    'flood: for batch in 0..STREAMS / 50 {
        let mut bytes = Vec::new();
        for i in 0..50 {
            let id = 1 + 2 * (batch * 50 + i);
            bytes.extend(h2_request(id, "GET", "/app/reset", port, &cookie, true));
            bytes.extend(h2_frame(H2_RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
        }
        if !conn.send(&bytes).await || started.elapsed() > Duration::from_secs(30) {
            break 'flood;
        }
        sent += 50;
    }
    // Let the gate deal with it (and maybe hang up), then look.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = conn.seen();
    eprintln!(
        "rapid reset: {sent} of {STREAMS} HEADERS+RST_STREAM pairs written in {:?}; gate: {seen:?}; \
         upstream saw {} requests",
        started.elapsed(),
        w.upstream.requests().len()
    );
    drop(conn);
    assert_h2_still_serving(port, &w.upstream, &cookie, "an HTTP/2 rapid reset flood").await;
}

/// `count` uploads whose body never comes, on streams `first`, `first + 2`, …
fn h2_stalled_uploads(first: u32, count: u32, port: u16, cookie: &str) -> Vec<u8> {
    (0..count)
        .flat_map(|i| h2_request(first + 2 * i, "POST", "/upload", port, cookie, false))
        .collect()
}

/// Waits until `measure` stops changing (sampled every 500 ms, at most `limit`).
async fn settle<T: PartialEq>(limit: Duration, mut measure: impl FnMut() -> T) -> T {
    let started = Instant::now();
    let mut last = measure();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = measure();
        if now == last || started.elapsed() > limit {
            return now;
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_flood_beyond_the_concurrency_limit_leaves_the_gate_serving() {
    const MAX_STREAMS: u32 = 256;
    let w = plain_world(&[]).await;
    let port = w.gate.port;
    let cookie = session_cookie(false, "alice");
    w.upstream.clear();
    let mut conn = H2Conn::open(port).await;

    // As many stalled uploads as the gate allows: each stays open at the
    // gate and at the upstream.
    assert!(
        conn.send(&h2_stalled_uploads(1, MAX_STREAMS, port, &cookie))
            .await
    );
    let filling = Instant::now();
    while w.upstream.connections() < MAX_STREAMS as usize
        && filling.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let forwarded = w.upstream.connections();
    // 100 more: over the limit, refused.
    let next = 1 + 2 * MAX_STREAMS;
    let accepted = conn
        .send(&h2_stalled_uploads(next, 100, port, &cookie))
        .await;
    let over = settle(Duration::from_secs(10), || {
        let s = conn.seen();
        (s.refused, s.other_resets, s.responses, s.closed)
    })
    .await;
    let seen = conn.seen();
    eprintln!(
        "stream flood: {MAX_STREAMS} stalled uploads, {forwarded} forwarded; 100 more (written: \
         {accepted}): gate {seen:?}; upstream connections {}",
        w.upstream.connections()
    );
    assert!(
        w.upstream.connections() <= MAX_STREAMS as usize,
        "{} streams of one connection were forwarded at once (limit {MAX_STREAMS})",
        w.upstream.connections()
    );
    assert!(
        over.0 >= 1 || over.3,
        "streams over the limit were neither refused nor the connection closed: {seen:?}"
    );
    // With the connection full, others are served.
    assert_h2_still_serving(port, &w.upstream, &cookie, "a full HTTP/2 connection").await;

    // Then a flood of 1000 more in one go.
    let mut bytes = Vec::new();
    for batch in 0..20u32 {
        bytes.extend(h2_stalled_uploads(
            next + 200 + 100 * batch,
            50,
            port,
            &cookie,
        ));
    }
    let _ = conn.send(&bytes).await;
    settle(Duration::from_secs(10), || {
        let s = conn.seen();
        (s.refused, s.other_resets, s.closed)
    })
    .await;
    eprintln!("stream flood: after 1000 more: gate {:?}", conn.seen());
    assert_h2_still_serving(port, &w.upstream, &cookie, "an HTTP/2 stream flood (open)").await;
    drop(conn);
    assert_h2_still_serving(port, &w.upstream, &cookie, "an HTTP/2 stream flood").await;
}

// ---------------------------------------------------------------------------
// Slowloris
// ---------------------------------------------------------------------------

/// Writes `first`, then one byte of `trickle` a second, until the gate hangs
/// up; returns how long after connecting the gate closed (None: never, within `limit`).
async fn trickle(port: u16, first: &[u8], trickle: &[u8], limit: Duration) -> Option<Duration> {
    let since = Instant::now();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let first = first.to_vec();
    let trickle = trickle.to_vec();
    let writer = tokio::spawn(async move {
        if wr.write_all(&first).await.is_err() {
            return;
        }
        for b in trickle.iter().take(60) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let (_, closed) = read_until_close(&mut rd, since, limit).await;
    writer.abort();
    closed.then(|| since.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_trickling_a_byte_a_second_is_cut_at_the_header_read_timeout() {
    let w = plain_world(&[("CT_HEADER_READ_TIMEOUT", "2s")]).await;
    let port = w.gate.port;
    let cookie = session_cookie(false, "alice");
    let limit = Duration::from_secs(12);
    let line = format!("GET /sso/healthz HTTP/1.1\r\nHost: localhost:{port}\r\n");
    let headers = "X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let from_the_first_byte = format!("{line}{headers}");
    let (after_line, from_first) = tokio::join!(
        trickle(port, line.as_bytes(), headers.as_bytes(), limit),
        trickle(port, b"G", &from_the_first_byte.as_bytes()[1..], limit),
    );
    for (what, closed) in [
        ("a header byte a second after the request line", after_line),
        ("a byte a second from the first byte on", from_first),
    ] {
        let after = closed.unwrap_or_else(|| {
            panic!("a client sending {what} was still connected after {limit:?} (CT_HEADER_READ_TIMEOUT=2s)")
        });
        assert!(
            after >= Duration::from_millis(1500),
            "a client sending {what} was dropped after only {after:?}"
        );
    }
    assert_still_serving(port, &w.upstream, &cookie, "slowloris").await;
}

// ---------------------------------------------------------------------------
// A timed flood against the real binary
// ---------------------------------------------------------------------------

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// A tiny xorshift, so the garbage is different every time but needs no seed file.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Kinds of hostile exchange in the flood.
const HOSTILE_KINDS: u64 = 12;

/// The bytes of one hostile exchange of kind `kind`.
fn hostile_bytes(port: u16, kind: u64, rng: &mut Rng, cookie: &str) -> Vec<u8> {
    let host = format!("localhost:{port}");
    let post = format!(
        "POST /app/flood HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nCookie: {cookie}\r\n"
    );
    let text = match kind {
        0 => format!("{post}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        1 => format!("{post}Content-Length: 4\r\nContent-Length: 40\r\n\r\nabcd"),
        2 => format!("{post}X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n"),
        3 => {
            let paths = [
                "/a%zz",
                "/../x",
                "/a%00",
                "/SSO/x",
                "/sso./x",
                "//sso/../..",
                "/a\\b",
            ];
            let p = paths[(rng.next() % paths.len() as u64) as usize];
            format!(
                "GET {p} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
            )
        }
        4 => {
            // Unauthenticated, three on one connection.
            let one =
                format!("GET /app/anon HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n");
            format!("{one}\r\n{one}\r\n{one}Connection: close\r\n\r\n")
        }
        5 => {
            // Garbage; half the time ended like a head, so it is parsed at once.
            let n = 1 + (rng.next() % 4096) as usize;
            let mut b = rng.bytes(n);
            if rng.next().is_multiple_of(2) {
                b.extend_from_slice(b"\r\n\r\n");
            }
            return b;
        }
        6 => {
            let n = 70_000 + (rng.next() % 30_000) as usize;
            format!(
                "GET /app/huge HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}; big={}\r\n\r\n",
                "h".repeat(n)
            )
        }
        7 => format!("GET /sso/healthz HTTP/1.1\r\nHost: {host}\r\nX-Partial: "),
        8 => {
            let mut b = H2_PREFACE.to_vec();
            b.extend(h2_frame(H2_SETTINGS, 0, 0, &[]));
            for i in 0..50u32 {
                let id = 1 + 2 * i;
                b.extend(h2_request(id, "GET", "/app/reset", port, cookie, true));
                b.extend(h2_frame(H2_RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
            }
            return b;
        }
        9 => format!(
            "POST /upload HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nContent-Length: 100\r\n\r\n0123456789"
        ),
        10 => format!(
            "GET /a%0d%0aX-Injected:%201 HTTP/1.1\r\nHost: evil.example\r\nX_Forwarded_User: mallory\r\n\
             X-Forwarded-For: 6.6.6.6\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        ),
        _ => "GET http://evil.example/sso/login?rd=%0d%0aSet-Cookie:%20x=1 HTTP/1.1\r\n\
              Host: evil.example\r\nAccept: text/html\r\nConnection: close\r\n\r\n"
            .to_owned(),
    };
    text.into_bytes()
}

/// One hostile exchange of kind `kind` on a fresh connection; bounded by `limit`.
async fn hostile_exchange(port: u16, kind: u64, rng: &mut Rng, cookie: &str, limit: Duration) {
    let bytes = hostile_bytes(port, kind, rng, cookie);
    let Ok(Ok(tcp)) = tokio::time::timeout(limit, TcpStream::connect(("127.0.0.1", port))).await
    else {
        return;
    };
    // A reset instead of TIME_WAIT: tens of thousands of connections must
    // not use up the loopback's ephemeral ports.
    let _ = tcp.set_zero_linger();
    let (mut rd, mut wr) = tcp.into_split();
    let since = Instant::now();
    // Partial heads, stalled bodies and raw h2 are dropped after a moment
    // (the gate must clean up after clients that vanish); the rest is read
    // until the gate closes.
    let hold = match kind {
        7 | 9 => Duration::from_millis(300),
        8 => Duration::from_millis(100),
        _ => limit,
    };
    let _ = tokio::time::timeout(hold, async {
        let write = async {
            let _ = wr.write_all(&bytes).await;
        };
        let read = read_until_close(&mut rd, since, limit);
        tokio::join!(write, read)
    })
    .await;
}

/// One good round: health and an authenticated forward, each within 10 s.
async fn good_round(port: u16, cookie: &str) -> Result<(), String> {
    let health = raw(port, &get(port, "/sso/healthz", &[])).await;
    if health.status() != Some(200) {
        return Err(format!(
            "/sso/healthz: {:?} after {:?}",
            health.status(),
            health.after
        ));
    }
    let fwd = raw(
        port,
        &get(port, "/flood/good", &[JSON.into(), cookie_line(cookie)]),
    )
    .await;
    if fwd.status() != Some(200) {
        return Err(format!(
            "forward: {:?} after {:?}: {}",
            fwd.status(),
            fwd.after,
            fwd.head()
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timed_flood_of_hostile_requests_leaves_the_binary_serving_with_flat_memory() {
    const TASKS: u64 = 6;
    const MAX_PER_TASK: u64 = 200_000;
    const MAX_GROWTH_KIB: u64 = 8 * 1024;
    let secs: u64 = std::env::var("SSOGATE_FLOOD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
        .max(1);
    let flood_for = Duration::from_secs(secs);
    // The first sample: ~10 s in (earlier for a shortened run).
    let first_sample_at = Duration::from_secs(10).min(flood_for / 3);

    let upstream = Upstream::start().await;
    let idp = Idp::start(&IdpOptions::new(
        CLIENT_ID,
        CLIENT_SECRET,
        "http://localhost:9",
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = [
        ("CT_UPSTREAM_URL", upstream.url.as_str()),
        ("CT_SSO_AUTHORIZATION_ENDPT", idp.issuer.as_str()),
        ("CT_SSO_CLIENT_ID", CLIENT_ID),
        ("CT_SSO_CLIENT_SECRET", CLIENT_SECRET),
        ("CT_COOKIE_SECRET", COOKIE_SECRET),
        ("CT_HEADER_READ_TIMEOUT", "2s"),
        ("CT_BODY_IDLE_TIMEOUT", "2s"),
        ("CT_SHUTDOWN_GRACE", "2s"),
        ("RUST_LOG", "warn"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut gate = Served::start(dir.path(), env, false, &client).await;
    let port = gate.port;
    let pid = gate.child.id().expect("the ssogate process is running");
    assert_eventually!(
        raw(port, &get(port, "/sso/readyz", &[])).await.status() == Some(200),
        Duration::from_secs(30),
        "the binary never became ready; output:\n{}",
        gate.output()
    );
    let cookie = session_cookie(false, "alice");
    good_round(port, &cookie).await.unwrap();
    let rss_start = rss_kib(pid);

    let started = Instant::now();
    let deadline = started + flood_for;
    let exchanges = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let cookie = cookie.clone();
        let exchanges = exchanges.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng =
                Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1).wrapping_mul(0x2545_f491_4f6c_dd1d) ^ now());
            for i in 0..MAX_PER_TASK {
                if Instant::now() >= deadline {
                    break;
                }
                let kind = (i + t * 5 + rng.next() % 3) % HOSTILE_KINDS;
                hostile_exchange(port, kind, &mut rng, &cookie, Duration::from_secs(5)).await;
                exchanges.fetch_add(1, Ordering::Relaxed);
                // A flood, not a fork bomb: leave the other tests some CPU.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    // Good requests during the flood, and the first memory sample.
    let mut rounds = 0usize;
    let mut failures = Vec::new();
    let mut rss_first = None;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2).min(flood_for / 4)).await;
        if rss_first.is_none() && started.elapsed() >= first_sample_at {
            rss_first = Some(rss_kib(pid));
        }
        rounds += 1;
        if let Err(e) = good_round(port, &cookie).await {
            failures.push(format!("{:?} in: {e}", started.elapsed()));
        }
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("a flood task did not stop")
            .unwrap();
    }
    let flood_took = started.elapsed();
    assert!(
        gate.child.try_wait().unwrap().is_none(),
        "the gate exited during the flood; output:\n{}",
        gate.output()
    );
    // Connections the flood left behind time out (2 s), then measure.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = good_round(port, &cookie).await;
    let rss_first = rss_first.unwrap_or(rss_start);
    let rss_end = rss_kib(pid);
    eprintln!(
        "flood: {} hostile exchanges from {TASKS} tasks in {flood_took:?}; {rounds} good rounds during, \
         {} failed; VmRSS start {rss_start} KiB, at ~{first_sample_at:?} {rss_first} KiB, end {rss_end} KiB \
         (growth {} KiB)",
        exchanges.load(Ordering::Relaxed),
        failures.len(),
        rss_end as i64 - rss_first as i64
    );
    assert!(
        failures.is_empty(),
        "good requests failed during the flood: {failures:?}\noutput:\n{}",
        gate.output()
    );
    assert!(rounds >= 1, "no good round ran during the flood");
    after.unwrap_or_else(|e| panic!("after the flood: {e}\noutput:\n{}", gate.output()));
    assert!(
        rss_end <= rss_first + MAX_GROWTH_KIB,
        "VmRSS grew from {rss_first} KiB (at ~{first_sample_at:?}) to {rss_end} KiB during the flood"
    );
    assert!(
        !upstream
            .requests()
            .iter()
            .any(|r| r.path() == "/smuggled" || r.header("x-injected").is_some()),
        "hostile requests reached the upstream"
    );
    let out = gate.output().to_ascii_lowercase();
    assert!(!out.contains("panicked"), "the gate panicked:\n{out}");
}
