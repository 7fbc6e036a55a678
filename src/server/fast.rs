//! The server's own HTTP/1.1 path for the requests that make up nearly all
//! of a gate's traffic: a signed-in client's plain requests to the
//! upstream, and the refusals, sign-ins and refreshes around them.
//!
//! A connection starts here. Each request head is parsed once, in place
//! (httparse, as hyper configures it), and if its shape is a simple one —
//! HTTP/1.1, origin form, a standard method, one `Host`, no body or one
//! framed by a single `Content-Length`, no `Transfer-Encoding`, `Upgrade`
//! or `Expect` ([`plan`]) — it is served here:
//! - when its path is already normal and not the gate's, and the gate can
//!   admit it without waiting ([`fast::admit`]: a session needing no
//!   refresh, a bearer token whose key is loaded), it is forwarded with its
//!   header fields read from the head's bytes, and the upstream's answer
//!   head is filtered and copied to the client as bytes, its body streamed
//!   as it comes. Neither head becomes a header map, and no service,
//!   dispatcher or second buffer stands between the two sockets;
//! - otherwise (the gate's routes, 401s and 302s, refreshes, key reloads,
//!   paths to normalise) it becomes an `http::Request` and goes through
//!   `router::handle`, as hyper's requests do, and the answer is framed as
//!   hyper frames it ([`write_routed`]). The connection stays here.
//!
//! A head of any other shape is not served here: the connection is handed
//! to hyper with the bytes read so far, before anything was done for that
//! request, and hyper (with the framing watcher) serves it and the rest of
//! the connection ([`Handover`] says why; `ssogate_http1_handovers_total`
//! counts it). That covers chunked request bodies, `Expect:
//! 100-continue`, WebSocket upgrades, HTTP/2, HTTP/1.0, and every head
//! hyper would refuse (it answers 400 or 431 as before). What a client sees
//! is the same either way: the same headers reach the upstream (the same
//! [`to_upstream`](crate::proxy::headers::to_upstream) writes them), the same
//! answer headers are removed, `X-Request-Id` and `Date` are set as hyper
//! would, a client that hangs up while its request waits is noticed, and
//! a drain closes idle connections and finishes the request in flight. A
//! request body streams to the upstream as it is read ([`body`]), cut after
//! `CT_BODY_IDLE_TIMEOUT` without a byte (400); when the upstream (or the
//! router) answers before the body is all read, the rest is skipped if it
//! has all arrived, and otherwise (or when the body fails) the connection
//! closes after the answer, as its framing can no longer be followed.
//!
//! Timing matches hyper's: the head-read timeout (`CT_HEADER_READ_TIMEOUT`)
//! runs from the connection's start for its first request and from the end
//! of the previous answer for each later one, so an idle kept-alive
//! connection is closed after it too.

use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http::uri::PathAndQuery;
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::time::Sleep;

use crate::fields::{Fields, Span};
use crate::proxy::h1::{self, AnswerHead};
use crate::proxy::headers;
use crate::request_body::RequestBody;
use crate::respond::Body;
use crate::router::fast::{self, Answered};
use crate::router::{ClientConn, State};
use crate::telemetry::request_id::{self, RequestId};

/// Headers parsed per head; a head with more is hyper's (431).
const MAX_HEADERS: usize = super::MAX_HEADERS;
/// The read buffer a connection starts with.
const READ_BUF: usize = 8 * 1024;
/// Read at least this much room at a time.
const MIN_READ: usize = 1024;

/// How serving a connection here ended.
pub enum Ended<I> {
    /// Closed: by either side, a timeout, a failure, or a drain.
    Closed,
    /// A request this path does not serve: hyper serves the connection from
    /// here on, starting with `read`, the bytes read and not yet served.
    HandOver {
        io: I,
        read: BytesMut,
        why: Handover,
    },
}

/// Why a connection went to hyper: what its request needed (the reasons
/// of `ssogate_http1_handovers_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handover {
    /// Not an HTTP/1 head httparse reads: HTTP/2, or one hyper refuses (400).
    NotHttp1,
    /// Longer than `CT_MAX_HEADER_BYTES` (hyper answers 431).
    HeadTooLarge,
    Http10,
    /// `CONNECT`, `TRACE`, an extension method or one not in upper case.
    Method,
    /// Absolute form, `*`, or a target hyper's URI parser refuses.
    Target,
    /// No `Host`, or more than one (hyper's path answers 400).
    Host,
    /// `Content-Length` other than one plain number.
    ContentLength,
    TransferEncoding,
    /// `Upgrade` or `Connection: upgrade` (WebSockets).
    Upgrade,
    Expect,
    /// A header field the router's `HeaderMap` cannot hold.
    Header,
}

