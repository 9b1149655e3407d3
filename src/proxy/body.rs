//! The response body the gateway sends: an upstream's stream or a short fixed text, and the
//! recording of the request in metrics once its last byte has gone out.

use super::flags::Flags;
use super::idle::{is_stream_idle, IdleBody};
use crate::http1::fields::{Fields, WithFields};
use crate::metrics::analysis::{now_secs, Window};
use crate::metrics::istio::{grpc_status_label, DestinationMetrics, Sample};
use crate::upstream::{h1, BoxError, PooledBody};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Response body to the client. No box: a response costs no allocation.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    recorder: Option<Recorder>,
}

// Unboxed on purpose: boxing the upstream's stream would cost an allocation per response.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Kind {
    /// Streamed from the upstream, under the stream idle timeout.
    Upstream(IdleBody<PooledBody>),
    /// A fixed body (errors, local answers); `None` once sent.
    Fixed(Full<Bytes>),
}

/// Records one request when its response ends: in the destination's Istio series and in the
/// route's analysis window.
#[derive(Debug)]
pub struct Recorder {
    /// The destination's series.
    pub metrics: Arc<DestinationMetrics>,
    /// The route's window for that destination.
    pub window: Option<Arc<Window>>,
    /// When the request arrived.
    pub start: Instant,
    /// Status sent.
    pub code: u16,
    /// Request head and body size.
    pub request_bytes: u64,
    /// Response head size so far; body bytes are added as they are sent.
    pub response_bytes: u64,
    /// `http` or `grpc`.
    pub protocol: &'static str,
    /// gRPC status, once the response's headers or trailers have given it.
    pub grpc_status: &'static str,
    /// The flags of an answer that ends well: none, or `URX` when retries ran out on it.
    pub done_flags: Flags,
}

impl Recorder {
    /// A failure for canary analysis: a 5xx, or a gRPC status that maps to one (UNKNOWN,
    /// DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS), since a gRPC
    /// failure travels in an HTTP 200.
    fn failed(&self) -> bool {
        self.code >= 500 || matches!(self.grpc_status, "2" | "4" | "12" | "13" | "14" | "15")
    }

    /// Records the request with `flags` (none when it went well).
    pub fn finish(self, flags: Flags) {
        let duration_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        self.metrics.record(&Sample {
            code: self.code,
            flags: flags.as_str(),
            protocol: self.protocol,
            grpc_status: self.grpc_status,
            duration_ms,
            request_bytes: self.request_bytes,
            response_bytes: self.response_bytes,
        });
        if let Some(w) = &self.window {
            w.record(now_secs(), self.failed(), duration_ms);
        }
    }
}

/// The flag of an upstream body that failed mid-way: it stalled (`SI`), broke its own framing
/// (`UPE`), or its connection broke (`UC`).
fn body_failure(e: &(dyn std::error::Error + 'static)) -> Flags {
    if is_stream_idle(e) {
        return Flags::SI;
    }
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(h1::Error::BadBody(_)) = c.downcast_ref::<h1::Error>() {
            return Flags::UPE;
        }
        cause = c.source();
    }
    Flags::UC
}

/// The `grpc-status` of a header block (trailers, or the headers of a trailers-only answer)
/// for a request of `protocol`: `None` unless it is `grpc`, whatever the block carries, since
/// Istio's `grpc_response_status` is `""` for other requests.
pub fn grpc_status(protocol: &str, headers: &http::HeaderMap) -> Option<&'static str> {
    if protocol != "grpc" {
        return None;
    }
    headers
        .get("grpc-status")
        .map(|v| grpc_status_label(v.as_bytes()))
}

impl ProxyBody {
    /// A stream from the upstream, recorded by `recorder` when it ends, and cut off when it
    /// makes no progress for `idle` (`SI`).
    pub fn upstream(body: PooledBody, recorder: Option<Recorder>, idle: Option<Duration>) -> Self {
        ProxyBody {
            kind: Kind::Upstream(IdleBody::new(body, idle)),
            recorder,
        }
    }

    /// A fixed body.
    pub fn fixed(b: impl Into<Bytes>) -> Self {
        ProxyBody {
            kind: Kind::Fixed(Full::new(b.into())),
            recorder: None,
        }
    }

    fn done_flags(&self) -> Flags {
        self.recorder.as_ref().map_or(Flags::NONE, |r| r.done_flags)
    }

    fn finish(&mut self, flags: Flags) {
        if let Some(r) = self.recorder.take() {
            r.finish(flags);
        }
    }

    /// Records the request as its body ends here: as sent, when it was; else the client went
    /// away (Envoy's DC). A body already complete may end unread (204, HEAD, empty).
    fn record_end(&mut self) {
        let flags = match &self.recorder {
            Some(r) if self.is_end_stream() => r.done_flags,
            Some(r) => r.done_flags | Flags::DC,
            None => Flags::DC,
        };
        self.finish(flags);
    }
}

/// An upstream answer's fields as text, when they were kept so: the response's own header
/// map holds only what the gateway adds then, and the server writes these before it.
impl WithFields for ProxyBody {
    fn fields(&self) -> Option<&Fields> {
        match &self.kind {
            Kind::Upstream(b) => b.get_ref().fields(),
            Kind::Fixed(_) => None,
        }
    }

    fn release(&mut self) {
        self.record_end();
        self.kind = Kind::Fixed(Full::default());
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        self.record_end();
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Upstream(b) => Pin::new(b).poll_frame(cx),
            Kind::Fixed(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|never| match never {}))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(r) = &mut this.recorder {
                    if let Some(data) = frame.data_ref() {
                        r.response_bytes += data.len() as u64;
                    } else if let Some(status) = frame
                        .trailers_ref()
                        .and_then(|t| grpc_status(r.protocol, t))
                    {
                        r.grpc_status = status;
                    }
                }
                if this.is_end_stream() {
                    this.finish(this.done_flags());
                }
            }
            Poll::Ready(None) => this.finish(this.done_flags()),
            // The upstream broke off, or stalled past the stream idle timeout, mid-body.
            Poll::Ready(Some(Err(e))) => this.finish(this.done_flags() | body_failure(&**e)),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(b) => b.is_end_stream(),
            Kind::Fixed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(b) => b.size_hint(),
            Kind::Fixed(b) => b.size_hint(),
        }
    }
}
