//! What a client sees on one kept-alive HTTP/1.1 connection, over raw TCP:
//! pipelined requests, the gate's own routes and forwarded ones mixed,
//! `Connection: close`, `HEAD`, every framing of an upstream answer (from
//! the recording upstream and from a raw one written here), header hygiene
//! with odd header-name case, slow and idle clients, a client that hangs up
//! while its answer is awaited, and an upstream that is down.
//!
//! These guard any way the gate reads requests and writes answers (hyper,
//! or a path of its own for simple requests): each exchange checks the
//! answer in full and the next one on the same connection proves that the
//! previous answer ended exactly where its framing said.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::hostile::{JSON, extra_gate, header_values, plain_world, served_within, session_cookie};
use crate::assert_eventually;
use crate::support::gate::World;
use crate::support::upstream::{Upstream, pattern_byte};

/// How long one answer may take before the test gives up on it.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// A kept-alive raw HTTP/1.1 connection
// ---------------------------------------------------------------------------

/// One answer read off a connection, its body unframed.
#[derive(Debug)]
struct Answer {
    /// `HTTP/1.1` or `HTTP/1.0`.
    version: String,
    status: u16,
    /// Status line and header lines, without the blank line.
    head: String,
    body: Vec<u8>,
    /// Trailer lines of a chunked body (empty otherwise).
    trailers: String,
}

impl Answer {
    fn headers(&self, name: &str) -> Vec<String> {
        header_values(&self.head, name)
    }

    /// The one value of `name`; fails if it is missing or repeated.
    fn one(&self, name: &str) -> String {
        let values = self.headers(name);
        assert_eq!(values.len(), 1, "{name} in\n{}", self.head);
        values[0].clone()
    }

    fn has(&self, name: &str) -> bool {
        !self.headers(name).is_empty()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (the echo's, the gate's errors).
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n\n{}", self.head, self.text()))
    }

