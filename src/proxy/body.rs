//! The response body the gateway sends: an upstream's stream, or a short fixed text.

use crate::upstream::PooledBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Response body to the client. An enum rather than a box, so a response costs no allocation.
#[derive(Debug)]
pub enum ProxyBody {
    /// Streamed from the upstream.
    Upstream(PooledBody),
    /// A fixed body (errors, local answers); `None` once sent.
    Fixed(Option<Bytes>),
}

impl ProxyBody {
    /// A fixed body.
    pub fn fixed(b: impl Into<Bytes>) -> Self {
        Self::Fixed(Some(b.into()))
    }

    /// No body.
    pub fn empty() -> Self {
        Self::Fixed(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Upstream(b) => Pin::new(b).poll_frame(cx),
            Self::Fixed(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream(b) => b.is_end_stream(),
            Self::Fixed(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream(b) => b.size_hint(),
            Self::Fixed(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
