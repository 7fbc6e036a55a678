//! The WebSocket relay: one future that owns both switched connections and
//! copies bytes each way, read by read, with one write per read.
//!
//! The bytes are not decoded: the relay only keeps count of where the frames
//! it sent to the client begin and end ([`Frames`]), so that when the
//! session's guard fires it can finish the frame in progress, put a close
//! frame (1008, policy violation) after it and drop both connections. A
//! frame that does not finish within [`HARD_STOP`] of that is cut off.
//!
//! One future and no tasks, locks or channels of its own: each read goes
//! into the thread's scratch buffer and is written on from there, and each
//! direction holds a buffer only while the other side is slow to take its
//! bytes ([`InFlight`]); and each direction and the guard is polled only
//! when something it waits on woke it ([`WakeFlag`], [`Watch`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Sleep;

use super::cutoff::{Guard, Watch};
use super::lazy_buf::{InFlight, poll_read_scratch};
use super::wake_flag::WakeFlag;

/// After the guard fires, how long a frame in progress may take to finish
/// before both sides are simply dropped.
pub const HARD_STOP: Duration = Duration::from_secs(3);
/// Close frame, server to client (unmasked): code 1008, reason "session ended".
pub const CLOSE_1008: [u8; 17] = *b"\x88\x0f\x03\xf0session ended";

/// Relays between `client` and `upstream` until both have ended, either
/// fails, or the guard fires and the client has its close frame.
pub fn relay<C, U>(client: C, upstream: U, guard: Option<Guard>) -> Relay<C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    Relay {
        client,
        upstream,
        up: Leg::default(),
        down: Leg::default(),
        frames: Frames::default(),
        guard: guard.map(Watch::new),
        stop: Stop::No,
        up_wake: WakeFlag::default(),
        down_wake: WakeFlag::default(),
    }
}

pub struct Relay<C, U> {
    client: C,
    upstream: U,
    /// Client to upstream.
    up: Leg,
    /// Upstream to client; `frames` counts its frames as they are written.
    down: Leg,
    frames: Frames,
    guard: Option<Watch>,
    stop: Stop,
    /// Each direction is polled only when something it waits on woke it.
    up_wake: WakeFlag,
    down_wake: WakeFlag,
}

enum Stop {
    No,
    /// The guard fired: finishing the frame in progress, by the deadline.
    Finishing(Pin<Box<Sleep>>),
    /// At a frame boundary: writing the close frame (this much of it sent).
    Closing(Pin<Box<Sleep>>, usize),
}

/// One direction.
#[derive(Default)]
struct Leg {
    bytes: InFlight,
    /// Bytes were written since the last flush.
    unflushed: bool,
    state: LegState,
}

#[derive(Default, PartialEq, Eq)]
enum LegState {
    #[default]
    Open,
    /// The reading side ended: shutting the writing side down.
    ShuttingDown,
    Done,
}

/// Why a leg stopped copying.
enum Copied {
    /// The reading side ended and the writing side is shut down.
    Ended,
    /// Asked to stop at a frame boundary, and there.
    AtBoundary,
}

