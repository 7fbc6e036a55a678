//! HTTP/1.1 to the upstream, run in the task of the request itself.
//!
//! The request's head goes out in one write (with its first body bytes when
//! they are already there); the answer's head is read with `httparse` into
//! a buffer the header values then share; the answer's body is read by the
//! [`Answer`] as hyper asks the client side for it. So a forwarded request
//! costs no task switch, no channel and no copy of the answer between the
//! upstream connection and the client, and the upstream connection is free
//! again (see [`super::pool`]) the moment the last body byte is read.
//!
//! Strict where the upstream could desynchronise the connection: an answer
//! with both `Content-Length` and `Transfer-Encoding`, conflicting or bad
//! `Content-Length`s, a head over [`MAX_HEAD`], more than [`MAX_HEADERS`]
//! headers, a bad chunk or a `101` nobody asked for are errors (502), and a
//! connection is kept only when its answer ended exactly where its framing
//! said. Interim answers (`1xx` other than `101`) are skipped. Trailers of a
//! chunked answer are read and dropped (the client's `TE` never reaches the
//! upstream, so nobody asked for them). The client's `Expect` is not passed
//! on: hyper has already answered `100 Continue` to the client when its
//! body is first read.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Instant;

use bytes::{Buf as _, Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::AsyncWrite;

use super::pool::Slot;
use super::stream::{Stream, Switched};
use crate::fields::{Fields, Span};
use crate::respond::{Body, BoxError};

/// Largest answer head.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most headers an answer may have.
pub const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (with extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// What one read asks the kernel for, at least...
const READ_SIZE: usize = 16 * 1024;
/// ...and at most.
const MAX_READ_SIZE: usize = 64 * 1024;

/// Why an exchange with the upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// The connection ended before any byte of an answer.
    #[error("the upstream closed the connection before answering")]
    Closed,
    #[error("upstream connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("the upstream's answer is malformed: {0}")]
    Malformed(&'static str),
    #[error("the upstream's answer head is over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the upstream's answer ended early")]
    Truncated,
}

/// One upstream connection and what was read from it but not yet used.
pub struct Conn {
    stream: Stream,
    buf: BytesMut,
    /// When it last became idle (or was opened).
    pub since: Instant,
    /// Which upstream it goes to (see [`super::pool`]).
    pub upstream: u64,
    /// What the next read asks for.
    read_size: usize,
    /// The last answer head's headers, as positions (kept for its capacity).
    headers: Vec<Span>,
}

impl Conn {
    pub fn new(stream: Stream, upstream: u64) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
            since: Instant::now(),
            upstream,
            read_size: READ_SIZE,
            headers: Vec::new(),
        }
    }

    /// Whether the upstream has closed this idle connection, or sent on it
    /// unasked: checked without waiting (tokio already knows whether the
    /// socket is readable, so this is usually no system call).
    pub fn is_dead(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        !self.buf.is_empty() || matches!(self.poll_fill(&mut cx), Poll::Ready(_))
    }

    /// Reads more into `buf`; `Ok(0)` at the end of the stream. Reads ask
    /// for [`READ_SIZE`] at first and grow to [`MAX_READ_SIZE`] while they
    /// come back full (a large answer), shrinking again when they do not.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.read_size / 2 {
            self.buf.reserve(self.read_size);
        }
        let room = self.buf.capacity() - self.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.stream),
            cx,
            &mut self.buf
        ))?;
        if n == room {
            self.read_size = (self.read_size * 2).min(MAX_READ_SIZE);
        } else if n < self.read_size / 4 {
            self.read_size = (self.read_size / 2).max(READ_SIZE);
        }
        Poll::Ready(Ok(n))
    }

    /// Writes `head` then `out` (one vectored write when the socket takes
    /// it whole), and flushes.
    fn poll_write_out(
        &mut self,
        cx: &mut Context<'_>,
        head: &mut &[u8],
        out: &mut [Bytes; 3],
    ) -> Poll<io::Result<()>> {
        while !head.is_empty() || out.iter().any(|b| !b.is_empty()) {
            let slices = [
                IoSlice::new(head),
                IoSlice::new(&out[0]),
                IoSlice::new(&out[1]),
                IoSlice::new(&out[2]),
            ];
            let mut n = ready!(Pin::new(&mut self.stream).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let k = n.min(head.len());
            *head = &head[k..];
            n -= k;
            for b in out.iter_mut() {
                let k = n.min(b.len());
                b.advance(k);
                n -= k;
            }
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }
}

/// How the request's body is framed on the way up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    Chunked,
}

