//! TCP streams whose reads and writes are the system calls themselves.
//!
//! glibc's `recv`, `send` and `writev` are thread-cancellation points: in a
//! process with more than one thread, each call sets the thread's
//! asynchronous-cancellation flag before the system call and clears it
//! after, two atomic read-modify-writes around every call. A relayed
//! WebSocket message costs four such calls (read and write each way), and
//! under load `perf` put about an eighth of the gate's user time in the
//! two flag functions alone, time a single-threaded nginx worker does not
//! spend. ssogate never cancels a thread, so [`Tcp`] makes the calls
//! directly (rustix issues the `syscall` instruction itself): the same
//! system calls, with the same flags, without the wrapper.
//!
//! Readiness stays tokio's: a read or write waits on the stream's
//! registration and a call that would block clears it, as tokio's own
//! stream does; so does a read that did not fill the buffer (the socket is
//! drained, and asking again would only be answered `EAGAIN`) and a write
//! that did not take everything (the socket's buffer is full).
//!
//! A read into memory not yet initialised goes through tokio's stream as
//! before: without `unsafe` (which the crate forbids) the buffer would have
//! to be zeroed first, which costs more than the wrapper. The relay reads
//! into its thread's scratch buffer, which is initialised once.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustix::net::{RecvFlags, SendFlags};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A tokio [`TcpStream`] read and written with direct system calls.
#[derive(Debug)]
pub struct Tcp(TcpStream);

impl Tcp {
    pub fn new(stream: TcpStream) -> Self {
        Self(stream)
    }
}

impl From<TcpStream> for Tcp {
    fn from(stream: TcpStream) -> Self {
        Self(stream)
    }
}

/// One call on `stream` once it is ready for `interest`: `call` answers
/// how many bytes it moved and whether that was all it was offered. A
/// call that would block, or that moved some but not all, clears the
/// readiness, so the next waits for the socket to become ready again.
fn poll_call(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    interest: Interest,
    mut call: impl FnMut() -> io::Result<(usize, bool)>,
) -> Poll<io::Result<usize>> {
    loop {
        if interest.is_readable() {
            ready!(stream.poll_read_ready(cx))?;
        } else {
            ready!(stream.poll_write_ready(cx))?;
        }
        let mut moved = None;
        let answer = stream.try_io(interest, || {
            let (n, all) = call()?;
            moved = Some(n);
            if n > 0 && !all {
                // tokio clears the readiness only on `WouldBlock`.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match (moved, answer) {
            (Some(n), _) | (None, Ok(n)) => return Poll::Ready(Ok(n)),
            // Would block: tokio cleared the readiness; wait for it again.
            (None, Err(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            (None, Err(e)) => return Poll::Ready(Err(e)),
        }
    }
}

impl AsyncRead for Tcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.initialized().len() < buf.capacity() {
            return Pin::new(&mut this.0).poll_read(cx, buf);
        }
        let stream = &this.0;
        let into = buf.initialize_unfilled();
        let len = into.len();
        let n = ready!(poll_call(stream, cx, Interest::READABLE, || {
            let (n, _) = rustix::net::recv(stream, &mut *into, RecvFlags::empty())?;
            Ok((n, n == len))
        }))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let stream = &self.0;
        poll_call(stream, cx, Interest::WRITABLE, || {
            let n = rustix::net::send(stream, buf, SendFlags::NOSIGNAL)?;
            Ok((n, n == buf.len()))
        })
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let stream = &self.0;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        poll_call(stream, cx, Interest::WRITABLE, || {
            let n = rustix::io::writev(stream, bufs)?;
            Ok((n, n == total))
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
