//! Kubernetes mode (SPEC §6): every replica watches the Istio VirtualServices and
//! DestinationRules, and the Services, EndpointSlices and Pods they point at, and serves what
//! they say. Kubernetes is the store; replicas converge on their own.
//!
//! `cluster` keeps what is watched, `translate` turns it into routes and services (a pure
//! function), `watch` keeps `cluster` current and applies each change.

pub mod cluster;
pub mod istio;
pub mod translate;
pub mod verify;
pub mod watch;
