//! One client connection from accept to close, under its listener's limits: the protocol is
//! found (HTTP/1.1 or the HTTP/2 preface) before a deadline, then served by hyper while a
//! watchdog closes it when its head is too slow, when it stays idle, or when an HTTP/2 client
//! resets streams faster than the limit allows. This serves the admin, readiness and metrics
//! ports; the proxy listeners find the protocol here and then go to the gateway's own servers
//! (`server::h1`, `server::h2`), which keep these deadlines themselves.
//!
//! The watchdog is polled in the connection's own task, after the connection: for HTTP/1.1 every
//! change it reads (a head begins, a request starts or ends) happens in that same poll, so it
//! needs no wake-up of its own and costs nothing but a few atomic loads per poll.

use super::limits::{Limits, RESET_WINDOW};
use crate::metrics::hub::SelfMetrics;
use bytes::{Buf, Bytes, BytesMut};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

/// `Connection: close`, on every HTTP/1.1 answer while the gateway drains.
static CLOSE: http::HeaderValue = http::HeaderValue::from_static("close");

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// No head has begun.
const NONE: u64 = u64::MAX;

/// Why the gateway closed a client connection for a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// No byte, or not enough to tell the protocol, before `first_byte_timeout` (TLS: the
    /// handshake did not finish).
    FirstByte,
    /// An HTTP/1.1 request head did not finish within `request_headers_timeout`.
    RequestHeaders,
    /// No request for `idle_timeout`.
    Idle,
    /// An HTTP/2 client reset more streams than `http2_max_resets_per_10s`.
    ResetFlood,
    /// h2 itself closed an HTTP/2 client for flooding it (streams reset before they were
    /// accepted, endless CONTINUATION frames): `GOAWAY ENHANCE_YOUR_CALM`.
    Http2Flood,
}

impl Cut {
    /// The `reason` label of `splitgate_downstream_connections_closed_total`.
    pub fn label(self) -> &'static str {
        match self {
            Cut::FirstByte => "first_byte_timeout",
            Cut::RequestHeaders => "request_headers_timeout",
            Cut::Idle => "idle_timeout",
            Cut::ResetFlood => "http2_reset_flood",
            Cut::Http2Flood => "http2_flood",
        }
    }
}

/// The hyper settings of one listener, built once from its limits.
#[derive(Debug, Clone)]
pub struct Http {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    limits: Limits,
}

