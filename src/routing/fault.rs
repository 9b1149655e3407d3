//! Istio's fault injection: a fixed delay before a share of requests is forwarded (Envoy's
//! flag `DI`), and an error answered instead of forwarding for a share (flag `FI`). Each share
//! is drawn on its own, as Envoy does: a request can be delayed and then aborted.

use http::StatusCode;
use rand::Rng;
use std::time::Duration;

/// A rule's faults; shares are per million requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fault {
    /// How long, for how many per million.
    pub delay: Option<(Duration, u32)>,
    /// Which error, for how many per million.
    pub abort: Option<(Abort, u32)>,
}

/// The error an aborted request gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Abort {
    /// This HTTP status.
    Http(StatusCode),
    /// HTTP 200 with this `grpc-status` (its number, `"14"`), as Envoy answers a gRPC abort.
    Grpc(&'static str),
}

/// gRPC's status names, by number.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The number of a gRPC status given by name (`UNAVAILABLE`) or number (`14`), as the
/// `grpc-status` label value.
pub fn grpc_code(name: &str) -> Option<&'static str> {
    const NUMBERS: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    GRPC_CODES
        .iter()
        .position(|c| *c == name)
        .or_else(|| NUMBERS.iter().position(|n| *n == name))
        .map(|i| NUMBERS[i])
}

/// What one request gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Injected {
    /// Held this long first.
    pub delay: Option<Duration>,
    /// Then answered with this error instead of being forwarded.
    pub abort: Option<Abort>,
}

/// A share per million from a percentage (validated to lie in 0–100).
pub fn per_million(percent: f64) -> u32 {
    (percent * 10_000.0).round() as u32
}

fn drawn<R: Rng + ?Sized>(per_million: u32, rng: &mut R) -> bool {
    per_million >= 1_000_000 || (per_million > 0 && rng.random_range(0..1_000_000) < per_million)
}

impl Fault {
    /// Draws what this request gets.
    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R) -> Injected {
        Injected {
            delay: self.delay.filter(|d| drawn(d.1, rng)).map(|d| d.0),
            abort: self.abort.filter(|a| drawn(a.1, rng)).map(|a| a.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn shares_are_drawn_independently_and_near_their_percentages() {
        let f = Fault {
            delay: Some((Duration::from_millis(5), per_million(10.0))),
            abort: Some((
                Abort::Http(StatusCode::SERVICE_UNAVAILABLE),
                per_million(25.5),
            )),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (mut delayed, mut aborted, mut both) = (0, 0, 0);
        let n = 200_000;
        for _ in 0..n {
            let i = f.draw(&mut rng);
            delayed += usize::from(i.delay.is_some());
            aborted += usize::from(i.abort.is_some());
            both += usize::from(i.delay.is_some() && i.abort.is_some());
        }
        let pct = |k: usize| k as f64 * 100.0 / n as f64;
        assert!((pct(delayed) - 10.0).abs() < 0.3, "{}", pct(delayed));
        assert!((pct(aborted) - 25.5).abs() < 0.3, "{}", pct(aborted));
        assert!((pct(both) - 2.55).abs() < 0.2, "{}", pct(both));
        let none = Fault {
            delay: Some((Duration::ZERO, 0)),
            abort: Some((Abort::Grpc("14"), 0)),
        };
        assert_eq!(
            (
                grpc_code("UNAVAILABLE"),
                grpc_code("16"),
                grpc_code("Unavailable")
            ),
            (Some("14"), Some("16"), None)
        );
        assert_eq!(
            none.draw(&mut rng),
            Injected {
                delay: None,
                abort: None
            }
        );
    }
}
