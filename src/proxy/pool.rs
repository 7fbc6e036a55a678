//! Connections to the upstream, kept on the serving thread that used them.
//!
//! A request takes the upstream connection its client connection used last
//! ([`Slot`]), else an idle one from its thread's list (newest first), else
//! opens one; it sends on it in its own task ([`super::h1`]), and the
//! answer's body puts the connection back the moment its last byte is read.
//! No lock, no channel and no task per connection: each serving thread runs
//! a current-thread runtime, and its list is a thread-local. A thread keeps
//! at most [`MAX_IDLE_PER_THREAD`] idle connections per upstream, each for
//! at most [`MAX_IDLE_AGE`] (a task per thread closes the stale ones), so
//! the gate holds one upstream connection per request in flight plus at
//! most that many per thread, however clients come and go.
//!
//! A connection the upstream closed while idle is noticed when it is taken
//! (its socket is readable) and dropped. If the close races the request
//! instead, so that the connection ends before any byte of an answer, a
//! request that is safe to repeat (`GET`, `HEAD`, `OPTIONS` without a body)
//! is sent again on another connection; any other gets 502, since the
//! upstream may have acted on it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::Method;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use url::{Host, Url};

use super::ProxyError;
use super::h1::{self, Conn, SendError};
use super::stream::Stream;
use crate::respond::Body;
use crate::tcp::Tcp;

/// Idle upstream connections a serving thread keeps per upstream: as many
/// as nginx's `keepalive 256` per worker. A bound well above what a thread
/// has in flight, since a thread whose requests go past it opens a new
/// connection for each one over.
pub const MAX_IDLE_PER_THREAD: usize = 256;
/// An idle connection older than this is closed instead of used.
pub const MAX_IDLE_AGE: Duration = Duration::from_secs(60);
/// Upstreams a thread keeps idle lists for (tests build many proxies).
const MAX_UPSTREAMS_PER_THREAD: usize = 8;
/// Connecting (TCP and TLS) gives up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A thread's idle connections, per upstream id, oldest first.
type Lists = Vec<(u64, VecDeque<Conn>)>;

thread_local! {
    static IDLE: RefCell<Lists> = const { RefCell::new(Vec::new()) };
}

/// Hands `conn` (its answer read to the end) back to this thread's idle
/// list of its upstream (most recent last; the oldest goes when full).
pub fn give_back(mut conn: Conn) {
    let now = Instant::now();
    conn.since = now;
    let id = conn.upstream;
    IDLE.with(|lists| {
        let mut lists = lists.borrow_mut();
        if lists.is_empty() {
            start_sweeping();
        }
        let list = match lists.iter().position(|(i, _)| *i == id) {
            Some(at) => &mut lists[at].1,
            None => {
                if lists.len() >= MAX_UPSTREAMS_PER_THREAD {
                    lists.remove(0);
                }
                lists.push((id, VecDeque::new()));
                let last = lists.len() - 1;
                &mut lists[last].1
            }
        };
        drop_stale(list, now);
        if list.len() >= MAX_IDLE_PER_THREAD {
            list.pop_front();
        }
        list.push_back(conn);
    });
}

/// Closes the connections idle for [`MAX_IDLE_AGE`] (the oldest are first).
fn drop_stale(list: &mut VecDeque<Conn>, now: Instant) {
    while list
        .front()
        .is_some_and(|c| now.duration_since(c.since) >= MAX_IDLE_AGE)
    {
        list.pop_front();
    }
}

/// On a thread's first idle connection: a task that closes stale ones even
/// when no request comes to do it.
fn start_sweeping() {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async {
        loop {
            tokio::time::sleep(MAX_IDLE_AGE / 4).await;
            sweep(Instant::now());
        }
    });
}

/// Closes this thread's connections that are stale at `now`.
fn sweep(now: Instant) {
    IDLE.with(|lists| {
        for (_, list) in lists.borrow_mut().iter_mut() {
            drop_stale(list, now);
        }
    });
}

/// Whether an idle connection may carry a request: not stale, not closed.
fn usable(conn: &mut Conn, now: Instant) -> bool {
    now.duration_since(conn.since) < MAX_IDLE_AGE && !conn.is_dead()
}

/// A usable idle connection to upstream `id` from this thread's list,
/// newest first; stale and closed ones are dropped on the way.
fn take_idle(id: u64) -> Option<Conn> {
    take_idle_at(id, Instant::now())
}

fn take_idle_at(id: u64, now: Instant) -> Option<Conn> {
    IDLE.with(|lists| {
        let mut lists = lists.borrow_mut();
        let list = &mut lists.iter_mut().find(|(i, _)| *i == id)?.1;
        while let Some(mut conn) = list.pop_back() {
            if usable(&mut conn, now) {
                return Some(conn);
            }
        }
        None
    })
}

