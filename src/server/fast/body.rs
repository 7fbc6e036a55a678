//! A request body on the own HTTP/1.1 path: the connection reads it (it
//! owns the socket, and watches it while the request is served) and puts
//! each piece in a [`Pipe`]; the upstream request takes the pieces as a
//! [`ClientBody`]. Over HTTP/1.1 to the upstream both run in the
//! connection's one task; hyper's HTTP/2 client (`CT_UPSTREAM_HTTP2`) takes
//! the body in a task of its own. So each side leaves its waker when it
//! must wait for the other (the taker for the next piece, the connection
//! for the last piece to be taken), and each wakes the other unless it is
//! the same task (which is polled again anyway).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// What has been read of a body and not yet taken, and how much is to come.
#[derive(Debug)]
pub struct Pipe(Mutex<Piped>);

#[derive(Debug)]
struct Piped {
    /// Read and not yet taken by the upstream request.
    piece: Option<Bytes>,
    /// Bytes of the body not read yet.
    left: u64,
    /// Waiting for the next piece: the upstream request's task.
    taker: Option<Waker>,
    /// Waiting for the last piece to be taken: the connection's task.
    putter: Option<Waker>,
}

/// Keeps `waker` in `slot` (unless the one there wakes the same task).
fn keep(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(kept) if kept.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

/// Wakes the task kept in `slot`, unless it is the one polling (`me`).
fn wake_other(slot: &mut Option<Waker>, me: &Waker) -> Option<Waker> {
    slot.take().filter(|other| !other.will_wake(me))
}

impl Pipe {
    /// A body of `length` bytes.
    pub fn new(length: u64) -> Arc<Self> {
        Arc::new(Self(Mutex::new(Piped {
            piece: None,
            left: length,
            taker: None,
            putter: None,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Piped> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes of the body still to be read from the connection.
    pub fn left(&self) -> u64 {
        self.lock().left
    }

    /// Whether the last piece put has been taken; if not, the task polling
    /// (`cx`) is woken when it is.
    pub fn poll_taken(&self, cx: &Context<'_>) -> bool {
        let mut p = self.lock();
        if p.piece.is_none() {
            return true;
        }
        keep(&mut p.putter, cx.waker());
        false
    }

    /// Puts up to what is left of the body from the front of `bytes` (split
    /// off it) and wakes the task waiting to take it; false when the last
    /// piece is still there. `cx`: the connection's task, putting.
    pub fn put(&self, bytes: &mut bytes::BytesMut, cx: &Context<'_>) -> bool {
        let mut p = self.lock();
        if p.piece.is_some() || p.left == 0 || bytes.is_empty() {
            return false;
        }
        let n = usize::try_from(p.left)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        p.piece = Some(bytes.split_to(n).freeze());
        p.left -= n as u64;
        let taker = wake_other(&mut p.taker, cx.waker());
        drop(p);
        if let Some(taker) = taker {
            taker.wake();
        }
        true
    }

    /// The whole body was read and taken.
    pub fn is_done(&self) -> bool {
        let p = self.lock();
        p.left == 0 && p.piece.is_none()
    }
}

/// The upstream request's side of a [`Pipe`].
pub struct ClientBody(pub Arc<Pipe>);

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let mut p = self.0.lock();
        match p.piece.take() {
            Some(piece) => {
                // The connection may read the next piece now.
                let putter = wake_other(&mut p.putter, cx.waker());
                drop(p);
                if let Some(putter) = putter {
                    putter.wake();
                }
                Poll::Ready(Some(Ok(Frame::data(piece))))
            }
            None if p.left == 0 => Poll::Ready(None),
            // The connection puts the next piece when its socket has it.
            None => {
                keep(&mut p.taker, cx.waker());
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        let p = self.0.lock();
        SizeHint::with_exact(p.left + p.piece.as_ref().map_or(0, |b| b.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::BytesMut;
    use http_body::Body as _;
    use http_body_util::BodyExt as _;

    use super::*;

    /// A waker that counts its wakes.
    struct Count(AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    #[tokio::test]
    async fn pieces_go_through_in_order_and_the_rest_stays_for_the_next_request() {
        let pipe = Pipe::new(10);
        let mut body = ClientBody(pipe.clone());
        let mut read = BytesMut::from(&b"0123"[..]);
        let cx = Context::from_waker(Waker::noop());
        assert!(pipe.put(&mut read, &cx));
        assert!(
            !pipe.put(&mut BytesMut::from(&b"x"[..]), &cx),
            "one piece at a time"
        );
        assert_eq!(body.size_hint().exact(), Some(10));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "0123");
        assert!(pipe.poll_taken(&cx) && !pipe.is_done());
        // More than the body: the rest is the next request's.
        let mut read = BytesMut::from(&b"456789GET / HTTP/1.1\r\n"[..]);
        assert!(pipe.put(&mut read, &cx));
        assert_eq!(&read[..], b"GET / HTTP/1.1\r\n");
        assert_eq!(pipe.left(), 0);
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(second, "456789");
        assert!(body.frame().await.is_none());
        assert!(pipe.is_done() && body.is_end_stream());
        assert!(
            !pipe.put(&mut read, &cx),
            "nothing more once the body is whole"
        );
    }

    /// hyper's HTTP/2 client takes the body in a task of its own: each side
    /// wakes the other.
    #[test]
    fn a_taker_in_another_task_and_the_connection_wake_each_other() {
        let pipe = Pipe::new(8);
        let mut body = ClientBody(pipe.clone());
        let (taken_wakes, taker) = counter();
        let (put_wakes, putter) = counter();
        let mut taker_cx = Context::from_waker(&taker);
        let putter_cx = Context::from_waker(&putter);

        assert!(Pin::new(&mut body).poll_frame(&mut taker_cx).is_pending());
        assert!(pipe.put(&mut BytesMut::from(&b"0123"[..]), &putter_cx));
        assert_eq!(taken_wakes.0.load(Ordering::SeqCst), 1, "the taker is told");
        assert!(!pipe.poll_taken(&putter_cx), "not taken yet");
        let Poll::Ready(Some(Ok(piece))) = Pin::new(&mut body).poll_frame(&mut taker_cx) else {
            panic!("the piece is there");
        };
        assert_eq!(piece.into_data().unwrap(), "0123");
        assert_eq!(
            put_wakes.0.load(Ordering::SeqCst),
            1,
            "the connection is told"
        );
        assert!(pipe.poll_taken(&putter_cx));

        // One task on both sides (HTTP/1.1): no wake of itself.
        let mut same = Context::from_waker(&putter);
        assert!(Pin::new(&mut body).poll_frame(&mut same).is_pending());
        assert!(pipe.put(&mut BytesMut::from(&b"4567"[..]), &same));
        assert_eq!(put_wakes.0.load(Ordering::SeqCst), 1);
        assert!(Pin::new(&mut body).poll_frame(&mut same).is_ready());
        assert_eq!(put_wakes.0.load(Ordering::SeqCst), 1);
        assert!(pipe.is_done());
    }
}