    fn chunked(&self) -> bool {
        self.headers("transfer-encoding")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("chunked"))
    }

    /// The upstream echo's view of the request: its path, and the one value
    /// of a header it received.
    fn echoed_path(&self) -> String {
        self.json()["path"].as_str().unwrap_or_default().to_owned()
    }

    fn echoed_header(&self, name: &str) -> Vec<String> {
        self.json()["headers"][name]
            .as_array()
            .map(|v| {
                v.iter()
                    .map(|s| s.as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A client connection to the gate that reads answers one by one, keeping
/// whatever arrived beyond the current one for the next.
struct Conn {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(port: u16) -> Conn {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to the gate");
        let _ = tcp.set_nodelay(true);
        Conn {
            tcp,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.tcp
            .write_all(bytes.as_ref())
            .await
            .expect("write to the gate");
    }

    /// Reads more bytes into the buffer; `false` at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// One line (without its CRLF).
    async fn line(&mut self) -> Result<String, String> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 2);
                return Ok(line);
            }
            if !self.fill().await {
                return Err(format!(
                    "the connection ended inside a line: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ));
            }
        }
    }

    async fn exactly(&mut self, n: usize) -> Result<Vec<u8>, String> {
        while self.buf.len() < n {
            if !self.fill().await {
                return Err(format!(
                    "the connection ended after {} of {n} body bytes",
                    self.buf.len()
                ));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    async fn read_answer(&mut self, head_request: bool) -> Result<Answer, String> {
        loop {
            let head = loop {
                if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                    self.buf.drain(..end + 4);
                    break head;
                }
                if !self.fill().await {
                    return Err(format!(
                        "the connection ended before an answer's head was complete: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ));
                }
            };
            let (version, status) = head
                .split_once(' ')
                .filter(|(v, _)| *v == "HTTP/1.1" || *v == "HTTP/1.0")
                .and_then(|(v, rest)| Some((v.to_owned(), rest.get(..3)?.parse::<u16>().ok()?)))
                .ok_or_else(|| format!("not an HTTP/1.x status line: {head:?}"))?;
            if (100..200).contains(&status) && status != 101 {
                continue; // an interim answer
            }
            let mut answer = Answer {
                version,
                status,
                head,
                body: Vec::new(),
                trailers: String::new(),
            };
            if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
                return Ok(answer);
            }
            if answer.chunked() {
                loop {
                    let size_line = self.line().await?;
                    let size = size_line.split(';').next().unwrap_or_default().trim();
                    let size = usize::from_str_radix(size, 16)
                        .map_err(|_| format!("bad chunk size line {size_line:?}"))?;
                    if size == 0 {
                        break;
                    }
                    let data = self.exactly(size).await?;
                    answer.body.extend_from_slice(&data);
                    if !self.line().await?.is_empty() {
                        return Err("chunk data not followed by CRLF".into());
                    }
                }
                loop {
                    let trailer = self.line().await?;
                    if trailer.is_empty() {
                        return Ok(answer);
                    }
                    answer.trailers.push_str(&trailer);
                    answer.trailers.push_str("\r\n");
                }
            }
            if let Some(len) = answer.headers("content-length").first() {
                let len: usize = len.parse().map_err(|_| format!("content-length {len}"))?;
                answer.body = self.exactly(len).await?;
                return Ok(answer);
            }
            // Delimited by the close.
            while self.fill().await {}
            answer.body = std::mem::take(&mut self.buf);
            return Ok(answer);
        }
    }

    /// The next answer (to a `HEAD` when `head_request`); fails the test if
    /// none comes within [`ANSWER_LIMIT`].
    async fn answer_to(&mut self, head_request: bool, what: &str) -> Answer {
        tokio::time::timeout(ANSWER_LIMIT, self.read_answer(head_request))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within {ANSWER_LIMIT:?}"))
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    async fn answer(&mut self, what: &str) -> Answer {
        self.answer_to(false, what).await
    }

    /// Sends `request` and reads its answer.
    async fn exchange(&mut self, request: &str, what: &str) -> Answer {
        self.send(request).await;
        self.answer(what).await
    }

    /// Bytes that arrive within `d` (none, when the connection is in step).
    async fn stray_bytes(&mut self, d: Duration) -> Vec<u8> {
        let _ = tokio::time::timeout(d, async { while self.fill().await {} }).await;
        std::mem::take(&mut self.buf)
    }

    /// Reads until the gate closes the connection: the bytes that came
    /// first, or `None` if it was still open after `limit`.
    async fn closed_within(&mut self, limit: Duration) -> Option<Vec<u8>> {
        tokio::time::timeout(limit, async { while self.fill().await {} })
            .await
            .ok()
            .map(|()| std::mem::take(&mut self.buf))
    }
}

/// `method path` with `Host` and the extra header lines; kept alive.
fn request(method: &str, path: &str, port: u16, lines: &[String]) -> String {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: localhost:{port}\r\n");
    for line in lines {
        r.push_str(line);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

/// The header lines of an API client with a session.
fn signed_in(cookie: &str) -> Vec<String> {
    vec![JSON.to_owned(), format!("Cookie: {cookie}")]
}

/// `lines` and one more.
fn with(lines: &[String], more: &str) -> Vec<String> {
    let mut v = lines.to_vec();
    v.push(more.to_owned());
    v
}

/// A forwarded answer from the echo: 200, for `path`, with one request id
/// that the upstream received as well.
fn assert_echo(a: &Answer, path: &str, what: &str) {
    assert_eq!(a.version, "HTTP/1.1", "{what}: {}", a.head);
    assert_eq!(a.status, 200, "{what}: {}\n\n{}", a.head, a.text());
    assert_eq!(a.echoed_path(), path, "{what}");
    let id = a.one("x-request-id");
    assert_eq!(
        a.echoed_header("x-request-id"),
        [id],
        "{what}: the upstream got another request id"
    );
}

// ---------------------------------------------------------------------------
// A raw upstream answering canned bytes
// ---------------------------------------------------------------------------

/// The hop-by-hop headers of [`RawUpstream`]'s `/hop` answer.
const UPSTREAM_HOPS: [&str; 5] = [
    "x-up",
    "keep-alive",
    "proxy-connection",
    "trailer",
    "upgrade",
];

/// An HTTP/1.1 upstream that answers canned bytes by path:
/// - `/close-10`: an HTTP/1.0 answer without a length, ended by the close;
/// - `/close-11`: the same in HTTP/1.1 with `Connection: close`;
/// - `/hop`: hop-by-hop headers, `X-Request-Id: upstream-id`, 2 bytes `ok`;
/// - `/trailers`: a chunked body with a chunk extension and a trailer;
/// - `/stall`: no answer; the connection is held until the gate drops it;
/// - anything else: 200 with the path as its body (`Content-Length`).
///
/// It reads request heads only (the tests send no bodies to it).
struct RawUpstream {
    url: String,
    /// Every request head received, oldest first.
    heads: Arc<Mutex<Vec<String>>>,
    /// `/stall` requests whose connection the gate has closed.
    stalls_dropped: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stalls_dropped = Arc::new(Mutex::new(0));
        let (h, s) = (heads.clone(), stalls_dropped.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(Self::serve(tcp, h.clone(), s.clone()));
            }
        });
        RawUpstream {
            url,
            heads,
            stalls_dropped,
            task,
        }
    }

    async fn serve(
        mut tcp: TcpStream,
        heads: Arc<Mutex<Vec<String>>>,
        stalls_dropped: Arc<Mutex<usize>>,
    ) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let head = loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    break head;
                }
                match tcp.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
            heads.lock().unwrap().push(head);
            let (answer, close): (Vec<u8>, bool) = match path.as_str() {
                "/close-10" => (
                    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nclose-delimited, HTTP/1.0"
                        .to_vec(),
                    true,
                ),
                "/close-11" => (
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n\
                      close-delimited, HTTP/1.1"
                        .to_vec(),
                    true,
                ),
                "/hop" => (
                    b"HTTP/1.1 200 OK\r\nConnection: x-up\r\nX-Up: 1\r\nKeep-Alive: timeout=5\r\n\
                      Proxy-Connection: keep-alive\r\nTrailer: X-T\r\nUpgrade: h2c\r\n\
                      X-Request-Id: upstream-id\r\nX-Kept: yes\r\nContent-Type: text/plain\r\n\
                      Content-Length: 2\r\n\r\nok"
                        .to_vec(),
                    false,
                ),
                "/trailers" => (
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\
                      Trailer: X-T\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n"
                        .to_vec(),
                    false,
                ),
                "/stall" => {
                    // Hold the connection until the gate lets go of it.
                    while let Ok(n) = tcp.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                    }
                    *stalls_dropped.lock().unwrap() += 1;
                    return;
                }
                other => (
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{other}",
                        other.len()
                    )
                    .into_bytes(),
                    false,
                ),
            };
            if close {
                // The body in two writes, then the end of the stream.
                let (first, rest) = answer.split_at(answer.len() - 5);
                if tcp.write_all(first).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = tcp.write_all(rest).await;
                let _ = tcp.shutdown().await;
                return;
            }
            if tcp.write_all(&answer).await.is_err() {
                return;
            }
        }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    fn stalls_dropped(&self) -> usize {
        *self.stalls_dropped.lock().unwrap()
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// Pipelining and mixed traffic
// ---------------------------------------------------------------------------

/// Three signed-in GETs in one write: three answers, in order, each from
/// the upstream for its own path and with its own request id; a sane
/// client id comes back and reaches the upstream unchanged, an unusable one
/// is replaced by the gate's on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pipelined_gets_get_three_answers_in_order_each_with_its_own_request_id() {
    let w = plain_world(&[]).await;
    let port = w.gate.port;
    let auth = signed_in(&session_cookie(false, "alice"));
    w.upstream.clear();
    let mut c = Conn::open(port).await;
    let mut bytes = request(
        "GET",
        "/pipe/1",
        port,
        &with(&auth, "X-Request-Id: client-trace-1"),
    );
    bytes.push_str(&request("GET", "/pipe/2?q=2", port, &auth));
    bytes.push_str(&request(
        "GET",
        "/pipe/3",
        port,
        &with(&auth, "X-Request-Id: not a usable id"),
    ));
    c.send(&bytes).await;

    let answers = [
        c.answer("pipelined 1").await,
        c.answer("pipelined 2").await,
        c.answer("pipelined 3").await,
    ];
    for (i, a) in answers.iter().enumerate() {
        assert_echo(
            a,
            &format!("/pipe/{}", i + 1),
            &format!("pipelined {}", i + 1),
        );
        assert_eq!(
            a.echoed_header("x-forwarded-user"),
            ["alice"],
            "pipelined {}",
            i + 1
        );
    }
    assert_eq!(answers[1].json()["query"], "q=2");
    let ids: Vec<String> = answers.iter().map(|a| a.one("x-request-id")).collect();
    assert_eq!(ids[0], "client-trace-1", "a sane client id is echoed");
    assert!(
        ids[1] != ids[0] && ids[2] != ids[0] && ids[1] != ids[2],
        "request ids are not distinct: {ids:?}"
    );
    assert!(
        !ids[2].contains(' ') && !ids[2].is_empty(),
        "an unusable client id came back: {:?}",
        ids[2]
    );
    // The upstream saw them in order, each with that id and nothing else.
    let seen = w.upstream.requests();
    let paths: Vec<&str> = seen.iter().map(|r| r.path()).collect();
    assert_eq!(paths, ["/pipe/1", "/pipe/2", "/pipe/3"]);
    for (r, id) in seen.iter().zip(&ids) {
        assert_eq!(r.header_all("x-request-id"), [id.as_str()], "{}", r.path());
    }
    assert!(
        c.stray_bytes(Duration::from_millis(200)).await.is_empty(),
        "bytes after the third answer"
    );
    // The connection is still in step.
    let a = c
        .exchange(
            &request("GET", "/pipe/4", port, &auth),
            "after the pipeline",
        )
        .await;
    assert_echo(&a, "/pipe/4", "after the pipeline");
}

/// The requests of a mixed keep-alive connection, with what each must get.
fn mixed_requests(port: u16, cookie: &str) -> Vec<(String, &'static str)> {
    let auth = signed_in(cookie);
    let mut post = with(&auth, "Content-Type: text/plain");
    post.push("Content-Length: 11".into());
    let mut post = request("POST", "/mix/post", port, &post);
    post.push_str("hello world");
    vec![
        (request("GET", "/mix/first", port, &auth), "/mix/first"),
        (post, "/mix/post"),
        (request("GET", "/mix/third", port, &auth), "/mix/third"),
        (request("GET", "/mix/anon", port, &[JSON.into()]), "401"),
        (request("GET", "/sso/healthz", port, &[]), "healthz"),
        (request("GET", "/mix/last", port, &auth), "/mix/last"),
    ]
}

fn assert_mixed(a: &Answer, expect: &str, what: &str) {
    match expect {
        "401" => {
            assert_eq!(a.status, 401, "{what}: {}", a.head);
            assert!(a.has("www-authenticate"), "{what}: {}", a.head);
        }
        "healthz" => {
            assert_eq!(a.status, 200, "{what}: {}", a.head);
            assert_eq!(a.json()["status"], "ok", "{what}");
        }
        path => {
            assert_echo(a, path, what);
            let method = if path == "/mix/post" { "POST" } else { "GET" };
            assert_eq!(a.json()["method"], method, "{what}");
            let body_len = if path == "/mix/post" { 11 } else { 0 };
            assert_eq!(a.json()["body_len"], body_len, "{what}");
        }
    }
}

/// Forwarded GETs, a POST with a body, an unauthenticated request, the
/// gate's own route and a GET again, on one connection: each answered in
/// order and right, whether sent one at a time or all in one write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keep_alive_connection_serves_forwarded_posted_refused_and_gate_requests_in_order() {
    let w = plain_world(&[]).await;
    let port = w.gate.port;
    let cookie = session_cookie(false, "alice");
    let requests = mixed_requests(port, &cookie);
    let forwarded = ["/mix/first", "/mix/post", "/mix/third", "/mix/last"];

    // One at a time.
    w.upstream.clear();
    let mut c = Conn::open(port).await;
    for (i, (req, expect)) in requests.iter().enumerate() {
        let a = c.exchange(req, &format!("one at a time, {i}")).await;
        assert_mixed(&a, expect, &format!("one at a time, {i}"));
    }
    let seen = w.upstream.requests();
    let paths: Vec<&str> = seen.iter().map(|r| r.path()).collect();
    assert_eq!(paths, forwarded, "one at a time");
    assert_eq!(seen[1].body_len, 11, "the POST's body");

    // All in one write.
    w.upstream.clear();
    let mut c = Conn::open(port).await;
    c.send(requests.iter().map(|(r, _)| r.as_str()).collect::<String>())
        .await;
    for (i, (_, expect)) in requests.iter().enumerate() {
        let a = c.answer(&format!("pipelined, {i}")).await;
        assert_mixed(&a, expect, &format!("pipelined, {i}"));
    }
    let seen = w.upstream.requests();
    let paths: Vec<&str> = seen.iter().map(|r| r.path()).collect();
    assert_eq!(paths, forwarded, "pipelined");
    assert_eq!(seen[1].body_len, 11, "the pipelined POST's body");
    assert!(
        c.stray_bytes(Duration::from_millis(200)).await.is_empty(),
        "bytes after the last answer"
    );
}

// ---------------------------------------------------------------------------
// Connection: close and HEAD
// ---------------------------------------------------------------------------

/// A request with `Connection: close` is answered with `connection: close`
/// and then the gate hangs up, whether it is the connection's first request
/// or a later one, and whatever the client sent after it is never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_answered_with_connection_close_and_then_the_gate_hangs_up() {
    let w = plain_world(&[]).await;
    let port = w.gate.port;
    let auth = signed_in(&session_cookie(false, "alice"));
    let closing = |path: &str| request("GET", path, port, &with(&auth, "Connection: close"));

    // The first request of its connection.
    let mut c = Conn::open(port).await;
    let a = c.exchange(&closing("/close/first"), "first").await;
    assert_echo(&a, "/close/first", "first");
    assert!(
        a.one("connection").eq_ignore_ascii_case("close"),
        "{}",
        a.head
    );
    let rest = c.closed_within(Duration::from_secs(5)).await;
    assert_eq!(
        rest.as_deref(),
        Some(&[][..]),
        "after Connection: close, first request"
    );

    // After a kept-alive one, with another request right behind it.
    w.upstream.clear();
    let mut c = Conn::open(port).await;
    let a = c
        .exchange(&request("GET", "/close/kept", port, &auth), "kept")
        .await;
    assert_echo(&a, "/close/kept", "kept");
    assert!(
        a.headers("connection")
            .iter()
            .all(|v| !v.eq_ignore_ascii_case("close")),
        "{}",
        a.head
    );
    let mut bytes = closing("/close/second");
    bytes.push_str(&request("GET", "/close/never", port, &auth));
    c.send(&bytes).await;
    let a = c.answer("second").await;
    assert_echo(&a, "/close/second", "second");
    assert!(
        a.one("connection").eq_ignore_ascii_case("close"),
        "{}",
        a.head
    );
    let rest = c.closed_within(Duration::from_secs(5)).await;
    assert_eq!(
        rest.as_deref(),
        Some(&[][..]),
        "after Connection: close, second request"
    );
    let paths: Vec<String> = w
        .upstream
        .requests()
        .iter()
        .map(|r| r.path().to_owned())
        .collect();
    assert_eq!(paths, ["/close/kept", "/close/second"]);

    // The gate's own routes close the same way.
    let mut c = Conn::open(port).await;
    let a = c
        .exchange(
            &request("GET", "/sso/healthz", port, &["Connection: close".into()]),
            "healthz",
        )
        .await;
    assert_eq!(a.status, 200);
    assert!(a.one("connection").eq_ignore_ascii_case("close"));
    assert!(c.closed_within(Duration::from_secs(5)).await.is_some());
}

/// `HEAD` gets the headers `GET` gets (the same `content-length`) and no
/// body: the next answer on the connection starts right after the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_gets_the_headers_of_get_and_no_body_and_the_connection_stays_in_step() {
    let w = plain_world(&[]).await;
    let port = w.gate.port;
    let auth = signed_in(&session_cookie(false, "alice"));
    let mut c = Conn::open(port).await;

    for path in ["/big?bytes=1000", "/status/200"] {
        let get = c
            .exchange(&request("GET", path, port, &auth), &format!("GET {path}"))
            .await;
        assert_eq!(get.status, 200, "GET {path}");
        let length = get.one("content-length");
        assert_eq!(length, get.body.len().to_string(), "GET {path}");

        c.send(request("HEAD", path, port, &auth)).await;
        let head = c.answer_to(true, &format!("HEAD {path}")).await;
        assert_eq!(head.status, 200, "HEAD {path}: {}", head.head);
        assert_eq!(head.one("content-length"), length, "HEAD {path}");
        assert_eq!(
            head.headers("content-type"),
            get.headers("content-type"),
            "HEAD {path}"
        );
        assert!(head.has("x-request-id"), "HEAD {path}");
        let stray = c.stray_bytes(Duration::from_millis(300)).await;
        assert!(
            stray.is_empty(),
            "HEAD {path}: body bytes after the head: {:?}",
            String::from_utf8_lossy(&stray)
        );
        let seen = w.upstream.last_request().unwrap();
        assert_eq!(seen.method, http::Method::HEAD, "HEAD {path}");
        let a = c
            .exchange(
                &request("GET", "/after/head", port, &auth),
                &format!("after HEAD {path}"),
            )
            .await;
        assert_echo(&a, "/after/head", &format!("after HEAD {path}"));
    }

    // A streamed answer (no length) to HEAD: the head, no body either.
    c.send(request(
        "HEAD",
        "/slow?chunks=3&interval_ms=20",
        port,
        &auth,
    ))
    .await;
    let head = c.answer_to(true, "HEAD /slow").await;
    assert_eq!(head.status, 200, "HEAD /slow: {}", head.head);
    let stray = c.stray_bytes(Duration::from_millis(300)).await;
    assert!(
        stray.is_empty(),
        "HEAD /slow: body bytes after the head: {:?}",
        String::from_utf8_lossy(&stray)
    );
    let a = c
        .exchange(
            &request("GET", "/after/head-slow", port, &auth),
            "after HEAD /slow",
        )
        .await;
    assert_echo(&a, "/after/head-slow", "after HEAD /slow");
}

