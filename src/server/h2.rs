//! One HTTP/2 client connection on a proxy listener (h2c by prior knowledge, or h2 by ALPN),
//! served by the gateway's own server: frames read and written in the connection's task, header
//! blocks decoded straight into a request (`http2::hpack`), and every stream's handler run in
//! that same task rather than spawned, each woken by a waker of its own.
//!
//! An answer's head is encoded from the upstream's fields as they came (the text the HTTP/1.1
//! server writes too), so an answer the gateway does not change builds no header map. Streams
//! are served in the order they wake; DATA goes out as the client's windows allow.
//!
//! What a connection may hold is bounded: the request bodies it buffers by the connection's
//! receive window ([`CONN_WINDOW`]), what waits to be written by [`WRITE_HIGH`] (past it no
//! frame is read and no body polled until the client reads), a header block by the listener's
//! head limit.

pub use super::conn::PREFACE;
use super::conn::{draining, Conduct, Cut};
use super::limits::{Limits, RESET_WINDOW};
use crate::http1::body::{BoxError, Source};
use crate::http1::encode::now_date;
use crate::http1::fields::WithFields;
use crate::http1::RequestBody;
use crate::http2::frame::{self, flag, kind, setting, Head, Reason, HEADER_LEN};
use crate::http2::hpack::{self, DecodeError, Decoder};
use crate::metrics::hub::SelfMetrics;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use http::header::{self, HeaderName};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_util::io::poll_read_buf;

/// The receive window of each stream the gateway advertises: how much of one request body it
/// buffers before the handler reads it.
pub const STREAM_WINDOW: u32 = 256 * 1024;
/// The receive window of the connection: how much request body the whole connection buffers.
pub const CONN_WINDOW: u32 = 1024 * 1024;
/// The HPACK table size the gateway decodes with (the protocol's default).
const TABLE_SIZE: usize = 4096;
/// Past this many bytes waiting to be written, no frame is read and no answer body polled.
const WRITE_HIGH: usize = 64 * 1024;
/// Bytes of window taken by a handler before they are given back to the client.
const WINDOW_RETURN: u32 = STREAM_WINDOW / 4;
/// How often a connection with streams open is pinged; a PING unanswered by the next one
/// closes it (the client is gone without a word).
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(30);
/// The payload of the keep-alive PING.
const KEEP_ALIVE_PING: [u8; 8] = *b"splitgat";
/// Room made for the field values of requests, shared by the ones that fit.
const TEXT_ROOM: usize = 4096;
/// Streams a client may open and reset before the gateway looks at them, in one go; one more
/// closes the connection (`GOAWAY ENHANCE_YOUR_CALM`, counted as `http2_flood`).
const MAX_EARLY_RESETS: usize = 20;
/// Least room for a read: most requests' frames fit; a larger frame makes its own room.
const READ_ROOM: usize = 4096;
/// Frames read in one round before the streams are polled.
const FRAMES_PER_POLL: usize = 256;
/// Rounds of reading, polling streams and writing in one poll before the task yields.
const ROUNDS_PER_POLL: usize = 32;

/// Why the connection ends at once.
#[derive(Debug)]
enum Fatal {
    /// A connection error: GOAWAY with this reason, then close.
    Protocol(Reason, &'static str),
    /// A limit: GOAWAY, then close, counted.
    Cut(Cut),
    /// The socket failed or the client closed it.
    Gone,
}

type Step = Result<(), Fatal>;

fn protocol(what: &'static str) -> Fatal {
    Fatal::Protocol(Reason::PROTOCOL_ERROR, what)
}

/// The wakers of a connection's streams report here which stream woke.
#[derive(Debug, Default)]
struct Wakeup {
    ready: Mutex<Vec<usize>>,
    task: AtomicWaker,
}

impl Wakeup {
    fn push(&self, slot: usize) {
        self.ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(slot);
        self.task.wake();
    }
}

/// The waker of one stream slot.
#[derive(Debug)]
struct SlotWaker {
    slot: usize,
    wakeup: Arc<Wakeup>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wakeup.push(self.slot);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakeup.push(self.slot);
    }
}

/// A request body as the client sends it, read by the handler.
struct ReqBody {
    state: Mutex<BodyState>,
    wakeup: Arc<Wakeup>,
    slot: usize,
}

#[derive(Default)]
struct BodyState {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    ended: bool,
    /// Why the body cannot end well (the client reset the stream, or broke its length).
    failed: Option<&'static str>,
    reader: Option<Waker>,
    /// Bytes the handler took and the client has not been given back as window.
    taken: u32,
    /// What `content-length` leaves to come.
    left: Option<u64>,
}

impl ReqBody {
    fn lock(&self) -> MutexGuard<'_, BodyState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands on what the client sent, and wakes the reader.
    fn feed(&self, f: impl FnOnce(&mut BodyState)) {
        let mut s = self.lock();
        f(&mut s);
        if let Some(w) = s.reader.take() {
            drop(s);
            w.wake();
        }
    }

    /// The bytes taken since the last call, once they are worth a WINDOW_UPDATE.
    fn take_taken(&self) -> u32 {
        let mut s = self.lock();
        if s.taken < WINDOW_RETURN {
            return 0;
        }
        std::mem::take(&mut s.taken)
    }

    /// Every byte received and not yet given back: taken, or left unread.
    fn outstanding(&self) -> u32 {
        let s = self.lock();
        let unread: usize = s.chunks.iter().map(Bytes::len).sum();
        s.taken.saturating_add(unread as u32)
    }
}

impl Source for ReqBody {
    fn poll_frame(&self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let mut s = self.lock();
        if let Some(chunk) = s.chunks.pop_front() {
            let before = s.taken;
            s.taken = s.taken.saturating_add(chunk.len() as u32);
            if before < WINDOW_RETURN && s.taken >= WINDOW_RETURN {
                // The connection gives the window back when it looks at this stream.
                self.wakeup.push(self.slot);
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(t) = s.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        if let Some(why) = s.failed {
            return Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::UnexpectedEof, why))));
        }
        if s.ended {
            return Poll::Ready(None);
        }
        if !s.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.reader = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let s = self.lock();
        s.ended && s.chunks.is_empty() && s.trailers.is_none() && s.failed.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let s = self.lock();
        let buffered: u64 = s.chunks.iter().map(|c| c.len() as u64).sum();
        // Without a declared length none is told, however much has come: how the body is
        // framed upstream must not hang on when its bytes arrived.
        match s.left {
            Some(n) => SizeHint::with_exact(n + buffered),
            None => SizeHint::default(),
        }
    }
}

/// What a stream is doing.
enum Task<Fut, B> {
    /// The handler works on the request.
    Handling(Pin<Box<Fut>>),
    /// The answer's head is sent; its body goes out.
    Sending(B),
    /// The answer is sent whole; the client still sends its body.
    Sent,
}

/// An open stream.
struct Stream<Fut, B> {
    id: u32,
    task: Task<Fut, B>,
    /// Bytes the client may still send on it.
    recv_window: i64,
    /// Bytes the gateway may still send on it.
    send_window: i64,
    /// The client sent END_STREAM.
    remote_done: bool,
    /// Where its DATA goes, while the client sends a body.
    body: Option<Arc<ReqBody>>,
    /// DATA bytes received, against the `content-length` declared.
    received: u64,
    length: Option<u64>,
    /// Its handler has run.
    polled: bool,
    /// Answer bytes held back by flow control.
    held: Bytes,
    /// The answer body has no more after `held`.
    held_last: bool,
}

