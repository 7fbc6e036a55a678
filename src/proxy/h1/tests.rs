//! The upstream client against a raw loopback upstream that writes exact
//! bytes and keeps exactly what it was sent.

use std::io::Read as _;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{FutureExt as _, StreamExt as _, stream};
use http::header::TRANSFER_ENCODING;
use http::{Method, Request, Response, header};
use http_body_util::{BodyExt as _, StreamBody};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::*;
use crate::respond;

/// The upstream id of every test connection.
const UPSTREAM: u64 = u64::MAX;
/// What has to happen does within this; only a broken client waits it out.
const PATIENCE: Duration = Duration::from_secs(10);

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
const CHUNKED: &str = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(PATIENCE, f).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: nothing after {PATIENCE:?}"),
    }
}

// The upstream side.

async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Reads into `buf` until `done` says so or the client closes.
async fn read_until(tcp: &mut TcpStream, buf: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) {
    while !done(buf) {
        match tcp.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn has_head(buf: &[u8]) -> bool {
    buf.windows(4).any(|w| w == b"\r\n\r\n")
}

/// Whether `buf` is a whole request: its head, and its body as the head
/// frames it (a chunked one ends with its last chunk).
fn is_whole_request(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = req.parse(buf) else {
        return false;
    };
    let value = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| std::str::from_utf8(h.value).unwrap())
    };
    if value("transfer-encoding").is_some() {
        buf.ends_with(b"\r\n0\r\n\r\n")
    } else if let Some(n) = value("content-length") {
        buf.len() >= head + n.parse::<usize>().unwrap()
    } else {
        true
    }
}

/// How a test upstream answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    /// In one write; then it keeps the connection.
    Whole,
    /// A write per `piece` bytes, each after the client could read the
    /// last; then it keeps the connection.
    Trickle { piece: usize },
    /// In one write; then it closes the connection.
    ThenClose,
}

/// A test upstream for one connection: it reads one whole request, writes
/// its answer, and hands over what it read and (unless it closed) its end
/// of the connection.
struct Upstream {
    addr: SocketAddr,
    done: oneshot::Receiver<(Vec<u8>, Option<TcpStream>)>,
}

impl Upstream {
    /// The request, byte for byte as it arrived.
    async fn request(self) -> Vec<u8> {
        within("the upstream's request", self.done).await.unwrap().0
    }

    /// The upstream's end of the connection, after its answer.
    async fn connection(self) -> TcpStream {
        let (_, tcp) = within("the upstream's answer", self.done).await.unwrap();
        tcp.expect("the upstream closed the connection itself")
    }
}

async fn upstream(answer: impl Into<Vec<u8>>) -> Upstream {
    serve(answer.into(), Style::Whole).await
}

async fn upstream_closing(answer: impl Into<Vec<u8>>) -> Upstream {
    serve(answer.into(), Style::ThenClose).await
}

async fn serve(answer: Vec<u8>, style: Style) -> Upstream {
    let (listener, addr) = listen().await;
    let (tx, done) = oneshot::channel();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        read_until(&mut tcp, &mut request, is_whole_request).await;
        // Write errors are the client giving up on a bad answer.
        match style {
            Style::Whole | Style::ThenClose => {
                let _ = tcp.write_all(&answer).await;
            }
            Style::Trickle { piece } => {
                for piece in answer.chunks(piece) {
                    let _ = tcp.write_all(piece).await;
                    // The client (on this thread) reads before the next.
                    tokio::task::yield_now().await;
                }
            }
        }
        let _ = tx.send((request, (style != Style::ThenClose).then_some(tcp)));
    });
    Upstream { addr, done }
}

/// The client kept the connection for another request: the upstream's end
/// has neither more data nor an end. A non-blocking read of the socket
/// itself (not of tokio's idea of it), so a close is usually seen at once.
fn assert_kept(tcp: TcpStream) {
    let mut tcp = tcp.into_std().unwrap();
    let got = tcp.read(&mut [0; 1]);
    assert!(
        matches!(&got, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
        "the client closed the connection or sent more: {got:?}"
    );
}

/// The client closed the connection (after sending anything it still had).
async fn assert_closed(mut tcp: TcpStream) {
    let mut rest = Vec::new();
    // An end or a reset: closed either way.
    let _ = within("the client's close", tcp.read_to_end(&mut rest)).await;
}

// The client side.

async fn connect(addr: SocketAddr) -> Conn {
    Conn::new(
        Stream::Plain(TcpStream::connect(addr).await.unwrap().into()),
        UPSTREAM,
    )
}

fn request(method: Method, length: Option<u64>, body: Body) -> Request<Body> {
    let mut req = Request::builder()
        .method(method)
        .uri("/x")
        .header(header::HOST, "upstream.test");
    if let Some(n) = length {
        req = req.header(header::CONTENT_LENGTH, n);
    }
    req.body(body).unwrap()
}

fn get() -> Request<Body> {
    request(Method::GET, None, respond::empty())
}

/// A body of these frames, of unknown length.
fn frames(frames: Vec<Frame<Bytes>>) -> Body {
    Body::boxed(StreamBody::new(stream::iter(
        frames.into_iter().map(Ok::<_, BoxError>),
    )))
}

fn data(bytes: &'static [u8]) -> Frame<Bytes> {
    Frame::data(Bytes::from_static(bytes))
}

/// A body fed frame by frame through the returned sender.
fn channel_body() -> (mpsc::Sender<Frame<Bytes>>, Body) {
    let (tx, rx) = mpsc::channel(1);
    let frames = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|f| (Ok::<_, BoxError>(f), rx))
    });
    (tx, Body::boxed(StreamBody::new(frames)))
}