impl Leg {
    /// Copies until `from` ends, or, with `frames` and `stopping`, until
    /// the next frame boundary.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        mut frames: Option<&mut Frames>,
        stopping: bool,
    ) -> Poll<io::Result<Copied>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            match self.state {
                LegState::Open => {}
                LegState::ShuttingDown => {
                    ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
                    self.state = LegState::Done;
                    return Poll::Ready(Ok(Copied::Ended));
                }
                LegState::Done => return Poll::Ready(Ok(Copied::Ended)),
            }
            let pending = self.bytes.pending();
            if !pending.is_empty() {
                let n = ready!(poll_write_frames(
                    cx,
                    to,
                    pending,
                    frames.as_deref_mut(),
                    stopping
                ))?;
                if n == 0 {
                    return self.poll_stopped(cx, to);
                }
                self.bytes.consume(n);
                self.unflushed = true;
                continue;
            }
            if stopping && frames.as_deref().is_some_and(Frames::at_boundary) {
                return self.poll_stopped(cx, to);
            }
            // Nothing kept: read, and write straight on from the scratch
            // buffer; only what `to` does not take at once is kept.
            let kept = &mut self.bytes;
            let read = poll_read_scratch(cx, from, |cx, read| {
                let written = match poll_write_frames(cx, to, read, frames.as_deref_mut(), stopping)
                {
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => 0,
                };
                kept.keep(&read[written..]);
                Ok(written)
            });
            match read {
                Poll::Ready(Ok(Some(Ok(written)))) => self.unflushed |= written > 0,
                Poll::Ready(Ok(Some(Err(e))) | Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(None)) => self.state = LegState::ShuttingDown,
                Poll::Pending => {
                    ready!(self.poll_flush(cx, to))?;
                    return Poll::Pending;
                }
            }
        }
    }

    /// At a boundary: what was written is flushed, and the leg stops there.
    fn poll_stopped<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        to: &mut W,
    ) -> Poll<io::Result<Copied>> {
        ready!(self.poll_flush(cx, to))?;
        Poll::Ready(Ok(Copied::AtBoundary))
    }

    fn poll_flush<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        to: &mut W,
    ) -> Poll<io::Result<()>> {
        if self.unflushed {
            ready!(Pin::new(to).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    fn done(&self) -> bool {
        self.state == LegState::Done
    }
}

/// One write of `bytes` to `to`, with `frames` and `stopping` only up to
/// the next frame boundary; the bytes written are counted in `frames`.
/// `Ready(Ok(0))` only at that boundary: nothing more may be written.
fn poll_write_frames<W: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    to: &mut W,
    bytes: &[u8],
    frames: Option<&mut Frames>,
    stopping: bool,
) -> Poll<io::Result<usize>> {
    let writable = match frames.as_deref() {
        Some(frames) if stopping => frames.until_boundary(bytes),
        _ => bytes.len(),
    };
    if writable == 0 {
        return Poll::Ready(Ok(0));
    }
    let n = ready!(Pin::new(to).poll_write(cx, &bytes[..writable]))?.min(writable);
    if n == 0 {
        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
    }
    if let Some(frames) = frames {
        frames.advance(&bytes[..n]);
    }
    Poll::Ready(Ok(n))
}

impl<C, U> Future for Relay<C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if matches!(this.stop, Stop::No) && this.guard.as_mut().is_some_and(|g| g.poll_fired(cx)) {
            this.guard = None;
            this.stop = Stop::Finishing(Box::pin(tokio::time::sleep(HARD_STOP)));
            // Look for the frame boundary now.
            this.down_wake.set();
        }
        match &mut this.stop {
            Stop::No => {}
            Stop::Finishing(deadline) | Stop::Closing(deadline, _) => {
                if deadline.as_mut().poll(cx).is_ready() {
                    tracing::debug!(
                        "websocket frame did not finish after its session ended; dropped"
                    );
                    return Poll::Ready(());
                }
            }
        }
        if !this.up.done() && this.up_wake.take(cx) {
            let mut up_cx = Context::from_waker(this.up_wake.waker());
            if let Poll::Ready(Err(e)) = this.up.poll_copy(
                &mut up_cx,
                &mut this.client,
                &mut this.upstream,
                None,
                false,
            ) {
                return ended(&e);
            }
        }
        if !this.down.done() && this.down_wake.take(cx) {
            let mut down_cx = Context::from_waker(this.down_wake.waker());
            if let Stop::No | Stop::Finishing(_) = this.stop {
                let stopping = matches!(this.stop, Stop::Finishing(_));
                match this.down.poll_copy(
                    &mut down_cx,
                    &mut this.upstream,
                    &mut this.client,
                    Some(&mut this.frames),
                    stopping,
                ) {
                    Poll::Ready(Ok(Copied::AtBoundary)) => {
                        let stop = std::mem::replace(&mut this.stop, Stop::No);
                        if let Stop::Finishing(deadline) = stop {
                            this.stop = Stop::Closing(deadline, 0);
                        }
                    }
                    Poll::Ready(Ok(Copied::Ended)) | Poll::Pending => {}
                    Poll::Ready(Err(e)) => return ended(&e),
                }
            }
            if let Stop::Closing(_, sent) = &mut this.stop {
                return match poll_close(&mut down_cx, &mut this.client, sent) {
                    Poll::Ready(Ok(())) => {
                        tracing::info!("websocket closed: its session ended");
                        Poll::Ready(())
                    }
                    Poll::Ready(Err(e)) => ended(&e),
                    Poll::Pending => Poll::Pending,
                };
            }
        }
        if this.up.done() && this.down.done() {
            return Poll::Ready(());
        }
        if !matches!(this.stop, Stop::No) && this.down.done() {
            // The client's side is already shut: no close frame to send.
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

fn ended(e: &io::Error) -> Poll<()> {
    tracing::debug!(error = %e, "websocket connection ended");
    Poll::Ready(())
}

/// Writes the rest of the close frame, flushes and shuts the client down.
fn poll_close<C: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    client: &mut C,
    sent: &mut usize,
) -> Poll<io::Result<()>> {
    while *sent < CLOSE_1008.len() {
        let n = ready!(Pin::new(&mut *client).poll_write(cx, &CLOSE_1008[*sent..]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        *sent += n;
    }
    ready!(Pin::new(&mut *client).poll_flush(cx))?;
    Pin::new(client).poll_shutdown(cx)
}

/// Where a stream of WebSocket frames stands: inside a frame's head (and
/// how much of it was seen), inside its payload (and how much is left), or
/// at a boundary between two frames.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Frames {
    head: [u8; 14],
    have: u8,
    left: u64,
}

impl Frames {
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    /// Takes in bytes that follow the stream so far.
    pub fn advance(&mut self, bytes: &[u8]) {
        self.eat(bytes, false);
    }

    /// How many of `bytes` (which follow the stream so far) finish the
    /// frame in progress: 0 at a boundary, all of them if they do not.
    pub fn until_boundary(&self, bytes: &[u8]) -> usize {
        let mut ahead = *self;
        ahead.eat(bytes, true)
    }

    /// Takes in `bytes`, or with `stop` only up to the next boundary;
    /// returns how many it took.
    fn eat(&mut self, bytes: &[u8], stop: bool) -> usize {
        let mut i = 0;
        while i < bytes.len() {
            if stop && self.at_boundary() {
                break;
            }
            if self.left > 0 {
                let n =
                    usize::try_from(self.left).map_or(bytes.len() - i, |l| l.min(bytes.len() - i));
                self.left -= n as u64;
                i += n;
                continue;
            }
            self.head[usize::from(self.have)] = bytes[i];
            self.have += 1;
            i += 1;
            if let Some(payload) = payload_len(&self.head[..usize::from(self.have)]) {
                (self.have, self.left) = (0, payload);
            }
        }
        i
    }
}

/// A frame's payload length once its whole head is there (RFC 6455 §5.2:
/// two bytes, 0, 2 or 8 of extended length, 4 of mask if masked).
fn payload_len(head: &[u8]) -> Option<u64> {
    let second = *head.get(1)?;
    let (extended, short) = match second & 0x7f {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    if head.len() < 2 + extended + mask {
        return None;
    }
    Some(short.unwrap_or_else(|| {
        head[2..2 + extended]
            .iter()
            .fold(0u64, |len, b| (len << 8) | u64::from(*b))
    }))
}

#[cfg(test)]
mod tests;
