//! One endpoint's connections: a pool of kept-alive HTTP/1.1 connections, or one multiplexed
//! HTTP/2 connection, in the clear or over TLS.
//!
//! HTTP/1.1 exchanges run in the request's own task (`h1`), and requests keep the origin-form
//! URI they arrived with, so nothing is rebuilt per request. A connection goes back to the pool
//! when its response body ends. An idempotent request whose pooled connection the upstream
//! closed before answering (typically an idle timeout racing the request) is sent once more, on
//! another connection.

use super::circuit::{Circuit, Held};
use super::h1;
use crate::http1::RequestBody;
use crate::proxy::idle::IdleBody;
use crate::tls::UpstreamTls;
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{header, Uri, Version};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

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
        /// The request's body, handed back for another endpoint (the head was lent).
        body: Box<UpstreamBody>,
    },
    /// The connection failed after the request was (partly) written.
    #[error("upstream reset: {0}")]
    Reset(#[source] BoxError),
    /// The upstream's answer broke HTTP/1.1 (a malformed head, or an unasked-for 101); the
    /// connection is closed.
    #[error("upstream protocol error: {0}")]
    Protocol(#[source] BoxError),
    /// The client's request body broke off before the response.
    #[error("client body: {0}")]
    ClientBody(#[source] BoxError),
    /// Every connection the endpoint (or its subset) may have stayed busy for the connect
    /// timeout, or too many requests already wait for one (`connection_pool`).
    #[error("{0}")]
    Overflow(String),
    /// No answer within the try's timeout (`retries.per_try_timeout`).
    #[error("the try timed out")]
    TimedOut,
}

/// A boxed error, as body errors travel.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
    /// HTTP/1.1 connections open at once; more requests wait for one to come free.
    pub max_connections: usize,
    /// HTTP/1.1 or HTTP/2.
    pub protocol: UpstreamProtocol,
    /// TLS settings, when the endpoints speak TLS.
    pub tls: Option<UpstreamTls>,
    /// Requests an HTTP/1.1 connection carries before it is closed; `None`: no bound.
    pub max_requests_per_connection: Option<u32>,
    /// How long a connection may stay idle in the pool before it is closed; `None`: until
    /// the upstream closes it.
    pub idle_timeout: Option<Duration>,
}

/// One upstream address and its idle connections (for HTTP/2: its one shared connection).
#[derive(Debug)]
pub struct Endpoint {
    addr: EndpointAddr,
    settings: PoolSettings,
    idle: Mutex<Idle>,
    shared: Mutex<Option<http2::SendRequest<UpstreamBody>>>,
    in_flight: AtomicUsize,
    /// One permit per HTTP/1.1 connection that may be open.
    slots: Arc<Semaphore>,
    /// Signalled when a connection goes back to the pool.
    returned: Notify,
    /// Wakes the sweeper early: a connection came back that expires before it would wake.
    resweep: Arc<Notify>,
    /// Its failures in a row and whether it is ejected (outlier detection).
    outlier: super::outlier::OutlierState,
}

/// The idle HTTP/1.1 connections, oldest first.
#[derive(Debug, Default)]
struct Idle {
    conns: Vec<(h1::Conn, Slot)>,
    /// Whether a task closes those whose time is up.
    swept: bool,
    /// When that task wakes next.
    wakes: Option<Instant>,
}

/// The right of one HTTP/1.1 connection to be open, against its endpoint's and its subset's
/// bounds; given back when the connection closes.
#[derive(Debug)]
struct Slot {
    _permit: OwnedSemaphorePermit,
    _connection: Held,
    /// Requests sent on the connection.
    served: u32,
    /// When the sweeper closes it, idle: past `idle_timeout`, or a little before the
    /// upstream's own idle timeout (`keep-alive: timeout=N`), whichever comes first.
    expires: Option<Instant>,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, connection: Held) -> Self {
        Slot {
            _permit: permit,
            _connection: connection,
            served: 0,
            expires: None,
        }
    }
}

/// A connection to send on: a pooled one, or the right to open one.
enum Checkout {
    Idle(h1::Conn, Slot),
    Fresh(Slot),
}

impl Endpoint {
    /// A new endpoint with an empty pool.
    pub fn new(addr: EndpointAddr, settings: PoolSettings) -> Arc<Self> {
        Arc::new(Endpoint {
            addr,
            idle: Mutex::new(Idle::default()),
            shared: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
            slots: Arc::new(Semaphore::new(
                settings.max_connections.min(Semaphore::MAX_PERMITS),
            )),
            returned: Notify::new(),
            resweep: Arc::new(Notify::new()),
            outlier: Default::default(),
            settings,
        })
    }