/// The request's `Content-Length`, if it is one number.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

/// Writes the request's head into `head`, and says how its body goes: the
/// request line (`base` and then `target` as its target), the header lines
/// `headers` writes (the upstream's; no framing header among them), the
/// framing headers set here from the client's `Content-Length` (`length`)
/// and whether the body has already ended (`ended`), and the blank line.
pub fn encode_head(
    method: &[u8],
    (base, target): (&[u8], &[u8]),
    length: Option<u64>,
    ended: bool,
    head: &mut Vec<u8>,
    headers: impl FnOnce(&mut Vec<u8>),
) -> Outgoing {
    let framing = match (ended, length) {
        (true, None) | (_, Some(0)) => Outgoing::Empty,
        (_, Some(n)) => Outgoing::Length(n),
        (false, None) => Outgoing::Chunked,
    };
    head.clear();
    head.extend_from_slice(method);
    head.push(b' ');
    head.extend_from_slice(base);
    head.extend_from_slice(target);
    head.extend_from_slice(b" HTTP/1.1\r\n");
    headers(head);
    match (framing, length) {
        (Outgoing::Chunked, _) => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        (_, Some(n)) => content_length_line(head, n),
        (_, None) => {}
    }
    head.extend_from_slice(b"\r\n");
    framing
}

/// Writes a `content-length: n` header line.
pub fn content_length_line(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// How far the request got.
#[derive(Debug)]
pub enum Sent {
    /// All of it.
    Whole,
    /// The upstream's final answer head arrived before the request body
    /// was all sent; the rest of the body was not sent.
    Early,
}

/// Why a request could not be sent.
#[derive(Debug)]
pub enum SendError {
    /// The client's body failed (it went away, or went quiet).
    Body(BoxError),
    Upstream(H1Error),
}

/// Sends the request: its head, then its body as `framing` says (`None`:
/// there is none, and `framing` is [`Outgoing::Empty`]). While the
/// body waits for the client or for the socket, the connection is watched
/// for an early final answer (an upstream refusing an upload), which stops
/// the sending.
pub async fn send(
    conn: &mut Conn,
    head: &[u8],
    mut body: Option<Body>,
    framing: Outgoing,
) -> Result<Sent, SendError> {
    // The head, until it is queued with what follows it in `writing`.
    let mut head = Some(head);
    let mut writing: &[u8] = &[];
    let mut out: [Bytes; 3] = Default::default();
    let mut left = match framing {
        Outgoing::Length(n) => n,
        _ => 0,
    };
    let mut ended = framing == Outgoing::Empty;
    if ended {
        writing = head.take().unwrap_or_default();
    }
    std::future::poll_fn(move |cx| {
        loop {
            if !writing.is_empty() || out.iter().any(|b| !b.is_empty()) || ended {
                match conn.poll_write_out(cx, &mut writing, &mut out) {
                    Poll::Ready(Ok(())) if ended => return Poll::Ready(Ok(Sent::Whole)),
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(SendError::Upstream(e.into()))),
                    Poll::Pending => return early_answer(conn, cx),
                }
            }
            let polled = match body.as_mut() {
                Some(body) => Pin::new(body).poll_frame(cx),
                None => Poll::Ready(None),
            };
            let frame = match polled {
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(SendError::Body(e))),
                Poll::Ready(None) => {
                    if left != 0 {
                        return Poll::Ready(Err(SendError::Body(
                            "the request body is shorter than its Content-Length".into(),
                        )));
                    }
                    ended = true;
                    let last = if framing == Outgoing::Chunked {
                        Bytes::from_static(b"0\r\n\r\n")
                    } else {
                        Bytes::new()
                    };
                    writing = head.take().unwrap_or_default();
                    out = [last, Bytes::new(), Bytes::new()];
                    continue;
                }
                Poll::Pending => {
                    // Send the head while the body is on its way.
                    if let Some(h) = head.take() {
                        writing = h;
                        continue;
                    }
                    return early_answer(conn, cx);
                }
            };
            let Ok(data) = frame.into_data() else {
                continue; // request trailers are not passed on
            };
            if data.is_empty() {
                continue;
            }
            if let Some(h) = head.take() {
                writing = h;
            }
            out = if framing == Outgoing::Chunked {
                let size = Bytes::from(format!("{:x}\r\n", data.len()));
                [size, data, Bytes::from_static(b"\r\n")]
            } else {
                let n = data.len() as u64;
                if n > left {
                    return Poll::Ready(Err(SendError::Body(
                        "the request body is longer than its Content-Length".into(),
                    )));
                }
                left -= n;
                // All of it: what the body still says (its end, trailers)
                // is not waited for.
                ended = left == 0;
                [data, Bytes::new(), Bytes::new()]
            };
        }
    })
    .await
}