// ---------------------------------------------------------------------------
// Upstream answer framings
// ---------------------------------------------------------------------------

/// Streamed (chunked), large (`Content-Length`), 204 and 304 answers reach
/// the client whole and framed as they were, each followed by another
/// request on the same client connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_large_and_bodiless_answers_keep_one_client_connection_in_step() {
    const BIG: usize = 300_000;
    let w = plain_world(&[]).await;
    let port = w.gate.port;
    let auth = signed_in(&session_cookie(false, "alice"));
    let mut c = Conn::open(port).await;
    let next = async |c: &mut Conn, after: &str| {
        let path = format!("/after/{after}");
        let a = c
            .exchange(
                &request("GET", &path, port, &auth),
                &format!("after {after}"),
            )
            .await;
        assert_echo(&a, &path, &format!("after {after}"));
    };

    // Streamed: chunked to the client, every chunk.
    let a = c
        .exchange(
            &request("GET", "/slow?chunks=4&interval_ms=50", port, &auth),
            "/slow",
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.head);
    assert!(a.chunked(), "a streamed answer is chunked: {}", a.head);
    assert!(!a.has("content-length"), "{}", a.head);
    assert_eq!(a.text(), "chunk 0\nchunk 1\nchunk 2\nchunk 3\n");
    assert!(a.trailers.is_empty(), "{:?}", a.trailers);
    next(&mut c, "slow").await;

    // Large: its length, every byte.
    let a = c
        .exchange(
            &request("GET", &format!("/big?bytes={BIG}"), port, &auth),
            "/big",
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.head);
    assert_eq!(a.one("content-length"), BIG.to_string(), "{}", a.head);
    assert!(!a.chunked(), "{}", a.head);
    assert_eq!(a.body.len(), BIG);
    for offset in [0, 1, 25, 26, 65_535, 65_536, 131_073, BIG - 1] {
        assert_eq!(
            a.body[offset],
            pattern_byte(offset as u64),
            "byte {offset} of /big"
        );
    }
    let wrong = (0..BIG).find(|&i| a.body[i] != pattern_byte(i as u64));
    assert_eq!(wrong, None, "the first wrong byte of /big");
    next(&mut c, "big").await;

    // 204 and 304: no body, no framing headers for one.
    for code in [204u16, 304] {
        let a = c
            .exchange(
                &request("GET", &format!("/status/{code}"), port, &auth),
                &format!("/status/{code}"),
            )
            .await;
        assert_eq!(a.status, code, "{}", a.head);
        assert!(
            !a.chunked(),
            "{code} with Transfer-Encoding: chunked: {}",
            a.head
        );
        assert!(
            a.headers("content-length").iter().all(|v| v == "0"),
            "{code}: {}",
            a.head
        );
        assert!(a.has("x-request-id"), "{code}: {}", a.head);
        let stray = c.stray_bytes(Duration::from_millis(200)).await;
        assert!(stray.is_empty(), "{code}: bytes after the head: {stray:?}");
        next(&mut c, &code.to_string()).await;
    }
    let paths: Vec<String> = w
        .upstream
        .requests()
        .iter()
        .map(|r| r.path().to_owned())
        .collect();
    assert_eq!(
        paths,
        [
            "/slow",
            "/after/slow",
            "/big",
            "/after/big",
            "/status/204",
            "/after/204",
            "/status/304",
            "/after/304"
        ]
    );
}

