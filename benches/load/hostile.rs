//! `hostile`: slow, silent and oversized clients at a constant pressure against a fresh gateway,
//! while legitimate requests flow at a fixed rate. Each attacker reconnects as soon as the gateway
//! closes it, until `--hostile-duration` is over; then the connections still open are waited for
//! until the gateway closes them (or their deadline is `GRACE` behind them), so that every
//! connection opened has a close time or is counted as never closed.

use super::probe::{self, Sampler, Watch};
use super::{
    attempt, join_tallies, open_loop, Args, Gateway, Proto, Report, Row, Tally, Target, Timing,
    Tweaks, UpstreamAddrs,
};
use anyhow::Result;
use clap::ValueEnum;
use hdrhistogram::Histogram;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The kinds of hostile connection.
const KINDS: usize = 4;
/// What a slowloris sends at once: a request head that never ends (the bench's `Host`).
const HEAD_START: &[u8] = b"GET / HTTP/1.1\r\nHost: bench.example.com\r\n";
/// What it sends next, a byte a second, then `a` for ever.
const DRIP_HEADER: &[u8] = b"x-slowloris: ";
/// The HTTP/2 connection preface, dripped a byte a second.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The size of the big head's one huge header.
const BIG_HEAD_BYTES: usize = 200 * 1024;
const DRIP_EVERY: Duration = Duration::from_secs(1);
/// The attackers' first connections are spread over this, so they do not all meet the listen
/// backlog in the same millisecond.
const RAMP: Duration = Duration::from_secs(1);
/// How long past its deadline a connection is waited for before it counts as never closed.
const GRACE: Duration = Duration::from_secs(5);
/// A close later than its deadline by more than this misses the goal.
const LATE: Duration = Duration::from_secs(1);
/// The legitimate keep-alive connections, and the rate on them without `--rate`.
const LEGIT_CONNECTIONS: usize = 8;
const LEGIT_RATE: f64 = 1000.0;
/// Legitimate requests on new connections, one each, per second.
const NEW_CONNECTIONS_PER_S: f64 = 50.0;
/// The gateway's default `limits.tarpit`: the longest wait before an offender is read.
const TARPIT: Duration = Duration::from_secs(1);
/// The goals.
const P99_GOAL_US: u64 = 50_000;
const RSS_GOAL_KIB: u64 = 64 * 1024;

/// A kind of hostile connection (`--hostile-kinds`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub(super) enum Kind {
    /// Connects and sends nothing.
    Silent,
    /// A request head, then a header byte a second.
    Slowloris,
    /// The HTTP/2 preface, a byte a second.
    PrefaceDrip,
    /// A 200 KB head at once, then reads the answer.
    BigHead,
}

impl Kind {
    pub(super) const ALL: [Kind; KINDS] = [
        Kind::Silent,
        Kind::Slowloris,
        Kind::PrefaceDrip,
        Kind::BigHead,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Silent => "silent",
            Kind::Slowloris => "slowloris",
            Kind::PrefaceDrip => "preface drip",
            Kind::BigHead => "big head",
        }
    }

    /// By when the gateway must close it, from its connect, and the limit that says so. A
    /// big head is answered at once, or after the gateway's `tarpit` (1 s by default) once its
    /// address has been answered 431 before.
    fn deadline(self, head: Duration) -> (Duration, &'static str) {
        match self {
            Kind::Silent | Kind::PrefaceDrip => (head, "first_byte_timeout"),
            // Timed from the head's first byte, which is read after the tarpit.
            Kind::Slowloris => (head + TARPIT, "tarpit + request_headers_timeout"),
            Kind::BigHead => (TARPIT, "431 within the tarpit"),
        }
    }
}

/// The big head: a request whose one header takes it to 200 KB.
fn big_head() -> &'static [u8] {
    static HEAD: OnceLock<Vec<u8>> = OnceLock::new();
    HEAD.get_or_init(|| {
        let mut head = HEAD_START.to_vec();
        head.extend_from_slice(b"x-big: ");
        let end = b"\r\n\r\n";
        head.resize(BIG_HEAD_BYTES - end.len(), b'a');
        head.extend_from_slice(end);
        head
    })
}

