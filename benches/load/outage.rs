//! `outage`: one of three endpoints fails under load, and outlier detection and retries should
//! hide it. Issue 14's goal: "Under load, one of three endpoints is SIGKILLed, SIGSTOPped, or
//! answers 503 to 30% of requests. Once ejected (within one `interval`), clients see an error
//! rate below 0.1%, and throughput is back within 10% of the healthy run."
//!
//! The `stable` subset has three endpoints that are processes of their own, so that they can
//! really be SIGKILLed and SIGSTOPped: this bench binary again, started with the hidden first
//! argument `--serve-endpoint` (see [`serve_endpoint`]). Each serves HTTP/1.1 on one thread
//! like the bench's stable upstream (200, a body that starts with `stable`, `--body-size`
//! bytes); with `--flaky` it answers 503 to requests 1 to 3 of every 10. An endpoint exits when
//! the bench closes its stdin or dies, and the bench kills them after each run.
//!
//! The weighted rule sends everything to `stable` here (100/0), so every request meets the
//! failing endpoint's share; `canary` (the bench's own upstream) only serves the readiness
//! check's `x-canary: always`. The service gets `outlier_detection: { consecutive_5xx_errors: 5,
//! consecutive_gateway_errors: 3, interval: 1s, base_ejection_time: 30s, max_ejection_percent:
//! 50 }`; the rule gets `retries: { attempts: 2, per_try_timeout: 250ms, retry_on:
//! "connect-failure,refused-stream,gateway-error,reset,retriable-status-codes" }` and `timeout:
//! 3s`.
//!
//! Four runs, each on a fresh gateway with fresh endpoint processes, each `max`'s closed loop
//! (`--connections` keep-alive connections):
//!
//! * `healthy`: no fault; the baseline.
//! * `sigkill`: the third endpoint gets SIGKILL `--outage-at` into the measured part (default:
//!   20% of `--duration`, so 2 s of the default 10 s).
//! * `sigstop`: the same with SIGSTOP; SIGCONT after the run.
//! * `503`: the third endpoint is the flaky kind from the start.
//!
//! Answers are also counted per 100 ms of the measured part, which gives when errors stop. Each
//! run has two rows: the whole measured part, and `after`, from 1 s past `--outage-at` (or half
//! of what is left, when the run is shorter) to the end, the same span in every run. The goals
//! are checked on `after`: errors below 0.1% of the requests, and a throughput at least 90% of
//! the healthy run's in the same span. The notes add when the gateway logged each ejection (its
//! log is read every 10 ms), the last error, who had the CPUs (the gateway, and the clients,
//! which share theirs with the endpoints), the gateway's `istio_requests_total` by response code
//! and flags, and its retry and ejection counters (`splitgate_upstream_retr*`,
//! `splitgate_outlier_*`) when it has them.

use super::probe::{met, Sched, Watch, Watched};
use super::{
    attempt, call, get_request, open_senders, spawn_progress, upstream_body, Answer, Args, Gateway,
    Live, Proto, Report, Row, Sender, Tally, Target, Tweaks, UpstreamAddrs, Window,
};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// The hidden first argument that makes this binary an endpoint.
pub const SERVE_ENDPOINT: &str = "--serve-endpoint";
/// The service's policy (YAML flow, inside `policy: { … }`).
const POLICY: &str =
    "outlier_detection: { consecutive_5xx_errors: 5, consecutive_gateway_errors: 3, \
                      interval: 1s, base_ejection_time: 30s, max_ejection_percent: 50 }";
/// The weighted rule's retries (YAML flow).
const RETRIES: &str = "{ attempts: 2, per_try_timeout: 250ms, retry_on: \"connect-failure,\
                       refused-stream,gateway-error,reset,retriable-status-codes\" }";
/// The weighted rule's timeout, over all tries.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(3);
/// The `after` span starts this long after the fault (at most half of what is left).
const SETTLE: Duration = Duration::from_secs(1);
/// The timeline's resolution.
const BUCKET: Duration = Duration::from_millis(100);
/// How often the gateway's log is read for ejections.
const LOG_POLL: Duration = Duration::from_millis(10);
/// How long an endpoint process gets to print its address.
const ENDPOINT_START: Duration = Duration::from_secs(10);
/// The endpoint that fails: the third.
const FAILING: usize = 2;
/// The goals on the `after` span.
const GOAL_ERROR_PERCENT: f64 = 0.1;
const GOAL_RPS_SHARE: f64 = 0.9;

