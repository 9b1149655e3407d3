//! One HTTP/1.1 client connection on a proxy listener, served by the gateway's own server:
//! request heads parsed in place (`http1::head`), bodies decoded as the handler reads them,
//! answers written with their framing (`http1::encode`), one request after another.
//!
//! What a waiting connection holds is small: its read buffer is let go when it has nothing
//! buffered, and a new request is read into the stack first; its write buffer is let go after
//! each answer. One timer serves the whole connection: the head deadline and the idle deadline
//! are read off two instants, and the timer is re-armed only when a deadline comes earlier
//! than the one it is set for (a timer that fires early is set again), so a busy connection
//! re-arms it about once per `request_headers_timeout` rather than once per request.

use super::conn::{Conduct, Cut};
use super::limits::Limits;
use crate::http1::body::{BoxError, Source};
use crate::http1::encode::{self, Asked, Framing as Out};
use crate::http1::fields::WithFields;
use crate::http1::head::{self, BodyFraming, HeadError, HeadLimits, RequestHead};
use crate::http1::upgrade::{Handover, OnUpgrade, Upgraded};
use crate::http1::RequestBody;
use crate::metrics::hub::SelfMetrics;
use crate::upstream::h1::{chunk_step, Chunk, Framing as Decode, Step};
use bytes::{Buf, Bytes, BytesMut};
use http::{header, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_util::io::poll_read_buf;

/// Bytes a head is read with into the stack while no buffer has room; the buffer then made
/// holds at least [`FIRST_BUFFER`].
const STACK_READ: usize = 2048;
/// Least size of the read buffer made for a new head: most heads fit, and an allocation this
/// small is quick.
const FIRST_BUFFER: usize = 512;
/// Least free room in the read buffer before a read of body bytes.
const READ_ROOM: usize = 8 * 1024;
/// Answer body chunks up to this size are copied next to the head or their framing (one
/// write); larger ones are written from their own buffer.
const COPY_LIMIT: usize = 16 * 1024;

/// The socket and what has been read from it, shared by the connection and the body of the
/// request in progress (which the handler reads in the connection's own task).
struct Shared<I> {
    inner: Mutex<Inner<I>>,
}

struct Inner<I> {
    /// `None` once handed over after a `101`.
    io: Option<I>,
    /// Bytes read and not yet used.
    rbuf: BytesMut,
    /// How far `rbuf` was looked at for a line end, so a head sent a byte at a time is not
    /// parsed again for each byte.
    scanned: usize,
    /// The request body being read: `Done` once at its end (or when there is none).
    body: Decode,
    /// The body broke (malformed, or the client left mid-way): the connection cannot go on.
    broken: bool,
    /// How much of `100 Continue` is written; `None` when none is owed.
    owed: Option<usize>,
}

impl<I> Shared<I> {
    fn lock(&self) -> MutexGuard<'_, Inner<I>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> Inner<I> {
    /// Reads more bytes into `rbuf`: `Ok(0)` at the end of the stream. A body is read with
    /// room for [`READ_ROOM`] bytes at least. A head is read into the stack first when nothing
    /// is buffered, and a buffer is made (or the one held is used) only for bytes that came, so
    /// a waiting connection holds none and a small head costs a small buffer.
    fn poll_fill(&mut self, cx: &mut Context<'_>, body: bool) -> Poll<io::Result<usize>> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        let spare = self.rbuf.capacity() - self.rbuf.len();
        if !body && self.rbuf.is_empty() && spare < STACK_READ {
            let mut stack = [MaybeUninit::<u8>::uninit(); STACK_READ];
            let mut read = ReadBuf::uninit(&mut stack);
            ready!(Pin::new(io).poll_read(cx, &mut read))?;
            let got = read.filled();
            if got.len() > spare {
                self.rbuf = BytesMut::with_capacity(FIRST_BUFFER.max(got.len()));
            }
            self.rbuf.extend_from_slice(got);
            return Poll::Ready(Ok(got.len()));
        }
        if spare < 1024 || (body && spare < READ_ROOM) {
            self.rbuf.reserve(READ_ROOM);
        }
        poll_read_buf(Pin::new(io), cx, &mut self.rbuf)
    }

    /// Writes what is owed of `100 Continue`.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(at) = self.owed {
            let Some(io) = self.io.as_mut() else {
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            };
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &encode::CONTINUE[at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.owed = (at + n < encode::CONTINUE.len()).then_some(at + n);
            if self.owed.is_none() {
                ready!(Pin::new(io).poll_flush(cx))?;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// The next frame of the request body.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        loop {
            if matches!(self.body, Decode::Done | Decode::Close) {
                return Poll::Ready(None);
            }
            if let Err(e) = ready!(self.poll_continue(cx)) {
                return Poll::Ready(Some(Err(self.break_off(e))));
            }
            match self.body {
                Decode::Length(left) if !self.rbuf.is_empty() => {
                    let take = left.min(self.rbuf.len() as u64);
                    let data = self.rbuf.split_to(take as usize).freeze();
                    self.body = match left - take {
                        0 => Decode::Done,
                        n => Decode::Length(n),
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decode::Chunked(state) => match chunk_step(&mut self.rbuf, state) {
                    Ok(Step::Next(next, frame)) => {
                        self.body = next;
                        match frame {
                            Some(f) => return Poll::Ready(Some(Ok(f))),
                            None => continue,
                        }
                    }
                    Ok(Step::NeedMore) => {}
                    Err(e) => {
                        let e = io::Error::new(io::ErrorKind::InvalidData, e.to_string());
                        return Poll::Ready(Some(Err(self.break_off(e))));
                    }
                },
                _ => {}
            }
            match ready!(self.poll_fill(cx, true)) {
                Ok(0) => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed the connection in the middle of the request body",
                    );
                    return Poll::Ready(Some(Err(self.break_off(e))));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(self.break_off(e)))),
            }
        }
    }

    fn break_off(&mut self, e: io::Error) -> io::Error {
        self.body = Decode::Done;
        self.broken = true;
        e
    }

    /// Reads on past the end of a body its handler left unread, as far as the bytes already
    /// here go; whether the body is then over.
    fn skip_buffered_body(&mut self) -> bool {
        self.owed = None;
        loop {
            match self.body {
                Decode::Done | Decode::Close => return !self.broken,
                Decode::Length(left) => {
                    let take = left.min(self.rbuf.len() as u64);
                    self.rbuf.advance(take as usize);
                    if take < left {
                        return false;
                    }
                    self.body = Decode::Done;
                }
                Decode::Chunked(state) => match chunk_step(&mut self.rbuf, state) {
                    Ok(Step::Next(next, _)) => self.body = next,
                    Ok(Step::NeedMore) | Err(_) => return false,
                },
            }
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send> Source for Shared<I> {
    fn poll_frame(&self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        self.lock().poll_body(cx)
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.lock().body, Decode::Done | Decode::Close)
    }

    fn size_hint(&self) -> SizeHint {
        match self.lock().body {
            Decode::Done | Decode::Close => SizeHint::with_exact(0),
            Decode::Length(n) => SizeHint::with_exact(n),
            Decode::Chunked(_) => SizeHint::default(),
        }
    }
}

/// The connection's one timer and the instants its deadlines are read from.
struct Deadlines {
    /// When the connection last finished an answer (or was accepted).
    quiet_since: Instant,
    /// When the head being read began; `None` between requests.
    head_since: Option<Instant>,
    /// What the timer is set for.
    armed: Instant,
}

/// What reading a head came to.
// Unboxed: a head is the common case, and this lives for one poll.
#[allow(clippy::large_enum_variant)]
enum Next {
    Head(RequestHead),
    Refused(HeadError),
    /// The client closed or the socket failed: nothing more to do.
    Gone,
    Cut(Cut),
}

/// Serves an HTTP/1.1 connection until it ends. `prefix` holds the bytes read to find the
/// protocol. On shutdown (`stop`), the request in progress is finished and the connection
/// closed; a waiting connection closes at once. While `drain` says the gateway drains, every
/// answer closes its connection (`Connection: close`).
pub async fn serve<I, F, Fut, B>(
    io: I,
    prefix: BytesMut,
    limits: Limits,
    metrics: Option<&SelfMetrics>,
    stop: &mut watch::Receiver<bool>,
    drain: Option<watch::Receiver<bool>>,
    handler: F,
) -> Conduct
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<RequestBody>) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + WithFields + Unpin,
    B::Error: Into<BoxError>,
{
    let count = |cut: Cut| {
        if let Some(m) = metrics {
            m.closed_connections(cut.label()).inc();
        }
    };
    let started = !prefix.is_empty();
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            io: Some(io),
            rbuf: prefix,
            scanned: 0,
            body: Decode::Done,
            broken: false,
            owed: None,
        }),
    });
    let head_limits = HeadLimits {
        max_bytes: limits.max_head_bytes,
        max_fields: limits.max_headers,
    };
    let now = Instant::now();
    let mut clock = Deadlines {
        quiet_since: now,
        head_since: started.then_some(now),
        armed: now + limits.idle_timeout.max(limits.request_headers_timeout),
    };
    let sleep = tokio::time::sleep_until(clock.armed);
    tokio::pin!(sleep);
    let stopping = AtomicBool::new(false);
    // One wait for the shutdown for the connection's life: made anew for each request, it
    // registered with the listener's shared channel, under its lock, twice per request, and the
    // workers contended for that lock (BENCHMARKS.md, issue 17).
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        let next = tokio::select! {
            biased;
            next = poll_fn(|cx| poll_head(&shared, cx, &head_limits, &limits, &mut clock, sleep.as_mut())) => next,
            // A connection between requests, or part-way through a head, closes at once.
            _ = &mut stopped => return Conduct::Clean,
        };
        let head = match next {
            Next::Head(head) => head,
            Next::Gone => return Conduct::Clean,
            Next::Cut(cut) => {
                count(cut);
                tracing::debug!(reason = cut.label(), "connection closed at a limit");
                return if cut == Cut::Idle {
                    Conduct::Clean
                } else {
                    Conduct::Offence
                };
            }
            Next::Refused(e) => {
                tracing::debug!(error = %e, "request head refused");
                let mut wbuf = Vec::with_capacity(128);
                encode::refusal(&mut wbuf, e.status());
                let _ = write_out(&shared, &mut wbuf, &[]).await;
                shutdown(&shared).await;
                return Conduct::Offence;
            }
        };
        let RequestHead {
            mut parts,
            body,
            keep_alive,
            expect_continue,
            wants_upgrade,
        } = head;
        let asked = Asked {
            version: parts.version,
            head: parts.method == Method::HEAD,
            connect: parts.method == Method::CONNECT,
            keep_alive,
        };
        let trailers_ok = parts
            .headers
            .get(header::TE)
            .is_some_and(|v| head::has_token(v.as_bytes(), b"trailers"));
        let handover = wants_upgrade.then(|| {
            let (handover, on_upgrade) = OnUpgrade::pair();
            parts.extensions.insert(on_upgrade);
            handover
        });
        let body = {
            let mut inner = shared.lock();
            inner.body = match body {
                BodyFraming::Empty => Decode::Done,
                BodyFraming::Length(n) => Decode::Length(n),
                BodyFraming::Chunked => Decode::Chunked(Chunk::Size),
            };
            inner.owed = (expect_continue && body != BodyFraming::Empty).then_some(0);
            match body {
                BodyFraming::Empty => RequestBody::empty(),
                _ => RequestBody::http1(shared.clone()),
            }
        };
        let exchange = exchange(
            &shared,
            &handler,
            Request::from_parts(parts, body),
            Exchange {
                asked,
                trailers_ok,
                handover,
                drain: drain.as_ref(),
                stopping: &stopping,
            },
        );
        // Boxed: a connection waiting for its next request then holds no room for one.
        let mut exchange = Box::pin(exchange);
        let keep = loop {
            tokio::select! {
                biased;
                done = exchange.as_mut() => break done,
                // The client left before its answer was out: the exchange is dropped (its
                // request counted `DC`).
                () = poll_fn(|cx| poll_gone(&shared, cx)) => return Conduct::Clean,
                _ = &mut stopped, if !stopping.load(Ordering::Relaxed) => {
                    stopping.store(true, Ordering::Relaxed);
                }
            }
        };
        drop(exchange);
        let keep = match keep {
            Done::Switched => return Conduct::Clean,
            Done::Answered(keep) => keep && !stopping.load(Ordering::Relaxed),
        };
        let keep = keep && {
            let mut inner = shared.lock();
            let clean = !inner.broken && inner.skip_buffered_body();
            if clean {
                // Nothing buffered: let the buffer go while the connection waits.
                if inner.rbuf.is_empty() {
                    inner.rbuf = BytesMut::new();
                }
                inner.scanned = 0;
            }
            clean
        };
        if !keep {
            shutdown(&shared).await;
            return Conduct::Clean;
        }
        clock.quiet_since = Instant::now();
    }
}