impl Handover {
    pub const ALL: [Handover; 11] = [
        Handover::NotHttp1,
        Handover::HeadTooLarge,
        Handover::Http10,
        Handover::Method,
        Handover::Target,
        Handover::Host,
        Handover::ContentLength,
        Handover::TransferEncoding,
        Handover::Upgrade,
        Handover::Expect,
        Handover::Header,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Handover::NotHttp1 => "not_http1",
            Handover::HeadTooLarge => "head_too_large",
            Handover::Http10 => "http1_0",
            Handover::Method => "method",
            Handover::Target => "target",
            Handover::Host => "host",
            Handover::ContentLength => "content_length",
            Handover::TransferEncoding => "transfer_encoding",
            Handover::Upgrade => "upgrade",
            Handover::Expect => "expect",
            Handover::Header => "header",
        }
    }
}

/// What bounds a connection's requests here (the server's settings).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    /// `CT_MAX_HEADER_BYTES`.
    pub max_head: usize,
}

/// Set when the server drains: an idle connection closes, one serving a
/// request closes once its answer is written.
#[derive(Debug, Default)]
pub struct Stop(AtomicBool);

impl Stop {
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A request head parsed in place: positions in the read buffer.
struct Parsed {
    len: usize,
    method: (usize, usize),
    target: (usize, usize),
    minor: u8,
}

/// Serves `io` until it closes or a request needs hyper.
pub async fn serve<I>(
    io: I,
    state: &Arc<State>,
    conn: &Arc<ClientConn>,
    limits: Limits,
    stop: &Stop,
) -> Ended<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut c = Serving {
        io,
        buf: BytesMut::with_capacity(READ_BUF),
        out: Vec::new(),
        state,
        conn,
        limits,
        stop,
    };
    let mut spans: Vec<Span> = Vec::new();
    // One timer for the connection, moved on only when it fires early.
    let mut timer = pin!(tokio::time::sleep(limits.header_read_timeout));
    // The first head is timed from the connection's start.
    let mut deadline = Instant::now() + limits.header_read_timeout;
    loop {
        let parsed = loop {
            let why = match parse(&c.buf, &mut spans) {
                Ok(Some(parsed)) if parsed.len <= limits.max_head => break parsed,
                Ok(None) if c.buf.len() < limits.max_head => None,
                // Refused, or too long: hyper answers (400, 431).
                Ok(_) => Some(Handover::HeadTooLarge),
                Err(()) => Some(Handover::NotHttp1),
            };
            if let Some(why) = why {
                return Ended::HandOver {
                    io: c.io,
                    read: c.buf,
                    why,
                };
            }
            let waited = Wait {
                io: &mut c.io,
                buf: &mut c.buf,
                timer: timer.as_mut(),
                deadline,
                stop,
            };
            if !waited.await {
                return Ended::Closed;
            }
        };
        let head = c.buf.split_to(parsed.len).freeze();
        match c.one(&head, &parsed, &spans).await {
            Served::Kept => {}
            Served::Closed => return Ended::Closed,
            Served::Declined(why) => return hand_over(c.io, &head, c.buf, why),
        }
        drop(head);
        deadline = Instant::now() + limits.header_read_timeout;
    }
}

/// A connection being served here, and what serving it needs.
struct Serving<'a, I> {
    io: I,
    /// What was read and not yet served.
    buf: BytesMut,
    /// The answer head being written.
    out: Vec<u8>,
    state: &'a Arc<State>,
    conn: &'a Arc<ClientConn>,
    limits: Limits,
    stop: &'a Stop,
}

/// How serving one request ended.
enum Served {
    /// Answered; the connection goes on.
    Kept,
    /// Answered (or not: the client left, the answer failed); closed.
    Closed,
    /// Not served here: nothing was done for it.
    Declined(Handover),
}

