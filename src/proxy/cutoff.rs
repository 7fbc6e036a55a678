//! Streams that end when their session does: a response body wrapped in
//! [`Cutoff`] fails (the connection is aborted, never cleanly finished) as
//! soon as its guard — the session's lease — resolves.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::wake_flag::WakeFlag;
use crate::respond::BoxError;

/// Resolves when the connection must end.
pub type Guard = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A guard polled only after it has woken its task ([`WakeFlag`]): a
/// stream or relay is woken far more often by its own bytes than by its
/// guard, and polling a session's lease takes the lock of a watch channel
/// shared by all of that session's live connections.
pub struct Watch {
    guard: Option<Guard>,
    flag: WakeFlag,
}

impl Watch {
    pub fn new(guard: Guard) -> Self {
        Self {
            guard: Some(guard),
            flag: WakeFlag::default(),
        }
    }

    /// Whether the guard has fired; once it has, always true.
    pub fn poll_fired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(guard) = self.guard.as_mut() else {
            return true;
        };
        if !self.flag.take(cx)
            || guard
                .as_mut()
                .poll(&mut Context::from_waker(self.flag.waker()))
                .is_pending()
        {
            return false;
        }
        self.guard = None;
        true
    }
}

pin_project_lite::pin_project! {
    pub struct Cutoff<B> {
        #[pin]
        inner: B,
        guard: Option<Watch>,
    }
}

impl<B> Cutoff<B> {
    pub fn new(inner: B, guard: Guard) -> Self {
        Self {
            inner,
            guard: Some(Watch::new(guard)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the session behind this stream ended")]
pub struct SessionEnded;

impl<B> Body for Cutoff<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if this
            .guard
            .as_mut()
            .is_some_and(|guard| guard.poll_fired(cx))
        {
            *this.guard = None;
            return Poll::Ready(Some(Err(Box::new(SessionEnded))));
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt as _, StreamBody};

    use super::*;

    #[tokio::test]
    async fn the_body_fails_once_the_guard_fires() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (data_tx, data_rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
        let stream = tokio_stream_from(data_rx);
        let mut body = Cutoff::new(
            StreamBody::new(stream),
            Box::pin(async move {
                let _ = rx.await;
            }),
        );
        data_tx
            .send(Ok(Frame::data(Bytes::from_static(b"one"))))
            .await
            .unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"one"));
        tx.send(()).unwrap();
        let ended = body.frame().await.unwrap();
        assert!(ended.is_err(), "the stream is cut, not finished");
    }

    /// A guard that counts how often it is polled and fires on `rx`.
    fn counted(rx: tokio::sync::oneshot::Receiver<()>) -> (Guard, Arc<AtomicUsize>) {
        let polls = Arc::new(AtomicUsize::new(0));
        let counter = polls.clone();
        let mut rx = rx;
        let guard = std::future::poll_fn(move |cx| {
            counter.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut rx).poll(cx).map(|_| ())
        });
        (Box::pin(guard), polls)
    }

    #[tokio::test]
    async fn a_watched_guard_is_polled_only_when_it_woke() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (guard, polls) = counted(rx);
        let mut watch = Watch::new(guard);
        let task = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&task);
        assert!(!watch.poll_fired(&mut cx), "not fired yet");
        assert_eq!(polls.load(Ordering::Relaxed), 1, "polled once, to register");
        for _ in 0..100 {
            assert!(!watch.poll_fired(&mut cx));
        }
        assert_eq!(
            polls.load(Ordering::Relaxed),
            1,
            "not polled again while it has not woken"
        );
        tx.send(()).unwrap();
        assert!(watch.poll_fired(&mut cx), "fired once it woke");
        assert_eq!(polls.load(Ordering::Relaxed), 2);
        assert!(watch.poll_fired(&mut cx), "and stays fired");
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_guard_waking_wakes_the_task_that_watches_it() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (guard, _) = counted(rx);
        let mut watch = Watch::new(guard);
        let waiting = tokio::spawn(std::future::poll_fn(move |cx| {
            if watch.poll_fired(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        tx.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the task was woken")
            .unwrap();
    }

    fn tokio_stream_from<T>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