/// What a request's exchange is given besides its answer.
struct Exchange<'a> {
    asked: Asked,
    trailers_ok: bool,
    handover: Option<Handover>,
    drain: Option<&'a watch::Receiver<bool>>,
    /// Set when the gateway stops while the exchange runs: the connection closes after it.
    stopping: &'a AtomicBool,
}

/// How an exchange ended.
enum Done {
    /// Answered; whether the connection may carry another request, as far as the answer goes.
    Answered(bool),
    /// Switched protocols: the connection is handed over or closed.
    Switched,
}

/// Has the handler answer the request, and writes the answer. The handler's future is made
/// here rather than passed in: a future passed to an async fn is held twice in its state (as
/// the argument, and again where it is awaited), and this one is the request's largest.
async fn exchange<I, F, Fut, B>(
    shared: &Shared<I>,
    handler: &F,
    req: Request<RequestBody>,
    x: Exchange<'_>,
) -> Done
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<RequestBody>) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + WithFields + Unpin,
    B::Error: Into<BoxError>,
{
    let mut resp = handler(req).await;
    let draining = x.drain.is_some_and(|d| *d.borrow());
    let stopping = x.stopping.load(Ordering::Relaxed);
    let asked = Asked {
        keep_alive: x.asked.keep_alive && !draining && !stopping,
        ..x.asked
    };
    // The answer stays whole where it lies and its body is lent: taken apart and passed on,
    // the large body was copied at each step (BENCHMARKS.md, issue 17).
    let status = resp.status();
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let known = resp.body().size_hint().exact();
    // Room for the head and a small body, so the buffer is made once.
    let small_body = known.filter(|&n| n <= COPY_LIMIT as u64).unwrap_or(0) as usize;
    let raw = resp.body().fields();
    let raw_len = raw.map_or(0, |f| f.text().len());
    let mut wbuf = Vec::with_capacity(128 + raw_len + resp.headers().len() * 48 + small_body);
    let (framing, keep) = encode::head(&mut wbuf, asked, status, resp.headers(), raw, known);
    // Written: the fields go now rather than with the body.
    drop(std::mem::take(resp.headers_mut()));
    if switching {
        // The connection is the upgraded protocol's from here: handed over when the request
        // asked for the switch, else closed.
        drop(resp);
        let written = write_out(shared, &mut wbuf, &[]).await.is_ok();
        match x.handover {
            Some(handover) if written => hand_over(shared, handover),
            _ => shutdown(shared).await,
        }
        return Done::Switched;
    }
    let sent = send_body(shared, &mut wbuf, resp.body_mut(), framing, x.trailers_ok).await;
    Done::Answered(keep && sent && framing != Out::Close)
}

