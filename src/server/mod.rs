//! Listening sockets and connection serving.

pub mod listener;

pub use listener::{Gateway, ServeError};