/// A request as it goes on the wire: its head encoded (see
/// [`h1::encode_head`]), and its body.
pub struct Encoded<'a> {
    pub method: &'a Method,
    pub head: &'a [u8],
    pub framing: h1::Outgoing,
    /// `None`: the request has none.
    pub body: Option<Body>,
}

thread_local! {
    /// Buffers request heads are written into, kept between requests: one
    /// per request in flight on this thread, up to [`HeadBuf::KEPT`].
    static HEADS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A head buffer of this thread's while a request uses it; put back after.
/// Requests on one thread overlap while they wait for the upstream, so
/// each takes a buffer of its own and one grown for an earlier request
/// serves a later one without growing again.
pub struct HeadBuf(pub Vec<u8>);

impl HeadBuf {
    /// Largest buffer kept for a later request...
    const KEEP: usize = 16 * 1024;
    /// ...and how many are kept per thread.
    const KEPT: usize = 64;
    /// What a new buffer starts with: a head with a session cookie fits.
    const START: usize = 4 * 1024;

    pub fn take() -> Self {
        let kept = HEADS
            .try_with(|h| h.try_borrow_mut().ok()?.pop())
            .ok()
            .flatten();
        Self(kept.unwrap_or_else(|| Vec::with_capacity(Self::START)))
    }
}

impl Drop for HeadBuf {
    fn drop(&mut self) {
        if self.0.capacity() > Self::KEEP {
            return;
        }
        let mut buf = std::mem::take(&mut self.0);
        buf.clear();
        // Not at all once the thread is ending.
        let _ = HEADS.try_with(|h| {
            if let Ok(mut kept) = h.try_borrow_mut()
                && kept.len() < Self::KEPT
            {
                kept.push(buf);
            }
        });
    }
}

/// The upstream connection a client connection used last, kept for its
/// next request: requests then spread over upstream connections as clients
/// spread them, rather than piling onto the most recently freed ones. Only
/// its own client connection (one thread) touches it, so its lock is never
/// waited for; a busy slot is simply passed by.
#[derive(Default)]
pub struct Slot(Mutex<Option<Conn>>);

impl Slot {
    fn take(&self) -> Option<Conn> {
        self.0.try_lock().ok()?.take()
    }

    /// Keeps `conn` here if the slot is free and its client connection is
    /// still there; otherwise `conn` goes to the thread's list.
    pub(super) fn put(self: Arc<Self>, mut conn: Conn) {
        conn.since = Instant::now();
        if Arc::strong_count(&self) > 1
            && let Ok(mut held) = self.0.try_lock()
            && held.is_none()
        {
            *held = Some(conn);
            return;
        }
        give_back(conn);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let held = self.0.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(conn) = held.take() {
            give_back(conn);
        }
    }
}

/// Where the upstream is and how to reach it.
pub struct Pool {
    host: Host<String>,
    port: u16,
    /// For an `https` upstream: the TLS set-up and the name to check.
    tls: Option<Tls>,
    /// Tells this upstream's connections apart on a thread.
    id: u64,
    opened: Opened,
}

/// Counts the connections opened (`ssogate_upstream_connections_opened_total`).
#[derive(Clone, Debug)]
pub struct Opened {
    pub http1: metrics::Counter,
    pub http2: metrics::Counter,
}

impl Opened {
    /// Counting nothing (tests).
    pub fn noop() -> Self {
        Opened {
            http1: metrics::Counter::noop(),
            http2: metrics::Counter::noop(),
        }
    }
}

/// How an `https` upstream is reached: one set-up offering `http/1.1` by
/// ALPN, and, when `CT_UPSTREAM_HTTP2` is on, one offering `h2`.
struct Tls {
    http1: tokio_rustls::TlsConnector,
    h2: Option<tokio_rustls::TlsConnector>,
    name: ServerName<'static>,
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Pool {
    /// `tls` is used when `upstream` is `https`; `h2`: connections may
    /// also be opened for HTTP/2 ([`Pool::open`]).
    pub fn new(
        upstream: &Url,
        tls: rustls::ClientConfig,
        h2: bool,
        opened: Opened,
    ) -> Result<Self, ProxyError> {
        let host = upstream.host().ok_or(ProxyError::Uri)?.to_owned();
        let port = upstream.port_or_known_default().ok_or(ProxyError::Uri)?;
        let tls = match upstream.scheme() {
            "https" => {
                let name = match &host {
                    Host::Domain(d) => ServerName::try_from(d.clone()),
                    Host::Ipv4(ip) => Ok(ServerName::from(std::net::IpAddr::V4(*ip))),
                    Host::Ipv6(ip) => Ok(ServerName::from(std::net::IpAddr::V6(*ip))),
                }
                .map_err(|_| ProxyError::Uri)?;
                let with_alpn = |alpn: &[u8]| {
                    let mut tls = tls.clone();
                    tls.alpn_protocols = vec![alpn.to_vec()];
                    tokio_rustls::TlsConnector::from(Arc::new(tls))
                };
                Some(Tls {
                    http1: with_alpn(b"http/1.1"),
                    h2: h2.then(|| with_alpn(b"h2")),
                    name,
                })
            }
            "http" => None,
            _ => return Err(ProxyError::Uri),
        };
        Ok(Self {
            host,
            port,
            tls,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            opened,
        })
    }

    /// Sends `req` and reads the answer's head. `upgrade`: the request asks
    /// to switch protocols, so a `101` is expected.
    pub async fn send<S: h1::Shape>(
        &self,
        req: Encoded<'_>,
        upgrade: bool,
        slot: &Arc<Slot>,
    ) -> Result<S, ProxyError> {
        let Encoded {
            method,
            head,
            framing,
            body,
        } = req;
        let repeatable = framing == h1::Outgoing::Empty
            && matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        let head_request = *method == Method::HEAD;
        let mut body = Some(body);
        loop {
            let (mut conn, reused) = match self.take_own(slot).or_else(|| take_idle(self.id)) {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            let again = reused && repeatable;
            // Taken by the first try; a repeat is of a request without one.
            let body = body.take().flatten();
            let sent = match h1::send(&mut conn, head, body, framing).await {
                Ok(sent) => sent,
                Err(SendError::Body(e)) => return Err(ProxyError::ClientBody(e)),
                // Nothing of an answer came: the connection was closed.
                Err(SendError::Upstream(h1::H1Error::Closed | h1::H1Error::Io(_))) if again => {
                    continue;
                }
                Err(SendError::Upstream(e)) => return Err(ProxyError::Upstream(e)),
            };
            match h1::read_head(conn, head_request, upgrade, sent, slot).await {
                Ok(resp) => return Ok(resp),
                Err((_, false)) if again => continue,
                Err((e, _)) => return Err(ProxyError::Upstream(e)),
            }
        }
    }

    /// The client connection's own upstream connection, if it is usable.
    fn take_own(&self, slot: &Slot) -> Option<Conn> {
        let mut conn = slot.take()?;
        if conn.upstream != self.id {
            give_back(conn);
            return None;
        }
        usable(&mut conn, Instant::now()).then_some(conn)
    }

    async fn connect(&self) -> Result<Conn, ProxyError> {
        Ok(Conn::new(self.open(false).await?, self.id))
    }

    /// Opens a connection (TCP, and TLS for an `https` upstream), within
    /// [`CONNECT_TIMEOUT`]. `h2`: for HTTP/2, so TLS offers only `h2` and
    /// fails unless the upstream takes it.
    pub(super) async fn open(&self, h2: bool) -> Result<Stream, ProxyError> {
        let connecting = async {
            let tcp = match &self.host {
                Host::Domain(d) => TcpStream::connect((d.as_str(), self.port)).await,
                Host::Ipv4(ip) => TcpStream::connect(SocketAddr::from((*ip, self.port))).await,
                Host::Ipv6(ip) => TcpStream::connect(SocketAddr::from((*ip, self.port))).await,
            }?;
            tcp.set_nodelay(true)?;
            let Some(tls) = &self.tls else {
                return Ok(Stream::Plain(Tcp::new(tcp)));
            };
            let connector = match (h2, &tls.h2) {
                (true, Some(h2)) => h2,
                _ => &tls.http1,
            };
            let stream = connector.connect(tls.name.clone(), tcp).await?;
            if h2 && stream.get_ref().1.alpn_protocol() != Some(b"h2".as_slice()) {
                return Err(std::io::Error::other(
                    "the upstream did not agree to HTTP/2 (ALPN h2)",
                ));
            }
            Ok::<_, std::io::Error>(Stream::Tls(Box::new(stream)))
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| ProxyError::Connect("timed out".into()))?
            .map_err(|e| ProxyError::Connect(e.into()))?;
        if h2 {
            &self.opened.http2
        } else {
            &self.opened.http1
        }
        .increment(1);
        Ok(stream)
    }

    /// Tells this upstream apart from others on a thread.
    pub(super) fn id(&self) -> u64 {
        self.id
    }

    /// `https` or `http`.
    pub(super) fn scheme(&self) -> http::uri::Scheme {
        if self.tls.is_some() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        }
    }

    /// Idle connections this thread holds for this upstream.
    #[cfg(test)]
    fn idle_here(&self) -> usize {
        IDLE.with(|lists| {
            lists
                .borrow()
                .iter()
                .find(|(i, _)| *i == self.id)
                .map_or(0, |(_, l)| l.len())
        })
    }
}

#[cfg(test)]
pub(super) mod tests;
