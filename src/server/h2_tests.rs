//! The HTTP/2 server as a client sees it, over an in-memory connection: keep-alive PINGs,
//! which resets count against a client, and the flow-control window of padding. The client
//! here writes and reads raw frames, so that each test controls exactly what is sent and when,
//! and sees everything the server writes. Timed behaviour runs in paused time: the clock moves
//! only when every task waits, so a test of minutes takes none.

use super::*;
use crate::http1::Fields;
use http_body_util::{BodyExt, Full};
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

/// How long the client waits for a frame that should come at once. In paused time the wait
/// costs nothing; it only ends a test whose server stalled.
const WAIT: Duration = Duration::from_secs(10);
/// The longest a whole test may run, in paused time.
const TEST_LIMIT: Duration = Duration::from_secs(3600);
/// How far a timer of the server may fire from its deadline: the timer wheel counts whole
/// milliseconds.
const SLACK: Duration = Duration::from_millis(5);

// ---------------------------------------------------------------------------------------------
// What the handler answers
// ---------------------------------------------------------------------------------------------

/// An answer body: whole, or one that breaks off after its first chunk, as an upstream that
/// goes away mid-answer does.
enum Answer {
    Whole(Full<Bytes>),
    Broken { started: bool },
}

impl Body for Answer {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Answer::Whole(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|never| match never {}))),
            Answer::Broken { started } if !*started => {
                *started = true;
                Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                    b"partial",
                )))))
            }
            Answer::Broken { .. } => Poll::Ready(Some(Err(io::Error::other(
                "the upstream went away mid-answer",
            )))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Answer::Whole(b) => b.is_end_stream(),
            Answer::Broken { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Answer::Whole(b) => b.size_hint(),
            Answer::Broken { .. } => SizeHint::default(),
        }
    }
}

impl WithFields for Answer {
    fn fields(&self) -> Option<&Fields> {
        None
    }
}

/// The handler of every test, by path:
/// - `/ok`: 200 with body `ok`;
/// - `/hang`: never answers, and tells `started` (when given) that it runs;
/// - `/fail`: 200 whose body breaks off after its first chunk;
/// - `/count`: reads the whole request body and answers with its length in bytes.
async fn route(
    req: Request<RequestBody>,
    started: Option<mpsc::UnboundedSender<()>>,
) -> Response<Answer> {
    match req.uri().path() {
        "/hang" => {
            if let Some(tx) = started {
                let _ = tx.send(());
            }
            std::future::pending().await
        }
        "/fail" => Response::new(Answer::Broken { started: false }),
        "/count" => {
            let len = match req.into_body().collect().await {
                Ok(b) => b.to_bytes().len().to_string(),
                Err(e) => format!("the body failed: {e}"),
            };
            Response::new(Answer::Whole(Full::from(len)))
        }
        _ => Response::new(Answer::Whole(Full::from("ok"))),
    }
}

// ---------------------------------------------------------------------------------------------
// A raw-frame client
// ---------------------------------------------------------------------------------------------

/// A frame as the client read it.
struct RawFrame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl RawFrame {
    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    /// The error code of an RST_STREAM or a GOAWAY.
    fn code(&self) -> u32 {
        match self.kind {
            kind::RST_STREAM => frame::be_u32(&self.payload),
            kind::GOAWAY => frame::be_u32(&self.payload[4..]),
            _ => panic!("{self:?} carries no error code"),
        }
    }

    /// The last stream a GOAWAY names.
    fn last_stream(&self) -> u32 {
        assert_eq!(self.kind, kind::GOAWAY);
        frame::be_u32(&self.payload) & 0x7fff_ffff
    }

    fn is_ping(&self) -> bool {
        self.kind == kind::PING && !self.has(flag::ACK)
    }
}