    /// Its outlier detection record.
    pub fn outlier(&self) -> &super::outlier::OutlierState {
        &self.outlier
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

    /// Idle pooled connections right now (an open HTTP/2 connection counts as one).
    pub fn idle_count(&self) -> usize {
        let h1 = self.idle.lock().map(|v| v.conns.len()).unwrap_or(0);
        let h2 = self
            .shared
            .lock()
            .map(|s| s.as_ref().is_some_and(|s| !s.is_closed()))
            .unwrap_or(false);
        h1 + usize::from(h2)
    }

    /// An idle HTTP/1.1 connection that is still open, taken out of the pool.
    fn take_idle(&self) -> Option<(h1::Conn, Slot)> {
        let mut idle = self.idle.lock().ok()?;
        // Those whose time is up are the sweeper's (see `sweep`): no clock read here.
        while let Some((mut c, slot)) = idle.conns.pop() {
            if c.is_usable() {
                return Some((c, slot));
            }
        }
        None
    }

    /// Pools a connection whose exchange ended cleanly, unless the pool is full or the
    /// connection has carried `max_requests_per_connection`: then it closes.
    fn put_idle(self: &Arc<Self>, conn: h1::Conn, mut slot: Slot) {
        let spent = self
            .settings
            .max_requests_per_connection
            .is_some_and(|max| slot.served >= max);
        if let Ok(mut idle) = self.idle.lock() {
            if idle.conns.len() < self.settings.max_idle && !spent {
                // Closed when its time is up by the sweeper, which alone reads the times.
                let limit = match (self.settings.idle_timeout, conn.idle_limit()) {
                    (Some(ours), Some(theirs)) => Some(ours.min(theirs)),
                    (ours, theirs) => ours.or(theirs),
                };
                slot.expires = limit.map(|l| Instant::now() + l);
                let expires = slot.expires;
                idle.conns.push((conn, slot));
                match (expires, idle.swept) {
                    (Some(_), false) => idle.swept = self.sweep(),
                    (Some(at), true) if idle.wakes.is_some_and(|w| at < w) => {
                        self.resweep.notify_one();
                    }
                    _ => {}
                }
            }
        }
        self.returned.notify_one();
    }

    /// Starts the task that closes idle connections whose time is up; it ends when no idle
    /// connection has a time or the endpoint is gone. False when there is no runtime to run it.
    fn sweep(self: &Arc<Self>) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let endpoint = Arc::downgrade(self);
        let resweep = self.resweep.clone();
        runtime.spawn(async move {
            loop {
                let wake = {
                    let Some(ep) = endpoint.upgrade() else {
                        return;
                    };
                    let Ok(mut idle) = ep.idle.lock() else {
                        return;
                    };
                    let now = Instant::now();
                    idle.conns
                        .retain(|(_, s)| s.expires.is_none_or(|at| at > now));
                    idle.wakes = idle.conns.iter().filter_map(|(_, s)| s.expires).min();
                    match idle.wakes {
                        Some(at) => at,
                        None => {
                            idle.swept = false;
                            return;
                        }
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep_until(wake.into()) => {}
                    _ = resweep.notified() => {}
                }
            }
        });
        true
    }

    /// An open slot for a new connection, when the endpoint and its subset are under their
    /// connection bounds.
    fn fresh_slot(&self, circuit: &Arc<Circuit>) -> Option<Slot> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(Slot::new(permit, circuit.connection()?))
    }

