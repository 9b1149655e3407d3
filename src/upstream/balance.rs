//! Picking an endpoint within a subset, and the order a request tries them in.

use super::hash::{Affinity, Algorithm, HashKey, HashPolicy, HashTable};
use super::pool::Endpoint;
use http::request::Parts;
use rand::Rng;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Load-balancing policy (DestinationRule `loadBalancer.simple`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LoadBalancer {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// The less busy of two random endpoints.
    LeastRequest,
    /// Uniformly random.
    Random,
}

impl LoadBalancer {
    /// Parses the config spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "round_robin" => Some(Self::RoundRobin),
            "least_request" => Some(Self::LeastRequest),
            "random" => Some(Self::Random),
            _ => None,
        }
    }
}

/// A subset's endpoints and the policy that picks among them.
#[derive(Debug)]
pub struct Balancer {
    endpoints: Box<[Arc<Endpoint>]>,
    policy: LoadBalancer,
    next: AtomicUsize,
    /// Consistent hashing, when the service asks for it; requests without a key are balanced
    /// by `policy`.
    hashing: Option<Box<Hashing>>,
}

/// Where a subset's requests are keyed, and the table over its endpoints.
#[derive(Debug)]
pub struct Hashing {
    /// Where the key is read.
    pub key: HashKey,
    /// What the table was built as.
    pub algorithm: Algorithm,
    /// Built over the balancer's endpoints, in their order; shared with the next runtime when
    /// they stay the same.
    pub table: Arc<HashTable>,
}

impl Hashing {
    /// `policy`'s table built over `endpoints`.
    pub fn build(policy: &HashPolicy, endpoints: &[Arc<Endpoint>]) -> Hashing {
        let names: Vec<String> = endpoints.iter().map(|e| e.addr().to_string()).collect();
        Hashing {
            key: policy.key.clone(),
            algorithm: policy.algorithm,
            table: Arc::new(HashTable::build(policy.algorithm, &names)),
        }
    }
}

/// The endpoints one request tries, in turn ([`Balancer::next`]).
#[derive(Debug, Clone, Copy)]
pub enum Order<'a> {
    /// Config order from this index on (modulo the count): after a pick by `load_balancer`.
    Index(usize),
    /// A key's walk over the hash table.
    Hashed {
        /// The table.
        table: &'a HashTable,
        /// The key's hash.
        hash: u64,
        /// Where its walk starts in the table.
        start: usize,
        /// Steps taken.
        step: usize,
        /// The endpoints tried, as bits (the first 64 endpoints).
        tried: u64,
    },
}

/// Steps a hash walk takes to find an endpoint that was not tried and is not ejected, before
/// it looks in config order (when most of the subset is out).
const WALK: usize = 64;

impl Balancer {
    /// A balancer over `endpoints`, with `hashing` built over them.
    pub fn new(
        endpoints: Vec<Arc<Endpoint>>,
        policy: LoadBalancer,
        hashing: Option<Hashing>,
    ) -> Self {
        Balancer {
            endpoints: endpoints.into(),
            policy,
            next: AtomicUsize::new(0),
            hashing: hashing.map(Box::new),
        }
    }

    /// Its consistent hashing, if any.
    pub fn hashing(&self) -> Option<&Hashing> {
        self.hashing.as_deref()
    }

    /// The endpoints, in config order.
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// Index of the next endpoint to try; `None` when the subset has none (Envoy's `UH`).
    pub fn pick_index<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<usize> {
        let n = self.endpoints.len();
        let idx = match (n, self.policy) {
            (0, _) => return None,
            (1, _) => 0,
            (_, LoadBalancer::RoundRobin) => self.next.fetch_add(1, Ordering::Relaxed) % n,
            (_, LoadBalancer::Random) => rng.random_range(0..n),
            (_, LoadBalancer::LeastRequest) => {
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                if self.endpoints[b].in_flight() < self.endpoints[a].in_flight() {
                    b
                } else {
                    a
                }
            }
        };
        Some(idx)
    }

    /// Whether [`Balancer::affinity`] reads a request header, which must then be in the map
    /// as the upstream will get it.
    pub fn hashes_header(&self) -> bool {
        self.hashing
            .as_ref()
            .is_some_and(|h| matches!(h.key, HashKey::Header(_)))
    }

    /// The request's key and its hash, when the subset hashes (`client_ip`: the peer as
    /// text); nothing otherwise.
    pub fn affinity(&self, req: &Parts, client_ip: &[u8]) -> Affinity {
        match &self.hashing {
            None => Affinity::default(),
            Some(h) => h.key.affinity(req, client_ip),
        }
    }