impl<I: AsyncRead + AsyncWrite + Unpin> Serving<'_, I> {
    /// Serves the request whose head (`head`, parsed as `parsed` and
    /// `spans`) was taken off the read buffer.
    async fn one(&mut self, head: &Bytes, parsed: &Parsed, spans: &[Span]) -> Served {
        let plan = match plan(head, parsed, spans) {
            Ok(plan) => plan,
            Err(why) => return Served::Declined(why),
        };
        let fields = Fields::Spans { head, spans };
        let admitted = plan
            .direct
            .then(|| fast::admit(self.state, self.conn, fields, crate::clock::now()))
            .flatten();
        let Some(admitted) = admitted else {
            // Boxed: the router's future is large, and the connection's
            // future (held by every connection, and moved about for every
            // request) would otherwise be as large.
            return Box::pin(self.routed(head, parsed, spans, &plan)).await;
        };
        let req = fast::Request {
            method: &head[parsed.method.0..parsed.method.1],
            target: plan.target.as_str().as_bytes(),
            path: plan.target.path(),
            fields,
            length: plan.length,
        };
        let id = request_id::of_fields(fields);
        let pipe = plan.length.filter(|n| *n > 0).map(body::Pipe::new);
        let client_body = pipe.as_ref().map(|pipe| {
            http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(
                body::ClientBody(pipe.clone()),
                |never| match never {},
            ))
        });
        let mut forwarded = pin!(fast::forward(
            self.state,
            self.conn,
            &req,
            client_body,
            admitted,
            &id
        ));
        let Some(answered) = self.meanwhile(forwarded.as_mut(), pipe.as_deref()).await else {
            return Served::Closed;
        };
        // A body not all read (an early answer, a failure): its framing is lost.
        let close = plan.close || self.stop.is_set() || pipe.is_some_and(|p| !p.is_done());
        match answered {
            Answered::Upstream(answer, body) => {
                answer_head(&mut self.out, &answer, &id, close);
                let chunked = !answer.bodiless && answer.length.is_none();
                drop(answer);
                let max_head = self.limits.max_head;
                let written = write_body(
                    &mut self.io,
                    &mut self.buf,
                    &self.out,
                    body,
                    chunked,
                    max_head,
                )
                .await;
                self.finish(written.map(|()| close)).await
            }
            Answered::Gate(mut resp) => {
                if let Ok(value) = http::HeaderValue::from_str(id.as_str()) {
                    resp.headers_mut().insert(request_id::X_REQUEST_ID, value);
                }
                self.answer(resp, req.method == b"HEAD", close).await
            }
        }
    }

    /// Writes a map-based answer ([`write_routed`]); the connection goes on
    /// unless it closes.
    async fn answer(
        &mut self,
        resp: http::Response<Body>,
        head_request: bool,
        close: bool,
    ) -> Served {
        let written = write_routed(
            &mut self.io,
            &mut self.buf,
            &mut self.out,
            resp,
            head_request,
            close,
            self.limits.max_head,
        )
        .await;
        self.finish(written).await
    }

    /// After an answer: `Ok(true)` or a failure closes the connection.
    async fn finish(&mut self, closes: Result<bool, ()>) -> Served {
        if closes == Ok(false) {
            return Served::Kept;
        }
        let _ = self.io.shutdown().await;
        Served::Closed
    }

    /// Serves a request the gate cannot admit at once (or one of its own
    /// routes, or a path to normalise) through the router, as hyper would:
    /// the same `router::handle`, given the same request, its answer
    /// written as hyper writes it ([`write_routed`]).
    async fn routed(
        &mut self,
        head: &Bytes,
        parsed: &Parsed,
        spans: &[Span],
        plan: &Plan,
    ) -> Served {
        let Some(mut req) = request(head, parsed, spans, plan) else {
            return Served::Declined(Handover::Header);
        };
        let pipe = plan.length.filter(|n| *n > 0).map(body::Pipe::new);
        if let Some(pipe) = &pipe {
            *req.body_mut() = RequestBody::own(body::ClientBody(pipe.clone()));
        }
        let head_request = req.method() == http::Method::HEAD;
        let handled = pin!(crate::router::handle(
            self.state.clone(),
            req,
            self.conn.clone()
        ));
        let Some(Ok(resp)) = self.meanwhile(handled, pipe.as_deref()).await else {
            return Served::Closed;
        };
        // An answer before the body was all read: the rest is skipped when
        // it is already here, else the connection closes after the answer.
        let unread = pipe.is_some_and(|p| !skip_rest(&p, &mut self.buf));
        let close = plan.close || self.stop.is_set() || unread;
        self.answer(resp, head_request, close).await
    }

    /// Runs `forwarded` while the connection gives its request body
    /// (`pipe`) piece by piece and, once that is all read, is watched: a
    /// client that hangs up while its request waits ends it (`None`).
    fn meanwhile<'s, F: std::future::Future>(
        &'s mut self,
        mut forwarded: Pin<&'s mut F>,
        pipe: Option<&'s body::Pipe>,
    ) -> impl std::future::Future<Output = Option<F::Output>> + 's {
        let max_head = self.limits.max_head;
        std::future::poll_fn(move |cx| {
            loop {
                let put = match pump(&mut self.io, &mut self.buf, pipe, max_head, cx) {
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Ready(Some(put)) => put,
                    Poll::Pending => false,
                };
                if let Poll::Ready(answered) = forwarded.as_mut().poll(cx) {
                    return Poll::Ready(Some(answered));
                }
                if !put {
                    return Poll::Pending;
                }
            }
        })
    }
}