/// Writes `headers` as header lines, but for the framing ones.
fn plain_headers(headers: &HeaderMap, head: &mut Vec<u8>) {
    for (name, value) in headers {
        if ![CONTENT_LENGTH, TRANSFER_ENCODING, header::EXPECT].contains(name) {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
    }
}

/// Sends `req` on a new connection to `addr`: the connection, and how far
/// the request got.
async fn send_request(addr: SocketAddr, req: Request<Body>) -> (Conn, Result<Sent, SendError>) {
    let (parts, body) = req.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let mut head = Vec::new();
    let ended = http_body::Body::is_end_stream(&body);
    let framing = encode_head(
        parts.method.as_str().as_bytes(),
        (b"", target.as_bytes()),
        content_length(&parts.headers),
        ended,
        &mut head,
        |h| plain_headers(&parts.headers, h),
    );
    let mut conn = connect(addr).await;
    let body = (!ended).then_some(body);
    let sent = within("sending the request", send(&mut conn, &head, body, framing)).await;
    (conn, sent)
}

/// Sends `req` whole on a new connection to `addr` and reads the answer's
/// head.
async fn exchange(
    addr: SocketAddr,
    req: Request<Body>,
    upgrade: bool,
) -> Result<Response<Answer>, (H1Error, bool)> {
    let head_request = req.method() == Method::HEAD;
    let (conn, sent) = send_request(addr, req).await;
    let sent = sent.expect("the request is sent");
    within(
        "the answer's head",
        read_head(conn, head_request, upgrade, sent, &Arc::default()),
    )
    .await
}

/// What the client makes of `answer` to a `GET`.
async fn answer_to_get(answer: impl Into<Vec<u8>>) -> Result<Response<Answer>, (H1Error, bool)> {
    exchange(upstream(answer).await.addr, get(), false).await
}

fn failure(got: Result<Response<Answer>, (H1Error, bool)>) -> (H1Error, bool) {
    match got {
        Ok(resp) => panic!("an answer with status {} was accepted", resp.status()),
        Err(e) => e,
    }
}

/// Each of `answers` to a GET is refused as malformed.
async fn all_malformed(answers: &[&str]) {
    for answer in answers {
        let err = failure(answer_to_get(*answer).await);
        assert!(
            matches!(err, (H1Error::Malformed(_), true)),
            "{answer:?}: {err:?}"
        );
    }
}

async fn body_of(resp: Response<Answer>) -> Result<Bytes, BoxError> {
    let collected = within("the answer's body", resp.into_body().collect()).await?;
    Ok(collected.to_bytes())
}

/// The error `resp`'s body ends with.
/// The error reading the body of `answer` (to a GET) ends with.
async fn body_error_of(answer: impl Into<Vec<u8>>) -> H1Error {
    body_error(answer_to_get(answer).await.unwrap()).await
}

async fn body_error(resp: Response<Answer>) -> H1Error {
    match body_of(resp).await {
        Ok(body) => panic!("the body {body:?} ended without an error"),
        Err(e) => *e.downcast::<H1Error>().expect("an H1Error"),
    }
}

/// A head's request line, and its header lines sorted.
fn head_lines(head: &[u8]) -> (String, Vec<String>) {
    let head = std::str::from_utf8(head).unwrap();
    let head = head
        .strip_suffix("\r\n\r\n")
        .expect("a head ends with an empty line");
    let mut lines = head.split("\r\n").map(str::to_owned);
    let first = lines.next().unwrap();
    let mut headers: Vec<_> = lines.collect();
    headers.sort();
    (first, headers)
}

// Requests.

#[test]
fn encode_head_without_a_body_has_no_framing() {
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    headers.insert(header::HOST, HeaderValue::from_static("upstream.test"));
    let mut head = Vec::new();
    let framing = encode_head(b"GET", (b"/base", b"/x?y=1"), None, true, &mut head, |h| {
        plain_headers(&headers, h)
    });
    assert_eq!(framing, Outgoing::Empty);
    assert!(head.ends_with(b"\r\n\r\n"));
    assert_eq!(
        head_lines(&head),
        (
            "GET /base/x?y=1 HTTP/1.1".to_owned(),
            vec!["accept: */*".to_owned(), "host: upstream.test".to_owned()]
        )
    );
}

#[test]
fn encode_head_frames_a_body_by_its_content_length() {
    let cases: [(Option<&str>, Body, Outgoing, &[&str]); 5] = [
        (
            None,
            respond::full("hello"),
            Outgoing::Chunked,
            &["transfer-encoding: chunked"],
        ),
        (
            Some("5"),
            respond::full("hello"),
            Outgoing::Length(5),
            &["content-length: 5"],
        ),
        (
            Some("0"),
            respond::empty(),
            Outgoing::Empty,
            &["content-length: 0"],
        ),
        // Not a length: dropped, and the body goes chunked.
        (
            Some("five"),
            respond::full("hello"),
            Outgoing::Chunked,
            &["transfer-encoding: chunked"],
        ),
        // A stream of unknown length.
        (
            None,
            frames(vec![data(b"abc")]),
            Outgoing::Chunked,
            &["transfer-encoding: chunked"],
        ),
    ];
    for (length, body, want, framing_headers) in cases {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("upstream.test"));
        if let Some(n) = length {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static(n));
        }
        let mut head = Vec::new();
        let framing = encode_head(
            b"POST",
            (b"", b"/up"),
            content_length(&headers),
            http_body::Body::is_end_stream(&body),
            &mut head,
            |h| plain_headers(&headers, h),
        );
        assert_eq!(framing, want, "content-length {length:?}");
        let mut lines = vec!["host: upstream.test".to_owned()];
        lines.extend(framing_headers.iter().map(|h| (*h).to_owned()));
        lines.sort();
        assert_eq!(
            head_lines(&head),
            ("POST /up HTTP/1.1".to_owned(), lines),
            "content-length {length:?}"
        );
    }
}