/// What goes wrong in a run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    None,
    Kill,
    Stop,
    Flaky,
}

impl Fault {
    const RUNS: [Fault; 4] = [Fault::None, Fault::Kill, Fault::Stop, Fault::Flaky];

    fn name(self) -> &'static str {
        match self {
            Fault::None => "healthy",
            Fault::Kill => "sigkill",
            Fault::Stop => "sigstop",
            Fault::Flaky => "503",
        }
    }
}

/// What one run came to.
struct Outcome {
    fault: Fault,
    /// The whole measured part, and the `after` span.
    whole: Tally,
    after: Tally,
    /// Answers per [`BUCKET`] of the measured part.
    ok: Vec<u64>,
    errors: Vec<u64>,
    slowest_us: Vec<u64>,
    /// The fault, from the start of the measured part (the flaky endpoint: the warm-up's start).
    fault_at: f64,
    /// The `after` span, from the start of the measured part.
    after_from: f64,
    after_seconds: f64,
    /// When the gateway's log showed each ejection, from the start of the measured part.
    ejections: Vec<f64>,
    /// `istio_requests_total` by `code flags`.
    requests_by_code: BTreeMap<String, u64>,
    /// The gateway's [`COUNTERS`] by name.
    counters: BTreeMap<String, u64>,
    /// Who had the CPUs.
    cpus: Watched,
    /// What the gateway logged, as a note.
    log_notes: Vec<String>,
}

impl Outcome {
    fn requests(t: &Tally) -> u64 {
        t.answered() + t.errors()
    }

    fn error_percent(t: &Tally) -> f64 {
        100.0 * t.errors() as f64 / Self::requests(t).max(1) as f64
    }

    /// The end of the last 100 ms with an error, from the start of the measured part.
    fn last_error(&self) -> Option<f64> {
        let last = self.errors.iter().rposition(|&n| n > 0)?;
        Some((last + 1) as f64 * BUCKET.as_secs_f64())
    }

    /// Errors in the measured part before the fault, from it to `after`, and after.
    fn errors_by_phase(&self) -> [u64; 3] {
        let mut phases = [0; 3];
        let bucket = BUCKET.as_secs_f64();
        for (i, &n) in self.errors.iter().enumerate() {
            let t = i as f64 * bucket;
            let phase = if t + bucket <= self.fault_at {
                0
            } else if t < self.after_from {
                1
            } else {
                2
            };
            phases[phase] += n;
        }
        phases
    }
}

pub async fn run(args: &Args, upstreams: &UpstreamAddrs, report: &mut Report) -> Result<()> {
    let at = args.outage_at();
    let settle = SETTLE.min(args.duration.saturating_sub(at) / 2);
    let mut healthy: Option<(f64, f64)> = None;
    for fault in Fault::RUNS {
        let outcome = run_one(args, upstreams, fault, at, settle).await?;
        let whole_rps = outcome.whole.answered() as f64 / args.duration.as_secs_f64();
        let after_rps = outcome.after.answered() as f64 / outcome.after_seconds.max(1e-9);
        let (base_whole, base_after) = *healthy.get_or_insert((whole_rps, after_rps));
        push(
            report,
            args,
            &outcome,
            [whole_rps / base_whole, after_rps / base_after],
        );
    }
    Ok(())
}