/// The bytes `head` and `rest`, read and not served, for hyper.
fn hand_over<I>(io: I, head: &[u8], rest: BytesMut, why: Handover) -> Ended<I> {
    let mut read = BytesMut::with_capacity(head.len() + rest.len());
    read.extend_from_slice(head);
    read.extend_from_slice(&rest);
    Ended::HandOver { io, read, why }
}

/// Skips what is left of a request body the router answered without
/// reading all of it, when that is already read: false when it is not.
fn skip_rest(pipe: &body::Pipe, buf: &mut BytesMut) -> bool {
    let left = pipe.left();
    if left > buf.len() as u64 {
        return false;
    }
    // At most `buf.len()`, which is a usize.
    bytes::Buf::advance(buf, usize::try_from(left).unwrap_or(0));
    true
}

/// The request the router is given for a head served here, as hyper would
/// make it (its body set by the caller); `None` for a header field a
/// `HeaderMap` cannot hold.
fn request(
    head: &Bytes,
    parsed: &Parsed,
    spans: &[Span],
    plan: &Plan,
) -> Option<http::Request<RequestBody>> {
    let method = http::Method::from_bytes(&head[parsed.method.0..parsed.method.1]).ok()?;
    let mut headers = http::HeaderMap::with_capacity(spans.len());
    for (name, value) in (Fields::Spans { head, spans }).iter() {
        headers.append(
            http::HeaderName::from_bytes(name).ok()?,
            http::HeaderValue::from_maybe_shared(head.slice_ref(value)).ok()?,
        );
    }
    let mut req = http::Request::new(RequestBody::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = http::Uri::from(plan.target.clone());
    *req.version_mut() = http::Version::HTTP_11;
    *req.headers_mut() = headers;
    Some(req)
}

/// Parses a request head at the start of `buf` as hyper does; its headers
/// go to `spans`. `Ok(None)` while it is incomplete; `Err` for anything
/// hyper refuses (or that is not HTTP/1 at all, like HTTP/2's preface).
fn parse(buf: &[u8], spans: &mut Vec<Span>) -> Result<Option<Parsed>, ()> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(());
    };
    let at = |s: &[u8]| {
        let start = (s.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
        (start, start + s.len())
    };
    spans.clear();
    spans.extend(
        req.headers
            .iter()
            .map(|h| Span::of(buf, h.name.as_bytes(), h.value)),
    );
    Ok(Some(Parsed {
        len,
        method: at(method.as_bytes()),
        target: at(target.as_bytes()),
        minor,
    }))
}

/// The length of the request head at the start of `data` and of its body,
/// if this path would serve it (before the gate's decision), for the
/// `fast_path` fuzz target.
pub(super) fn serves(data: &[u8], max_head: usize) -> Option<(usize, u64)> {
    let mut spans = Vec::new();
    let parsed = parse(data, &mut spans).ok()??;
    let head = Bytes::copy_from_slice(data.get(..parsed.len)?);
    let plan = plan(&head, &parsed, &spans)
        .ok()
        .filter(|_| parsed.len <= max_head)?;
    Some((parsed.len, plan.length.unwrap_or(0)))
}

