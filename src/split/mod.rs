//! Weighted choice among a rule's destinations: O(log n), no allocation, RNG injected.

use rand::Rng;

/// A service subset, by index into the runtime's services and that service's subsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    /// Index of the service.
    pub service: usize,
    /// Index of the subset within the service.
    pub subset: usize,
}

/// Destinations with their weights, prepared for picking.
#[derive(Debug, Clone)]
pub struct Split {
    targets: Box<[Target]>,
    weights: Box<[u32]>,
    /// Running sums of `weights`; the last is the total.
    cumulative: Box<[u64]>,
}

impl Split {
    /// Builds a split. The total weight must be above zero (validation checks).
    pub fn new(entries: Vec<(Target, u32)>) -> Self {
        let mut sum = 0u64;
        let cumulative = entries
            .iter()
            .map(|&(_, w)| {
                sum += u64::from(w);
                sum
            })
            .collect();
        Split {
            targets: entries.iter().map(|e| e.0).collect(),
            weights: entries.iter().map(|e| e.1).collect(),
            cumulative,
        }
    }

    /// Sum of all weights.
    pub fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// Destinations and their weights, in config order.
    pub fn entries(&self) -> impl Iterator<Item = (Target, u32)> + '_ {
        self.targets
            .iter()
            .copied()
            .zip(self.weights.iter().copied())
    }

    /// Picks a destination with probability weight / total. Weight 0 is never picked.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> Target {
        self.pick_indexed(rng).1
    }

    /// A target drawn by weight, with its position among the entries.
    pub fn pick_indexed<R: Rng + ?Sized>(&self, rng: &mut R) -> (usize, Target) {
        if self.targets.len() == 1 {
            return (0, self.targets[0]);
        }
        let r = rng.random_range(0..self.total());
        // First running sum above r: entries of weight 0 share their predecessor's sum and are skipped.
        let idx = self.cumulative.partition_point(|&c| c <= r);
        (idx, self.targets[idx])
    }

    /// The target at `position`, one of `positions` that the split covers in proportion to the
    /// weights, from the last entry to the first: with `[stable 90, canary 10]`, positions
    /// below a tenth are canary's. So when weights move toward the last entry, only positions
    /// that its predecessors held move to it, and none moves back. `position` must be below
    /// `positions`.
    pub fn pick_at(&self, position: u32, positions: u32) -> (usize, Target) {
        if self.targets.len() == 1 {
            return (0, self.targets[0]);
        }
        let total = self.total();
        let r = u64::from(position) * total / u64::from(positions.max(1));
        let from_end = total - 1 - r.min(total - 1);
        let idx = self.cumulative.partition_point(|&c| c <= from_end);
        (idx, self.targets[idx])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};

    fn t(i: usize) -> Target {
        Target {
            service: 0,
            subset: i,
        }
    }

    #[test]
    fn shares_follow_weights_and_zero_gets_nothing() {
        let split = Split::new(vec![
            (t(0), 50),
            (t(1), 0),
            (t(2), 30),
            (t(3), 20),
            (t(4), 0),
        ]);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = [0u32; 5];
        for _ in 0..100_000 {
            counts[split.pick(&mut rng).subset] += 1;
        }
        assert_eq!(counts[1], 0);
        assert_eq!(counts[4], 0);
        for (i, want) in [(0, 0.5), (2, 0.3), (3, 0.2)] {
            let got = f64::from(counts[i]) / 100_000.0;
            assert!((got - want).abs() < 0.01, "subset {i}: {got} vs {want}");
        }
    }

    #[test]
    fn positions_cover_the_entries_from_the_last_in_proportion() {
        let split = Split::new(vec![(t(0), 90), (t(1), 0), (t(2), 10)]);
        let at = |p| split.pick_at(p, 10_000).1.subset;
        assert_eq!((at(0), at(999), at(1000), at(9999)), (2, 2, 0, 0));
        let count = |s| (0..10_000).filter(|&p| at(p) == s).count();
        assert_eq!((count(0), count(1), count(2)), (9000, 0, 1000));
        // Moving weight to the last entry moves positions only toward it.
        let ramp = [(100, 0), (90, 10), (75, 25), (50, 50), (0, 100)];
        let mut before = vec![0; 10_000];
        for (w0, w2) in ramp {
            let split = Split::new(vec![(t(0), w0), (t(1), 0), (t(2), w2)]);
            for p in 0..10_000u32 {
                let now = split.pick_at(p, 10_000).1.subset;
                assert!(
                    now >= before[p as usize],
                    "position {p} moved back at {w0}/{w2}"
                );
                before[p as usize] = now;
            }
        }
    }

    #[test]
    fn boundaries_map_to_the_right_entry() {
        // Weights 1,0,2: the middle entry shares its predecessor's running sum and is never picked.
        let split = Split::new(vec![(t(0), 1), (t(1), 0), (t(2), 2)]);
        assert_eq!(split.total(), 3);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut seen = [0u32; 3];
        for _ in 0..3000 {
            seen[split.pick(&mut rng).subset] += 1;
        }
        assert_eq!(seen[1], 0);
        assert!(seen[0] > 800 && seen[2] > 1800, "{seen:?}");
    }
}
