//! A recording upstream on 127.0.0.1 (port 0): echo, WebSocket echo, slow and big streams, uploads.
//!
//! Routes:
//! - any request with `Upgrade: websocket`, and `/ws` → WebSocket echo (text
//!   and binary come back as sent; the text `__close__` makes the server
//!   close with code 1000). `/ws` without an upgrade → 426.
//! - `/slow?chunks=N&interval_ms=M` (5, 100) → `chunk i\n` N times, the first
//!   at once and then one every M ms.
//! - `/upload` → reads the body frame by frame, answers `{"bytes": n, "sha256": hex}`.
//! - `/big?bytes=N` (1 MiB) → N bytes of [`pattern_byte`], with `content-length`.
//! - `/status/NNN` → status NNN (200–999), body `{"status": NNN}`.
//! - `/big-head?bytes=N` (70 KiB) → 200 with about N bytes of `x-filler` headers.
//! - `/drop-once?key=K` → the first request with key K closes every open
//!   connection without an answer (an upstream restarting just then); later
//!   ones get the echo.
//! - anything else → 200 JSON `{"method","path","query","headers":{name:[values]},
//!   "body_len","version"}` with `set-cookie: app=1`.
//!
//! Every request is recorded (after its body was read, before the response
//! is sent) so `requests()` is complete as soon as the client has a response;
//! so is the HTTP version it came in (HTTP/1.1, or HTTP/2 by prior knowledge
//! or by ALPN `h2`). A `HEAD` is answered without a body over HTTP/2 too
//! (hyper's HTTP/2 server would send one), as a real server does.
//! Dropping the `Upstream` stops the listener and every open connection.
#![allow(
    clippy::expect_used,
    reason = "test support: a failure to set up is a broken test machine and should fail loudly"
)]

mod routes;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Version};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::certs::TestPki;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    /// e.g. `/a/b?x=1`
    pub path_and_query: String,
    pub headers: HeaderMap,
    /// Bytes of request body read (0 for WebSocket upgrades).
    pub body_len: u64,
    /// `HTTP/1.1`, or `HTTP/2.0` for a request that came over HTTP/2.
    pub version: Version,
    /// The request target's authority: HTTP/2's `:authority` (an HTTP/1.1
    /// request in origin form has none; its `Host` is in `headers`).
    pub authority: Option<String>,
}

impl Recorded {
    /// The first value of `name`, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of `name`, as strings (lossy).
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(p, _)| p)
    }
}

struct State {
    /// Bumped by [`Upstream::drop_connections`]: every open connection ends.
    kick: watch::Sender<u64>,
    /// Bumped by [`Upstream::goaway`]: every open connection shuts down
    /// gracefully (HTTP/2 `GOAWAY`; HTTP/1.1 closes once idle).
    goaway: watch::Sender<u64>,
    requests: Mutex<Vec<Recorded>>,
    /// Keys `/drop-once` has seen.
    dropped_once: Mutex<std::collections::HashSet<String>>,
    connections: AtomicUsize,
    open_websockets: AtomicUsize,
    open_streams: AtomicUsize,
}

impl Default for State {
    fn default() -> Self {
        State {
            kick: watch::channel(0).0,
            goaway: watch::channel(0).0,
            requests: Mutex::default(),
            dropped_once: Mutex::default(),
            connections: AtomicUsize::default(),
            open_websockets: AtomicUsize::default(),
            open_streams: AtomicUsize::default(),
        }
    }
}

impl State {
    /// Whether `/drop-once` sees `key` for the first time.
    fn first_drop(&self, key: &str) -> bool {
        self.dropped_once
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned())
    }

    fn record(
        &self,
        method: &Method,
        uri: &http::Uri,
        version: Version,
        headers: &HeaderMap,
        body_len: u64,
    ) {
        let path_and_query = uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned());
        let recorded = Recorded {
            method: method.clone(),
            path_and_query,
            headers: headers.clone(),
            body_len,
            version,
            authority: uri.authority().map(|a| a.as_str().to_owned()),
        };
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(recorded);
    }
}

