//! HTTP/1.1 to an upstream, spoken by the request's own task.
//!
//! The request future writes the request head (and body) and reads the response head itself;
//! the response body then reads the rest from the socket as the listener sends it on. No task
//! runs per upstream connection and nothing crosses a channel, so an exchange costs no wakeup
//! of another task. A connection whose exchange ended cleanly goes back to its endpoint's pool.
//!
//! The request body is sent while the response is read: an upstream may answer before it has
//! read the whole body (an early 413, or a stream echoed back), and the rest of the body then
//! goes out as the response body is read.

use super::pool::UpstreamBody;
use super::BoxError;
use crate::http1::fields::{FieldKind as Kind, Fields};
use crate::http1::scan::{self, Scan, Span};
use bytes::{Buf, Bytes, BytesMut};
use http::{header, request, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use std::io::{self, IoSlice, Write as _};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

/// Largest response head (status line and headers), and largest trailer block: 64 KiB.
pub const MAX_HEAD: usize = u16::MAX as usize;
/// Most header fields in a response head.
const MAX_HEADERS: usize = 128;
/// Most fields in a trailer section: the listeners' default field limit, as Envoy applies
/// `max_headers_count` to trailers.
const MAX_TRAILERS: usize = 100;
/// Least free room in the read buffer before a read.
const READ_ROOM: usize = 8 * 1024;
/// Request body chunks up to this size are copied next to their framing (one write); larger
/// ones are written from their own buffer.
const COPY_LIMIT: usize = 16 * 1024;
/// Longest chunk-size line (size and extensions): hyper's bound on a body's extensions.
const MAX_CHUNK_LINE: usize = 16 * 1024;

/// A connection's byte stream: plain TCP or TLS.
#[derive(Debug)]
pub enum Io {
    /// In the clear.
    Plain(TcpStream),
    /// Over TLS.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The upstream closed the connection before a whole response head.
    #[error("the upstream closed the connection before a response")]
    Closed,
    /// The response head could not be parsed.
    #[error("malformed response head: {0}")]
    Malformed(&'static str),
    /// The response body's framing was broken.
    #[error("malformed response body: {0}")]
    BadBody(&'static str),
    /// The connection closed before the end of a response body of known length.
    #[error("the upstream closed the connection in the middle of the response body")]
    Incomplete,
    /// The client's request body broke off.
    #[error("client body: {0}")]
    ClientBody(#[source] BoxError),
}

/// One kept-alive connection to an upstream, with its buffers.
#[derive(Debug)]
pub struct Conn {
    io: Io,
    /// Bytes read and not yet used.
    rbuf: BytesMut,
    /// The request head (and small body chunks) being written.
    wbuf: Vec<u8>,
    /// How long it may stay idle before the upstream closes it, less a margin: from the last
    /// answer's `keep-alive: timeout=N`.
    idle_limit: Option<Duration>,
}

impl Conn {
    /// A fresh connection.
    pub fn new(io: Io) -> Self {
        Conn {
            io,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            idle_limit: None,
        }
    }

    /// How long the connection may stay idle in the pool by what the upstream said of its own
    /// idle timeout (`keep-alive: timeout=N`); `None` when it said nothing.
    pub fn idle_limit(&self) -> Option<Duration> {
        self.idle_limit
    }

    /// Whether an idle connection can take a request: the upstream has neither closed it nor
    /// sent anything unasked. Costs no system call unless the socket has signalled something.
    pub fn is_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let polled = poll_read_buf(Pin::new(&mut self.io), &mut cx, &mut self.rbuf);
        polled.is_pending() && self.rbuf.is_empty()
    }
}

/// A failed exchange, with the request's body when the request may be sent again.
#[derive(Debug)]
pub struct Failed {
    /// What went wrong.
    pub error: Error,
    /// `Some` when nothing of the response arrived on a reused connection that closed: the
    /// upstream most likely closed it as idle while the request was on its way. Only for
    /// idempotent requests whose body is at hand.
    pub retry: Option<UpstreamBody>,
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ReqFraming {
    /// No body.
    None,
    /// As the client's `content-length` says.
    Declared,
    /// `content-length` added here (a body of known size).
    Length(u64),
    /// `transfer-encoding: chunked` added here.
    Chunked,
}

/// Sends the request body as it comes, framed.
#[derive(Debug)]
struct Writer {
    body: Option<UpstreamBody>,
    chunked: bool,
    /// Written part of `Conn::wbuf`.
    pos: usize,
    /// A large chunk written from its own buffer, after `wbuf`.
    data: Bytes,
    /// Framing after `data`.
    tail: &'static [u8],
    state: WriteState,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum WriteState {
    Sending,
    Done,
    /// Stopped: the socket failed, or the client's body did after the response began.
    Broken,
}

impl Writer {
    /// Writes what is buffered, then body frames as they come, until the body ends.
    fn poll(
        &mut self,
        io: &mut Io,
        wbuf: &mut Vec<u8>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Error>> {
        loop {
            while self.pos < wbuf.len() || !self.data.is_empty() || !self.tail.is_empty() {
                let n = if self.data.is_empty() && self.tail.is_empty() {
                    ready!(Pin::new(&mut *io).poll_write(cx, &wbuf[self.pos..]))?
                } else {
                    let parts = [
                        IoSlice::new(&wbuf[self.pos..]),
                        IoSlice::new(&self.data),
                        IoSlice::new(self.tail),
                    ];
                    ready!(Pin::new(&mut *io).poll_write_vectored(cx, &parts))?
                };
                if n == 0 {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                }
                self.advance(n, wbuf.len());
            }
            wbuf.clear();
            self.pos = 0;
            // TLS holds records until flushed; TCP writes straight through.
            ready!(Pin::new(&mut *io).poll_flush(cx))?;
            let Some(body) = self.body.as_mut() else {
                self.state = WriteState::Done;
                return Poll::Ready(Ok(()));
            };
            match ready!(Pin::new(body).poll_frame(cx)) {
                None => {
                    self.body = None;
                    if self.chunked {
                        self.tail = b"0\r\n\r\n";
                    }
                }
                Some(Ok(frame)) => {
                    // HTTP/1.1 request trailers are dropped, as most proxies do.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if self.chunked {
                        write!(wbuf, "{:x}\r\n", data.len()).expect("writing to a Vec");
                    }
                    if data.len() <= COPY_LIMIT {
                        wbuf.extend_from_slice(&data);
                        if self.chunked {
                            wbuf.extend_from_slice(b"\r\n");
                        }
                    } else {
                        self.data = data;
                        if self.chunked {
                            self.tail = b"\r\n";
                        }
                    }
                }
                Some(Err(e)) => {
                    self.body = None;
                    return Poll::Ready(Err(Error::ClientBody(e)));
                }
            }
        }
    }

    /// A writer with nothing to send.
    fn done() -> Self {
        Writer {
            body: None,
            chunked: false,
            pos: 0,
            data: Bytes::new(),
            tail: b"",
            state: WriteState::Done,
        }
    }

    /// This writer, leaving a finished one in its place.
    fn take(&mut self) -> Self {
        std::mem::replace(self, Writer::done())
    }

    /// Whether the request can be sent to its end without the client: it is sent, or what is
    /// left is in memory (not the client's stream, which ends with the client).
    fn finishable_alone(&self) -> bool {
        match self.state {
            WriteState::Done => true,
            WriteState::Broken => false,
            WriteState::Sending => !matches!(self.body, Some(UpstreamBody::Stream(_))),
        }
    }

    /// Marks `n` bytes written, across `wbuf[pos..]`, `data` and `tail`.
    fn advance(&mut self, mut n: usize, wlen: usize) {
        let head = (wlen - self.pos).min(n);
        self.pos += head;
        n -= head;
        let data = self.data.len().min(n);
        self.data.advance(data);
        n -= data;
        self.tail = &self.tail[n.min(self.tail.len())..];
    }

    /// Drives the writer as a side task of reading the response; a failure stops it.
    fn drive(&mut self, conn: &mut Conn, cx: &mut Context<'_>) -> Result<(), Error> {
        if self.state != WriteState::Sending {
            return Ok(());
        }
        match self.poll(&mut conn.io, &mut conn.wbuf, cx) {
            Poll::Ready(Err(e)) => {
                self.state = WriteState::Broken;
                Err(e)
            }
            _ => Ok(()),
        }
    }
}

/// Fields the gateway adds to a request and keeps out of its header map, written after the
/// map's own: a map insert costs more than the text (`proxy::headers::Forwarded`). At most four.
#[derive(Debug, Clone, Copy, Default)]
pub struct Added<'a> {
    fields: [(&'static str, &'a [u8]); 4],
    len: usize,
}

impl<'a> Added<'a> {
    /// Adds a field. `name` must be a lowercase field name and `value` a valid field value
    /// (no CR, LF or NUL): nothing checks them on the way out.
    pub(crate) fn push(&mut self, name: &'static str, value: &'a [u8]) {
        debug_assert!(HeaderName::from_bytes(name.as_bytes()).is_ok_and(|n| n == name));
        debug_assert!(HeaderValue::from_bytes(value).is_ok());
        self.fields[self.len] = (name, value);
        self.len += 1;
    }

    /// The fields, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields[..self.len].iter().map(|&(n, v)| (n, v))
    }

    /// Puts the fields into `headers`, for a request that is sent from its map (HTTP/2).
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        for &(name, value) in &self.fields[..self.len] {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
    }
}

/// A response head, parsed.
#[derive(Debug)]
pub(crate) struct Head {
    status: StatusCode,
    version: Version,
    /// The fields passed on. `connection`, `keep-alive` and `transfer-encoding` describe this
    /// connection only and are read into the fields below instead (a 101 keeps them all).
    /// `None` when they go as text (`fields`). Boxed: a head is returned through several
    /// layers, and at 192 bytes each step was a call to `memcpy` (BENCHMARKS.md, issue 17).
    headers: Option<Box<HeaderMap>>,
    /// The fields to pass on as text, when `headers` (then empty) is not built.
    fields: Option<Fields>,
    /// `connection: close`.
    close: bool,
    /// `connection: keep-alive` (HTTP/1.0).
    keep_alive: bool,
    /// With `transfer-encoding`: whether chunked is its last coding.
    chunked: Option<bool>,
    /// `content-length`, checked: equal if repeated.
    length: Option<u64>,
    /// `keep-alive: timeout=N`, in seconds.
    idle_timeout: Option<u64>,
}

impl Head {
    /// The fields in the header map: none when they go as text.
    pub(crate) fn headers(&self) -> &HeaderMap {
        static NONE: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(HeaderMap::new);
        self.headers.as_deref().unwrap_or(&NONE)
    }
}

/// How a response body is framed (RFC 9112 §6.3), and how much of it is left.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Framing {
    /// Bytes left of a `content-length` body.
    Length(u64),
    /// A chunked body, at this point of its grammar.
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Close,
    /// Ended.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Bytes left of a chunk's data.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// Expecting the trailer section after the last chunk.
    Trailers,
}

/// How much of an abandoned response is read to keep its connection: past this, or past
/// [`SALVAGE_TIME`], the connection is closed instead.
pub const SALVAGE_BYTES: u64 = 64 * 1024;
/// How long an abandoned response is waited for.
pub const SALVAGE_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// One request on one connection, from the request head to the response head.
///
/// A named value rather than an `async fn`, so that an exchange its client gave up on (an
/// HTTP/2 stream reset, a closed connection) can be finished apart: see [`Exchange::abandon`].
#[derive(Debug)]
pub struct Exchange {
    /// `None` once the response head has been handed on, or the exchange failed.
    conn: Option<Conn>,
    writer: Writer,
    head_request: bool,
    got_bytes: bool,
    write_error: Option<Error>,
    retry: Option<UpstreamBody>,
    /// The request asks for a protocol upgrade: only then may the answer be a 101.
    upgrade: bool,
    /// The answer's fields may be kept as text (see [`ResponseBody::fields`]).
    raw: bool,
}

impl Exchange {
    /// Starts a request on `conn` (nothing is written before [`Exchange::response`] is polled).
    /// `reused` tells whether the connection carried an exchange before: its failure may then
    /// be retried. `raw`: the answer's fields may be kept as text instead of in its header
    /// map, which is then empty (see [`ResponseBody::fields`]); asked by an answer that goes to
    /// an HTTP/1.1 client unchanged.
    pub fn new(
        mut conn: Conn,
        head: &request::Parts,
        added: &Added<'_>,
        body: UpstreamBody,
        reused: bool,
        raw: bool,
    ) -> Self {
        let retry = if reused && head.method.is_idempotent() {
            body.replay()
        } else {
            None
        };
        let framing = request_framing(head, &body);
        encode_head(&mut conn.wbuf, head, added, framing);
        let no_body = framing == ReqFraming::None;
        Exchange {
            conn: Some(conn),
            writer: Writer {
                body: (!no_body).then_some(body),
                chunked: framing == ReqFraming::Chunked,
                pos: 0,
                data: Bytes::new(),
                tail: b"",
                state: WriteState::Sending,
            },
            head_request: head.method == Method::HEAD,
            got_bytes: false,
            write_error: None,
            retry,
            upgrade: head.headers.contains_key(header::UPGRADE),
            raw,
        }
    }

    /// Sends the request and reads the response head. Cancel-safe: dropping the future leaves
    /// the exchange where it was.
    pub async fn response(&mut self) -> Result<(http::response::Parts, ResponseBody), Failed> {
        std::future::poll_fn(|cx| self.poll_response(cx)).await
    }

    fn poll_response(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(http::response::Parts, ResponseBody), Failed>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Err(Failed {
                error: Error::Closed,
                retry: None,
            }));
        };
        let polled = match self.writer.drive(conn, cx) {
            Err(Error::ClientBody(e)) => Err(Error::ClientBody(e)),
            // The upstream may have answered before it stopped reading: read on.
            Err(e) => {
                self.write_error = Some(e);
                ready!(poll_head(
                    conn,
                    self.head_request,
                    self.raw,
                    &mut self.got_bytes,
                    cx
                ))
            }
            Ok(()) => ready!(poll_head(
                conn,
                self.head_request,
                self.raw,
                &mut self.got_bytes,
                cx
            )),
        };
        let mut conn = self.conn.take().expect("checked above");
        let (head_in, framing) = match polled {
            // A switch nobody asked for leaves the connection in a protocol we don't know:
            // it closes, and the client is told the upstream broke HTTP.
            Ok((h, _)) if h.status == StatusCode::SWITCHING_PROTOCOLS && !self.upgrade => {
                return Poll::Ready(Err(Failed {
                    error: Error::Malformed("101 Switching Protocols to a request without Upgrade"),
                    retry: None,
                }));
            }
            Ok(h) => h,
            Err(error) => {
                let closed = matches!(error, Error::Closed | Error::Io(_));
                let error = match (error, self.write_error.take()) {
                    (Error::Closed, Some(w)) => w,
                    (e, _) => e,
                };
                let retry = self.retry.take();
                return Poll::Ready(Err(Failed {
                    retry: retry.filter(|_| closed && !self.got_bytes),
                    error,
                }));
            }
        };
        let keep_alive = keep_alive(&head_in) && framing != Framing::Close;
        conn.idle_limit = head_in.idle_timeout.and_then(idle_limit);
        let mut resp = http::Response::new(());
        *resp.status_mut() = head_in.status;
        *resp.version_mut() = head_in.version;
        if let Some(map) = head_in.headers {
            *resp.headers_mut() = *map;
        }
        let (parts, ()) = resp.into_parts();
        let body = ResponseBody {
            conn: Some(conn),
            writer: self.writer.take(),
            framing,
            keep_alive,
            upgrade: parts.status == StatusCode::SWITCHING_PROTOCOLS,
            fields: head_in.fields,
        };
        Poll::Ready(Ok((parts, body)))
    }

    /// The exchange, when its client gave up before the response head, if it can still be
    /// finished without the client: the request is (or can be) sent in full and nothing broke.
    /// Then [`Exchange::salvage`] reads the response and keeps the connection.
    pub fn abandon(&mut self) -> Option<Exchange> {
        let conn = self.conn.as_ref()?;
        let quiet = self.write_error.is_none() && conn.rbuf.len() <= MAX_HEAD;
        (quiet && self.writer.finishable_alone()).then(|| Exchange {
            conn: self.conn.take(),
            writer: self.writer.take(),
            head_request: self.head_request,
            got_bytes: self.got_bytes,
            write_error: None,
            retry: None,
            upgrade: self.upgrade,
            raw: false,
        })
    }

    /// Finishes an abandoned exchange: the response is read and thrown away, and the
    /// connection comes back when that took at most [`SALVAGE_BYTES`] and [`SALVAGE_TIME`].
    pub async fn salvage(mut self) -> Option<Conn> {
        let finish = async {
            let (_, body) = self.response().await.ok()?;
            body.salvage_within().await
        };
        tokio::time::timeout(SALVAGE_TIME, finish).await.ok()?
    }
}

