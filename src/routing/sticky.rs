//! Sticky canaries: a client that got a rule's canary keeps getting it, and one that got stable
//! keeps stable, while the weights move.
//!
//! Each client has a position among [`POSITIONS`]. The rule's split covers the positions from
//! its last destination to its first ([`Split::pick_at`]), so the canary, listed last by Argo
//! Rollouts and Flagger, holds the lowest positions. Raising its weight hands it the positions
//! just above, which stable held; lowering it (an abort) hands them back. Nobody flips between
//! versions as a rollout moves forward, and the share of clients on each destination is its
//! weight.
//!
//! The position travels with the client, so every replica agrees without sharing state:
//! either in a cookie the gateway sets on the first answer ([`Source::Cookie`]), or as a hash
//! of a key the client sends anyway, like a user id header ([`Source::Hash`]).

use super::keys::{cookie, key_hash, query};
use crate::split::{Split, Target};
use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use rand::Rng;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// How many positions there are: a client's place is known to a hundredth of a percent.
pub const POSITIONS: u32 = 10_000;

/// Where a request's key is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// A request header (the first value).
    Header(HeaderName),
    /// A cookie, by name.
    Cookie(Box<str>),
    /// A query parameter, by name (its raw, undecoded value).
    Query(Box<str>),
}

/// Where a client's position comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A cookie that holds the position; a client without it gets one at random, and the
    /// answer sets the cookie.
    Cookie {
        /// The cookie's name.
        name: Box<str>,
        /// What follows `name=position` in `Set-Cookie`: path, lifetime and flags.
        attributes: Box<str>,
    },
    /// The hash of a key; a request without the key is placed at random, each time.
    Hash(Key),
}

/// A rule's stickiness.
#[derive(Debug)]
pub struct Sticky {
    /// Where positions come from.
    pub source: Source,
    /// The next new client's place in a Weyl sequence (steps of 2^32 over the golden ratio,
    /// from a random start): consecutive new clients spread evenly over the positions, so the
    /// share of clients on each destination matches the weights more closely than random
    /// draws would (10,000 random draws stray by 0.5 points at 50%; these by hundredths).
    next: AtomicU32,
}

/// The Weyl sequence's step: 2^32 divided by the golden ratio, odd.
const GOLDEN_STEP: u32 = 0x9E37_79B9;

impl Clone for Sticky {
    fn clone(&self) -> Self {
        Sticky::new(self.source.clone())
    }
}

/// A request's pick: the entry's index, its target, and the position to set in a cookie when
/// the client had none.
pub type Pick = (usize, Target, Option<u32>);

impl Sticky {
    /// Stickiness from `source`.
    pub fn new(source: Source) -> Sticky {
        Sticky {
            source,
            next: AtomicU32::new(rand::rng().random()),
        }
    }

    /// A cookie source named `name`, lasting `ttl` (none: the browser session).
    pub fn cookie(name: &str, ttl: Option<Duration>) -> Sticky {
        let mut attributes = String::from("; Path=/");
        if let Some(ttl) = ttl {
            attributes.push_str(&format!("; Max-Age={}", ttl.as_secs()));
        }
        attributes.push_str("; HttpOnly; SameSite=Lax");
        Sticky::new(Source::Cookie {
            name: name.into(),
            attributes: attributes.into(),
        })
    }

    /// A place for a client seen for the first time.
    fn fresh(&self) -> u32 {
        let x = self.next.fetch_add(GOLDEN_STEP, Ordering::Relaxed);
        ((u64::from(x) * u64::from(POSITIONS)) >> 32) as u32
    }

    /// Picks the request's destination from its position.
    pub fn pick<R: Rng + ?Sized>(&self, split: &Split, req: &Parts, rng: &mut R) -> Pick {
        let (position, new) = match &self.source {
            Source::Cookie { name, .. } => match cookie(req, name).and_then(parse_position) {
                Some(p) => (p, false),
                None => (self.fresh(), true),
            },
            Source::Hash(key) => match key_of(req, key) {
                Some(bytes) => (position_of(bytes), false),
                None => (rng.random_range(0..POSITIONS), false),
            },
        };
        let (index, target) = split.pick_at(position, POSITIONS);
        (index, target, new.then_some(position))
    }

    /// The `Set-Cookie` value that gives a client `position`; `None` for a hash source.
    pub fn set_cookie(&self, position: u32) -> Option<HeaderValue> {
        let Source::Cookie { name, attributes } = &self.source else {
            return None;
        };
        HeaderValue::try_from(format!("{name}={position}{attributes}")).ok()
    }
}

/// A position as a cookie holds it: a decimal number below [`POSITIONS`]. Anything else (a
/// value from an older scheme, a tampered one) counts as no cookie.
fn parse_position(value: &[u8]) -> Option<u32> {
    if value.is_empty() || value.len() > 5 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = value.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    (n < POSITIONS).then_some(n)
}

/// The value of the key in the request, if it has one (an empty value counts as none).
fn key_of<'a>(req: &'a Parts, key: &Key) -> Option<&'a [u8]> {
    let v = match key {
        Key::Header(name) => req.headers.get(name).map(HeaderValue::as_bytes),
        Key::Cookie(name) => cookie(req, name),
        Key::Query(name) => query(req, name),
    };
    v.filter(|v| !v.is_empty())
}

/// A key's position: its [`key_hash`] scaled onto [`POSITIONS`], so that every replica and
/// every version of the gateway places a key the same way.
pub fn position_of(key: &[u8]) -> u32 {
    ((u128::from(key_hash(key)) * u128::from(POSITIONS)) >> 64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_clients_spread_evenly_over_the_positions() {
        let s = Sticky::cookie("sg", None);
        for n in [100u32, 1000, 10_000] {
            let mut below = [0u32; 4];
            for _ in 0..n {
                let p = s.fresh();
                assert!(p < POSITIONS);
                for (i, cut) in [1000, 2500, 5000, 9000].into_iter().enumerate() {
                    below[i] += u32::from(p < cut);
                }
            }
            for (i, share) in [0.1, 0.25, 0.5, 0.9].into_iter().enumerate() {
                let want = share * f64::from(n);
                assert!(
                    (f64::from(below[i]) - want).abs() <= 3.0,
                    "{n} clients: {} below {share}, want {want}",
                    below[i]
                );
            }
        }
    }

    #[test]
    fn only_a_number_below_the_positions_is_a_position() {
        assert_eq!(parse_position(b"0"), Some(0));
        assert_eq!(parse_position(b"9999"), Some(9999));
        for bad in [&b""[..], b"10000", b"-1", b"12a", b"99999999999"] {
            assert_eq!(parse_position(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn key_positions_are_fixed_and_spread_evenly() {
        // Pinned: a change here would move every hashed client of every deployment.
        assert_eq!(position_of(b"user-1"), position_of(b"user-1"));
        let pinned: Vec<u32> = [&b""[..], b"user-1", b"user-2"]
            .iter()
            .map(|k| position_of(k))
            .collect();
        assert_eq!(pinned, PINNED);
        let mut tenths = [0u32; 10];
        for i in 0..100_000 {
            tenths[(position_of(format!("client-{i}").as_bytes()) / 1000) as usize] += 1;
        }
        for (i, n) in tenths.iter().enumerate() {
            assert!((9_500..10_500).contains(n), "tenth {i}: {n} of 100000");
        }
    }

    const PINNED: [u32; 3] = [9367, 2563, 6638];
}