/// The next request after an answer of the raw upstream: its plain answer,
/// in HTTP/1.1, with one `Date` (the raw upstream sends none).
async fn raw_next(c: &mut Conn, port: u16, auth: &[String], after: &str) {
    let path = format!("/after/{after}");
    let a = c
        .exchange(
            &request("GET", &path, port, auth),
            &format!("after {after}"),
        )
        .await;
    assert_eq!(a.version, "HTTP/1.1", "after {after}: {}", a.head);
    assert_eq!(a.status, 200, "after {after}: {}", a.head);
    assert_eq!(a.text(), path, "after {after}");
    assert_eq!(a.headers("date").len(), 1, "after {after}: {}", a.head);
}

/// An answer of the raw upstream ended by its close reached an HTTP/1.1
/// client whole, re-framed so that the client's connection stays open.
fn assert_reframed(a: &Answer, path: &str, body: &str) {
    assert_eq!(a.version, "HTTP/1.1", "{path}: {}", a.head);
    assert_eq!(a.status, 200, "{path}: {}", a.head);
    assert_eq!(a.text(), body, "{path}");
    assert!(
        a.chunked(),
        "{path}: an answer without a length goes to an HTTP/1.1 client chunked: {}",
        a.head
    );
    assert!(
        a.headers("connection")
            .iter()
            .all(|v| !v.eq_ignore_ascii_case("close")),
        "{path}: the upstream's close is not the client's: {}",
        a.head
    );
}

