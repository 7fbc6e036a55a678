//! A deadline for a connection's first bytes.
//!
//! hyper's HTTP/1 header-read timeout starts only once hyper-util's
//! automatic protocol detection has seen enough bytes to choose HTTP/1.1 or
//! HTTP/2; until then nothing bounds the wait, so a client that connects (and
//! finishes TLS) but never sends a byte would hold its connection forever.
//! This wrapper fails reads once the deadline passes while the bytes read so
//! far could still be the start of the HTTP/2 preface (and nothing else has
//! been read); as soon as they cannot (HTTP/1.1, where hyper's own timer takes
//! over), the whole preface has arrived, or the peer closed, it steps aside.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Sleep;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub struct FirstBytes<I> {
    io: I,
    /// `None` once the protocol is decided.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Bytes of the HTTP/2 preface matched so far.
    matched: usize,
}

impl<I> FirstBytes<I> {
    pub fn new(io: I, timeout: Duration) -> Self {
        Self {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            matched: 0,
        }
    }

    /// The connection, without the deadline.
    pub fn into_inner(self) -> I {
        self.io
    }

    /// Looks at newly read bytes; true while the protocol is still undecided.
    fn undecided_after(&mut self, new: &[u8]) -> bool {
        for &b in new {
            if self.matched == H2_PREFACE.len() || H2_PREFACE[self.matched] != b {
                return false;
            }
            self.matched += 1;
        }
        self.matched < H2_PREFACE.len()
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstBytes<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let had_room = buf.remaining() > 0;
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if this.deadline.is_none() {
            return result;
        }
        match &result {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                let eof = new.is_empty() && had_room;
                if eof || !this.undecided_after(new) {
                    this.deadline = None;
                }
            }
            Poll::Ready(Err(_)) => this.deadline = None,
            Poll::Pending => {
                if let Some(deadline) = this.deadline.as_mut()
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    this.deadline = None;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within the header read timeout",
                    )));
                }
            }
        }
        result
    }
}

crate::server::write_through!(FirstBytes);

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn silence_times_out_and_a_request_disarms_the_deadline() {
        let (_client, server) = tokio::io::duplex(64);
        let mut silent = FirstBytes::new(server, Duration::from_millis(50));
        let mut buf = [0u8; 16];
        let err = silent.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        let (mut client, server) = tokio::io::duplex(64);
        let mut h1 = FirstBytes::new(server, Duration::from_millis(50));
        client.write_all(b"GET").await.unwrap();
        assert_eq!(h1.read(&mut buf).await.unwrap(), 3);
        // The rest comes after the deadline, while a read is waiting.
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(80)).await;
            client.write_all(b" / HTTP/1.1").await.unwrap();
            client
        });
        assert_eq!(
            h1.read(&mut buf).await.unwrap(),
            11,
            "no deadline after GET"
        );
        drop(late.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_h2_preface_is_still_undecided() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = FirstBytes::new(server, Duration::from_millis(50));
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        let mut buf = [0u8; 32];
        assert_eq!(io.read(&mut buf).await.unwrap(), 10);
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