/// While sending waits: whether the upstream has already answered. Interim
/// answers are dropped; a complete final head ends the sending.
fn early_answer(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<Result<Sent, SendError>> {
    loop {
        match conn.poll_fill(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(0)) => {
                let e = if conn.buf.is_empty() {
                    H1Error::Closed
                } else {
                    H1Error::Truncated
                };
                return Poll::Ready(Err(SendError::Upstream(e)));
            }
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(SendError::Upstream(e.into()))),
        }
        loop {
            match parse(&conn.buf, None) {
                Ok(Some(p)) if p.interim() => conn.buf.advance(p.len),
                Ok(Some(_)) => return Poll::Ready(Ok(Sent::Early)),
                Ok(None) => break,
                Err(e) => return Poll::Ready(Err(SendError::Upstream(e))),
            }
        }
    }
}

/// An answer head as parsed (its headers are in [`Conn::headers`]).
pub struct Parsed {
    len: usize,
    status: u16,
    version: Version,
}

impl Parsed {
    fn interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// Parses an answer head at the start of `buf`; `None` while incomplete.
/// With `headers`, each header goes there as positions into `buf`.
fn parse(buf: &[u8], headers: Option<&mut Vec<Span>>) -> Result<Option<Parsed>, H1Error> {
    let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut raw);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(H1Error::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(H1Error::Malformed("too many headers")),
        Err(_) => return Err(H1Error::Malformed("not an HTTP/1 answer head")),
    };
    if len > MAX_HEAD {
        return Err(H1Error::HeadTooLarge);
    }
    let status = resp.code.unwrap_or(0);
    let version = match resp.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    if let Some(out) = headers {
        out.clear();
        out.extend(
            resp.headers
                .iter()
                .map(|h| Span::of(buf, h.name.as_bytes(), h.value)),
        );
    }
    Ok(Some(Parsed {
        len,
        status,
        version,
    }))
}

/// Reads the answer's head: the final one, interim answers skipped.
/// `head_request`: the request was `HEAD` (the answer has no body whatever
/// it says); `upgrade`: it asked to switch protocols.
pub async fn read_head<S: Shape>(
    mut conn: Conn,
    head_request: bool,
    upgrade: bool,
    sent: Sent,
    slot: &Arc<Slot>,
) -> Result<S, (H1Error, bool)> {
    let mut got_any = !conn.buf.is_empty();
    let parsed = loop {
        if !conn.buf.is_empty() {
            match parse(&conn.buf, Some(&mut conn.headers)) {
                Ok(Some(p)) if p.interim() => {
                    conn.buf.advance(p.len);
                    continue;
                }
                Ok(Some(p)) => break p,
                Ok(None) => {}
                Err(e) => return Err((e, got_any)),
            }
        }
        match std::future::poll_fn(|cx| conn.poll_fill(cx)).await {
            Ok(0) if got_any => return Err((H1Error::Truncated, true)),
            Ok(0) => return Err((H1Error::Closed, false)),
            Ok(_) => got_any = true,
            Err(e) => return Err((e.into(), got_any)),
        }
    };
    let asked = Asked {
        head_request,
        upgrade,
        whole: matches!(sent, Sent::Whole),
    };
    S::take(conn, &parsed, asked, slot).map_err(|e| (e, true))
}