/// From a raw upstream: an HTTP/1.1 answer ended by the close reaches the
/// client whole and re-framed, so the client's connection stays open; a
/// chunked answer's extension and trailer stay behind; hop-by-hop headers
/// (and the one its `Connection` names) never reach the client; the
/// upstream's `X-Request-Id` is replaced by the gate's; a `Date` is added
/// when the upstream sent none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_upstreams_close_delimited_chunked_and_hop_by_hop_answers_reach_the_client_clean() {
    let up = RawUpstream::start().await;
    let w = plain_world(&[("CT_UPSTREAM_URL", &up.url)]).await;
    let port = w.gate.port;
    let auth = signed_in(&session_cookie(false, "alice"));
    let mut c = Conn::open(port).await;

    let a = c
        .exchange(&request("GET", "/close-11", port, &auth), "/close-11")
        .await;
    assert_reframed(&a, "/close-11", "close-delimited, HTTP/1.1");
    raw_next(&mut c, port, &auth, "close-11").await;

    let a = c
        .exchange(&request("GET", "/trailers", port, &auth), "/trailers")
        .await;
    assert_eq!(a.status, 200, "{}", a.head);
    assert_eq!(a.text(), "hello world");
    assert!(
        a.trailers.is_empty(),
        "trailers passed on: {:?}",
        a.trailers
    );
    assert!(!a.has("trailer"), "{}", a.head);
    raw_next(&mut c, port, &auth, "trailers").await;

    // Hop-by-hop answer headers, with and without a client request id.
    for client_id in [Some("client-hop-1"), None] {
        let lines = match client_id {
            Some(id) => with(&auth, &format!("X-Request-Id: {id}")),
            None => auth.clone(),
        };
        let a = c
            .exchange(&request("GET", "/hop", port, &lines), "/hop")
            .await;
        assert_eq!(a.status, 200, "{}", a.head);
        assert_eq!(a.text(), "ok");
        assert_eq!(a.one("x-kept"), "yes");
        for hop in UPSTREAM_HOPS {
            assert!(!a.has(hop), "{hop} reached the client:\n{}", a.head);
        }
        assert!(
            a.headers("connection")
                .iter()
                .all(|v| !v.to_ascii_lowercase().contains("x-up")),
            "{}",
            a.head
        );
        let id = a.one("x-request-id");
        assert_ne!(id, "upstream-id", "the upstream's request id came back");
        if let Some(sent) = client_id {
            assert_eq!(id, sent);
        }
        let up_head = up.heads().pop().unwrap();
        assert_eq!(
            header_values(&up_head, "x-request-id"),
            [id.as_str()],
            "the request id the upstream got: {up_head}"
        );
        assert_eq!(a.headers("date").len(), 1, "{}", a.head);
        raw_next(&mut c, port, &auth, "hop").await;
    }
}