#[tokio::test]
async fn a_chunked_request_body_arrives_as_valid_chunked_encoding() {
    let up = upstream(OK).await;
    let body = frames(vec![data(b"abc"), data(b"de")]);
    let resp = exchange(up.addr, request(Method::POST, None, body), false)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        up.request().await,
        b"POST /x HTTP/1.1\r\nhost: upstream.test\r\ntransfer-encoding: chunked\r\n\r\n\
          3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    );
}

#[tokio::test]
async fn empty_frames_and_trailers_of_a_request_body_are_not_sent() {
    let up = upstream(OK).await;
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("1"));
    // An empty chunk would be the last one: the upstream would take "de" as
    // the next request.
    let body = frames(vec![
        data(b"abc"),
        data(b""),
        data(b"de"),
        Frame::trailers(trailers),
    ]);
    exchange(up.addr, request(Method::POST, None, body), false)
        .await
        .unwrap();
    assert!(
        up.request()
            .await
            .ends_with(b"\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    );
}

#[tokio::test]
async fn a_request_body_of_known_length_arrives_as_it_is() {
    let up = upstream(OK).await;
    let body = frames(vec![data(b"hel"), data(b"lo")]);
    exchange(up.addr, request(Method::PUT, Some(5), body), false)
        .await
        .unwrap();
    assert_eq!(
        up.request().await,
        b"PUT /x HTTP/1.1\r\nhost: upstream.test\r\ncontent-length: 5\r\n\r\nhello"
    );
}

#[tokio::test]
async fn a_request_body_at_odds_with_its_content_length_is_a_body_error() {
    let failing = || {
        Body::boxed(StreamBody::new(stream::iter([
            Ok(data(b"ab")),
            Err::<Frame<Bytes>, BoxError>("the client went away".into()),
        ])))
    };
    let cases: [(u64, Body); 3] = [
        (4, respond::full("hello")),
        (9, respond::full("hello")),
        (5, failing()),
    ];
    let (_listener, addr) = listen().await;
    for (length, body) in cases {
        let (_, sent) = send_request(addr, request(Method::POST, Some(length), body)).await;
        assert!(
            matches!(sent, Err(SendError::Body(_))),
            "content-length {length}: {sent:?}"
        );
    }
}

#[tokio::test]
async fn the_head_goes_out_while_the_body_is_on_its_way() {
    let (listener, addr) = listen().await;
    let (head_tx, head_rx) = oneshot::channel();
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        read_until(&mut tcp, &mut buf, has_head).await;
        head_tx.send(buf.clone()).unwrap();
        read_until(&mut tcp, &mut buf, is_whole_request).await;
        tcp.write_all(OK).await.unwrap();
        buf
    });
    let (frames_tx, body) = channel_body();
    let client = tokio::spawn(exchange(addr, request(Method::POST, None, body), false));
    // No body byte exists before the upstream has the head.
    let head = within("the head without the body", head_rx).await.unwrap();
    assert_eq!(
        head,
        b"POST /x HTTP/1.1\r\nhost: upstream.test\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    frames_tx.send(data(b"abc")).await.unwrap();
    frames_tx.send(data(b"0123456789")).await.unwrap();
    drop(frames_tx);
    let resp = within("the answer", client).await.unwrap().unwrap();
    assert_eq!(body_of(resp).await.unwrap(), "ok");
    let request = server.await.unwrap();
    // Chunk sizes in hex.
    assert!(request.ends_with(b"\r\n\r\n3\r\nabc\r\na\r\n0123456789\r\n0\r\n\r\n"));
}