/// Connections of each kind open now, and the most at once.
#[derive(Default)]
struct Held {
    open: [AtomicU64; KINDS],
    peak: [AtomicU64; KINDS],
}

impl Held {
    fn opened(&self, i: usize) {
        let now = self.open[i].fetch_add(1, Ordering::Relaxed) + 1;
        self.peak[i].fetch_max(now, Ordering::Relaxed);
    }

    fn closed(&self, i: usize) {
        self.open[i].fetch_sub(1, Ordering::Relaxed);
    }
}

/// What one kind's attackers saw.
struct KindTally {
    opened: u64,
    connect_failed: u64,
    first_error: Option<String>,
    /// Closed by the gateway, and after how long (µs from the connect).
    closed: u64,
    lifetimes: Histogram<u64>,
    /// Closed more than `LATE` after the deadline.
    late: u64,
    /// Still open `GRACE` after the deadline: given up on.
    never_closed: u64,
    /// Big head: the status of the answer read before the close, or none.
    answered_431: u64,
    answered_other: u64,
    unanswered: u64,
}

impl KindTally {
    fn new() -> KindTally {
        KindTally {
            opened: 0,
            connect_failed: 0,
            first_error: None,
            closed: 0,
            lifetimes: probe::lifetimes(),
            late: 0,
            never_closed: 0,
            answered_431: 0,
            answered_other: 0,
            unanswered: 0,
        }
    }

    fn merge(&mut self, other: &KindTally) {
        self.opened += other.opened;
        self.connect_failed += other.connect_failed;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.closed += other.closed;
        self.lifetimes
            .add(&other.lifetimes)
            .expect("histograms with the same bounds merge");
        self.late += other.late;
        self.never_closed += other.never_closed;
        self.answered_431 += other.answered_431;
        self.answered_other += other.answered_other;
        self.unanswered += other.unanswered;
    }

    /// Connections that outlived their deadline by more than `LATE`, closed or not.
    fn missed(&self) -> u64 {
        self.late + self.never_closed
    }
}