/// An HTTP/1.0 upstream answer without a length, to an HTTP/1.1 client:
/// the gate, an intermediary, answers in its own version (RFC 9110 §6.2),
/// re-frames the body, and keeps the client's connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_upstream_answer_reaches_an_http_1_1_client_as_http_1_1_on_a_kept_connection() {
    let up = RawUpstream::start().await;
    let w = plain_world(&[("CT_UPSTREAM_URL", &up.url)]).await;
    let port = w.gate.port;
    let auth = signed_in(&session_cookie(false, "alice"));
    let mut c = Conn::open(port).await;
    let a = c
        .exchange(&request("GET", "/close-10", port, &auth), "/close-10")
        .await;
    assert_reframed(&a, "/close-10", "close-delimited, HTTP/1.0");
    raw_next(&mut c, port, &auth, "close-10").await;
}

// ---------------------------------------------------------------------------
// Header hygiene with odd header-name case
// ---------------------------------------------------------------------------

/// On one kept-alive connection, headers in odd case: `cOOKIE` still signs
/// the request in (and the gate's cookie still goes), spoofed forwarding
/// headers are replaced or removed, a header `Connection` names never
/// reaches the upstream, and neither does the client's `Host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_case_headers_are_judged_and_cleaned_as_any_others_on_a_kept_connection() {
    let w = plain_world(&[]).await;
    let port = w.gate.port;
    let ours = format!("localhost:{port}");
    let cookie = session_cookie(false, "alice");
    let mut c = Conn::open(port).await;
    let get = |path: &str, lines: &[&str]| {
        let lines: Vec<String> = std::iter::once(JSON)
            .chain(lines.iter().copied())
            .map(str::to_owned)
            .collect();
        request("GET", path, port, &lines)
    };
    let last = |path: &str| {
        let seen = w.upstream.last_request().expect("forwarded");
        assert_eq!(seen.path(), path);
        seen
    };

    // `cOOKIE`: signed in, the gate's cookie taken out, the app's passed.
    let odd_cookie = format!("cOOKIE: app=1; {cookie}");
    let a = c
        .exchange(&get("/hyg/cookie", &[&odd_cookie]), "cOOKIE")
        .await;
    assert_echo(&a, "/hyg/cookie", "cOOKIE");
    let seen = last("/hyg/cookie");
    assert_eq!(seen.header_all("x-forwarded-user"), ["alice"]);
    assert_eq!(seen.header_all("cookie"), ["app=1"], "{:?}", seen.headers);

    // Spoofed forwarding headers, in odd case and with `_`.
    let a = c
        .exchange(
            &get(
                "/hyg/spoof",
                &[
                    &format!("COOKIE: {cookie}"),
                    "X-FORWARDED-FOR: 6.6.6.6",
                    "x_real_ip: 6.6.6.6",
                    "X-REAL-IP: 6.6.6.6",
                    "x-FORWARDED-user: mallory",
                    "X_FORWARDED_EMAIL: mallory@evil.example",
                ],
            ),
            "spoofed",
        )
        .await;
    assert_echo(&a, "/hyg/spoof", "spoofed");
    let seen = last("/hyg/spoof");
    assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.header_all("x-forwarded-user"), ["alice"]);
    assert_eq!(seen.header_all("x-forwarded-email"), ["alice@example.com"]);
    for gone in ["x_real_ip", "x-real-ip", "x_forwarded_email"] {
        assert!(
            seen.header_all(gone).is_empty(),
            "{gone} reached the upstream: {:?}",
            seen.headers
        );
    }

    // Headers the client's `Connection` names (keep-alive all the same).
    let a = c
        .exchange(
            &get(
                "/hyg/connection",
                &[
                    &format!("Cookie: {cookie}"),
                    "cONNECTION: x-secret, X-Other",
                    "X-Secret: 1",
                    "x-other: 2",
                    "X-Kept: 3",
                ],
            ),
            "Connection-named",
        )
        .await;
    assert_echo(&a, "/hyg/connection", "Connection-named");
    let seen = last("/hyg/connection");
    assert_eq!(seen.header_all("x-kept"), ["3"], "{:?}", seen.headers);
    for gone in ["x-secret", "x-other"] {
        assert!(
            seen.header_all(gone).is_empty(),
            "{gone} reached the upstream: {:?}",
            seen.headers
        );
    }
    assert!(
        seen.header_all("connection")
            .iter()
            .all(|v| !v.to_ascii_lowercase().contains("x-secret")),
        "{:?}",
        seen.headers
    );

    // A foreign `Host`.
    let a = c
        .exchange(
            &request(
                "GET",
                "/hyg/host",
                port,
                &[JSON.into(), format!("Cookie: {cookie}")],
            )
            .replace(&format!("Host: {ours}"), "hOST: evil.example"),
            "Host: evil.example",
        )
        .await;
    assert_echo(&a, "/hyg/host", "Host: evil.example");
    let seen = last("/hyg/host");
    assert_eq!(seen.header_all("host"), [ours.as_str()]);
    assert_eq!(seen.header_all("x-forwarded-host"), [ours.as_str()]);
    assert!(
        !format!("{:?}", seen.headers).contains("evil.example"),
        "evil.example reached the upstream: {:?}",
        seen.headers
    );

    // Still one connection, still in step.
    let a = c
        .exchange(&get("/hyg/end", &[&format!("Cookie: {cookie}")]), "end")
        .await;
    assert_echo(&a, "/hyg/end", "end");
    assert_eq!(w.upstream.requests().len(), 5);
}