#[tokio::test]
async fn an_interim_answer_during_an_upload_does_not_stop_it() {
    let (listener, addr) = listen().await;
    let (continued_tx, continued) = oneshot::channel();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        read_until(&mut tcp, &mut buf, has_head).await;
        tcp.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .unwrap();
        continued_tx.send(()).unwrap();
        read_until(&mut tcp, &mut buf, is_whole_request).await;
        tcp.write_all(OK).await.unwrap();
        tcp
    });
    let (frames_tx, body) = channel_body();
    let client = tokio::spawn(send_request(addr, request(Method::POST, Some(5), body)));
    within("the 100", continued).await.unwrap();
    // Let the client see it while its body waits.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    frames_tx.send(data(b"hello")).await.unwrap();
    drop(frames_tx);
    let (conn, sent) = within("sending", client).await.unwrap();
    assert!(matches!(sent, Ok(Sent::Whole)), "{sent:?}");
    let resp: Response<Answer> = read_head(conn, false, false, Sent::Whole, &Arc::default())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(body_of(resp).await.unwrap(), "ok");
}

#[tokio::test]
async fn an_answer_after_the_whole_sized_body_is_not_early() {
    let up = upstream(OK).await;
    let (frames_tx, body) = channel_body();
    frames_tx.send(data(b"hello")).await.unwrap();
    // The body's end (an HTTP/2 client's END_STREAM, say) is still to come.
    let (conn, sent) = send_request(up.addr, request(Method::POST, Some(5), body)).await;
    assert!(matches!(sent, Ok(Sent::Whole)), "{sent:?}");
    let resp: Response<Answer> = read_head(conn, false, false, Sent::Whole, &Arc::default())
        .await
        .unwrap();
    assert_eq!(body_of(resp).await.unwrap(), "ok");
    drop(frames_tx);
    assert_kept(up.connection().await);
}

// Answers.

#[tokio::test]
async fn the_answer_head_is_parsed() {
    let resp = answer_to_get(
        "HTTP/1.1 404 Not Here\r\ncontent-length: 5\r\nset-cookie: a=1\r\n\
         Set-Cookie: b=2\r\nx-empty:\r\n\r\nhello",
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.version(), Version::HTTP_11);
    let cookies: Vec<_> = resp.headers().get_all(header::SET_COOKIE).iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(resp.headers()["x-empty"], "");
    assert_eq!(resp.headers().len(), 4);
    assert_eq!(resp.body().size_hint().exact(), Some(5));
    assert!(!resp.body().is_end_stream());
    assert_eq!(body_of(resp).await.unwrap(), "hello");

    let resp = answer_to_get("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        resp.version(),
        Version::HTTP_11,
        "an HTTP/1.0 upstream's answer reaches HTTP/1.1 clients as HTTP/1.1"
    );
}

#[tokio::test]
async fn a_chunked_answer_with_extensions_and_trailers_is_decoded() {
    let up = upstream(format!(
        "{CHUNKED}3;name=value\r\nabc\r\n2 ; quoted=\"a;b\"\r\nde\r\n0\r\nx-checksum: 1\r\n\r\n"
    ))
    .await;
    let resp = exchange(up.addr, get(), false).await.unwrap();
    assert_eq!(resp.body().size_hint().exact(), None);
    let collected = within("the body", resp.into_body().collect())
        .await
        .unwrap();
    assert!(collected.trailers().is_none(), "trailers are dropped");
    assert_eq!(collected.to_bytes(), "abcde");
    assert_kept(up.connection().await);
}

