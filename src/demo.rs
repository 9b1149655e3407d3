//! `splitgate demo`: two built-in upstreams and a gateway on loopback, from an embedded config.

use crate::config::{self, Config, ConfigError};
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The embedded demo config (`config/demo.yaml`).
pub const DEMO_CONFIG: &str = include_str!("../config/demo.yaml");

/// Starts a tiny HTTP server on `addr` that answers every request with `200 <name>\n` and an
/// `x-subset: <name>` header. Returns the bound address.
pub async fn spawn_named_upstream(
    addr: SocketAddr,
    name: &'static str,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let body = Bytes::from(format!("{name}\n"));
    let answer = move |_req| {
        let resp = Response::builder()
            .status(StatusCode::OK)
            .header("x-subset", name)
            .header("content-type", "text/plain")
            .body(Full::new(body.clone()))
            .expect("static response parts are valid");
        std::future::ready(resp)
    };
    // The demo's upstreams live as long as the process: the stop signal never fires.
    let (keep, stop) = watch::channel(false);
    tokio::spawn(async move {
        let _keep = keep;
        crate::server::endpoint::serve(listener, stop, answer).await;
    });
    Ok(local)
}

/// The demo config with the gateway on `listen` and the given upstream addresses.
pub fn demo_config(
    listen: SocketAddr,
    admin: SocketAddr,
    stable: SocketAddr,
    canary: SocketAddr,
) -> Result<Config, ConfigError> {
    let mut raw = config::parse(DEMO_CONFIG, "embedded demo config")?;
    raw.listeners[0].address = listen.to_string();
    raw.admin.address = admin.to_string();
    // Readiness and metrics sit on free ports: the demo prints where.
    raw.readiness.address = "127.0.0.1:0".into();
    raw.metrics.address = "127.0.0.1:0".into();
    let subsets = &mut raw
        .services
        .get_mut("demo")
        .expect("the demo config has the demo service")
        .subsets;
    for (name, addr) in [("stable", stable), ("canary", canary)] {
        subsets
            .get_mut(name)
            .expect("the demo config has both subsets")
            .endpoints = vec![addr.to_string()];
    }
    config::validate(&raw).map_err(|errors| ConfigError {
        source_name: "embedded demo config".into(),
        errors,
    })
}