/// What serving a request here needs from its head.
struct Plan {
    /// Its target, checked as hyper checks it (a fragment cut off).
    target: PathAndQuery,
    /// Its `Content-Length`.
    length: Option<u64>,
    /// The client asked to close after this answer.
    close: bool,
    /// Its path is already normal and not the gate's: it may be admitted
    /// and forwarded without the router ([`fast::admit`]).
    direct: bool,
}

/// Whether this path serves a request with this head; `Err` hands it to
/// hyper.
fn plan(head: &Bytes, parsed: &Parsed, spans: &[Span]) -> Result<Plan, Handover> {
    if parsed.minor != 1 {
        return Err(Handover::Http10);
    }
    let method = &head[parsed.method.0..parsed.method.1];
    let plain = [
        &b"GET"[..],
        b"HEAD",
        b"OPTIONS",
        b"DELETE",
        b"POST",
        b"PUT",
        b"PATCH",
    ];
    if !plain.contains(&method) {
        return Err(Handover::Method);
    }
    let raw_target = head.slice(parsed.target.0..parsed.target.1);
    if !raw_target.starts_with(b"/") {
        return Err(Handover::Target);
    }
    let target = PathAndQuery::from_maybe_shared(raw_target).map_err(|_| Handover::Target)?;
    // One normal form for every decision and for the upstream: a path that
    // needs normalising (or is refused), the gate's prefix in any spelling
    // and the gate's own routes go through the router.
    let direct = matches!(
        crate::path::normalise(target.path()),
        Ok(std::borrow::Cow::Borrowed(_))
    ) && !crate::router::is_gate_path(target.path())
        && !crate::path::is_reserved(target.path());
    let fields = Fields::Spans { head, spans };
    let mut length = None;
    let mut close = false;
    let mut hosts = 0;
    for (name, value) in fields.iter() {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("host") {
            hosts += 1;
        } else if is("content-length") {
            // One length, a plain number; a list, or two, is hyper's (and
            // the framing watcher's).
            let digits = value.trim_ascii();
            if length.is_some() || digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(Handover::ContentLength);
            }
            length = Some(
                std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| d.parse::<u64>().ok())
                    .ok_or(Handover::ContentLength)?,
            );
        } else if is("transfer-encoding") {
            return Err(Handover::TransferEncoding);
        } else if is("upgrade") {
            return Err(Handover::Upgrade);
        } else if is("expect") {
            return Err(Handover::Expect);
        } else if is("connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Err(Handover::Upgrade);
                }
            }
        }
    }
    // Exactly one Host (RFC 9112 §3.2); anything else gets hyper's path's 400.
    if hosts != 1 {
        return Err(Handover::Host);
    }
    Ok(Plan {
        target,
        length,
        close,
        direct,
    })
}

/// Waits for more of a request head: true when bytes came, false when the
/// connection is done (closed, failed, timed out, or drained while idle).
struct Wait<'a, I> {
    io: &'a mut I,
    buf: &'a mut BytesMut,
    timer: Pin<&'a mut Sleep>,
    deadline: Instant,
    stop: &'a Stop,
}

impl<I: AsyncRead + Unpin> std::future::Future for Wait<'_, I> {
    type Output = bool;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let this = &mut *self;
        if this.buf.is_empty() && this.stop.is_set() {
            return Poll::Ready(false);
        }
        match read(this.io, this.buf, cx) {
            Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(false),
            Poll::Ready(Ok(_)) => return Poll::Ready(true),
            Poll::Pending => {}
        }
        let deadline = this.deadline;
        loop {
            ready!(this.timer.as_mut().poll(cx));
            if Instant::now() >= deadline {
                tracing::debug!("no request head in time (CT_HEADER_READ_TIMEOUT)");
                return Poll::Ready(false);
            }
            // Set for an earlier head: move it on, and wait again.
            this.timer.as_mut().reset(deadline.into());
        }
    }
}