#[tokio::test]
async fn an_answer_trickling_in_is_read_whole() {
    let answers = [
        format!(
            "HTTP/1.1 100 Continue\r\n\r\n{CHUNKED}3;x=y\r\nabc\r\nA\r\n0123456789\r\n0\r\nt: 1\r\n\r\n"
        ),
        "HTTP/1.1 200 OK\r\ncontent-length: 13\r\nx-a: b\r\n\r\nabc0123456789".to_owned(),
    ];
    for answer in answers {
        for piece in [1, 2, 3, 7] {
            let up = serve(answer.clone().into(), Style::Trickle { piece }).await;
            let resp = exchange(up.addr, get(), false).await.unwrap();
            assert_eq!(resp.status(), 200);
            let body = body_of(resp).await;
            assert_eq!(body.unwrap(), "abc0123456789", "{answer:?} in {piece}s");
            assert_kept(up.connection().await);
        }
    }
}

#[tokio::test]
async fn a_connection_is_kept_only_when_its_answer_ended_where_its_framing_said() {
    let cases = [
        (OK.to_vec(), true),
        (format!("{CHUNKED}2\r\nok\r\n0\r\n\r\n").into_bytes(), true),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive, Close\r\n\r\nok"
                .to_vec(),
            false,
        ),
        (
            b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\nok".to_vec(),
            false,
        ),
        // Bytes past the answer's end: the connection is out of step.
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n".to_vec(),
            false,
        ),
        (
            format!("{CHUNKED}2\r\nok\r\n0\r\n\r\nHTTP/1.1").into_bytes(),
            false,
        ),
    ];
    for (answer, kept) in cases {
        let up = upstream(answer.clone()).await;
        let resp = exchange(up.addr, get(), false).await.unwrap();
        assert_eq!(body_of(resp).await.unwrap(), "ok");
        let tcp = up.connection().await;
        if kept {
            assert_kept(tcp);
        } else {
            assert_closed(tcp).await;
        }
    }
}

#[tokio::test]
async fn an_answer_with_ambiguous_framing_is_malformed() {
    let answers = [
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\nhello!",
        "HTTP/1.1 200 OK\r\ncontent-length: five\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\ncontent-length: 5,\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\ncontent-length:\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551616\r\n\r\nhello",
    ];
    all_malformed(&answers).await;
}

#[tokio::test]
async fn a_repeated_equal_content_length_is_one_length() {
    let answers = [
        "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
    ];
    for answer in answers {
        let resp = answer_to_get(answer).await.unwrap();
        assert_eq!(body_of(resp).await.unwrap(), "hello", "{answer:?}");
    }
}

/// An answer whose head is exactly `len` bytes, with the body `ok`.
fn answer_with_head_of(len: usize) -> Vec<u8> {
    let start = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-filler: ";
    let mut answer = start.to_vec();
    answer.resize(len - 4, b'a');
    answer.extend_from_slice(b"\r\n\r\nok");
    answer
}

#[tokio::test]
async fn an_answer_head_over_max_head_is_too_large() {
    let resp = answer_to_get(answer_with_head_of(MAX_HEAD)).await.unwrap();
    assert_eq!(body_of(resp).await.unwrap(), "ok");
    let err = failure(answer_to_get(answer_with_head_of(MAX_HEAD + 1)).await);
    assert!(matches!(err, (H1Error::HeadTooLarge, true)), "{err:?}");
    // Nor does an endless one make the client read on.
    let mut endless = b"HTTP/1.1 200 OK\r\nx-filler: ".to_vec();
    endless.resize(4 * MAX_HEAD, b'a');
    let up = serve(endless, Style::Trickle { piece: 4096 }).await;
    let err = failure(exchange(up.addr, get(), false).await);
    assert!(matches!(err, (H1Error::HeadTooLarge, true)), "{err:?}");
}

/// An answer with `n` headers, with the body `ok`.
fn answer_with_headers(n: usize) -> Vec<u8> {
    let mut answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n".to_vec();
    for i in 1..n {
        answer.extend_from_slice(format!("x-h{i}: {i}\r\n").as_bytes());
    }
    answer.extend_from_slice(b"\r\nok");
    answer
}

#[tokio::test]
async fn an_answer_with_more_than_max_headers_is_malformed() {
    let resp = answer_to_get(answer_with_headers(MAX_HEADERS))
        .await
        .unwrap();
    assert_eq!(resp.headers().len(), MAX_HEADERS);
    assert_eq!(body_of(resp).await.unwrap(), "ok");
    let err = failure(answer_to_get(answer_with_headers(MAX_HEADERS + 1)).await);
    assert!(matches!(err, (H1Error::Malformed(_), true)), "{err:?}");
}

