//! Connections to the upstream, kept where the requests are.
//!
//! Each client connection has an [`Affinity`]: the upstream connection its
//! last HTTP/1 request used, handed back to it after the answer's head. The
//! next request on that client connection takes it again without a look-up,
//! a lock anyone else wants, or a task per request to watch it become free.
//! HTTP/1 clients send one request at a time, so the connection is theirs
//! alone; HTTP/2 streams of one client run at once and share the thread's
//! idle list instead.
//!
//! Each serving thread keeps a bounded idle list per upstream
//! ([`MAX_IDLE_PER_THREAD`]): the connections of client connections that
//! ended, and those HTTP/2 streams gave back. So the gate holds at most one
//! upstream connection per busy client connection, plus that many per
//! thread, however clients come and go: the bound a shared, unbounded pool
//! did not have (its idle connections piled up per thread while clients
//! moved between threads, as a load test's rounds do).
//!
//! A connection the upstream closed while idle is noticed on taking it
//! (hyper's connection task has seen the close) and dropped; if the close
//! races the request, hyper hands the unsent request back and it goes out
//! on another connection. A request that reached the wire is never sent
//! twice.

use std::cell::RefCell;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service as _;

use super::ProxyError;
use crate::respond::Body;

/// Idle upstream connections a serving thread keeps per upstream.
pub const MAX_IDLE_PER_THREAD: usize = 32;
/// An idle connection older than this is closed instead of used.
const MAX_IDLE_AGE: Duration = Duration::from_secs(60);
/// Upstreams a thread keeps idle lists for (tests build many proxies).
const MAX_UPSTREAMS_PER_THREAD: usize = 8;
/// How long an HTTP/1 client's own connection may take to become free
/// before another one is used. hyper serves an HTTP/1 connection's next
/// request only once the last answer is written, so by then the upstream
/// connection has read that answer to its end or closed: what is left is
/// its task's turn to run, which a busy machine can delay past 50 ms.
const FREE_WAIT: Duration = Duration::from_secs(1);
/// Largest upstream answer head, and the most a connection buffers.
const MAX_BUF: usize = 64 * 1024;

/// One upstream connection, ready or busy with an answer's body.
struct Conn {
    sender: SendRequest<Body>,
    /// When it was last handed back.
    since: Instant,
}

impl Conn {
    fn usable(&self, now: Instant) -> bool {
        !self.sender.is_closed() && now.duration_since(self.since) < MAX_IDLE_AGE
    }
}

/// The upstream connection of one client connection.
#[derive(Default)]
pub struct Affinity {
    /// The upstream's id (see [`Pool::id`]) with the connection.
    slot: Mutex<Option<(u64, Conn)>>,
}

impl Drop for Affinity {
    fn drop(&mut self) {
        let slot = self
            .slot
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((id, conn)) = slot.take() {
            give_to_thread(id, conn);
        }
    }
}

thread_local! {
    static IDLE: RefCell<Vec<(u64, Vec<Conn>)>> = const { RefCell::new(Vec::new()) };
}

/// Hands `conn` to this thread's idle list of upstream `id` (most recent
/// last; the oldest goes when it is full).
fn give_to_thread(id: u64, conn: Conn) {
    if conn.sender.is_closed() {
        return;
    }
    IDLE.with(|lists| {
        let mut lists = lists.borrow_mut();
        let now = Instant::now();
        let list = match lists.iter().position(|(i, _)| *i == id) {
            Some(at) => &mut lists[at].1,
            None => {
                if lists.len() >= MAX_UPSTREAMS_PER_THREAD {
                    lists.remove(0);
                }
                lists.push((id, Vec::new()));
                let last = lists.len() - 1;
                &mut lists[last].1
            }
        };
        list.retain(|c| c.usable(now));
        if list.len() >= MAX_IDLE_PER_THREAD {
            list.remove(0);
        }
        list.push(conn);
    });
}