    /// Where a request starts: the key's place in the hash table when it has one (`hash`,
    /// from [`Balancer::affinity`]), else a pick by the policy. `None` when the subset has no
    /// endpoint.
    pub fn order<R: Rng + ?Sized>(&self, hash: Option<u64>, rng: &mut R) -> Option<Order<'_>> {
        match (hash, &self.hashing) {
            (Some(hash), Some(h)) if !h.table.is_empty() => Some(Order::Hashed {
                table: &h.table,
                hash,
                start: h.table.start(hash),
                step: 0,
                tried: 0,
            }),
            _ => self.pick_index(rng).map(Order::Index),
        }
    }

    /// The index of the endpoint to try next, moving `order` on: the first that `serves`
    /// (outlier detection has not ejected it). A hash walk also passes over endpoints this
    /// request tried already, until it has tried them all. When none serves, every endpoint
    /// does (Envoy's panic mode): the pick stands.
    pub fn next(&self, order: &mut Order<'_>, serves: impl Fn(&Endpoint) -> bool) -> usize {
        let n = self.endpoints.len();
        match order {
            Order::Index(from) => {
                let at = (*from..*from + n)
                    .find(|&i| serves(&self.endpoints[i % n]))
                    .unwrap_or(*from);
                *from = at + 1;
                at % n
            }
            Order::Hashed {
                table,
                hash,
                start,
                step,
                tried,
            } => {
                let bit = |i: usize| if i < 64 { 1u64 << i } else { 0 };
                if n <= 64 && tried.count_ones() as usize >= n {
                    *tried = 0;
                }
                // Endpoints found ejected on this walk, so each is checked once.
                let mut out = 0u64;
                let fresh = |i: usize, out: u64| (*tried | out) & bit(i) == 0;
                let mut found = None;
                for _ in 0..WALK {
                    let c = table.candidate(*hash, *start, *step);
                    *step += 1;
                    if fresh(c, out) {
                        if serves(&self.endpoints[c]) {
                            found = Some(c);
                            break;
                        }
                        out |= bit(c);
                    }
                }
                let found = found.unwrap_or_else(|| {
                    let own = table.candidate(*hash, *start, 0);
                    let from_own = (own..own + n).map(|i| i % n);
                    from_own
                        .clone()
                        .find(|&i| fresh(i, out) && serves(&self.endpoints[i]))
                        .or_else(|| from_own.clone().find(|&i| fresh(i, 0)))
                        .unwrap_or(own)
                });
                *tried |= bit(found);
                found
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::keys::key_hash;
    use crate::upstream::pool::{EndpointAddr, PoolSettings};
    use rand::{rngs::SmallRng, SeedableRng};
    use std::time::Duration;

    fn endpoints(n: u16) -> Vec<Arc<Endpoint>> {
        let settings = PoolSettings {
            connect_timeout: Duration::from_secs(1),
            max_idle: 1,
            max_connections: 8,
            protocol: Default::default(),
            tls: None,
            max_requests_per_connection: None,
            idle_timeout: None,
        };
        (0..n)
            .map(|i| {
                Endpoint::new(
                    EndpointAddr::Ip(([127, 0, 0, 1], 9000 + i).into()),
                    settings.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn round_robin_visits_each_in_turn() {
        let b = Balancer::new(endpoints(3), LoadBalancer::RoundRobin, None);
        let mut rng = SmallRng::seed_from_u64(0);
        let seen: Vec<String> = (0..6)
            .map(|_| {
                b.endpoints()[b.pick_index(&mut rng).unwrap()]
                    .addr()
                    .to_string()
            })
            .collect();
        assert_eq!(seen[..3], seen[3..]);
        assert_eq!(
            seen[..3],
            ["127.0.0.1:9000", "127.0.0.1:9001", "127.0.0.1:9002"]
        );
    }

    #[test]
    fn without_a_key_tries_go_in_config_order_from_the_pick_past_ejected_endpoints() {
        let b = Balancer::new(endpoints(4), LoadBalancer::RoundRobin, None);
        let mut rng = SmallRng::seed_from_u64(0);
        let port = |e: &Endpoint| e.addr().to_string();
        let tries = |order: &mut Order<'_>, out: &[&str]| {
            [0; 5].map(|_| b.next(order, |e| !out.contains(&port(e).as_str())))
        };
        // Round robin picks 0 first, then 1; the tries go on from there, modulo the count.
        let mut first = b.order(None, &mut rng).unwrap();
        assert_eq!(tries(&mut first, &[]), [0, 1, 2, 3, 0]);
        let mut second = b.order(Some(7), &mut rng).unwrap();
        assert_eq!(
            tries(&mut second, &["127.0.0.1:9002"]),
            [1, 3, 0, 1, 3],
            "a hash without a table is ignored; the ejected one is passed over"
        );
        // All ejected: every endpoint serves, in turn (panic mode).
        let all = [
            "127.0.0.1:9000",
            "127.0.0.1:9001",
            "127.0.0.1:9002",
            "127.0.0.1:9003",
        ];
        let mut third = b.order(None, &mut rng).unwrap();
        assert_eq!(tries(&mut third, &all), [2, 3, 0, 1, 2]);
    }

    #[test]
    fn empty_subset_has_no_endpoint() {
        let b = Balancer::new(vec![], LoadBalancer::LeastRequest, None);
        assert!(b.pick_index(&mut SmallRng::seed_from_u64(0)).is_none());
    }

    fn hashing(n: u16, algorithm: Algorithm) -> Balancer {
        let policy = HashPolicy {
            key: HashKey::Header(http::HeaderName::from_static("x-user")),
            algorithm,
        };
        let endpoints = endpoints(n);
        let hashing = Hashing::build(&policy, &endpoints);
        Balancer::new(endpoints, LoadBalancer::RoundRobin, Some(hashing))
    }

    const ALGORITHMS: [Algorithm; 2] = [
        Algorithm::RingHash { points: 1024 },
        Algorithm::Maglev { table_size: 65_537 },
    ];

    #[test]
    fn a_key_keeps_its_endpoint_and_its_retries_go_to_the_others_in_turn() {
        for algorithm in ALGORITHMS {
            let b = hashing(3, algorithm);
            let rng = SmallRng::seed_from_u64(0);
            for k in 0..200u32 {
                let hash = key_hash(format!("user-{k}").as_bytes());
                let tries = |b: &Balancer| {
                    let mut order = b.order(Some(hash), &mut rng.clone()).unwrap();
                    [0; 4].map(|_| b.next(&mut order, |_| true))
                };
                let [a, b1, c, again] = tries(&b);
                assert_eq!(tries(&b), [a, b1, c, again], "the same every time");
                let mut three = [a, b1, c];
                three.sort();
                assert_eq!(three, [0, 1, 2], "{algorithm:?}: key {k} tries each once");
            }
        }
    }

    #[test]
    fn an_ejected_endpoints_keys_spread_over_the_others_and_stick_there() {
        for algorithm in ALGORITHMS {
            let b = hashing(4, algorithm);
            let mut rng = SmallRng::seed_from_u64(0);
            let ejected = b.endpoints()[0].addr().clone();
            let serves = |e: &Endpoint| *e.addr() != ejected;
            let mut moved_to = [0u32; 4];
            for k in 0..4000u32 {
                let hash = key_hash(format!("user-{k}").as_bytes());
                let first = |serves: &dyn Fn(&Endpoint) -> bool, rng: &mut SmallRng| {
                    let mut order = b.order(Some(hash), rng).unwrap();
                    b.next(&mut order, serves)
                };
                let own = first(&|_| true, &mut rng);
                let now = first(&serves, &mut rng);
                if own == 0 {
                    assert_ne!(now, 0);
                    assert_eq!(
                        now,
                        first(&serves, &mut rng),
                        "key {k} sticks to its stand-in"
                    );
                    moved_to[now] += 1;
                } else {
                    assert_eq!(
                        now, own,
                        "{algorithm:?}: key {k} moved off a serving endpoint"
                    );
                }
            }
            // About a third each of the ejected endpoint's thousand keys.
            for n in &moved_to[1..] {
                assert!((200..500).contains(n), "{algorithm:?}: {moved_to:?}");
            }
        }
    }

    #[test]
    fn when_nothing_serves_a_key_still_goes_to_its_own_endpoint() {
        let b = hashing(3, Algorithm::default());
        let mut rng = SmallRng::seed_from_u64(0);
        let hash = key_hash(b"user-1");
        let mut order = b.order(Some(hash), &mut rng).unwrap();
        let own = b.next(&mut order, |_| true);
        let mut order = b.order(Some(hash), &mut rng).unwrap();
        assert_eq!(b.next(&mut order, |_| false), own);
        // A request without a key is balanced as usual.
        assert!(matches!(b.order(None, &mut rng), Some(Order::Index(_))));
    }
}