#[tokio::test]
async fn an_answer_that_is_not_http_1_is_malformed() {
    let answers = [
        "SSH-2.0-OpenSSH_9.6\r\n\r\n",
        "HTTP/2 200 OK\r\ncontent-length: 0\r\n\r\n",
        "HTTP/1.1 099 Too Low\r\ncontent-length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding is faulty.
        "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ];
    all_malformed(&answers).await;
}

#[tokio::test]
async fn interim_answers_are_skipped() {
    let finals = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-final: yes\r\n\r\nok";
    let answers = [
        format!("HTTP/1.1 100 Continue\r\n\r\n{finals}"),
        format!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n{finals}"
        ),
    ];
    for answer in answers {
        let resp = answer_to_get(answer.clone()).await.unwrap();
        assert_eq!(resp.status(), 200, "{answer:?}");
        assert_eq!(resp.headers()["x-final"], "yes");
        assert!(!resp.headers().contains_key(header::LINK));
        assert_eq!(body_of(resp).await.unwrap(), "ok");
    }
}

#[tokio::test]
async fn a_body_cut_short_is_an_error() {
    let answers = [
        "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc".to_owned(),
        format!("{CHUNKED}5\r\nab"),
        format!("{CHUNKED}2\r\nab\r\n"),
        format!("{CHUNKED}0\r\nx-trailer: 1\r\n"),
    ];
    for answer in answers {
        let up = upstream_closing(answer.clone()).await;
        let resp = exchange(up.addr, get(), false).await.unwrap();
        let err = body_error(resp).await;
        assert!(matches!(err, H1Error::Truncated), "{answer:?}: {err:?}");
    }
}

#[tokio::test]
async fn a_body_without_framing_runs_until_the_upstream_closes() {
    let answers = [
        "HTTP/1.1 200 OK\r\n\r\nuntil the end",
        "HTTP/1.0 200 OK\r\n\r\nuntil the end",
        // Not chunked last: no framing either.
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\nuntil the end",
    ];
    for answer in answers {
        let up = upstream_closing(answer).await;
        let resp = exchange(up.addr, get(), false).await.unwrap();
        assert_eq!(resp.body().size_hint().exact(), None);
        assert_eq!(body_of(resp).await.unwrap(), "until the end", "{answer:?}");
    }
}

const SWITCHING: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n";

#[tokio::test]
async fn a_101_nobody_asked_for_is_malformed() {
    let err = failure(answer_to_get(SWITCHING).await);
    assert!(matches!(err, (H1Error::Malformed(_), true)), "{err:?}");
}

#[tokio::test]
async fn only_a_101_gives_a_switched_stream() {
    let up = upstream(OK).await;
    let resp = exchange(up.addr, get(), true).await.unwrap();
    assert!(resp.into_body().into_switched().is_none());
}

#[tokio::test]
async fn a_switched_stream_starts_with_what_came_with_the_101() {
    let (listener, addr) = listen().await;
    let (later_tx, later_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        read_until(&mut tcp, &mut Vec::new(), is_whole_request).await;
        tcp.write_all(&[SWITCHING, &b"early"[..]].concat())
            .await
            .unwrap();
        later_rx.await.unwrap();
        tcp.write_all(b"later").await.unwrap();
        let mut got = [0; 4];
        tcp.read_exact(&mut got).await.unwrap();
        got
    });
    let req = Request::builder()
        .uri("/ws")
        .header(header::HOST, "upstream.test")
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .body(respond::empty())
        .unwrap();
    let resp = exchange(addr, req, true).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(resp.body().is_end_stream());
    let mut switched = resp.into_body().into_switched().expect("a switched stream");
    let mut got = [0; 5];
    within("what came with the 101", switched.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(&got, b"early");
    later_tx.send(()).unwrap();
    within("what came later", switched.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(&got, b"later");
    switched.write_all(b"ping").await.unwrap();
    assert_eq!(&within("the upstream", server).await.unwrap(), b"ping");
}

const TOO_LARGE: &[u8] = b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 7\r\n\r\ntoo big";

/// An upstream that reads a request's head, refuses it at once and reads
/// nothing more until `drain` is sent; then reads to the end of the
/// connection, and its task ends.
async fn refusing_upstream() -> (SocketAddr, oneshot::Sender<()>, JoinHandle<()>) {
    let (listener, addr) = listen().await;
    let (drain, drain_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        read_until(&mut tcp, &mut Vec::new(), has_head).await;
        tcp.write_all(TOO_LARGE).await.unwrap();
        drain_rx.await.unwrap();
        let _ = tcp.read_to_end(&mut Vec::new()).await;
    });
    (addr, drain, server)
}

