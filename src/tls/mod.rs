//! TLS: termination on listeners (`server`) and TLS to upstreams (`client`), both with rustls
//! on the ring provider.

pub mod client;
pub mod server;

pub use client::UpstreamTls;
pub use server::{CertPaths, CertStore};

/// The crypto provider every TLS config here is built on.
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}