/// What the request asked of its answer.
#[derive(Clone, Copy, Debug)]
pub struct Asked {
    /// A `HEAD` request: the answer has no body whatever it says.
    head_request: bool,
    /// It asked to switch protocols.
    upgrade: bool,
    /// It went out whole.
    whole: bool,
}

/// The form an answer's head is handed on in: a `http::Response` with a
/// header map (hyper writes it to the client), or [`RawAnswer`], the head's
/// bytes (the gate's own HTTP/1.1 path copies them).
pub trait Shape: Sized {
    /// Takes the parsed head (headers in [`Conn::headers`]) off `conn`'s buffer.
    fn take(conn: Conn, parsed: &Parsed, asked: Asked, slot: &Arc<Slot>) -> Result<Self, H1Error>;
}

impl Shape for http::Response<Answer> {
    fn take(
        mut conn: Conn,
        parsed: &Parsed,
        asked: Asked,
        slot: &Arc<Slot>,
    ) -> Result<Self, H1Error> {
        let head = take_head(&mut conn.buf, &mut conn.headers, parsed, asked)?;
        let mut resp = http::Response::new(Answer::new(conn, head.framing, head.keep, slot));
        *resp.status_mut() = head.status;
        // The answer's version is the upstream connection's business: hyper
        // writes the one a response carries, and the client talks to the gate
        // (HTTP/1.1 or HTTP/2), so it keeps the default.
        *resp.headers_mut() = head.headers;
        Ok(resp)
    }
}

/// An answer as the upstream sent it: its head's bytes, and its body.
pub struct RawAnswer {
    pub head: AnswerHead,
    pub body: Answer,
}

/// An answer's head as the upstream sent it: its bytes and where its
/// headers are in them.
pub struct AnswerHead {
    pub status: StatusCode,
    pub bytes: Bytes,
    spans: Vec<Span>,
    /// The body's length when the answer says it (`Content-Length`); `None`
    /// for a chunked or close-delimited body.
    pub length: Option<u64>,
    /// The answer has no body whatever its headers say (`HEAD`, 204, 304).
    pub bodiless: bool,
}

impl AnswerHead {
    pub fn fields(&self) -> Fields<'_> {
        Fields::Spans {
            head: &self.bytes,
            spans: &self.spans,
        }
    }

    /// The head of an answer given as a header map (one that came over
    /// HTTP/2), as header lines for the own path to copy. `bodiless`: the
    /// answer has no body whatever its headers say.
    pub fn of_map(status: StatusCode, headers: &HeaderMap, bodiless: bool) -> Self {
        let mut bytes = BytesMut::new();
        let mut spans = spare_spans();
        let at = |bytes: &BytesMut| u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        for (name, value) in headers {
            let name_at = at(&bytes);
            bytes.extend_from_slice(name.as_str().as_bytes());
            let name_end = at(&bytes);
            bytes.extend_from_slice(b": ");
            let value_at = at(&bytes);
            bytes.extend_from_slice(value.as_bytes());
            let value_end = at(&bytes);
            bytes.extend_from_slice(b"\r\n");
            spans.push(Span {
                name: (name_at, name_end),
                value: (value_at, value_end),
            });
        }
        AnswerHead {
            status,
            bytes: bytes.freeze(),
            spans,
            length: content_length(headers),
            bodiless,
        }
    }
}

