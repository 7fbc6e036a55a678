//! HTTP/2 to the upstream, when `CT_UPSTREAM_HTTP2` says it speaks it.
//!
//! Each serving thread keeps one HTTP/2 connection per upstream, and every
//! request of that thread goes over it as a stream of its own (WebSocket
//! upgrades excepted: they stay on HTTP/1.1, [`super::pool`]). Requests
//! that arrive in the same turn of the thread's event loop leave in one
//! write, and their answers come back in one read, where HTTP/1.1 needs a
//! write and a read per request, each on its own connection. The system
//! calls and loopback segments saved are most of what a request costs the
//! gate (`benches/load/README.md` has the figures).
//!
//! The request is the one the HTTP/1.1 path would send: its head is written
//! by [`super::h1::encode_head`] and [`super::headers::to_upstream`], the one
//! place that decides what goes upstream, and read back here into an
//! HTTP/2 request (`Host` becomes `:authority`; the framing and
//! connection-specific headers HTTP/2 forbids are left out).
//!
//! A connection carries as many requests at once as the upstream allows
//! (its `SETTINGS_MAX_CONCURRENT_STREAMS`; nginx's default is 128). When
//! every connection a thread has is that full (long polls, streams, big
//! downloads), the thread opens another, up to [`MAX_CONNS_PER_UPSTREAM`];
//! past that, requests wait for a free stream on the least loaded one. New
//! requests go to the first connection with room, so connections opened
//! for a peak fall idle after it and the upstream's idle timeout closes
//! them.
//!
//! A connection that has closed (an upstream restart, a `GOAWAY` at its
//! idle timeout) is replaced by the next request that finds it so. A
//! request that never left (hyper hands it back) is sent on a new
//! connection; one that left on a reused connection and failed before any
//! answer is sent again only if it is safe to repeat (`GET`, `HEAD`,
//! `OPTIONS` without a body), as over HTTP/1.1; anything else gets 502.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use http_body::Frame;
use hyper::body::Incoming;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Notify;

use super::ProxyError;
use super::pool::Pool;
use crate::respond::{Body, BoxError};

/// Upstreams a thread keeps connections to (tests build many proxies).
const MAX_UPSTREAMS_PER_THREAD: usize = 8;
/// Connections a thread opens to one upstream when each is full.
pub const MAX_CONNS_PER_UPSTREAM: usize = 16;
/// The largest answer head taken, as over HTTP/1.1 (larger: 502).
const MAX_ANSWER_HEAD: u32 = 64 * 1024;
/// Opening a connection and its HTTP/2 handshake give up after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

thread_local! {
    /// This thread's connections to each upstream.
    static CONNS: RefCell<Vec<Upstream>> = const { RefCell::new(Vec::new()) };
}

/// A thread's connections to one upstream ([`Pool::id`]).
struct Upstream {
    id: u64,
    lanes: Vec<Lane>,
    /// A connection is being opened: requests that find no room wait for
    /// it instead of each opening one (a burst on a cold thread).
    opening: Option<Arc<Opened>>,
}

/// What a request does for a connection ([`pick`]).
enum Pick {
    Take(Lane),
    /// Open one ([`Opening`] marks it).
    Open(Opening),
    /// Wait until the one being opened is there (or has failed).
    Wait(Arc<Opened>),
}

/// Whether the connection being opened is there (or failed), and who waits.
struct Opened {
    finished: AtomicBool,
    done: Notify,
}

/// A connection being opened, until dropped: then the requests waiting for
/// it look again. It needs no thread-local, so it works wherever the task
/// that opens runs on (a work-stealing runtime moves tasks between threads).
struct Opening(Arc<Opened>);

impl Drop for Opening {
    fn drop(&mut self) {
        self.0.finished.store(true, Ordering::Release);
        self.0.done.notify_waiters();
    }
}

impl Opened {
    /// Waits until the connection is there or has failed.
    async fn wait(&self) {
        let notified = self.done.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the check: a finish in between still wakes it.
        notified.as_mut().enable();
        if !self.finished.load(Ordering::Acquire) {
            notified.await;
        }
    }
}

