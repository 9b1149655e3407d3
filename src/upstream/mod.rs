//! Upstream endpoints: connection pools and load balancing.

pub mod balance;
pub mod circuit;
pub mod h1;
pub mod hash;
pub mod outlier;
pub mod pool;

pub use balance::{Balancer, Hashing, LoadBalancer};
pub use pool::{
    BoxError, Endpoint, EndpointAddr, PoolSettings, PooledBody, SendError, UpstreamBody,
    UpstreamProtocol,
};
