//! Streams that end when their session does: a response body wrapped in
//! [`Cutoff`] fails (the connection is aborted, never cleanly finished) as
//! soon as its guard — the session's lease — resolves.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::respond::BoxError;

/// Resolves when the connection must end.
pub type Guard = Pin<Box<dyn Future<Output = ()> + Send>>;

pin_project_lite::pin_project! {
    pub struct Cutoff<B> {
        #[pin]
        inner: B,
        guard: Option<Guard>,
    }
}

impl<B> Cutoff<B> {
    pub fn new(inner: B, guard: Guard) -> Self {
        Self {
            inner,
            guard: Some(guard),
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
            .is_some_and(|guard| guard.as_mut().poll(cx).is_ready())
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

    fn tokio_stream_from<T>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