/// One HTTP/2 connection and how many of its streams are in use.
#[derive(Clone)]
struct Lane {
    conn: SendRequest<Sent>,
    /// Requests sent on it whose answers have not ended ([`InFlight`]).
    load: Arc<AtomicUsize>,
    /// The streams the upstream allows at once, as of the last request the
    /// connection took ([`Drive`]; hyper reads frames in a task of its own,
    /// so the upstream's `SETTINGS` are noted one request late, and until
    /// then [`INITIAL_STREAMS`] are assumed; a request over the real limit
    /// waits in hyper for a free stream, it does not fail).
    limit: Arc<AtomicUsize>,
}

/// Streams assumed allowed until the upstream's `SETTINGS` say (hyper's own
/// assumption too).
const INITIAL_STREAMS: usize = 100;

/// A connection's driver (its task), which also keeps [`Lane::limit`] up to
/// date: the upstream may change it at any time.
struct Drive<C> {
    conn: C,
    limit: Arc<AtomicUsize>,
}

type Conn =
    hyper::client::conn::http2::Connection<TokioIo<super::stream::Stream>, Sent, TokioExecutor>;

impl std::future::Future for Drive<Conn> {
    type Output = hyper::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.conn).poll(cx);
        this.limit
            .store(this.conn.current_max_send_streams(), Ordering::Relaxed);
        polled
    }
}

