//! What one client may hold or send on a listener: head sizes, deadlines, connections and
//! HTTP/2 streams. Defaults follow Envoy where Envoy has a default and the edge where it has
//! none (Envoy leaves headers and first-byte deadlines off; an edge gateway cannot).

use std::time::Duration;

/// Largest request head by default, in KiB (Envoy's `max_request_headers_kb`).
pub const DEFAULT_MAX_REQUEST_HEADERS_KB: u32 = 60;
/// Most header fields in a request by default (Envoy's `max_headers_count`).
pub const DEFAULT_MAX_REQUEST_HEADERS: u32 = 100;
/// Default deadline from accept to the first byte and a known protocol.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default deadline from the first byte of an HTTP/1.1 request head to its end.
pub const DEFAULT_REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a connection may carry no request. Above the 60 s idle timeout of the cloud
/// load balancers that sit in front of gateways, so they, not we, close idle connections: a
/// gateway that closes first races their next request.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// Streams an HTTP/2 client may have open at once by default (Envoy's edge recommendation).
pub const DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Streams an HTTP/2 client may reset within [`RESET_WINDOW`] by default.
pub const DEFAULT_HTTP2_MAX_RESETS: u32 = 200;
/// Longest wait, by default, before a connection from an address that recently broke a limit
/// is read (see `server::offenders`).
pub const DEFAULT_TARPIT: Duration = Duration::from_secs(1);
/// The window over which client stream resets are counted.
pub const RESET_WINDOW: Duration = Duration::from_secs(10);
/// The smallest head limit: hyper's read buffer cannot be smaller.
pub const MIN_REQUEST_HEADERS_KB: u32 = 8;
/// Descriptors kept aside for the admin API, metrics, readiness, files and DNS when the
/// connection limit is derived from the descriptor limit.
const RESERVED_FDS: u64 = 256;

/// A listener's limits, as served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head in bytes: 431 beyond (HTTP/1.1), or the HTTP/2 header list size.
    pub max_head_bytes: usize,
    /// Most header fields in an HTTP/1.1 request: 431 beyond.
    pub max_headers: usize,
    /// From accept to the first byte and a known protocol (TLS: the handshake as well).
    pub first_byte_timeout: Duration,
    /// From the first byte of an HTTP/1.1 request head to its end.
    pub request_headers_timeout: Duration,
    /// How long a connection may carry no request (HTTP/1.1 between requests, HTTP/2 with no
    /// open stream).
    pub idle_timeout: Duration,
    /// Client connections open at once; at the limit the listener stops accepting.
    pub max_connections: usize,
    /// Streams an HTTP/2 client may have open at once.
    pub http2_max_concurrent_streams: u32,
    /// Streams an HTTP/2 client may reset within [`RESET_WINDOW`]; one more closes it.
    pub http2_max_resets: u32,
    /// Longest wait before a new connection from an address that recently broke one of these
    /// limits is read; zero: no wait.
    pub tarpit: Duration,
}

impl Limits {
    /// The defaults for a traffic listener, `max_connections` as given.
    pub fn listener(max_connections: usize) -> Self {
        Limits {
            max_head_bytes: DEFAULT_MAX_REQUEST_HEADERS_KB as usize * 1024,
            max_headers: DEFAULT_MAX_REQUEST_HEADERS as usize,
            first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
            request_headers_timeout: DEFAULT_REQUEST_HEADERS_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections,
            http2_max_concurrent_streams: DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS,
            http2_max_resets: DEFAULT_HTTP2_MAX_RESETS,
            tarpit: DEFAULT_TARPIT,
        }
    }

    /// The fixed limits of the admin API, metrics and readiness ports: small heads, few
    /// connections, the listener's deadlines.
    pub fn endpoint() -> Self {
        Limits {
            max_head_bytes: 16 * 1024,
            max_headers: 64,
            max_connections: 256,
            http2_max_concurrent_streams: 16,
            tarpit: Duration::ZERO,
            ..Limits::listener(256)
        }
    }
}

/// Raises this process's descriptor limit to its hard limit (as nginx's
/// `worker_rlimit_nofile` and Go's runtime do) and returns the soft limit now in force.
pub fn raise_descriptor_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!(error = %e, "cannot raise the descriptor limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// The connection limit per listener when the config sets none: the descriptor limit less a
/// reserve, halved (each client connection may hold an upstream one), shared between the
/// listeners.
pub fn derived_max_connections(descriptors: u64, listeners: usize) -> usize {
    let usable = descriptors.saturating_sub(RESERVED_FDS) / 2;
    let per = usable / listeners.max(1) as u64;
    usize::try_from(per).unwrap_or(usize::MAX).max(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_connection_limits_leave_room_for_upstreams() {
        assert_eq!(derived_max_connections(4096, 1), 1920);
        assert_eq!(derived_max_connections(4096, 2), 960);
        assert_eq!(derived_max_connections(1024, 1), 384);
        // A tiny limit still lets a few clients in.
        assert_eq!(derived_max_connections(100, 1), 16);
    }
}