/// Reads what the client sent into `buf`.
fn read<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < MIN_READ {
        buf.reserve(READ_BUF);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// While a request is served: puts the next piece of its body (`pipe`)
/// from what was read, reading more when there is none; once the body is
/// all read, [`watch`]es. `Ready(Some(true))`: a piece was put;
/// `Ready(None)`: the client hung up or its connection failed.
fn pump<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    pipe: Option<&body::Pipe>,
    max_head: usize,
    cx: &mut Context<'_>,
) -> Poll<Option<bool>> {
    let Some(pipe) = pipe.filter(|p| p.left() > 0) else {
        return watch(io, buf, max_head, cx).map(|()| None);
    };
    if !pipe.poll_taken(cx) {
        // The upstream has not taken the last piece: read nothing more yet.
        return Poll::Pending;
    }
    if buf.is_empty() {
        match read(io, buf, cx) {
            Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
            Poll::Ready(Ok(_)) => {}
            Poll::Pending => return Poll::Pending,
        }
    }
    Poll::Ready(Some(pipe.put(buf, cx)))
}

/// While a request is served: reads what the client sends meanwhile (the
/// next pipelined request, up to a head's worth); ready when the client
/// hung up or its connection failed.
fn watch<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    max_head: usize,
    cx: &mut Context<'_>,
) -> Poll<()> {
    while buf.len() < max_head {
        match read(io, buf, cx) {
            Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(_)) => {}
            Poll::Pending => return Poll::Pending,
        }
    }
    Poll::Pending
}