/// Reads until a final response head (1xx other than 101 are skipped) is parsed.
fn poll_head(
    conn: &mut Conn,
    head_request: bool,
    raw: bool,
    got_bytes: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Result<(Head, Framing), Error>> {
    loop {
        if let Some(found) = buffered_head(&mut conn.rbuf, head_request, raw)? {
            return Poll::Ready(Ok(found));
        }
        if conn.rbuf.capacity() - conn.rbuf.len() < READ_ROOM {
            conn.rbuf.reserve(READ_ROOM);
        }
        let n = ready!(poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.rbuf))?;
        if n == 0 {
            return Poll::Ready(Err(Error::Closed));
        }
        *got_bytes = true;
    }
}

/// The final response head in `buf` and its body's framing, consuming them (and any 1xx heads
/// before, except 101); `None` while the head is incomplete.
pub(crate) fn buffered_head(
    buf: &mut BytesMut,
    head_request: bool,
    raw: bool,
) -> Result<Option<(Head, Framing)>, Error> {
    while !buf.is_empty() {
        let Some(head) = parse_head(buf, raw)? else {
            if buf.len() > MAX_HEAD {
                return Err(Error::Malformed("response head larger than 64 KiB"));
            }
            return Ok(None);
        };
        let code = head.status.as_u16();
        if (100..200).contains(&code) && code != 101 {
            continue;
        }
        let framing = response_framing(&head, head_request);
        return Ok(Some((head, framing)));
    }
    Ok(None)
}