/// One stream of a [`Lane`] in use, until dropped.
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(load: &Arc<AtomicUsize>) -> Self {
        load.fetch_add(1, Ordering::Relaxed);
        InFlight(load.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An answer's body as it comes over HTTP/2; its stream counts as in use
/// until the body has ended or is dropped.
pub struct Streamed {
    body: Incoming,
    _stream: InFlight,
}

impl http_body::Body for Streamed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum H2Error {
    /// The request head the gate wrote does not make an HTTP/2 request
    /// (a target `http::Uri` refuses).
    #[error("the request cannot be sent over HTTP/2: {0}")]
    Request(&'static str),
    #[error("{0}")]
    Hyper(#[from] hyper::Error),
}

/// Sends the request whose HTTP/1.1 head the gate wrote (`head`, from
/// [`super::h1::encode_head`]) and `body`, and waits for the answer's head.
pub async fn send(
    pool: &Pool,
    head: &[u8],
    body: Option<Body>,
) -> Result<Response<Streamed>, ProxyError> {
    let scheme = pool.scheme();
    let parts = request_of(&scheme, head).map_err(upstream)?;
    let repeatable = body.is_none()
        && matches!(
            *parts.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        );
    let failed = body.as_ref().map(|_| Arc::new(Mutex::new(None)));
    let sent = match (body, &failed) {
        (Some(body), Some(failed)) => Sent::Body(body, failed.clone()),
        _ => Sent::Empty,
    };
    let mut req = parts.map(|()| sent);
    let mut again = true;
    loop {
        let (mut lane, fresh) = match pick(pool.id()) {
            Pick::Take(lane) => (lane, false),
            Pick::Open(opening) => (connect(pool, opening).await?, true),
            Pick::Wait(opened) => {
                opened.wait().await;
                continue;
            }
        };
        let stream = InFlight::new(&lane.load);
        let mut err = match lane.conn.try_send_request(req).await {
            Ok(resp) => {
                return Ok(resp.map(|body| Streamed {
                    body,
                    _stream: stream,
                }));
            }
            Err(err) => err,
        };
        drop(stream);
        let client_failed = failed
            .as_ref()
            .and_then(|f| f.lock().unwrap_or_else(PoisonError::into_inner).take());
        if let Some(e) = client_failed {
            return Err(ProxyError::ClientBody(e));
        }
        match err.take_message() {
            // It never left: the connection had closed.
            Some(back) if again => req = back,
            None if again && repeatable && !fresh => {
                req = request_of(&scheme, head)
                    .map_err(upstream)?
                    .map(|()| Sent::Empty);
            }
            _ => return Err(upstream(H2Error::Hyper(err.into_error()))),
        }
        again = false;
    }
}

fn upstream(e: H2Error) -> ProxyError {
    ProxyError::Http2(e)
}

/// What a request for upstream `id` does on this thread: take the first
/// connection with a free stream; else wait for the one being opened;
/// else open one, while there are fewer than [`MAX_CONNS_PER_UPSTREAM`];
/// else take the least loaded (its streams are queued for). Closed
/// connections are dropped on the way.
fn pick(id: u64) -> Pick {
    CONNS.with(|conns| {
        let mut conns = conns.borrow_mut();
        let up = upstream_here(&mut conns, id);
        up.lanes.retain(|lane| !lane.conn.is_closed());
        let free = up
            .lanes
            .iter()
            .find(|lane| lane.load.load(Ordering::Relaxed) < lane.limit.load(Ordering::Relaxed));
        if let Some(lane) = free {
            return Pick::Take(lane.clone());
        }
        match &up.opening {
            Some(opened) if !opened.finished.load(Ordering::Acquire) => {
                return Pick::Wait(opened.clone());
            }
            _ => up.opening = None,
        }
        if up.lanes.len() >= MAX_CONNS_PER_UPSTREAM
            && let Some(lane) = up
                .lanes
                .iter()
                .min_by_key(|lane| lane.load.load(Ordering::Relaxed))
        {
            return Pick::Take(lane.clone());
        }
        let opened = Arc::new(Opened {
            finished: AtomicBool::new(false),
            done: Notify::new(),
        });
        up.opening = Some(opened.clone());
        Pick::Open(Opening(opened))
    })
}

/// Opens a connection to the upstream for this thread and keeps it;
/// `opening` is this thread's mark that one is being opened.
async fn connect(pool: &Pool, opening: Opening) -> Result<Lane, ProxyError> {
    let handshake = async {
        let stream = pool.open(true).await?;
        Builder::new(TokioExecutor::new())
            .max_header_list_size(MAX_ANSWER_HEAD)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| upstream(H2Error::Hyper(e)))
    };
    let (conn, driver) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| ProxyError::Connect("timed out".into()))??;
    let limit = Arc::new(AtomicUsize::new(INITIAL_STREAMS));
    let drive = Drive {
        conn: driver,
        limit: limit.clone(),
    };
    tokio::spawn(async move {
        if let Err(e) = drive.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
        }
    });
    let lane = Lane {
        conn,
        load: Arc::default(),
        limit,
    };
    // Kept by the thread this task now runs on (on a work-stealing runtime,
    // maybe not the one that marked the opening).
    CONNS.with(|conns| {
        let mut conns = conns.borrow_mut();
        let up = upstream_here(&mut conns, pool.id());
        if up.lanes.len() < MAX_CONNS_PER_UPSTREAM {
            up.lanes.push(lane.clone());
        }
    });
    drop(opening);
    Ok(lane)
}

/// This thread's entry for upstream `id`, made if need be (the oldest goes
/// past [`MAX_UPSTREAMS_PER_THREAD`]).
fn upstream_here(conns: &mut Vec<Upstream>, id: u64) -> &mut Upstream {
    let at = match conns.iter().position(|up| up.id == id) {
        Some(at) => at,
        None => {
            if conns.len() >= MAX_UPSTREAMS_PER_THREAD {
                conns.remove(0);
            }
            conns.push(Upstream {
                id,
                lanes: Vec::new(),
                opening: None,
            });
            conns.len() - 1
        }
    };
    &mut conns[at]
}

/// The HTTP/2 request for an HTTP/1.1 head the gate wrote.
fn request_of(scheme: &Scheme, head: &[u8]) -> Result<Request<()>, H2Error> {
    let wire = Bytes::copy_from_slice(head);
    // The request line as `encode_head` writes it: `METHOD SP target SP
    // HTTP/1.1 CRLF` (the target is the client's, so it is split here
    // rather than judged by a parser; `http::Uri` judges it below).
    let line_end =
        memchr::memchr(b'\n', &wire).ok_or(H2Error::Request("the head does not parse"))?;
    let line = wire
        .get(..line_end)
        .and_then(|l| l.strip_suffix(b" HTTP/1.1\r"))
        .ok_or(H2Error::Request("the head does not parse"))?;
    let space = memchr::memchr(b' ', line).ok_or(H2Error::Request("the head does not parse"))?;
    let (method, target) = (&line[..space], &line[space + 1..]);
    let method = Method::from_bytes(method).map_err(|_| H2Error::Request("bad method"))?;
    let path = PathAndQuery::from_maybe_shared(wire.slice_ref(target))
        .map_err(|_| H2Error::Request("bad target"))?;
    let fields = wire.slice(line_end + 1..);
    let lines = memchr::memchr_iter(b'\n', &fields).count();
    let mut found = vec![httparse::EMPTY_HEADER; lines];
    let parsed = match httparse::parse_headers(&fields, &mut found) {
        Ok(httparse::Status::Complete((_, parsed))) => parsed,
        _ => return Err(H2Error::Request("the head does not parse")),
    };
    let mut authority = None;
    let mut headers = HeaderMap::with_capacity(lines);
    for h in parsed {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            // The gate writes one `Host`, its own (the client's never goes on).
            if authority.is_some() {
                return Err(H2Error::Request("two hosts"));
            }
            authority = Some(
                Authority::from_maybe_shared(fields.slice_ref(h.value))
                    .map_err(|_| H2Error::Request("bad host"))?,
            );
            continue;
        }
        if is_connection_specific(name) {
            continue;
        }
        let name = name_of(name)?;
        let value = HeaderValue::from_maybe_shared(fields.slice_ref(h.value))
            .map_err(|_| H2Error::Request("bad header"))?;
        headers.append(name, value);
    }
    let authority = authority.ok_or(H2Error::Request("no host"))?;
    let uri = Uri::builder()
        .scheme(scheme.clone())
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| H2Error::Request("bad target"))?;
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_2;
    *req.headers_mut() = headers;
    Ok(req)
}

