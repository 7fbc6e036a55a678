//! Accepting connections: the gate's own HTTP/1.1 path for plain signed-in
//! requests (`fast.rs`), then HTTP/1.1 and HTTP/2 through hyper (hyper-util
//! auto, with upgrades) for everything else, optional TLS, a header-read
//! timeout against slow clients, a watch on HTTP/1 framing against request
//! smuggling, one runtime per serving thread (thread per core) with
//! connections spread over the threads by how many each serves
//! (`server/balance.rs`), and graceful shutdown that lets in-flight
//! requests finish for a bounded time.

/// `AsyncWrite` for a read-side wrapper `$t<I>` with the stream in `io`:
/// every write goes straight through.
macro_rules! write_through {
    ($t:ident) => {
        impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $t<I> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.io).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
            }
        }
    };
}
pub(crate) use write_through;

mod balance;
mod drain;
mod fast;
mod first_bytes;
mod framing;
mod switched;
pub mod tls;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use self::balance::{Balance, Handoff, Lane, Load};
use self::drain::{Drain, Graceful, Http1Upgradeable, Hyper};
pub use self::fast::Handover;
use self::first_bytes::FirstBytes;
use self::framing::{Framing, Verdicts};
pub use self::framing::{follow_for_fuzzing, scan_for_fuzzing};
pub use self::switched::{SwitchedClient, take_back};
use crate::request_body::RequestBody;
use crate::router::{self, AmbiguousFraming, ClientConn, State};

/// The own HTTP/1.1 path's choice against the framing watcher and hyper's
/// parser (for the `fast_path` fuzz target): every head the own path would
/// serve, the watcher reads to the same length with the same body length
/// (none, or one `Content-Length`), and httparse (as hyper configures it)
/// reads complete to that length; the choice does not depend on the bytes
/// after the head. `Ok(true)`: served.
#[doc(hidden)]
pub fn fast_path_for_fuzzing(data: &[u8]) -> Result<bool, String> {
    let Some((len, body)) = fast::serves(data, 64 * 1024) else {
        return Ok(false);
    };
    let watched = framing::fixed_head(data);
    if watched != Some((len, body)) {
        return Err(format!(
            "served a head of {len} bytes with a body of {body}; the watcher reads {watched:?}"
        ));
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::Request::new(&mut headers).parse(data) {
        Ok(httparse::Status::Complete(n)) if n == len => {}
        other => {
            return Err(format!(
                "served a head of {len} bytes httparse reads as {other:?}"
            ));
        }
    }
    if fast::serves(&data[..len], 64 * 1024) != Some((len, body)) {
        return Err("the choice depends on the bytes after the head".into());
    }
    Ok(true)
}

/// Headers accepted in one HTTP/1.1 request (431 beyond).
const MAX_HEADERS: usize = 128;
const MAX_H2_STREAMS: u32 = 256;

#[derive(Clone, Debug)]
pub struct Settings {
    /// Threads accepting and serving connections, each with a runtime of its
    /// own (thread per core), when `serve` runs on a current-thread runtime
    /// (the binary's); otherwise `serve` uses the runtime it is given.
    pub threads: usize,
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
    /// `CT_MAX_HEADER_BYTES`: largest request head (request line and headers).
    pub max_header_bytes: usize,
    /// `CT_MAX_CONNECTIONS`: open client connections at most.
    pub max_connections: usize,
}

/// hyper's builders: `auto` for a connection that may be HTTP/2 or
/// HTTP/1.1, `http1` for one whose first request the own path has already
/// read as HTTP/1.1 and handed over for its upgrade (a WebSocket): without
/// hyper-util's protocol detection in between, the connection hyper
/// switches can be taken back out of hyper ([`take_back`]).
struct Builders {
    auto: auto::Builder<TokioExecutor>,
    http1: hyper::server::conn::http1::Builder,
}

/// The same HTTP/1.1 settings on `auto`'s HTTP/1.1 builder and on the
/// plain one.
macro_rules! http1_settings {
    ($b:expr, $settings:expr) => {
        $b.timer(TokioTimer::new())
            .header_read_timeout($settings.header_read_timeout)
            .max_buf_size($settings.max_header_bytes)
            .max_headers(MAX_HEADERS)
    };
}

fn builders(settings: &Settings) -> Builders {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1_settings!(http1, settings);
    Builders {
        auto: builder(settings),
        http1,
    }
}

fn builder(settings: &Settings) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    http1_settings!(b.http1(), settings);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_pending_accept_reset_streams(Some(64))
        .max_local_error_reset_streams(Some(256))
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
    b
}

