//! Upstream endpoints: connection pools and load balancing.

pub mod balance;
pub mod pool;

pub use balance::{Balancer, LoadBalancer};
pub use pool::{
    Endpoint, EndpointAddr, PoolSettings, PooledBody, SendError, UpstreamBody, UpstreamProtocol,
};