/// `body` (of `length` bytes) sent to an upstream that refuses it: sending
/// stops at its answer, which is read, and the connection is not kept.
async fn upload_refused_early(length: u64, body: Body) {
    let (addr, drain, server) = refusing_upstream().await;
    let (conn, sent) = send_request(addr, request(Method::POST, Some(length), body)).await;
    assert!(matches!(sent, Ok(Sent::Early)), "{sent:?}");
    let resp: Response<Answer> = within(
        "the answer",
        read_head(conn, false, false, Sent::Early, &Arc::default()),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body_of(resp).await.unwrap(), "too big");
    drain.send(()).unwrap();
    within("the client's close", server).await.unwrap();
}

#[tokio::test]
async fn an_early_answer_ends_a_stalled_upload() {
    // 64 KiB of 8 MiB, and then the client goes quiet.
    let first = Bytes::from(vec![b'x'; 64 * 1024]);
    let frames = stream::iter([Ok::<_, BoxError>(Frame::data(first))]).chain(stream::pending());
    upload_refused_early(8 << 20, Body::boxed(StreamBody::new(frames))).await;
}

#[tokio::test]
async fn an_early_answer_ends_an_upload_the_upstream_stopped_reading() {
    // Far more than the sockets' buffers hold, all of it ready at once.
    let piece = Bytes::from(vec![b'x'; 64 * 1024]);
    let frames = stream::repeat(piece)
        .take(1024)
        .map(|b| Ok::<_, BoxError>(Frame::data(b)));
    upload_refused_early(64 << 20, Body::boxed(StreamBody::new(frames))).await;
}

#[tokio::test]
async fn an_upstream_closing_without_an_answer_is_closed_and_half_a_head_truncated() {
    let up = upstream_closing("").await;
    let err = failure(exchange(up.addr, get(), false).await);
    assert!(matches!(err, (H1Error::Closed, false)), "{err:?}");

    let up = upstream_closing("HTTP/1.1 200 OK\r\ncontent-le").await;
    let err = failure(exchange(up.addr, get(), false).await);
    assert!(matches!(err, (H1Error::Truncated, true)), "{err:?}");

    // An interim answer is an answer begun.
    let up = upstream_closing("HTTP/1.1 100 Continue\r\n\r\n").await;
    let err = failure(exchange(up.addr, get(), false).await);
    assert!(matches!(err, (H1Error::Truncated, true)), "{err:?}");
}

/// `answer` to `req` has no body: it has ended before it is polled (hyper
/// does not poll such a body), and its connection is free already.
async fn assert_no_body(answer: &str, req: impl Fn() -> Request<Body>) {
    let up = upstream(answer).await;
    let resp = exchange(up.addr, req(), false).await.unwrap();
    assert!(resp.body().is_end_stream(), "{answer:?}");
    assert_eq!(resp.body().size_hint().exact(), Some(0), "{answer:?}");
    let ended = resp.into_body().collect().now_or_never();
    let body = ended.expect("the body ends at once").unwrap().to_bytes();
    assert!(body.is_empty(), "{answer:?}");
    // Dropped unread, as hyper does.
    let up = upstream(answer).await;
    drop(exchange(up.addr, req(), false).await.unwrap());
    assert_kept(up.connection().await);
}

#[tokio::test]
async fn the_answer_to_a_head_request_has_no_body_whatever_its_framing() {
    let head = || request(Method::HEAD, None, respond::empty());
    assert_no_body("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n", head).await;
    assert_no_body(CHUNKED, head).await;
}

#[tokio::test]
async fn no_content_and_not_modified_answers_have_no_body() {
    for status in ["204 No Content", "304 Not Modified"] {
        let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 100\r\n\r\n");
        assert_no_body(&answer, get).await;
    }
}

#[tokio::test]
async fn bad_chunked_framing_is_a_body_error() {
    let answers = [
        format!("{CHUNKED}zz\r\nabc\r\n0\r\n\r\n"),
        format!("{CHUNKED}-3\r\nabc\r\n0\r\n\r\n"),
        format!("{CHUNKED}3\rabc\r\n0\r\n\r\n"),
        // Over 64 bits.
        format!("{CHUNKED}10000000000000000\r\nabc\r\n0\r\n\r\n"),
        // Chunk data not followed by CRLF.
        format!("{CHUNKED}3\r\nabcd\r\n0\r\n\r\n"),
        format!("{CHUNKED}3\r\nabc\n0\r\n\r\n"),
        // Two bytes that are not CRLF, then a good chunk.
        format!("{CHUNKED}3\r\nabcXY2\r\nde\r\n0\r\n\r\n"),
        // One byte that is not CR, and nothing after it yet.
        format!("{CHUNKED}3\r\nabcX"),
    ];
    for answer in answers {
        let err = body_error_of(answer.clone()).await;
        assert!(matches!(err, H1Error::Malformed(_)), "{answer:?}: {err:?}");
    }
}