/// Reads until a whole head is buffered, the client leaves, or a deadline passes.
fn poll_head<I: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared<I>,
    cx: &mut Context<'_>,
    head_limits: &HeadLimits,
    limits: &Limits,
    clock: &mut Deadlines,
    mut sleep: Pin<&mut Sleep>,
) -> Poll<Next> {
    {
        let mut inner = shared.lock();
        loop {
            if !inner.rbuf.is_empty() {
                if clock.head_since.is_none() {
                    clock.head_since = Some(Instant::now());
                }
                // A head ends with a line end: parse when one came, or at the size limit.
                let fresh = inner.rbuf[inner.scanned..].contains(&b'\n');
                if fresh || inner.rbuf.len() >= head_limits.max_bytes {
                    match head::parse(&mut inner.rbuf, head_limits) {
                        Ok(Some(head)) => {
                            inner.scanned = 0;
                            clock.head_since = None;
                            return Poll::Ready(Next::Head(head));
                        }
                        Ok(None) => {}
                        Err(e) => return Poll::Ready(Next::Refused(e)),
                    }
                }
                inner.scanned = inner.rbuf.len();
            }
            match inner.poll_fill(cx, false) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Next::Gone),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => break,
            }
        }
    }
    let (due, cut) = match clock.head_since {
        Some(t) => (t + limits.request_headers_timeout, Cut::RequestHeaders),
        None => (clock.quiet_since + limits.idle_timeout, Cut::Idle),
    };
    if due < clock.armed {
        clock.armed = due;
        sleep.as_mut().reset(due);
    }
    loop {
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if due <= Instant::now() {
            return Poll::Ready(Next::Cut(cut));
        }
        // Set for an earlier deadline that has since moved on.
        clock.armed = due;
        sleep.as_mut().reset(due);
    }
}