/// For failure messages: the frame's kind by name, its flags, stream and payload.
impl std::fmt::Debug for RawFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.kind {
            kind::DATA => "DATA",
            kind::HEADERS => "HEADERS",
            kind::PRIORITY => "PRIORITY",
            kind::RST_STREAM => "RST_STREAM",
            kind::SETTINGS => "SETTINGS",
            kind::PUSH_PROMISE => "PUSH_PROMISE",
            kind::PING => "PING",
            kind::GOAWAY => "GOAWAY",
            kind::WINDOW_UPDATE => "WINDOW_UPDATE",
            kind::CONTINUATION => "CONTINUATION",
            _ => "an unknown frame",
        };
        write!(
            f,
            "{name} (flags {:#04x}) on stream {}, payload ",
            self.flags, self.stream
        )?;
        let shown = &self.payload[..self.payload.len().min(32)];
        if shown.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            write!(f, "{:?}", String::from_utf8_lossy(shown))?;
        } else {
            write!(f, "{shown:02x?}")?;
        }
        if shown.len() < self.payload.len() {
            write!(f, " and {} bytes more", self.payload.len() - shown.len())?;
        }
        Ok(())
    }
}

/// What the client saw next.
#[derive(Debug)]
enum Next {
    Frame(RawFrame),
    /// The server closed the connection.
    Eof,
    /// Nothing came in the time given.
    Silent,
}

/// The client end of a connection: frames out, frames in, and the send windows the server
/// has granted, followed as a real client must.
struct Client {
    io: DuplexStream,
    rbuf: Vec<u8>,
    decoder: Decoder,
    /// What the client may still send on the connection.
    conn_window: i64,
    /// The window of each new stream, as the server's SETTINGS set it.
    initial_window: i64,
    /// What the client may still send on each stream it opened.
    windows: HashMap<u32, i64>,
}

