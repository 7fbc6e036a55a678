//! Accepting connections: HTTP/1.1 and HTTP/2 (hyper-util auto, with
//! upgrades), optional TLS, a header-read timeout against slow clients, a
//! watch on HTTP/1 framing against request smuggling, and
//! graceful shutdown that lets in-flight requests finish for a bounded time.

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

mod first_bytes;
mod framing;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use self::first_bytes::FirstBytes;
use self::framing::{Framing, Verdicts};
use crate::router::{self, AmbiguousFraming, State};
use crate::session::Recent;

/// Headers accepted in one HTTP/1.1 request (431 beyond).
const MAX_HEADERS: usize = 128;
const MAX_H2_STREAMS: u32 = 256;

pub struct Settings {
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
    /// `CT_MAX_HEADER_BYTES`: largest request head (request line and headers).
    pub max_header_bytes: usize,
    /// `CT_MAX_CONNECTIONS`: open client connections at most.
    pub max_connections: usize,
}

fn builder(settings: &Settings) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes)
        .max_headers(MAX_HEADERS);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_pending_accept_reset_streams(Some(64))
        .max_local_error_reset_streams(Some(256))
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
    b
}

/// One thread: everything on it (no cross-thread wake-ups); else a
/// work-stealing pool of that many threads (default: one per usable CPU).
pub fn runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if let Some(n) = threads.filter(|n| *n > 1) {
        b.worker_threads(n);
    }
    b.enable_all().build()
}

/// Serves until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Arc::new(builder(&settings));
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let mut refused: u64 = 0;
    tokio::pin!(shutdown);
    loop {
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
        let state = state.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        // Bounds the TLS handshake and then the wait for the first bytes
        // (hyper's HTTP/1 header timer only starts once the protocol is known).
        let handshake_timeout = settings.header_read_timeout;
        let max_head = settings.max_header_bytes;
        tokio::spawn(async move {
            let _slot = slot;
            let verdicts = Arc::new(Verdicts::default());
            let seen = verdicts.clone();
            let recent = Arc::new(Recent::default());
            let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                if seen.next_is_ambiguous() {
                    req.extensions_mut().insert(AmbiguousFraming);
                }
                router::handle(state.clone(), req, peer, recent.clone())
            });
            match tls {
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
                    let io = Framing::new(
                        FirstBytes::new(stream, handshake_timeout),
                        max_head,
                        verdicts,
                    );
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(io), service)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                None => {
                    let io = Framing::new(
                        FirstBytes::new(stream, handshake_timeout),
                        max_head,
                        verdicts,
                    );
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(io), service)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
            }
        });
    }
    drop(listener);
    tracing::info!(
        open_connections = graceful.count(),
        "shutting down: draining in-flight requests"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(settings.shutdown_grace) => tracing::warn!("shutdown grace period over; closing remaining connections"),
    }
}