fn request_framing(head: &request::Parts, body: &UpstreamBody) -> ReqFraming {
    if body.is_end_stream() {
        return ReqFraming::None;
    }
    if head.headers.contains_key(header::CONTENT_LENGTH) {
        return ReqFraming::Declared;
    }
    match body.size_hint().exact() {
        Some(n) => ReqFraming::Length(n),
        None => ReqFraming::Chunked,
    }
}

/// Writes the request line and headers. Header names and values are valid by construction
/// (the `http` crate admits no CR or LF), so nothing can be smuggled through them.
/// `added` follows the map's fields.
pub(crate) fn encode_head(
    buf: &mut Vec<u8>,
    head: &request::Parts,
    added: &Added<'_>,
    framing: ReqFraming,
) {
    buf.clear();
    buf.extend_from_slice(head.method.as_str().as_bytes());
    buf.push(b' ');
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    buf.extend_from_slice(target.as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    let fields = head
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
        .chain(added.iter());
    for (name, value) in fields {
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value);
        buf.extend_from_slice(b"\r\n");
    }
    match framing {
        ReqFraming::Chunked => buf.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        ReqFraming::Length(n) => {
            write!(buf, "content-length: {n}\r\n").expect("writing to a Vec");
        }
        // A bodiless POST, PUT or PATCH says so, as some servers insist on a length.
        ReqFraming::None
            if matches!(head.method, Method::POST | Method::PUT | Method::PATCH)
                && !head.headers.contains_key(header::CONTENT_LENGTH) =>
        {
            buf.extend_from_slice(b"content-length: 0\r\n");
        }
        ReqFraming::None | ReqFraming::Declared => {}
    }
    buf.extend_from_slice(b"\r\n");
}

