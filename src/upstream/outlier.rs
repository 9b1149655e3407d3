//! Outlier detection, as Istio's `outlierDetection` sets Envoy's: an endpoint that fails so many
//! times in a row is ejected from its subset's picks for a while, longer each time, as long as
//! no more than a share of the subset is out; when every endpoint is out, all serve (panic).
//! Each `interval` an endpoint spends back in without being ejected takes one off the count that
//! lengthens its next ejection, as in Envoy.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Envoy's cap on one ejection (`max_ejection_time`).
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// A service's `outlier_detection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// 5xx answers and local failures (connect, reset, timeout) in a row that eject; 0: off.
    pub consecutive_5xx: u32,
    /// 502, 503, 504 and local failures in a row that eject; 0: off.
    pub consecutive_gateway: u32,
    /// Each one an endpoint spends back in takes one off its ejection count.
    pub interval: Duration,
    /// The first ejection's length; the n-th lasts n times as long (up to [`MAX_EJECTION`]).
    pub base_ejection_time: Duration,
    /// Ejections stop while this share of the subset (percent) is out; the first is always made.
    pub max_ejection_percent: u32,
}

/// How one try at an endpoint went, as outlier detection counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer below 500.
    Success,
    /// An answer of this status, 500 or above.
    Status(u16),
    /// No answer: the connection could not be made, broke, or timed out.
    Local,
}

/// An endpoint's record. Times are nanoseconds since [`epoch`].
#[derive(Debug, Default)]
pub struct OutlierState {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// End of the last ejection (0: never ejected).
    ejected_until: AtomicU64,
    /// Ejections that lengthen the next one.
    ejections: AtomicU32,
    /// Ejected, and not yet seen back in.
    out: AtomicBool,
}

/// Where an endpoint stands, as [`OutlierState::check`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// It takes requests.
    In,
    /// It is ejected.
    Out,
    /// Its ejection is over, and this is the first look since: it takes requests again.
    Returned,
}

/// The process's start, the zero of the record's times.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_nanos() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl OutlierState {
    /// Whether the endpoint is out of its subset's picks now.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_nanos() < until
    }

    /// Whether the endpoint is out, and whether it just came back (reported once).
    pub fn check(&self) -> Standing {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            Standing::In
        } else if now_nanos() < until {
            Standing::Out
        } else if self.out.swap(false, Ordering::Relaxed) {
            Standing::Returned
        } else {
            Standing::In
        }
    }

    /// Counts one try. True when this try should eject the endpoint (the caller checks the
    /// subset's share and calls [`Self::eject`]).
    pub fn record(&self, policy: &OutlierPolicy, outcome: Outcome) -> bool {
        let (five_xx, gateway) = match outcome {
            Outcome::Success => (false, false),
            Outcome::Status(s) => (true, matches!(s, 502..=504)),
            Outcome::Local => (true, true),
        };
        let bump = |counter: &AtomicU32, hit: bool| {
            if hit {
                counter.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                counter.store(0, Ordering::Relaxed);
                0
            }
        };
        let n5 = bump(&self.consecutive_5xx, five_xx);
        let ng = bump(&self.consecutive_gateway, gateway);
        (policy.consecutive_5xx > 0 && n5 >= policy.consecutive_5xx)
            || (policy.consecutive_gateway > 0 && ng >= policy.consecutive_gateway)
    }

    /// Ejects the endpoint: for the base time times its ejection count, which is one more than
    /// before, less one for each `interval` it spent back in since. Returns how long.
    pub fn eject(&self, policy: &OutlierPolicy) -> Duration {
        let now = now_nanos();
        let last = self.ejected_until.load(Ordering::Relaxed);
        let interval = u64::try_from(policy.interval.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let healthy = u32::try_from(now.saturating_sub(last) / interval).unwrap_or(u32::MAX);
        let before = if last == 0 {
            0
        } else {
            self.ejections
                .load(Ordering::Relaxed)
                .saturating_sub(healthy)
        };
        let n = before + 1;
        self.ejections.store(n, Ordering::Relaxed);
        self.out.store(true, Ordering::Relaxed);
        let length = policy
            .base_ejection_time
            .saturating_mul(n)
            .min(MAX_EJECTION);
        let until = now.saturating_add(u64::try_from(length.as_nanos()).unwrap_or(u64::MAX));
        self.ejected_until.store(until, Ordering::Relaxed);
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        length
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(n5: u32, ngw: u32) -> OutlierPolicy {
        OutlierPolicy {
            consecutive_5xx: n5,
            consecutive_gateway: ngw,
            interval: Duration::from_millis(50),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
        }
    }

    #[test]
    fn failures_in_a_row_eject_and_a_success_starts_the_count_again() {
        let (p, s) = (policy(3, 0), OutlierState::default());
        assert!(!s.record(&p, Outcome::Status(500)));
        assert!(!s.record(&p, Outcome::Local));
        assert!(!s.record(&p, Outcome::Success));
        assert!(!s.record(&p, Outcome::Status(503)));
        assert!(!s.record(&p, Outcome::Status(500)));
        assert!(s.record(&p, Outcome::Status(501)));
        assert!(!s.is_ejected());
        assert_eq!(s.eject(&p), Duration::from_secs(30));
        assert!(s.is_ejected());
        // Each ejection lasts longer.
        assert_eq!(s.eject(&p), Duration::from_secs(60));
        assert_eq!(s.check(), Standing::Out);
    }

    #[test]
    fn an_endpoint_back_in_is_reported_once_and_each_interval_in_shortens_the_next_ejection() {
        let p = OutlierPolicy {
            base_ejection_time: Duration::from_millis(10),
            interval: Duration::from_millis(200),
            ..policy(1, 0)
        };
        let s = OutlierState::default();
        assert_eq!(s.check(), Standing::In);
        assert_eq!(s.eject(&p), Duration::from_millis(10));
        // Ejected again at once: the count has had no interval to go down.
        assert_eq!(s.eject(&p), Duration::from_millis(20));
        assert_eq!(s.eject(&p), Duration::from_millis(30));
        // The time itself is what is tested here.
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(s.check(), Standing::Returned);
        assert_eq!(s.check(), Standing::In, "reported once");
        // Two intervals (400 to 599 ms) back in: the count goes from 3 to 1, so the next
        // ejection is the second's length.
        std::thread::sleep(Duration::from_millis(450));
        assert_eq!(s.eject(&p), Duration::from_millis(20));
    }

    #[test]
    fn gateway_errors_count_502_to_504_and_local_failures_only() {
        let (p, s) = (policy(0, 2), OutlierState::default());
        assert!(!s.record(&p, Outcome::Status(502)));
        assert!(!s.record(&p, Outcome::Status(500)), "500 breaks the run");
        assert!(!s.record(&p, Outcome::Local));
        assert!(s.record(&p, Outcome::Status(504)));
    }
}
