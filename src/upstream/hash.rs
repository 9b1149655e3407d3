//! Consistent hashing (Istio's `loadBalancer.consistentHash`): requests that carry the same key
//! go to the same endpoint of a subset, and a change of endpoints moves only the keys it must.
//!
//! The key's hash is looked up in a table built when the subset's endpoints are compiled, never
//! per request:
//! - **ring hash** (the default): every endpoint places the same number of points on a ring of
//!   64-bit hashes, derived from its address alone; a key belongs to the first point at or after
//!   its hash. Removing an endpoint hands each of its arcs to the next point, and nothing else
//!   moves; a new endpoint takes about 1/(N+1) of the keys, each from the point after its own.
//! - **Maglev** (Eisenbud et al., NSDI 2016): a table of a prime number of slots that the
//!   endpoints fill in turn, each along its own permutation of the slots; a key belongs to the
//!   slot its hash falls in. One lookup instead of a binary search, an even share per endpoint,
//!   and nearly as little movement: the refill shifts a few slots between the endpoints that
//!   stay (with four endpoints and 65537 slots, 0.07% of the keys on average when one goes and
//!   0.11% when one comes, up to 4 or 5% for an unlucky set of addresses).
//!
//! When a key's endpoint cannot take the request (ejected, or already tried by this request),
//! the walk goes on to the next point of the ring, or to the next slot the key's hash probes, so
//! that an ejected endpoint's keys spread over the others and still stick.

use crate::routing::keys::{cookie, key_hash, mix64, query};
use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use rand::Rng;

/// Points each endpoint places on the ring unless `ring_hash.minimum_ring_size` says otherwise
/// (Istio's default ring size).
pub const DEFAULT_RING_POINTS: u32 = 1024;
/// The most points a ring holds (12 MiB); past `MAX_RING_POINTS / points` endpoints, each
/// places fewer.
pub const MAX_RING_POINTS: usize = 1 << 20;
/// Slots of a Maglev table unless `maglev.table_size` says otherwise (Envoy's default).
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 65_537;
/// The largest Maglev table (Envoy's bound).
pub const MAX_MAGLEV_TABLE_SIZE: u32 = 5_000_011;

/// Where a request's key is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header (the first value), as the upstream will see it.
    Header(HeaderName),
    /// A cookie, by name. With `set`, a client without it is given one, as Envoy does when
    /// the cookie has a `ttl`.
    Cookie {
        /// The cookie's name.
        name: Box<str>,
        /// What follows `name=value` in the `Set-Cookie` the gateway sends (`; Path=/;
        /// Max-Age=3600; HttpOnly`); none: a client without the cookie is balanced as usual.
        set: Option<Box<str>>,
    },
    /// The client's IP address (the connection's peer).
    SourceIp,
    /// A query parameter, by name (its raw, undecoded value).
    Query(Box<str>),
}

/// How the table is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// A ring on which each endpoint places this many points.
    RingHash {
        /// Points per endpoint (`ring_hash.minimum_ring_size`).
        points: u32,
    },
    /// A Maglev table of this many slots, a prime.
    Maglev {
        /// Slots (`maglev.table_size`).
        table_size: u32,
    },
}

impl Default for Algorithm {
    fn default() -> Self {
        Algorithm::RingHash {
            points: DEFAULT_RING_POINTS,
        }
    }
}

/// A service's `consistent_hash`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashPolicy {
    /// Where the key is read.
    pub key: HashKey,
    /// The table the key's hash is looked up in.
    pub algorithm: Algorithm,
}

/// What consistent hashing makes of one request.
#[derive(Debug, Default)]
pub struct Affinity {
    /// The hash of the request's key; none when it has no key (it is balanced as usual).
    pub hash: Option<u64>,
    /// A cookie made up for a client that had none, to set on the answer: its next requests
    /// carry the key this one was hashed by.
    pub set_cookie: Option<HeaderValue>,
}

impl HashKey {
    /// The request's key and its hash; `client_ip` is the connection's peer as text. A key that
    /// is absent or empty counts as none.
    pub fn affinity(&self, req: &Parts, client_ip: &[u8]) -> Affinity {
        let key = match self {
            HashKey::Header(name) => req.headers.get(name).map(HeaderValue::as_bytes),
            HashKey::Cookie { name, .. } => cookie(req, name).map(unquote),
            HashKey::SourceIp => Some(client_ip),
            HashKey::Query(name) => query(req, name),
        };
        if let Some(key) = key.filter(|k| !k.is_empty()) {
            return Affinity {
                hash: Some(key_hash(key)),
                set_cookie: None,
            };
        }
        match self {
            HashKey::Cookie {
                name,
                set: Some(attributes),
            } => new_cookie(name, attributes),
            _ => Affinity::default(),
        }
    }
}