/// Parses a response head at the start of `buf` and consumes it; `None` if it is not all there.
/// `raw`: the fields may be kept as text (see [`Exchange::new`]).
fn parse_head(buf: &mut BytesMut, raw: bool) -> Result<Option<Head>, Error> {
    let mut spans = [(0u16, 0u16, 0u16, 0u16); MAX_HEADERS];
    // The usual head is read by the quick reader, which lowercases its names; any other by
    // httparse, and its names lowercased here.
    let (len, minor, code, count) = match scan::response_head(buf, &mut spans) {
        Scan::Complete {
            len,
            minor,
            code,
            count,
        } => (len, minor, code, count),
        Scan::Unsure => match httparse_head(buf, &mut spans)? {
            Some(read) => {
                for &(ns, ne, _, _) in &spans[..read.3] {
                    buf[usize::from(ns)..usize::from(ne)].make_ascii_lowercase();
                }
                read
            }
            None => return Ok(None),
        },
    };
    let status = StatusCode::from_u16(code).map_err(|_| Error::Malformed("bad status code"))?;
    let version = match minor {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let (mut close, mut keep_alive, mut chunked, mut length) = (false, false, None, None);
    let mut idle_timeout = None;
    // `connection` naming other fields: it stays, for the hop-by-hop rules to remove those.
    let mut names_fields = false;
    // A hop-by-hop field that only the header map's rules take out.
    let mut other_hop = false;
    let mut kinds = [Kind::Other; MAX_HEADERS];
    for (kind, &span) in kinds.iter_mut().zip(&spans[..count]) {
        let (ns, ne, vs, ve) = span;
        let [ns, ne, vs, ve]: [usize; 4] = [ns.into(), ne.into(), vs.into(), ve.into()];
        *kind = Kind::of(&buf[ns..ne]);
        let raw = &buf[vs..ve];
        match kind {
            Kind::Connection => {
                for token in raw.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"upgrade") {
                        names_fields = true;
                    }
                }
            }
            Kind::TransferEncoding => {
                // Only chunked is decoded here. Another coding (gzip, say) would reach the
                // client as bytes nothing labels, since transfer-encoding is not passed on
                // (HTTP/2 has none): refused as Envoy refuses it.
                let mut codings = raw
                    .split(|&b| b == b',')
                    .map(<[u8]>::trim_ascii)
                    .filter(|c| !c.is_empty());
                if !codings.all(|c| c.eq_ignore_ascii_case(b"chunked")) {
                    return Err(Error::Malformed("a transfer-coding other than chunked"));
                }
                chunked = Some(true);
            }
            Kind::ContentLength => {
                let n = parse_length(raw).ok_or(Error::Malformed("bad content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Error::Malformed("conflicting content-length"));
                }
                length = Some(n);
            }
            Kind::KeepAlive => idle_timeout = keep_alive_timeout(raw).or(idle_timeout),
            Kind::OtherHop => other_hop = true,
            Kind::Date | Kind::Other => {}
        }
    }
    let (spans, kinds) = (&spans[..count], &kinds[..count]);
    let mut head = Head {
        status,
        version,
        headers: None,
        fields: None,
        close,
        keep_alive,
        chunked,
        length,
        idle_timeout,
    };
    // Passed on as text when nothing but the connection's own fields must go: no header map
    // is built.
    if raw && !switching && !names_fields && !other_hop {
        head.fields = Some(fields_text(buf, len, spans, kinds, status, chunked));
        return Ok(Some(head));
    }
    let bytes = buf.split_to(len).freeze();
    let mut map = HeaderMap::with_capacity(count);
    for (kind, &span) in kinds.iter().zip(spans) {
        append_field(&mut map, &bytes, span, *kind, switching)?;
    }
    if names_fields && !switching {
        for (kind, &(_, _, vs, ve)) in kinds.iter().zip(spans) {
            if *kind == Kind::Connection {
                let [vs, ve]: [usize; 2] = [vs.into(), ve.into()];
                if let Ok(v) = HeaderValue::from_maybe_shared(bytes.slice(vs..ve)) {
                    map.append(header::CONNECTION, v);
                }
            }
        }
    }
    // A chunked body's length is what its chunks say; a content-length beside it goes.
    if chunked.is_some() && length.is_some() && !switching {
        map.remove(header::CONTENT_LENGTH);
    }
    head.headers = Some(Box::new(map));
    Ok(Some(head))
}

/// Reads a response head with httparse: its length, HTTP/1 minor version, status code and
/// number of fields (their spans in `spans`); `None` if it is not all there.
fn httparse_head(buf: &[u8], spans: &mut [Span]) -> Result<Option<(usize, u8, u16, usize)>, Error> {
    // Header slots are left uninitialised and spans are 16-bit: clearing 128 full-size slots
    // per response cost more than parsing it.
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut storage) {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
            return Err(Error::Malformed("response head larger than 64 KiB"))
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Error::Malformed("more than 128 header fields"))
        }
        Err(_) => return Err(Error::Malformed("not an HTTP/1.x response")),
    };
    let base = buf.as_ptr() as usize;
    // Every offset is within the head, so below 64 KiB.
    let offset = |p: *const u8, len: usize| {
        let start = p as usize - base;
        (start as u16, (start + len) as u16)
    };
    for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
        let (ns, ne) = offset(h.name.as_ptr(), h.name.len());
        let (vs, ve) = offset(h.value.as_ptr(), h.value.len());
        *span = (ns, ne, vs, ve);
    }
    let minor = parsed.version.unwrap_or(1);
    Ok(Some((
        len,
        minor,
        parsed.code.unwrap_or(0),
        parsed.headers.len(),
    )))
}

/// Adds the field at `span` of `head` to `map`, unless it is the connection's own
/// (`connection`, `keep-alive`, `transfer-encoding`, read into the head instead; a 101 keeps them).
fn append_field(
    map: &mut HeaderMap,
    head: &Bytes,
    (ns, ne, vs, ve): (u16, u16, u16, u16),
    kind: Kind,
    switching: bool,
) -> Result<(), Error> {
    let hop = matches!(
        kind,
        Kind::Connection | Kind::KeepAlive | Kind::TransferEncoding
    );
    if hop && !switching {
        return Ok(());
    }
    let [ns, ne, vs, ve]: [usize; 4] = [ns.into(), ne.into(), vs.into(), ve.into()];
    let name =
        HeaderName::from_bytes(&head[ns..ne]).map_err(|_| Error::Malformed("bad header name"))?;
    let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
        .map_err(|_| Error::Malformed("bad header value"))?;
    map.append(name, value);
    Ok(())
}

/// Takes the head of `len` bytes off `buf` and gives the fields of it to pass on, as HTTP/1.1
/// text: all but the connection's own, and but a `content-length` beside chunked, after
/// another, or on a 204 (which has no body to measure). Names are lowercase already.
///
/// When each line kept is `name: value` CRLF already, as most are, the lines are moved together
/// where they lie and the text is a slice of the head; otherwise it is written anew.
fn fields_text(
    buf: &mut BytesMut,
    len: usize,
    spans: &[Span],
    kinds: &[Kind],
    status: StatusCode,
    chunked: Option<bool>,
) -> Fields {
    let (mut length, mut dated) = (None, false);
    let mut kept = [false; MAX_HEADERS];
    let mut as_they_are = true;
    for ((keep, kind), &(_, ne, vs, ve)) in kept.iter_mut().zip(kinds).zip(spans) {
        let [ne, vs, ve]: [usize; 3] = [ne.into(), vs.into(), ve.into()];
        match kind {
            Kind::Connection | Kind::KeepAlive | Kind::TransferEncoding => continue,
            Kind::ContentLength => {
                if chunked.is_some() || length.is_some() || status == StatusCode::NO_CONTENT {
                    continue;
                }
                length = parse_length(&buf[vs..ve]);
            }
            Kind::Date => dated = true,
            Kind::OtherHop | Kind::Other => {}
        }
        *keep = true;
        as_they_are &= buf.get(ne..vs) == Some(b": ") && buf.get(ve..ve + 2) == Some(b"\r\n");
    }
    let kept = &kept[..spans.len()];
    let Some(&(first, ..)) = spans.first() else {
        buf.advance(len);
        return Fields::new(Bytes::new(), length, dated);
    };
    let first = usize::from(first);
    if as_they_are {
        let mut end = first;
        for (_, &(ns, _, _, ve)) in kept.iter().zip(spans).filter(|(keep, _)| **keep) {
            let [ns, line_end]: [usize; 2] = [ns.into(), usize::from(ve) + 2];
            if ns != end {
                buf.copy_within(ns..line_end, end);
            }
            end += line_end - ns;
        }
        let head = buf.split_to(len).freeze();
        return Fields::new(head.slice(first..end), length, dated);
    }
    let head = buf.split_to(len);
    let mut text = BytesMut::with_capacity(len + 2 * spans.len());
    for (_, &(ns, ne, vs, ve)) in kept.iter().zip(spans).filter(|(keep, _)| **keep) {
        let [ns, ne, vs, ve]: [usize; 4] = [ns.into(), ne.into(), vs.into(), ve.into()];
        text.extend_from_slice(&head[ns..ne]);
        text.extend_from_slice(b": ");
        text.extend_from_slice(&head[vs..ve]);
        text.extend_from_slice(b"\r\n");
    }
    Fields::new(text.freeze(), length, dated)
}

