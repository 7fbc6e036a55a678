//! Buffers that exist only while bytes flow.
//!
//! A WebSocket relay moves bytes each way; tokio's `copy` (and `BufReader`)
//! allocate a buffer per direction up front and keep it for the
//! connection's life, which for thousands of mostly idle collaboration
//! sockets is most of the gate's memory. Here a read goes into the serving
//! thread's one scratch buffer ([`poll_read_scratch`]) and is written on
//! straight from there; only bytes the other side did not take at once
//! (it is slow to read) are kept, in a buffer of their own ([`InFlight`])
//! that is given back as soon as they are written. So an idle connection
//! holds no buffer, and a busy one usually none either. Buffers given back
//! go to a small per-thread pool, so a relay under back-pressure takes the
//! same few buffers over and over instead of allocating (and zeroing) one
//! per read; the pool is bounded, and what it cannot hold is freed.

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
    /// The thread's scratch buffer: `CAPACITY` initialised bytes once used.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
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

/// One read from `from` into the thread's scratch buffer; the bytes read
/// (never none) go to `sink`, with `cx`, while they are still there, and
/// its answer is returned. `None` at the end of the stream.
///
/// The scratch buffer is initialised once, so a reader that wants
/// initialised memory (rustls does) costs no zeroing per read. It is lent
/// out for the one read and the one sink call, both of which run on this
/// thread; should it be lent already, a pooled buffer stands in.
pub fn poll_read_scratch<R, T>(
    cx: &mut Context<'_>,
    from: &mut R,
    sink: impl FnOnce(&mut Context<'_>, &[u8]) -> T,
) -> Poll<io::Result<Option<T>>>
where
    R: AsyncRead + Unpin,
{
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => {
            if scratch.is_empty() {
                *scratch = vec![0; CAPACITY];
            }
            read_into(cx, from, &mut scratch, sink)
        }
        Err(_) => {
            let mut buf = take();
            let read = read_into(cx, from, &mut buf, sink);
            give(&mut buf);
            read
        }
    })
}

fn read_into<R, T>(
    cx: &mut Context<'_>,
    from: &mut R,
    buf: &mut [u8],
    sink: impl FnOnce(&mut Context<'_>, &[u8]) -> T,
) -> Poll<io::Result<Option<T>>>
where
    R: AsyncRead + Unpin,
{
    let mut rb = ReadBuf::new(buf);
    match Pin::new(from).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(Ok(None)),
        Poll::Ready(Ok(())) => Poll::Ready(Ok(Some(sink(cx, rb.filled())))),
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// Bytes read from one side that the other has not taken yet: none, and no
/// buffer, unless that side is slow to read.
#[derive(Default)]
pub struct InFlight {
    buf: Vec<u8>,
    pos: usize,
    filled: usize,
}

impl InFlight {
    /// What is still to be written (empty while nothing is kept).
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.pos..self.filled]
    }

    /// `n` bytes of [`pending`](Self::pending) were written; once all of
    /// them are, the buffer is given back.
    pub fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.filled);
        if self.pos == self.filled {
            (self.pos, self.filled) = (0, 0);
            give(&mut self.buf);
        }
    }

    /// Keeps `bytes`, which the other side did not take; call it only when
    /// nothing is pending. Keeping nothing takes no buffer.
    pub fn keep(&mut self, bytes: &[u8]) {
        debug_assert!(self.pending().is_empty());
        if bytes.is_empty() {
            return;
        }
        if self.buf.is_empty() {
            self.buf = take();
        }
        if self.buf.len() < bytes.len() {
            // Longer than any read here; such a buffer is not pooled.
            self.buf.resize(bytes.len(), 0);
        }
        self.buf[..bytes.len()].copy_from_slice(bytes);
        (self.pos, self.filled) = (0, bytes.len());
    }

    /// Bytes held right now (0 while nothing is kept).
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
    async fn reads_go_through_the_scratch_buffer_and_only_what_is_left_is_kept() {
        let (mut tx, mut rx) = duplex(64 * 1024);
        let mut kept = InFlight::default();
        assert_eq!(kept.held(), 0);
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        tx.write_all(&data).await.unwrap();
        let mut got = Vec::new();
        while got.len() < data.len() {
            // Half of each read is "written" at once, the rest kept.
            let n = poll_fn(|cx| {
                poll_read_scratch(cx, &mut rx, |_, read| {
                    got.extend_from_slice(&read[..read.len() / 2]);
                    kept.keep(&read[read.len() / 2..]);
                    read.len()
                })
            })
            .await
            .unwrap()
            .expect("not the end");
            assert!(n > 0 && n <= CAPACITY);
            assert_eq!(kept.pending().len(), n - n / 2);
            assert_eq!(kept.held(), CAPACITY, "a pooled buffer holds what is left");
            let rest = kept.pending().len();
            got.extend_from_slice(&kept.pending()[..1]);
            kept.consume(1);
            got.extend_from_slice(kept.pending());
            kept.consume(rest - 1);
            assert_eq!(kept.held(), 0, "given back once written");
        }
        assert_eq!(got, data);
        // Nothing more to read: the read waits and nothing is kept.
        let waiting =
            poll_fn(|cx| Poll::Ready(poll_read_scratch(cx, &mut rx, |_, r: &[u8]| r.len()))).await;
        assert!(waiting.is_pending());
        tx.write_all(b"more").await.unwrap();
        drop(tx);
        let more = poll_fn(|cx| poll_read_scratch(cx, &mut rx, |_, r| r.to_vec())).await;
        assert_eq!(more.unwrap().as_deref(), Some(&b"more"[..]));
        let end = poll_fn(|cx| poll_read_scratch(cx, &mut rx, |_, r| r.to_vec())).await;
        assert_eq!(end.unwrap(), None, "the end");
        kept.keep(b"");
        assert_eq!(kept.held(), 0, "keeping nothing takes no buffer");
    }

    #[tokio::test]
    async fn a_read_while_the_scratch_buffer_is_lent_uses_a_buffer_of_its_own() {
        let (mut tx, mut rx) = duplex(1024);
        tx.write_all(b"inner").await.unwrap();
        let (mut tx2, mut rx2) = duplex(1024);
        tx2.write_all(b"outer").await.unwrap();
        let got = poll_fn(|cx| {
            poll_read_scratch(cx, &mut rx2, |cx, outer| {
                let inner = poll_read_scratch(cx, &mut rx, |_, r| r.to_vec());
                (outer.to_vec(), inner)
            })
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(got.0, b"outer", "the outer read is not overwritten");
        match got.1 {
            Poll::Ready(Ok(Some(inner))) => assert_eq!(inner, b"inner"),
            other => panic!("inner read: {other:?}"),
        }
    }
}
