//! Request framing, followed on the bytes hyper reads.
//!
//! Two request-smuggling shapes never reach the gate's service as such:
//! hyper reads a request that carries both `Content-Length` and
//! `Transfer-Encoding` as chunked and drops `Content-Length` (RFC 9112
//! §6.1 allows that, with a close after the answer), and it merges repeated
//! `Content-Length` headers of one value. A proxy in front that frames such a
//! message the other way sees another request boundary than hyper, which is
//! the whole attack; the gate refuses both outright, with 400 and a close.
//!
//! To see them, [`Framing`] follows HTTP/1.1 framing over the stream as it is
//! read: a request head (its lines found as hyper's parser finds them, see
//! [`scan_head`]), then its
//! body (a fixed length or chunks and trailers), then the next head. When a
//! head frames its body ambiguously it records that request's number in the
//! connection's [`Verdicts`], and the service, which counts the requests it
//! is handed, refuses that one and every later one. Whatever the watcher
//! cannot follow (the HTTP/2 preface, a head hyper will refuse anyway, the
//! bytes of an upgraded connection) switches it off for the connection:
//! hyper's own checks still stand there, and an upgraded connection is
//! handed no further requests. The cost is one vectorised search per line of
//! each request head; bodies are skipped by counting.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Headers parsed per head; a head with more is refused by hyper (431).
const MAX_HEADERS: usize = 128;
/// The longest chunk-size or trailer line followed.
const MAX_LINE: usize = 4096;

/// What the watcher found out, shared with the connection's service.
#[derive(Debug)]
pub struct Verdicts {
    /// Number (from 0) of the first request with an ambiguous head.
    first_ambiguous: AtomicU64,
    /// Requests handed to the service so far.
    handed: AtomicU64,
}

impl Default for Verdicts {
    fn default() -> Self {
        Self {
            first_ambiguous: AtomicU64::new(u64::MAX),
            handed: AtomicU64::new(0),
        }
    }
}

impl Verdicts {
    /// Called once per request, in order, by the service: true when this
    /// request (or one before it on the connection) framed its body
    /// ambiguously. HTTP/2 streams count too, but the watcher is off there.
    pub fn next_is_ambiguous(&self) -> bool {
        let n = self.handed.fetch_add(1, Ordering::Relaxed);
        n >= self.first_ambiguous.load(Ordering::Acquire)
    }

