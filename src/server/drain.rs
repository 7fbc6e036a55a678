//! Graceful shutdown of one accept loop's connections: when the loop stops,
//! each connection is asked to finish what it is serving and close, and
//! the loop waits for them all.
//!
//! hyper-util's `GracefulShutdown` does the same, but every connection
//! polls the shutdown signal (a watch channel: a lock) each time the
//! connection itself is polled, several times a request. Here the signal
//! is polled only after it has woken the connection ([`WakeFlag`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::watch;

use crate::proxy::wake_flag::WakeFlag;
use crate::respond::BoxError;

/// A connection that can be asked to finish what it serves, then close.
pub trait Graceful: Future {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

pin_project_lite::pin_project! {
    /// A hyper(-util) connection, as [`Graceful`].
    pub struct Hyper<C> {
        #[pin]
        conn: C,
    }
}

impl<C> Hyper<C> {
    pub fn new(conn: C) -> Self {
        Self { conn }
    }
}

impl<C: GracefulConnection> Future for Hyper<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        self.project().conn.poll(cx)
    }
}

impl<C: GracefulConnection> Graceful for Hyper<C> {
    fn graceful_shutdown(self: Pin<&mut Self>) {
        self.project().conn.graceful_shutdown();
    }
}

pin_project_lite::pin_project! {
    /// hyper's own HTTP/1.1 connection with upgrades, as [`Graceful`]
    /// (hyper-util has no `GracefulConnection` for it).
    pub struct Http1Upgradeable<C> {
        #[pin]
        conn: C,
    }
}

impl<C> Http1Upgradeable<C> {
    pub fn new(conn: C) -> Self {
        Self { conn }
    }
}

impl<C: Future<Output = Result<(), hyper::Error>>> Future for Http1Upgradeable<C> {
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().conn.poll(cx).map_err(BoxError::from)
    }
}

impl<I, S, B> Graceful for Http1Upgradeable<hyper::server::conn::http1::UpgradeableConnection<I, S>>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        self.project().conn.graceful_shutdown();
    }
}

pub struct Drain {
    tx: watch::Sender<()>,
}

impl Drain {
    pub fn new() -> Self {
        Self {
            tx: watch::channel(()).0,
        }
    }

    /// Connections being served (each holds a receiver until it ends).
    pub fn count(&self) -> usize {
        self.tx.receiver_count()
    }

    /// A place for one connection, counted from now on (before its TLS
    /// handshake, say) until the connection it watches ends.
    pub fn watcher(&self) -> Watcher {
        Watcher {
            rx: self.tx.subscribe(),
        }
    }

    /// Asks every connection to finish, and waits until all have.
    pub async fn shutdown(self) {
        let _ = self.tx.send(());
        self.tx.closed().await;
    }
}

pub struct Watcher {
    rx: watch::Receiver<()>,
}

impl Watcher {
    /// Serves `conn`; once [`Drain::shutdown`] is called (or the `Drain` is
    /// dropped), it is asked to finish gracefully.
    pub fn watch<C: Graceful>(self, conn: C) -> Draining<C> {
        let mut rx = self.rx;
        Draining {
            conn,
            signal: Signal::Waiting {
                fired: Box::pin(async move {
                    let _ = rx.changed().await;
                    rx
                }),
                flag: WakeFlag::default(),
            },
        }
    }
}

enum Signal {
    Waiting {
        fired: Pin<Box<dyn Future<Output = watch::Receiver<()>> + Send>>,
        flag: WakeFlag,
    },
    /// Asked to finish; the receiver counts the connection until it ends.
    Fired { _held: watch::Receiver<()> },
}

pin_project_lite::pin_project! {
    pub struct Draining<C> {
        #[pin]
        conn: C,
        signal: Signal,
    }
}

impl<C: Graceful> Future for Draining<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if let Signal::Waiting { fired, flag } = this.signal
            && flag.take(cx)
            && let Poll::Ready(rx) = fired.as_mut().poll(&mut Context::from_waker(flag.waker()))
        {
            *this.signal = Signal::Fired { _held: rx };
            this.conn.as_mut().graceful_shutdown();
        }
        this.conn.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, duplex};

    use super::*;

    #[tokio::test]
    async fn shutdown_lets_the_request_in_flight_finish_then_returns() {
        let drain = Drain::new();
        let (server, mut client) = duplex(64 * 1024);
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = std::sync::Mutex::new(Some(released));
        let service = service_fn(move |_req| {
            let wait = released.lock().unwrap().take();
            async move {
                if let Some(wait) = wait {
                    let _ = wait.await;
                }
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                    "done",
                ))))
            }
        });
        let watcher = drain.watcher();
        assert_eq!(drain.count(), 1, "counted before the connection is served");
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server), service);
        let served = tokio::spawn(watcher.watch(Hyper::new(conn)));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;

        let shutdown = tokio::spawn(drain.shutdown());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!shutdown.is_finished(), "waits for the request in flight");
        release.send(()).unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer))
            .await
            .expect("the connection closes after its answer")
            .unwrap();
        let answer = String::from_utf8(answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("done"), "{answer}");
        assert!(answer.to_ascii_lowercase().contains("connection: close"));
        tokio::time::timeout(Duration::from_secs(5), shutdown)
            .await
            .expect("shutdown returns once the connection is gone")
            .unwrap();
        served.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_at_shutdown() {
        let drain = Drain::new();
        let (server, mut client) = duplex(1024);
        let service = service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::new())))
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server), service);
        tokio::spawn(drain.watcher().watch(Hyper::new(conn)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        tokio::time::timeout(Duration::from_secs(5), drain.shutdown())
            .await
            .expect("an idle connection does not hold the shutdown up");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}