thread_local! {
    /// Header lists of answer heads handed on as bytes, kept for their
    /// capacity: an upstream connection's own list goes with the head, and
    /// one of these takes its place.
    static SPARE_SPANS: std::cell::RefCell<Vec<Vec<Span>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Drop for AnswerHead {
    fn drop(&mut self) {
        let mut spans = std::mem::take(&mut self.spans);
        if spans.capacity() == 0 || spans.capacity() > MAX_HEADERS {
            return;
        }
        spans.clear();
        let _ = SPARE_SPANS.try_with(|spare| {
            if let Ok(mut spare) = spare.try_borrow_mut()
                && spare.len() < 64
            {
                spare.push(spans);
            }
        });
    }
}

fn spare_spans() -> Vec<Span> {
    SPARE_SPANS
        .try_with(|spare| spare.try_borrow_mut().ok()?.pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

impl Shape for RawAnswer {
    fn take(
        mut conn: Conn,
        parsed: &Parsed,
        asked: Asked,
        slot: &Arc<Slot>,
    ) -> Result<Self, H1Error> {
        let status = StatusCode::from_u16(parsed.status)
            .map_err(|_| H1Error::Malformed("bad status code"))?;
        let bytes = conn.buf.split_to(parsed.len).freeze();
        let spans = std::mem::replace(&mut conn.headers, spare_spans());
        let fields = Fields::Spans {
            head: &bytes,
            spans: &spans,
        };
        let (framing, keep) = framing_of(fields, parsed, status, asked)?;
        let bodiless = asked.head_request
            || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
        Ok(RawAnswer {
            head: AnswerHead {
                status,
                length: match framing {
                    Framing::Length(n) => Some(n),
                    _ => None,
                },
                bodiless,
                bytes,
                spans,
            },
            body: Answer::new(conn, framing, keep, slot),
        })
    }
}

/// An answer head, taken off the read buffer.
struct Head {
    status: StatusCode,
    headers: HeaderMap,
    framing: Framing,
    /// The connection may serve another request once the body has ended.
    keep: bool,
}

/// Takes the parsed head off the front of `buf` (its header values share
/// it) and works out the body's framing; `whole`: the request went out
/// whole.
fn take_head(
    buf: &mut BytesMut,
    found: &mut Vec<Span>,
    parsed: &Parsed,
    asked: Asked,
) -> Result<Head, H1Error> {
    let status =
        StatusCode::from_u16(parsed.status).map_err(|_| H1Error::Malformed("bad status code"))?;
    let head = buf.split_to(parsed.len).freeze();
    // Room for what the gate adds (`X-Request-Id`, a `Set-Cookie`).
    let mut headers = HeaderMap::with_capacity(found.len() + 2);
    for span in found.drain(..) {
        let (start, end) = (span.name.0 as usize, span.name.1 as usize);
        let name = HeaderName::from_bytes(head.get(start..end).unwrap_or_default())
            .map_err(|_| H1Error::Malformed("bad header name"))?;
        let value = HeaderValue::from_maybe_shared(
            head.slice(span.value.0 as usize..span.value.1 as usize),
        )
        .map_err(|_| H1Error::Malformed("bad header value"))?;
        headers.append(name, value);
    }
    let (framing, keep) = framing_of(Fields::Map(&headers), parsed, status, asked)?;
    Ok(Head {
        status,
        headers,
        framing,
        keep,
    })
}

/// The answer's framing, and whether its connection may serve another
/// request once the body has ended.
fn framing_of(
    fields: Fields<'_>,
    parsed: &Parsed,
    status: StatusCode,
    asked: Asked,
) -> Result<(Framing, bool), H1Error> {
    let framers = Framers::read(fields);
    if parsed.version == Version::HTTP_10 && framers.encoded {
        // RFC 9112 §6.1: faulty framing.
        return Err(H1Error::Malformed(
            "Transfer-Encoding in an HTTP/1.0 answer",
        ));
    }
    let framing = framing(&framers, status, asked.head_request, asked.upgrade)?;
    let keep = asked.whole
        && parsed.version == Version::HTTP_11
        && !framers.close
        && !matches!(framing, Framing::Close | Framing::Switch);
    Ok((framing, keep))
}

/// The headers that frame an answer, read in one pass over its fields.
struct Framers<'a> {
    /// A `Transfer-Encoding` header is there...
    encoded: bool,
    /// ...and this is its last coding.
    last_coding: Option<&'a [u8]>,
    /// A `Content-Length` header is there...
    sized: bool,
    /// ...and this is what its values come to.
    length: Result<Option<u64>, &'static str>,
    /// `Connection: close`.
    close: bool,
}

impl<'a> Framers<'a> {
    fn read(fields: Fields<'a>) -> Self {
        let mut f = Framers {
            encoded: false,
            last_coding: None,
            sized: false,
            length: Ok(None),
            close: false,
        };
        let tokens = |v: &'a [u8]| v.split(|&b| b == b',').map(<[u8]>::trim_ascii);
        for (name, value) in fields.iter() {
            if name.eq_ignore_ascii_case(b"transfer-encoding") {
                f.encoded = true;
                if let Some(last) = tokens(value).rfind(|t| !t.is_empty()) {
                    f.last_coding = Some(last);
                }
            } else if name.eq_ignore_ascii_case(b"content-length") {
                f.sized = true;
                if let Ok(before) = f.length {
                    f.length = lengths(value, before);
                }
            } else if name.eq_ignore_ascii_case(b"connection") {
                f.close |= tokens(value).any(|t| t.eq_ignore_ascii_case(b"close"));
            }
        }
        f
    }
}

/// `before` with the lengths of one `Content-Length` value: each part a
/// number, all parts equal.
fn lengths(value: &[u8], mut length: Option<u64>) -> Result<Option<u64>, &'static str> {
    for part in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return Err("bad Content-Length");
        }
        let n = std::str::from_utf8(part)
            .ok()
            .and_then(|p| p.parse::<u64>().ok())
            .ok_or("bad Content-Length")?;
        if length.is_some_and(|l| l != n) {
            return Err("conflicting Content-Length");
        }
        length = Some(n);
    }
    Ok(length)
}