    fn ambiguous(&self, request: u64) {
        self.first_ambiguous.fetch_min(request, Ordering::Release);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a request head.
    Head,
    /// This many body bytes still to come.
    Fixed(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// This many bytes of chunk data still to come.
    ChunkData(u64),
    /// Reading the line end after chunk data.
    ChunkEnd,
    /// Reading trailer lines, up to an empty one.
    Trailers,
    /// Not following this connection any more.
    Off,
}

pub struct Framing<I> {
    io: I,
    state: State,
    /// A head or line that spans reads, so far.
    partial: Vec<u8>,
    /// The number of the request whose head comes next.
    request: u64,
    /// Largest request head followed (`CT_MAX_HEADER_BYTES`).
    max_head: usize,
    verdicts: std::sync::Arc<Verdicts>,
}

impl<I> Framing<I> {
    pub fn new(io: I, max_head: usize, verdicts: std::sync::Arc<Verdicts>) -> Self {
        Self {
            io,
            state: State::Head,
            partial: Vec::new(),
            request: 0,
            max_head,
            verdicts,
        }
    }

    /// The connection, once nothing more is to be followed (it switched
    /// protocols). The watcher holds no bytes of the connection's own.
    pub fn into_inner(self) -> I {
        self.io
    }

    /// Follows newly read bytes.
    fn feed(&mut self, mut input: &[u8]) {
        while !input.is_empty() {
            let used = match self.state {
                State::Off => return,
                State::Head => self.head(input),
                State::Fixed(left) => self.skip(left, input.len(), State::Head, State::Fixed),
                State::ChunkData(left) => {
                    self.skip(left, input.len(), State::ChunkEnd, State::ChunkData)
                }
                State::ChunkSize | State::ChunkEnd | State::Trailers => self.line(input),
            };
            input = &input[used.min(input.len())..];
        }
    }

    /// Skips up to `left` body bytes of the `available` read; then `done`,
    /// or `more(still left)`. Returns the bytes used.
    fn skip(&mut self, left: u64, available: usize, done: State, more: fn(u64) -> State) -> usize {
        let n = left.min(available as u64);
        self.state = match left - n {
            0 => done,
            rest => more(rest),
        };
        // n ≤ available, so it fits.
        usize::try_from(n).unwrap_or(available)
    }

    /// Reads (part of) a request head; returns the bytes of `input` used.
    fn head(&mut self, input: &[u8]) -> usize {
        let before = self.partial.len();
        if before > 0 {
            let room = self.max_head.saturating_sub(before);
            self.partial
                .extend_from_slice(&input[..input.len().min(room)]);
        }
        let data = if before > 0 { &self.partial[..] } else { input };
        match scan_head(data) {
            Ok(Some((len, next))) => {
                if next == Next::Ambiguous {
                    self.verdicts.ambiguous(self.request);
                }
                self.state = match next {
                    Next::Ambiguous | Next::Unknown => State::Off,
                    Next::Empty => State::Head,
                    Next::Fixed(n) => State::Fixed(n),
                    Next::Chunked => State::ChunkSize,
                };
                self.request += 1;
                self.partial.clear();
                len.saturating_sub(before)
            }
            Ok(None) => {
                if before == 0 {
                    if input.len() >= self.max_head {
                        self.state = State::Off;
                    } else {
                        self.partial.extend_from_slice(input);
                    }
                } else if self.partial.len() >= self.max_head {
                    // hyper answers 431 to a head this long.
                    self.off();
                }
                input.len()
            }
            Err(_) => {
                // Not a request hyper will serve (or not HTTP/1 at all).
                self.off();
                input.len()
            }
        }
    }

    /// Reads (part of) a chunk-size, chunk-end or trailer line.
    fn line(&mut self, input: &[u8]) -> usize {
        let Some(end) = input.iter().position(|&b| b == b'\n') else {
            if self.partial.len() + input.len() > MAX_LINE {
                self.off();
            } else {
                self.partial.extend_from_slice(input);
            }
            return input.len();
        };
        let used = end + 1;
        let whole: &[u8] = if self.partial.is_empty() {
            &input[..used]
        } else {
            self.partial.extend_from_slice(&input[..used]);
            &self.partial
        };
        self.state = match self.state {
            State::ChunkSize => match httparse::parse_chunk_size(whole) {
                Ok(httparse::Status::Complete((_, 0))) => State::Trailers,
                Ok(httparse::Status::Complete((_, size))) => State::ChunkData(size),
                _ => State::Off,
            },
            State::ChunkEnd => State::ChunkSize,
            // An empty line ends the trailers, and the message.
            _ if whole == b"\r\n" || whole == b"\n" => State::Head,
            other => other,
        };
        self.partial.clear();
        used
    }

    fn off(&mut self) {
        self.state = State::Off;
        self.partial = Vec::new();
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Both Content-Length and Transfer-Encoding, or Content-Length twice.
    Ambiguous,
    /// A head hyper refuses (bad length, an encoding other than chunked last).
    Unknown,
    Empty,
    Fixed(u64),
    Chunked,
}

/// Reads a request head at the start of `data`: `Ok(None)` while it is
/// incomplete, else its length (with any blank lines before it) and how its
/// body is framed; `Err` for bytes hyper does not serve as a request head.
///
/// Not a validating parser: every head hyper accepts (httparse, strict, as
/// hyper configures it for requests) is read exactly as hyper reads it, and
/// for anything hyper refuses hyper answers 400 and closes the connection,
/// so what this makes of it never matters. That lets one vectorised search
/// for each line end do, instead of a second full parse of every head: a
/// request line ends with its version; a header line is a name, `:` and a
/// value, and a valid head has no line break inside a line (no obs-fold in
/// requests); lines end with CRLF or a bare LF; a blank line ends the head.
fn scan_head(data: &[u8]) -> Result<Option<(usize, Next)>, ()> {
    // Blank lines before a request are skipped (RFC 9112 §2.2), as httparse does.
    let mut at = 0;
    loop {
        match data.get(at..) {
            Some([b'\r', b'\n', ..]) => at += 2,
            Some([b'\n', ..]) => at += 1,
            Some([] | [b'\r']) | None => return Ok(None),
            Some([b'\r', _, ..]) => return Err(()),
            Some(_) => break,
        }
    }
    // The method, a token, is checked as it arrives: the frames after a
    // WebSocket upgrade, or any other protocol, switch the watcher off at
    // once instead of being held as a head that never ends.
    let rest = &data[at..];
    let method = &rest[..memchr::memchr(b' ', rest).unwrap_or(rest.len())];
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(());
    }
    let Some((request_line, mut at)) = next_line(data, at) else {
        return Ok(None);
    };
    let version = match request_line {
        [
            ..,
            b' ',
            b'H',
            b'T',
            b'T',
            b'P',
            b'/',
            b'1',
            b'.',
            minor @ (b'0' | b'1'),
        ] => minor - b'0',
        _ => return Err(()),
    };
    let mut framing = FramingHeaders::default();
    let mut count = 0usize;
    loop {
        let Some((line, next)) = next_line(data, at) else {
            return Ok(None);
        };
        at = next;
        if line.is_empty() {
            return Ok(Some((at, framing.next(version))));
        }
        count += 1;
        if count > MAX_HEADERS {
            // hyper answers 431.
            return Err(());
        }
        let colon = memchr::memchr(b':', line).ok_or(())?;
        framing.header(&line[..colon], line[colon + 1..].trim_ascii());
    }
}

/// A token character (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The line starting at `from`, without its CRLF or LF, and where the next
/// one starts; `None` when its end has not arrived.
fn next_line(data: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let rest = data.get(from..)?;
    let end = memchr::memchr(b'\n', rest)?;
    let line = &rest[..end];
    Some((line.strip_suffix(b"\r").unwrap_or(line), from + end + 1))
}

/// The framing headers of one head, as they are read.
#[derive(Default)]
struct FramingHeaders {
    lengths: usize,
    length: Option<u64>,
    /// A `Content-Length` that is not one number: a list ("1, 1") or junk.
    bad_length: Option<Next>,
    encoded: bool,
    chunked_last: bool,
}

impl FramingHeaders {
    fn header(&mut self, name: &[u8], value: &[u8]) {
        if name.eq_ignore_ascii_case(b"content-length") {
            self.lengths += 1;
            self.length = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            if self.length.is_none() && self.bad_length.is_none() {
                // "1, 1" and the like are a list of lengths: ambiguous too.
                self.bad_length = Some(if value.contains(&b',') {
                    Next::Ambiguous
                } else {
                    Next::Unknown
                });
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.encoded = true;
            self.chunked_last = value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
    }

    /// How the body after the head is framed (RFC 9112 §6.3, for requests);
    /// `minor` is the HTTP/1 minor version.
    fn next(self, minor: u8) -> Next {
        if let Some(bad) = self.bad_length {
            return bad;
        }
        if self.lengths > 1 || (self.lengths == 1 && self.encoded) {
            return Next::Ambiguous;
        }
        match (self.encoded, self.length) {
            (true, _) if self.chunked_last && minor == 1 => Next::Chunked,
            (true, _) => Next::Unknown,
            (false, Some(0) | None) => Next::Empty,
            (false, Some(n)) => Next::Fixed(n),
        }
    }
}

/// [`scan_head`] against httparse, as hyper configures it for requests (for
/// the property tests and the `framing` fuzz target): wherever httparse
/// reads a complete head, the scanner must read it to the same length and
/// framing (worked out from httparse's own headers); wherever httparse wants
/// more, the scanner must wait too, or the watcher would stop following a
/// connection hyper goes on serving. Where httparse refuses, hyper answers
/// 400 and closes, so any answer will do.
#[doc(hidden)]
pub fn scan_for_fuzzing(data: &[u8]) -> Result<(), String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let scanned = scan_head(data);
    match req.parse(data) {
        Ok(httparse::Status::Complete(len)) => {
            let mut framing = FramingHeaders::default();
            for h in req.headers.iter() {
                framing.header(h.name.as_bytes(), h.value);
            }
            let expected = Ok(Some((len, framing.next(req.version.unwrap_or(0)))));
            if scanned == expected {
                Ok(())
            } else {
                Err(format!("scanned {scanned:?}, httparse {expected:?}"))
            }
        }
        Ok(httparse::Status::Partial) if scanned != Ok(None) => {
            Err(format!("scanned {scanned:?}, httparse wants more"))
        }
        _ => Ok(()),
    }
}

/// The length of the request head at the start of `data` and of its body,
/// when the watcher reads the head as complete and its body as none (0) or
/// of a fixed length (for the `fast_path` fuzz target).
pub(super) fn fixed_head(data: &[u8]) -> Option<(usize, u64)> {
    match scan_head(data) {
        Ok(Some((len, Next::Empty))) => Some((len, 0)),
        Ok(Some((len, Next::Fixed(n)))) => Some((len, n)),
        _ => None,
    }
}

/// The watcher fed `reads` in turn (for the `framing` fuzz target): how
/// many request heads it followed, and the verdict on each of them.
#[doc(hidden)]
pub fn follow_for_fuzzing(reads: &[&[u8]], max_head: usize) -> (u64, Vec<bool>) {
    let verdicts = std::sync::Arc::new(Verdicts::default());
    let mut watcher = Framing::new((), max_head, verdicts.clone());
    for read in reads {
        watcher.feed(read);
    }
    let seen = (0..watcher.request.min(64))
        .map(|_| verdicts.next_is_ambiguous())
        .collect();
    (watcher.request, seen)
}

impl<I: AsyncRead + Unpin> AsyncRead for Framing<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &result
            && this.state != State::Off
        {
            this.feed(&buf.filled()[before..]);
        }
        result
    }
}

crate::server::write_through!(Framing);

#[cfg(test)]
mod tests;
