//! Picking an endpoint within a subset.

use super::pool::Endpoint;
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
}

impl Balancer {
    /// A balancer over `endpoints`.
    pub fn new(endpoints: Vec<Arc<Endpoint>>, policy: LoadBalancer) -> Self {
        Balancer {
            endpoints: endpoints.into(),
            policy,
            next: AtomicUsize::new(0),
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let b = Balancer::new(endpoints(3), LoadBalancer::RoundRobin);
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
    fn empty_subset_has_no_endpoint() {
        let b = Balancer::new(vec![], LoadBalancer::LeastRequest);
        assert!(b.pick_index(&mut SmallRng::seed_from_u64(0)).is_none());
    }
}
