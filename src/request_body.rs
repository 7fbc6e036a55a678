//! The body of a client's request as the router sees it: read by hyper, or
//! by the server's own HTTP/1.1 path (`server/fast.rs`), which serves most
//! HTTP/1.1 requests itself and hands the router the same
//! `Request<RequestBody>` hyper's requests become.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt as _;
use http_body_util::combinators::BoxBody;

use crate::respond::BoxError;

pub enum RequestBody {
    /// No body (the own path's requests without `Content-Length`, or with 0).
    Empty,
    /// Read by hyper (HTTP/2, and HTTP/1.1 connections hyper serves).
    Hyper(hyper::body::Incoming),
    /// Read by the own HTTP/1.1 path, piece by piece as the router takes it.
    Own(BoxBody<Bytes, Infallible>),
}

impl RequestBody {
    pub fn own<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes, Error = Infallible> + Send + Sync + 'static,
    {
        Self::Own(body.boxed())
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Empty => "RequestBody::Empty",
            Self::Hyper(_) => "RequestBody::Hyper",
            Self::Own(_) => "RequestBody::Own",
        })
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Own(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Hyper(b) => b.is_end_stream(),
            Self::Own(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Hyper(b) => b.size_hint(),
            Self::Own(b) => b.size_hint(),
        }
    }
}
