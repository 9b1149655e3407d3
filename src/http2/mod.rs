//! HTTP/2 codecs for the gateway's own HTTP/2 server.

pub mod frame;
pub mod hpack;