/// A header block awaiting its CONTINUATION frames.
struct Pending {
    stream: u32,
    end_stream: bool,
    /// The HEADERS frame made the stream depend on itself.
    self_dependent: bool,
    block: Vec<u8>,
    frames: usize,
}

/// A request being put together from a header block.
#[derive(Default)]
struct Collect {
    /// Every value, one after another: the request's values are slices of one buffer.
    text: BytesMut,
    method: Option<Range<usize>>,
    scheme: Option<Range<usize>>,
    authority: Option<Range<usize>>,
    path: Option<Range<usize>>,
    fields: Vec<(HeaderName, Range<usize>)>,
    regular: bool,
    malformed: Option<&'static str>,
}

impl Collect {
    fn reset(&mut self) {
        // Requests take their values from one buffer in turn, each its own part, so that one
        // allocation serves several.
        self.text.clear();
        if self.text.capacity() < TEXT_ROOM / 4 {
            self.text.reserve(TEXT_ROOM);
        }
        self.method = None;
        self.scheme = None;
        self.authority = None;
        self.path = None;
        self.fields.clear();
        self.regular = false;
        self.malformed = None;
    }

    fn bad(&mut self, why: &'static str) {
        self.malformed.get_or_insert(why);
    }

    fn keep(&mut self, value: &[u8]) -> Range<usize> {
        let start = self.text.len();
        self.text.extend_from_slice(value);
        start..self.text.len()
    }

    /// Takes one field, as RFC 9113 §8.2 and §8.3 allow it. `trailers`: a trailer block,
    /// which may hold no pseudo-field.
    fn field(&mut self, name: &[u8], value: &[u8], trailers: bool) {
        if self.malformed.is_some() {
            return;
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if self.regular || trailers {
                return self.bad("a pseudo-header field after the regular ones, or in trailers");
            }
            let range = self.keep(value);
            let slot = match pseudo {
                b"method" => &mut self.method,
                b"scheme" => &mut self.scheme,
                b"authority" => &mut self.authority,
                b"path" => &mut self.path,
                _ => return self.bad("an unknown pseudo-header field"),
            };
            if slot.replace(range).is_some() {
                self.bad("a pseudo-header field given twice");
            }
            return;
        }
        self.regular = true;
        if name.iter().any(u8::is_ascii_uppercase) {
            return self.bad("an uppercase field name");
        }
        let Ok(name) = HeaderName::from_bytes(name) else {
            return self.bad("an invalid field name");
        };
        if connection_specific(&name) {
            return self.bad("a connection-specific field");
        }
        if name == header::TE && value != b"trailers" {
            return self.bad("te other than trailers");
        }
        if matches!(value.first(), Some(b' ' | b'\t')) || matches!(value.last(), Some(b' ' | b'\t'))
        {
            return self.bad("a field value with white space around it");
        }
        let range = self.keep(value);
        self.fields.push((name, range));
    }

    /// The fields as a map: values are checked and share one buffer. Cookie fields sent
    /// apart (as HTTP/2 clients may, for compression) become one, as HTTP/1.1 needs them
    /// (RFC 9113 §8.2.3).
    fn headers(&mut self, text: &Bytes) -> Result<HeaderMap, &'static str> {
        let mut map = HeaderMap::with_capacity(self.fields.len() + 8);
        let crumbs = self
            .fields
            .iter()
            .filter(|(n, _)| *n == header::COOKIE)
            .count();
        let mut cookie = Vec::new();
        for (name, range) in self.fields.drain(..) {
            if crumbs > 1 && name == header::COOKIE {
                if !cookie.is_empty() {
                    cookie.extend_from_slice(b"; ");
                }
                cookie.extend_from_slice(&text[range]);
                continue;
            }
            let value = HeaderValue::from_maybe_shared(text.slice(range))
                .map_err(|_| "an invalid field value")?;
            map.append(name, value);
        }
        if crumbs > 1 {
            let value = HeaderValue::from_maybe_shared(Bytes::from(cookie))
                .map_err(|_| "an invalid field value")?;
            map.insert(header::COOKIE, value);
        }
        Ok(map)
    }

    /// The request the block asked for (RFC 9113 §8.3.1).
    fn request(&mut self) -> Result<(Request<()>, Option<u64>), &'static str> {
        if let Some(why) = self.malformed {
            return Err(why);
        }
        let text = self.text.split().freeze();
        let method = self.method.clone().ok_or("no :method")?;
        let method = Method::from_bytes(&text[method]).map_err(|_| "an invalid :method")?;
        let mut parts = http::uri::Parts::default();
        if let Some(a) = self.authority.clone() {
            let a =
                Authority::from_maybe_shared(text.slice(a)).map_err(|_| "an invalid :authority")?;
            parts.authority = Some(a);
        }
        if method == Method::CONNECT {
            if self.scheme.is_some() || self.path.is_some() || parts.authority.is_none() {
                return Err("a CONNECT with :scheme or :path, or without :authority");
            }
        } else {
            let scheme = self.scheme.clone().ok_or("no :scheme")?;
            let path = self.path.clone().ok_or("no :path")?;
            if path.is_empty() {
                return Err("an empty :path");
            }
            parts.path_and_query = Some(
                PathAndQuery::from_maybe_shared(text.slice(path))
                    .map_err(|_| "an invalid :path")?,
            );
            if parts.authority.is_some() {
                parts.scheme = Some(match &text[scheme] {
                    b"http" => Scheme::HTTP,
                    b"https" => Scheme::HTTPS,
                    other => Scheme::try_from(other).map_err(|_| "an invalid :scheme")?,
                });
            }
        }
        let uri = Uri::from_parts(parts).map_err(|_| "an invalid request target")?;
        let headers = self.headers(&text)?;
        let length = match headers.get(header::CONTENT_LENGTH) {
            None => None,
            Some(v) => Some(
                std::str::from_utf8(v.as_bytes())
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or("an invalid content-length")?,
            ),
        };
        if headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .nth(1)
            .is_some()
        {
            return Err("content-length given twice");
        }
        let mut req = Request::new(());
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = headers;
        Ok((req, length))
    }
}

/// Counts the streams a client resets before their answers end, over [`RESET_WINDOW`].
struct Resets {
    since: Instant,
    count: u32,
    max: u32,
}

impl Resets {
    /// One more; whether that is past the limit.
    fn one(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.since) > RESET_WINDOW {
            self.since = now;
            self.count = 0;
        }
        self.count += 1;
        self.count > self.max
    }
}

/// What the connection's timer says.
enum Tick {
    Wait,
    Pinged,
    Idle,
    Dead,
}

/// The connection's one timer, for its idle deadline and its keep-alive PINGs.
struct Timer<'a> {
    sleep: Pin<&'a mut Sleep>,
    armed: Instant,
    /// Streams were open when the timer was last looked at.
    busy: bool,
}