/// The rows and the note of one run; `share` is its throughput over the healthy run's, whole
/// and after.
fn push(report: &mut Report, args: &Args, o: &Outcome, share: [f64; 2]) {
    let name = o.fault.name();
    let since_fault = |t: f64| t - o.fault_at;
    let phases = o.errors_by_phase();
    let after_percent = Outcome::error_percent(&o.after);
    let goals_met = after_percent < GOAL_ERROR_PERCENT && share[1] >= GOAL_RPS_SHARE;
    let common = json!({
        "fault": name,
        "fault_at_s": o.fault_at,
        "after_from_s": o.after_from,
        "ejections_logged_s": o.ejections,
        "last_error_s": o.last_error(),
        "errors_before_fault": phases[0],
        "errors_fault_to_after": phases[1],
        "errors_after": phases[2],
        "cpu": o.cpus.json(),
        "istio_requests_total": o.requests_by_code,
        "gateway_counters": o.counters,
    });
    let mut whole = json!({
        "span": "whole",
        "requests": Outcome::requests(&o.whole),
        "error_percent": Outcome::error_percent(&o.whole),
        "rps_vs_healthy": share[0],
        "timeline": {
            "bucket_ms": BUCKET.as_millis() as u64,
            "ok": o.ok, "errors": o.errors, "slowest_us": o.slowest_us,
        },
    });
    let mut after = json!({
        "span": "after",
        "requests": Outcome::requests(&o.after),
        "error_percent": after_percent,
        "rps_vs_healthy": share[1],
        "goals_met": goals_met,
    });
    for extra in [&mut whole, &mut after] {
        if let (Some(e), Some(c)) = (extra.as_object_mut(), common.as_object()) {
            e.extend(c.clone());
        }
    }
    let seconds = |t: Option<f64>| match t {
        Some(t) if t.is_finite() => format!("{t:+.2} s"),
        Some(_) => "? s".to_string(),
        None => "-".to_string(),
    };
    let fault_text = match o.fault {
        Fault::None => "no fault".to_string(),
        Fault::Kill | Fault::Stop => format!(
            "{} at {:.2} s",
            if o.fault == Fault::Kill {
                "SIGKILL"
            } else {
                "SIGSTOP"
            },
            o.fault_at
        ),
        Fault::Flaky => "one endpoint 30% 503 from the start".to_string(),
    };
    let at = |t: f64| seconds(Some(since_fault(t)));
    let ejections = match o.ejections[..] {
        [] => "no ejection logged".to_string(),
        [one] => format!("1 ejection logged, at {} after the fault", at(one)),
        [first, .., last] => format!(
            "{} ejections logged, from {} to {} after the fault",
            o.ejections.len(),
            at(first),
            at(last)
        ),
    };
    let codes: Vec<String> = o
        .requests_by_code
        .iter()
        .map(|(k, n)| format!("{k} × {n}"))
        .collect();
    let counters: Vec<String> = o.counters.iter().map(|(k, n)| format!("{k} {n}")).collect();
    report.notes.push(format!(
        "outage {name}: {fault_text}; {} requests, {} errors ({:.3}%; before the fault {}, fault to \
         after {}, after {}), throughput {:.1}% of healthy; {ejections}; last error {}; from \
         {:.2} s on: {} errors in {} requests ({after_percent:.3}%, goal < {GOAL_ERROR_PERCENT}%), \
         {:.1}% of healthy's rps (goal ≥ {:.0}%): {}; gateway CPU {:.2} of a core, waited for \
         one {:.2}; the clients {:.2}, waited {:.2}; istio_requests_total {}; {}",
        Outcome::requests(&o.whole),
        o.whole.errors(),
        Outcome::error_percent(&o.whole),
        phases[0],
        phases[1],
        phases[2],
        100.0 * share[0],
        seconds(o.last_error().map(since_fault)),
        o.after_from,
        o.after.errors(),
        Outcome::requests(&o.after),
        100.0 * share[1],
        100.0 * GOAL_RPS_SHARE,
        met(goals_met),
        o.cpus.gateway_cpu,
        o.cpus.gateway_waited,
        o.cpus.own_cpu,
        o.cpus.own_waited,
        codes.join(", "),
        if counters.is_empty() {
            "no retry or ejection counters".to_string()
        } else {
            counters.join(", ")
        },
    ));
    report.notes.extend(o.log_notes.iter().cloned());
    let after_span = Duration::from_secs_f64(o.after_seconds.max(1e-9));
    report.push(
        Row::from_tally("outage", name, &o.whole, args.duration, whole),
        &o.whole,
    );
    let mut row = Row::from_tally(
        "outage",
        &format!("{name}, after"),
        &o.after,
        after_span,
        after,
    );
    if Outcome::requests(&o.after) == 0 {
        // No request ended in the span: in the smoke pass's 300 ms, a SIGSTOP's per-try
        // timeout covers all of it. The note and the goal say so; this is no broken run.
        row.answered = None;
    }
    report.push(row, &o.after);
}