/// A free connection from this thread's idle list of upstream `id`, newest
/// first; closed and stale ones are dropped, busy ones stay.
fn take_from_thread(id: u64) -> Option<Conn> {
    IDLE.with(|lists| {
        let mut lists = lists.borrow_mut();
        let list = &mut lists.iter_mut().find(|(i, _)| *i == id)?.1;
        let now = Instant::now();
        list.retain(|c| c.usable(now));
        let at = list.iter().rposition(|c| c.sender.is_ready())?;
        Some(list.remove(at))
    })
}

/// Where a request goes: the upstream's address and how to reach it.
pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority/` of the upstream, what the connector dials.
    target: http::Uri,
    /// Tells this upstream's connections apart on a thread.
    id: u64,
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Pool {
    pub fn new(connector: HttpsConnector<HttpConnector>, target: http::Uri) -> Self {
        Self {
            connector,
            target,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) on a connection of
    /// `affinity`, of this thread, or a new one. `sequential`: the client
    /// connection sends one request at a time (HTTP/1), so it may wait a
    /// moment for its own upstream connection; HTTP/2 streams never wait
    /// for one another. `upgrade`: the connection is the WebSocket's
    /// afterwards and is not handed back.
    pub async fn send(
        &self,
        affinity: &Affinity,
        mut req: Request<Body>,
        sequential: bool,
        upgrade: bool,
    ) -> Result<Response<Incoming>, ProxyError> {
        loop {
            let (mut conn, reused) = self.take(affinity, sequential).await?;
            match conn.sender.try_send_request(req).await {
                Ok(resp) => {
                    if !upgrade {
                        self.give_back(affinity, conn, sequential);
                    }
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // The upstream closed it just before the request went out.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(ProxyError::Upstream(e.into_error())),
                },
            }
        }
    }

    /// A connection for one request, and whether it was taken from a list
    /// (the upstream may have closed it meanwhile) rather than opened now.
    async fn take(
        &self,
        affinity: &Affinity,
        sequential: bool,
    ) -> Result<(Conn, bool), ProxyError> {
        if sequential && let Some(conn) = self.own(affinity).await {
            return Ok((conn, true));
        }
        if let Some(conn) = take_from_thread(self.id) {
            return Ok((conn, true));
        }
        Ok((self.connect().await?, false))
    }

    /// The client connection's own upstream connection, once it is free.
    async fn own(&self, affinity: &Affinity) -> Option<Conn> {
        let (id, mut conn) = affinity.slot.try_lock().ok()?.take()?;
        if id != self.id {
            give_to_thread(id, conn);
            return None;
        }
        if conn.sender.is_ready() {
            return Some(conn);
        }
        if conn.sender.is_closed() {
            return None;
        }
        // Still reading the end of the last answer: usually a moment.
        match tokio::time::timeout(FREE_WAIT, conn.sender.ready()).await {
            Ok(Ok(())) => Some(conn),
            Ok(Err(_)) => None,
            Err(_) => {
                give_to_thread(id, conn);
                None
            }
        }
    }

    fn give_back(&self, affinity: &Affinity, mut conn: Conn, sequential: bool) {
        conn.since = Instant::now();
        if sequential && let Ok(mut slot) = affinity.slot.try_lock() {
            if let Some((id, displaced)) = slot.replace((self.id, conn)) {
                give_to_thread(id, displaced);
            }
            return;
        }
        give_to_thread(self.id, conn);
    }

    async fn connect(&self) -> Result<Conn, ProxyError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(ProxyError::Connect)?;
        let io = connector
            .call(self.target.clone())
            .await
            .map_err(ProxyError::Connect)?;
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(MAX_BUF)
            .handshake(io)
            .await
            .map_err(ProxyError::Upstream)?;
        // On this thread (a current-thread runtime per serving thread), with
        // the requests that use it.
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(Conn {
            sender,
            since: Instant::now(),
        })
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
mod tests;