/// A cookie value without the double quotes RFC 6265 allows around it.
fn unquote(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

/// A fresh cookie: 16 random hex digits, hashed as the client will send them back.
fn new_cookie(name: &str, attributes: &str) -> Affinity {
    let value = format!("{:016x}", rand::rng().random::<u64>());
    let hash = key_hash(value.as_bytes());
    Affinity {
        hash: Some(hash),
        // The name and attributes were checked to be header-safe when the config was.
        set_cookie: HeaderValue::try_from(format!("{name}={value}{attributes}")).ok(),
    }
}

/// A subset's lookup table: endpoints by index in the subset's list.
#[derive(Debug)]
pub enum HashTable {
    /// Points sorted by hash, and the endpoint each belongs to.
    Ring {
        /// The points' hashes, ascending.
        points: Box<[u64]>,
        /// `owners[i]` placed `points[i]`.
        owners: Box<[u32]>,
    },
    /// The endpoint of each slot.
    Maglev {
        /// A prime number of slots.
        slots: Box<[u32]>,
    },
}

/// Odd step between an endpoint's ring points and between a key's Maglev probes (2^64 over
/// the golden ratio).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
/// Salts that give a Maglev endpoint's offset and skip from its address's hash.
const OFFSET_SALT: u64 = 0x5bd1_e995_0000_0001;
const SKIP_SALT: u64 = 0x27d4_eb2f_1656_67c5;

/// `h` scaled onto `0..n`, by its high bits (no division).
fn reduce(h: u64, n: usize) -> usize {
    ((u128::from(h) * n as u128) >> 64) as usize
}

impl HashTable {
    /// The table of `algorithm` over endpoints named `names` (their addresses): where a key
    /// lands depends on the addresses only, not on the order they are listed in.
    pub fn build(algorithm: Algorithm, names: &[String]) -> HashTable {
        match algorithm {
            Algorithm::RingHash { points } => ring(points, names),
            Algorithm::Maglev { table_size } => maglev(table_size as usize, names),
        }
    }

    /// Where the walk of `hash` starts; the table must not be empty.
    pub fn start(&self, hash: u64) -> usize {
        match self {
            HashTable::Ring { points, .. } => {
                let i = points.partition_point(|&p| p < hash);
                if i == points.len() {
                    0
                } else {
                    i
                }
            }
            HashTable::Maglev { slots } => reduce(hash, slots.len()),
        }
    }

    /// The endpoint at step `step` of the walk of `hash` from `start`: step 0 is the key's
    /// own endpoint; the ring's next steps are the following points, Maglev's are slots the
    /// hash probes further.
    pub fn candidate(&self, hash: u64, start: usize, step: usize) -> usize {
        match self {
            HashTable::Ring { owners, .. } => owners[(start + step) % owners.len()] as usize,
            HashTable::Maglev { slots } if step == 0 => slots[start] as usize,
            HashTable::Maglev { slots } => {
                let probe = mix64(hash ^ GOLDEN.wrapping_mul(step as u64));
                slots[reduce(probe, slots.len())] as usize
            }
        }
    }

    /// Whether the table has no entry (a subset without endpoints).
    pub fn is_empty(&self) -> bool {
        match self {
            HashTable::Ring { owners, .. } => owners.is_empty(),
            HashTable::Maglev { slots } => slots.is_empty(),
        }
    }
}

/// `points` points per endpoint (fewer when the ring would pass [`MAX_RING_POINTS`]), each
/// the hash of the endpoint's address and the point's number.
fn ring(points: u32, names: &[String]) -> HashTable {
    if names.is_empty() {
        return HashTable::Ring {
            points: Box::new([]),
            owners: Box::new([]),
        };
    }
    let per = (points as usize).min(MAX_RING_POINTS / names.len()).max(1);
    let mut ring: Vec<(u64, u32)> = Vec::with_capacity(per * names.len());
    for (i, name) in names.iter().enumerate() {
        let base = key_hash(name.as_bytes());
        let owner = u32::try_from(i).unwrap_or(u32::MAX);
        ring.extend(
            (0..per as u64).map(|j| (mix64(base.wrapping_add(j.wrapping_mul(GOLDEN))), owner)),
        );
    }
    ring.sort_unstable();
    HashTable::Ring {
        points: ring.iter().map(|p| p.0).collect(),
        owners: ring.iter().map(|p| p.1).collect(),
    }
}

/// Maglev's population: each endpoint in turn takes the next free slot of its permutation
/// (`offset`, `offset + skip`, … modulo the prime `size`, which visits every slot) until the
/// table is full. Endpoints take their turns in address order, so the table does not depend on
/// the order the config lists them in.
fn maglev(size: usize, names: &[String]) -> HashTable {
    const FREE: u32 = u32::MAX;
    if names.is_empty() || size == 0 {
        return HashTable::Maglev {
            slots: Box::new([]),
        };
    }
    let mut turns: Vec<usize> = (0..names.len()).collect();
    turns.sort_by(|&a, &b| names[a].cmp(&names[b]));
    // Per endpoint: the next slot of its permutation, and its skip.
    let mut walk: Vec<(usize, usize)> = names
        .iter()
        .map(|name| {
            let h = key_hash(name.as_bytes());
            let offset = reduce(mix64(h ^ OFFSET_SALT), size);
            let skip = reduce(mix64(h ^ SKIP_SALT), size.saturating_sub(1)) + 1;
            (offset, skip)
        })
        .collect();
    let mut slots = vec![FREE; size];
    let mut filled = 0;
    'fill: loop {
        for &i in &turns {
            let (next, skip) = &mut walk[i];
            // `next` and `skip` are below `size`: one subtraction wraps their sum.
            let step = |at: usize| {
                if at + *skip >= size {
                    at + *skip - size
                } else {
                    at + *skip
                }
            };
            while slots[*next] != FREE {
                *next = step(*next);
            }
            slots[*next] = u32::try_from(i).unwrap_or(u32::MAX);
            *next = step(*next);
            filled += 1;
            if filled == size {
                break 'fill;
            }
        }
    }
    HashTable::Maglev {
        slots: slots.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn names(ports: impl IntoIterator<Item = u16>) -> Vec<String> {
        ports.into_iter().map(|p| format!("10.0.0.1:{p}")).collect()
    }

    fn owner(t: &HashTable, names: &[String], key: u64) -> String {
        names[t.candidate(key, t.start(key), 0)].clone()
    }

    const ALGORITHMS: [Algorithm; 2] = [
        Algorithm::RingHash { points: 1024 },
        Algorithm::Maglev { table_size: 65_537 },
    ];

    #[test]
    fn keys_spread_evenly_and_the_listed_order_does_not_matter() {
        for algorithm in ALGORITHMS {
            let four = names(8000..8004);
            let mut shuffled = four.clone();
            shuffled.reverse();
            let (a, b) = (
                HashTable::build(algorithm, &four),
                HashTable::build(algorithm, &shuffled),
            );
            let mut counts: HashMap<String, u32> = HashMap::new();
            for k in 0..40_000u32 {
                let key = key_hash(format!("user-{k}").as_bytes());
                let at = owner(&a, &four, key);
                assert_eq!(at, owner(&b, &shuffled, key), "{algorithm:?}");
                *counts.entry(at).or_default() += 1;
            }
            for (name, n) in &counts {
                // A quarter each: 10,000 ± 1,000 on the ring (its arcs vary), ± 300 for Maglev.
                let slack = if matches!(algorithm, Algorithm::Maglev { .. }) {
                    300
                } else {
                    1000
                };
                assert!(n.abs_diff(10_000) <= slack, "{algorithm:?}: {name} has {n}");
            }
        }
    }

    #[test]
    fn removing_an_endpoint_moves_its_keys_and_adding_one_moves_a_fair_share() {
        for algorithm in ALGORITHMS {
            let four = names(8000..8004);
            let three = names(8000..8003);
            let five = names(8000..8005);
            let t4 = HashTable::build(algorithm, &four);
            let t3 = HashTable::build(algorithm, &three);
            let t5 = HashTable::build(algorithm, &five);
            // Keys that moved from one remaining endpoint to another: on removal, on addition.
            let (mut stray, mut added) = ([0u32; 2], 0);
            let keys = 40_000u32;
            for k in 0..keys {
                let key = key_hash(format!("user-{k}").as_bytes());
                let before = owner(&t4, &four, key);
                let after = owner(&t3, &three, key);
                if before != four[3] && after != before {
                    stray[0] += 1;
                }
                let grown = owner(&t5, &five, key);
                if grown == five[4] {
                    added += 1;
                } else if grown != before {
                    stray[1] += 1;
                }
            }
            match algorithm {
                Algorithm::RingHash { .. } => assert_eq!(stray, [0, 0]),
                // Maglev's refill can shift a few slots between the others.
                Algorithm::Maglev { .. } => {
                    assert!(stray.iter().all(|&n| n <= keys / 400), "{stray:?} strays")
                }
            }
            // About a fifth of the keys go to the new endpoint.
            assert!(
                (added as f64 / keys as f64 - 0.2).abs() < 0.03,
                "{algorithm:?}: {added} of {keys} moved to the new endpoint"
            );
        }
    }

    #[test]
    fn a_walk_visits_every_endpoint() {
        for algorithm in ALGORITHMS {
            let three = names(8000..8003);
            let t = HashTable::build(algorithm, &three);
            for k in 0..100u32 {
                let key = key_hash(format!("k{k}").as_bytes());
                let start = t.start(key);
                let mut seen = [false; 3];
                for step in 0..64 {
                    seen[t.candidate(key, start, step)] = true;
                }
                assert_eq!(seen, [true; 3], "{algorithm:?}: key {k}");
            }
        }
    }

    #[test]
    fn a_ring_places_the_same_points_per_endpoint_up_to_its_bound() {
        let HashTable::Ring { points, .. } = ring(DEFAULT_RING_POINTS, &names(8000..8003)) else {
            unreachable!()
        };
        assert_eq!(points.len(), 3 * 1024);
        let many: Vec<String> = (0..4096)
            .map(|i| format!("10.0.{}.{}:80", i / 256, i % 256))
            .collect();
        let HashTable::Ring { points, .. } = ring(DEFAULT_RING_POINTS, &many) else {
            unreachable!()
        };
        assert_eq!(points.len(), MAX_RING_POINTS);
        assert!(HashTable::build(Algorithm::default(), &[]).is_empty());
    }

    #[test]
    fn every_maglev_slot_is_filled() {
        for n in [1u16, 2, 7] {
            let HashTable::Maglev { slots } = maglev(13, &names(9000..9000 + n)) else {
                unreachable!()
            };
            assert!(slots.iter().all(|&s| u32::from(n) > s), "{slots:?}");
        }
    }

    #[test]
    fn a_key_is_read_where_the_policy_says_and_a_missing_cookie_is_made_up() {
        let (req, _) = http::Request::get("/p?user=ann&x=1")
            .header("x-user", "ann")
            .header("cookie", "a=1; u=\"ann\"")
            .body(())
            .unwrap()
            .into_parts();
        let ann = Some(key_hash(b"ann"));
        let header = HashKey::Header(HeaderName::from_static("x-user"));
        assert_eq!(header.affinity(&req, b"10.0.0.9").hash, ann);
        let query = HashKey::Query("user".into());
        assert_eq!(query.affinity(&req, b"10.0.0.9").hash, ann);
        let cookie = HashKey::Cookie {
            name: "u".into(),
            set: Some("; Path=/; Max-Age=60; HttpOnly".into()),
        };
        let a = cookie.affinity(&req, b"10.0.0.9");
        assert_eq!(
            (a.hash, a.set_cookie),
            (ann, None),
            "quotes are not the value"
        );
        let ip = HashKey::SourceIp.affinity(&req, b"10.0.0.9");
        assert_eq!(ip.hash, Some(key_hash(b"10.0.0.9")));

        let (bare, _) = http::Request::get("/p").body(()).unwrap().into_parts();
        assert_eq!(header.affinity(&bare, b"10.0.0.9").hash, None);
        let made = cookie.affinity(&bare, b"10.0.0.9");
        let set = made.set_cookie.expect("a cookie for a client without one");
        let set = set.to_str().unwrap();
        let value = set
            .strip_prefix("u=")
            .and_then(|s| s.strip_suffix("; Path=/; Max-Age=60; HttpOnly"))
            .unwrap_or_else(|| panic!("{set}"));
        assert_eq!(value.len(), 16);
        assert_eq!(made.hash, Some(key_hash(value.as_bytes())));
        let no_ttl = HashKey::Cookie {
            name: "u".into(),
            set: None,
        };
        let none = no_ttl.affinity(&bare, b"10.0.0.9");
        assert!(none.hash.is_none() && none.set_cookie.is_none());
    }
}
