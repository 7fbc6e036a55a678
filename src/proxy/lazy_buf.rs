//! Buffers that exist only while bytes flow.
//!
//! A WebSocket relay holds a read buffer each way and a write buffer towards
//! the client; tokio's `BufReader`/`BufWriter` (and `io::copy`) allocate
//! theirs up front and keep them for the connection's life, 8 KiB each, which
//! for thousands of mostly idle collaboration sockets is most of the gate's
//! memory. These allocate on the first read or write of a burst and free the
//! buffer as soon as it is drained and the peer has nothing more (a read
//! would wait) or the writes are flushed, so an idle connection holds none.
//! Freed buffers go back to a small per-thread pool, so a busy relay takes
//! the same few buffers over and over instead of allocating (and zeroing)
//! one per message; the pool is bounded, and what it cannot hold is freed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

/// Size of a buffer while in use: a whole 16 KiB WebSocket message in one read.
const CAPACITY: usize = 16 * 1024;
/// Free buffers a thread keeps for reuse (at most 1 MiB).
const POOL: usize = 64;

thread_local! {
    static FREE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A buffer of `CAPACITY` bytes: `len` is `CAPACITY` (initialised) for
/// reading into, or 0 for appending to.
fn take(for_reading: bool) -> Vec<u8> {
    let mut buf = FREE
        .with(|f| f.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(CAPACITY));
    if for_reading {
        buf.resize(CAPACITY, 0);
    } else {
        buf.clear();
    }
    buf
}

/// Gives a buffer back; leaves an empty, unallocated one in its place.
fn give(buf: &mut Vec<u8>) {
    let buf = std::mem::take(buf);
    if buf.capacity() == CAPACITY {
        FREE.with(|f| {
            let mut free = f.borrow_mut();
            if free.len() < POOL {
                free.push(buf);
            }
        });
    }
}

/// An `AsyncBufRead` over `R` whose buffer is freed whenever it is empty and
/// `R` has nothing to read.
pub struct LazyReader<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    filled: usize,
}

impl<R> LazyReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            pos: 0,
            filled: 0,
        }
    }

    /// Bytes held right now (0 while idle).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.buf.capacity()
    }
}

impl<R> Drop for LazyReader<R> {
    fn drop(&mut self) {
        give(&mut self.buf);
    }
}

impl<R: AsyncRead + Unpin> AsyncBufRead for LazyReader<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.pos >= this.filled {
            if this.buf.is_empty() {
                this.buf = take(true);
            }
            let mut rb = ReadBuf::new(&mut this.buf);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    this.filled = rb.filled().len();
                    this.pos = 0;
                }
                Poll::Ready(Err(e)) => {
                    give(&mut this.buf);
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    // Idle: hold nothing while waiting.
                    give(&mut this.buf);
                    (this.pos, this.filled) = (0, 0);
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(&this.buf[this.pos..this.filled]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.pos = (this.pos + amt).min(this.filled);
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for LazyReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // A large read with nothing buffered goes straight through.
        if self.pos >= self.filled && out.remaining() >= CAPACITY {
            give(&mut self.buf);
            return Pin::new(&mut self.inner).poll_read(cx, out);
        }
        let available = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = available.len().min(out.remaining());
        out.put_slice(&available[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

/// A buffered `AsyncWrite` over `W` that allocates on the first small write
/// and frees its buffer once flushed.
pub struct LazyWriter<W> {
    inner: W,
    buf: Vec<u8>,
    /// Bytes of `buf` already written out.
    written: usize,
}

impl<W> LazyWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            written: 0,
        }
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.buf.capacity()
    }
}

impl<W> Drop for LazyWriter<W> {
    fn drop(&mut self) {
        give(&mut self.buf);
    }
}

impl<W: AsyncWrite + Unpin> LazyWriter<W> {
    /// Writes out what is buffered (keeping the buffer for more).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for LazyWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.buf.is_empty() && data.len() >= CAPACITY {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        if this.buf.len() >= CAPACITY {
            ready!(this.poll_drain(cx))?;
        }
        if this.buf.capacity() == 0 {
            this.buf = take(false);
        }
        // Fill the buffer up; the rest comes in the next call.
        let n = data.len().min(CAPACITY - this.buf.len());
        this.buf.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        give(&mut self.buf);
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        give(&mut self.buf);
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, duplex};

    use super::*;

    #[test]
    fn the_pool_reuses_buffers_and_stays_bounded() {
        let mut held: Vec<Vec<u8>> = (0..POOL + 20).map(|_| take(true)).collect();
        assert!(held.iter().all(|b| b.len() == CAPACITY));
        held.iter_mut().for_each(give);
        assert_eq!(FREE.with(|f| f.borrow().len()), POOL, "bounded");
        let pooled: Vec<*const u8> = FREE.with(|f| f.borrow().iter().map(|b| b.as_ptr()).collect());
        let again = take(false);
        assert!(again.is_empty() && again.capacity() == CAPACITY);
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
    async fn the_reader_passes_every_byte_and_holds_nothing_once_idle() {
        let (mut tx, rx) = duplex(64 * 1024);
        let mut r = LazyReader::new(rx);
        assert_eq!(r.held(), 0);
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        tx.write_all(&data).await.unwrap();
        let mut got = vec![0u8; data.len()];
        // Small reads through the buffer and large ones around it.
        r.read_exact(&mut got[..10]).await.unwrap();
        r.read_exact(&mut got[10..20_000]).await.unwrap();
        r.read_exact(&mut got[20_000..]).await.unwrap();
        assert_eq!(got, data);
        // Nothing more to read: the next fill waits, and frees the buffer.
        let pending = futures_util::FutureExt::now_or_never(r.fill_buf());
        assert!(pending.is_none());
        assert_eq!(r.held(), 0, "an idle reader holds no buffer");
        tx.write_all(b"more").await.unwrap();
        drop(tx);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"more");
    }

    #[tokio::test]
    async fn the_writer_keeps_order_and_frees_its_buffer_when_flushed() {
        let (tx, mut rx) = duplex(1024 * 1024);
        let mut w = LazyWriter::new(tx);
        let mut sent = Vec::new();
        for i in 0..200u32 {
            let piece: Vec<u8> = vec![(i % 256) as u8; (i as usize * 37) % 3_000 + 1];
            w.write_all(&piece).await.unwrap();
            sent.extend_from_slice(&piece);
        }
        let big = vec![9u8; 20_000];
        w.write_all(&big).await.unwrap();
        sent.extend_from_slice(&big);
        w.flush().await.unwrap();
        assert_eq!(w.held(), 0, "a flushed writer holds no buffer");
        w.shutdown().await.unwrap();
        let mut got = Vec::new();
        rx.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "bytes reordered or lost");
    }
}