impl Client {
    fn new(io: DuplexStream) -> Self {
        Client {
            io,
            rbuf: Vec::new(),
            decoder: Decoder::new(TABLE_SIZE),
            conn_window: frame::DEFAULT_WINDOW,
            initial_window: frame::DEFAULT_WINDOW,
            windows: HashMap::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io
            .write_all(bytes)
            .await
            .expect("the server closed the connection while the client was writing");
    }

    /// The next frame, the end of the connection, or silence for `limit`.
    async fn next_within(&mut self, limit: Duration) -> Next {
        let deadline = Instant::now() + limit;
        loop {
            if self.rbuf.len() >= HEADER_LEN {
                let head = Head::parse(&self.rbuf);
                if self.rbuf.len() >= HEADER_LEN + head.len {
                    let payload = self.rbuf[HEADER_LEN..HEADER_LEN + head.len].to_vec();
                    self.rbuf.drain(..HEADER_LEN + head.len);
                    let f = RawFrame {
                        kind: head.kind,
                        flags: head.flags,
                        stream: head.stream,
                        payload,
                    };
                    self.track_windows(&f);
                    return Next::Frame(f);
                }
            }
            match tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.rbuf)).await {
                Err(_) => return Next::Silent,
                Ok(Ok(0)) | Ok(Err(_)) => return Next::Eof,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next frame, which should come at once; `what` names it for the failure message.
    async fn frame(&mut self, what: &str) -> RawFrame {
        match self.next_within(WAIT).await {
            Next::Frame(f) => f,
            Next::Eof => panic!("the server closed the connection; the client waited for {what}"),
            Next::Silent => {
                panic!("the server sent nothing for {WAIT:?}; the client waited for {what}")
            }
        }
    }

    /// Follows the server's grants: SETTINGS_INITIAL_WINDOW_SIZE for every stream (RFC 9113
    /// §6.9.2), and WINDOW_UPDATE.
    fn track_windows(&mut self, f: &RawFrame) {
        match f.kind {
            kind::SETTINGS if !f.has(flag::ACK) => {
                for entry in f.payload.chunks_exact(6) {
                    if u16::from_be_bytes([entry[0], entry[1]]) == setting::INITIAL_WINDOW_SIZE {
                        let value = i64::from(frame::be_u32(&entry[2..]));
                        let delta = value - self.initial_window;
                        self.initial_window = value;
                        for w in self.windows.values_mut() {
                            *w += delta;
                        }
                    }
                }
            }
            kind::WINDOW_UPDATE => {
                let inc = i64::from(frame::be_u32(&f.payload) & 0x7fff_ffff);
                if f.stream == 0 {
                    self.conn_window += inc;
                } else if let Some(w) = self.windows.get_mut(&f.stream) {
                    *w += inc;
                }
            }
            _ => {}
        }
    }

    /// What the client may send on stream `id` now: the lesser of its window and the
    /// connection's.
    fn room(&self, id: u32) -> i64 {
        self.windows[&id].min(self.conn_window)
    }

    /// The client's SETTINGS (the listener has read the preface already), then the server's
    /// greeting up to its acknowledgement of them.
    async fn handshake(&mut self) {
        let mut out = Vec::new();
        frame::settings(&mut out, &[]);
        self.send(&out).await;
        let (mut greeted, mut acked) = (false, false);
        while !(greeted && acked) {
            let f = self.frame("the server's SETTINGS and its ACK").await;
            match f.kind {
                kind::SETTINGS if f.has(flag::ACK) => acked = true,
                kind::SETTINGS => {
                    greeted = true;
                    let mut ack = Vec::new();
                    frame::settings_ack(&mut ack);
                    self.send(&ack).await;
                }
                kind::WINDOW_UPDATE => {}
                _ => panic!("the server sent {f:?} in its greeting"),
            }
        }
    }

    /// Opens stream `id` with a request for `path`; `end_stream`: it has no body.
    async fn request(&mut self, id: u32, method: &str, path: &str, end_stream: bool) {
        let mut block = Vec::new();
        for (name, value) in [
            (":method", method),
            (":scheme", "http"),
            (":authority", "gateway.test"),
            (":path", path),
        ] {
            hpack::encode_field(name.as_bytes(), value.as_bytes(), false, &mut block);
        }
        let mut out = Vec::new();
        frame::header_block(&mut out, id, &block, end_stream, frame::DEFAULT_MAX_FRAME);
        self.windows.insert(id, self.initial_window);
        self.send(&out).await;
    }

    /// The fields of a header block the server sent in one frame.
    fn fields(&mut self, f: &RawFrame) -> Vec<(String, String)> {
        assert!(
            f.has(flag::END_HEADERS),
            "an answer's head comes in one frame"
        );
        let block = frame::unpadded(f.flags, &f.payload).expect("padding within the frame");
        let mut fields = Vec::new();
        self.decoder
            .decode(block, usize::MAX, |field| {
                fields.push((
                    String::from_utf8_lossy(field.name).into_owned(),
                    String::from_utf8_lossy(field.value).into_owned(),
                ))
            })
            .expect("the server's header block decodes");
        fields
    }

    /// The `:status` of a HEADERS frame.
    fn status(&mut self, f: &RawFrame) -> u16 {
        let fields = self.fields(f);
        let status = fields
            .iter()
            .find(|(n, _)| n == ":status")
            .unwrap_or_else(|| panic!("no :status in {fields:?}"));
        status.1.parse().expect("a numeric :status")
    }

    /// Reads the answer on stream `id` to its end: its status and body. A reset of any
    /// stream, a GOAWAY, the end of the connection or silence fails the test.
    async fn answer(&mut self, id: u32) -> (u16, Vec<u8>) {
        let what = format!("the answer on stream {id}");
        let mut status = None;
        let mut body = Vec::new();
        loop {
            let f = self.frame(&what).await;
            match f.kind {
                kind::HEADERS if f.stream == id => {
                    if status.is_none() {
                        status = Some(self.status(&f));
                    }
                    if f.has(flag::END_STREAM) {
                        break;
                    }
                }
                kind::DATA if f.stream == id => {
                    body.extend_from_slice(frame::unpadded(f.flags, &f.payload).expect("padding"));
                    if f.has(flag::END_STREAM) {
                        break;
                    }
                }
                kind::RST_STREAM | kind::GOAWAY => panic!(
                    "the server sent {f:?} (code {:#x}) while the client waited for {what}",
                    f.code()
                ),
                _ => {}
            }
        }
        (status.expect("a head before the end of the answer"), body)
    }

    /// A GET for `path` on stream `id` with no body, read to its end.
    async fn answer_to(&mut self, id: u32, path: &str) -> (u16, Vec<u8>) {
        self.request(id, "GET", path, true).await;
        self.answer(id).await
    }

    /// Answers a keep-alive PING as a live client does.
    async fn ping_ack(&mut self, ping: &RawFrame) {
        let mut out = Vec::new();
        frame::ping_ack(&mut out, &ping.payload);
        self.send(&out).await;
    }
}

/// Serves one connection with `limits` and the test handler [`route`] (which tells `started`
/// when a `/hang` handler runs), while `client` drives the other end; the connection's conduct
/// once both are done. The client end closes when `client` returns, which ends the server's
/// side too.
async fn connect<C, CFut>(
    limits: Limits,
    started: Option<mpsc::UnboundedSender<()>>,
    client: C,
) -> Conduct
where
    C: FnOnce(Client) -> CFut,
    CFut: Future<Output = ()>,
{
    let (near, far) = tokio::io::duplex(1 << 20);
    // The sender is kept for the whole test: were it dropped, the server would take it for
    // a shutdown.
    let (_stop_tx, mut stop) = watch::channel(false);
    let handler = move |req| route(req, started.clone());
    // The listener reads the preface to tell the protocol, and hands it over with the
    // connection.
    let served = serve(
        far,
        BytesMut::from(PREFACE),
        limits,
        None,
        &mut stop,
        None,
        handler,
    );
    let client = client(Client::new(near));
    let both = async { tokio::join!(served, client).0 };
    tokio::time::timeout(TEST_LIMIT, both)
        .await
        .expect("the test ends by itself")
}

// ---------------------------------------------------------------------------------------------
// Keep-alive PINGs
// ---------------------------------------------------------------------------------------------

/// While a stream is open, the server pings every [`KEEP_ALIVE`]; a client that answers each
/// PING keeps the connection as long as it likes (here over three minutes), and the stream it
/// waits on stays open: a new request is still answered afterwards.
#[tokio::test(start_paused = true)]
async fn keep_alive_pings_go_on_while_the_client_answers_them() {
    let limits = Limits::listener(16);
    let conduct = connect(limits, None, |mut c| async move {
        c.handshake().await;
        c.request(1, "GET", "/hang", true).await;
        let opened = Instant::now();
        let mut pings: Vec<Instant> = Vec::new();
        while pings.len() < 5 || opened.elapsed() < Duration::from_secs(180) {
            let f = match c.next_within(KEEP_ALIVE + WAIT).await {
                Next::Frame(f) => f,
                other => panic!(
                    "after {} answered PINGs and {:?} with a stream open, the client saw {other:?} \
                     instead of the next keep-alive PING",
                    pings.len(),
                    opened.elapsed()
                ),
            };
            assert!(
                f.is_ping() && f.stream == 0,
                "a client with a stream waiting got {f:?}, not a keep-alive PING"
            );
            assert_eq!(f.payload, KEEP_ALIVE_PING, "the keep-alive PING's payload");
            let now = Instant::now();
            // The first PING comes one interval after the stream opened, though the idle
            // timeout is longer; then one each interval.
            let gap = now - pings.last().copied().unwrap_or(opened);
            assert!(
                gap + SLACK >= KEEP_ALIVE && gap <= KEEP_ALIVE + SLACK,
                "keep-alive PING {} came {gap:?} after the one before (or the stream's \
                 opening), not {KEEP_ALIVE:?}",
                pings.len() + 1
            );
            pings.push(now);
            c.ping_ack(&f).await;
        }
        // The connection is still served: a second request is answered.
        assert_eq!(c.answer_to(3, "/ok").await, (200, b"ok".to_vec()));
    })
    .await;
    assert_eq!(conduct, Conduct::Clean);
}

/// A client that does not answer a keep-alive PING is taken for gone: when the next one is
/// due, the connection ends without another word (no GOAWAY: there is nobody to read it).
#[tokio::test(start_paused = true)]
async fn a_keep_alive_ping_left_unanswered_closes_the_connection_at_the_next_interval() {
    let limits = Limits::listener(16);
    let conduct = connect(limits, None, |mut c| async move {
        c.handshake().await;
        c.request(1, "GET", "/hang", true).await;
        let ping = match c.next_within(KEEP_ALIVE + WAIT).await {
            Next::Frame(f) if f.is_ping() => f,
            other => panic!("a client with a stream waiting saw {other:?}, not a PING"),
        };
        assert_eq!(ping.payload, KEEP_ALIVE_PING);
        let pinged = Instant::now();
        // The client stays silent.
        match c.next_within(KEEP_ALIVE + WAIT).await {
            Next::Eof => {}
            other => panic!(
                "after a PING left unanswered the client saw {other:?} {:?} later, not the \
                 end of the connection",
                pinged.elapsed()
            ),
        }
        let gap = pinged.elapsed();
        assert!(
            gap + SLACK >= KEEP_ALIVE && gap <= KEEP_ALIVE + SLACK,
            "the connection closed {gap:?} after the unanswered PING, not {KEEP_ALIVE:?}"
        );
    })
    .await;
    // Not an offence: a client that vanished broke no limit.
    assert_eq!(conduct, Conduct::Clean);
}

/// With no stream open there is nothing to keep alive: no PING is sent, and once the idle
/// timeout has passed since the last stream closed the server says GOAWAY NO_ERROR (naming
/// that stream as the last it took) and closes.
#[tokio::test(start_paused = true)]
async fn a_connection_with_no_stream_open_is_not_pinged_but_closed_at_the_idle_timeout() {
    let limits = Limits::listener(16);
    assert!(
        limits.idle_timeout > KEEP_ALIVE,
        "a PING would be due before the idle timeout"
    );
    let conduct = connect(limits, None, |mut c| async move {
        c.handshake().await;
        assert_eq!(c.answer_to(1, "/ok").await, (200, b"ok".to_vec()));
        let quiet = Instant::now();
        let goaway = match c.next_within(limits.idle_timeout + WAIT).await {
            Next::Frame(f) if f.kind == kind::GOAWAY => f,
            other => panic!(
                "a connection with no stream open saw {other:?} {:?} after its last answer, not \
                 GOAWAY at the idle timeout",
                quiet.elapsed()
            ),
        };
        let gap = quiet.elapsed();
        assert!(
            gap + SLACK >= limits.idle_timeout && gap <= limits.idle_timeout + SLACK,
            "GOAWAY came {gap:?} after the last answer, not at the idle timeout"
        );
        assert_eq!(goaway.code(), Reason::NO_ERROR.0, "GOAWAY's code");
        assert_eq!(goaway.last_stream(), 1, "GOAWAY's last stream");
        match c.next_within(WAIT).await {
            Next::Eof => {}
            other => panic!("after GOAWAY the client saw {other:?}, not the end"),
        }
    })
    .await;
    assert_eq!(conduct, Conduct::Clean);
}

// ---------------------------------------------------------------------------------------------
// Which resets count against a client
// ---------------------------------------------------------------------------------------------

/// The reset limit of the next two tests: low, so that a few streams pass it.
const MAX_RESETS: u32 = 3;

fn few_resets() -> Limits {
    Limits {
        http2_max_resets: MAX_RESETS,
        ..Limits::listener(16)
    }
}

/// An answer whose body fails mid-way is reset by the server (RST_STREAM INTERNAL_ERROR);
/// that is the gateway's doing, not the client's, so however many there are the client is
/// not taken for a reset flood: the connection goes on and the next request is answered.
#[tokio::test(start_paused = true)]
async fn resets_of_failed_answer_bodies_are_not_counted_against_the_client() {
    let conduct = connect(few_resets(), None, |mut c| async move {
        c.handshake().await;
        let failing = 2 * MAX_RESETS;
        for n in 0..failing {
            let id = 1 + 2 * n;
            c.request(id, "GET", "/fail", true).await;
            let what = format!("the failed answer on stream {id}");
            let mut status = None;
            let reset = loop {
                let f = c.frame(&what).await;
                match f.kind {
                    kind::HEADERS if f.stream == id => status = Some(c.status(&f)),
                    kind::DATA if f.stream == id => {}
                    kind::RST_STREAM if f.stream == id => break f,
                    kind::GOAWAY => panic!(
                        "after {n} failed answers (limit {MAX_RESETS} resets) the server closed \
                         the connection: GOAWAY code {:#x}",
                        f.code()
                    ),
                    _ => panic!("unexpected {f:?} while waiting for {what}"),
                }
            };
            assert_eq!(status, Some(200), "the failed answer's head went out first");
            assert_eq!(
                reset.code(),
                Reason::INTERNAL_ERROR.0,
                "the reset of a failed answer body"
            );
        }
        // Twice the limit later, the connection serves on.
        let id = 1 + 2 * failing;
        c.request(id, "GET", "/ok", true).await;
        match c.next_within(WAIT).await {
            Next::Frame(f) if f.kind == kind::GOAWAY => panic!(
                "after {failing} failed answers (limit {MAX_RESETS} resets) the server closed \
                 the connection with GOAWAY code {:#x} (ENHANCE_YOUR_CALM is {:#x})",
                f.code(),
                Reason::ENHANCE_YOUR_CALM.0
            ),
            Next::Frame(f) if f.kind == kind::HEADERS && f.stream == id => {
                assert_eq!(c.status(&f), 200);
            }
            other => panic!("the request after the failed answers got {other:?}"),
        }
    })
    .await;
    assert_eq!(conduct, Conduct::Clean);
}

/// The contrast, at the same limit: a client that resets streams whose handlers are at work
/// is counted, and one reset past the limit closes the connection with GOAWAY
/// ENHANCE_YOUR_CALM (an offence).
#[tokio::test(start_paused = true)]
async fn client_resets_of_working_streams_past_the_limit_close_the_connection() {
    let (tx, mut started) = mpsc::unbounded_channel();
    let conduct = connect(few_resets(), Some(tx), |mut c| async move {
        c.handshake().await;
        for n in 0..=MAX_RESETS {
            let id = 1 + 2 * n;
            c.request(id, "GET", "/hang", true).await;
            tokio::time::timeout(WAIT, started.recv())
                .await
                .expect("the handler of a new stream runs")
                .expect("the server holds the handler");
            // The reset, and a PING to see whether the connection is still served.
            let mut out = Vec::new();
            frame::rst(&mut out, id, Reason::CANCEL);
            frame::head(&mut out, 8, kind::PING, 0, 0);
            out.extend_from_slice(b"client-p");
            c.send(&out).await;
            let f = c.frame("the answer to the client's PING").await;
            if n < MAX_RESETS {
                assert!(
                    f.kind == kind::PING && f.has(flag::ACK) && f.payload == b"client-p",
                    "after {} client resets (limit {MAX_RESETS}) the client got {f:?}, not its \
                     PING's ACK",
                    n + 1
                );
                continue;
            }
            assert!(
                f.kind == kind::GOAWAY,
                "after {} client resets (limit {MAX_RESETS}) the client got {f:?}, not GOAWAY",
                n + 1
            );
            assert_eq!(f.code(), Reason::ENHANCE_YOUR_CALM.0, "GOAWAY's code");
            assert_eq!(f.last_stream(), id, "GOAWAY's last stream");
            match c.next_within(WAIT).await {
                Next::Eof => {}
                other => panic!("after GOAWAY the client saw {other:?}, not the end"),
            }
        }
    })
    .await;
    assert_eq!(conduct, Conduct::Offence);
}

// ---------------------------------------------------------------------------------------------
// Padding and flow control
// ---------------------------------------------------------------------------------------------

/// Padded DATA counts against the windows in full, pad length byte and padding included
/// (RFC 9113 §6.1), so the server must give the padding's share back as it arrives: an upload
/// whose padding alone is twice the connection window and eight times the stream window
/// completes, the client sending only what the windows it was granted allow. The body's own
/// bytes stay well within the stream window, so only the padding can stall it.
#[tokio::test(start_paused = true)]
async fn the_window_taken_by_padding_is_given_back_and_a_padded_upload_completes() {
    const FRAMES: usize = 8192;
    const DATA: usize = 16;
    const PAD: usize = 255;
    // What each frame takes of the windows: the pad length byte, the data, the padding.
    const FRAME_PAYLOAD: usize = 1 + DATA + PAD;
    let padding = FRAMES * (1 + PAD);
    assert!(padding >= 2 * CONN_WINDOW as usize && padding >= 8 * STREAM_WINDOW as usize);
    assert!(FRAMES * DATA <= STREAM_WINDOW as usize / 2);
    let conduct = connect(Limits::listener(16), None, |mut c| async move {
        c.handshake().await;
        c.request(1, "POST", "/count", false).await;
        let mut sent = 0;
        while sent < FRAMES {
            let mut out = Vec::new();
            while sent < FRAMES && c.room(1) >= FRAME_PAYLOAD as i64 {
                let last = sent + 1 == FRAMES;
                let flags = flag::PADDED | if last { flag::END_STREAM } else { 0 };
                frame::head(&mut out, FRAME_PAYLOAD, kind::DATA, flags, 1);
                out.push(PAD as u8);
                out.extend_from_slice(&[b'a' + (sent % 26) as u8; DATA]);
                out.extend_from_slice(&[0; PAD]);
                *c.windows.get_mut(&1).expect("opened") -= FRAME_PAYLOAD as i64;
                c.conn_window -= FRAME_PAYLOAD as i64;
                sent += 1;
            }
            c.send(&out).await;
            // Out of window: wait for the server to grant more.
            while sent < FRAMES && c.room(1) < FRAME_PAYLOAD as i64 {
                match c.next_within(WAIT).await {
                    Next::Frame(f) if matches!(f.kind, kind::RST_STREAM | kind::GOAWAY) => {
                        panic!(
                            "the server sent {f:?} (code {:#x}) after {sent} of {FRAMES} padded \
                             frames",
                            f.code()
                        )
                    }
                    Next::Frame(_) => {}
                    other => panic!(
                        "the upload stalled after {sent} of {FRAMES} padded frames \
                         ({} bytes of padding): the client saw {other:?} while waiting for a \
                         WINDOW_UPDATE (stream window {}, connection window {})",
                        sent * (1 + PAD),
                        c.windows[&1],
                        c.conn_window
                    ),
                }
            }
        }
        let (status, body) = c.answer(1).await;
        assert_eq!(status, 200);
        assert_eq!(
            String::from_utf8_lossy(&body),
            (FRAMES * DATA).to_string(),
            "the handler read the body without its padding"
        );
    })
    .await;
    assert_eq!(conduct, Conduct::Clean);
}

/// The frame that ends a stream gets no WINDOW_UPDATE on that stream for its padding: the
/// client can send nothing more there (RFC 9113 §5.1), so the frame would be wasted.
#[tokio::test(start_paused = true)]
async fn the_padding_of_a_streams_last_frame_is_not_given_back_to_the_stream() {
    let conduct = connect(Limits::listener(16), None, |mut c| async move {
        c.handshake().await;
        c.request(1, "POST", "/count", false).await;
        let mut out = Vec::new();
        frame::head(
            &mut out,
            1 + 5 + 200,
            kind::DATA,
            flag::PADDED | flag::END_STREAM,
            1,
        );
        out.push(200);
        out.extend_from_slice(b"hello");
        out.extend_from_slice(&[0; 200]);
        c.send(&out).await;
        loop {
            let f = c.frame("the answer on stream 1").await;
            assert!(
                !(f.kind == kind::WINDOW_UPDATE && f.stream == 1),
                "a WINDOW_UPDATE on stream 1 after its last frame: {f:?}"
            );
            if f.stream == 1 && f.has(flag::END_STREAM) {
                assert_eq!(f.kind, kind::DATA, "the answer's body ends the stream");
                assert_eq!(frame::unpadded(f.flags, &f.payload), Some(&b"5"[..]));
                break;
            }
        }
    })
    .await;
    assert_eq!(conduct, Conduct::Clean);
}