impl Http {
    /// Settings for `limits`.
    pub fn new(limits: Limits) -> Self {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            // The watchdog times heads and idle connections apart; hyper's one timer would
            // run from the end of the previous answer and so cut idle and slow alike.
            .header_read_timeout(None)
            // The buffer bound keeps a slow head from growing past the limit; the head bound
            // catches a head that arrived whole in one read.
            .max_buf_size(limits.max_head_bytes)
            .max_header_size(limits.max_head_bytes)
            .max_headers(limits.max_headers)
            // One buffer per write (head and body together) rather than a gather write:
            // measured 7% more requests per CPU second on small answers (BENCHMARKS.md).
            .writev(false);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(limits.max_head_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(Duration::from_secs(30));
        Http { h1, h2, limits }
    }

    /// The limits these settings serve.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 with prior knowledge (h2c, or h2 by ALPN).
    Http2,
}

/// Reads until the first bytes tell HTTP/1.1 from the HTTP/2 preface. `None`: the client
/// closed first.
async fn detect<I: AsyncRead + Unpin>(io: &mut I, buf: &mut BytesMut) -> io::Result<Option<Proto>> {
    loop {
        let seen = &buf[..buf.len().min(PREFACE.len())];
        if !PREFACE.starts_with(seen) {
            return Ok(Some(Proto::Http1));
        }
        if seen.len() == PREFACE.len() {
            return Ok(Some(Proto::Http2));
        }
        if io.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// What the watchdog reads: requests in progress, and when the connection last went quiet
/// or began a head. Times are nanoseconds since `epoch`.
#[derive(Debug)]
struct ConnState {
    epoch: Instant,
    http1: bool,
    active: AtomicU32,
    quiet_since: AtomicU64,
    head_since: AtomicU64,
    window_start: AtomicU64,
    resets: AtomicU32,
    max_resets: u32,
    flood: AtomicBool,
    /// The gateway drains: every HTTP/1.1 answer from now on closes the connection.
    closing: AtomicBool,
}

impl ConnState {
    fn new(proto: Proto, limits: &Limits) -> Self {
        ConnState {
            epoch: Instant::now(),
            http1: proto == Proto::Http1,
            active: AtomicU32::new(0),
            quiet_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NONE),
            window_start: AtomicU64::new(0),
            resets: AtomicU32::new(0),
            max_resets: limits.http2_max_resets,
            flood: AtomicBool::new(false),
            closing: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(NONE - 1)
    }

    fn at(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }

    /// Bytes arrived: on a quiet HTTP/1.1 connection they begin a request head.
    fn on_read(&self) {
        if self.http1
            && self.active.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == NONE
        {
            self.head_since.store(self.now(), Ordering::Relaxed);
        }
    }

    /// A stream ended before its answer did: the client reset or left it.
    fn on_reset(&self) {
        if self.http1 {
            return;
        }
        let now = self.now();
        let start = self.window_start.load(Ordering::Relaxed);
        if now.saturating_sub(start) > RESET_WINDOW.as_nanos() as u64 {
            self.window_start.store(now, Ordering::Relaxed);
            self.resets.store(1, Ordering::Relaxed);
        } else if self.resets.fetch_add(1, Ordering::Relaxed) >= self.max_resets {
            self.flood.store(true, Ordering::Relaxed);
        }
    }

    /// When the connection is due to be cut, and why; `None` while a request is in progress.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, Cut)> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let head = self.head_since.load(Ordering::Relaxed);
        if head != NONE {
            return Some((
                self.at(head) + limits.request_headers_timeout,
                Cut::RequestHeaders,
            ));
        }
        let quiet = self.quiet_since.load(Ordering::Relaxed);
        Some((self.at(quiet) + limits.idle_timeout, Cut::Idle))
    }
}

/// A request in progress, from the call of the handler to the end of its answer's body.
#[derive(Debug)]
struct Active {
    state: Arc<ConnState>,
    done: bool,
}

impl Active {
    fn new(state: Arc<ConnState>) -> Self {
        state.active.fetch_add(1, Ordering::AcqRel);
        state.head_since.store(NONE, Ordering::Relaxed);
        Active { state, done: false }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if !self.done {
            self.state.on_reset();
        }
        // Quiet from now: stored before the count drops, so the watchdog never reads an old
        // time for a connection it sees quiet.
        self.state
            .quiet_since
            .store(self.state.now(), Ordering::Relaxed);
        self.state.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer's body that holds its request [`Active`] until the last byte is sent.
#[derive(Debug)]
pub struct Guarded<B: Body> {
    inner: B,
    active: Active,
}

impl<B: Body + Unpin> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.active.done = true;
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

impl<B: Body> Drop for Guarded<B> {
    fn drop(&mut self) {
        // hyper may drop a body it knows is over without polling it to the end.
        if self.inner.is_end_stream() {
            self.active.done = true;
        }
    }
}

/// A client stream that tells the watchdog when bytes arrive, and first hands back the bytes
/// read to find the protocol.
#[derive(Debug)]
struct Watched<I> {
    io: I,
    prefix: Bytes,
    state: Arc<ConnState>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Let go of the detection buffer rather than keep it for the connection's life.
                self.prefix = Bytes::new();
            }
            self.state.on_read();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.on_read();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Closes the connection when its state passes a deadline. It re-arms its timer only when a
/// deadline comes earlier than the one armed; a timer that fires early is re-armed.
struct Watchdog {
    state: Arc<ConnState>,
    limits: Limits,
    sleep: Pin<Box<Sleep>>,
    armed: Instant,
}

impl Watchdog {
    fn new(state: Arc<ConnState>, limits: Limits) -> Self {
        let armed = Instant::now() + limits.idle_timeout.max(limits.request_headers_timeout);
        Watchdog {
            state,
            limits,
            sleep: Box::pin(tokio::time::sleep_until(armed)),
            armed,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Cut> {
        loop {
            if self.state.flood.load(Ordering::Relaxed) {
                return Poll::Ready(Cut::ResetFlood);
            }
            // The common case reads no clock: a deadline later than the armed one (or none,
            // while a request is in progress) is looked at when the timer fires.
            if let Some((due, _)) = self.state.deadline(&self.limits) {
                if due < self.armed {
                    self.armed = due;
                    self.sleep.as_mut().reset(due);
                }
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            self.armed = match self.state.deadline(&self.limits) {
                Some((due, cut)) if due <= now => return Poll::Ready(cut),
                Some((due, _)) => due,
                // A request in progress: look again after an idle period.
                None => now + self.limits.idle_timeout,
            };
            self.sleep.as_mut().reset(self.armed);
        }
    }
}

/// How a client conducted its connection, as far as the limits go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conduct {
    /// Within the limits (an idle connection closed at its timeout is within them).
    Clean,
    /// It broke one: a deadline, the head size, the HTTP/1.1 grammar, or an HTTP/2 flood.
    Offence,
}

/// Whether h2 closed the connection for a flood (`GOAWAY ENHANCE_YOUR_CALM`).
fn is_http2_flood(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM);
        }
        source = s.source();
    }
    false
}

/// Serves one accepted connection with hyper (HTTP/1.1 or HTTP/2) until it ends; see
/// [`serve_detected`].
pub async fn serve<I, F, Fut, B>(
    mut io: I,
    deadline: Instant,
    http: &Http,
    metrics: Option<&SelfMetrics>,
    stop: &mut watch::Receiver<bool>,
    drain: Option<watch::Receiver<bool>>,
    handler: F,
) -> Conduct
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (proto, buf) = match detect_before(&mut io, deadline, metrics, stop).await {
        Ok(found) => found,
        Err(conduct) => return conduct,
    };
    serve_detected(io, proto, buf, http, metrics, stop, drain, handler).await
}

/// Reads until the first bytes tell the protocol, before `deadline` (which, on TLS listeners,
/// was the handshake's too); returns it with the bytes read, or how the connection ended.
pub async fn detect_before<I: AsyncRead + Unpin>(
    io: &mut I,
    deadline: Instant,
    metrics: Option<&SelfMetrics>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(Proto, BytesMut), Conduct> {
    let mut buf = BytesMut::with_capacity(512);
    tokio::select! {
        r = tokio::time::timeout_at(deadline, detect(io, &mut buf)) => match r {
            Ok(Ok(Some(p))) => Ok((p, buf)),
            Ok(Ok(None) | Err(_)) => Err(Conduct::Clean),
            Err(_) => {
                if let Some(m) = metrics {
                    m.closed_connections(Cut::FirstByte.label()).inc();
                }
                tracing::debug!("no request before the first-byte deadline; closing");
                Err(Conduct::Offence)
            }
        },
        _ = stop.changed() => Err(Conduct::Clean),
    }
}

/// Serves a connection whose protocol is known, with hyper, until it ends; `buf` holds the
/// bytes read to find it. On shutdown, lets its current requests finish. While `drain` says
/// the gateway drains, each answer asks the client to go (`Connection: close`, or GOAWAY on
/// HTTP/2).
#[allow(clippy::too_many_arguments)]
pub async fn serve_detected<I, F, Fut, B>(
    io: I,
    proto: Proto,
    buf: BytesMut,
    http: &Http,
    metrics: Option<&SelfMetrics>,
    stop: &mut watch::Receiver<bool>,
    mut drain: Option<watch::Receiver<bool>>,
    handler: F,
) -> Conduct
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let count = |cut: Cut| {
        if let Some(m) = metrics {
            m.closed_connections(cut.label()).inc();
        }
    };
    let limits = http.limits;
    let state = Arc::new(ConnState::new(proto, &limits));
    let io = TokioIo::new(Watched {
        io,
        prefix: buf.freeze(),
        state: state.clone(),
    });
    let service_state = state.clone();
    let service = service_fn(move |req| {
        let active = Active::new(service_state.clone());
        let answer = handler(req);
        async move {
            let mut resp = answer.await;
            if active.state.closing.load(Ordering::Relaxed) {
                resp.headers_mut()
                    .insert(http::header::CONNECTION, CLOSE.clone());
            }
            Ok::<_, Infallible>(resp.map(|inner| Guarded { inner, active }))
        }
    });
    let mut dog = Watchdog::new(state.clone(), limits);
    let result = match proto {
        Proto::Http1 => {
            let conn = http.h1.serve_connection(io, service).with_upgrades();
            // Draining, an idle connection is left open: closing it could cross a request
            // on its way. Its next answer closes it.
            drive(
                conn,
                &mut dog,
                stop,
                &mut drain,
                |c| c.graceful_shutdown(),
                |_| state.closing.store(true, Ordering::Relaxed),
            )
            .await
        }
        Proto::Http2 => {
            let conn = http.h2.serve_connection(io, service);
            drive(
                conn,
                &mut dog,
                stop,
                &mut drain,
                |c| c.graceful_shutdown(),
                |c| c.graceful_shutdown(),
            )
            .await
        }
    };
    match result {
        Ok(Ok(())) => Conduct::Clean,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "connection ended with an error");
            if is_http2_flood(&e) {
                count(Cut::Http2Flood);
                Conduct::Offence
            } else if e.is_parse() || e.is_parse_too_large() {
                // Answered 431 or 400 by hyper.
                Conduct::Offence
            } else {
                Conduct::Clean
            }
        }
        Err(cut) => {
            count(cut);
            tracing::debug!(reason = cut.label(), "connection closed at a limit");
            if cut == Cut::Idle {
                Conduct::Clean
            } else {
                Conduct::Offence
            }
        }
    }
}