async fn run_one(
    args: &Args,
    upstreams: &UpstreamAddrs,
    fault: Fault,
    at: Duration,
    settle: Duration,
) -> Result<Outcome> {
    let endpoints = Endpoints::start(args.body_size, fault == Fault::Flaky)?;
    let tweaks = Tweaks {
        stable_endpoints: Some(endpoints.addrs()),
        service_policy: Some(POLICY.to_string()),
        retries: Some(RETRIES.to_string()),
        route_timeout: Some(ROUTE_TIMEOUT),
        primary_weights: Some((100, 0)),
        ..Tweaks::default()
    };
    let gw = Gateway::start(args, upstreams, &tweaks).await?;
    let target = Target::gateway(gw.listen, Proto::H1);
    let log = gw.dir.join("gateway.log");
    let stop_watch = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch_ejections(log.clone(), stop_watch.clone()));
    let watch = Watch::start(gw.pid)?;

    let senders = open_senders(&target, args.connections, args.connections).await?;
    let load_start = Instant::now();
    let window = args.timing().window_from_now();
    let fault_time = window.start + at;
    let after_from = (fault_time + settle).min(window.end);
    let timeline = Arc::new(Timeline::new(window));
    let live = Arc::new(Live::default());
    let label = format!("outage {}", fault.name());
    let progress = spawn_progress(label, live.clone(), window);
    let workers = senders
        .into_iter()
        .map(|sender| {
            tokio::spawn(worker(
                target.clone(),
                sender,
                window,
                after_from,
                timeline.clone(),
                live.clone(),
            ))
        })
        .collect();

    let mut faulted = None;
    let signal = match fault {
        Fault::Kill => Some("-KILL"),
        Fault::Stop => Some("-STOP"),
        Fault::None | Fault::Flaky => None,
    };
    let mut signal_error = None;
    if let Some(signal) = signal {
        tokio::time::sleep_until(fault_time.into()).await;
        faulted = Some(Instant::now());
        signal_error = endpoints.signal(FAILING, signal).err();
    }
    let tallies = join_workers(workers).await;
    progress.abort();
    if fault == Fault::Stop {
        endpoints.signal(FAILING, "-CONT")?;
    }
    if let Some(e) = signal_error {
        return Err(e);
    }
    let [whole, after] = tallies?;
    let cpus = watch.stop(Sched::default())?;
    stop_watch.store(true, Ordering::Relaxed);
    let logged = watcher.await.context("the log watcher panicked")?;
    let seen = ejections_in(&log);
    gw.check_alive()?;
    let [requests_by_code, counters] = scrape(&gw).await?;
    let mut log = Report::default();
    gw.note_log(&mut log);

    // Times from the start of the measured part.
    let from_start = |t: Instant| {
        if t >= window.start {
            (t - window.start).as_secs_f64()
        } else {
            -(window.start - t).as_secs_f64()
        }
    };
    // An ejection the watcher missed (logged after it stopped) has no time.
    let mut ejections: Vec<f64> = logged.iter().map(|&t| from_start(t)).collect();
    ejections.resize(seen.max(ejections.len()), f64::NAN);
    let fault_at = match (fault, faulted) {
        (_, Some(t)) => from_start(t),
        (Fault::Flaky, None) => from_start(load_start),
        _ => from_start(fault_time),
    };
    let (ok, errors, slowest_us) = timeline.counts();
    Ok(Outcome {
        fault,
        whole,
        after,
        ok,
        errors,
        slowest_us,
        fault_at,
        after_from: from_start(after_from),
        after_seconds: (window.end - after_from).as_secs_f64(),
        ejections,
        requests_by_code,
        counters,
        cpus,
        log_notes: log.notes,
    })
}

/// One closed-loop connection: each answer counts in the whole measured part, in the `after`
/// span when it came after `after_from`, and in the timeline.
async fn worker(
    target: Target,
    sender: Sender,
    window: Window,
    after_from: Instant,
    timeline: Arc<Timeline>,
    live: Arc<Live>,
) -> [Tally; 2] {
    let mut tallies = [Tally::new(), Tally::new()];
    let mut slot = Some(sender);
    loop {
        let sent = Instant::now();
        if sent >= window.end {
            break;
        }
        let result = attempt(&target, &mut slot).await;
        let done = Instant::now();
        if window.contains(done) {
            let latency = done - sent;
            tallies[0].record(&result, latency);
            if done >= after_from {
                tallies[1].record(&result, latency);
            }
            live.count(&result, latency);
            timeline.record(done, matches!(result, Ok(Answer::Ok(_))), latency);
        }
    }
    tallies
}