pub struct Upstream {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`, no trailing slash.
    pub url: String,
    state: Arc<State>,
    /// Dropped with the `Upstream`: every task watching it ends.
    _shutdown: watch::Sender<()>,
}

impl Upstream {
    /// A plain-HTTP upstream (HTTP/1.1 with upgrades; h2 by prior knowledge too).
    pub async fn start() -> Upstream {
        Self::spawn(None).await
    }

    /// An HTTPS upstream with the leaf of `pki` (valid for `127.0.0.1` and
    /// `localhost`), offering only `http/1.1` by ALPN so WebSockets work.
    pub async fn start_tls(pki: &TestPki) -> Upstream {
        Self::start_tls_with_alpn(pki, &["http/1.1"]).await
    }

    /// As `start_tls`, offering `alpn` (e.g. `&["h2", "http/1.1"]`).
    pub async fn start_tls_with_alpn(pki: &TestPki, alpn: &[&str]) -> Upstream {
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.rustls_server_config(alpn));
        Self::spawn(Some(acceptor)).await
    }

    /// A plain-HTTP upstream on `addr`: one that comes back on the port of
    /// an `Upstream` that was dropped (a restart).
    /// (The old listener closes as soon as its task sees the drop: binding
    /// is retried for a moment.)
    pub async fn start_at(addr: SocketAddr) -> Upstream {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("bind upstream on its old address {addr}: {e}"),
            }
        };
        Self::spawn_on(listener, None)
    }

    async fn spawn(tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream on 127.0.0.1:0");
        Self::spawn_on(listener, tls)
    }

    fn spawn_on(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let addr = listener.local_addr().expect("upstream local addr");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let state = Arc::new(State::default());
        let (shutdown, mut stop) = watch::channel(());
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(_) => continue,
                    },
                    _ = stop.changed() => return,
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let _ = tcp.set_nodelay(true);
                let (st, stop, tls) = (st.clone(), stop.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve(tcp, st, stop).await,
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                serve(stream, st, stop).await;
                            }
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            url: format!("{scheme}://{addr}"),
            state,
            _shutdown: shutdown,
        }
    }

    /// An `http://127.0.0.1:PORT` URL where nothing listens (for 502 tests).
    pub fn closed_port_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        drop(listener);
        format!("http://{addr}")
    }

    /// `url` + `path` (which starts with `/`).
    pub fn url_for(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The latest request, if any.
    pub fn last_request(&self) -> Option<Recorded> {
        self.requests().pop()
    }

    /// TCP connections accepted so far (counted before any TLS handshake).
    /// A pooled client may reuse a connection, so "no new connection" is not
    /// "no request": check `requests()` too.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// WebSocket connections currently open on the upstream side.
    pub fn open_websockets(&self) -> usize {
        self.state.open_websockets.load(Ordering::SeqCst)
    }

    /// `/slow` and `/big` response bodies currently being streamed (a body
    /// counts until it finished or the connection carrying it was dropped).
    pub fn open_streams(&self) -> usize {
        self.state.open_streams.load(Ordering::SeqCst)
    }

    /// Closes every open connection (without a word, as an upstream's idle
    /// timeout or a restart does) and keeps listening.
    pub fn drop_connections(&self) {
        self.state.kick.send_modify(|n| *n += 1);
    }

    /// Shuts every open connection down gracefully and keeps listening: an
    /// HTTP/2 connection gets `GOAWAY` (its streams in flight finish, no new
    /// one is taken), as a server being reloaded or one that ends a
    /// connection after so many requests does.
    pub fn goaway(&self) {
        self.state.goaway.send_modify(|n| *n += 1);
    }

    /// Forgets recorded requests and resets the connection count.
    pub fn clear(&self) {
        self.state
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.state.connections.store(0, Ordering::SeqCst);
    }
}

/// The byte at `offset` of a `/big` body: `a`..`z` repeating.
pub fn pattern_byte(offset: u64) -> u8 {
    b'a' + (offset % 26) as u8
}

/// Serves one connection until it ends or the upstream is dropped.
async fn serve<I>(io: I, st: Arc<State>, mut stop: watch::Receiver<()>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stop_for_svc = stop.clone();
    let mut kicked = st.kick.subscribe();
    let mut goaway = st.goaway.subscribe();
    let svc = service_fn(move |req| routes::handle(req, st.clone(), stop_for_svc.clone()));
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut going_away = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stop.changed() => return,
            _ = kicked.changed() => return,
            changed = goaway.changed(), if !going_away => {
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
                going_away = true;
            }
        }
    }
}

/// Counts something open (a WebSocket, a streamed body) while it lives.
struct Gauge {
    st: Arc<State>,
    counter: fn(&State) -> &AtomicUsize,
}

impl Gauge {
    fn up(st: &Arc<State>, counter: fn(&State) -> &AtomicUsize) -> Self {
        counter(st).fetch_add(1, Ordering::SeqCst);
        Gauge {
            st: st.clone(),
            counter,
        }
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        (self.counter)(&self.st).fetch_sub(1, Ordering::SeqCst);
    }
}