/// The connection: its socket, buffers, decoding state and streams.
struct Conn<'h, I, F, Fut, B> {
    io: I,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    /// How much of `wbuf` is written.
    wpos: usize,
    /// The read side is over (the client closed it, or it failed).
    eof: bool,
    handler: &'h F,
    limits: Limits,
    decoder: Decoder,
    collect: Collect,
    /// A header block for encoding, kept for its room.
    block: Vec<u8>,
    /// The client's settings.
    peer_window: i64,
    peer_max_frame: usize,
    /// The client's SETTINGS came (the first frame must be one).
    greeted: bool,
    conn_send: i64,
    conn_recv: i64,
    /// Connection window to give back.
    conn_owed: u32,
    streams: Vec<Option<Stream<Fut, B>>>,
    open: usize,
    wakers: Vec<Waker>,
    wakeup: Arc<Wakeup>,
    /// Slots to poll: woken, or new.
    ready: Vec<usize>,
    /// Slots whose answers wait for room in `wbuf` or for the connection window.
    blocked: Vec<usize>,
    last_id: u32,
    pending: Option<Pending>,
    /// GOAWAY was sent: no new stream is taken.
    going: bool,
    /// The client sent GOAWAY.
    peer_going: bool,
    resets: Resets,
    /// Streams reset before their handler first ran, since the handlers last ran.
    early_resets: usize,
    /// A keep-alive PING is unanswered.
    ping_out: bool,
    /// The client provoked more resets than the limit allows.
    flood: bool,
    /// When the connection last had no stream open.
    quiet_since: Instant,
}

