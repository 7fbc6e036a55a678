//! A client connection taken back from hyper once it has switched protocols
//! (a WebSocket upgrade).
//!
//! hyper hands an upgraded connection over as [`Upgraded`]: a boxed,
//! type-erased stream that puts the bytes hyper read past the request head
//! back in front, over the layers the gate served the connection through
//! ([`HyperIo`]). Every read and write of a relayed WebSocket went through
//! all of them: hyper's and hyper-util's read-buffer conversions, the
//! dynamic dispatch, each layer's pass-through. So the relay takes the
//! connection back out of them ([`Upgraded::downcast`]) and reads it
//! directly, with hyper's unread bytes, and then any the own path read that
//! hyper never asked for, first: about 4–6 % fewer instructions per relayed
//! message (`benches/load/instructions.sh`; figures in
//! `benches/load/README.md`). A connection of any other type
//! (one hyper-util's protocol detection served, an HTTP/2 stream) is
//! relayed as hyper hands it over.

use bytes::BytesMut;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::fast::Prefixed;
use super::first_bytes::FirstBytes;
use super::framing::Framing;
use crate::tcp::Tcp;

/// What hyper serves a connection the own HTTP/1.1 path handed over on.
pub type HyperIo<I> = TokioIo<Framing<FirstBytes<Prefixed<I>>>>;

/// A switched client connection, ready to relay.
pub enum SwitchedClient {
    /// Plain TCP, with the bytes read and not yet relayed in front, read
    /// and written with direct system calls ([`Tcp`]).
    Plain(Prefixed<Tcp>),
    /// TLS, likewise (boxed: rustls' connection state is over a kilobyte).
    Tls(Box<Prefixed<TlsStream<TcpStream>>>),
    /// Any other connection, as hyper hands it over.
    Hyper(TokioIo<Upgraded>),
}

/// Takes the connection hyper switched back out of the layers it was
/// served through.
pub fn take_back(upgraded: Upgraded) -> SwitchedClient {
    let upgraded = match upgraded.downcast::<HyperIo<TcpStream>>() {
        Ok(parts) => {
            return SwitchedClient::Plain(out_of_layers(parts.io, parts.read_buf, Tcp::new));
        }
        Err(upgraded) => upgraded,
    };
    match upgraded.downcast::<HyperIo<TlsStream<TcpStream>>>() {
        Ok(parts) => {
            SwitchedClient::Tls(Box::new(out_of_layers(parts.io, parts.read_buf, |tls| tls)))
        }
        Err(upgraded) => SwitchedClient::Hyper(TokioIo::new(upgraded)),
    }
}

/// The connection under `io`, with hyper's unread bytes (`unread`, which
/// came first) and then those the own path read that hyper never took.
/// Both are copied out (they are rare: what a client sends right behind its
/// upgrade request), so that neither hyper's read buffer nor the own
/// path's, which they are slices of, is kept for the connection's life: an
/// idle WebSocket holds no buffer. `relay_as` gives the connection the
/// type it is relayed through.
fn out_of_layers<I, R>(
    io: HyperIo<I>,
    unread: bytes::Bytes,
    relay_as: impl FnOnce(I) -> R,
) -> Prefixed<R> {
    let (left, io) = io.into_inner().into_inner().into_inner().into_parts();
    let mut read = BytesMut::with_capacity(unread.len() + left.len());
    read.extend_from_slice(&unread);
    read.extend_from_slice(&left);
    Prefixed::new(read, relay_as(io))
}

#[cfg(test)]
mod tests;