/// The binary's runtime: a current-thread one, on which [`serve`] starts
/// the other serving threads (`CT_WORKER_THREADS`, default one per usable
/// CPU), each with a current-thread runtime of its own.
/// Log lines its thread gathers are written whenever it runs out of work
/// (`telemetry::log_sink`).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    serving_runtime().build()
}

/// A current-thread runtime for a serving thread: when info lines can be
/// logged, it writes the lines its thread gathered whenever it runs out of
/// work (`telemetry::log_sink`); otherwise it has no such hook to call.
fn serving_runtime() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    if crate::telemetry::log_sink::wanted() {
        builder.on_thread_park(crate::telemetry::log_sink::flush);
    }
    builder
}

/// CPUs this process may use (cgroup quotas included), at least 1.
pub fn usable_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Serves until `shutdown` resolves, then drains. On a current-thread
/// runtime with `settings.threads` > 1 it starts that many threads less one,
/// each with its own current-thread runtime accepting from the same
/// listening socket: a connection, its requests and its upstream connection
/// then stay on one thread, with no hand-off between workers. The threads
/// stop with `shutdown`, or when this future is dropped.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) {
    let per_core = settings.threads > 1
        && tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::CurrentThread;
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    if !per_core {
        return accept(listener, tls, state, settings, slots, shutdown, None).await;
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (balance, mut inboxes) = Balance::new(settings.threads);
    let mut done = Vec::new();
    for n in 1..settings.threads {
        let lane = Lane {
            me: n,
            balance: balance.clone(),
            inbox: inboxes.remove(1),
        };
        let serving = (tls.clone(), state.clone(), settings.clone(), slots.clone());
        match worker(n, &listener, serving, stopped.clone(), lane) {
            Ok(finished) => done.push(finished),
            Err(e) => {
                tracing::warn!(error = %e, thread = n, "cannot start a serving thread; serving on fewer")
            }
        }
    }
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let lane = Lane {
        me: 0,
        balance,
        inbox: inboxes.remove(0),
    };
    accept(listener, tls, state, settings, slots, shutdown, Some(lane)).await;
    for finished in done {
        let _ = finished.await;
    }
}

/// Serving thread `n`: its own runtime and accept loop on a duplicate of
/// the listening socket; the receiver resolves once it has drained.
fn worker(
    n: usize,
    listener: &TcpListener,
    (tls, state, settings, slots): (Option<TlsAcceptor>, Arc<State>, Settings, Arc<Semaphore>),
    mut stopped: tokio::sync::watch::Receiver<bool>,
    lane: Lane,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    use std::os::fd::AsFd as _;
    let socket = std::net::TcpListener::from(listener.as_fd().try_clone_to_owned()?);
    socket.set_nonblocking(true)?;
    let runtime = serving_runtime().build()?;
    let (finished, done) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("ssogate-{n}"))
        .spawn(move || {
            crate::telemetry::log_sink::gather_on_this_thread();
            runtime.block_on(async move {
                match TcpListener::from_std(socket) {
                    Ok(listener) => {
                        // A dropped sender (the main loop gone) stops it too.
                        let stop = async move {
                            let _ = stopped.wait_for(|s| *s).await;
                        };
                        accept(listener, tls, state, settings, slots, stop, Some(lane)).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, thread = n, "serving thread cannot listen")
                    }
                }
            });
            runtime.shutdown_timeout(Duration::from_millis(200));
            // Before the main thread hears it is done (and may exit): the
            // thread's own teardown would write these too late.
            crate::telemetry::log_sink::flush();
            let _ = finished.send(());
        })?;
    Ok(done)
}