/// The `timeout=N` parameter of a `keep-alive` field (RFC 2068 §19.7.1.1): the seconds the
/// upstream keeps an idle connection open.
fn keep_alive_timeout(value: &[u8]) -> Option<u64> {
    value.split(|&b| b == b',').find_map(|param| {
        let (name, n) = param.trim_ascii().split_at_checked(8)?;
        if !name.eq_ignore_ascii_case(b"timeout=") {
            return None;
        }
        let n = n.trim_ascii();
        let n = n
            .strip_prefix(b"\"")
            .and_then(|n| n.strip_suffix(b"\""))
            .unwrap_or(n);
        parse_length(n)
    })
}

/// How long a connection is kept idle when its upstream closes idle connections after
/// `seconds`: somewhat less (a second, or half of a shorter timeout), so that a request is
/// never sent as the upstream closes. `None` for 0: it is not reused at all.
fn idle_limit(seconds: u64) -> Option<Duration> {
    let timeout = Duration::from_secs(seconds);
    let margin = (timeout / 2).min(Duration::from_secs(1));
    (seconds > 0).then(|| timeout - margin)
}

/// The body's framing, from the request method, status and headers (RFC 9112 §6.3).
fn response_framing(head: &Head, head_request: bool) -> Framing {
    let code = head.status.as_u16();
    if head_request || (100..200).contains(&code) || code == 204 || code == 304 {
        return Framing::Done;
    }
    match (head.chunked, head.length) {
        // Chunked must be the last coding; anything else runs to the close.
        (Some(true), _) => Framing::Chunked(Chunk::Size),
        (Some(false), _) | (None, None) => Framing::Close,
        (None, Some(0)) => Framing::Done,
        (None, Some(n)) => Framing::Length(n),
    }
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Whether the connection may carry another exchange after this one, by version and
/// `connection` tokens. Both `transfer-encoding` and `content-length` on one response is a
/// smuggling shape: answered, then closed.
pub(crate) fn keep_alive(head: &Head) -> bool {
    let keep = head.version == Version::HTTP_11 || head.keep_alive;
    // An HTTP/1.0 peer that sends chunked may not frame its next answer as we read it: RFC
    // 9112 §6.1 has the connection closed after such a response.
    let chunked_in_10 = head.version == Version::HTTP_10 && head.chunked.is_some();
    // Both framings on one answer is a smuggling shape; `timeout=0`: the upstream closes now.
    let suspect = head.chunked.is_some() && head.length.is_some();
    keep && !head.close && !suspect && !chunked_in_10 && head.idle_timeout != Some(0)
}

/// Checks that a head parsed with its fields kept as text (`kept`) says what the same bytes
/// parsed into a header map (`mapped`) say, when it kept them: the fields passed on, by name in
/// their order, and the framing. For tests and fuzzing.
pub(crate) fn same_fields(mapped: &Head, kept: &Head) -> Result<(), String> {
    let Some(fields) = &kept.fields else {
        return (mapped.headers() == kept.headers())
            .then_some(())
            .ok_or_else(|| format!("{:?} against {:?}", kept.headers(), mapped.headers()));
    };
    let mut raw: Vec<(String, &[u8])> = fields
        .iter()
        .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), v))
        .collect();
    // A header map gives a name's values together, in their order.
    raw.sort_by(|a, b| a.0.cmp(&b.0));
    // What the client is sent of the map: a 204's length is not, nor a repeated one.
    let mut lengths = 0;
    let mut map: Vec<(String, &[u8])> = mapped
        .headers()
        .iter()
        .filter(|(n, _)| {
            let length = *n == header::CONTENT_LENGTH;
            lengths += usize::from(length);
            !length || (lengths == 1 && mapped.status != StatusCode::NO_CONTENT)
        })
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes()))
        .collect();
    map.sort_by(|a, b| a.0.cmp(&b.0));
    // What the client's head writer reads off the map, it takes from the text's own account.
    let length = map
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| crate::http1::head::digits(v));
    let dated = mapped.headers().contains_key(header::DATE);
    let same = raw == map
        && (fields.length(), fields.dated()) == (length, dated)
        && kept.headers().is_empty()
        && (
            kept.status,
            kept.close,
            kept.keep_alive,
            kept.chunked,
            kept.length,
        ) == (
            mapped.status,
            mapped.close,
            mapped.keep_alive,
            mapped.chunked,
            mapped.length,
        );
    same.then_some(()).ok_or_else(|| {
        let told = (fields.length(), fields.dated());
        format!(
            "kept {raw:?} {told:?}, mapped {map:?} {:?}",
            (length, dated)
        )
    })
}

/// A response body read from the upstream connection, which it owns until the end.
#[derive(Debug)]
pub struct ResponseBody {
    conn: Option<Conn>,
    writer: Writer,
    framing: Framing,
    keep_alive: bool,
    upgrade: bool,
    /// The head's fields as text, when the exchange asked for them so.
    fields: Option<Fields>,
}

impl ResponseBody {
    /// The response head's fields, when they were kept as text: the response's header map
    /// is empty then, and these are what goes to the client.
    pub fn fields(&self) -> Option<&Fields> {
        self.fields.as_ref()
    }

    /// The connection, once the exchange has ended cleanly and it can carry another.
    pub fn take_reusable(&mut self) -> Option<Conn> {
        let clean = self.framing == Framing::Done
            && self.keep_alive
            && !self.upgrade
            && self.writer.state == WriteState::Done;
        match &self.conn {
            Some(c) if clean && c.rbuf.is_empty() => self.conn.take(),
            _ => None,
        }
    }

    /// After a 101 answer: the connection's stream, and bytes the upstream already sent past
    /// the head (the tunnel's first bytes).
    pub fn take_upgrade(&mut self) -> Option<(Io, Bytes)> {
        if !self.upgrade {
            return None;
        }
        let conn = self.conn.take()?;
        Some((conn.io, conn.rbuf.freeze()))
    }

