//! A request body on the own HTTP/1.1 path: the connection reads it (it
//! owns the socket, and watches it while the request is served) and puts
//! each piece in a [`Pipe`]; the upstream request takes the pieces as a
//! [`ClientBody`]. Both run in the connection's one task, so the body needs
//! no waker of its own: whenever it has nothing, the connection is waiting
//! on its socket, whose readiness wakes that task, and puts the next piece
//! before it polls the upstream request again.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

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
}

impl Pipe {
    /// A body of `length` bytes.
    pub fn new(length: u64) -> Arc<Self> {
        Arc::new(Self(Mutex::new(Piped {
            piece: None,
            left: length,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Piped> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes of the body still to be read from the connection.
    pub fn left(&self) -> u64 {
        self.lock().left
    }

    /// Whether the last piece put has been taken.
    pub fn is_taken(&self) -> bool {
        self.lock().piece.is_none()
    }

    /// Puts up to what is left of the body from the front of `bytes` (split
    /// off it); false when the last piece is still there.
    pub fn put(&self, bytes: &mut bytes::BytesMut) -> bool {
        let mut p = self.lock();
        if p.piece.is_some() || p.left == 0 || bytes.is_empty() {
            return false;
        }
        let n = usize::try_from(p.left)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        p.piece = Some(bytes.split_to(n).freeze());
        p.left -= n as u64;
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
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let mut p = self.0.lock();
        match p.piece.take() {
            Some(piece) => Poll::Ready(Some(Ok(Frame::data(piece)))),
            None if p.left == 0 => Poll::Ready(None),
            // The connection puts the next piece when its socket has it.
            None => Poll::Pending,
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
    use bytes::BytesMut;
    use http_body::Body as _;
    use http_body_util::BodyExt as _;

    use super::*;

    #[tokio::test]
    async fn pieces_go_through_in_order_and_the_rest_stays_for_the_next_request() {
        let pipe = Pipe::new(10);
        let mut body = ClientBody(pipe.clone());
        let mut read = BytesMut::from(&b"0123"[..]);
        assert!(pipe.put(&mut read));
        assert!(
            !pipe.put(&mut BytesMut::from(&b"x"[..])),
            "one piece at a time"
        );
        assert_eq!(body.size_hint().exact(), Some(10));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "0123");
        assert!(pipe.is_taken() && !pipe.is_done());
        // More than the body: the rest is the next request's.
        let mut read = BytesMut::from(&b"456789GET / HTTP/1.1\r\n"[..]);
        assert!(pipe.put(&mut read));
        assert_eq!(&read[..], b"GET / HTTP/1.1\r\n");
        assert_eq!(pipe.left(), 0);
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(second, "456789");
        assert!(body.frame().await.is_none());
        assert!(pipe.is_done() && body.is_end_stream());
        assert!(!pipe.put(&mut read), "nothing more once the body is whole");
    }
}
