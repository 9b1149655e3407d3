//! One endpoint's connections: a pool of kept-alive HTTP/1.1 connections, or one multiplexed
//! HTTP/2 connection, in the clear or over TLS.
//!
//! HTTP/1.1 requests keep the origin-form URI they arrived with, so nothing is rebuilt per
//! request. A connection goes back to the pool when its response body ends; a request that an
//! idle connection closed under it (it was never written) is retried on another connection.

use crate::tls::UpstreamTls;
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{header, Uri, Version};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// Where an endpoint lives: an IP address, or a DNS name resolved at each new connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointAddr {
    /// A literal `ip:port`.
    Ip(SocketAddr),
    /// `name:port`, e.g. a Kubernetes service.
    Dns(Box<str>),
}

impl std::fmt::Display for EndpointAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(a) => a.fmt(f),
            Self::Dns(d) => f.write_str(d),
        }
    }
}

/// Why a request could not be exchanged with an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made; the request was not consumed.
    #[error("connect to {endpoint} failed: {reason}")]
    Connect {
        /// The endpoint tried.
        endpoint: String,
        /// What went wrong.
        reason: String,
        /// The request, handed back for another endpoint.
        request: Box<Request<UpstreamBody>>,
    },
    /// The connection failed after the request was (partly) written.
    #[error("upstream reset: {0}")]
    Reset(#[source] hyper::Error),
}

/// What a service's endpoints are spoken to in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1, a pool of kept-alive connections.
    #[default]
    Http1,
    /// HTTP/2 (h2c in the clear, h2 by ALPN over TLS), one multiplexed connection.
    Http2,
}

/// Pool settings shared by a service's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolSettings {
    /// Bound on TCP connect (and DNS lookup) and the TLS handshake.
    pub connect_timeout: Duration,
    /// Idle connections kept; more are closed when they come back.
    pub max_idle: usize,
    /// HTTP/1.1 or HTTP/2.
    pub protocol: UpstreamProtocol,
    /// TLS settings, when the endpoints speak TLS.
    pub tls: Option<UpstreamTls>,
}