// ---------------------------------------------------------------------------
// Slow, idle and vanishing clients
// ---------------------------------------------------------------------------

/// A connection that was served once (a forwarded GET, or the gate's own
/// route), ready for the next request.
async fn served_once(port: u16, auth: &[String], forwarded: bool) -> (Conn, Instant) {
    let mut c = Conn::open(port).await;
    if forwarded {
        let a = c
            .exchange(&request("GET", "/slow-client/first", port, auth), "first")
            .await;
        assert_echo(&a, "/slow-client/first", "first");
    } else {
        let a = c
            .exchange(&request("GET", "/sso/healthz", port, &[]), "first")
            .await;
        assert_eq!(a.status, 200);
    }
    (c, Instant::now())
}

/// With `CT_HEADER_READ_TIMEOUT=1s`: a request head that stalls half-way is
/// closed after the timeout without an answer, on a fresh connection and on
/// one that was served a request before; an idle kept-alive connection is
/// closed after the timeout too; nothing of a stalled head reaches the
/// upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_heads_and_idle_kept_connections_are_closed_after_the_header_read_timeout() {
    let w = plain_world(&[("CT_HEADER_READ_TIMEOUT", "1s")]).await;
    let port = w.gate.port;
    let cookie = session_cookie(false, "alice");
    let auth = signed_in(&cookie);
    let limit = Duration::from_secs(5);
    // A forwarded GET's head, all but its final CRLF.
    let partial = {
        let full = request("GET", "/slow-client/partial", port, &auth);
        full[..full.len() - 2].to_owned()
    };

    let fresh = async {
        let since = Instant::now();
        let mut c = Conn::open(port).await;
        c.send(&partial).await;
        (c.closed_within(limit).await, since.elapsed())
    };
    let partial_after = async |forwarded: bool| {
        let (mut c, since) = served_once(port, &auth, forwarded).await;
        c.send(&partial).await;
        (c.closed_within(limit).await, since.elapsed())
    };
    let idle_after = async |forwarded: bool| {
        let (mut c, since) = served_once(port, &auth, forwarded).await;
        (c.closed_within(limit).await, since.elapsed())
    };
    w.upstream.clear();
    let (fresh, p_fwd, p_gate, i_fwd, i_gate) = tokio::join!(
        fresh,
        partial_after(true),
        partial_after(false),
        idle_after(true),
        idle_after(false),
    );
    for (what, (closed, after)) in [
        ("a stalled head on a fresh connection", fresh),
        ("a stalled head after a forwarded request", p_fwd),
        ("a stalled head after a gate route", p_gate),
        ("an idle connection after a forwarded request", i_fwd),
        ("an idle connection after a gate route", i_gate),
    ] {
        let rest = closed.unwrap_or_else(|| {
            panic!("{what}: still open after {limit:?} (CT_HEADER_READ_TIMEOUT=1s)")
        });
        assert!(
            rest.is_empty(),
            "{what}: answered before the close: {:?}",
            String::from_utf8_lossy(&rest)
        );
        assert!(
            after >= Duration::from_millis(900),
            "{what}: closed after only {after:?}"
        );
    }
    assert!(
        w.upstream
            .requests()
            .iter()
            .all(|r| r.path() != "/slow-client/partial"),
        "a stalled head reached the upstream"
    );
}