/// Answers per [`BUCKET`] of a measured part.
struct Timeline {
    start: Instant,
    ok: Vec<AtomicU64>,
    errors: Vec<AtomicU64>,
    slowest_us: Vec<AtomicU64>,
}

impl Timeline {
    fn new(window: Window) -> Timeline {
        let n = (window.end - window.start)
            .as_nanos()
            .div_ceil(BUCKET.as_nanos())
            .max(1) as usize;
        let zeros = || (0..n).map(|_| AtomicU64::new(0)).collect();
        Timeline {
            start: window.start,
            ok: zeros(),
            errors: zeros(),
            slowest_us: zeros(),
        }
    }

    fn record(&self, done: Instant, ok: bool, latency: Duration) {
        let i =
            (done.saturating_duration_since(self.start).as_nanos() / BUCKET.as_nanos()) as usize;
        let i = i.min(self.ok.len() - 1);
        let counter = if ok { &self.ok[i] } else { &self.errors[i] };
        counter.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.slowest_us[i].fetch_max(us, Ordering::Relaxed);
    }

    fn counts(&self) -> (Vec<u64>, Vec<u64>, Vec<u64>) {
        let read = |v: &[AtomicU64]| v.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        (read(&self.ok), read(&self.errors), read(&self.slowest_us))
    }
}

/// The line the gateway logs for each ejection.
const EJECTED: &str = "outlier detection: endpoint ejected";

/// How many ejections the gateway's log holds.
fn ejections_in(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .map(|text| text.matches(EJECTED).count())
        .unwrap_or(0)
}

/// Reads the gateway's log every [`LOG_POLL`] until `stop`, and keeps when each ejection
/// showed up.
async fn watch_ejections(log: PathBuf, stop: Arc<AtomicBool>) -> Vec<Instant> {
    let mut seen = Vec::new();
    let mut tick = tokio::time::interval(LOG_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let count = ejections_in(&log);
        while seen.len() < count {
            seen.push(Instant::now());
        }
    }
    seen
}

/// Waits for every worker and adds up their tallies.
async fn join_workers(workers: Vec<tokio::task::JoinHandle<[Tally; 2]>>) -> Result<[Tally; 2]> {
    let mut total = [Tally::new(), Tally::new()];
    for worker in workers {
        let got = worker.await.context("an outage client panicked")?;
        for (sum, t) in total.iter_mut().zip(&got) {
            sum.merge(t);
        }
    }
    Ok(total)
}

/// Counters of the gateway's own on retries and ejections, by the start of their names (those
/// it has: none is required).
const COUNTERS: [&str; 2] = ["splitgate_upstream_retr", "splitgate_outlier_"];

/// `istio_requests_total` summed by response code and flags, like `503 URX`, and the
/// [`COUNTERS`] summed by name.
async fn scrape(gw: &Gateway) -> Result<[BTreeMap<String, u64>; 2]> {
    let req = get_request(gw.metrics, "/metrics", &[])?;
    let (status, body) = call(&mut None, gw.metrics, req).await?;
    if status != StatusCode::OK {
        bail!("the metrics endpoint answered {status}");
    }
    let label = |line: &str, name: &str| -> Option<String> {
        let from = line.find(&format!("{name}=\""))? + name.len() + 2;
        let len = line[from..].find('"')?;
        Some(line[from..from + len].to_string())
    };
    let value = |line: &str| {
        line.split_whitespace()
            .last()
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| anyhow!("unreadable metrics line {line:?}"))
    };
    let mut by_code = BTreeMap::new();
    let mut counters = BTreeMap::new();
    for line in String::from_utf8_lossy(&body).lines() {
        if COUNTERS.iter().any(|c| line.starts_with(c)) {
            let name = line.split(['{', ' ']).next().unwrap_or(line);
            *counters.entry(name.to_string()).or_default() += value(line)? as u64;
            continue;
        }
        if !line.starts_with("istio_requests_total{") {
            continue;
        }
        let (Some(code), Some(flags)) =
            (label(line, "response_code"), label(line, "response_flags"))
        else {
            continue;
        };
        *by_code.entry(format!("{code} {flags}")).or_default() += value(line)? as u64;
    }
    Ok([by_code, counters])
}