/// A connection's request sender.
#[derive(Debug)]
enum Sender {
    H1(http1::SendRequest<UpstreamBody>),
    H2(http2::SendRequest<UpstreamBody>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    async fn ready(&mut self) -> Result<(), hyper::Error> {
        match self {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    async fn try_send(
        &mut self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<UpstreamBody>>> {
        match self {
            Sender::H1(s) => s.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(req).await,
        }
    }
}

/// One upstream address and its idle connections (for HTTP/2: its one shared connection).
#[derive(Debug)]
pub struct Endpoint {
    addr: EndpointAddr,
    settings: PoolSettings,
    idle: Mutex<Vec<Sender>>,
    in_flight: AtomicUsize,
}

impl Endpoint {
    /// A new endpoint with an empty pool.
    pub fn new(addr: EndpointAddr, settings: PoolSettings) -> Arc<Self> {
        Arc::new(Endpoint {
            addr,
            settings,
            idle: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
        })
    }

    /// The address.
    pub fn addr(&self) -> &EndpointAddr {
        &self.addr
    }

    /// The pool settings.
    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// Requests sent and not yet finished (for least_request).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Idle pooled connections right now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// An idle HTTP/1.1 connection, taken out of the pool; or a handle on the shared HTTP/2 one.
    fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().ok()?;
        match self.settings.protocol {
            UpstreamProtocol::Http1 => {
                while let Some(s) = idle.pop() {
                    if !s.is_closed() {
                        return Some(s);
                    }
                }
                None
            }
            UpstreamProtocol::Http2 => match idle.first() {
                Some(Sender::H2(s)) if !s.is_closed() => Some(Sender::H2(s.clone())),
                _ => {
                    idle.clear();
                    None
                }
            },
        }
    }

    fn put_idle(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.settings.max_idle {
                idle.push(sender);
            }
        }
    }

    async fn connect(&self) -> Result<Sender, String> {
        let timeout = self.settings.connect_timeout;
        let connect = async {
            let stream = match &self.addr {
                EndpointAddr::Ip(a) => TcpStream::connect(a).await,
                EndpointAddr::Dns(d) => TcpStream::connect(&**d).await,
            }
            .map_err(|e| e.to_string())?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            match &self.settings.tls {
                None => self.handshake(TokioIo::new(stream)).await,
                Some(tls) => {
                    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                    let stream = connector
                        .connect(tls.server_name.clone(), stream)
                        .await
                        .map_err(|e| format!("TLS handshake failed: {e}"))?;
                    self.handshake(TokioIo::new(stream)).await
                }
            }
        };
        tokio::time::timeout(timeout, connect)
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {timeout:?}")))
    }

    async fn handshake<I>(&self, io: I) -> Result<Sender, String>
    where
        I: Read + Write + Unpin + Send + 'static,
    {
        let ended = |e: hyper::Error| {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        };
        match self.settings.protocol {
            UpstreamProtocol::Http1 => {
                // One buffer per write, as on the listener side.
                let (sender, conn) = http1::Builder::new()
                    .writev(false)
                    .handshake(io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(async move { conn.with_upgrades().await.unwrap_or_else(ended) });
                Ok(Sender::H1(sender))
            }
            UpstreamProtocol::Http2 => {
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .handshake(io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(async move { conn.await.unwrap_or_else(ended) });
                let sender = Sender::H2(sender);
                if let (Ok(mut idle), Sender::H2(s)) = (self.idle.lock(), &sender) {
                    idle.clear();
                    idle.push(Sender::H2(s.clone()));
                }
                Ok(sender)
            }
        }
    }

    /// HTTP/2 carries the scheme and host in the request's URI (`:scheme`, `:authority`).
    fn to_h2(&self, req: &mut Request<UpstreamBody>) {
        let host = req.headers_mut().remove(header::HOST);
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        // A request handed on from an endpoint that could not be reached is already in this
        // form: its authority stays the client's host.
        if parts.authority.is_none() {
            parts.authority = host
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                .or_else(|| Authority::try_from(self.addr.to_string()).ok());
        }
        parts.scheme = Some(match self.settings.tls {
            Some(_) => Scheme::HTTPS,
            None => Scheme::HTTP,
        });
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
        *req.version_mut() = Version::HTTP_2;
    }

    /// Sends a request on a pooled or new connection and returns the response with a body that
    /// gives the connection back when it ends.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let guard = InFlight::new(self.clone());
        if self.settings.protocol == UpstreamProtocol::Http2 {
            self.to_h2(&mut req);
        }
        loop {
            let (mut sender, reused) = match self.take_idle() {
                Some(s) => (s, true),
                // Boxed: connecting (TCP, TLS, handshake) is rare and its future is large, and
                // every request's future would otherwise reserve room for it, idle or not.
                None => match Box::pin(self.connect()).await {
                    Ok(s) => (s, false),
                    Err(reason) => {
                        return Err(SendError::Connect {
                            endpoint: self.addr.to_string(),
                            reason,
                            request: Box::new(req),
                        })
                    }
                },
            };
            // A pooled connection may still be wrapping up its last exchange, or closing.
            if reused && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send(req).await {
                Ok(resp) => {
                    // An HTTP/2 connection stays shared; an HTTP/1.1 one comes back at the end.
                    let keep = matches!(sender, Sender::H1(_))
                        && resp.status() != StatusCode::SWITCHING_PROTOCOLS;
                    return Ok(
                        resp.map(|body| PooledBody::new(body, keep.then_some(sender), guard))
                    );
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the idle connection closed under us; safe to try another.
                    Some(back) if reused => {
                        if matches!(sender, Sender::H2(_)) {
                            self.idle.lock().map(|mut i| i.clear()).ok();
                        }
                        req = back
                    }
                    _ => return Err(SendError::Reset(e.into_error())),
                },
            }
        }
    }
}

/// A request body sent upstream: the client's stream, or bytes already read (mirrored requests).
#[derive(Debug)]
pub enum UpstreamBody {
    /// Streamed from the client as it arrives.
    Stream(Incoming),
    /// Held in memory; `None` once sent.
    Buffered(Full<Bytes>),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Stream(b) => Pin::new(b).poll_frame(cx),
            Self::Buffered(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Stream(b) => b.is_end_stream(),
            Self::Buffered(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Stream(b) => b.size_hint(),
            Self::Buffered(b) => b.size_hint(),
        }
    }
}

/// Counts a request against its endpoint until dropped.
#[derive(Debug)]
struct InFlight(Arc<Endpoint>);

impl InFlight {
    fn new(ep: Arc<Endpoint>) -> Self {
        ep.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(ep)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An upstream response body that returns its connection to the pool once fully read.
#[derive(Debug)]
pub struct PooledBody {
    inner: Incoming,
    sender: Option<Sender>,
    guard: InFlight,
}

impl PooledBody {
    fn new(inner: Incoming, sender: Option<Sender>, guard: InFlight) -> Self {
        let mut body = PooledBody {
            inner,
            sender,
            guard,
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(s) = self.sender.take() {
            self.guard.0.put_idle(s);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            // A broken body leaves the connection in an unknown state: let it close.
            Poll::Ready(Some(Err(_))) => self.sender = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