/// Polls a connection and its watchdog; a shutdown asks the connection to finish gracefully.
/// When the gateway starts to drain (or drains already), `on_drain` asks the client to go
/// without cutting a request: HTTP/2 sends GOAWAY, HTTP/1.1 closes after its next answer.
async fn drive<C>(
    conn: C,
    dog: &mut Watchdog,
    stop: &mut watch::Receiver<bool>,
    drain: &mut Option<watch::Receiver<bool>>,
    graceful: impl Fn(Pin<&mut C>),
    on_drain: impl Fn(Pin<&mut C>),
) -> Result<Result<(), hyper::Error>, Cut>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    tokio::pin!(conn);
    let mut stopping = false;
    let mut drained = false;
    loop {
        tokio::select! {
            biased;
            r = conn.as_mut() => return Ok(r),
            cut = poll_fn(|cx| dog.poll(cx)) => return Err(cut),
            _ = stop.changed(), if !stopping => {
                stopping = true;
                graceful(conn.as_mut());
            }
            _ = draining(drain), if !drained && !stopping => {
                drained = true;
                on_drain(conn.as_mut());
            }
        }
    }
}

/// Ready once `drain` says the gateway drains; never without one.
pub(super) async fn draining(drain: &mut Option<watch::Receiver<bool>>) {
    let Some(d) = drain else {
        return std::future::pending().await;
    };
    while !*d.borrow_and_update() {
        if d.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}
