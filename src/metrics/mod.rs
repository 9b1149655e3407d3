//! Metrics: Istio's standard families (`istio`), splitgate's own, and the sliding windows behind
//! `/v1/analysis` (`analysis`).

pub mod analysis;
pub mod buckets;
pub mod hub;
pub mod istio;
pub mod server;
