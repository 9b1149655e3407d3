//! Binds the listeners, accepts connections and serves HTTP/1.1 and h2c on each; on a TLS
//! listener, HTTP/1.1 and HTTP/2 (by ALPN) inside TLS.

use crate::config::Config;
use crate::proxy::{self, ConnInfo};
use crate::runtime::SharedRuntime;
use crate::tls::{self, CertStore};
use http::HeaderValue;
use hyper::rt::{Read, Write};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// Longest wait for a client's TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often certificate files are re-read when no change event came.
const CERT_POLL: Duration = Duration::from_secs(1);

/// Failure to start serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not bind.
    #[error("listener {name:?} cannot bind {addr}")]
    Bind {
        /// Listener name.
        name: String,
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A listener's certificate or key cannot serve.
    #[error("listener {name:?}: {source}")]
    Tls {
        /// Listener name.
        name: String,
        /// What is wrong with which file.
        #[source]
        source: tls::server::CertError,
    },
    /// A listener's certificate files cannot be watched.
    #[error("listener {name:?}: cannot watch the certificate files: {source}")]
    Watch {
        /// Listener name.
        name: String,
        /// Cause.
        #[source]
        source: notify::Error,
    },
}

/// A running gateway: its listeners' tasks and the means to drain them.
#[derive(Debug)]
pub struct Gateway {
    addrs: Vec<(String, SocketAddr)>,
    shutdown: watch::Sender<bool>,
    accept_tasks: Vec<JoinHandle<()>>,
    cert_stores: Vec<Arc<CertStore>>,
}

impl Gateway {
    /// Binds every listener of `config` and starts serving from `runtime`.
    pub async fn start(config: &Config, runtime: SharedRuntime) -> Result<Self, ServeError> {
        let (shutdown, _) = watch::channel(false);
        let builder = Arc::new(server_builder());
        let mut addrs = Vec::new();
        let mut accept_tasks = Vec::new();
        let mut cert_stores = Vec::new();
        for l in &config.listeners {
            let tls = match &l.tls {
                None => None,
                Some(pairs) => {
                    let store = listener_certs(&l.name, pairs, &runtime, &shutdown)?;
                    cert_stores.push(store.clone());
                    Some(TlsAcceptor::from(tls::server::server_config(store)))
                }
            };
            let listener = TcpListener::bind(l.addr)
                .await
                .map_err(|source| ServeError::Bind {
                    name: l.name.clone(),
                    addr: l.addr,
                    source,
                })?;
            let local = listener.local_addr().map_err(|source| ServeError::Bind {
                name: l.name.clone(),
                addr: l.addr,
                source,
            })?;
            tracing::info!(listener = %l.name, address = %local, "listening");
            addrs.push((l.name.clone(), local));
            let task = accept_loop(
                listener,
                l.stream_idle_timeout,
                tls,
                builder.clone(),
                runtime.clone(),
                shutdown.clone(),
            );
            accept_tasks.push(tokio::spawn(task));
        }
        Ok(Gateway {
            addrs,
            shutdown,
            accept_tasks,
            cert_stores,
        })
    }

    /// The certificates of the TLS listeners.
    pub fn cert_stores(&self) -> &[Arc<CertStore>] {
        &self.cert_stores
    }

    /// Bound addresses by listener name (useful when binding port 0).
    pub fn local_addrs(&self) -> &[(String, SocketAddr)] {
        &self.addrs
    }

    /// The bound address of a listener.
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.addrs.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// Stops accepting, asks open connections to finish their current requests, and waits for
    /// them up to `grace`.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        for t in self.accept_tasks {
            let _ = t.await;
        }
        if tokio::time::timeout(grace, self.shutdown.closed())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.shutdown.receiver_count(),
                "grace period over; closing connections"
            );
        }
    }
}

fn server_builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_headers(128)
        // One buffer per write (head and body together) rather than a gather write: measured
        // 7% more requests per CPU second on small answers (BENCHMARKS.md).
        .writev(false);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Duration::from_secs(30));
    b
}

/// Loads a TLS listener's certificates and re-reads them whenever their files change.
fn listener_certs(
    name: &str,
    pairs: &[tls::CertPaths],
    runtime: &SharedRuntime,
    shutdown: &watch::Sender<bool>,
) -> Result<Arc<CertStore>, ServeError> {
    let metrics = runtime.load().hub.own.clone();
    let store = CertStore::load(name, pairs, metrics).map_err(|source| ServeError::Tls {
        name: name.to_string(),
        source,
    })?;
    let watched = store.clone();
    crate::config::watch::watch_files(store.files(), CERT_POLL, shutdown.subscribe(), move || {
        watched.refresh();
        std::future::ready(())
    })
    .map_err(|source| ServeError::Watch {
        name: name.to_string(),
        source,
    })?;
    Ok(store)
}

async fn accept_loop(
    listener: TcpListener,
    stream_idle: Option<Duration>,
    tls: Option<TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    runtime: SharedRuntime,
    shutdown: watch::Sender<bool>,
) {
    let mut stop = shutdown.subscribe();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let own = runtime.load().hub.own.clone();
        let conn = Arc::new(ConnInfo {
            client_ip: HeaderValue::from_str(&peer.ip().to_string())
                .expect("an IP is a valid header value"),
            proto: HeaderValue::from_static(if tls.is_some() { "https" } else { "http" }),
            stream_idle,
        });
        let runtime = runtime.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let mut stop = shutdown.subscribe();
        tokio::spawn(async move {
            own.active_connections.inc();
            match tls {
                None => {
                    serve(
                        TokioIo::new(stream),
                        peer,
                        &builder,
                        runtime,
                        conn,
                        &mut stop,
                    )
                    .await
                }
                // Boxed: a TLS stream is large, and plain connections need not reserve room
                // for it.
                Some(acceptor) => {
                    let tls = serve_tls(acceptor, stream, peer, &builder, runtime, conn, &mut stop);
                    Box::pin(tls).await
                }
            }
            own.active_connections.dec();
            drop(stop);
        });
    }
}

/// Completes a client's TLS handshake, then serves the connection.
async fn serve_tls(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    builder: &auto::Builder<TokioExecutor>,
    runtime: SharedRuntime,
    conn: Arc<ConnInfo>,
    stop: &mut watch::Receiver<bool>,
) {
    let own = runtime.load().hub.own.clone();
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        // A client that connects and leaves without a byte (a TCP health check, a port probe,
        // closing or resetting) has not tried a handshake.
        match stream.peek(&mut [0u8; 1]).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(acceptor.accept(stream).await),
        }
    });
    let accepted = tokio::select! {
        r = handshake => r,
        _ = stop.changed() => return,
    };
    match accepted {
        Ok(None) => {}
        Ok(Some(Ok(stream))) => {
            serve(TokioIo::new(stream), peer, builder, runtime, conn, stop).await
        }
        Ok(Some(Err(e))) => {
            own.tls_handshake_errors.inc();
            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            own.tls_handshake_errors.inc();
            tracing::debug!(client = %peer, "TLS handshake timed out");
        }
    }
}

/// Serves one connection until it ends; on shutdown, lets its current requests finish.
async fn serve<I>(
    io: I,
    peer: SocketAddr,
    builder: &auto::Builder<TokioExecutor>,
    runtime: SharedRuntime,
    conn: Arc<ConnInfo>,
    stop: &mut watch::Receiver<bool>,
) where
    I: Read + Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let (runtime, conn) = (runtime.clone(), conn.clone());
        async move { Ok::<_, Infallible>(proxy::handle(&runtime, &conn, req).await) }
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(client = %peer, error = %e, "connection ended with an error");
    }
}