    /// A pooled connection, or the right to open one. At a connection bound it waits, as one
    /// of the subset's pending requests, up to the connect timeout, for a connection to come
    /// back or to close; with `http1_max_pending_requests` already waiting it fails at once.
    async fn checkout(&self, circuit: &Arc<Circuit>) -> Result<Checkout, String> {
        if let Some((c, slot)) = self.take_idle() {
            return Ok(Checkout::Idle(c, slot));
        }
        if let Some(slot) = self.fresh_slot(circuit) {
            return Ok(Checkout::Fresh(slot));
        }
        let Some(_pending) = circuit.pending() else {
            return Err(format!(
                "{} requests already wait for a connection to {}'s subset",
                circuit.limits.max_pending.unwrap_or(0),
                self.addr
            ));
        };
        let wait = async {
            loop {
                // Armed before looking, so that a connection closing meanwhile is not missed.
                let freed = circuit.freed();
                tokio::pin!(freed);
                freed.as_mut().enable();
                if let Some((c, slot)) = self.take_idle() {
                    return Ok(Checkout::Idle(c, slot));
                }
                match self.slots.clone().try_acquire_owned() {
                    Ok(permit) => match circuit.connection() {
                        Some(held) => return Ok(Checkout::Fresh(Slot::new(permit, held))),
                        // The subset is at its bound: wait for one of its connections to
                        // close, or for one of this endpoint's to come back.
                        None => {
                            drop(permit);
                            tokio::select! {
                                _ = freed => {}
                                _ = self.returned.notified() => {}
                            }
                        }
                    },
                    Err(_) => tokio::select! {
                        permit = self.slots.clone().acquire_owned() => {
                            let permit = permit.map_err(|e| e.to_string())?;
                            if let Some(held) = circuit.connection() {
                                return Ok(Checkout::Fresh(Slot::new(permit, held)));
                            }
                        }
                        _ = self.returned.notified() => {}
                    },
                }
            }
        };
        let limit = match circuit.limits.max_connections {
            Some(n) if circuit.connections() >= n => format!("the subset's {n}"),
            _ => format!("all {}", self.settings.max_connections),
        };
        tokio::time::timeout(self.settings.connect_timeout, wait)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "{limit} connections to {} stayed busy for {:?}",
                    self.addr, self.settings.connect_timeout
                ))
            })
    }

    /// A TCP (and TLS) connection, within the connect timeout.
    async fn connect(&self) -> Result<h1::Io, String> {
        let timeout = self.settings.connect_timeout;
        let connect = async {
            let stream = match &self.addr {
                EndpointAddr::Ip(a) => TcpStream::connect(a).await,
                EndpointAddr::Dns(d) => TcpStream::connect(&**d).await,
            }
            .map_err(|e| e.to_string())?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            match &self.settings.tls {
                None => Ok(h1::Io::Plain(stream)),
                Some(tls) => {
                    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                    let stream = connector
                        .connect(tls.server_name.clone(), stream)
                        .await
                        .map_err(|e| format!("TLS handshake failed: {e}"))?;
                    Ok(h1::Io::Tls(Box::new(stream)))
                }
            }
        };
        tokio::time::timeout(timeout, connect)
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {timeout:?}")))
    }

    /// The shared HTTP/2 connection, opened if there is none.
    async fn h2_sender(&self) -> Result<http2::SendRequest<UpstreamBody>, String> {
        let open = self.shared.lock().ok().and_then(|s| s.clone());
        if let Some(s) = open.filter(|s| !s.is_closed()) {
            return Ok(s);
        }
        let io = self.connect().await?;
        let handshake = http2::Builder::new(TokioExecutor::new()).handshake(TokioIo::new(io));
        let (sender, conn) = tokio::time::timeout(self.settings.connect_timeout, handshake)
            .await
            .map_err(|_| "HTTP/2 handshake timed out".to_string())?
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        if let Ok(mut shared) = self.shared.lock() {
            *shared = Some(sender.clone());
        }
        Ok(sender)
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

    fn connect_error(&self, reason: String, body: UpstreamBody) -> SendError {
        SendError::Connect {
            endpoint: self.addr.to_string(),
            reason,
            body: Box::new(body),
        }
    }

    /// Sends a request on a pooled or new connection and returns the response with a body that
    /// gives the connection back when it ends. HTTP/1.1 only reads `head`, which stays the
    /// caller's for another try; HTTP/2 takes it (it is left empty) unless no connection could
    /// be made.
    /// `circuit` is the subset's, whose bounds on connections and waiting requests hold for
    /// HTTP/1.1. `raw`: an HTTP/1.1 answer's fields may be kept as text, out of its header
    /// map (see [`PooledBody::fields`]), for a caller that passes them on unchanged. `added`:
    /// fields written after the head's own over HTTP/1.1, or put into its map for HTTP/2.
    pub async fn send(
        self: &Arc<Self>,
        head: &mut http::request::Parts,
        added: &h1::Added<'_>,
        body: UpstreamBody,
        circuit: &Arc<Circuit>,
        raw: bool,
    ) -> Result<Response<PooledBody>, SendError> {
        let guard = InFlight::new(self.clone());
        if self.settings.protocol == UpstreamProtocol::Http2 {
            added.insert_into(&mut head.headers);
            // Boxed: rare next to HTTP/1.1, and every request's future would otherwise reserve
            // room for it.
            return Box::pin(self.send_h2(head, body, guard)).await;
        }
        // HTTP/1.1 here rather than in an async fn of its own: its answer, returned through one
        // more future, was copied once more (BENCHMARKS.md, issue 17).
        let mut body = body;
        // Set once a pooled connection turned out closed: the request goes once more, on a
        // new connection when one may be opened (the other idle ones are as old).
        let mut again = false;
        loop {
            let first = if again {
                self.fresh_slot(circuit).map(Checkout::Fresh)
            } else {
                self.take_idle().map(|(c, slot)| Checkout::Idle(c, slot))
            };
            let checkout = match first {
                Some(checkout) => checkout,
                // Boxed: waiting and connecting are rare and their futures large, and every
                // request's future would otherwise reserve room for them.
                None => match Box::pin(self.checkout(circuit)).await {
                    Ok(c) => c,
                    Err(reason) => return Err(SendError::Overflow(reason)),
                },
            };
            let (conn, mut slot, reused) = match checkout {
                Checkout::Idle(c, slot) => (c, slot, true),
                Checkout::Fresh(slot) => match Box::pin(self.connect()).await {
                    Ok(io) => (h1::Conn::new(io), slot, false),
                    Err(reason) => return Err(self.connect_error(reason, body)),
                },
            };
            slot.served += 1;
            let mut pending = Pending {
                ep: self,
                exchange: h1::Exchange::new(conn, head, added, body, reused && !again, raw),
                slot: Some(slot),
            };
            match pending.exchange.response().await {
                Ok((parts, body)) => {
                    let body = PooledBody::new(Inner::H1(body), guard, pending.slot.take());
                    return Ok(Response::from_parts(parts, body));
                }
                // The upstream closed an idle connection as the request went out: once more,
                // on another connection.
                Err(h1::Failed {
                    retry: Some(replay),
                    error,
                }) => {
                    tracing::debug!(error = %error, "pooled connection closed; sending again");
                    body = replay;
                    again = true;
                }
                Err(h1::Failed {
                    error: h1::Error::ClientBody(e),
                    ..
                }) => return Err(SendError::ClientBody(e)),
                Err(h1::Failed {
                    error: error @ h1::Error::Malformed(_),
                    ..
                }) => return Err(SendError::Protocol(error.into())),
                Err(h1::Failed { error, .. }) => return Err(SendError::Reset(error.into())),
            }
        }
    }

    async fn send_h2(
        self: &Arc<Self>,
        head: &mut http::request::Parts,
        body: UpstreamBody,
        guard: InFlight,
    ) -> Result<Response<PooledBody>, SendError> {
        // An empty head takes its place (no allocation) until it comes back.
        let empty = Request::new(()).into_parts().0;
        let mut req = Request::from_parts(std::mem::replace(head, empty), body);
        self.to_h2(&mut req);
        let mut fresh = false;
        loop {
            let mut sender = match self.shared.lock().ok().and_then(|s| s.clone()) {
                Some(s) if !s.is_closed() => s,
                _ => match self.h2_sender().await {
                    Ok(s) => {
                        fresh = true;
                        s
                    }
                    Err(reason) => {
                        let (parts, body) = req.into_parts();
                        *head = parts;
                        return Err(self.connect_error(reason, body));
                    }
                },
            };
            if sender.ready().await.is_err() && !fresh {
                self.drop_shared();
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp.map(|b| PooledBody::new(Inner::H2(b), guard, None))),
                Err(mut e) => match e.take_message() {
                    // Never written: the connection closed under us; safe to try a new one.
                    Some(back) if !fresh => {
                        self.drop_shared();
                        req = back;
                    }
                    _ => return Err(SendError::Reset(e.into_error().into())),
                },
            }
        }
    }

    /// Finishes an exchange its client gave up on in a task of its own, and pools the
    /// connection if that works out: closing it instead would cost a new connection, and a
    /// socket in TIME_WAIT, for every cancelled request (an HTTP/2 client resetting streams).
    fn salvage<F>(self: &Arc<Self>, rest: F, slot: Slot)
    where
        F: std::future::Future<Output = Option<h1::Conn>> + Send + 'static,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let ep = self.clone();
        runtime.spawn(async move {
            if let Some(conn) = rest.await {
                ep.put_idle(conn, slot);
            }
        });
    }

    fn drop_shared(&self) {
        if let Ok(mut shared) = self.shared.lock() {
            *shared = None;
        }
    }
}