/// One accept loop: serves until `shutdown` resolves, then drains. With a
/// [`Lane`], it also serves the connections other threads hand it, and
/// hands on those it accepts while it serves more than another thread.
async fn accept(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    settings: Settings,
    slots: Arc<Semaphore>,
    shutdown: impl Future<Output = ()>,
    mut lane: Option<Lane>,
) {
    let conns = Conns {
        builders: Arc::new(builders(&settings)),
        graceful: Drain::new(),
        state,
        tls,
        header_read_timeout: settings.header_read_timeout,
        max_head: settings.max_header_bytes,
    };
    let mut refused: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        let handed = async {
            match lane.as_mut() {
                Some(lane) => lane.inbox.recv().await,
                None => std::future::pending().await,
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(Handoff { stream, peer, slot, load }) = handed => {
                match TcpStream::from_std(stream) {
                    Ok(stream) => conns.serve(stream, peer, slot, load),
                    Err(e) => tracing::debug!(%peer, error = %e, "cannot take a handed-on connection"),
                }
                continue;
            }
            () = &mut shutdown => break,
        };
        // Over the limit the connection is closed at once: queueing it would
        // let a flood of idle connections starve everyone else.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    max = settings.max_connections,
                    refused,
                    "connection limit reached (CT_MAX_CONNECTIONS); closing new connections"
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        match &lane {
            Some(lane) => lane.place(stream, peer, slot, &conns),
            None => conns.serve(stream, peer, slot, None),
        }
    }
    drop(listener);
    tracing::info!(
        open_connections = conns.graceful.count(),
        "shutting down: draining in-flight requests"
    );
    tokio::select! {
        () = conns.graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(settings.shutdown_grace) => tracing::warn!("shutdown grace period over; closing remaining connections"),
    }
}

/// What serving a connection on this thread needs.
struct Conns {
    builders: Arc<Builders>,
    graceful: Drain,
    state: Arc<State>,
    tls: Option<TlsAcceptor>,
    /// Bounds the TLS handshake and then the wait for the first bytes
    /// (hyper's HTTP/1 header timer only starts once the protocol is known).
    header_read_timeout: Duration,
    max_head: usize,
}