impl<'h, I, F, Fut, B> Conn<'h, I, F, Fut, B>
where
    I: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Request<RequestBody>) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + WithFields + Unpin,
    B::Error: Into<BoxError>,
{
    fn slot_of(&self, id: u32) -> Option<usize> {
        self.streams
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.id == id))
    }

    fn stream(&mut self, slot: usize) -> Option<&mut Stream<Fut, B>> {
        self.streams.get_mut(slot).and_then(Option::as_mut)
    }

    /// Closes the stream in `slot`: its handler or answer body is dropped, its request body
    /// ends with `why` when it is still being sent.
    fn remove(&mut self, slot: usize, why: &'static str) -> Option<Stream<Fut, B>> {
        let s = self.streams.get_mut(slot)?.take()?;
        self.open -= 1;
        if self.open == 0 {
            self.quiet_since = Instant::now();
        }
        if let Some(body) = &s.body {
            if !s.remote_done {
                body.feed(|b| {
                    b.failed.get_or_insert(why);
                });
            }
            // The connection window of what the handler did not read, or read and was not
            // given back yet, goes back now.
            self.conn_owed += body.outstanding();
        }
        Some(s)
    }

    /// A stream error: RST_STREAM, and the stream closed.
    fn reset(&mut self, id: u32, reason: Reason, why: &'static str) {
        tracing::debug!(stream = id, reason = reason.0, why, "HTTP/2 stream reset");
        frame::rst(&mut self.wbuf, id, reason);
        if let Some(slot) = self.slot_of(id) {
            let working = !matches!(
                self.streams[slot].as_ref().map(|s| &s.task),
                Some(Task::Sent)
            );
            self.remove(slot, why);
            // Resets the client provokes count as its own: each ended a handler at work.
            if working && self.resets.one() {
                self.flood = true;
            }
        }
    }

    fn insert(&mut self, stream: Stream<Fut, B>) -> usize {
        self.open += 1;
        let slot = match self.streams.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.streams.push(None);
                self.streams.len() - 1
            }
        };
        if self.wakers.len() <= slot {
            self.wakers.push(Waker::from(Arc::new(SlotWaker {
                slot,
                wakeup: self.wakeup.clone(),
            })));
        }
        self.streams[slot] = Some(stream);
        slot
    }

    /// Reads and handles frames until the socket has none, `wbuf` is full, or the budget of a
    /// poll is spent. Whether anything was read.
    fn poll_frames(&mut self, cx: &mut Context<'_>) -> Result<bool, Fatal> {
        let mut progressed = false;
        let mut frames = 0;
        loop {
            while self.rbuf.len() >= HEADER_LEN {
                let head = Head::parse(&self.rbuf);
                if head.len > frame::DEFAULT_MAX_FRAME {
                    return Err(Fatal::Protocol(
                        Reason::FRAME_SIZE_ERROR,
                        "a frame larger than allowed",
                    ));
                }
                if self.rbuf.len() < HEADER_LEN + head.len {
                    self.rbuf.reserve(HEADER_LEN + head.len - self.rbuf.len());
                    break;
                }
                self.rbuf.advance(HEADER_LEN);
                let payload = self.rbuf.split_to(head.len);
                self.on_frame(head, payload)?;
                if self.flood {
                    return Err(Fatal::Cut(Cut::ResetFlood));
                }
                progressed = true;
                frames += 1;
                if self.wbuf.len() - self.wpos > WRITE_HIGH || frames >= FRAMES_PER_POLL {
                    return Ok(progressed);
                }
            }
            if self.eof {
                return Ok(progressed);
            }
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(READ_ROOM);
            }
            match poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.eof = true;
                    return Ok(true);
                }
                Poll::Ready(Ok(_)) => progressed = true,
                Poll::Pending => return Ok(progressed),
            }
        }
    }

    fn on_frame(&mut self, head: Head, payload: BytesMut) -> Step {
        if !self.greeted {
            if head.kind != kind::SETTINGS || head.has(flag::ACK) {
                return Err(protocol("the client's first frame is not SETTINGS"));
            }
            self.greeted = true;
        }
        if let Some(p) = &self.pending {
            if head.kind != kind::CONTINUATION || head.stream != p.stream {
                return Err(protocol("a header block broken off before its end"));
            }
        }
        match head.kind {
            kind::DATA => self.on_data(head, payload.freeze()),
            kind::HEADERS => self.on_headers(head, &payload),
            kind::PRIORITY => {
                if head.stream == 0 {
                    return Err(protocol("PRIORITY on stream 0"));
                }
                if head.len != 5 {
                    self.reset(
                        head.stream,
                        Reason::FRAME_SIZE_ERROR,
                        "a PRIORITY frame of the wrong size",
                    );
                } else if depends_on(&payload) == head.stream {
                    // A stream error (RFC 9113 §5.3.1). A stream still idle cannot be reset
                    // (§6.4), so there it fails the connection; a closed one is left alone.
                    if self.slot_of(head.stream).is_some() {
                        self.reset(head.stream, Reason::PROTOCOL_ERROR, SELF_DEPENDENT);
                    } else if head.stream > self.last_id {
                        return Err(protocol("an idle stream that depends on itself"));
                    }
                }
                Ok(())
            }
            kind::RST_STREAM => self.on_rst(head, &payload),
            kind::SETTINGS => self.on_settings(head, &payload),
            kind::PUSH_PROMISE => Err(protocol("PUSH_PROMISE from a client")),
            kind::PING => {
                if head.stream != 0 {
                    return Err(protocol("PING on a stream"));
                }
                if head.len != 8 {
                    return Err(Fatal::Protocol(
                        Reason::FRAME_SIZE_ERROR,
                        "a PING of the wrong size",
                    ));
                }
                if !head.has(flag::ACK) {
                    frame::ping_ack(&mut self.wbuf, &payload);
                } else if payload[..] == KEEP_ALIVE_PING {
                    self.ping_out = false;
                }
                Ok(())
            }
            kind::GOAWAY => {
                if head.stream != 0 {
                    return Err(protocol("GOAWAY on a stream"));
                }
                if head.len < 8 {
                    return Err(Fatal::Protocol(
                        Reason::FRAME_SIZE_ERROR,
                        "a GOAWAY of the wrong size",
                    ));
                }
                self.peer_going = true;
                Ok(())
            }
            kind::WINDOW_UPDATE => self.on_window_update(head, &payload),
            kind::CONTINUATION => self.on_continuation(head, &payload),
            // Unknown frame types are ignored (RFC 9113 §4.1).
            _ => Ok(()),
        }
    }

    fn on_settings(&mut self, head: Head, payload: &[u8]) -> Step {
        if head.stream != 0 {
            return Err(protocol("SETTINGS on a stream"));
        }
        if head.has(flag::ACK) {
            if head.len != 0 {
                return Err(Fatal::Protocol(
                    Reason::FRAME_SIZE_ERROR,
                    "a SETTINGS ACK with a payload",
                ));
            }
            return Ok(());
        }
        if head.len % 6 != 0 {
            return Err(Fatal::Protocol(
                Reason::FRAME_SIZE_ERROR,
                "a SETTINGS frame of the wrong size",
            ));
        }
        for entry in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([entry[0], entry[1]]);
            let value = frame::be_u32(&entry[2..]);
            match id {
                setting::ENABLE_PUSH | setting::ENABLE_CONNECT_PROTOCOL if value > 1 => {
                    return Err(protocol("a boolean setting above 1"));
                }
                setting::INITIAL_WINDOW_SIZE => {
                    let value = i64::from(value);
                    if value > frame::MAX_WINDOW {
                        return Err(Fatal::Protocol(
                            Reason::FLOW_CONTROL_ERROR,
                            "an initial window above 2^31-1",
                        ));
                    }
                    let delta = value - self.peer_window;
                    self.peer_window = value;
                    for slot in 0..self.streams.len() {
                        if let Some(s) = self.stream(slot) {
                            s.send_window += delta;
                            if s.send_window > frame::MAX_WINDOW {
                                return Err(Fatal::Protocol(
                                    Reason::FLOW_CONTROL_ERROR,
                                    "a stream window pushed above 2^31-1",
                                ));
                            }
                            if delta > 0 {
                                self.ready.push(slot);
                            }
                        }
                    }
                }
                setting::MAX_FRAME_SIZE => {
                    if !(frame::DEFAULT_MAX_FRAME as u32..=frame::MAX_MAX_FRAME).contains(&value) {
                        return Err(protocol("a max frame size out of range"));
                    }
                    self.peer_max_frame = value as usize;
                }
                // The encoder never indexes, so the client's table size does not matter; the
                // gateway opens no streams, so neither does its stream limit.
                _ => {}
            }
        }
        frame::settings_ack(&mut self.wbuf);
        Ok(())
    }

    fn on_window_update(&mut self, head: Head, payload: &[u8]) -> Step {
        if head.len != 4 {
            return Err(Fatal::Protocol(
                Reason::FRAME_SIZE_ERROR,
                "a WINDOW_UPDATE of the wrong size",
            ));
        }
        let inc = i64::from(frame::be_u32(payload) & 0x7fff_ffff);
        if head.stream == 0 {
            if inc == 0 {
                return Err(protocol("a WINDOW_UPDATE of 0"));
            }
            self.conn_send += inc;
            if self.conn_send > frame::MAX_WINDOW {
                return Err(Fatal::Protocol(
                    Reason::FLOW_CONTROL_ERROR,
                    "the connection window pushed above 2^31-1",
                ));
            }
            self.ready.append(&mut self.blocked);
            return Ok(());
        }
        let Some(slot) = self.slot_of(head.stream) else {
            if head.stream > self.last_id {
                return Err(protocol("WINDOW_UPDATE on an idle stream"));
            }
            return Ok(());
        };
        if inc == 0 {
            self.reset(head.stream, Reason::PROTOCOL_ERROR, "a WINDOW_UPDATE of 0");
            return Ok(());
        }
        let s = self.stream(slot).expect("found above");
        s.send_window += inc;
        if s.send_window > frame::MAX_WINDOW {
            self.reset(
                head.stream,
                Reason::FLOW_CONTROL_ERROR,
                "a stream window pushed above 2^31-1",
            );
            return Ok(());
        }
        self.ready.push(slot);
        Ok(())
    }

    fn on_rst(&mut self, head: Head, payload: &[u8]) -> Step {
        if head.stream == 0 {
            return Err(protocol("RST_STREAM on stream 0"));
        }
        if head.len != 4 {
            return Err(Fatal::Protocol(
                Reason::FRAME_SIZE_ERROR,
                "an RST_STREAM of the wrong size",
            ));
        }
        if head.stream > self.last_id {
            return Err(protocol("RST_STREAM on an idle stream"));
        }
        let _ = payload;
        let Some(slot) = self.slot_of(head.stream) else {
            return Ok(());
        };
        let Some(s) = self.streams[slot].as_ref() else {
            return Ok(());
        };
        let answered = matches!(s.task, Task::Sent);
        if !s.polled {
            // Opened and reset before the gateway looked at it: a client doing that in bulk
            // sends work only to cancel it.
            self.early_resets += 1;
            if self.early_resets > MAX_EARLY_RESETS {
                return Err(Fatal::Cut(Cut::Http2Flood));
            }
        }
        self.remove(slot, "the client reset the stream");
        if !answered && self.resets.one() {
            return Err(Fatal::Cut(Cut::ResetFlood));
        }
        Ok(())
    }

    fn on_data(&mut self, head: Head, payload: Bytes) -> Step {
        if head.stream == 0 {
            return Err(protocol("DATA on stream 0"));
        }
        let len = payload.len() as i64;
        if len > self.conn_recv {
            return Err(Fatal::Protocol(
                Reason::FLOW_CONTROL_ERROR,
                "DATA past the connection window",
            ));
        }
        self.conn_recv -= len;
        let Some(data_len) = frame::unpadded(head.flags, &payload).map(<[u8]>::len) else {
            return Err(protocol("padding longer than the frame"));
        };
        let start = if head.has(flag::PADDED) { 1 } else { 0 };
        // Padding is given back at once; what a stream that is gone would have had, too.
        let mut give_back = (payload.len() - data_len) as u32;
        let Some(slot) = self.slot_of(head.stream) else {
            if head.stream > self.last_id {
                return Err(protocol("DATA on an idle stream"));
            }
            self.conn_owed += payload.len() as u32;
            return Ok(());
        };
        let s = self.streams[slot].as_mut().expect("found above");
        if s.remote_done {
            self.conn_owed += payload.len() as u32;
            self.reset(
                head.stream,
                Reason::STREAM_CLOSED,
                "DATA after the end of the stream",
            );
            return Ok(());
        }
        if len > s.recv_window {
            self.conn_owed += payload.len() as u32;
            self.reset(
                head.stream,
                Reason::FLOW_CONTROL_ERROR,
                "DATA past the stream window",
            );
            return Ok(());
        }
        s.recv_window -= len;
        if give_back > 0 && !head.has(flag::END_STREAM) {
            // The stream's share of the padding goes back at once too, while it can be used.
            s.recv_window += i64::from(give_back);
            frame::window_update(&mut self.wbuf, head.stream, give_back);
        }
        s.received += data_len as u64;
        let end = head.has(flag::END_STREAM);
        let broken = match s.length {
            Some(n) => s.received > n || (end && s.received != n),
            None => false,
        };
        if broken {
            self.conn_owed += payload.len() as u32;
            self.reset(
                head.stream,
                Reason::PROTOCOL_ERROR,
                "DATA that disagrees with content-length",
            );
            return Ok(());
        }
        if end {
            s.remote_done = true;
        }
        let data = payload.slice(start..start + data_len);
        let left = s.length.map(|n| n - s.received);
        match &s.body {
            // The handler let go of the body: nobody will read it.
            Some(body) if Arc::strong_count(body) == 1 => give_back += data_len as u32,
            Some(body) => body.feed(|b| {
                if !data.is_empty() {
                    b.chunks.push_back(data);
                }
                b.left = left;
                b.ended = end;
            }),
            None => give_back += data_len as u32,
        }
        if matches!(s.task, Task::Sent) && end {
            self.remove(slot, "done");
        }
        self.conn_owed += give_back;
        Ok(())
    }

    fn on_headers(&mut self, head: Head, payload: &[u8]) -> Step {
        if head.stream == 0 {
            return Err(protocol("HEADERS on stream 0"));
        }
        let Some(mut block) = frame::unpadded(head.flags, payload) else {
            return Err(protocol("padding longer than the frame"));
        };
        let mut self_dependent = false;
        if head.has(flag::PRIORITY) {
            if block.len() < 5 {
                return Err(Fatal::Protocol(
                    Reason::FRAME_SIZE_ERROR,
                    "a HEADERS frame too short for its priority",
                ));
            }
            self_dependent = depends_on(block) == head.stream;
            block = &block[5..];
        }
        let end_stream = head.has(flag::END_STREAM);
        if head.has(flag::END_HEADERS) {
            return self.on_block(head.stream, end_stream, self_dependent, block);
        }
        let mut buf = Vec::with_capacity(block.len() * 2);
        buf.extend_from_slice(block);
        self.pending = Some(Pending {
            stream: head.stream,
            end_stream,
            self_dependent,
            block: buf,
            frames: 1,
        });
        Ok(())
    }

    fn on_continuation(&mut self, head: Head, payload: &[u8]) -> Step {
        let Some(p) = self.pending.as_mut() else {
            return Err(protocol("CONTINUATION without HEADERS before it"));
        };
        p.block.extend_from_slice(payload);
        p.frames += 1;
        // A block may exceed the head limit by a frame; past that, or in a flood of empty
        // frames, the client is not sending a request.
        if p.block.len() > self.limits.max_head_bytes + frame::DEFAULT_MAX_FRAME
            || p.frames > 16 + self.limits.max_head_bytes / 1024
        {
            return Err(Fatal::Cut(Cut::Http2Flood));
        }
        if head.has(flag::END_HEADERS) {
            let p = self.pending.take().expect("checked above");
            return self.on_block(p.stream, p.end_stream, p.self_dependent, &p.block);
        }
        Ok(())
    }

    /// A whole header block: a new request, or the trailers of one.
    fn on_block(&mut self, id: u32, end_stream: bool, self_dependent: bool, block: &[u8]) -> Step {
        let slot = self.slot_of(id);
        let trailers = slot.is_some();
        self.collect.reset();
        let collect = &mut self.collect;
        let decoded = self.decoder.decode(block, self.limits.max_head_bytes, |f| {
            collect.field(f.name, f.value, trailers)
        });
        let too_large = match decoded {
            Ok(()) => false,
            Err(DecodeError::ListTooLarge) => true,
            Err(e) => {
                tracing::debug!(error = %e, "HPACK decoding failed");
                return Err(Fatal::Protocol(
                    Reason::COMPRESSION_ERROR,
                    "a header block that cannot be decoded",
                ));
            }
        };
        // A block is decoded even when its stream fails, so that the HPACK table stays in step.
        if let Some(slot) = slot {
            if self_dependent {
                self.reset(id, Reason::PROTOCOL_ERROR, SELF_DEPENDENT);
                return Ok(());
            }
            return self.on_trailers(slot, id, end_stream, too_large);
        }
        if id % 2 == 0 {
            return Err(protocol("a stream opened with an even identifier"));
        }
        if id <= self.last_id {
            // A stream identifier that does not grow (RFC 9113 §5.1.1).
            return Err(protocol(
                "HEADERS on a stream identifier already used or skipped",
            ));
        }
        self.last_id = id;
        if self_dependent {
            self.reset(id, Reason::PROTOCOL_ERROR, SELF_DEPENDENT);
            return Ok(());
        }
        if self.going || self.peer_going {
            // After GOAWAY: the client may send the request again on a new connection.
            return Ok(());
        }
        if self.open >= self.limits.http2_max_concurrent_streams as usize {
            frame::rst(&mut self.wbuf, id, Reason::REFUSED_STREAM);
            return Ok(());
        }
        if too_large {
            self.answer_now(id, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
            if !end_stream {
                // The answer is whole: the client may stop sending the request (RFC 9113 §8.1).
                frame::rst(&mut self.wbuf, id, Reason::NO_ERROR);
            }
            return Ok(());
        }
        let (req, length) = match self.collect.request() {
            Ok(r) => r,
            Err(why) => {
                self.reset(id, Reason::PROTOCOL_ERROR, why);
                return Ok(());
            }
        };
        if end_stream && length.is_some_and(|n| n != 0) {
            self.reset(id, Reason::PROTOCOL_ERROR, "content-length without DATA");
            return Ok(());
        }
        // The slot the stream will take, for its body's wakes.
        let free = self
            .streams
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.streams.len());
        let body = (!end_stream).then(|| {
            Arc::new(ReqBody {
                state: Mutex::new(BodyState {
                    left: length,
                    ..BodyState::default()
                }),
                wakeup: self.wakeup.clone(),
                slot: free,
            })
        });
        let req = req.map(|()| match &body {
            Some(b) => RequestBody::stream(b.clone()),
            None => RequestBody::empty(),
        });
        let fut = Box::pin((self.handler)(req));
        let slot = self.insert(Stream {
            id,
            task: Task::Handling(fut),
            recv_window: i64::from(STREAM_WINDOW),
            send_window: self.peer_window,
            remote_done: end_stream,
            body,
            received: 0,
            length,
            polled: false,
            held: Bytes::new(),
            held_last: false,
        });
        debug_assert_eq!(slot, free);
        self.ready.push(slot);
        Ok(())
    }

    fn on_trailers(&mut self, slot: usize, id: u32, end_stream: bool, too_large: bool) -> Step {
        let s = self.streams[slot].as_mut().expect("found by the caller");
        if s.remote_done {
            self.reset(
                id,
                Reason::STREAM_CLOSED,
                "HEADERS after the end of the stream",
            );
            return Ok(());
        }
        if !end_stream || too_large || self.collect.malformed.is_some() {
            self.reset(
                id,
                Reason::PROTOCOL_ERROR,
                "trailers without END_STREAM, or malformed",
            );
            return Ok(());
        }
        if s.length.is_some_and(|n| n != s.received) {
            self.reset(
                id,
                Reason::PROTOCOL_ERROR,
                "DATA that disagrees with content-length",
            );
            return Ok(());
        }
        let text = self.collect.text.split().freeze();
        let trailers = match self.collect.headers(&text) {
            Ok(t) => t,
            Err(why) => {
                self.reset(id, Reason::PROTOCOL_ERROR, why);
                return Ok(());
            }
        };
        let s = self.streams[slot].as_mut().expect("found by the caller");
        s.remote_done = true;
        if let Some(body) = &s.body {
            body.feed(|b| {
                b.trailers = Some(trailers);
                b.ended = true;
            });
        }
        if matches!(s.task, Task::Sent) {
            self.remove(slot, "done");
        }
        Ok(())
    }

    /// Answers a stream with a bare status and no body, without its handler.
    fn answer_now(&mut self, id: u32, status: StatusCode) {
        self.block.clear();
        hpack::encode_status(status.as_u16(), &mut self.block);
        hpack::encode_field(b"content-length", b"0", false, &mut self.block);
        hpack::encode_field(b"date", &now_date(), false, &mut self.block);
        frame::header_block(&mut self.wbuf, id, &self.block, true, self.peer_max_frame);
    }

    /// One round: each stream woken so far is polled once, and the heads of answers that are
    /// ready and as much of their bodies as the windows and the write buffer allow are sent.
    /// Whether any stream was polled.
    fn poll_streams(&mut self) -> bool {
        {
            let mut woken = self
                .wakeup
                .ready
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.ready.append(&mut woken);
        }
        if self.ready.is_empty() {
            return false;
        }
        self.early_resets = 0;
        let mut ready = std::mem::take(&mut self.ready);
        if ready.len() > 1 {
            ready.sort_unstable();
            ready.dedup();
        }
        for &slot in &ready {
            self.poll_stream(slot);
        }
        ready.clear();
        if self.ready.is_empty() {
            self.ready = ready;
        }
        true
    }

    fn poll_stream(&mut self, slot: usize) {
        let waker = match self.wakers.get(slot) {
            Some(w) => w.clone(),
            None => return,
        };
        let mut cx = Context::from_waker(&waker);
        let Some(s) = self.stream(slot) else {
            return;
        };
        s.polled = true;
        if let Task::Handling(fut) = &mut s.task {
            let Poll::Ready(resp) = fut.as_mut().poll(&mut cx) else {
                self.give_back(slot);
                return;
            };
            self.give_back(slot);
            self.send_head(slot, resp);
        } else {
            self.give_back(slot);
        }
        self.send_body(slot, &mut cx);
    }

    /// Gives the client back the window of the body bytes the handler of `slot` took.
    fn give_back(&mut self, slot: usize) {
        let Some(s) = self.stream(slot) else {
            return;
        };
        let Some(body) = &s.body else {
            return;
        };
        let taken = body.take_taken();
        if taken == 0 {
            return;
        }
        let id = s.id;
        if !s.remote_done {
            s.recv_window += i64::from(taken);
            frame::window_update(&mut self.wbuf, id, taken);
        }
        self.conn_owed += taken;
    }

    fn send_head(&mut self, slot: usize, mut resp: Response<B>) {
        let s = self.streams[slot].as_mut().expect("polled above");
        let id = s.id;
        self.block.clear();
        encode_head(
            &mut self.block,
            resp.status(),
            resp.headers(),
            resp.body().fields(),
        );
        let end = resp.body().is_end_stream();
        let small = resp
            .body()
            .size_hint()
            .exact()
            .filter(|&n| n <= 16 * 1024)
            .unwrap_or(0);
        let need = self.block.len() + 2 * HEADER_LEN + small as usize;
        if self.wbuf.capacity() - self.wbuf.len() < need {
            // Room for several answers, made once while the connection is busy.
            self.wbuf.reserve(need.max(4096));
        }
        frame::header_block(&mut self.wbuf, id, &self.block, end, self.peer_max_frame);
        drop(std::mem::take(resp.headers_mut()));
        if end {
            self.finish(slot);
        } else {
            s.task = Task::Sending(resp.into_body());
        }
    }

    /// The answer of `slot` is sent whole.
    fn finish(&mut self, slot: usize) {
        let Some(s) = self.stream(slot) else {
            return;
        };
        if s.remote_done {
            self.remove(slot, "done");
            return;
        }
        let id = s.id;
        s.task = Task::Sent;
        if s.body.as_ref().is_none_or(|b| Arc::strong_count(b) == 1) {
            // The answer is whole and nobody reads the rest of the request: the client may
            // stop sending it (RFC 9113 §8.1).
            frame::rst(&mut self.wbuf, id, Reason::NO_ERROR);
            self.remove(slot, "done");
        }
    }

    fn send_body(&mut self, slot: usize, cx: &mut Context<'_>) {
        loop {
            let max_frame = self.peer_max_frame;
            let wbuf_full = self.wbuf.len() - self.wpos > WRITE_HIGH;
            let conn_send = self.conn_send;
            let Some(s) = self.streams.get_mut(slot).and_then(Option::as_mut) else {
                return;
            };
            let Task::Sending(body) = &mut s.task else {
                return;
            };
            if !s.held.is_empty() || s.held_last {
                let room = s.send_window.min(conn_send).min(max_frame as i64);
                if room <= 0 && !s.held.is_empty() {
                    if conn_send <= 0 {
                        self.blocked.push(slot);
                    }
                    return;
                }
                let n = s.held.len().min(room.max(0) as usize);
                let chunk = s.held.split_to(n);
                let last = s.held.is_empty() && s.held_last;
                frame::data(&mut self.wbuf, s.id, &chunk, last);
                s.send_window -= n as i64;
                self.conn_send -= n as i64;
                if last {
                    self.finish(slot);
                    return;
                }
                continue;
            }
            if wbuf_full {
                self.blocked.push(slot);
                return;
            }
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => return,
                Poll::Ready(Some(Ok(f))) => match f.into_data() {
                    Ok(data) => {
                        s.held_last = body.is_end_stream();
                        s.held = data;
                    }
                    Err(f) => {
                        let id = s.id;
                        if let Ok(trailers) = f.into_trailers() {
                            self.block.clear();
                            encode_fields(&mut self.block, &trailers);
                            frame::header_block(&mut self.wbuf, id, &self.block, true, max_frame);
                            self.finish(slot);
                            return;
                        }
                    }
                },
                Poll::Ready(None) => {
                    s.held_last = true;
                }
                Poll::Ready(Some(Err(e))) => {
                    let e: BoxError = e.into();
                    tracing::debug!(error = %e, "answer body failed; resetting the stream");
                    // Not the client's doing: not counted against it as a reset.
                    frame::rst(&mut self.wbuf, s.id, Reason::INTERNAL_ERROR);
                    self.remove(slot, "the answer body failed");
                    return;
                }
            }
        }
    }

    /// Writes what is buffered. Ready when all is written.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.conn_owed >= CONN_WINDOW / 4 || (self.conn_owed > 0 && self.open == 0) {
            let owed = std::mem::take(&mut self.conn_owed);
            self.conn_recv += i64::from(owed);
            frame::window_update(&mut self.wbuf, 0, owed);
        }
        while self.wpos < self.wbuf.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.wpos..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.wpos += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.wpos > 0 {
            self.wbuf.clear();
            self.wpos = 0;
            if self.wbuf.capacity() > 4 * WRITE_HIGH {
                self.wbuf = Vec::new();
            }
            // Answers held back for room go on.
            self.ready.append(&mut self.blocked);
            std::task::ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// The connection's timer: [`Cut::Idle`] once the connection has had no stream open for
    /// the idle timeout; while streams are open, a PING every [`KEEP_ALIVE`], and the
    /// connection is given up when the one before was not answered. The timer is re-armed
    /// only when a deadline comes earlier than the one it is set for, or when it fires.
    fn poll_timer(&mut self, cx: &mut Context<'_>, timer: &mut Timer<'_>) -> Tick {
        let quiet = self.open == 0 && self.pending.is_none();
        let due = self.quiet_since + self.limits.idle_timeout;
        if quiet && due < timer.armed {
            timer.armed = due;
            timer.sleep.as_mut().reset(due);
        }
        if quiet {
            timer.busy = false;
        } else if !timer.busy {
            timer.busy = true;
            // The first PING comes one interval after streams open, whatever the idle timeout.
            let ping = Instant::now() + KEEP_ALIVE;
            if ping < timer.armed {
                timer.armed = ping;
                timer.sleep.as_mut().reset(ping);
            }
        }
        if timer.sleep.as_mut().poll(cx).is_pending() {
            return Tick::Wait;
        }
        let now = Instant::now();
        if quiet && due <= now {
            return Tick::Idle;
        }
        timer.armed = if quiet { due } else { now + KEEP_ALIVE };
        timer.sleep.as_mut().reset(timer.armed);
        if quiet {
            self.ping_out = false;
            return Tick::Wait;
        }
        if self.ping_out {
            return Tick::Dead;
        }
        self.ping_out = true;
        frame::head(&mut self.wbuf, 8, kind::PING, 0, 0);
        self.wbuf.extend_from_slice(&KEEP_ALIVE_PING);
        Tick::Pinged
    }

    /// Drives the connection until it ends.
    fn poll(&mut self, cx: &mut Context<'_>, timer: &mut Timer<'_>) -> Poll<Result<(), Fatal>> {
        self.wakeup.task.register(cx.waker());
        let mut rounds = 0;
        loop {
            rounds += 1;
            if rounds > ROUNDS_PER_POLL {
                // Others get their turn (and a handler that wakes itself at once, as tokio's
                // budget makes it do, cannot hold the thread).
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let mut progressed = false;
            if self.wbuf.len() - self.wpos <= WRITE_HIGH {
                progressed |= self.poll_frames(cx)?;
            }
            progressed |= self.poll_streams();
            let written = match self.poll_write(cx) {
                Poll::Ready(Ok(())) => true,
                Poll::Ready(Err(_)) => return Poll::Ready(Err(Fatal::Gone)),
                Poll::Pending => false,
            };
            if written && self.open == 0 {
                if self.eof || ((self.going || self.peer_going) && self.pending.is_none()) {
                    return Poll::Ready(Ok(()));
                }
                // Nothing to hold for a quiet connection.
                if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
                    self.rbuf = BytesMut::new();
                }
                if self.wbuf.capacity() > 0 {
                    self.wbuf = Vec::new();
                }
                if self.collect.text.capacity() > 0 {
                    self.collect.text = BytesMut::new();
                }
            }
            if self.eof && self.open > 0 && written {
                // The client is gone: nothing it asked for can reach it.
                return Poll::Ready(Err(Fatal::Gone));
            }
            if !progressed {
                match self.poll_timer(cx, timer) {
                    Tick::Wait => return Poll::Pending,
                    Tick::Pinged => {}
                    Tick::Idle => return Poll::Ready(Err(Fatal::Cut(Cut::Idle))),
                    Tick::Dead => {
                        tracing::debug!("an HTTP/2 client did not answer a PING; closing");
                        return Poll::Ready(Err(Fatal::Gone));
                    }
                }
            }
        }
    }

    /// Stops taking new streams: GOAWAY naming the last stream taken.
    fn go_away(&mut self, reason: Reason) {
        if !self.going {
            self.going = true;
            frame::goaway(&mut self.wbuf, self.last_id, reason);
        }
    }
}