/// A request body sent upstream: the client's stream, or bytes already read (mirrored requests).
#[derive(Debug)]
pub enum UpstreamBody {
    /// Streamed from the client as it arrives, under the stream idle timeout.
    Stream(IdleBody<RequestBody>),
    /// Held in memory; `None` once sent.
    Buffered(Option<Bytes>),
}

impl UpstreamBody {
    /// A body held in memory.
    pub fn buffered(bytes: Bytes) -> Self {
        Self::Buffered((!bytes.is_empty()).then_some(bytes))
    }

    /// The same body again, for a second attempt, when it is at hand: an empty stream, or
    /// bytes held in memory (a shared handle, not a copy).
    pub fn replay(&self) -> Option<Self> {
        match self {
            Self::Stream(b) if b.is_end_stream() => Some(Self::Buffered(None)),
            Self::Stream(_) => None,
            Self::Buffered(b) => Some(Self::Buffered(b.clone())),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Stream(b) => Pin::new(b).poll_frame(cx),
            Self::Buffered(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Stream(b) => b.is_end_stream(),
            Self::Buffered(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Stream(b) => b.size_hint(),
            Self::Buffered(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// An HTTP/1.1 exchange before its response head. Dropped before that (the client went
/// away), it hands the exchange to [`Endpoint::salvage`] when it can still finish.
struct Pending<'a> {
    ep: &'a Arc<Endpoint>,
    exchange: h1::Exchange,
    /// Taken when the response head arrives.
    slot: Option<Slot>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            if let Some(rest) = self.exchange.abandon() {
                self.ep.salvage(rest.salvage(), slot);
            }
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
    /// Boxed: the answer travels by value through every stage of the handler and the server
    /// (a dozen moves a request), and the body's state is most of its size. One allocation
    /// costs less than those copies (BENCHMARKS.md).
    pooled: Box<Pooled>,
    guard: InFlight,
    /// The request's place among its subset's active requests (`http2_max_requests`).
    held: Option<Held>,
}

/// The body's state and, for HTTP/1.1, the connection's place in the pool.
#[derive(Debug)]
struct Pooled {
    inner: Inner,
    slot: Option<Slot>,
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Inner {
    H1(h1::ResponseBody),
    H2(Incoming),
}

impl PooledBody {
    fn new(inner: Inner, guard: InFlight, slot: Option<Slot>) -> Self {
        let mut body = PooledBody {
            pooled: Box::new(Pooled { inner, slot }),
            guard,
            held: None,
        };
        if body.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        let pooled = &mut *self.pooled;
        if let Inner::H1(b) = &mut pooled.inner {
            if let (Some(conn), Some(slot)) = (b.take_reusable(), pooled.slot.take()) {
                self.guard.0.put_idle(conn, slot);
            }
        }
    }

    /// Keeps `held` until the body is dropped.
    pub fn hold(&mut self, held: Held) {
        self.held = Some(held);
    }

    /// The response head's fields as text, from an HTTP/1.1 upstream, when the request
    /// was sent with `raw` (see [`Endpoint::send`]): its header map is empty then.
    pub fn fields(&self) -> Option<&crate::http1::Fields> {
        match &self.pooled.inner {
            Inner::H1(b) => b.fields(),
            Inner::H2(_) => None,
        }
    }

    /// After a `101 Switching Protocols`: the upstream connection's stream and the bytes
    /// already read past the head.
    pub fn take_upgrade(&mut self) -> Option<(h1::Io, Bytes)> {
        match &mut self.pooled.inner {
            Inner::H1(b) => b.take_upgrade(),
            Inner::H2(_) => None,
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Dropped before its end: the client went away mid-body.
        let pooled = &mut *self.pooled;
        if let (Inner::H1(body), Some(slot)) = (&mut pooled.inner, pooled.slot.take()) {
            if let Some(rest) = body.abandon() {
                self.guard.0.salvage(rest.salvage(), slot);
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match &mut self.pooled.inner {
            Inner::H1(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            Inner::H2(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
        };
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.is_end_stream() => self.release(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.pooled.inner {
            Inner::H1(b) => b.is_end_stream(),
            Inner::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.pooled.inner {
            Inner::H1(b) => b.size_hint(),
            Inner::H2(b) => b.size_hint(),
        }
    }
}