/// Ready when the client has closed its connection while its answer is awaited, once the
/// request body is read (a client still sending its body is heard from by the body). Bytes that
/// come meanwhile (a pipelined request) are kept for after the answer.
fn poll_gone<I: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared<I>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    let mut inner = shared.lock();
    let reading = !matches!(inner.body, Decode::Done | Decode::Close);
    if reading || !inner.rbuf.is_empty() || inner.io.is_none() {
        return Poll::Pending;
    }
    match ready!(inner.poll_fill(cx, false)) {
        Ok(0) | Err(_) => Poll::Ready(()),
        // A pipelined request: kept for after this answer, and no more is read meanwhile.
        Ok(_) => Poll::Pending,
    }
}

/// Writes `wbuf` and then `data` whole, and empties `wbuf`.
async fn write_out<I: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared<I>,
    wbuf: &mut Vec<u8>,
    data: &[u8],
) -> io::Result<()> {
    let mut at = 0;
    let total = wbuf.len() + data.len();
    poll_fn(|cx| {
        let mut inner = shared.lock();
        let Some(io) = inner.io.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let mut io = Pin::new(io);
        while at < total {
            let n = if at >= wbuf.len() {
                ready!(io.as_mut().poll_write(cx, &data[at - wbuf.len()..]))?
            } else if data.is_empty() {
                ready!(io.as_mut().poll_write(cx, &wbuf[at..]))?
            } else {
                let parts = [IoSlice::new(&wbuf[at..]), IoSlice::new(data)];
                ready!(io.as_mut().poll_write_vectored(cx, &parts))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            at += n;
        }
        // TLS holds records until flushed; TCP writes straight through.
        io.poll_flush(cx)
    })
    .await?;
    wbuf.clear();
    Ok(())
}

/// Sends an answer's body after its head (in `wbuf`), framed by `framing`. Frames that are
/// ready at once go out in one write with the head. Whether the answer went out whole.
async fn send_body<I, B>(
    shared: &Shared<I>,
    wbuf: &mut Vec<u8>,
    body: &mut B,
    framing: Out,
    trailers_ok: bool,
) -> bool
where
    I: AsyncRead + AsyncWrite + Unpin,
    B: Body<Data = Bytes> + WithFields + Unpin,
    B::Error: Into<BoxError>,
{
    // Bytes the framing still allows (a declared length).
    let mut left = match framing {
        Out::Length(n) => n,
        _ => u64::MAX,
    };
    let mut trailers = None;
    if framing != Out::None && !body.is_end_stream() {
        loop {
            // What the body has at once goes out with the head; then it is waited for.
            let polled = if wbuf.is_empty() {
                Poll::Pending
            } else {
                poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await
            };
            let frame = match polled {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    if !wbuf.is_empty() && write_out(shared, wbuf, &[]).await.is_err() {
                        return false;
                    }
                    poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
                }
            };
            match frame {
                None => break,
                Some(Err(e)) => {
                    let e: BoxError = e.into();
                    tracing::debug!(error = %e, "the answer's body broke off; closing");
                    return false;
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        if data.is_empty() {
                            continue;
                        }
                        if data.len() as u64 > left {
                            // More than the declared length: cut, and the connection closes.
                            data.truncate(left as usize);
                        }
                        left -= data.len() as u64;
                        let chunked = framing == Out::Chunked;
                        if chunked {
                            encode::chunk_start(wbuf, data.len());
                        }
                        if data.len() <= COPY_LIMIT {
                            wbuf.extend_from_slice(&data);
                            if chunked {
                                wbuf.extend_from_slice(b"\r\n");
                            }
                        } else {
                            if write_out(shared, wbuf, &data).await.is_err() {
                                return false;
                            }
                            if chunked {
                                wbuf.extend_from_slice(b"\r\n");
                            }
                        }
                        if left == 0 && framing != Out::Chunked {
                            break;
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            trailers = Some(t);
                        }
                    }
                },
            }
        }
    }
    match framing {
        Out::Chunked => encode::chunked_end(wbuf, trailers.as_ref().filter(|_| trailers_ok)),
        Out::Length(_) if left != 0 => {
            // The body ended short of its declared length: the client would wait for the rest.
            let _ = write_out(shared, wbuf, &[]).await;
            return false;
        }
        _ => {}
    }
    // A body that goes on past its declared length leaves the connection to close.
    let whole = !matches!(framing, Out::Length(_)) || body.is_end_stream();
    // Done with before the last write, so that what it holds (the upstream connection's place,
    // the request's count) is let go before the client can see the answer's end.
    body.release();
    write_out(shared, wbuf, &[]).await.is_ok() && whole
}

