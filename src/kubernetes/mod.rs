//! Kubernetes mode (SPEC §6): every replica watches the Istio VirtualServices and
//! DestinationRules, and the Services, EndpointSlices and Pods they point at, and serves what
//! they say. Kubernetes is the store; replicas converge on their own.
//!
//! `cluster` is what is kept of the watched objects, `translate` turns it into routes and
//! services (a pure function), `watch` keeps it current, and `applier` serves each change,
//! recomputing only what endpoint churn touches.

pub mod applier;
pub mod cluster;
pub mod istio;
pub mod translate;
pub mod verify;
pub mod watch;