/// `hostile`: the attack, the legitimate load beside it, and the report.
pub(super) async fn run(args: &Args, upstreams: &UpstreamAddrs, report: &mut Report) -> Result<()> {
    let head_deadline = args.hostile_deadline;
    let tweaks = Tweaks {
        head_deadline: Some(head_deadline),
        ..Tweaks::default()
    };
    let gw = Gateway::start(args, upstreams, &tweaks).await?;
    let n = args.hostile_connections;
    let chosen = args.hostile_kinds();
    gw.ensure_fd_limit((chosen.len() * n) as u64 + super::FD_MARGIN)?;
    let rate = args.rate.map_or(LEGIT_RATE, |r| r as f64);
    let target = Target::gateway(gw.listen, Proto::H1);
    let rss_fresh = gw.rss_kib()?;

    eprintln!(
        "  hostile: {n} connections of each of {} kinds for {:.0} s, {rate}/s legitimate",
        chosen.len(),
        args.hostile_duration.as_secs_f64()
    );
    let sampler = Sampler::start(gw.pid, None);
    let watch = Watch::start(gw.pid)?;
    let started = Instant::now();
    let stop_opening = started + args.hostile_duration;
    let held = Arc::new(Held::default());
    let attackers = attack(
        chosen.clone(),
        gw.listen,
        n,
        head_deadline,
        stop_opening,
        held.clone(),
    );
    let timing = Timing {
        warmup: Duration::ZERO,
        duration: args.hostile_duration,
    };
    let label = format!("hostile: legit {rate}/s");
    let progress = spawn_held_progress(chosen.clone(), held.clone(), started, stop_opening);
    let (kept, fresh, kinds) = tokio::join!(
        open_loop(&label, &target, LEGIT_CONNECTIONS, rate, timing),
        new_connections(&target, NEW_CONNECTIONS_PER_S, timing),
        probe::on_own_thread("load-attack", attackers),
    );
    progress.abort();
    let (kept, fresh, (kinds, attack_thread)) = (kept?, fresh?, kinds?);
    let watched = watch.stop(attack_thread)?;
    let samples = sampler.stop().await?;
    gw.check_alive()?;
    let closed_lines = probe::closed_lines(&gw).await?;
    let peak_hwm = gw.peak_rss_kib()?;

    // The goals.
    let mut legit = Tally::new();
    legit.merge(&kept);
    legit.merge(&fresh);
    let sent = legit.answered() + legit.errors();
    let p99 = legit.latency.value_at_quantile(0.99);
    let peak_rss = samples.peak_rss_kib;
    let missed: u64 = kinds.iter().map(KindTally::missed).sum();
    let goals = [
        legit.errors() == 0 && sent > 0,
        p99 < P99_GOAL_US,
        peak_rss < RSS_GOAL_KIB,
        missed == 0,
    ];

    report.notes.push(format!(
        "hostile: legitimate requests {sent} sent, {} succeeded, {} failed; latency p50 {:.1} / \
         p99 {:.1} / max {:.1} ms",
        legit.answered(),
        legit.errors(),
        legit.latency.value_at_quantile(0.5) as f64 / 1e3,
        p99 as f64 / 1e3,
        legit.latency.max() as f64 / 1e3,
    ));
    report.notes.push(format!(
        "hostile: gateway RSS {rss_fresh} KiB fresh, peak {peak_rss} KiB ({:.1} MiB) in {} reads \
         every 100 ms (VmHWM {peak_hwm} KiB); {}",
        peak_rss as f64 / 1024.0,
        samples.rss_reads,
        watched.text()
    ));
    report
        .notes
        .push(kinds_table(&chosen, &kinds, head_deadline));
    report.notes.push(format!(
        "hostile: the gateway's counters at the end:\n    {}",
        closed_lines.join("\n    ")
    ));
    report.notes.push(format!(
        "hostile goals: every legitimate request succeeds: {} ({} of {sent} failed); p99 under \
         50 ms: {} ({:.1} ms); RSS under 64 MiB: {} ({:.1} MiB); every hostile connection closed \
         by its deadline: {} ({missed} more than 1 s late or never closed)",
        probe::met(goals[0]),
        legit.errors(),
        probe::met(goals[1]),
        p99 as f64 / 1e3,
        probe::met(goals[2]),
        peak_rss as f64 / 1024.0,
        probe::met(goals[3]),
    ));

    let kinds_json: Vec<_> = Kind::ALL
        .iter()
        .zip(&kinds)
        .filter(|(kind, _)| chosen.contains(kind))
        .map(|(kind, t)| {
            let (deadline, limit) = kind.deadline(head_deadline);
            json!({
                "kind": kind.name(),
                "held_at_once": n,
                "peak_held": held.peak[*kind as usize].load(Ordering::Relaxed),
                "opened": t.opened,
                "connect_failed": t.connect_failed,
                "first_connect_error": t.first_error,
                "closed_by_gateway": t.closed,
                "lifetime": probe::spread_json(&t.lifetimes),
                "deadline_s": deadline.as_secs_f64(),
                "limit": limit,
                "late_over_1s": t.late,
                "never_closed": t.never_closed,
                "answers": (*kind == Kind::BigHead).then(|| json!({
                    "431": t.answered_431, "other": t.answered_other, "none": t.unanswered,
                })),
            })
        })
        .collect();
    let extra = json!({
        "rate": rate,
        "legit_keepalive_connections": LEGIT_CONNECTIONS,
        "legit_new_connections_per_s": NEW_CONNECTIONS_PER_S,
        "legit": {
            "sent": sent, "succeeded": legit.answered(), "failed": legit.errors(),
            "latency_us": { "p50": legit.latency.value_at_quantile(0.5), "p99": p99,
                            "max": legit.latency.max() },
        },
        "hostile_duration_s": args.hostile_duration.as_secs_f64(),
        "attackers": kinds_json,
        "rss_kib": { "fresh": rss_fresh, "peak_sampled": peak_rss, "vm_hwm": peak_hwm,
                     "reads": samples.rss_reads },
        "cpu": watched.json(),
        "closed_counters": closed_lines,
        "goals": {
            "legit_all_succeed": goals[0], "legit_p99_under_50ms": goals[1],
            "rss_under_64mib": goals[2], "hostile_closed_by_deadline": goals[3],
        },
    });
    let row = Row::from_tally("hostile", "legit keep-alive", &kept, timing.duration, extra);
    report.push(row, &kept);
    let extra = json!({ "per_s": NEW_CONNECTIONS_PER_S });
    let row = Row::from_tally("hostile", "legit new conn", &fresh, timing.duration, extra);
    report.push(row, &fresh);
    gw.note_log(report);
    Ok(())
}