// ---------------------------------------------------------------------------------------------
// The endpoint processes

/// Three endpoint processes, killed on drop.
struct Endpoints {
    children: Vec<Child>,
    addrs: Vec<SocketAddr>,
}

impl Drop for Endpoints {
    fn drop(&mut self) {
        for child in &mut self.children {
            // SIGKILL ends a stopped process too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Endpoints {
    /// Starts three endpoints; the last one answers 503 to 30% of its requests when `flaky`.
    fn start(body_size: usize, flaky: bool) -> Result<Endpoints> {
        let exe = std::env::current_exe().context("finding this bench's binary")?;
        let mut endpoints = Endpoints {
            children: Vec::new(),
            addrs: Vec::new(),
        };
        for k in 0..3 {
            let mut cmd = Command::new(&exe);
            cmd.args([SERVE_ENDPOINT, "--body-size", &body_size.to_string()]);
            if flaky && k == FAILING {
                cmd.arg("--flaky");
            }
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting {} {SERVE_ENDPOINT}", exe.display()))?;
            let stdout = child.stdout.take();
            endpoints.children.push(child);
            let stdout = stdout.context("no stdout from an endpoint")?;
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut line = String::new();
                let read = BufReader::new(stdout).read_line(&mut line);
                let _ = tx.send(read.map(|_| line));
            });
            let line = rx
                .recv_timeout(ENDPOINT_START)
                .map_err(|_| anyhow!("endpoint {k} printed no address"))?
                .context("reading an endpoint's address")?;
            let addr: SocketAddr = line
                .trim()
                .parse()
                .with_context(|| format!("endpoint {k} printed {line:?}, not an address"))?;
            endpoints.addrs.push(addr);
        }
        eprintln!(
            "outage: endpoints {:?} (pids {:?}){}",
            endpoints.addrs,
            endpoints.children.iter().map(Child::id).collect::<Vec<_>>(),
            if flaky { ", the last one flaky" } else { "" }
        );
        Ok(endpoints)
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    /// Sends `signal` (like `-STOP`) to endpoint `k`.
    fn signal(&self, k: usize, signal: &str) -> Result<()> {
        let pid = self.children[k].id().to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill {signal} {pid} failed ({status})");
        }
        Ok(())
    }
}

/// The hidden mode `--serve-endpoint [--body-size N] [--flaky]` that `main` hands over to before
/// parsing anything else: an HTTP/1.1 server on a free loopback port, on one thread, that
/// prints its address on stdout and answers like the bench's stable upstream (with `--flaky`,
/// 503 to requests 1 to 3 of every 10). It ends when its stdin closes or the bench dies.
pub fn serve_endpoint(args: &[String]) -> ExitCode {
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load {SERVE_ENDPOINT}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &[String]) -> Result<()> {
    let mut body_size = 13;
    let mut flaky = false;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--body-size" => {
                body_size = rest
                    .next()
                    .context("--body-size needs a value")?
                    .parse()
                    .context("--body-size")?;
            }
            "--flaky" => flaky = true,
            other => bail!("unknown argument {other:?}"),
        }
    }
    die_with_parent();
    // The bench holds our stdin: its end means the bench is gone.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the endpoint's runtime")?;
    runtime.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the endpoint")?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", listener.local_addr()?)?;
        out.flush()?;
        drop(out);
        serve_on(listener, upstream_body("stable", body_size), flaky).await;
        Ok(())
    })
}

/// Asks the kernel for SIGKILL when the bench (the thread that started this process, its main
/// thread) ends, so that even a stopped endpoint does not outlive a bench that was killed.
fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    }
}

async fn serve_on(listener: TcpListener, body: Bytes, flaky: bool) {
    let count = Arc::new(AtomicU64::new(0));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (body, count) = (body.clone(), count.clone());
        let service = hyper::service::service_fn(move |_req| {
            let n = count.fetch_add(1, Ordering::Relaxed);
            let resp = if flaky && n % 10 < 3 {
                let mut r = Response::new(Full::new(Bytes::from_static(b"flaky\n")));
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                r
            } else {
                Response::new(Full::new(body.clone()))
            };
            async move { Ok::<_, Infallible>(resp) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
