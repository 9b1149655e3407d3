//! Listening sockets and connection serving.

pub mod accept;
pub mod conn;
pub mod endpoint;
pub mod h1;
pub mod h2;
pub mod limits;
pub mod listener;
pub mod offenders;
pub mod readiness;

pub use listener::{Gateway, ServeError};