/// Writes the answer's head for the client into `out` (sent with the
/// body's first bytes): the upstream's status and headers, but for the
/// hop-by-hop ones, its `X-Request-Id` (the gate's replaces it) and its
/// framing (the client's is set here: the length, or chunked); `Date` when
/// the upstream sent none; `Connection: close` when closing.
fn answer_head(out: &mut Vec<u8>, answer: &AnswerHead, id: &RequestId, close: bool) {
    out.clear();
    status_line(out, answer.status);
    let fields = answer.fields();
    let listing = headers::lists_headers(fields);
    let mut dated = false;
    for (name, value) in fields.iter() {
        if !headers::answer_keeps(name, fields, listing)
            || name.eq_ignore_ascii_case(b"x-request-id")
            || (!answer.bodiless && name.eq_ignore_ascii_case(b"content-length"))
        {
            continue;
        }
        dated |= name.eq_ignore_ascii_case(b"date");
        line(out, name, value);
    }
    if !dated {
        date_line(out);
    }
    line(out, b"x-request-id", id.as_str().as_bytes());
    if !answer.bodiless {
        match answer.length {
            Some(n) => h1::content_length_line(out, n),
            None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the answer's head (`head`) and then its body, as chunks when
/// `chunked`; the head goes out with the body's first bytes when they are
/// already there. Err: the connection cannot go on (the client or the
/// upstream failed, or the session ended mid-body).
async fn write_body<I>(
    io: &mut I,
    buf: &mut BytesMut,
    mut head: &[u8],
    mut body: Body,
    chunked: bool,
    max_head: usize,
) -> Result<(), ()>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let step = std::future::poll_fn(|cx| {
            if body.is_end_stream() {
                return Poll::Ready(Step::End);
            }
            match Pin::new(&mut body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(match frame.into_data() {
                    Ok(data) => Step::Data(data),
                    Err(_) => Step::Skip, // trailers: not passed on
                }),
                Poll::Ready(Some(Err(_))) => Poll::Ready(Step::Failed),
                Poll::Ready(None) => Poll::Ready(Step::End),
                // Nothing yet: send the head meanwhile.
                Poll::Pending if !head.is_empty() => Poll::Ready(Step::Head),
                Poll::Pending => watch(io, buf, max_head, cx).map(|()| Step::Failed),
            }
        })
        .await;
        match step {
            Step::Head => {
                write_all(io, &mut [IoSlice::new(head)]).await?;
                head = &[];
            }
            Step::Skip => {}
            Step::Data(data) if data.is_empty() => {}
            Step::Data(data) => {
                let mut size = [0u8; 18];
                let size = if chunked {
                    chunk_size(data.len(), &mut size)
                } else {
                    &[]
                };
                let end: &[u8] = if chunked { b"\r\n" } else { b"" };
                let mut parts = [
                    IoSlice::new(head),
                    IoSlice::new(size),
                    IoSlice::new(&data),
                    IoSlice::new(end),
                ];
                write_all(io, &mut parts).await?;
                head = &[];
            }
            Step::End => {
                let last: &[u8] = if chunked { b"0\r\n\r\n" } else { b"" };
                return write_all(io, &mut [IoSlice::new(head), IoSlice::new(last)]).await;
            }
            Step::Failed => {
                tracing::debug!("answer body failed; closing the connection");
                return Err(());
            }
        }
    }
}

enum Step {
    /// The body has nothing yet; the head goes out alone.
    Head,
    Data(Bytes),
    Skip,
    End,
    Failed,
}

/// Writes a map-based answer (the router's, or one of the gate's own like
/// the 502 when the upstream cannot be reached) as hyper writes it: its
/// headers but for the framing and `Connection`, `Date` when it has none,
/// the body's length when known (the declared one, else the body's exact
/// size) or chunks, no body for `HEAD` (`head_request`), 1xx, 204 and 304.
/// `Ok(true)`: the connection closes after it (`close`, or the answer asks
/// to).
async fn write_routed<I>(
    io: &mut I,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    resp: http::Response<Body>,
    head_request: bool,
    mut close: bool,
    max_head: usize,
) -> Result<bool, ()>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
    let (parts, body) = resp.into_parts();
    let status = parts.status;
    let no_content = status.is_informational() || status == StatusCode::NO_CONTENT;
    let bodiless = head_request || no_content || status == StatusCode::NOT_MODIFIED;
    close |= headers::connection_lists(Fields::Map(&parts.headers), b"close");
    let declared = crate::proxy::h1::content_length(&parts.headers);
    let length = declared.or(body.size_hint().exact());
    out.clear();
    status_line(out, status);
    let mut dated = false;
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING || name == CONNECTION {
            continue;
        }
        dated |= name == DATE;
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !dated {
        date_line(out);
    }
    let chunked = !bodiless && length.is_none();
    match length {
        // A 304 keeps only a declared length; a 1xx or 204 has none.
        Some(n) if !no_content && (declared.is_some() || status != StatusCode::NOT_MODIFIED) => {
            h1::content_length_line(out, n);
        }
        _ if chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if bodiless {
        drop(body);
        write_all(io, &mut [IoSlice::new(out)]).await?;
    } else {
        write_body(io, buf, out, body, chunked, max_head).await?;
    }
    Ok(close)
}

/// Writes all of `parts` and flushes (a TLS stream holds what it is given).
async fn write_all<I: AsyncWrite + Unpin>(io: &mut I, parts: &mut [IoSlice<'_>]) -> Result<(), ()> {
    let mut parts = &mut parts[..];
    IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        let n = io.write_vectored(parts).await.map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        IoSlice::advance_slices(&mut parts, n);
    }
    io.flush().await.map_err(|_| ())
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    // hyper writes a reason always, as many parsers expect one.
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The `Date` value of the current second, as hyper caches it.
    static DATE: std::cell::Cell<(u64, [u8; 29])> = const { std::cell::Cell::new((0, [0; 29])) };
}

fn date_line(out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (cached, mut text) = DATE.get();
    if cached != secs || text[0] == 0 {
        let made = httpdate::fmt_http_date(now);
        if made.len() == text.len() {
            text.copy_from_slice(made.as_bytes());
            DATE.set((secs, text));
        }
    }
    line(out, b"date", &text);
}

/// A chunk-size line for `len` bytes of chunk data: hex digits and CRLF.
fn chunk_size(len: usize, buf: &mut [u8; 18]) -> &[u8] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut at = 16;
    let mut n = len;
    loop {
        at -= 1;
        buf[at] = DIGITS[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    buf[16] = b'\r';
    buf[17] = b'\n';
    &buf[at..]
}

/// The bytes hyper is handed, then the connection's.
pub struct Prefixed<I> {
    read: BytesMut,
    io: I,
}

impl<I> Prefixed<I> {
    pub fn new(read: BytesMut, io: I) -> Self {
        Self { read, io }
    }

    /// The bytes not yet read, and the connection.
    pub fn into_parts(self) -> (BytesMut, I) {
        (self.read, self.io)
    }

    /// Bytes of memory its buffer holds.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.read.capacity()
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.read.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, out);
        }
        let n = this.read.len().min(out.remaining());
        out.put_slice(&this.read.split_to(n));
        if this.read.is_empty() {
            // Not held for the connection's life.
            this.read = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

crate::server::write_through!(Prefixed);

mod body;
#[cfg(test)]
mod tests;