/// Gives the connection, and what the client sent after its request, to the upgrade's tunnel.
fn hand_over<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    shared: &Shared<I>,
    handover: Handover,
) {
    let mut inner = shared.lock();
    let Some(io) = inner.io.take() else {
        return;
    };
    let early = inner.rbuf.split().freeze();
    inner.body = Decode::Done;
    drop(inner);
    handover.send(Upgraded {
        io: Box::new(io),
        early,
    });
}

/// Closes the connection's write side (a TLS close_notify, a TCP FIN), briefly.
async fn shutdown<I: AsyncRead + AsyncWrite + Unpin>(shared: &Shared<I>) {
    let closing = poll_fn(|cx| {
        let mut inner = shared.lock();
        match inner.io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    });
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), closing).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// The server's end of a pipe, counting the bytes written to it.
    struct Counted {
        io: DuplexStream,
        written: Arc<AtomicUsize>,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, buf))?;
            self.written.fetch_add(n, Ordering::SeqCst);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// A body of one frame that notes, when released, how many bytes of the answer were out.
    struct Noting {
        data: Option<Bytes>,
        written: Arc<AtomicUsize>,
        at_release: Arc<AtomicUsize>,
    }

    impl Body for Noting {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
        }

        fn is_end_stream(&self) -> bool {
            self.data.is_none()
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
        }
    }

    impl WithFields for Noting {
        fn fields(&self) -> Option<&crate::http1::Fields> {
            None
        }

        fn release(&mut self) {
            self.at_release
                .store(self.written.load(Ordering::SeqCst), Ordering::SeqCst);
        }
    }

    /// What an answer's body holds (for the proxy: the upstream connection's place, the
    /// request's count) is let go before the client can see the answer's end.
    #[tokio::test]
    async fn an_answer_is_released_before_its_last_byte_is_written() {
        let written = Arc::new(AtomicUsize::new(0));
        let at_release = Arc::new(AtomicUsize::new(usize::MAX));
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let io = Counted {
            io: server,
            written: written.clone(),
        };
        let (_tx, mut stop) = watch::channel(false);
        let (w, r) = (written.clone(), at_release.clone());
        let handler = move |_| {
            let body = Noting {
                data: Some(Bytes::from_static(b"hello")),
                written: w.clone(),
                at_release: r.clone(),
            };
            async move { Response::new(body) }
        };
        let served = serve(
            io,
            BytesMut::new(),
            Limits::listener(10),
            None,
            &mut stop,
            None,
            handler,
        );
        let asked = async {
            client
                .write_all(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            answer
        };
        let (_, answer) = tokio::join!(served, asked);
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nhello"), "{text}");
        let (total, at) = (
            written.load(Ordering::SeqCst),
            at_release.load(Ordering::SeqCst),
        );
        assert_eq!(total, answer.len());
        assert!(at < total, "released with {at} of {total} bytes out");
    }
}
