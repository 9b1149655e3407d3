//! One endpoint's pool of kept-alive HTTP/1.1 connections.
//!
//! Requests keep the origin-form URI they arrived with, so nothing is rebuilt per request. A
//! connection goes back to the pool when its response body ends; a request that an idle
//! connection closed under it (it was never written) is retried on another connection.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
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

/// Pool settings shared by a service's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolSettings {
    /// Bound on TCP connect (and DNS lookup).
    pub connect_timeout: Duration,
    /// Idle connections kept; more are closed when they come back.
    pub max_idle: usize,
}

/// One upstream address and its idle connections.
#[derive(Debug)]
pub struct Endpoint {
    addr: EndpointAddr,
    settings: PoolSettings,
    idle: Mutex<Vec<SendRequest<UpstreamBody>>>,
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
    pub fn settings(&self) -> PoolSettings {
        self.settings
    }

    /// Requests sent and not yet finished (for least_request).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Idle pooled connections right now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    fn take_idle(&self) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put_idle(&self, sender: SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.settings.max_idle {
                idle.push(sender);
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<UpstreamBody>, String> {
        let connect = async {
            let stream = match &self.addr {
                EndpointAddr::Ip(a) => TcpStream::connect(a).await,
                EndpointAddr::Dns(d) => TcpStream::connect(&**d).await,
            }?;
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>(stream)
        };
        let stream = match tokio::time::timeout(self.settings.connect_timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => {
                return Err(format!(
                    "timed out after {:?}",
                    self.settings.connect_timeout
                ))
            }
        };
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Sends a request on a pooled or new connection and returns the response with a body that
    /// gives the connection back when it ends.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let guard = InFlight::new(self.clone());
        loop {
            let (mut sender, reused) = match self.take_idle() {
                Some(s) => (s, true),
                None => match self.connect().await {
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
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let keep = resp.status() != StatusCode::SWITCHING_PROTOCOLS;
                    return Ok(
                        resp.map(|body| PooledBody::new(body, keep.then_some(sender), guard))
                    );
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the idle connection closed under us; safe to try another.
                    Some(back) if reused => req = back,
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
    sender: Option<SendRequest<UpstreamBody>>,
    guard: InFlight,
}

impl PooledBody {
    fn new(inner: Incoming, sender: Option<SendRequest<UpstreamBody>>, guard: InFlight) -> Self {
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