/// A small table of the attackers, one line a kind.
fn kinds_table(chosen: &[Kind], kinds: &[KindTally], head_deadline: Duration) -> String {
    let mut out = format!(
        "hostile: attackers (closed: by the gateway; lived: from connect to close, min / median / \
         max)\n    {:<13} {:>7} {:>7} {:>7}  {:<27} {:<30} {:>9} {:>6}",
        "kind", "opened", "closed", "refused", "lived", "deadline", ">1s late", "never"
    );
    for (kind, t) in Kind::ALL.iter().zip(kinds) {
        if !chosen.contains(kind) {
            continue;
        }
        let (deadline, limit) = kind.deadline(head_deadline);
        let unit = if deadline.is_zero() { "ms" } else { "s" };
        out.push_str(&format!(
            "\n    {:<13} {:>7} {:>7} {:>7}  {:<27} {:<30} {:>9} {:>6}",
            kind.name(),
            t.opened,
            t.closed,
            t.connect_failed,
            probe::spread_text(&t.lifetimes, unit),
            deadline_text(deadline, limit),
            t.late,
            t.never_closed
        ));
        if *kind == Kind::BigHead {
            out.push_str(&format!(
                "; answers: {} × 431, {} other, {} closed without one",
                t.answered_431, t.answered_other, t.unanswered
            ));
        }
        if let Some(e) = &t.first_error {
            out.push_str(&format!("; first connect error: {e}"));
        }
    }
    out
}

/// Like `first_byte_timeout 10 s`.
fn deadline_text(deadline: Duration, limit: &str) -> String {
    if deadline.is_zero() {
        return limit.to_string();
    }
    format!("{limit} {:.1} s", deadline.as_secs_f64())
}

/// Every attacker, `n` of each kind chosen; their first connections spread over `RAMP`. The
/// tallies are by kind, in the order of `Kind::ALL`.
async fn attack(
    chosen: Vec<Kind>,
    addr: SocketAddr,
    n: usize,
    head_deadline: Duration,
    stop_opening: Instant,
    held: Arc<Held>,
) -> Vec<KindTally> {
    let start = Instant::now();
    let total = (chosen.len() * n) as u32;
    let mut slots: Vec<(usize, tokio::task::JoinHandle<KindTally>)> = Vec::new();
    for i in 0..total {
        let kind = chosen[i as usize % chosen.len()];
        let first = start + RAMP * i / total;
        let held = held.clone();
        let slot = attacker(kind, addr, first, stop_opening, head_deadline, held);
        slots.push((kind as usize, tokio::spawn(slot)));
    }
    let mut kinds: Vec<KindTally> = (0..KINDS).map(|_| KindTally::new()).collect();
    for (kind, slot) in slots {
        match slot.await {
            Ok(tally) => kinds[kind].merge(&tally),
            Err(e) => {
                kinds[kind]
                    .first_error
                    .get_or_insert(format!("attacker panicked: {e}"));
            }
        }
    }
    kinds
}