/// How the answer's body is delimited (RFC 9112 §6.3).
fn framing(
    framers: &Framers<'_>,
    status: StatusCode,
    head_request: bool,
    upgrade: bool,
) -> Result<Framing, H1Error> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return if upgrade {
            Ok(Framing::Switch)
        } else {
            Err(H1Error::Malformed("101 without an upgrade request"))
        };
    }
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Length(0));
    }
    if framers.encoded && framers.sized {
        return Err(H1Error::Malformed(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if framers.encoded {
        return Ok(match framers.last_coding {
            Some(t) if t.eq_ignore_ascii_case(b"chunked") => Framing::Chunked(Chunk::Size),
            _ => Framing::Close,
        });
    }
    framers
        .length
        .map(|l| l.map_or(Framing::Close, Framing::Length))
        .map_err(H1Error::Malformed)
}

/// Where reading an answer's body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes.
    Close,
    /// A `101`: no body, the stream is the WebSocket's.
    Switch,
    /// The body has ended.
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of chunk data left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// Reading trailer lines (this many bytes of them so far).
    Trailers(usize),
}

/// An answer's body, read from the upstream connection as it is asked for.
/// At its end the connection goes back to its client connection's slot or
/// this thread's idle list (when its framing allows); dropped early, the
/// connection is closed.
pub struct Answer {
    conn: Option<Conn>,
    framing: Framing,
    /// The connection may serve another request once this body has ended.
    keep: bool,
    /// Where it goes then: its client connection's slot.
    home: Option<Arc<Slot>>,
}

impl Answer {
    fn new(conn: Conn, framing: Framing, keep: bool, slot: &Arc<Slot>) -> Self {
        let mut answer = Answer {
            conn: Some(conn),
            framing,
            keep,
            home: keep.then(|| slot.clone()),
        };
        answer.end_if_done();
        answer
    }

    /// For a `101`: the stream, with what the upstream sent after the head.
    pub fn into_switched(mut self) -> Option<Switched> {
        if self.framing != Framing::Switch {
            return None;
        }
        let conn = self.conn.take()?;
        // A copy of what came early (usually nothing), so the read buffer
        // is not held for the WebSocket's whole life.
        let early = Bytes::copy_from_slice(&conn.buf);
        Some(Switched::new(early, conn.stream))
    }

    fn end_if_done(&mut self) {
        if self.framing == Framing::Length(0) {
            self.end();
        }
    }

    fn end(&mut self) {
        self.framing = Framing::Done;
        if let Some(conn) = self.conn.take()
            && self.keep
            && conn.buf.is_empty()
        {
            match self.home.take() {
                Some(slot) => slot.put(conn),
                None => super::pool::give_back(conn),
            }
        }
    }

    /// The next piece of the body, or `None` at its end.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, H1Error>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(Ok(None));
            };
            match self.framing.next_piece(&mut conn.buf)? {
                Piece::Data(data) => {
                    self.end_if_done();
                    return Poll::Ready(Ok(Some(data)));
                }
                Piece::End => {
                    // A `101`'s stream stays for `into_switched`.
                    self.end_if_done();
                    return Poll::Ready(Ok(None));
                }
                Piece::More => {}
            }
            // Nothing usable buffered: read more.
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if self.framing == Framing::Close => {
                    self.framing = Framing::Done;
                    self.conn = None;
                    return Poll::Ready(Ok(None));
                }
                Ok(0) => {
                    self.conn = None;
                    return Poll::Ready(Err(H1Error::Truncated));
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Err(e.into()));
                }
            }
        }
    }
}

