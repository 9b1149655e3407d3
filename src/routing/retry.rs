//! A rule's retry policy, as Istio's `HTTPRetry` sets Envoy's: how many more attempts a
//! request gets, on which failures, each bounded by a per-try timeout.

use std::time::Duration;

/// Istio's default `retryOn`.
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
/// Istio's default attempts (retries after the first try).
pub const DEFAULT_ATTEMPTS: u32 = 2;
/// Istio's default retriable status codes.
pub const DEFAULT_CODES: [u16; 1] = [503];
/// More than this many retries is refused: each one is another request to the subset.
pub const MAX_ATTEMPTS: u32 = 10;

/// On what a retry happens (Envoy's `retry_on` conditions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// Any 5xx answer (and a per-try timeout).
    pub five_xx: bool,
    /// 502, 503 and 504 (and a per-try timeout).
    pub gateway_error: bool,
    /// An answer whose status is one of [`Retry::codes`].
    pub retriable_status_codes: bool,
    /// An answer whose `grpc-status` is 14 (unavailable).
    pub unavailable: bool,
    /// An answer whose `grpc-status` is 1 (cancelled).
    pub cancelled: bool,
    /// A connection that broke before the answer's head (and a per-try timeout).
    pub reset: bool,
}

/// A rule's retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Retries after the first try; 0: none.
    pub attempts: u32,
    /// Bound on each try's wait for the answer's head; `None`: the rule's timeout only.
    pub per_try_timeout: Option<Duration>,
    /// On what.
    pub on: RetryOn,
    /// The statuses `retriable-status-codes` names.
    pub codes: Box<[u16]>,
}

impl Default for Retry {
    /// Istio's default: 2 retries on connect failures, refused streams, gRPC unavailable and
    /// cancelled, and 503.
    fn default() -> Self {
        Retry {
            attempts: DEFAULT_ATTEMPTS,
            per_try_timeout: None,
            on: parse_retry_on(DEFAULT_RETRY_ON).expect("the default parses"),
            codes: DEFAULT_CODES.into(),
        }
    }
}

impl Retry {
    /// Whether an answer with `status` and gRPC status `grpc` (from its head) is retried.
    pub fn retries_answer(&self, status: u16, grpc: Option<&[u8]>) -> bool {
        let on = &self.on;
        (on.five_xx && (500..600).contains(&status))
            || (on.gateway_error && matches!(status, 502..=504))
            || (on.retriable_status_codes && self.codes.contains(&status))
            || (on.unavailable && grpc == Some(b"14"))
            || (on.cancelled && grpc == Some(b"1"))
    }

    /// Whether a try that timed out is retried.
    pub fn retries_timeout(&self) -> bool {
        self.on.five_xx || self.on.gateway_error || self.on.reset
    }
}

/// Parses a `retry_on` list. `connect-failure` and `refused-stream` are accepted and always in
/// effect: a request that never reached an upstream is always sent to the next endpoint.
pub fn parse_retry_on(list: &str) -> Result<RetryOn, String> {
    let mut on = RetryOn::default();
    for token in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        match token {
            "5xx" => on.five_xx = true,
            "gateway-error" => on.gateway_error = true,
            "retriable-status-codes" => on.retriable_status_codes = true,
            "unavailable" => on.unavailable = true,
            "cancelled" => on.cancelled = true,
            "reset" => on.reset = true,
            "connect-failure" | "refused-stream" => {}
            other => {
                return Err(format!(
                    "unknown retry condition {other:?}; known: 5xx, gateway-error, reset, \
                     connect-failure, refused-stream, retriable-status-codes, unavailable, \
                     cancelled"
                ))
            }
        }
    }
    Ok(on)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_istios() {
        let r = Retry::default();
        assert_eq!(r.attempts, 2);
        assert!(r.retries_answer(503, None));
        assert!(!r.retries_answer(500, None));
        assert!(!r.retries_answer(502, None));
        assert!(r.retries_answer(200, Some(b"14")), "gRPC unavailable");
        assert!(r.retries_answer(200, Some(b"1")), "gRPC cancelled");
        assert!(!r.retries_answer(200, Some(b"2")));
        assert!(!r.retries_timeout());
    }

    #[test]
    fn conditions_parse_and_unknown_ones_are_refused() {
        let on = parse_retry_on("5xx, reset").unwrap();
        assert!(on.five_xx && on.reset && !on.gateway_error);
        let gw = Retry {
            on: parse_retry_on("gateway-error").unwrap(),
            ..Retry::default()
        };
        assert!(gw.retries_answer(504, None) && !gw.retries_answer(500, None));
        assert!(gw.retries_timeout());
        let e = parse_retry_on("5xx,retry-please").unwrap_err();
        assert!(e.contains("\"retry-please\""), "{e}");
    }
}
