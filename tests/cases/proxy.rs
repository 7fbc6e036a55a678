//! Forwarding: streaming both ways, large bodies, upstream failures, HTTP/2
//! and plain HTTP at the front, an https upstream, hop-by-hop hygiene and
//! the header-read timeout.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use rustls::pki_types::ServerName;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::assert_eventually;
use crate::cases::hostile::read_one_response;
use crate::support::browser::Browser;
use crate::support::certs::TestPki;
use crate::support::gate::{Setup, World};
use crate::support::upstream::{Upstream, pattern_byte};

/// A TLS connection to the gate (server name `localhost`) offering `alpn`.
pub(crate) async fn tls_connect(w: &World, alpn: &[&str]) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", w.gate.port))
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(w.pki.rustls_client_config(alpn));
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the gate")
}

/// The `Cookie` header a browser sends to the gate.
pub(crate) fn cookie_header(w: &World, b: &Browser) -> String {
    b.cookies_for(&w.url("/"))
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A client that shares the browser's cookies but speaks only HTTP/1.1.
fn http1_client(w: &World, b: &Browser) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(w.pki.reqwest_certificate())
        .cookie_provider(b.jar().clone())
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .http1_only()
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_response_reaches_the_client_chunk_by_chunk() {
    let w = World::start().await;
    let b = w.signed_in("alice").await;
    let resp = b
        .client()
        .get(w.url("/slow?chunks=5&interval_ms=300"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // When each `chunk i\n` line was complete at the client.
    let mut arrivals: Vec<Instant> = Vec::new();
    let mut text = String::new();
    let mut stream = resp.bytes_stream();
    while let Some(piece) = stream.next().await {
        text.push_str(std::str::from_utf8(&piece.unwrap()).unwrap());
        while arrivals.len() < text.matches('\n').count() {
            arrivals.push(Instant::now());
        }
    }
    assert_eq!(text, "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n");
    // The upstream sends the last chunk 1.2 s after the first; a gate that
    // buffered the body would deliver them together.
    let spread = arrivals[4] - arrivals[0];
    assert!(
        spread >= Duration::from_millis(900),
        "the first chunk arrived only {spread:?} before the last: the response was buffered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_ends_the_upstream_stream() {
    let w = World::start().await;
    let b = w.signed_in("alice").await;
    let resp = b
        .client()
        .get(w.url("/slow?chunks=1000&interval_ms=50"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"chunk 0"), "{first:?}");
    assert_eq!(w.upstream.open_streams(), 1);
    drop(stream);
    assert_eventually!(
        w.upstream.open_streams() == 0,
        Duration::from_secs(5),
        "the upstream kept streaming to a client that was gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_url_with_a_path_prefixes_forwarded_paths() {
    let upstream = Upstream::start().await;
    let w = World::with(Setup {
        vars: vec![("CT_UPSTREAM_URL".into(), format!("{}/base/", upstream.url))],
        ..Setup::default()
    })
    .await;
    let b = w.signed_in("alice").await;
    assert_eq!(upstream.last_request().unwrap().path(), "/base/");
    let page = b.get(&w.url("/a/b?c=1&d=%2F")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.path_and_query, "/base/a/b?c=1&d=%2F");
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
}

/// The upload body: `total` bytes in 1 MiB chunks, each a fixed pseudo-random
/// block stamped with its index, generated as the client sends it (never held
/// in memory as a whole). The sha256 of what was produced lands in `digest`.
fn generated_body(total: usize, digest: Arc<Mutex<Option<String>>>) -> reqwest::Body {
    const CHUNK: usize = 1 << 20;
    let mut x: u32 = 0x2545_f491;
    let block: Bytes = (0..CHUNK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into();
    let chunks = total.div_ceil(CHUNK);
    let stream = futures_util::stream::unfold((0usize, Sha256::new()), move |(i, mut hasher)| {
        let block = block.clone();
        let digest = digest.clone();
        async move {
            if i == chunks {
                let hex: String = hasher
                    .finalize()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                *digest.lock().unwrap() = Some(hex);
                return None;
            }
            let len = (total - i * CHUNK).min(CHUNK);
            let mut chunk = BytesMut::from(&block[..len]);
            let stamp = (i as u64).to_be_bytes();
            chunk[..stamp.len().min(len)].copy_from_slice(&stamp[..stamp.len().min(len)]);
            let chunk = chunk.freeze();
            hasher.update(&chunk);
            Some((Ok::<_, std::io::Error>(chunk), (i + 1, hasher)))
        }
    });
    reqwest::Body::wrap_stream(stream)
}

/// The body is streamed through the gate, never collected: the gate hands
/// hyper's `Incoming` to the upstream client as it is. That its memory stays
/// flat during such an upload is checked by the load script, not here; this
/// proves every byte arrives intact and in order. Sent over HTTP/1.1 with
/// chunked encoding (no length known up front), as a streaming client does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_streams_to_the_upstream_intact() {
    const SIZE: usize = 256 << 20;
    let w = World::start().await;
    let b = w.signed_in("alice").await;
    let digest = Arc::new(Mutex::new(None));
    let resp = http1_client(&w, &b)
        .post(w.url("/upload"))
        .header(ACCEPT, "application/json")
        .header(CONTENT_TYPE, "application/octet-stream")
        .timeout(Duration::from_secs(120))
        .body(generated_body(SIZE, digest.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got: serde_json::Value = resp.json().await.unwrap();
    let sent = digest.lock().unwrap().clone().expect("the body was sent");
    assert_eq!(got["bytes"], SIZE as u64, "{got}");
    assert_eq!(got["sha256"], sent.as_str(), "{got}");
    let seen = w.upstream.last_request().unwrap();
    assert_eq!(seen.path(), "/upload");
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_download_arrives_complete() {
    const SIZE: u64 = 64 << 20;
    let w = World::start().await;
    let b = w.signed_in("alice").await;
    let resp = b
        .client()
        .get(w.url(&format!("/big?bytes={SIZE}")))
        .header(ACCEPT, "*/*")
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.content_length(), Some(SIZE));
    let mut offset = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.expect("the download was cut short");
        if let Some(i) = (0..piece.len()).find(|&i| piece[i] != pattern_byte(offset + i as u64)) {
            panic!("byte {} is wrong", offset + i as u64);
        }
        offset += piece.len() as u64;
    }
    assert_eq!(offset, SIZE);
}

// A current-thread runtime, as the binary runs: the gate then starts its
// other serving threads with runtimes of their own, and a client connection
// stays on one thread with that thread's idle upstream connections. (On a
// work-stealing runtime a connection's requests move between threads, and
// each thread keeps idle connections of its own.)
#[tokio::test(flavor = "current_thread")]
async fn upstream_connections_are_kept_alive_and_replaced_when_the_upstream_drops_them() {
    let w = World::start().await;
    let b = w.signed_in("alice").await;

    // HTTP/1.1 on one client connection: it keeps one upstream connection
    // (opened for it, or the sign-in's idle one taken over).
    let cookie = cookie_header(&w, &b);
    let mut tls = tls_connect(&w, &["http/1.1"]).await;
    let port = w.gate.port;
    let mut get = async |path: String| {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nAccept: application/json\r\nCookie: {cookie}\r\n\r\n"
        );
        tls.write_all(req.as_bytes()).await.unwrap();
        read_one_response(&mut tls).await
    };
    w.upstream.clear();
    for i in 0..20 {
        assert_eq!(
            get(format!("/api/items/{i}")).await,
            Some(200),
            "request {i}"
        );
    }
    let kept = w.upstream.connections();
    assert!(kept <= 1, "{kept} upstream connections for 20 requests");
    // The upstream restarts (or times its idle connections out).
    w.upstream.drop_connections();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..5 {
        let status = get(format!("/api/after/{i}")).await;
        assert_eq!(status, Some(200), "request {i} after the drop");
    }
    assert_eq!(
        w.upstream.connections() - kept,
        1,
        "one new upstream connection after the drop"
    );
    assert_eq!(
        w.upstream.requests().len(),
        25,
        "each request reached the upstream once"
    );

    // HTTP/2: streams share the serving thread's idle connections. Under
    // load a stream may find the last one's connection not yet free and
    // open another; never one per request.
    w.upstream.clear();
    let json = async |path: String| {
        let resp = b
            .client()
            .get(w.url(&path))
            .header(ACCEPT, "application/json")
            .send()
            .await
            .unwrap();
        (resp.status(), resp.text().await.unwrap())
    };
    for i in 0..20 {
        let (status, body) = json(format!("/api/h2/{i}")).await;
        assert_eq!(status, 200, "HTTP/2 request {i}: {body}");
    }
    let kept = w.upstream.connections();
    assert!(
        kept < 20,
        "HTTP/2: {kept} upstream connections for 20 requests"
    );
    w.upstream.drop_connections();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..5 {
        let (status, body) = json(format!("/api/h2-after/{i}")).await;
        assert_eq!(status, 200, "HTTP/2 request {i} after the drop: {body}");
    }
    assert!(
        w.upstream.connections() > kept,
        "HTTP/2: no new connection after the drop"
    );
    assert_eq!(
        w.upstream.requests().len(),
        25,
        "HTTP/2: each request reached the upstream once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_head_over_64_kib_is_a_502_and_the_gate_keeps_serving() {
    let w = World::start().await;
    let b = w.signed_in("alice").await;
    // HTTP/1.1: reqwest's HTTP/2 client takes 16 KiB of headers at most.
    let client = http1_client(&w, &b);
    let get = |path: &str| {
        client
            .get(w.url(path))
            .header(ACCEPT, "application/json")
            .send()
    };
    let small = get("/big-head?bytes=40960").await.unwrap();
    assert_eq!(small.status(), 200, "a 40 KiB head passes");
    assert_eq!(small.headers().get_all("x-filler").iter().count(), 10);
    let big = get("/big-head?bytes=81920").await.unwrap();
    assert_eq!(big.status(), 502);
    let body: serde_json::Value = big.json().await.unwrap();
    assert_eq!(body["error"], "upstream_unavailable", "{body}");
    let after = get("/api/after").await.unwrap();
    assert_eq!(after.status(), 200);
}

/// Serves `HTTP/1.1 200 back` on `addr` to every connection, like an
/// upstream that came back up.
async fn serve_back_on(addr: &str) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("rebind the upstream's port");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 4\r\nconnection: close\r\n\r\nback")
                    .await;
                let _ = s.shutdown().await;
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gives_502_page_or_json_and_the_gate_keeps_serving() {
    let down = Upstream::closed_port_url();
    let w = World::with(Setup {
        vars: vec![("CT_UPSTREAM_URL".into(), down.clone())],
        ..Setup::default()
    })
    .await;
    let b = w.browser();
    // A browser signs in and lands on the gate's error page.
    let page = b.sign_in(&w.url("/app"), "alice", "alice-pass").await;
    assert_eq!(page.status, 502, "{}", page.body);
    assert!(
        page.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{:?}",
        page.headers
    );
    assert!(page.body.contains("<html"), "{}", page.body);
    // An API client with the same session gets JSON.
    let resp = b
        .client()
        .get(w.url("/api/items"))
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "upstream_unavailable", "{body}");
    // The gate itself is still there ...
    let health = w.api().get(w.url("/sso/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // ... and forwards again as soon as the upstream is back.
    let back = serve_back_on(down.trim_start_matches("http://")).await;
    let resp = b
        .client()
        .get(w.url("/api/items"))
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "back");
    back.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_http1_clients_are_served_and_forwarded_as_http1() {
    let w = World::start().await;
    let b = w.signed_in("alice").await;
    // The browser client offers h2 and http/1.1 by ALPN.
    let resp = b
        .client()
        .get(w.url("/via/h2?x=1"))
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echo["version"], "HTTP/1.1", "{echo}");
    assert_eq!(echo["path"], "/via/h2", "{echo}");
    assert_eq!(echo["headers"]["x-forwarded-user"][0], "alice", "{echo}");
    assert_eq!(
        echo["headers"]["x-forwarded-email"][0], "alice@example.com",
        "{echo}"
    );
    assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https", "{echo}");
    let cookies = echo["headers"]["cookie"].to_string();
    assert!(!cookies.contains("ssogate"), "{cookies}");

    let resp = http1_client(&w, &b)
        .get(w.url("/via/h1"))
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echo["version"], "HTTP/1.1", "{echo}");
    assert_eq!(echo["path"], "/via/h1", "{echo}");
    assert_eq!(echo["headers"]["x-forwarded-user"][0], "alice", "{echo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_gate_on_loopback_signs_in_end_to_end() {
    let w = World::with(Setup {
        tls: false,
        ..Setup::default()
    })
    .await;
    assert!(
        w.url("/").starts_with("http://localhost:"),
        "{}",
        w.url("/")
    );
    let b = w.signed_in("alice").await;
    let seen = w.upstream.last_request().unwrap();
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    let cookie = seen.header("cookie").unwrap_or_default();
    assert!(!cookie.contains("ssogate"), "{cookie}");
    // Without TLS the session cookie has no `__Host-` prefix (browsers would
    // refuse it), and the browser keeps using it.
    let names: Vec<String> = b
        .cookies_for(&w.url("/"))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.iter().any(|n| n.starts_with("ssogate")), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("__Host-")), "{names:?}");
    let page = b.get(&w.url("/again")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(
        w.upstream
            .last_request()
            .unwrap()
            .header("x-forwarded-user"),
        Some("alice")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_trusted_through_ct_upstream_ca_file() {
    let upstream_pki = TestPki::new();
    let secure = Upstream::start_tls(&upstream_pki).await;
    let w = World::with(Setup {
        vars: vec![
            ("CT_UPSTREAM_URL".into(), secure.url.clone()),
            (
                "CT_UPSTREAM_CA_FILE".into(),
                upstream_pki.ca_file.display().to_string(),
            ),
        ],
        ..Setup::default()
    })
    .await;
    let _b = w.signed_in("alice").await;
    let seen = secure
        .last_request()
        .expect("the https upstream was reached");
    assert_eq!(seen.path(), "/");
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
    assert!(
        w.upstream.requests().is_empty(),
        "the default upstream must not be used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_with_an_unknown_ca_gives_502() {
    let upstream_pki = TestPki::new();
    let secure = Upstream::start_tls(&upstream_pki).await;
    let w = World::with(Setup {
        vars: vec![("CT_UPSTREAM_URL".into(), secure.url.clone())],
        ..Setup::default()
    })
    .await;
    let b = w.browser();
    let page = b.sign_in(&w.url("/"), "alice", "alice-pass").await;
    assert_eq!(page.status, 502, "{}", page.body);
    assert!(
        secure.connections() >= 1,
        "the gate never tried the upstream"
    );
    assert!(
        secure.requests().is_empty(),
        "a request crossed an untrusted TLS connection"
    );
}

/// Sends one raw HTTP/1.1 request over TLS and reads until the gate closes.
async fn raw_request(w: &World, request: &str) -> String {
    let mut tls = tls_connect(w, &["http/1.1"]).await;
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    // rustls reports a missing close_notify as an error; what was read counts.
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_named_in_connection_and_spoofed_identity_do_not_reach_the_upstream() {
    let w = World::start().await;
    let b = w.signed_in("alice").await;
    w.upstream.clear();
    let request = format!(
        "GET /hop HTTP/1.1\r\nHost: localhost:{port}\r\nAccept: application/json\r\n\
Cookie: {cookies}\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nX-Kept: 2\r\n\
X-Forwarded-User: mallory\r\nX_Forwarded_Email: mallory@evil.example\r\n\r\n",
        port = w.gate.port,
        cookies = cookie_header(&w, &b),
    );
    let response = raw_request(&w, &request).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let seen = w.upstream.last_request().expect("forwarded");
    assert_eq!(seen.path(), "/hop");
    assert_eq!(seen.header("x-kept"), Some("2"), "{:?}", seen.headers);
    assert_eq!(seen.header("x-secret"), None, "{:?}", seen.headers);
    assert_eq!(seen.header_all("x-forwarded-user"), vec!["alice"]);
    assert_eq!(
        seen.header_all("x-forwarded-email"),
        vec!["alice@example.com"]
    );
    assert!(seen.header("x_forwarded_email").is_none());
}

/// Reads until the peer closes (or errors) and returns how long after
/// `since` (taken before the client connected, so never after the gate's
/// timer started) that was; `None` if still open `limit` after `since`.
async fn closed_within<S>(s: &mut S, since: Instant, limit: Duration) -> Option<Duration>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit.saturating_sub(since.elapsed()), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_disconnected_after_the_header_read_timeout() {
    let w = World::with(Setup {
        vars: vec![("CT_HEADER_READ_TIMEOUT".into(), "1s".into())],
        ..Setup::default()
    })
    .await;
    let limit = Duration::from_secs(5);

    // Half a request line, then nothing.
    let half_since = Instant::now();
    let mut half = tls_connect(&w, &["http/1.1"]).await;
    half.write_all(b"GET /sso/healthz HT").await.unwrap();
    half.flush().await.unwrap();
    // A finished TLS handshake, then not a single byte.
    let silent_since = Instant::now();
    let mut silent = tls_connect(&w, &["http/1.1"]).await;
    // A TCP connection that never even starts TLS.
    let bare_since = Instant::now();
    let mut bare = TcpStream::connect(("127.0.0.1", w.gate.port))
        .await
        .unwrap();

    let api = w.api();
    let normal = async {
        let started = Instant::now();
        let resp = api.get(w.url("/sso/healthz")).send().await.unwrap();
        (resp.status(), started.elapsed())
    };
    let (half_closed, silent_closed, bare_closed, (status, latency)) = tokio::join!(
        closed_within(&mut half, half_since, limit),
        closed_within(&mut silent, silent_since, limit),
        closed_within(&mut bare, bare_since, limit),
        normal
    );
    assert_eq!(status, 200);
    assert!(
        latency < Duration::from_millis(900),
        "a normal request waited {latency:?} behind stalled clients"
    );
    for (what, closed) in [
        ("half a request line", half_closed),
        ("nothing after the TLS handshake", silent_closed),
        ("no TLS handshake", bare_closed),
    ] {
        let after = closed.unwrap_or_else(|| {
            panic!("a client that sent {what} was still connected after {limit:?}")
        });
        assert!(
            after >= Duration::from_millis(900),
            "a client that sent {what} was dropped after only {after:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_of_a_plain_http_gate_are_disconnected_too() {
    let w = World::with(Setup {
        tls: false,
        vars: vec![("CT_HEADER_READ_TIMEOUT".into(), "1s".into())],
        ..Setup::default()
    })
    .await;
    let limit = Duration::from_secs(5);
    let since = Instant::now();
    let connect = || TcpStream::connect(("127.0.0.1", w.gate.port));
    let mut half = connect().await.unwrap();
    half.write_all(b"GET /sso/healthz HT").await.unwrap();
    let mut silent = connect().await.unwrap();
    let mut h2_start = connect().await.unwrap();
    h2_start.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let (half_closed, silent_closed, h2_closed) = tokio::join!(
        closed_within(&mut half, since, limit),
        closed_within(&mut silent, since, limit),
        closed_within(&mut h2_start, since, limit),
    );
    for (what, closed) in [
        ("half a request line", half_closed),
        ("nothing", silent_closed),
        ("half the HTTP/2 preface", h2_closed),
    ] {
        let after = closed.unwrap_or_else(|| {
            panic!("a client that sent {what} was still connected after {limit:?}")
        });
        assert!(
            after >= Duration::from_millis(900),
            "a client that sent {what} was dropped after only {after:?}"
        );
    }
    let resp = w.api().get(w.url("/sso/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}
