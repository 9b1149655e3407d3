//! Binds the listeners, accepts connections and serves HTTP/1.1 and h2c on each; on a TLS
//! listener, HTTP/1.1 and HTTP/2 (by ALPN) inside TLS.

use super::accept::Acceptor;
use super::conn::{detect_before, Conduct, Cut, Http, Proto};
use super::limits::{derived_max_connections, raise_descriptor_limit};
use super::offenders::Offenders;
use crate::config::Config;
use crate::proxy::{self, ConnInfo};
use crate::runtime::SharedRuntime;
use crate::tls::{self, CertStore};
use http::HeaderValue;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

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
    /// True once the gateway drains.
    drain: watch::Sender<bool>,
    accept_tasks: Vec<JoinHandle<()>>,
    cert_stores: Vec<Arc<CertStore>>,
}

impl Gateway {
    /// Binds every listener of `config` and starts serving from `runtime`.
    pub async fn start(config: &Config, runtime: SharedRuntime) -> Result<Self, ServeError> {
        let (shutdown, _) = watch::channel(false);
        let (drain, _) = watch::channel(false);
        let descriptors = raise_descriptor_limit();
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
            let listener = bind(l.addr).map_err(|source| ServeError::Bind {
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
            let mut limits = l.limits;
            if limits.max_connections == 0 {
                limits.max_connections =
                    derived_max_connections(descriptors, config.listeners.len());
            }
            let task = accept_loop(
                listener,
                l.stream_idle_timeout,
                tls,
                Arc::new(Http::new(limits)),
                runtime.clone(),
                shutdown.clone(),
                drain.clone(),
            );
            accept_tasks.push(tokio::spawn(task));
        }
        Ok(Gateway {
            addrs,
            shutdown,
            drain,
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

    /// Starts the drain: the listeners go on accepting, and every answer from now on asks its
    /// client to go (`Connection: close` on HTTP/1.1, GOAWAY on HTTP/2), so that clients move
    /// to other replicas without a refused connection or a cut request.
    pub fn drain(&self) {
        self.drain.send_replace(true);
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

/// Clients that finished their handshake and wait to be accepted; the kernel caps it at
/// `net.core.somaxconn`. Above tokio's 1,024, so that a burst waits in the queue instead of
/// having its SYNs dropped and sent again a second later.
const BACKLOG: u32 = 4096;

/// A listening socket on `addr` with [`BACKLOG`].
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
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

/// Accepts until shutdown, never more than the listener's connection limit at once: at the
/// limit it stops accepting (new clients wait in the kernel's backlog) and keeps serving.
async fn accept_loop(
    listener: TcpListener,
    stream_idle: Option<Duration>,
    tls: Option<TlsAcceptor>,
    http: Arc<Http>,
    runtime: SharedRuntime,
    shutdown: watch::Sender<bool>,
    drain: watch::Sender<bool>,
) {
    let mut stop = shutdown.subscribe();
    let mut acceptor = Acceptor::new(listener, http.limits().max_connections);
    let offenders = Arc::new(Offenders::new(http.limits().tarpit));
    while let Some((permit, stream, peer)) = acceptor.next(&mut stop).await {
        let _ = stream.set_nodelay(true);
        let own = runtime.load().hub.own.clone();
        let conn = Arc::new(ConnInfo {
            client_ip: HeaderValue::from_str(&peer.ip().to_string())
                .expect("an IP is a valid header value"),
            proto: HeaderValue::from_static(if tls.is_some() { "https" } else { "http" }),
            stream_idle,
            local: stream.local_addr().ok(),
        });
        let runtime = runtime.clone();
        let http = http.clone();
        let tls = tls.clone();
        let offenders = offenders.clone();
        let mut stop = shutdown.subscribe();
        let drain = drain.subscribe();
        tokio::spawn(async move {
            own.active_connections.inc();
            // The wait below counts against the first-byte deadline: a tarpitted client gets
            // no more time in all than any other.
            let deadline = Instant::now() + http.limits().first_byte_timeout;
            let served = async {
                // Accepted at once, so that the accept queue stays short; read later when its
                // address broke a limit just before.
                if let Some(wait) = offenders.delay(peer.ip()) {
                    own.tarpitted.inc();
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => return,
                    }
                }
                let conduct = match tls {
                    None => serve(stream, deadline, &http, runtime, conn, &mut stop, drain).await,
                    // Boxed: a TLS stream is large, and plain connections need not reserve
                    // room for it.
                    Some(acceptor) => {
                        let tls = serve_tls(
                            acceptor, stream, peer, deadline, &http, runtime, conn, &mut stop,
                            drain,
                        );
                        Box::pin(tls).await
                    }
                };
                if conduct == Conduct::Offence {
                    offenders.offence(peer.ip());
                }
            };
            served.await;
            own.active_connections.dec();
            drop((stop, permit));
        });
    }
}

/// Completes a client's TLS handshake before `deadline`, then serves the connection.
#[allow(clippy::too_many_arguments)]
async fn serve_tls(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
    http: &Http,
    runtime: SharedRuntime,
    conn: Arc<ConnInfo>,
    stop: &mut watch::Receiver<bool>,
    drain: watch::Receiver<bool>,
) -> Conduct {
    let own = runtime.load().hub.own.clone();
    let handshake = tokio::time::timeout_at(deadline, async {
        // A client that connects and leaves without a byte (a TCP health check, a port probe,
        // closing or resetting) has not tried a handshake.
        match stream.peek(&mut [0u8; 1]).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(acceptor.accept(stream).await),
        }
    });
    let accepted = tokio::select! {
        r = handshake => r,
        _ = stop.changed() => return Conduct::Clean,
    };
    match accepted {
        Ok(None) => Conduct::Clean,
        Ok(Some(Ok(stream))) => serve(stream, deadline, http, runtime, conn, stop, drain).await,
        Ok(Some(Err(e))) => {
            own.tls_handshake_errors.inc();
            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
            Conduct::Offence
        }
        Err(_) => {
            own.tls_handshake_errors.inc();
            own.closed_connections(Cut::FirstByte.label()).inc();
            tracing::debug!(client = %peer, "TLS handshake timed out");
            Conduct::Offence
        }
    }
}

/// Serves one proxy connection until it ends, with the gateway's own HTTP/1.1 or HTTP/2 server.
async fn serve<I>(
    mut io: I,
    deadline: Instant,
    http: &Http,
    runtime: SharedRuntime,
    conn: Arc<ConnInfo>,
    stop: &mut watch::Receiver<bool>,
    drain: watch::Receiver<bool>,
) -> Conduct
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let own = runtime.load().hub.own.clone();
    let (proto, buf) = match detect_before(&mut io, deadline, Some(&own), stop).await {
        Ok(found) => found,
        Err(conduct) => return conduct,
    };
    match proto {
        Proto::Http1 => {
            let handler = |req| proxy::handle(&runtime, &conn, req, true);
            let limits = *http.limits();
            super::h1::serve(io, buf, limits, Some(&own), stop, Some(drain), handler).await
        }
        Proto::Http2 => {
            let handler = |req| proxy::handle(&runtime, &conn, req, true);
            let limits = *http.limits();
            // Boxed: an HTTP/1.1 connection then holds no room for an HTTP/2 one.
            let h2 = super::h2::serve(io, buf, limits, Some(&own), stop, Some(drain), handler);
            Box::pin(h2).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a waiting client connection holds is mostly the future that serves it: an HTTP/1.1
    /// connection must not reserve room for a request's future or for an HTTP/2 connection
    /// (both are boxed when they run). 1.7 KiB in a debug build today; the bound
    /// leaves room for compiler changes and catches a large future inlined again.
    #[test]
    fn a_connection_future_is_small() {
        let text = "listeners: [{ name: http, address: \"127.0.0.1:0\" }]\nservices:\n  svc:\n    namespace: d\n    host: a\n    subsets:\n      stable: { endpoints: [\"127.0.0.1:9\"] }\nroutes:\n  - name: r\n    hosts: [a]\n    http:\n      - route: [ { destination: { service: svc, subset: stable } } ]\n";
        let config = crate::config::from_str(text, "t").unwrap();
        let control = crate::control::Control::new(config, None);
        let conn = Arc::new(ConnInfo {
            client_ip: HeaderValue::from_static("192.0.2.1"),
            proto: HeaderValue::from_static("http"),
            stream_idle: None,
            local: None,
        });
        let (tx, mut stop) = watch::channel(false);
        let http = Http::new(super::super::limits::Limits::listener(10));
        let (io, _client) = tokio::io::duplex(64);
        let runtime = control.runtime().clone();
        let served = serve(
            io,
            Instant::now(),
            &http,
            runtime,
            conn,
            &mut stop,
            tx.subscribe(),
        );
        let size = std::mem::size_of_val(&served);
        assert!(size <= 2560, "a connection's future takes {size} bytes");
    }
}