/// What the body's framing makes of the bytes buffered.
#[derive(Debug)]
enum Piece {
    Data(Bytes),
    /// The body has ended (`Length(0)`, `Done` or `Switch`).
    End,
    /// More bytes are needed.
    More,
}

impl Framing {
    /// Takes the next piece of the body off the front of `buf`.
    fn next_piece(&mut self, buf: &mut BytesMut) -> Result<Piece, H1Error> {
        loop {
            match *self {
                Framing::Done | Framing::Switch | Framing::Length(0) => return Ok(Piece::End),
                Framing::Length(left) if !buf.is_empty() => {
                    let n = left.min(buf.len() as u64);
                    *self = Framing::Length(left - n);
                    return Ok(Piece::Data(buf.split_to(n as usize).freeze()));
                }
                Framing::Close if !buf.is_empty() => return Ok(Piece::Data(buf.split().freeze())),
                Framing::Chunked(Chunk::Data(left)) if !buf.is_empty() => {
                    let n = left.min(buf.len() as u64);
                    *self = Framing::Chunked(if left == n {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - n)
                    });
                    return Ok(Piece::Data(buf.split_to(n as usize).freeze()));
                }
                Framing::Chunked(state) if !buf.is_empty() => match step(buf, state)? {
                    Some(next) => *self = next,
                    None => return Ok(Piece::More),
                },
                _ => return Ok(Piece::More),
            }
        }
    }
}