impl Conns {
    /// Serves one connection in a task of this thread; `slot` and `load`
    /// count it (against `CT_MAX_CONNECTIONS`, and on its thread) for as
    /// long as it is open, and as a WebSocket once it has switched to one.
    fn serve(
        &self,
        stream: TcpStream,
        peer: std::net::SocketAddr,
        slot: tokio::sync::OwnedSemaphorePermit,
        load: Option<Load>,
    ) {
        let watcher = self.graceful.watcher();
        let tls = self.tls.clone();
        let handshake_timeout = self.header_read_timeout;
        let hyper = ToHyper {
            builders: self.builders.clone(),
            state: self.state.clone(),
            max_head: self.max_head,
            first_bytes: self.header_read_timeout,
        };
        let limits = fast::Limits {
            header_read_timeout: self.header_read_timeout,
            max_head: self.max_head,
        };
        tokio::spawn(async move {
            // The slot and the load go with the connection's own state, so
            // that a WebSocket it switches to keeps them (router::Held).
            let client = Arc::new(ClientConn::new(peer, Arc::new((slot, load))));
            let served = match tls {
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(
                        handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            return tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                    };
                    watcher
                        .watch(Connection::new(stream, client, hyper, limits))
                        .await
                }
                None => {
                    watcher
                        .watch(Connection::new(stream, client, hyper, limits))
                        .await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What handing a connection to hyper needs.
struct ToHyper {
    builders: Arc<Builders>,
    state: Arc<State>,
    max_head: usize,
    /// Bounds the wait for the first bytes (see `first_bytes.rs`).
    first_bytes: Duration,
}

impl ToHyper {
    /// hyper (HTTP/1.1 with the framing watcher, or HTTP/2) serving `io`
    /// for `client`.
    fn serve<I>(
        self,
        io: fast::Prefixed<I>,
        why: fast::Handover,
        client: Arc<ClientConn>,
    ) -> HyperConn
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let verdicts = Arc::new(Verdicts::default());
        let seen = verdicts.clone();
        let state = self.state;
        let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            if seen.next_is_ambiguous() {
                req.extensions_mut().insert(AmbiguousFraming);
            }
            router::handle(state.clone(), req.map(RequestBody::Hyper), client.clone())
        });
        let io = hyper_io(io, self.first_bytes, self.max_head, verdicts);
        self.builders.serve(io, why, service)
    }
}

impl Builders {
    /// hyper serving `io`, handed over for `why`, with `service`.
    fn serve<I, S, B>(&self, io: switched::HyperIo<I>, why: fast::Handover, service: S) -> HyperConn
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<
                hyper::Request<hyper::body::Incoming>,
                Response = hyper::Response<B>,
            > + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        if why == fast::Handover::Upgrade {
            let conn = self.http1.serve_connection(io, service);
            return Box::pin(Http1Upgradeable::new(conn.with_upgrades()));
        }
        let conn = self
            .auto
            .serve_connection_with_upgrades(io, service)
            .into_owned();
        Box::pin(Hyper::new(conn))
    }
}

/// The layers hyper serves a handed-over connection through (the ones
/// [`take_back`] takes a switched connection back out of).
fn hyper_io<I>(
    io: fast::Prefixed<I>,
    first_bytes: Duration,
    max_head: usize,
    verdicts: Arc<Verdicts>,
) -> switched::HyperIo<I> {
    TokioIo::new(Framing::new(
        FirstBytes::new(io, first_bytes),
        max_head,
        verdicts,
    ))
}

type HyperConn = Pin<Box<dyn Graceful<Output = Result<(), BoxError>> + Send>>;

/// A client connection: served by the own HTTP/1.1 path (`server/fast.rs`)
/// until a request needs hyper, then by hyper with the bytes read so far.
struct Connection<I> {
    phase: Phase<I>,
    stop: Arc<fast::Stop>,
    /// Asked to finish (a drain).
    draining: bool,
    client: Arc<ClientConn>,
    to_hyper: Option<ToHyper>,
}

enum Phase<I> {
    Own(Pin<Box<dyn Future<Output = fast::Ended<I>> + Send>>),
    Hyper(HyperConn),
    Done,
}

impl<I> Connection<I>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    fn new(io: I, client: Arc<ClientConn>, to_hyper: ToHyper, limits: fast::Limits) -> Self {
        let stop = Arc::new(fast::Stop::default());
        let own = {
            let (state, client, stop) = (to_hyper.state.clone(), client.clone(), stop.clone());
            Box::pin(async move { fast::serve(io, &state, &client, limits, &stop).await })
        };
        Self {
            phase: Phase::Own(own),
            stop,
            draining: false,
            client,
            to_hyper: Some(to_hyper),
        }
    }
}

impl<I> Future for Connection<I>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.phase {
                Phase::Own(own) => match std::task::ready!(own.as_mut().poll(cx)) {
                    fast::Ended::Closed => this.phase = Phase::Done,
                    fast::Ended::HandOver { io, read, why } => {
                        if let Some(to_hyper) = &this.to_hyper {
                            to_hyper.state.metrics.handed_over(why);
                        }
                        let Some(to_hyper) = this.to_hyper.take() else {
                            this.phase = Phase::Done;
                            continue;
                        };
                        let mut conn =
                            to_hyper.serve(fast::Prefixed::new(read, io), why, this.client.clone());
                        if this.draining {
                            conn.as_mut().graceful_shutdown();
                        }
                        this.phase = Phase::Hyper(conn);
                    }
                },
                Phase::Hyper(conn) => return conn.as_mut().poll(cx),
                Phase::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl<I> Graceful for Connection<I>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        let this = self.get_mut();
        this.draining = true;
        this.stop.set();
        if let Phase::Hyper(conn) = &mut this.phase {
            conn.as_mut().graceful_shutdown();
        }
    }
}
