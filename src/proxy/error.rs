//! Proxy failures, each mapped to Envoy's status code and response flag.

use super::flags::Flags;
use http::StatusCode;

/// Why the gateway answered instead of the upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route or rule matched.
    #[error("no route matched the request")]
    NoRoute,
    /// The chosen subset has no endpoints.
    #[error("the subset has no endpoints")]
    NoHealthyUpstream,
    /// Every endpoint tried refused or timed out the connection.
    #[error("upstream connect failed: {0}")]
    ConnectFailure(String),
    /// The upstream's response headers did not arrive within the rule's timeout.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The upstream connection broke before the response headers.
    #[error("upstream reset: {0}")]
    UpstreamReset(#[source] crate::upstream::BoxError),
    /// The upstream's answer broke HTTP/1.1: a head that does not parse, framing that
    /// contradicts itself, or a `101 Switching Protocols` to a request that asked no upgrade.
    #[error("upstream protocol error: {0}")]
    UpstreamProtocol(#[source] crate::upstream::BoxError),
    /// The last try failed as `0` says, and the retries the rule allows had all been spent on
    /// tries before it (Envoy adds `URX` to the last failure's flag).
    #[error("{0} (retries exhausted)")]
    RetriesExhausted(Box<ProxyError>),
    /// The client's request body broke off while the gateway was reading it.
    #[error("client body: {0}")]
    ClientBody(#[source] crate::upstream::BoxError),
    /// The client's request body made no progress for the stream idle timeout.
    #[error("the request body stalled")]
    StreamIdle,
    /// A protocol upgrade (websocket) asked of a service spoken to in HTTP/2.
    #[error("protocol upgrade to an HTTP/2 upstream")]
    UpgradeToHttp2,
    /// An HTTP/1.1 request without a Host header (RFC 9112 §3.2).
    #[error("HTTP/1.1 request without a Host header")]
    MissingHost,
    /// A request with more than one Host header (RFC 9112 §3.2).
    #[error("request with more than one Host header")]
    DuplicateHost,
    /// A protocol upgrade the route does not allow.
    #[error("protocol upgrade not allowed on the route")]
    UpgradeRefused,
    /// Every connection the endpoint may have was busy for the whole connect timeout.
    #[error("upstream connection limit reached: {0}")]
    UpstreamOverflow(String),
    /// A Host (header, absolute-form target or `:authority`) that is not `host[:port]`: a space,
    /// userinfo, or another byte an authority cannot hold (RFC 9110 §4.2.4 and §7.2).
    #[error("the Host is not a valid host[:port]")]
    InvalidHost,
    /// A request whose `transfer-encoding` is anything but one `chunked`, such as `gzip, chunked`
    /// (RFC 9112 §6.1: 501 for a coding the server does not implement).
    #[error("transfer coding other than chunked")]
    UnsupportedTransferCoding,
    /// A CONNECT request: the gateway is a reverse proxy and opens no tunnels.
    #[error("CONNECT is not served")]
    Connect,
    /// The client's request body broke its own framing (a malformed chunk): a downstream
    /// protocol error, where [`Self::ClientBody`] is a client that went away.
    #[error("malformed client body: {0}")]
    MalformedBody(#[source] crate::upstream::BoxError),
}

impl ProxyError {
    /// The failure of a client's request body: the stream idle timeout, a body whose framing
    /// is malformed, or one that broke off.
    pub fn client_body(e: crate::upstream::BoxError) -> Self {
        if super::idle::is_stream_idle(&*e) {
            Self::StreamIdle
        } else if is_malformed(&*e) {
            Self::MalformedBody(e)
        } else {
            Self::ClientBody(e)
        }
    }

    /// Envoy's status for this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::RetriesExhausted(last) => last.status(),
            Self::UpstreamProtocol(_) => StatusCode::BAD_GATEWAY,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::ClientBody(_) | Self::MissingHost | Self::DuplicateHost => {
                StatusCode::BAD_REQUEST
            }
            Self::NoHealthyUpstream | Self::ConnectFailure(_) | Self::UpstreamReset(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::StreamIdle => StatusCode::REQUEST_TIMEOUT,
            Self::UpgradeToHttp2 => StatusCode::BAD_GATEWAY,
            Self::UpgradeRefused => StatusCode::FORBIDDEN,
            Self::UpstreamOverflow(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::InvalidHost => StatusCode::BAD_REQUEST,
            Self::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            Self::Connect => StatusCode::FORBIDDEN,
            Self::MalformedBody(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Envoy's response flags for this failure.
    pub fn flags(&self) -> Flags {
        match self {
            Self::NoRoute => Flags::NR,
            Self::NoHealthyUpstream => Flags::UH,
            Self::ConnectFailure(_) => Flags::UF,
            Self::UpstreamTimeout => Flags::UT,
            Self::UpstreamReset(_) => Flags::UC,
            Self::UpstreamProtocol(_) => Flags::UPE,
            Self::RetriesExhausted(last) => last.flags() | Flags::URX,
            Self::ClientBody(_) => Flags::DC,
            Self::StreamIdle => Flags::SI,
            Self::UpgradeToHttp2 => Flags::UPE,
            Self::MissingHost | Self::DuplicateHost => Flags::DPE,
            // Envoy refuses an upgrade it is not configured for with a 403 and no flag.
            Self::UpgradeRefused => Flags::NONE,
            Self::UpstreamOverflow(_) => Flags::UO,
            Self::InvalidHost => Flags::DPE,
            Self::UnsupportedTransferCoding => Flags::DPE,
            // Envoy refuses an upgrade it is not configured for (CONNECT is one) without a flag.
            Self::Connect => Flags::NONE,
            Self::MalformedBody(_) => Flags::DPE,
        }
    }

    /// The gRPC status a gRPC client gets (Envoy's mapping of the HTTP status).
    pub fn grpc_status(&self) -> &'static str {
        match self {
            Self::RetriesExhausted(last) => last.grpc_status(),
            Self::NoRoute => "12",                           // UNIMPLEMENTED
            Self::UpstreamTimeout => "4",                    // DEADLINE_EXCEEDED
            Self::StreamIdle => "2",                         // UNKNOWN, as for any 408
            Self::ClientBody(_) => "13",                     // INTERNAL
            Self::UpgradeToHttp2 => "13",                    // INTERNAL
            Self::MissingHost | Self::DuplicateHost => "13", // INTERNAL
            Self::UpgradeRefused => "7",                     // PERMISSION_DENIED
            Self::InvalidHost => "13",                       // INTERNAL
            Self::UnsupportedTransferCoding => "12",         // UNIMPLEMENTED, as for any 501
            Self::Connect => "7",                            // PERMISSION_DENIED, as for any 403
            Self::MalformedBody(_) => "13",                  // INTERNAL
            _ => "14",                                       // UNAVAILABLE
        }
    }

    /// The body sent to the client: the flag and a fixed sentence (no request data reflected).
    pub fn body(&self) -> &'static str {
        match self {
            Self::RetriesExhausted(last) => last.body(),
            Self::UpstreamProtocol(_) => "UPE: the upstream's answer was not valid HTTP/1.1\n",
            Self::NoRoute => "NR: no route matched this request\n",
            Self::NoHealthyUpstream => "UH: no healthy upstream endpoint\n",
            Self::ConnectFailure(_) => "UF: could not connect to the upstream\n",
            Self::UpstreamTimeout => "UT: the upstream did not answer in time\n",
            Self::UpstreamReset(_) => "UC: the upstream connection closed before answering\n",
            Self::ClientBody(_) => "DC: the request body broke off\n",
            Self::StreamIdle => "SI: the request body stalled past the stream idle timeout\n",
            Self::UpgradeToHttp2 => {
                "UPE: protocol upgrades (websocket) need an HTTP/1.1 upstream; this one speaks HTTP/2\n"
            }
            Self::MissingHost => "DPE: an HTTP/1.1 request needs a Host header\n",
            Self::DuplicateHost => "DPE: the request has more than one Host header\n",
            Self::UpgradeRefused => {
                "upgrade refused: this route does not allow the protocol the Upgrade header asks for\n"
            }
            Self::UpstreamOverflow(_) => {
                "UO: the upstream is at a bound of its connection_pool, or its connections stayed busy\n"
            }
            Self::InvalidHost => "DPE: the Host is not a valid host[:port]\n",
            Self::UnsupportedTransferCoding => {
                "DPE: transfer codings other than chunked are not supported\n"
            }
            // No flag to start with (see `flag`).
            Self::Connect => {
                "CONNECT is not served: this gateway is a reverse proxy, not a forward proxy\n"
            }
            Self::MalformedBody(_) => "DPE: the request body's chunked framing is malformed\n",
        }
    }

    /// Whether the client's connection closes after this answer (HTTP/1.x): what follows the
    /// head can't be trusted to be the next request, whether a body of unknown framing or the
    /// bytes a CONNECT client sends into the tunnel it expects.
    pub fn closes_connection(&self) -> bool {
        matches!(self, Self::UnsupportedTransferCoding | Self::Connect)
    }
}

/// Whether a body error is the client's framing, not its going away. hyper's HTTP/1.1 decoder
/// reports a malformed chunk as `InvalidData` or `InvalidInput`, and a connection that ends
/// mid-body as `UnexpectedEof` (or the socket's own error).
fn is_malformed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            );
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn body_failures_are_told_apart() {
        let io = |kind| -> crate::upstream::BoxError { Box::new(io::Error::new(kind, "body")) };
        let malformed = ProxyError::client_body(io(io::ErrorKind::InvalidData));
        assert_eq!(
            (malformed.status(), malformed.flags()),
            (StatusCode::BAD_REQUEST, Flags::DPE)
        );
        let malformed = ProxyError::client_body(io(io::ErrorKind::InvalidInput));
        assert_eq!(malformed.flags(), Flags::DPE);
        for gone in [io::ErrorKind::UnexpectedEof, io::ErrorKind::ConnectionReset] {
            assert_eq!(
                ProxyError::client_body(io(gone)).flags(),
                Flags::DC,
                "{gone:?}"
            );
        }
        let idle = Box::new(super::super::idle::StreamIdle(
            std::time::Duration::from_secs(1),
        ));
        assert_eq!(ProxyError::client_body(idle).flags(), Flags::SI);
    }
}
