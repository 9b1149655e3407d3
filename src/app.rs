//! The whole gateway: control plane, listeners, admin API, readiness, and the config watcher.

use crate::admin::{self, AdminContext};
use crate::config::{self, Config};
use crate::control::Control;
use crate::server::{readiness, Gateway, ServeError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listening socket could not be bound.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The admin or readiness address could not be bound.
    #[error("{what} cannot bind {addr}")]
    Bind {
        /// Which server.
        what: &'static str,
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The admin token file is unusable.
    #[error("admin.token_file: {0}")]
    Token(String),
    /// The config file cannot be watched.
    #[error("cannot watch the config file: {0}")]
    Watch(#[from] notify::Error),
    /// The Kubernetes API client cannot be set up.
    #[error(transparent)]
    Kubernetes(#[from] crate::kubernetes::watch::StartError),
}

/// A running gateway.
#[derive(Debug)]
pub struct App {
    /// The data plane's listeners.
    pub gateway: Gateway,
    /// The control plane.
    pub control: Arc<Control>,
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    /// Where readiness listens.
    pub readiness_addr: SocketAddr,
    /// Where metrics are served.
    pub metrics_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

async fn bind(
    what: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| StartError::Bind { what, addr, source })?;
    Ok((listener, local))
}

fn read_token(path: &str) -> Result<Arc<str>, StartError> {
    crate::config::files::read_token(std::path::Path::new(path))
        .map(Into::into)
        .map_err(StartError::Token)
}

impl App {
    /// Starts everything `config` describes. With `config_path`, the file is watched and
    /// reloaded on change, and `POST /v1/reload` re-reads it.
    pub async fn start(config: Config, config_path: Option<PathBuf>) -> Result<App, StartError> {
        let token = config
            .raw
            .admin
            .token_file
            .as_deref()
            .map(read_token)
            .transpose()?;
        let kube_client = match &config.kubernetes {
            Some(spec) => Some(crate::kubernetes::watch::client(spec).await?),
            None => None,
        };
        let (admin_listener, admin_addr) = bind("admin API", config.admin_addr).await?;
        let (ready_listener, readiness_addr) = bind("readiness", config.readiness_addr).await?;
        let (metrics_listener, metrics_addr) = bind("metrics", config.metrics_addr).await?;
        let control = Control::new(config.clone(), config_path.clone());
        let gateway = Gateway::start(&config, control.runtime().clone()).await?;
        control.attach_cert_stores(gateway.cert_stores());
        let (stop, _) = watch::channel(false);
        let ctx = AdminContext {
            control: control.clone(),
            token,
        };
        let mut tasks = vec![
            tokio::spawn(admin::serve(admin_listener, ctx, stop.subscribe())),
            tokio::spawn(readiness::serve(
                ready_listener,
                control.clone(),
                stop.subscribe(),
            )),
            tokio::spawn(crate::metrics::server::serve(
                metrics_listener,
                control.clone(),
                stop.subscribe(),
            )),
        ];
        if let Some(p) = &config_path {
            config::watch::spawn(control.clone(), p.clone(), stop.subscribe())?;
        }
        if let (Some(client), Some(spec)) = (kube_client, &config.kubernetes) {
            tasks.push(tokio::spawn(crate::kubernetes::watch::run(
                client,
                spec.clone(),
                control.clone(),
                stop.subscribe(),
            )));
        }
        tracing::info!(
            admin = %admin_addr,
            readiness = %readiness_addr,
            metrics = %metrics_addr,
            generation = control.generation(),
            "serving"
        );
        Ok(App {
            gateway,
            control,
            admin_addr,
            readiness_addr,
            metrics_addr,
            stop,
            tasks,
        })
    }

    /// Starts the drain: readiness turns 503, and the listeners go on accepting while every
    /// answer asks its client to go. [`App::shutdown`] ends it.
    pub fn drain(&self) {
        self.control.set_draining();
        self.gateway.drain();
    }

    /// Turns readiness to 503, drains the listeners (up to `grace`), then stops the rest.
    pub async fn shutdown(self, grace: Duration) {
        self.control.set_draining();
        self.gateway.shutdown(grace).await;
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
