//! The client side: a kept-alive raw HTTP/1.1 connection that reads answers
//! one by one, and the requests the cases send on it.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::cases::hostile::{JSON, header_values};
use crate::cases::proxy::tls_connect;
use rustls::pki_types::ServerName;

use crate::support::certs::TestPki;
use crate::support::gate::World;
use crate::support::upstream::Upstream;

/// How long one answer may take before the test gives up on it.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);

/// How long the gate may take to close a connection it is done with.
pub(crate) const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// One answer read off a connection, its body unframed.
#[derive(Debug)]
pub(crate) struct Answer {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub(crate) version: String,
    pub(crate) status: u16,
    /// Status line and header lines, without the blank line.
    pub(crate) head: String,
    pub(crate) body: Vec<u8>,
    /// Trailer lines of a chunked body (empty otherwise).
    pub(crate) trailers: String,
}

impl Answer {
    pub(crate) fn headers(&self, name: &str) -> Vec<String> {
        header_values(&self.head, name)
    }

    /// The one value of `name`; fails if it is missing or repeated.
    pub(crate) fn one(&self, name: &str) -> String {
        let values = self.headers(name);
        assert_eq!(values.len(), 1, "{name} in\n{}", self.head);
        values[0].clone()
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        !self.headers(name).is_empty()
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (the echo's, the gate's errors).
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n\n{}", self.head, self.text()))
    }