/// One step of chunked framing that is not chunk data; `None` when `buf`
/// does not hold enough yet. After the last trailer line it gives
/// `Length(0)`, which ends the body like the end of a sized one.
fn step(buf: &mut BytesMut, state: Chunk) -> Result<Option<Framing>, H1Error> {
    let bad = || H1Error::Malformed("bad chunked framing");
    match state {
        // httparse takes a line without digits as size 0: not here.
        Chunk::Size if !buf[0].is_ascii_hexdigit() => Err(bad()),
        Chunk::Size => match httparse::parse_chunk_size(buf) {
            Ok(httparse::Status::Complete((used, _))) if used > MAX_CHUNK_LINE => Err(bad()),
            Ok(httparse::Status::Complete((used, size))) => {
                buf.advance(used);
                Ok(Some(Framing::Chunked(if size == 0 {
                    Chunk::Trailers(0)
                } else {
                    Chunk::Data(size)
                })))
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => Err(bad()),
            Ok(httparse::Status::Partial) => Ok(None),
            Err(_) => Err(bad()),
        },
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return if buf[0] == b'\r' {
                    Ok(None)
                } else {
                    Err(bad())
                };
            }
            if &buf[..2] != b"\r\n" {
                return Err(bad());
            }
            buf.advance(2);
            Ok(Some(Framing::Chunked(Chunk::Size)))
        }
        Chunk::Trailers(seen) => {
            let Some(at) = buf.windows(2).position(|w| w == b"\r\n") else {
                return if seen + buf.len() > MAX_HEAD {
                    Err(bad())
                } else {
                    Ok(None)
                };
            };
            if seen + at + 2 > MAX_HEAD {
                return Err(bad());
            }
            buf.advance(at + 2);
            Ok(Some(if at == 0 {
                Framing::Length(0) // nothing left: the body ends
            } else {
                Framing::Chunked(Chunk::Trailers(seen + at + 2))
            }))
        }
        Chunk::Data(_) => Ok(None),
    }
}

/// What [`decode_for_fuzzing`] made of an upstream's bytes.
#[doc(hidden)]
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    pub status: u16,
    /// Headers of the final answer head.
    pub headers: usize,
    pub body: Vec<u8>,
    /// The answer's framing lets the connection serve another request
    /// after it (the pool also needs nothing more to have arrived, which
    /// depends on timing: see [`Answer`] and `pool::usable`).
    pub reusable: bool,
    /// The bytes after the answer: still buffered, or not read yet.
    pub rest: Vec<u8>,
}

/// The answer-reading code of [`read_head`] and [`Answer`] run over bytes
/// that arrive as `reads`, without a socket: the fuzz target `h1_answer`
/// checks it never panics and that where the reads split the bytes
/// changes nothing. The loop around the shared parts is the async one's,
/// with the next read in place of the socket.
#[doc(hidden)]
pub fn decode_for_fuzzing(
    reads: &[&[u8]],
    head_request: bool,
    upgrade: bool,
) -> Result<Decoded, String> {
    let mut reads = reads.iter().copied();
    let mut buf = BytesMut::new();
    let mut fill = |buf: &mut BytesMut| match reads.next() {
        Some(r) => {
            buf.extend_from_slice(r);
            true
        }
        None => false,
    };
    let mut found = Vec::new();
    let parsed = loop {
        match parse(&buf, Some(&mut found)).map_err(|e| e.to_string())? {
            Some(p) if p.interim() => buf.advance(p.len),
            Some(p) => break p,
            None if fill(&mut buf) => {}
            None => return Err(H1Error::Truncated.to_string()),
        }
    };
    let asked = Asked {
        head_request,
        upgrade,
        whole: true,
    };
    let head = take_head(&mut buf, &mut found, &parsed, asked).map_err(|e| e.to_string())?;
    let mut framing = head.framing;
    let mut body = Vec::new();
    loop {
        match framing.next_piece(&mut buf).map_err(|e| e.to_string())? {
            Piece::Data(data) => body.extend_from_slice(&data),
            Piece::End => break,
            Piece::More if fill(&mut buf) => {}
            // A close ends such a body.
            Piece::More if framing == Framing::Close => break,
            Piece::More => return Err(H1Error::Truncated.to_string()),
        }
    }
    let mut rest = buf.to_vec();
    reads.for_each(|r| rest.extend_from_slice(r));
    Ok(Decoded {
        status: head.status.as_u16(),
        headers: head.headers.len(),
        body,
        reusable: head.keep,
        rest,
    })
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match ready!(self.get_mut().poll_data(cx)) {
            Ok(Some(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(
            self.framing,
            Framing::Done | Framing::Switch | Framing::Length(0)
        )
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done | Framing::Switch => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
