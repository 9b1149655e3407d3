//! The body of a client's request as the proxy reads it: from the gateway's own HTTP/1.1
//! connection, or from one of its HTTP/2 streams.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Boxed error of a request body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where an HTTP/1.1 request body is read from: the connection that carried its head. The
/// connection decodes the body's framing (length or chunked); a malformed chunk is an
/// `InvalidData` error, and a connection that ends mid-body `UnexpectedEof`.
pub trait Source: Send + Sync {
    /// The next frame of the body, as [`Body::poll_frame`].
    fn poll_frame(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>>;
    /// Whether the body has ended.
    fn is_end_stream(&self) -> bool;
    /// What is known of the length left.
    fn size_hint(&self) -> SizeHint;
}

/// A client's request body.
pub struct RequestBody(Kind);

enum Kind {
    /// No body (or its end was reached before it was handed on).
    Empty,
    /// Read from the connection of the gateway's own server (HTTP/1.1, or an HTTP/2 stream).
    Source(Arc<dyn Source>),
}

impl RequestBody {
    /// No body.
    pub fn empty() -> Self {
        RequestBody(Kind::Empty)
    }

    /// A body read from an HTTP/1.1 connection.
    pub fn http1(source: Arc<dyn Source>) -> Self {
        RequestBody(Kind::Source(source))
    }

    /// A body fed by the gateway's own HTTP/2 server.
    pub fn stream(source: Arc<dyn Source>) -> Self {
        RequestBody(Kind::Source(source))
    }
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.0 {
            Kind::Empty => "empty",
            Kind::Source(_) => "streamed",
        };
        f.debug_tuple("RequestBody").field(&kind).finish()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Kind::Empty => Poll::Ready(None),
            Kind::Source(source) => source.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Empty => true,
            Kind::Source(source) => source.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Source(source) => source.size_hint(),
        }
    }
}
