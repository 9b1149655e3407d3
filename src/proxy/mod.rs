//! Forwarding: the request handler, header rules, error mapping and the response body.

pub mod body;
pub mod error;
pub mod flags;
pub mod handler;
pub mod headers;
pub mod idle;
pub mod mirror;

pub use body::ProxyBody;
pub use error::ProxyError;
pub use flags::Flags;
pub use handler::handle;
pub use headers::ConnInfo;
