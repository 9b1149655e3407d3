//! Listening sockets and connection serving.

pub mod listener;
pub mod readiness;

pub use listener::{Gateway, ServeError};