    /// The rest of a body its client gave up on, when reading it (at most [`SALVAGE_BYTES`])
    /// keeps the connection: see [`ResponseBody::salvage`].
    pub fn abandon(&mut self) -> Option<ResponseBody> {
        let small = match self.framing {
            Framing::Length(n) => n <= SALVAGE_BYTES,
            Framing::Chunked(_) => true,
            Framing::Close | Framing::Done => false,
        };
        let keep = self.keep_alive && !self.upgrade && self.writer.finishable_alone();
        (small && keep && self.conn.is_some()).then(|| ResponseBody {
            conn: self.conn.take(),
            writer: self.writer.take(),
            framing: std::mem::replace(&mut self.framing, Framing::Done),
            keep_alive: true,
            upgrade: false,
            fields: None,
        })
    }

    /// Reads an abandoned body to its end and throws it away, within [`SALVAGE_BYTES`] and
    /// [`SALVAGE_TIME`]; the connection, when it can carry another exchange.
    pub async fn salvage(self) -> Option<Conn> {
        tokio::time::timeout(SALVAGE_TIME, self.salvage_within())
            .await
            .ok()?
    }

    async fn salvage_within(mut self) -> Option<Conn> {
        let mut read = 0;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut self).poll_frame(cx)).await
        {
            if let Some(data) = frame.ok()?.data_ref() {
                read += data.len() as u64;
                if read > SALVAGE_BYTES {
                    return None;
                }
            }
        }
        // The request may still be on its way (a body in memory, answered early).
        if self.writer.state == WriteState::Sending {
            let conn = self.conn.as_mut()?;
            std::future::poll_fn(|cx| self.writer.poll(&mut conn.io, &mut conn.wbuf, cx))
                .await
                .ok()?;
        }
        self.take_reusable()
    }

    /// Reads more; a body with much left gets room for up to 64 KiB at once.
    fn read(conn: &mut Conn, want: u64, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if conn.rbuf.capacity() - conn.rbuf.len() < READ_ROOM {
            conn.rbuf
                .reserve(want.clamp(READ_ROOM as u64, 64 * 1024) as usize);
        }
        poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.rbuf)
    }

    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        // The request body, if the answer came before its end, goes on meanwhile.
        if self.writer.drive(conn, cx).is_err() {
            self.keep_alive = false;
        }
        loop {
            match self.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(left) => {
                    if conn.rbuf.is_empty() && ready!(Self::read(conn, left, cx))? == 0 {
                        return Poll::Ready(Some(Err(Error::Incomplete)));
                    }
                    let take = (conn.rbuf.len() as u64).min(left);
                    let data = conn.rbuf.split_to(take as usize).freeze();
                    self.framing = match left - take {
                        0 => Framing::Done,
                        n => Framing::Length(n),
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Close => {
                    if conn.rbuf.is_empty() && ready!(Self::read(conn, 0, cx))? == 0 {
                        self.framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                    let data = conn.rbuf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(state) => match chunk_step(&mut conn.rbuf, state)? {
                    Step::Next(next, frame) => {
                        self.framing = next;
                        if let Some(frame) = frame {
                            return Poll::Ready(Some(Ok(frame)));
                        }
                    }
                    Step::NeedMore => {
                        let want = match state {
                            Chunk::Data(n) => n,
                            _ => 0,
                        };
                        if ready!(Self::read(conn, want, cx))? == 0 {
                            return Poll::Ready(Some(Err(Error::Incomplete)));
                        }
                    }
                },
            }
        }
    }
}

/// One step of the chunked decoder over buffered bytes.
pub(crate) enum Step {
    /// Moved on, maybe with a frame to pass on.
    Next(Framing, Option<Frame<Bytes>>),
    /// More bytes must be read first.
    NeedMore,
}

pub(crate) fn chunk_step(buf: &mut BytesMut, state: Chunk) -> Result<Step, Error> {
    let bad = |why| Err(Error::BadBody(why));
    match state {
        Chunk::Size => {
            // Bounded whether the line arrives whole or a byte at a time.
            let window = &buf[..buf.len().min(MAX_CHUNK_LINE + 1)];
            let Some(end) = window.iter().position(|&b| b == b'\n') else {
                if buf.len() > MAX_CHUNK_LINE {
                    return bad("chunk-size line too long");
                }
                return Ok(Step::NeedMore);
            };
            let Some(line) = buf[..end].strip_suffix(b"\r") else {
                return bad("chunk-size line without CRLF");
            };
            let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
            // Any number of digits (RFC 9112 §7.1); the value is what is bounded, to 15
            // significant hex digits (a size that needs 60 bits is more than anyone sends).
            let zeros = line[..digits].iter().take_while(|&&b| b == b'0').count();
            if digits == 0 || digits - zeros > 15 {
                return bad("bad chunk size");
            }
            let rest = &line[digits..];
            let ext = rest.iter().position(|b| !matches!(b, b' ' | b'\t'));
            if ext.is_some_and(|i| rest[i] != b';') || rest.contains(&b'\r') {
                return bad("bad chunk extension");
            }
            let size = line[..digits].iter().fold(0u64, |n, &d| {
                n * 16 + u64::from(char::from(d).to_digit(16).expect("hex digit"))
            });
            buf.advance(end + 1);
            let next = if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            };
            Ok(Step::Next(Framing::Chunked(next), None))
        }
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(Step::NeedMore);
            }
            let take = (buf.len() as u64).min(left);
            let data = buf.split_to(take as usize).freeze();
            let next = match left - take {
                0 => Chunk::DataEnd,
                n => Chunk::Data(n),
            };
            Ok(Step::Next(Framing::Chunked(next), Some(Frame::data(data))))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Step::NeedMore);
            }
            if &buf[..2] != b"\r\n" {
                return bad("chunk data longer than its size");
            }
            buf.advance(2);
            Ok(Step::Next(Framing::Chunked(Chunk::Size), None))
        }
        Chunk::Trailers => {
            let mut storage = [httparse::EMPTY_HEADER; MAX_TRAILERS];
            let (len, fields) = match httparse::parse_headers(buf, &mut storage) {
                // Bounded whether the section arrives whole or in pieces.
                Ok(httparse::Status::Complete(done)) if done.0 <= MAX_HEAD => done,
                Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => {
                    return Ok(Step::NeedMore)
                }
                _ => return bad("bad trailer section"),
            };
            let mut trailers = HeaderMap::with_capacity(fields.len());
            for f in fields {
                let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(f.name.as_bytes()),
                    HeaderValue::from_bytes(f.value),
                ) else {
                    return bad("bad trailer field");
                };
                trailers.append(name, value);
            }
            buf.advance(len);
            let frame = (!trailers.is_empty()).then(|| Frame::trailers(trailers));
            Ok(Step::Next(Framing::Done, frame))
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let polled = this.poll_body(cx);
        if let Poll::Ready(Some(Err(_))) = polled {
            // A broken body leaves the connection in an unknown state: it closes.
            this.conn = None;
            this.framing = Framing::Done;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(framing: Framing, input: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), Error> {
        let mut buf = BytesMut::from(input);
        let mut state = framing;
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Framing::Chunked(c) = state {
            match chunk_step(&mut buf, c)? {
                Step::Next(next, frame) => {
                    state = next;
                    match frame.map(|f| f.into_data()) {
                        Some(Ok(d)) => data.extend_from_slice(&d),
                        Some(Err(f)) => trailers = f.into_trailers().ok(),
                        None => {}
                    }
                }
                Step::NeedMore => return Err(Error::Incomplete),
            }
        }
        Ok((data, trailers))
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let start = Framing::Chunked(Chunk::Size);
        let (data, trailers) = frames(
            start,
            b"5\r\nhello\r\n6 ; x=y\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(data, b"hello world");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
        let (data, trailers) = frames(start, b"A\r\n0123456789\r\n0\r\n\r\n").unwrap();
        assert_eq!((data.len(), trailers), (10, None));
    }

    #[test]
    fn broken_chunked_framing_is_refused() {
        let start = Framing::Chunked(Chunk::Size);
        for bad in [
            &b"5\r\nhelloXX0\r\n\r\n"[..],
            b"zz\r\nhello\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"1000000000000000\r\n",
        ] {
            assert!(
                matches!(frames(start, bad), Err(Error::BadBody(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(frames(start, b"5\r\nhel"), Err(Error::Incomplete)));
    }

    /// What a connection makes of an answer arriving as `pieces`, one read each: the final
    /// head (interim ones skipped), the body, and the trailers. A piece is read only when the
    /// parser says it needs more, as on a socket.
    fn read_pieces(pieces: &[&[u8]]) -> Result<(Head, Vec<u8>, Option<HeaderMap>), Error> {
        let mut pieces = pieces.iter();
        let mut buf = BytesMut::new();
        let (head, mut framing) = loop {
            if let Some(found) = buffered_head(&mut buf, false, false)? {
                break found;
            }
            buf.extend_from_slice(pieces.next().ok_or(Error::Closed)?);
        };
        let (mut data, mut trailers) = (Vec::new(), None);
        loop {
            match framing {
                Framing::Done => break,
                Framing::Length(n) => {
                    let take = (buf.len() as u64).min(n) as usize;
                    data.extend_from_slice(&buf.split_to(take));
                    framing = match n - take as u64 {
                        0 => Framing::Done,
                        left => {
                            buf.extend_from_slice(pieces.next().ok_or(Error::Incomplete)?);
                            Framing::Length(left)
                        }
                    };
                }
                Framing::Chunked(c) => match chunk_step(&mut buf, c)? {
                    Step::Next(next, frame) => {
                        framing = next;
                        match frame.map(|f| f.into_data()) {
                            Some(Ok(d)) => data.extend_from_slice(&d),
                            Some(Err(f)) => trailers = f.into_trailers().ok(),
                            None => {}
                        }
                    }
                    Step::NeedMore => {
                        buf.extend_from_slice(pieces.next().ok_or(Error::Incomplete)?)
                    }
                },
                Framing::Close => unreachable!("the answers here are framed"),
            }
        }
        assert!(buf.is_empty() && pieces.next().is_none(), "bytes left over");
        Ok((head, data, trailers))
    }

    /// `answer` whole, byte by byte, and cut in two at every position.
    fn every_split(answer: &[u8]) -> Vec<Vec<&[u8]>> {
        let mut ways = vec![vec![answer], answer.chunks(1).collect()];
        ways.extend((1..answer.len()).map(|k| vec![&answer[..k], &answer[k..]]));
        ways
    }

    #[test]
    fn a_chunked_answer_reads_the_same_however_its_bytes_are_split() {
        let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-kind: chunked\r\n\r\n\
            5;x=y\r\nhello\r\n6\r\n world\r\n3 ; name=\"q\"\r\n!!!\r\n1a\r\n\
            abcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: v\r\ngrpc-status: 0\r\n\r\n";
        for pieces in every_split(answer) {
            let cut: Vec<usize> = pieces.iter().map(|p| p.len()).collect();
            let (head, data, trailers) =
                read_pieces(&pieces).unwrap_or_else(|e| panic!("{cut:?}: {e}"));
            assert_eq!(head.headers()["x-kind"], "chunked", "{cut:?}");
            assert_eq!(data, b"hello world!!!abcdefghijklmnopqrstuvwxyz", "{cut:?}");
            let trailers = trailers.unwrap_or_else(|| panic!("{cut:?}: no trailers"));
            assert_eq!(
                (&trailers["x-trailer"], &trailers["grpc-status"]),
                (
                    &"v".parse::<HeaderValue>().unwrap(),
                    &"0".parse::<HeaderValue>().unwrap()
                ),
                "{cut:?}"
            );
        }
    }

    #[test]
    fn interim_answers_are_skipped_however_their_bytes_are_split() {
        let answer = b"HTTP/1.1 100 Continue\r\n\r\n\
            HTTP/1.1 103 Early Hints\r\nlink: </a>; rel=preload\r\n\r\n\
            HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-final: yes\r\n\r\nfinal";
        for pieces in every_split(answer) {
            let cut: Vec<usize> = pieces.iter().map(|p| p.len()).collect();
            let (head, data, _) = read_pieces(&pieces).unwrap_or_else(|e| panic!("{cut:?}: {e}"));
            assert_eq!(head.status, 200, "{cut:?}");
            assert_eq!(head.headers()["x-final"], "yes", "{cut:?}");
            assert!(head.headers().get("link").is_none(), "{cut:?}");
            assert_eq!(data, b"final", "{cut:?}");
        }
    }

    /// The text passed on: the head's own lines, names lowercased, without the connection's
    /// fields, whether moved together where they lie or (a line not `name: value` CRLF) written.
    #[test]
    fn fields_kept_as_text_close_up_around_dropped_lines() {
        let cases: [(&str, &str); 3] = [
            (
                "HTTP/1.1 200 OK\r\nServer: nginx\r\nConnection: keep-alive\r\n\
                 Content-Length: 2\r\nKeep-Alive: timeout=5\r\nX-A: b\r\n\r\nok",
                "server: nginx\r\ncontent-length: 2\r\nx-a: b\r\n",
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: close\r\nX-B:c  \r\nDate: d\r\n\r\n",
                "x-b: c\r\ndate: d\r\n",
            ),
            (
                "HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n",
                "",
            ),
        ];
        for (raw, text) in cases {
            let mut buf = BytesMut::from(raw.as_bytes());
            let kept = parse_head(&mut buf, true).unwrap().unwrap();
            let fields = kept.fields.as_ref().expect("kept as text");
            assert_eq!(String::from_utf8_lossy(fields.text()), text, "{raw:?}");
            // What follows the head stays for the body.
            assert_eq!(
                &buf[..],
                &raw.as_bytes()[raw.find("\r\n\r\n").unwrap() + 4..]
            );
        }
    }

    /// The head in `raw`, parsed into a header map, after checking that it says the same with
    /// its fields kept as text.
    fn head(raw: &str) -> Result<Head, Error> {
        let mapped = parse_head(&mut BytesMut::from(raw.as_bytes()), false);
        let kept = parse_head(&mut BytesMut::from(raw.as_bytes()), true);
        match (&mapped, &kept) {
            (Ok(Some(m)), Ok(Some(k))) => {
                same_fields(m, k).unwrap_or_else(|e| panic!("{raw:?}: {e}"))
            }
            (m, k) => assert_eq!(format!("{m:?}"), format!("{k:?}"), "{raw:?}"),
        }
        mapped?.ok_or(Error::Closed)
    }

    #[test]
    fn fields_stay_as_they_came_unless_a_header_map_must_take_some_out() {
        let kept = |raw: &str| {
            head(raw)
                .map(|_| ())
                .and_then(|()| parse_head(&mut BytesMut::from(raw.as_bytes()), true))
        };
        let plain = "HTTP/1.1 200 OK\r\nServer: x\r\nConnection: keep-alive\r\n\
                     Content-Length: 2\r\n\r\n";
        let h = kept(plain).unwrap().unwrap();
        assert!(h.fields.is_some() && h.headers().is_empty());
        for other in [
            "HTTP/1.1 200 OK\r\nConnection: x-secret\r\nx-secret: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nProxy-Connection: keep-alive\r\n\r\n",
            "HTTP/1.1 200 OK\r\nUpgrade: h2c\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTE: trailers\r\n\r\n",
            "HTTP/1.1 407 Auth\r\nProxy-Authenticate: Basic\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: ws\r\n\r\n",
        ] {
            let h = kept(other).unwrap().unwrap();
            assert!(h.fields.is_none() && !h.headers().is_empty(), "{other:?}");
        }
        // Chunked: a length beside it goes either way.
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\
                       X-A: 1\r\n\r\n";
        let h = kept(chunked).unwrap().unwrap();
        let f = h.fields.unwrap();
        assert_eq!(
            (f.text(), f.length(), f.dated()),
            (&b"x-a: 1\r\n"[..], None, false)
        );
        let odd = "HTTP/1.1 204 No Content\r\nDate: x\r\nContent-Length: 0\r\nX-B:2 \r\n\
                   X-C:\n\r\n";
        let f = kept(odd).unwrap().unwrap().fields.unwrap();
        assert_eq!(
            (f.text(), f.length(), f.dated()),
            (&b"date: x\r\nx-b: 2\r\nx-c: \r\n"[..], None, true)
        );
        let twice = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n";
        let f = kept(twice).unwrap().unwrap().fields.unwrap();
        assert_eq!(
            (f.text(), f.length()),
            (&b"content-length: 2\r\n"[..], Some(2))
        );
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n").unwrap();
        assert_eq!(response_framing(&h, false), Framing::Length(12));
        assert_eq!(response_framing(&h, true), Framing::Done);
        assert!(keep_alive(&h));
        let h = head("HTTP/1.1 204 No Content\r\ncontent-length: 12\r\n\r\n").unwrap();
        assert_eq!(response_framing(&h, false), Framing::Done);
        let h = head("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n")
            .unwrap();
        assert_eq!(response_framing(&h, false), Framing::Chunked(Chunk::Size));
        assert!(!keep_alive(&h), "TE with CL closes after the answer");
        assert!(
            h.headers().get("content-length").is_none(),
            "{:?}",
            h.headers()
        );
        for other in ["gzip", "gzip, chunked", "chunked, gzip"] {
            let raw = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: {other}\r\n\r\n");
            assert!(head(&raw).is_err(), "{other}: only chunked is decoded");
        }
        let h = head("HTTP/1.0 200 OK\r\n\r\n").unwrap();
        assert_eq!(response_framing(&h, false), Framing::Close);
        assert!(!keep_alive(&h));
        let h =
            head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 1\r\n\r\n").unwrap();
        assert!(keep_alive(&h));
        let h = head("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n").unwrap();
        assert!(!keep_alive(&h));
        for bad in ["1, 2", "-1", "", "1e3", "99999999999999999999"] {
            let raw = format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n");
            assert!(head(&raw).is_err(), "{bad:?}");
        }
        let raw = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n";
        assert!(head(raw).is_err());
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n").unwrap();
        assert_eq!(response_framing(&h, false), Framing::Length(2));
    }

    #[test]
    fn http10_chunked_closes_and_keep_alive_timeout_is_read() {
        let h =
            head("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n")
                .unwrap();
        assert_eq!(response_framing(&h, false), Framing::Chunked(Chunk::Size));
        assert!(
            !keep_alive(&h),
            "RFC 9112 §6.1: closed after an HTTP/1.0 chunked answer"
        );
        let h =
            head("HTTP/1.1 200 OK\r\nKeep-Alive: max=100, Timeout=5\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
        assert_eq!(h.idle_timeout, Some(5));
        assert!(keep_alive(&h));
        assert_eq!(idle_limit(5), Some(Duration::from_secs(4)));
        assert_eq!(idle_limit(1), Some(Duration::from_millis(500)));
        assert_eq!(idle_limit(0), None);
        let h =
            head("HTTP/1.1 200 OK\r\nkeep-alive: timeout=0\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert!(!keep_alive(&h), "timeout=0: the upstream closes at once");
        let h = head("HTTP/1.1 200 OK\r\nkeep-alive: max=5\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert_eq!(h.idle_timeout, None);
    }

    #[test]
    fn connection_fields_are_read_not_passed_on() {
        let h = head("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nx-a: 1\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
        let names: Vec<_> = h.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-a", "content-length"]);
        let h = head("HTTP/1.1 200 OK\r\nconnection: close, x-private\r\nx-private: 1\r\n\r\n")
            .unwrap();
        assert!(!keep_alive(&h));
        assert_eq!(
            h.headers()["connection"],
            "close, x-private",
            "kept to name x-private"
        );
        let h = head(
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        )
        .unwrap();
        assert_eq!(h.headers()["connection"], "upgrade");
    }

    #[test]
    fn heads_are_parsed_or_refused() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 503 Busy\r\nX-A: 1\r\nx-a: 2\r\n\r\nrest"[..]);
        let h = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!(h.status, 503);
        assert_eq!(h.headers().get_all("x-a").iter().count(), 2);
        assert_eq!(&buf[..], b"rest");
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nx-a: 1\r\n"[..]);
        assert!(parse_head(&mut partial, true).unwrap().is_none());
        assert_eq!(partial.len(), 25, "a partial head is left in place");
        for bad in [
            "SSH-2.0-OpenSSH_9.6\r\n\r\n",
            "HTTP/1.1 20 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\n\r\n",
        ] {
            assert!(head(bad).is_err(), "{bad:?}");
        }
        let many: String = (0..200).map(|i| format!("x-{i}: v\r\n")).collect();
        let raw = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert!(matches!(head(&raw), Err(Error::Malformed(_))));
    }

    #[test]
    fn request_heads_carry_their_framing() {
        let req = http::Request::post("/upload?x=1")
            .header("host", "a.example")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let mut buf = Vec::new();
        encode_head(&mut buf, &parts, &Added::default(), ReqFraming::Chunked);
        assert_eq!(
            String::from_utf8(buf.clone()).unwrap(),
            "POST /upload?x=1 HTTP/1.1\r\nhost: a.example\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        encode_head(&mut buf, &parts, &Added::default(), ReqFraming::None);
        assert!(String::from_utf8(buf.clone())
            .unwrap()
            .ends_with("content-length: 0\r\n\r\n"));
        encode_head(&mut buf, &parts, &Added::default(), ReqFraming::Length(7));
        assert!(String::from_utf8(buf)
            .unwrap()
            .ends_with("content-length: 7\r\n\r\n"));
    }
}
