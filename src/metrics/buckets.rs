//! A histogram over Envoy's bucket boundaries that records without a lock: one atomic add for
//! the bucket and one for the sum. prometheus-client's own takes a mutex for each value, and
//! every request records three (BENCHMARKS.md, issue 17). Encoded as that histogram encodes
//! (the test below holds the two side by side).

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Envoy's histogram bucket boundaries (milliseconds for durations, bytes for sizes).
pub const ENVOY_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// A histogram over [`ENVOY_BUCKETS`]; clones share their counts.
#[derive(Debug, Clone, Default)]
pub struct EnvoyHistogram(Arc<Cells>);

#[derive(Debug, Default)]
struct Cells {
    /// Values at most each boundary and above the one before; the last is above them all.
    counts: [AtomicU64; ENVOY_BUCKETS.len() + 1],
    /// The sum of the values, as `f64` bits.
    sum: AtomicU64,
}

impl EnvoyHistogram {
    /// Records `v` (NaN counts above every boundary, as prometheus-client has it).
    pub fn observe(&self, v: f64) {
        let bucket = if v.is_nan() {
            ENVOY_BUCKETS.len()
        } else {
            ENVOY_BUCKETS.partition_point(|&upper| upper < v)
        };
        self.0.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let mut sum = self.0.sum.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(sum) + v).to_bits();
            match self
                .0
                .sum
                .compare_exchange_weak(sum, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now) => sum = now,
            }
        }
    }
}

impl TypedMetric for EnvoyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for EnvoyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0, 0); ENVOY_BUCKETS.len() + 1];
        let bounds = ENVOY_BUCKETS.iter().copied().chain([f64::INFINITY]);
        for ((bucket, upper), count) in buckets.iter_mut().zip(bounds).zip(&self.0.counts) {
            *bucket = (upper, count.load(Ordering::Relaxed));
        }
        // Read apart from the counts: a value recorded meanwhile may be in one and not the
        // other until the next scrape, as with Envoy's own histograms.
        let count = buckets.iter().map(|&(_, n)| n).sum();
        let sum = f64::from_bits(self.0.sum.load(Ordering::Relaxed));
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::Registry;

    #[test]
    fn encodes_as_prometheus_clients_histogram() {
        let ours = EnvoyHistogram::default();
        let theirs = Histogram::new(ENVOY_BUCKETS);
        let values = [
            0.0,
            0.5,
            0.51,
            1.0,
            3.0,
            7.5,
            25.0,
            99.9,
            1e3,
            2e4,
            4e6,
            1e9,
            12.25,
            f64::NAN,
        ];
        for v in values {
            ours.observe(v);
            theirs.observe(v);
        }
        let text = |register: &dyn Fn(&mut Registry)| {
            let mut registry = Registry::default();
            register(&mut registry);
            let mut out = String::new();
            encode(&mut out, &registry).unwrap();
            out
        };
        let a = text(&|r| r.register("h", "help", ours.clone()));
        let b = text(&|r| r.register("h", "help", theirs.clone()));
        assert_eq!(a, b);
        assert!(a.contains("h_bucket{le=\"0.5\"} 2\n"), "{a}");
        assert!(a.contains("h_bucket{le=\"+Inf\"} 14\n"), "{a}");
        // NaN made both sums NaN: the sum is checked apart.
        let finite = EnvoyHistogram::default();
        [1.5, 2.25, 1e6].iter().for_each(|&v| finite.observe(v));
        let f = text(&|r| r.register("h", "help", finite.clone()));
        assert!(f.contains("h_sum 1000003.75\n"), "{f}");
        assert!(f.contains("h_count 3\n"), "{f}");
        assert!(f.contains("h_bucket{le=\"5.0\"} 2\n"), "{f}");
    }
}
