//! Envoy's response flags as a set: a request can end with more than one (`UF,URX`: the tries
//! failed to connect and the retries ran out). Rendered as Envoy renders them, in its fixed
//! order, joined by commas; `-` when the set is empty.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// A set of response flags.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(u16);

/// The flags the gateway sets, in Envoy's order (its `ResponseFlag` bit order), which is the
/// order they are rendered in.
const NAMES: [&str; 13] = [
    "UH", "UT", "UF", "UC", "UO", "NR", "DI", "FI", "DC", "URX", "SI", "DPE", "UPE",
];

impl Flags {
    /// No flag: `-`.
    pub const NONE: Flags = Flags(0);
    /// No healthy upstream.
    pub const UH: Flags = Flags(1 << 0);
    /// Upstream request timeout.
    pub const UT: Flags = Flags(1 << 1);
    /// Upstream connection failure.
    pub const UF: Flags = Flags(1 << 2);
    /// Upstream connection termination.
    pub const UC: Flags = Flags(1 << 3);
    /// Upstream overflow (circuit breaking).
    pub const UO: Flags = Flags(1 << 4);
    /// No route.
    pub const NR: Flags = Flags(1 << 5);
    /// Delay injected.
    pub const DI: Flags = Flags(1 << 6);
    /// Fault injected.
    pub const FI: Flags = Flags(1 << 7);
    /// Downstream connection termination.
    pub const DC: Flags = Flags(1 << 8);
    /// Upstream retry limit exceeded.
    pub const URX: Flags = Flags(1 << 9);
    /// Stream idle timeout.
    pub const SI: Flags = Flags(1 << 10);
    /// Downstream protocol error.
    pub const DPE: Flags = Flags(1 << 11);
    /// Upstream protocol error.
    pub const UPE: Flags = Flags(1 << 12);

    /// Both sets.
    pub const fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    /// Whether every flag of `other` is in this set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// The rendering: `-`, one flag, or Envoy's comma-separated list. A set of one flag or none
    /// costs nothing; a combination is built once per process and kept.
    pub fn as_str(self) -> &'static str {
        if self.0 == 0 {
            return "-";
        }
        if self.0.is_power_of_two() {
            return NAMES[self.0.trailing_zeros() as usize];
        }
        static JOINED: OnceLock<Mutex<HashMap<u16, &'static str>>> = OnceLock::new();
        let mut joined = JOINED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        joined.entry(self.0).or_insert_with(|| {
            let names: Vec<&str> = NAMES
                .iter()
                .enumerate()
                .filter(|(i, _)| self.0 & (1 << i) != 0)
                .map(|(_, n)| *n)
                .collect();
            // At most 2^13 distinct sets, each leaked once: label values live for the process.
            Box::leak(names.join(",").into_boxed_str())
        })
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;

    fn bitor(self, other: Flags) -> Flags {
        self.with(other)
    }
}

impl std::fmt::Display for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_render_as_envoy_renders_them() {
        assert_eq!(Flags::NONE.as_str(), "-");
        assert_eq!(Flags::UF.as_str(), "UF");
        assert_eq!(Flags::UPE.as_str(), "UPE");
        assert_eq!((Flags::URX | Flags::UF).as_str(), "UF,URX");
        assert_eq!((Flags::UC | Flags::URX).as_str(), "UC,URX");
        assert_eq!((Flags::URX | Flags::DC).as_str(), "DC,URX");
        assert_eq!((Flags::UPE | Flags::UT | Flags::URX).as_str(), "UT,URX,UPE");
        // The same static string every time.
        let a = (Flags::UF | Flags::URX).as_str();
        assert!(std::ptr::eq(a, (Flags::URX | Flags::UF).as_str()));
        assert!((Flags::UF | Flags::URX).contains(Flags::URX));
        assert!(!Flags::UF.contains(Flags::URX));
    }
}