/// One attacker slot: connects, plays its kind until the gateway closes it, and again, until
/// `stop_opening`.
async fn attacker(
    kind: Kind,
    addr: SocketAddr,
    first: Instant,
    stop_opening: Instant,
    head_deadline: Duration,
    held: Arc<Held>,
) -> KindTally {
    let mut tally = KindTally::new();
    let (deadline, _) = kind.deadline(head_deadline);
    tokio::time::sleep_until(first.into()).await;
    while Instant::now() < stop_opening {
        let stream = match probe::connect_attacker(addr).await {
            Ok(stream) => stream,
            Err(e) => {
                tally.connect_failed += 1;
                tally.first_error.get_or_insert(e.to_string());
                // Don't spin while the gateway refuses.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let opened = Instant::now();
        tally.opened += 1;
        held.opened(kind as usize);
        let give_up = opened + deadline + GRACE;
        let outcome = tokio::time::timeout_at(give_up.into(), play(kind, stream)).await;
        held.closed(kind as usize);
        let Ok(answer) = outcome else {
            tally.never_closed += 1;
            continue;
        };
        let lived = opened.elapsed();
        tally.closed += 1;
        probe::record(&mut tally.lifetimes, lived);
        tally.late += u64::from(lived > deadline + LATE);
        if kind == Kind::BigHead {
            match answer {
                Some(431) => tally.answered_431 += 1,
                Some(_) => tally.answered_other += 1,
                None => tally.unanswered += 1,
            }
        }
    }
    tally
}

/// Plays one connection of `kind` until the gateway closes it (a read finds the end or an
/// error); returns the status of what the gateway answered, if anything.
async fn play(kind: Kind, stream: TcpStream) -> Option<u16> {
    let (mut rd, mut wr) = stream.into_split();
    let writing = async move {
        // A failed write means the gateway closed: the read below sees that too.
        let _ = match kind {
            Kind::Silent => Ok(()),
            Kind::Slowloris => drip(&mut wr, HEAD_START, DRIP_HEADER).await,
            Kind::PrefaceDrip => drip(&mut wr, b"", PREFACE).await,
            Kind::BigHead => wr.write_all(big_head()).await,
        };
        // Keep the write half open: dropping it would send a FIN.
        std::future::pending::<()>().await;
        drop(wr);
    };
    let reading = async move {
        let mut buf = vec![0u8; 4096];
        let mut head = Vec::new();
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) if head.len() < 12 => head.extend_from_slice(&buf[..n]),
                Ok(_) => {}
            }
        }
        head
    };
    let head = tokio::select! {
        head = reading => head,
        () = writing => unreachable!("the writer never ends"),
    };
    // `HTTP/1.1 431 ...`
    std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()
}

/// Writes `first` at once, then `bytes` one a second, then `a` one a second for ever; returns
/// at the first failed write.
async fn drip(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    first: &[u8],
    bytes: &[u8],
) -> std::io::Result<()> {
    if !first.is_empty() {
        wr.write_all(first).await?;
        tokio::time::sleep(DRIP_EVERY).await;
    }
    for i in 0.. {
        let byte = bytes.get(i).copied().unwrap_or(b'a');
        wr.write_all(&[byte]).await?;
        tokio::time::sleep(DRIP_EVERY).await;
    }
    Ok(())
}

/// Legitimate requests on new connections: `per_s` a second, each on a connection of its own,
/// timed from when it was due (the connect included).
async fn new_connections(target: &Target, per_s: f64, timing: Timing) -> Result<Tally> {
    let window = timing.window_from_now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_s));
    let mut requests = Vec::new();
    loop {
        let due = tick.tick().await.into_std();
        if due >= window.end {
            break;
        }
        let target = target.clone();
        requests.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            let result = attempt(&target, &mut None).await;
            if window.contains(due) {
                tally.record(&result, due.elapsed());
            }
            tally
        }));
    }
    join_tallies(requests).await
}

/// Prints the connections held, by kind, once a second while the attack lasts.
fn spawn_held_progress(
    chosen: Vec<Kind>,
    held: Arc<Held>,
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
            let counts: Vec<String> = chosen
                .iter()
                .map(|k| {
                    let open = held.open[*k as usize].load(Ordering::Relaxed);
                    format!("{} {open}", k.name())
                })
                .collect();
            eprintln!("  hostile: {second:>3} s held: {}", counts.join(", "));
        }
    })
}
