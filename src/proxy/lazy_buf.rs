//! Buffers that exist only while bytes flow.
//!
//! A WebSocket relay holds a buffer each way; tokio's `copy` (and
//! `BufReader`) allocate theirs up front and keep them for the connection's
//! life, which for thousands of mostly idle collaboration sockets is most of
//! the gate's memory. [`InFlight`] takes a buffer on the first read of a
//! burst and gives it back as soon as everything read has been written on
//! and the peer has nothing more (a read would wait), so an idle connection
//! holds none. Buffers given back go to a small per-thread pool, so a busy
//! relay takes the same few buffers over and over instead of allocating (and
//! zeroing) one per message; the pool is bounded, and what it cannot hold is
//! freed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Size of a buffer while in use: a 16 KiB WebSocket message with the
/// longest frame head (14 bytes) in one read. It bounds what a connection
/// holds in the gate while its peer does not read (one buffer each way).
pub const CAPACITY: usize = 16 * 1024 + 16;
/// Free buffers a thread keeps for reuse (about 1 MiB).
const POOL: usize = 64;

thread_local! {
    static FREE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A buffer of `CAPACITY` initialised bytes. Pooled buffers keep their
/// length, so they are zeroed once, when first allocated.
fn take() -> Vec<u8> {
    FREE.with(|f| f.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; CAPACITY])
}

/// Gives a buffer back; leaves an empty, unallocated one in its place.
fn give(buf: &mut Vec<u8>) {
    let buf = std::mem::take(buf);
    if buf.len() == CAPACITY {
        FREE.with(|f| {
            let mut free = f.borrow_mut();
            if free.len() < POOL {
                free.push(buf);
            }
        });
    }
}

/// Bytes read from one side and not yet written to the other.
#[derive(Default)]
pub struct InFlight {
    buf: Vec<u8>,
    pos: usize,
    filled: usize,
}

impl InFlight {
    /// What was read and is still to be written (empty while idle).
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.pos..self.filled]
    }

    /// `n` bytes of [`pending`](Self::pending) were written.
    pub fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.filled);
    }

    /// Reads into the buffer once everything pending is written: the number
    /// of bytes read, 0 at the end of the stream. The buffer is given back
    /// whenever the read would wait, fails or finds the end.
    pub fn poll_fill<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
    ) -> Poll<io::Result<usize>> {
        debug_assert!(self.pending().is_empty());
        (self.pos, self.filled) = (0, 0);
        if self.buf.is_empty() {
            self.buf = take();
        }
        let mut rb = ReadBuf::new(&mut self.buf);
        let read = Pin::new(from).poll_read(cx, &mut rb);
        let n = rb.filled().len();
        match read {
            Poll::Ready(Ok(())) if n > 0 => {
                self.filled = n;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(result) => {
                give(&mut self.buf);
                Poll::Ready(result.map(|()| 0))
            }
            Poll::Pending => {
                // Idle: hold nothing while waiting.
                give(&mut self.buf);
                Poll::Pending
            }
        }
    }

    /// Bytes held right now (0 while idle).
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.buf.capacity()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        give(&mut self.buf);
    }
}

#[cfg(test)]
mod tests {
    use futures_util::future::poll_fn;
    use tokio::io::{AsyncWriteExt as _, duplex};

    use super::*;

    #[test]
    fn the_pool_reuses_buffers_and_stays_bounded() {
        let mut held: Vec<Vec<u8>> = (0..POOL + 20).map(|_| take()).collect();
        assert!(held.iter().all(|b| b.len() == CAPACITY));
        held.iter_mut().for_each(give);
        assert_eq!(FREE.with(|f| f.borrow().len()), POOL, "bounded");
        let pooled: Vec<*const u8> = FREE.with(|f| f.borrow().iter().map(|b| b.as_ptr()).collect());
        let again = take();
        assert_eq!(again.len(), CAPACITY, "ready to read into");
        assert!(
            pooled.contains(&again.as_ptr()),
            "a pooled buffer is reused, not a new one"
        );
        assert_eq!(
            FREE.with(|f| f.borrow().len()),
            POOL - 1,
            "taken out of the pool"
        );
    }

    #[tokio::test]
    async fn every_byte_passes_and_nothing_is_held_once_idle() {
        let (mut tx, mut rx) = duplex(64 * 1024);
        let mut bytes = InFlight::default();
        assert_eq!(bytes.held(), 0);
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        tx.write_all(&data).await.unwrap();
        let mut got = Vec::new();
        while got.len() < data.len() {
            let n = poll_fn(|cx| bytes.poll_fill(cx, &mut rx)).await.unwrap();
            assert!(n > 0 && n <= CAPACITY);
            assert_eq!(bytes.pending().len(), n);
            // Written on in two pieces.
            got.extend_from_slice(&bytes.pending()[..n / 2]);
            bytes.consume(n / 2);
            got.extend_from_slice(bytes.pending());
            bytes.consume(bytes.pending().len());
        }
        assert_eq!(got, data);
        // Nothing more to read: the read waits and the buffer goes back.
        let waiting = poll_fn(|cx| Poll::Ready(bytes.poll_fill(cx, &mut rx))).await;
        assert!(waiting.is_pending());
        assert_eq!(bytes.held(), 0, "an idle buffer holds nothing");
        tx.write_all(b"more").await.unwrap();
        drop(tx);
        assert_eq!(poll_fn(|cx| bytes.poll_fill(cx, &mut rx)).await.unwrap(), 4);
        assert_eq!(bytes.pending(), b"more");
        bytes.consume(4);
        assert_eq!(
            poll_fn(|cx| bytes.poll_fill(cx, &mut rx)).await.unwrap(),
            0,
            "the end"
        );
        assert_eq!(bytes.held(), 0);
    }
}