/// With `CT_MAX_CONNECTIONS=1`: a client that hangs up while its answer is
/// awaited (the upstream has not answered yet, or streams slowly) frees its
/// slot at once, and the upstream side is let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_while_its_answer_is_awaited_frees_its_connection_slot() {
    let w = plain_world(&[("CT_MAX_CONNECTIONS", "1")]).await;
    let up = RawUpstream::start().await;
    let stalling = extra_gate(
        &w,
        &[("CT_MAX_CONNECTIONS", "1"), ("CT_UPSTREAM_URL", &up.url)],
    )
    .await;
    let auth = signed_in(&session_cookie(false, "alice"));
    let soon = Duration::from_secs(3);

    // The upstream streams: the head and a first chunk, then a chunk a minute.
    let port = w.gate.port;
    let c = served_within(port, Duration::from_secs(10))
        .await
        .expect("the only connection slot never freed up");
    let mut c = Conn {
        tcp: c,
        buf: Vec::new(),
    };
    c.send(request(
        "GET",
        "/slow?chunks=3&interval_ms=60000",
        port,
        &auth,
    ))
    .await;
    assert_eventually!(
        w.upstream.open_streams() == 1,
        Duration::from_secs(5),
        "the upstream never started streaming"
    );
    drop(c);
    let hung_up = Instant::now();
    let again = served_within(port, soon).await;
    assert!(
        again.is_some(),
        "no new connection served within {soon:?} after a client hung up on a stream"
    );
    eprintln!(
        "slot free again {:?} after the hang-up (stream)",
        hung_up.elapsed()
    );
    drop(again);
    assert_eventually!(
        w.upstream.open_streams() == 0,
        Duration::from_secs(5),
        "the upstream kept streaming to a client that was gone"
    );

    // The upstream has not answered at all.
    let port = stalling.port;
    let c = served_within(port, Duration::from_secs(10))
        .await
        .expect("the only connection slot never freed up");
    let mut c = Conn {
        tcp: c,
        buf: Vec::new(),
    };
    c.send(request("GET", "/stall", port, &auth)).await;
    assert_eventually!(
        up.heads().iter().any(|h| h.starts_with("GET /stall ")),
        Duration::from_secs(5),
        "the stalling upstream never got the request"
    );
    drop(c);
    let hung_up = Instant::now();
    let again = served_within(port, soon).await;
    assert!(
        again.is_some(),
        "no new connection served within {soon:?} after a client hung up awaiting an answer"
    );
    eprintln!(
        "slot free again {:?} after the hang-up (stall)",
        hung_up.elapsed()
    );
    assert_eventually!(
        up.stalls_dropped() == 1,
        Duration::from_secs(5),
        "the gate kept waiting upstream for a client that was gone"
    );
}

// ---------------------------------------------------------------------------
// Upstream down
// ---------------------------------------------------------------------------

/// With nothing listening upstream, a signed-in GET gets the gate's 502
/// (JSON, with a request id), and the same connection goes on: the gate's
/// own route, then another 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_a_502_and_the_same_connection_then_serves_the_gates_routes() {
    let down = Upstream::closed_port_url();
    let w: World = plain_world(&[("CT_UPSTREAM_URL", &down)]).await;
    let port = w.gate.port;
    let auth = signed_in(&session_cookie(false, "alice"));
    let mut c = Conn::open(port).await;
    for round in 0..2 {
        let a = c
            .exchange(
                &request("GET", "/down/app", port, &auth),
                &format!("502, round {round}"),
            )
            .await;
        assert_eq!(a.status, 502, "round {round}: {}", a.head);
        assert_eq!(a.json()["error"], "upstream_unavailable", "round {round}");
        assert!(a.has("x-request-id"), "round {round}: {}", a.head);
        let a = c
            .exchange(
                &request("GET", "/sso/healthz", port, &[]),
                &format!("healthz, round {round}"),
            )
            .await;
        assert_eq!(a.status, 200, "round {round}: {}", a.head);
        assert_eq!(a.json()["status"], "ok");
    }
}
