//! Routing: which route and rule a request head selects.

pub mod answer;
pub mod cors;
pub mod fault;
pub mod header_ops;
pub mod keys;
pub mod matcher;
pub mod retry;
pub mod rewrite;
pub mod router;
pub mod sticky;

pub use matcher::{MatchBlock, NamedMatch, StringMatch};
pub use router::{request_authority, Mirror, Route, RouteMatch, Router, Rule};