#[tokio::test]
async fn an_endless_chunk_size_line_or_trailer_is_a_body_error() {
    let mut long_line = format!("{CHUNKED}3;").into_bytes();
    long_line.resize(long_line.len() + 4 * MAX_HEAD, b'a');
    let mut long_trailer = format!("{CHUNKED}0\r\nx-t: ").into_bytes();
    long_trailer.resize(long_trailer.len() + 4 * MAX_HEAD, b'a');
    for answer in [long_line, long_trailer] {
        let up = serve(answer, Style::Trickle { piece: 4096 }).await;
        let resp = exchange(up.addr, get(), false).await.unwrap();
        let err = body_error(resp).await;
        assert!(matches!(err, H1Error::Malformed(_)), "{err:?}");
    }
}

#[tokio::test]
async fn a_chunk_size_line_without_a_size_is_a_body_error() {
    for line in ["", ";ext=1", " "] {
        let err = body_error_of(format!("{CHUNKED}3\r\nabc\r\n{line}\r\n\r\n")).await;
        assert!(matches!(err, H1Error::Malformed(_)), "{line:?}: {err:?}");
    }
}

#[tokio::test]
async fn a_chunk_size_line_over_max_chunk_line_is_a_body_error() {
    // All of it in one read.
    let ext = "a".repeat(2 * MAX_CHUNK_LINE);
    let err = body_error_of(format!("{CHUNKED}3;{ext}\r\nabc\r\n0\r\n\r\n")).await;
    assert!(matches!(err, H1Error::Malformed(_)), "{err:?}");
}

#[tokio::test]
async fn trailers_over_max_head_are_a_body_error() {
    // Many short trailer lines, each a read of its own.
    let line = "x-trailer: 0123456789012345678901234567\r\n";
    let lines = 2 * MAX_HEAD / line.len();
    // The part before them padded to whole pieces, so that no piece ends
    // inside a line.
    let before = |pad: usize| {
        let pad = "a".repeat(pad);
        format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-pad: {pad}\r\n\r\n3\r\nabc\r\n0\r\n"
        )
    };
    let pad = line.len() - before(0).len() % line.len();
    let mut answer = before(pad);
    assert_eq!(answer.len() % line.len(), 0);
    answer.push_str(&line.repeat(lines));
    answer.push_str("\r\n");
    let up = serve(answer.into(), Style::Trickle { piece: line.len() }).await;
    let resp = exchange(up.addr, get(), false).await.unwrap();
    let err = body_error(resp).await;
    assert!(matches!(err, H1Error::Malformed(_)), "{err:?}");
}

#[tokio::test]
async fn an_idle_connection_is_dead_once_the_upstream_sends_or_closes() {
    for close in [false, true] {
        let (listener, addr) = listen().await;
        let mut conn = connect(addr).await;
        let (mut tcp, _) = listener.accept().await.unwrap();
        assert!(!conn.is_dead());
        let _kept = if close {
            drop(tcp);
            None
        } else {
            tcp.write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
                .await
                .unwrap();
            Some(tcp)
        };
        within("noticing", async {
            while !conn.is_dead() {
                tokio::task::yield_now().await;
            }
        })
        .await;
    }
}

// The fuzzing entry (fuzz/fuzz_targets/h1_answer.rs).

#[test]
fn the_fuzzing_entry_decodes_answers_whatever_the_read_boundaries() {
    let chunked: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n";
    let whole = decode_for_fuzzing(&[chunked], false, false).unwrap();
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, b"helloabc");
    assert!(whole.reusable && whole.rest.is_empty());
    let bytes: Vec<&[u8]> = chunked.chunks(1).collect();
    assert_eq!(decode_for_fuzzing(&bytes, false, false), Ok(whole));

    let extra = decode_for_fuzzing(
        &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", b"XY"],
        false,
        false,
    )
    .unwrap();
    assert_eq!(extra.body, b"ok");
    assert_eq!(extra.rest, b"XY", "the answer ends where its framing says");

    let head = decode_for_fuzzing(
        &[b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"],
        true,
        false,
    )
    .unwrap();
    assert!(head.body.is_empty() && head.reusable, "HEAD: no body");

    assert_eq!(
        decode_for_fuzzing(
            &[b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"],
            false,
            false
        ),
        Err(H1Error::Malformed("conflicting Content-Length").to_string())
    );
    assert_eq!(
        decode_for_fuzzing(
            &[b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel"],
            false,
            false
        ),
        Err(H1Error::Truncated.to_string())
    );
}

#[test]
fn content_length_lines_write_every_length_in_decimal() {
    for n in [0, 5, 65_536, 1 << 40, u64::MAX] {
        let mut out = b"before\r\n".to_vec();
        content_length_line(&mut out, n);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("before\r\ncontent-length: {n}\r\n")
        );
    }
}
