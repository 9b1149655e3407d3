//! Listening sockets and connection serving.

pub mod endpoint;
pub mod listener;
pub mod readiness;

pub use listener::{Gateway, ServeError};
