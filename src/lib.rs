//! splitgate: an L7 traffic-splitting gateway for canary releases.
//!
//! A request flows: `server` (accept, HTTP/1.1 or h2c) → `proxy::handler` (load the `runtime`
//! snapshot) → `routing` (host, then the first matching rule) → `split` (weighted subset) →
//! `upstream` (endpoint pick, pooled connection) → back through `proxy` to the client.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod config;
pub mod control;
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod http1;
pub mod http2;
pub mod kubernetes;
pub mod metrics;
pub mod proxy;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod split;
pub mod tls;
pub mod upstream;

/// Starts the data plane alone (no admin API, readiness, metrics endpoint or watcher): the
/// runtime is built as `app::App` builds it, and its listeners are bound.
pub async fn start(
    config: &config::Config,
) -> Result<(server::Gateway, runtime::SharedRuntime), server::ServeError> {
    let control = control::Control::new(config.clone(), None);
    let gateway = server::Gateway::start(config, control.runtime().clone()).await?;
    Ok((gateway, control.runtime().clone()))
}