/// The headers the gate adds, named without an allocation (other names
/// outside `http`'s standard set would copy theirs).
const OWN_NAMES: [HeaderName; 7] = [
    super::headers::X_FORWARDED_FOR,
    super::headers::X_FORWARDED_PROTO,
    super::headers::X_FORWARDED_HOST,
    crate::identity::X_FORWARDED_USER,
    crate::identity::X_FORWARDED_EMAIL,
    crate::identity::X_FORWARDED_PREFERRED_USERNAME,
    crate::telemetry::request_id::X_REQUEST_ID,
];

fn name_of(name: &[u8]) -> Result<HeaderName, H2Error> {
    if let Some(own) = OWN_NAMES
        .iter()
        .find(|own| own.as_str().as_bytes().eq_ignore_ascii_case(name))
    {
        return Ok(own.clone());
    }
    HeaderName::from_bytes(name).map_err(|_| H2Error::Request("bad header"))
}

/// What [`request_for_fuzzing`] made of a head: method, URI and headers.
#[doc(hidden)]
pub type Fuzzed = (String, String, Vec<(String, Vec<u8>)>);

/// [`request_of`] for the `h2_request` fuzz target: the request's method,
/// URI and header lines, or why it is refused.
#[doc(hidden)]
pub fn request_for_fuzzing(head: &[u8]) -> Result<Fuzzed, String> {
    let req = request_of(&Scheme::HTTP, head).map_err(|e| e.to_string())?;
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    Ok((req.method().to_string(), req.uri().to_string(), headers))
}

/// Headers HTTP/2 forbids (RFC 9113 §8.2.2): they describe an HTTP/1.1
/// connection. The gate's head carries no `TE`, so every `TE` goes too.
fn is_connection_specific(name: &[u8]) -> bool {
    [
        b"connection".as_slice(),
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n))
}

/// A request's body as sent over HTTP/2. When the client's body fails, its
/// error is kept for [`send`] (so it is told apart from the upstream's:
/// a 400, not a 502), and hyper is given a plain one in its place.
enum Sent {
    Empty,
    Body(Body, Arc<Mutex<Option<BoxError>>>),
}

#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed")]
struct ClientBodyFailed;

impl http_body::Body for Sent {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Sent::Empty => Poll::Ready(None),
            Sent::Body(body, failed) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => {
                    *failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                    Poll::Ready(Some(Err(Box::new(ClientBodyFailed))))
                }
                other => other,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Sent::Empty => true,
            Sent::Body(body, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Sent::Empty => http_body::SizeHint::with_exact(0),
            Sent::Body(body, _) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests;