/// Why a stream was reset for naming itself as its parent (RFC 9113 §5.3.1).
const SELF_DEPENDENT: &str = "a stream that depends on itself";

/// The stream a PRIORITY frame's payload, or a HEADERS frame's priority, names as the parent.
fn depends_on(priority: &[u8]) -> u32 {
    u32::from_be_bytes([priority[0], priority[1], priority[2], priority[3]]) & 0x7fff_ffff
}

/// Whether HTTP/2 forbids the field as connection-specific (RFC 9113 §8.2.2): a request
/// that has one is malformed, and an answer drops it. `te` is apart: it may say `trailers`.
fn connection_specific(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// The fields of a header map as HPACK, without the ones HTTP/2 forbids.
fn encode_fields(dst: &mut Vec<u8>, headers: &HeaderMap) -> bool {
    let mut dated = false;
    for (name, value) in headers {
        if connection_specific(name) {
            continue;
        }
        dated |= name == header::DATE;
        hpack::encode_field(
            name.as_str().as_bytes(),
            value.as_bytes(),
            value.is_sensitive(),
            dst,
        );
    }
    dated
}

/// An answer's head as HPACK: the status, the upstream's fields as they came, the gateway's
/// own, and a `date` when none of them has one.
fn encode_head(
    dst: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    raw: Option<&crate::http1::Fields>,
) {
    hpack::encode_status(status.as_u16(), dst);
    let mut dated = false;
    if let Some(fields) = raw {
        dated = fields.dated();
        for (name, value) in fields.iter() {
            hpack::encode_field(name, value, false, dst);
        }
    }
    dated |= encode_fields(dst, headers);
    if !dated {
        hpack::encode_field(b"date", &now_date(), false, dst);
    }
}

/// Serves an HTTP/2 connection until it ends. `prefix` holds the bytes read to find the
/// protocol: the connection preface at least. On shutdown (`stop`) and while `drain` says the
/// gateway drains, GOAWAY tells the client to take new requests elsewhere; the streams open
/// then are finished.
pub async fn serve<I, F, Fut, B>(
    io: I,
    mut prefix: BytesMut,
    limits: Limits,
    metrics: Option<&SelfMetrics>,
    stop: &mut watch::Receiver<bool>,
    mut drain: Option<watch::Receiver<bool>>,
    handler: F,
) -> Conduct
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<RequestBody>) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + WithFields + Unpin,
    B::Error: Into<BoxError>,
{
    prefix.advance(super::conn::PREFACE.len().min(prefix.len()));
    let now = Instant::now();
    let mut wbuf = Vec::with_capacity(64);
    frame::settings(
        &mut wbuf,
        &[
            (
                setting::MAX_CONCURRENT_STREAMS,
                limits.http2_max_concurrent_streams,
            ),
            (setting::INITIAL_WINDOW_SIZE, STREAM_WINDOW),
            (
                setting::MAX_HEADER_LIST_SIZE,
                u32::try_from(limits.max_head_bytes).unwrap_or(u32::MAX),
            ),
        ],
    );
    frame::window_update(&mut wbuf, 0, CONN_WINDOW - frame::DEFAULT_WINDOW as u32);
    let mut conn = Conn {
        io,
        rbuf: prefix,
        wbuf,
        wpos: 0,
        eof: false,
        handler: &handler,
        limits,
        decoder: Decoder::new(TABLE_SIZE),
        collect: Collect::default(),
        block: Vec::new(),
        peer_window: frame::DEFAULT_WINDOW,
        peer_max_frame: frame::DEFAULT_MAX_FRAME,
        greeted: false,
        conn_send: frame::DEFAULT_WINDOW,
        conn_recv: i64::from(CONN_WINDOW),
        conn_owed: 0,
        streams: Vec::new(),
        open: 0,
        wakers: Vec::new(),
        wakeup: Arc::new(Wakeup::default()),
        ready: Vec::new(),
        blocked: Vec::new(),
        last_id: 0,
        pending: None,
        going: false,
        peer_going: false,
        resets: Resets {
            since: now,
            count: 0,
            max: limits.http2_max_resets,
        },
        flood: false,
        early_resets: 0,
        ping_out: false,
        quiet_since: now,
    };
    let armed = now + limits.idle_timeout;
    let sleep = tokio::time::sleep_until(armed);
    tokio::pin!(sleep);
    let mut timer = Timer {
        sleep: sleep.as_mut(),
        armed,
        busy: false,
    };
    let stopped = stop.changed();
    tokio::pin!(stopped);
    let mut stopping = false;
    let mut drained = false;
    let ended = loop {
        let polled = tokio::select! {
            biased;
            r = poll_fn(|cx| conn.poll(cx, &mut timer)) => Some(r),
            _ = &mut stopped, if !stopping => {
                stopping = true;
                conn.go_away(Reason::NO_ERROR);
                None
            }
            _ = draining(&mut drain), if !drained && !stopping => {
                drained = true;
                conn.go_away(Reason::NO_ERROR);
                None
            }
        };
        if let Some(r) = polled {
            break r;
        }
    };
    let conduct = match ended {
        Ok(()) | Err(Fatal::Gone) => Conduct::Clean,
        Err(Fatal::Protocol(reason, why)) => {
            tracing::debug!(reason = reason.0, why, "HTTP/2 connection error");
            conn.going = false;
            conn.go_away(reason);
            Conduct::Clean
        }
        Err(Fatal::Cut(cut)) => {
            if let Some(m) = metrics {
                m.closed_connections(cut.label()).inc();
            }
            tracing::debug!(reason = cut.label(), "connection closed at a limit");
            conn.going = false;
            let reason = if cut == Cut::Idle {
                Reason::NO_ERROR
            } else {
                Reason::ENHANCE_YOUR_CALM
            };
            conn.go_away(reason);
            if cut == Cut::Idle {
                Conduct::Clean
            } else {
                Conduct::Offence
            }
        }
    };
    // What is left to write (a GOAWAY at least) goes out if the client takes it soon.
    let streams = std::mem::take(&mut conn.streams);
    drop(streams);
    let flush = poll_fn(|cx| {
        while conn.wpos < conn.wbuf.len() {
            match Pin::new(&mut conn.io).poll_write(cx, &conn.wbuf[conn.wpos..]) {
                Poll::Ready(Ok(n)) if n > 0 => conn.wpos += n,
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
        let _ = std::task::ready!(Pin::new(&mut conn.io).poll_flush(cx));
        let _ = std::task::ready!(Pin::new(&mut conn.io).poll_shutdown(cx));
        Poll::Ready(())
    });
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), flush).await;
    conduct
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(fields: &[(&str, &str)]) -> Result<(Request<()>, Option<u64>), &'static str> {
        let mut c = Collect::default();
        c.reset();
        for (n, v) in fields {
            c.field(n.as_bytes(), v.as_bytes(), false);
        }
        c.request()
    }

    const GET: [(&str, &str); 4] = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "shop.example.com"),
        (":path", "/p?q=1"),
    ];

    #[test]
    fn a_request_is_put_together_from_its_pseudo_fields_and_fields() {
        let mut fields = GET.to_vec();
        fields.extend([("x-a", "1"), ("x-a", "2"), ("content-length", "12")]);
        let (req, length) = collect(&fields).unwrap();
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri().to_string(), "https://shop.example.com/p?q=1");
        assert_eq!(req.version(), Version::HTTP_2);
        let a: Vec<_> = req.headers().get_all("x-a").iter().collect();
        assert_eq!(a, ["1", "2"]);
        assert_eq!(length, Some(12));
    }

    #[test]
    fn cookie_crumbs_become_one_field_for_http1() {
        let mut fields = GET.to_vec();
        fields.extend([
            ("cookie", "a=1"),
            ("x-b", "2"),
            ("cookie", "b=2"),
            ("cookie", "c=3"),
        ]);
        let (req, _) = collect(&fields).unwrap();
        let c: Vec<_> = req.headers().get_all("cookie").iter().collect();
        assert_eq!(c, ["a=1; b=2; c=3"]);
        let mut one = GET.to_vec();
        one.push(("cookie", "a=1"));
        assert_eq!(collect(&one).unwrap().0.headers()["cookie"], "a=1");
    }

    #[test]
    fn malformed_requests_are_refused_with_the_reason() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[(":method", "GET"), (":scheme", "http"), (":authority", "a")],
                "no :path",
            ),
            (
                &[(":method", "GET"), (":path", "/"), (":authority", "a")],
                "no :scheme",
            ),
            (
                &[(":scheme", "http"), (":path", "/"), (":authority", "a")],
                "no :method",
            ),
            (
                &[(":method", "GET"), (":scheme", "http"), (":path", "")],
                "an empty :path",
            ),
            (
                &[
                    (":method", "GET"),
                    ("x", "1"),
                    (":scheme", "http"),
                    (":path", "/"),
                ],
                "a pseudo-header field after the regular ones, or in trailers",
            ),
            (
                &[(":method", "GET"), (":method", "GET")],
                "a pseudo-header field given twice",
            ),
            (&[(":status", "200")], "an unknown pseudo-header field"),
            (
                &[(":method", "GET"), ("X-Up", "1")],
                "an uppercase field name",
            ),
            (
                &[(":method", "GET"), ("connection", "close")],
                "a connection-specific field",
            ),
            (
                &[(":method", "GET"), ("keep-alive", "1")],
                "a connection-specific field",
            ),
            (
                &[(":method", "GET"), ("transfer-encoding", "chunked")],
                "a connection-specific field",
            ),
            (
                &[(":method", "GET"), ("te", "gzip")],
                "te other than trailers",
            ),
            (
                &[(":method", "GET"), ("x", " padded")],
                "a field value with white space around it",
            ),
            (
                &[
                    (":method", "CONNECT"),
                    (":authority", "a:443"),
                    (":path", "/"),
                ],
                "a CONNECT with :scheme or :path, or without :authority",
            ),
        ];
        for (fields, why) in cases {
            assert_eq!(collect(fields).err(), Some(*why), "{fields:?}");
        }
        let mut bad_length = GET.to_vec();
        bad_length.push(("content-length", "1x"));
        assert_eq!(
            collect(&bad_length).err(),
            Some("an invalid content-length")
        );
        let mut two = GET.to_vec();
        two.extend([("content-length", "1"), ("content-length", "1")]);
        assert_eq!(collect(&two).err(), Some("content-length given twice"));
        let mut te = GET.to_vec();
        te.push(("te", "trailers"));
        assert!(collect(&te).is_ok());
    }

    #[test]
    fn a_request_without_authority_keeps_its_path_alone() {
        let (req, _) = collect(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/x"),
            ("host", "h"),
        ])
        .unwrap();
        assert_eq!(req.uri().to_string(), "/x");
        assert_eq!(req.headers()["host"], "h");
    }
}

#[cfg(test)]
#[path = "h2_tests.rs"]
mod more_tests;
