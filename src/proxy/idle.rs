//! Request bodies that go quiet: a body wrapped in [`Idle`] fails once no
//! byte has arrived for its timeout (`CT_BODY_IDLE_TIMEOUT`), so a client
//! trickling nothing cannot hold a connection, and the upstream request
//! behind it, forever. Uploads that keep moving are never cut.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::respond::BoxError;

pin_project_lite::pin_project! {
    pub struct Idle<B> {
        #[pin]
        inner: B,
        #[pin]
        timer: Sleep,
        timeout: Duration,
    }
}

impl<B> Idle<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            timer: tokio::time::sleep(timeout),
            timeout,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request body sent nothing for {0:?}")]
pub struct BodyIdle(Duration);

impl<B> Body for Idle<B>
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
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.timer.as_mut().reset(Instant::now() + *this.timeout);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.timer.poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyIdle(*this.timeout))))),
                Poll::Pending => Poll::Pending,
            },
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

    #[tokio::test(start_paused = true)]
    async fn a_silent_body_fails_after_the_timeout_and_a_moving_one_does_not() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let stream = tokio_stream_from(rx);
        let mut body = std::pin::pin!(Idle::new(StreamBody::new(stream), Duration::from_secs(5)));
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(4)).await;
            tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
                .await
                .unwrap();
            assert!(body.frame().await.unwrap().is_ok(), "moving: kept");
        }
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("sent nothing"), "{err}");
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
