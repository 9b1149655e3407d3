//! `splitgate demo`: two built-in upstreams and a gateway on loopback, from an embedded config.

use crate::config::{self, Config, ConfigError};
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use tokio::net::TcpListener;

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
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let resp = Response::builder()
                        .status(StatusCode::OK)
                        .header("x-subset", name)
                        .header("content-type", "text/plain")
                        .body(Full::new(body.clone()))
                        .expect("static response parts are valid");
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
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
