//! Sliding windows per (route, subset) behind `GET /v1/analysis`: request count, 5xx share and
//! latency quantiles over the last N whole seconds. One-second slots in a ring, allocated on
//! first use, so memory is bounded and idle subsets cost nothing. The second under way is not
//! counted: a window of N seconds ends where the current second begins, so a steady rate reads
//! the same whatever the moment of the question.

use serde::Serialize;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest window that can be asked for, in seconds.
pub const MAX_WINDOW_SECS: u64 = 600;
/// Slots in a ring: the longest window, plus the second under way.
const SLOTS: u64 = MAX_WINDOW_SECS + 1;

/// Latency bucket upper bounds (ms): fine enough that a quantile is off by at most one bucket.
const BOUNDS: [f64; 30] = [
    0.25,
    0.5,
    1.0,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
    30.0,
    50.0,
    75.0,
    100.0,
    150.0,
    200.0,
    300.0,
    500.0,
    750.0,
    1000.0,
    1500.0,
    2000.0,
    3000.0,
    5000.0,
    7500.0,
    10000.0,
    30000.0,
    60000.0,
    300000.0,
    f64::INFINITY,
];

#[derive(Clone, Copy)]
struct Slot {
    second: u64,
    requests: u32,
    errors: u32,
    latency: [u32; BOUNDS.len()],
}

const EMPTY: Slot = Slot {
    second: u64::MAX,
    requests: 0,
    errors: 0,
    latency: [0; BOUNDS.len()],
};

/// The recent history of one subset within one route.
#[derive(Default)]
pub struct Window {
    ring: Mutex<Option<Box<[Slot]>>>,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Window")
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What a window says about one subset.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// Requests answered in the window.
    pub requests: u64,
    /// Requests per second over the window; `null` without traffic.
    pub rps: Option<f64>,
    /// Share of answers that were not 5xx; `null` without traffic.
    pub success_rate: Option<f64>,
    /// Latency quantiles in ms; `null` without traffic.
    pub latency_ms: Option<Quantiles>,
    /// `ok`, or `no_traffic` when nothing was answered in the window.
    pub status: &'static str,
}

/// Latency quantiles (ms), interpolated within the bucket that holds them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Quantiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Window {
    /// Records an answer given at second `now`.
    pub fn record(&self, now: u64, server_error: bool, latency_ms: f64) {
        let Ok(mut ring) = self.ring.lock() else {
            return;
        };
        let ring = ring.get_or_insert_with(|| vec![EMPTY; SLOTS as usize].into_boxed_slice());
        let slot = &mut ring[(now % SLOTS) as usize];
        if slot.second != now {
            *slot = Slot {
                second: now,
                ..EMPTY
            };
        }
        slot.requests += 1;
        slot.errors += u32::from(server_error);
        let b = BOUNDS
            .partition_point(|b| *b < latency_ms)
            .min(BOUNDS.len() - 1);
        slot.latency[b] += 1;
    }

    /// Sums the `secs` whole seconds before second `now` (which is under way, and not counted).
    pub fn summary(&self, now: u64, secs: u64) -> Summary {
        let secs = secs.clamp(1, MAX_WINDOW_SECS);
        let (mut requests, mut errors, mut latency) = (0u64, 0u64, [0u64; BOUNDS.len()]);
        if let Ok(ring) = self.ring.lock() {
            for slot in ring.iter().flat_map(|r| r.iter()) {
                if slot.second < now && now - slot.second <= secs {
                    requests += u64::from(slot.requests);
                    errors += u64::from(slot.errors);
                    latency
                        .iter_mut()
                        .zip(slot.latency)
                        .for_each(|(a, b)| *a += u64::from(b));
                }
            }
        }
        if requests == 0 {
            return Summary {
                requests,
                rps: None,
                success_rate: None,
                latency_ms: None,
                status: "no_traffic",
            };
        }
        let q = |p: f64| quantile(&latency, requests, p);
        Summary {
            requests,
            rps: Some(requests as f64 / secs as f64),
            success_rate: Some((requests - errors) as f64 / requests as f64),
            latency_ms: Some(Quantiles {
                p50: q(0.50),
                p90: q(0.90),
                p95: q(0.95),
                p99: q(0.99),
            }),
            status: "ok",
        }
    }
}

/// Quantile `p` of a bucketed distribution, interpolated linearly inside its bucket.
fn quantile(buckets: &[u64; BOUNDS.len()], total: u64, p: f64) -> f64 {
    let rank = p * total as f64;
    let mut seen = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n > 0 && (seen + n) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { BOUNDS[i - 1] };
            let upper = if BOUNDS[i].is_finite() {
                BOUNDS[i]
            } else {
                lower
            };
            let within = ((rank - seen as f64) / n as f64).clamp(0.0, 1.0);
            return lower + (upper - lower) * within;
        }
        seen += n;
    }
    0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_success_rate_over_the_window_only() {
        let w = Window::default();
        for i in 0..100 {
            w.record(1000, i % 10 == 0, 4.0);
        }
        w.record(900, true, 4.0); // 100 s earlier: outside a 60 s window
        let s = w.summary(1005, 60);
        assert_eq!(s.requests, 100);
        assert_eq!(s.rps, Some(100.0 / 60.0));
        assert_eq!(s.success_rate, Some(0.9));
        assert_eq!(s.status, "ok");
        let q = s.latency_ms.unwrap();
        assert!(q.p50 > 3.0 && q.p50 <= 5.0, "{q:?}");
        assert_eq!(w.summary(1005, 200).requests, 101);
        let idle = w.summary(2000, 60);
        assert_eq!((idle.status, idle.rps), ("no_traffic", None));
    }

    #[test]
    fn a_reused_slot_forgets_its_old_second() {
        let w = Window::default();
        w.record(5, true, 1.0);
        w.record(5 + SLOTS, false, 1.0);
        let s = w.summary(6 + SLOTS, MAX_WINDOW_SECS);
        assert_eq!((s.requests, s.success_rate), (1, Some(1.0)));
    }

    #[test]
    fn quantiles_land_in_the_right_bucket() {
        let w = Window::default();
        for _ in 0..90 {
            w.record(10, false, 8.0); // bucket (7.5, 10]
        }
        for _ in 0..10 {
            w.record(10, false, 400.0); // bucket (300, 500]
        }
        let q = w.summary(11, 60).latency_ms.unwrap();
        assert!(q.p50 > 7.5 && q.p50 <= 10.0, "{q:?}");
        assert!(q.p95 > 300.0 && q.p95 <= 500.0, "{q:?}");
    }

    /// At a steady rate, every window reads that rate at any moment: the second under way,
    /// partly filled, is left out, and the oldest second of a full-length window is kept.
    #[test]
    fn the_second_under_way_is_not_counted() {
        let w = Window::default();
        for second in 1000..1000 + MAX_WINDOW_SECS {
            for _ in 0..300 {
                w.record(second, false, 1.0);
            }
        }
        // Second 1600 is under way, and has had a third of its requests so far.
        let now = 1000 + MAX_WINDOW_SECS;
        for _ in 0..200 {
            w.record(now, false, 1.0);
        }
        for secs in [1, 5, 60, MAX_WINDOW_SECS] {
            let s = w.summary(now, secs);
            assert_eq!(s.requests, 300 * secs, "{secs} s");
            assert_eq!(s.rps, Some(300.0), "{secs} s");
        }
    }
}