    pub(crate) fn chunked(&self) -> bool {
        self.headers("transfer-encoding")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("chunked"))
    }

    /// The upstream echo's view of the request: its path, and the one value
    /// of a header it received.
    pub(crate) fn echoed_path(&self) -> String {
        self.json()["path"].as_str().unwrap_or_default().to_owned()
    }

    pub(crate) fn echoed_header(&self, name: &str) -> Vec<String> {
        self.json()["headers"][name]
            .as_array()
            .map(|v| {
                v.iter()
                    .map(|s| s.as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Header lines as `name: value`, names in lower case, sorted; `date`
    /// and `x-request-id` (different on every answer) and those in `masked`
    /// only by name.
    pub(crate) fn normalized_headers(&self, masked: &[&str]) -> Vec<String> {
        let mut lines: Vec<String> = self
            .head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| {
                let n = n.trim().to_ascii_lowercase();
                if ["date", "x-request-id"].contains(&n.as_str()) || masked.contains(&n.as_str()) {
                    format!("{n}: *")
                } else {
                    format!("{n}: {}", v.trim())
                }
            })
            .collect();
        lines.sort();
        lines
    }

    /// The one `Connection` value is `value` (in any case).
    pub(crate) fn assert_connection(&self, value: &str, what: &str) {
        assert!(
            self.one("connection").eq_ignore_ascii_case(value),
            "{what}: not connection: {value}:\n{}",
            self.head
        );
    }

    /// The answer says `connection: close`.
    pub(crate) fn assert_closes(&self, what: &str) {
        self.assert_connection("close", what);
    }

    /// The answer keeps the connection: no `Connection` value is `close`.
    pub(crate) fn assert_keeps(&self, what: &str) {
        assert!(
            self.headers("connection")
                .iter()
                .all(|v| !v.eq_ignore_ascii_case("close")),
            "{what}: connection: close in\n{}",
            self.head
        );
    }
}

/// A client's byte stream: plain TCP or TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A client connection to the gate that reads answers one by one, keeping
/// whatever arrived beyond the current one for the next.
pub(crate) struct Conn {
    io: Box<dyn Io>,
    buf: Vec<u8>,
}

impl Conn {
    /// Plain TCP to a plain-HTTP gate.
    pub(crate) async fn open(port: u16) -> Conn {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to the gate");
        let _ = tcp.set_nodelay(true);
        Conn::on(tcp)
    }

    /// TLS to an HTTPS gate, HTTP/1.1 by ALPN.
    pub(crate) async fn tls(w: &World) -> Conn {
        Conn::on(tls_connect(w, &["http/1.1"]).await)
    }

    /// TLS to the HTTPS gate on `port` of `pki`'s world (server name
    /// `localhost`), HTTP/1.1 by ALPN.
    pub(crate) async fn tls_to(pki: &TestPki, port: u16) -> Conn {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to the gate");
        let connector = tokio_rustls::TlsConnector::from(pki.rustls_client_config(&["http/1.1"]));
        let io = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake with the gate");
        Conn::on(io)
    }

    pub(crate) fn on(io: impl Io + 'static) -> Conn {
        Conn {
            io: Box::new(io),
            buf: Vec::new(),
        }
    }

    pub(crate) async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.io
            .write_all(bytes.as_ref())
            .await
            .expect("write to the gate");
    }

    /// Reads more bytes into the buffer; `false` at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.io.read(&mut chunk).await {
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
    pub(crate) async fn answer_to(&mut self, head_request: bool, what: &str) -> Answer {
        tokio::time::timeout(ANSWER_LIMIT, self.read_answer(head_request))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within {ANSWER_LIMIT:?}"))
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    pub(crate) async fn answer(&mut self, what: &str) -> Answer {
        self.answer_to(false, what).await
    }

    /// Sends `request` and reads its answer.
    pub(crate) async fn exchange(&mut self, request: &str, what: &str) -> Answer {
        self.send(request).await;
        self.answer(what).await
    }

    /// Sends the raw `request` (a head and any body) and reads its answer
    /// (to a `HEAD` when `head_request`), named by its request line.
    pub(crate) async fn exchange_bytes(&mut self, request: &[u8], head_request: bool) -> Answer {
        let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
        let what = String::from_utf8_lossy(line).into_owned();
        self.send(request).await;
        self.answer_to(head_request, &what).await
    }

    /// Bytes that arrive within `d` (none, when the connection is in step).
    pub(crate) async fn stray_bytes(&mut self, d: Duration) -> Vec<u8> {
        let _ = tokio::time::timeout(d, async { while self.fill().await {} }).await;
        std::mem::take(&mut self.buf)
    }

    /// Reads until the gate closes the connection: the bytes that came
    /// first, or `None` if it was still open after `limit`.
    pub(crate) async fn closed_within(&mut self, limit: Duration) -> Option<Vec<u8>> {
        tokio::time::timeout(limit, async { while self.fill().await {} })
            .await
            .ok()
            .map(|()| std::mem::take(&mut self.buf))
    }

    /// The gate closes the connection within [`CLOSE_LIMIT`], sending
    /// nothing more.
    pub(crate) async fn assert_closed_with_nothing_more(&mut self, what: &str) {
        let rest = self.closed_within(CLOSE_LIMIT).await;
        assert_eq!(rest.as_deref(), Some(&[][..]), "{what}");
    }

    /// `a` says `connection: close`, and then the gate closes the connection
    /// with nothing more.
    pub(crate) async fn assert_ends_with(&mut self, a: &Answer, what: &str) {
        a.assert_closes(what);
        self.assert_closed_with_nothing_more(what).await;
    }
}

/// `method path` with `Host` and the extra header lines; kept alive.
pub(crate) fn request(method: &str, path: &str, port: u16, lines: &[String]) -> String {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: localhost:{port}\r\n");
    for line in lines {
        r.push_str(line);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

/// The header lines of an API client with a session.
pub(crate) fn signed_in(cookie: &str) -> Vec<String> {
    vec![JSON.to_owned(), format!("Cookie: {cookie}")]
}

/// `lines` and one more.
pub(crate) fn with(lines: &[String], more: &str) -> Vec<String> {
    let mut v = lines.to_vec();
    v.push(more.to_owned());
    v
}

/// A forwarded answer from the echo: 200, for `path`, with one request id
/// that the upstream received as well.
pub(crate) fn assert_echo(a: &Answer, path: &str, what: &str) {
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

/// The paths of the requests the upstream received, in order.
pub(crate) fn forwarded_paths(upstream: &Upstream) -> Vec<String> {
    upstream
        .requests()
        .iter()
        .map(|r| r.path().to_owned())
        .collect()
}
