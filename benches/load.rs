//! Load bench: drives a real `splitgate` process with HTTP traffic on loopback and measures
//! throughput, latency, the split the clients observe, errors, and the gateway's memory.
//!
//! The bench starts everything it needs itself:
//!
//! * two upstreams, `stable` and `canary`: hyper HTTP/1.1 servers on their own tokio runtime
//!   (`--upstream-threads`), whose 200 answers start with their name (padded to `--body-size`
//!   bytes), so every answer tells which subset served it;
//! * the gateway: the `splitgate` binary cargo built (or `--gateway-bin`) as a child process,
//!   `run --concurrency 1` (`--gateway-threads`), optionally under `taskset` (`--pin-gateway`), on
//!   a generated config whose route `bench` sends `x-canary: always` to canary and everything else
//!   through the weighted rule `primary`, 90/10;
//! * the load generator: hyper's low-level client connections (no pool) on a multi-thread tokio
//!   runtime (`--client-threads`), every request with `Host: bench.example.com`.
//!
//! Scenarios (`--scenario`, comma-separated; the default is `max,open,h2,flip`; `all` adds `idle`,
//! `hostile`, `h2flood`, `churn`, `drain`, `retry`, `outage` and `reload`):
//!
//! * `max`: closed loop. `--connections` HTTP/1.1 keep-alive connections each send their next
//!   request as soon as the previous answer is read. First straight to the stable upstream
//!   (`direct`: the ceiling that the client and the upstream allow on this machine), then through
//!   the gateway.
//! * `open`: open loop at a fixed `--rate` (default: half of the gateway's `max` rate of this run,
//!   or 10000/s). A pacer thread hands out due times on a fixed schedule, round robin over the
//!   connections, and each latency counts from its due time, not from when the request could be
//!   sent: a stall shows in the latency of every request it held up (no coordinated omission).
//!   It runs direct and through the gateway at the same rate; the `added` row is the difference.
//! * `h2`: HTTP/2 with prior knowledge (h2c), closed loop, `--streams` requests in flight in total
//!   over `--h2-connections` connections.
//! * `flip`: `max` through the gateway while the weights of `primary` flip between 90/10 and 10/90
//!   `--flip-rate` times a second through the admin API, one call at a time. The goal is zero
//!   errors; the split should come out near 50/50. The weights are 90/10 again afterwards.
//!   `--rss-every 10s` reads the gateway's RSS that often and reports it after the first 20% of
//!   the run and at the end, and the growth (a soak: `--duration 30m --flip-rate 1`; goal: at
//!   most +1%).
//! * `idle`: on a fresh gateway, a few seconds at 1000 requests/s, then `--idle-connections`
//!   keep-alive connections that each send one request and stay open for `--idle-hold` (1 s).
//!   Reports the gateway's RSS (fresh, under load, with the idle connections), the KiB each idle
//!   connection costs, and how many of them the gateway closed meanwhile.
//! * `hostile`: on a fresh gateway, for `--hostile-duration` (20 s), `--hostile-connections` (400)
//!   connections of each of four kinds at once, each reconnecting when the gateway closes it: silent
//!   (connects, sends nothing), slowloris (a request head, then one header byte a second), preface
//!   drip (the HTTP/2 preface, one byte a second) and big head (a 200 KB head as fast as it goes).
//!   Meanwhile `--rate` (1000/s) legitimate requests over a few keep-alive connections, and a few new
//!   connections a second. Reports the legitimate requests, the gateway's peak RSS (sampled every
//!   100 ms), how long the gateway took to close each kind against the deadline that applies
//!   (`--hostile-deadline`, written into its config as `first_byte_timeout` and
//!   `request_headers_timeout`), and its `splitgate_downstream_connections_closed_total` lines.
//! * `h2flood`: on a fresh gateway each, for `--flood-duration` (10 s), `--flood-connections` h2c
//!   connections of raw frames: rapid reset (HEADERS then RST_STREAM, as fast as they go), the
//!   same with the resets 1 ms behind (late reset: the gateway has accepted the streams), and a
//!   CONTINUATION flood (a HEADERS frame without END_HEADERS, then CONTINUATION frames of junk);
//!   each reconnects when closed. Meanwhile legitimate HTTP/1.1 requests at a modest fixed rate.
//!   Reports the gateway's CPU, how fast it closed the attacking connections, what reached the
//!   upstreams (their requests and peak connections, against `max_connections_per_endpoint`,
//!   set to 64 here), and TIME_WAIT sockets before and after.
//! * `churn`: on a fresh gateway in Kubernetes mode (its objects on the tests' fake API server),
//!   `max` without churn, with the Service's EndpointSlice rewritten `--churn-rate` (100) times a
//!   second, and without churn again; each change takes one of `--churn-endpoints` (4) stable and
//!   as many canary endpoints out or puts it back. Reports the failed requests (goal 0) and the
//!   throughput with churn against the mean without (goal ≥ 95%). See `benches/load/churn.rs`.
//! * `drain`: on a fresh gateway, 32 keep-alive clients and 4 that open a new connection for
//!   every request; SIGTERM two seconds in. Counts the failed requests and refused connections
//!   before the signal and during `drain.delay` (`--drain-delay`, 5 s). See `benches/load/drain.rs`.
//! * `retry`: on fresh gateways whose `stable` subset has three endpoints, one of them answering
//!   503 to 30% of its requests: `max` with Istio's default retries, then with `retries: {
//!   attempts: 0 }`. Reports the non-2xx share clients see (goal with retries: below 0.1%).
//! * `outage`: on fresh gateways with outlier detection and retries, whose `stable` subset (all
//!   the load here) has three endpoints that are processes of their own: `max` healthy, then with
//!   one endpoint SIGKILLed, SIGSTOPped (both at `--outage-at`, default 20% of `--duration`), or
//!   answering 503 to 30% of its requests. Reports errors and throughput against the healthy
//!   run, from 1 s after the fault on (goals: errors below 0.1%, at least 90% of the healthy
//!   throughput), and when the ejections came. See `benches/load/outage.rs`.
//! * `reload`: on a fresh gateway with `--reload-rules` (1000) regex rules ahead of the weighted
//!   one, `open` at `--rate` (default 5000/s) without weight changes, then with
//!   `--reload-flip-rate` (100) a second, `--reload-rounds` (5) times interleaved. Reports how
//!   much the median latency grew and how long a change held the serving thread (goal: at most
//!   1 ms each), and the admin calls' latency. See `benches/load/reload.rs`.
//!
//! The attackers of `hostile` and `h2flood` stand for other machines. Here they share a core
//! with the legitimate clients and the upstreams, so they run on a thread and runtime of their
//! own at nice 19 and take only the CPU the measuring side leaves. Both scenarios print the goals
//! beside the figures, and who had the CPUs (the gateway's and this process's CPU, and how long
//! their threads waited for one), so that a busy machine is not read as a slow gateway.
//! `--hostile-kinds` runs some of the hostile kinds alone, to tell which one costs what.
//!
//! To set the gateway beside the proxy you run now, start that proxy on the bench's upstreams and
//! name it with `--peer NAME=ADDR` (repeatable): `max` and `open` then measure it too, after the
//! gateway, on the same upstreams and at the same rate, and `open` gives an `added` row for each.
//! `--upstreams STABLE,CANARY` uses two upstreams that already run (their answers must start with
//! `stable` and `canary`) instead of the bench's own, so the peer's config can name fixed ports;
//! `benches/peers/peers.sh -k open` does all of this for nginx and HAProxy.
//!
//! Every run has an unmeasured `--warmup` (1 s) before its `--duration` (10 s). Errors are
//! transport errors and non-2xx answers. Latencies are microseconds, recorded in HDR histograms
//! per task and merged at the end. Progress goes to stderr; the results go to stdout as a table
//! and to `--json` (default `target/load-bench.json`) with the parameters, the machine and the
//! date.
//!
//! ```sh
//! cargo bench --bench load                                    # max, open, h2, flip: about 70 s
//! cargo bench --bench load -- --duration 3s --scenario max,h2
//! cargo bench --bench load -- --scenario idle --idle-connections 10000
//! cargo bench --bench load -- --scenario hostile,h2flood --pin-gateway 0 --pin-client 1
//! cargo bench --bench load -- --pin-gateway 0 --pin-client 1  # the gateway alone on CPU 0
//! cargo bench --bench load -- --scenario churn --gateway-quota 50 --pin-gateway 0 --pin-client 1
//! cargo bench --bench load -- --scenario outage --pin-gateway 0 --pin-client 1
//! cargo bench --bench load -- --scenario reload --rate 5000 --pin-gateway 0 --pin-client 1
//! cargo bench --bench load -- --scenario flip --flip-rate 1 --duration 30m --rss-every 10s
//! cargo bench --bench load -- --scenario open --rate 20000 --pin-gateway 0 --pin-client 1 \
//!     --upstreams 127.0.0.1:28001,127.0.0.1:28002 --peer haproxy=127.0.0.1:28082
//! cargo bench --bench load -- --help
//! ```
//!
//! Run without `--bench` (which `cargo bench` always passes, and `cargo test --all-targets` does
//! not) it makes a quick smoke pass over every scenario with tiny settings and writes no JSON.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1 as client_h1, http2 as client_h2};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

// The edge and Kubernetes scenarios live beside this file, in `benches/load/`.
#[path = "load/churn.rs"]
mod churn;
#[path = "load/drain.rs"]
mod drain;
#[path = "load/outage.rs"]
mod outage;
#[path = "load/reload.rs"]
mod reload;
#[path = "load/retry.rs"]
mod retry;
// The fake Kubernetes API server of the tests.
#[path = "../tests/common/fake_kube.rs"]
mod fake_kube;
#[path = "load/h2flood.rs"]
mod h2flood;
#[path = "load/hostile.rs"]
mod hostile;
#[path = "load/probe.rs"]
mod probe;

/// The `Host` every load request carries.
const HOST_NAME: &str = "bench.example.com";
/// Highest latency the histograms hold, in µs; longer ones are recorded as this.
const LATENCY_MAX_US: u64 = 60_000_000;
/// How long the gateway gets to answer its first requests.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an open-loop run may take past its end to work off a backlog before the rest of
/// its due requests are counted as errors (`unsent`).
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// File descriptors wanted on top of the idle connections.
const FD_MARGIN: u64 = 512;
/// Idle connections set up at the same time (each sends one request).
const IDLE_SETUP_PARALLELISM: usize = 64;
/// The steady phase of `idle`.
const IDLE_RATE: f64 = 1000.0;
const IDLE_RATE_CONNECTIONS: usize = 16;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "load",
    bin_name = "cargo bench --bench load --",
    about = "Load bench for splitgate: upstreams, gateway and load generator on loopback",
    after_help = "Run it as `cargo bench --bench load -- [OPTIONS]`. See the top of benches/load.rs."
)]
struct Args {
    /// Measured time of each run, like `10s`, `500ms` or `1m`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured warm-up before each run.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Open-loop rate in requests/s [default: half of the gateway's `max` rps of this run, or
    /// 10000 without `max`; 1000 for hostile].
    #[arg(long)]
    rate: Option<u64>,
    /// HTTP/1.1 keep-alive connections of max, open and flip.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Size of the upstreams' answers in bytes (at least the subset's name).
    #[arg(long, default_value_t = 13)]
    body_size: usize,
    /// Scenarios to run, comma-separated; `all` is every one, idle included.
    #[arg(long, value_enum, value_delimiter = ',',
          default_values_t = [Scenario::Max, Scenario::Open, Scenario::H2, Scenario::Flip])]
    scenario: Vec<Scenario>,
    /// h2: requests in flight in total, spread over --h2-connections.
    #[arg(long, default_value_t = 64)]
    streams: usize,
    /// h2: HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    h2_connections: usize,
    /// flip: weight changes per second through the admin API (0: none).
    #[arg(long, default_value_t = 50.0)]
    flip_rate: f64,
    /// idle: keep-alive connections opened and left idle.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// idle: how long the idle connections stay open before the gateway's RSS is read.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    idle_hold: Duration,
    /// hostile: how long the attack lasts (the legitimate requests are measured throughout).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    hostile_duration: Duration,
    /// hostile: connections of each of the four kinds held at once.
    #[arg(long, default_value_t = 400)]
    hostile_connections: usize,
    /// hostile: the kinds of hostile connection, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',',
          default_values_t = hostile::Kind::ALL)]
    hostile_kinds: Vec<hostile::Kind>,
    /// hostile: the gateway's first_byte_timeout and request_headers_timeout (its defaults).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    hostile_deadline: Duration,
    /// hostile, h2flood: the address the attackers connect from (the legitimate clients use
    /// 127.0.0.1; give 127.0.0.1 to have both share one address, as behind one NAT).
    #[arg(long, default_value = "127.0.0.2")]
    attacker_source: std::net::IpAddr,
    /// h2flood: how long each attack lasts.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    flood_duration: Duration,
    /// h2flood: attacking connections at once.
    #[arg(long, default_value_t = 4)]
    flood_connections: usize,
    /// outage: when the fault comes, into the measured part [default: 20% of --duration].
    #[arg(long, value_parser = parse_duration)]
    outage_at: Option<Duration>,
    /// reload: regex rules ahead of the weighted rule.
    #[arg(long, default_value_t = 1000)]
    reload_rules: usize,
    /// reload: weight changes per second through the admin API in the second run.
    #[arg(long, default_value_t = 100.0)]
    reload_flip_rate: f64,
    /// reload: pairs of runs (without changes, then with), interleaved, so a stretch of machine
    /// noise lands in one run of a kind, not in a whole kind.
    #[arg(long, default_value_t = 5)]
    reload_rounds: usize,
    /// flip: read the gateway's RSS this often (like `10s`) and report its growth after the
    /// first 20% of the run (a soak: run it with a long --duration and --flip-rate 1).
    #[arg(long, value_parser = parse_duration)]
    rss_every: Option<Duration>,
    /// churn: EndpointSlice changes per second.
    #[arg(long, default_value_t = 100.0)]
    churn_rate: f64,
    /// churn: runs with churn, each between two without.
    #[arg(long, default_value_t = 2)]
    churn_rounds: usize,
    /// churn: endpoints of each subset (each an upstream on its own address).
    #[arg(long, default_value_t = 4)]
    churn_endpoints: usize,
    /// drain: the gateway's `drain.delay`.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain_delay: Duration,
    /// drain: keep-alive clients.
    #[arg(long, default_value_t = 32)]
    drain_clients: usize,
    /// drain: clients that open a new connection for every request.
    #[arg(long, default_value_t = 4)]
    drain_new: usize,
    /// Gateway worker threads (`splitgate run --concurrency`).
    #[arg(long, default_value_t = 1)]
    gateway_threads: usize,
    /// Run the gateway under `taskset -c CPU` (like `0` or `0-1`) when taskset exists.
    #[arg(long, value_name = "CPU")]
    pin_gateway: Option<String>,
    /// Cap the gateway at PERCENT of one CPU with a cgroup (v1 or v2; needs root), so that it
    /// and not the load generator is what limits throughput, as `peer-cpu.sh` does.
    #[arg(long, value_name = "PERCENT")]
    gateway_quota: Option<u32>,
    /// Pin this process (client and upstreams) with `taskset -a -p -c CPU` when taskset exists.
    #[arg(long, value_name = "CPU")]
    pin_client: Option<String>,
    /// Worker threads of the load generator [default: the CPUs this process may use].
    #[arg(long)]
    client_threads: Option<usize>,
    /// Worker threads of the two upstreams (one runtime for both).
    #[arg(long, default_value_t = 1)]
    upstream_threads: usize,
    /// Where the JSON report goes.
    #[arg(long, value_name = "FILE", default_value = "target/load-bench.json")]
    json: PathBuf,
    /// The splitgate binary to bench [default: the one cargo built for this bench].
    #[arg(long, value_name = "PATH")]
    gateway_bin: Option<PathBuf>,
    /// Use two upstreams that already run, like `127.0.0.1:28001,127.0.0.1:28002`, instead of
    /// starting its own: every answer's body must start with `stable` or `canary`.
    #[arg(long, value_name = "STABLE,CANARY", value_parser = parse_upstreams)]
    upstreams: Option<UpstreamAddrs>,
    /// Another proxy, already running and sending to the same upstreams, that `max` and `open`
    /// measure too, after the gateway and at the same rate, like `haproxy=127.0.0.1:28082`.
    /// Repeat it for more.
    #[arg(long, value_name = "NAME=ADDR", value_parser = parse_peer)]
    peer: Vec<Peer>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Scenario {
    Max,
    Open,
    H2,
    Flip,
    Idle,
    Hostile,
    H2flood,
    Churn,
    Drain,
    Retry,
    Outage,
    Reload,
    All,
}

impl Scenario {
    /// Whether it runs on the gateway started once for the whole run (the others start their
    /// own, fresh).
    fn shares_gateway(self) -> bool {
        matches!(
            self,
            Scenario::Max | Scenario::Open | Scenario::H2 | Scenario::Flip
        )
    }
}

impl Args {
    /// The tiny settings of the smoke pass that `cargo test --all-targets` makes.
    fn smoke() -> Args {
        Args::parse_from([
            "load",
            "--scenario=all",
            "--duration=300ms",
            "--warmup=100ms",
            "--connections=8",
            "--streams=8",
            "--h2-connections=2",
            "--rate=500",
            "--idle-connections=200",
            "--hostile-duration=2s",
            "--hostile-connections=8",
            "--hostile-deadline=1s",
            "--flood-duration=1s",
            "--flood-connections=2",
            "--churn-rounds=1",
            "--drain-delay=1s",
            "--reload-rounds=2",
        ])
    }

    /// The chosen scenarios, once each, in the order they run (`max` before `open`, whose
    /// default rate comes from it).
    fn scenarios(&self) -> Vec<Scenario> {
        let mut list = if self.scenario.contains(&Scenario::All) {
            vec![
                Scenario::Max,
                Scenario::Open,
                Scenario::H2,
                Scenario::Flip,
                Scenario::Idle,
                Scenario::Hostile,
                Scenario::H2flood,
                Scenario::Churn,
                Scenario::Drain,
                Scenario::Retry,
                Scenario::Outage,
                Scenario::Reload,
            ]
        } else {
            self.scenario.clone()
        };
        list.sort();
        list.dedup();
        list
    }

    /// Open files this process and the gateway need for the scenarios that hold many
    /// connections.
    fn fds_needed(&self, scenarios: &[Scenario]) -> Option<u64> {
        let mut need = None;
        if scenarios.contains(&Scenario::Idle) {
            need = Some(self.idle_connections as u64);
        }
        if scenarios.contains(&Scenario::Hostile) {
            let hostile = self.hostile_kinds().len() as u64 * self.hostile_connections as u64;
            need = need.max(Some(hostile));
        }
        need.map(|n| n + FD_MARGIN)
    }

    /// When `outage`'s fault comes, into the measured part.
    fn outage_at(&self) -> Duration {
        self.outage_at.unwrap_or(self.duration / 5)
    }

    /// The hostile kinds chosen, once each.
    fn hostile_kinds(&self) -> Vec<hostile::Kind> {
        let mut kinds = self.hostile_kinds.clone();
        kinds.sort();
        kinds.dedup();
        kinds
    }

    fn timing(&self) -> Timing {
        Timing {
            warmup: self.warmup,
            duration: self.duration,
        }
    }

    fn check(&self) -> Result<()> {
        if self.duration.is_zero() {
            bail!("--duration must be above 0");
        }
        if self.connections == 0 || self.streams == 0 || self.h2_connections == 0 {
            bail!("--connections, --streams and --h2-connections must be above 0");
        }
        if self.rate == Some(0) {
            bail!("--rate must be above 0");
        }
        if self.hostile_connections == 0 || self.flood_connections == 0 {
            bail!("--hostile-connections and --flood-connections must be above 0");
        }
        if self.hostile_duration.is_zero() || self.flood_duration.is_zero() {
            bail!("--hostile-duration and --flood-duration must be above 0");
        }
        if self.hostile_deadline < Duration::from_millis(1) {
            bail!("--hostile-deadline must be at least 1ms");
        }
        if !(self.flip_rate >= 0.0 && self.flip_rate.is_finite()) {
            bail!("--flip-rate must be a number from 0 up");
        }
        if self.outage_at.is_some_and(|at| at >= self.duration) {
            bail!("--outage-at must be less than --duration");
        }
        if !(self.reload_flip_rate > 0.0 && self.reload_flip_rate.is_finite()) {
            bail!("--reload-flip-rate must be a number above 0");
        }
        if self.reload_rounds == 0 {
            bail!("--reload-rounds must be at least 1");
        }
        if self.rss_every.is_some_and(|every| every.is_zero()) {
            bail!("--rss-every must be above 0");
        }
        if !(self.churn_rate >= 0.0 && self.churn_rate.is_finite()) {
            bail!("--churn-rate must be a number from 0 up");
        }
        if self.gateway_threads == 0 || self.upstream_threads == 0 || self.client_threads == Some(0)
        {
            bail!("thread counts must be above 0");
        }
        Ok(())
    }
}

/// A proxy the bench does not start: a name for the tables and where it listens.
#[derive(Clone, Debug)]
struct Peer {
    name: String,
    addr: SocketAddr,
}

/// Parses `NAME=HOST:PORT`.
fn parse_peer(s: &str) -> Result<Peer, String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=ADDR, like haproxy=127.0.0.1:28082"))?;
    let reserved = ["direct", "gateway", "added"];
    if name.is_empty() || reserved.contains(&name) || name.contains(char::is_whitespace) {
        return Err(format!(
            "{s:?}: the name must be a word other than {}",
            reserved.join(", ")
        ));
    }
    let addr = addr
        .parse()
        .map_err(|e| format!("{s:?}: {addr:?} is not an address like 127.0.0.1:28082: {e}"))?;
    Ok(Peer {
        name: name.to_string(),
        addr,
    })
}

/// Parses `STABLE_ADDR,CANARY_ADDR`.
fn parse_upstreams(s: &str) -> Result<UpstreamAddrs, String> {
    let parse = |a: &str| {
        a.trim()
            .parse::<SocketAddr>()
            .map_err(|e| format!("{s:?}: {a:?} is not an address like 127.0.0.1:28001: {e}"))
    };
    match s.split(',').collect::<Vec<_>>()[..] {
        [stable, canary] => Ok(UpstreamAddrs {
            stable: parse(stable)?,
            canary: parse(canary)?,
        }),
        _ => Err(format!(
            "{s:?}: expected two addresses, stable then canary, like 127.0.0.1:28001,127.0.0.1:28002"
        )),
    }
}

/// Parses `10s`, `500ms`, `1.5s`, `250us`, `2m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{s:?}: add a unit: us, ms, s or m (like 10s)"))?;
    let (number, unit) = s.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{s:?}: expected a number followed by a unit, like 10s"))?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        _ => return Err(format!("{s:?}: the unit must be one of us, ms, s, m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    // `outage` runs its endpoints as processes of this binary.
    if raw.first().is_some_and(|a| a == outage::SERVE_ENDPOINT) {
        return outage::serve_endpoint(&raw[1..]);
    }
    let asked_for_help = raw.iter().any(|a| a == "-h" || a == "--help");
    let smoke = !raw.iter().any(|a| a == "--bench") && !asked_for_help;
    let args = if smoke {
        eprintln!("load: no --bench argument, so this is a smoke pass with tiny settings (measure with `cargo bench --bench load`)");
        Args::smoke()
    } else {
        Args::parse()
    };
    probe::set_attacker_source(args.attacker_source);
    match run(&args, smoke) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args, smoke: bool) -> Result<()> {
    args.check()?;
    let scenarios = args.scenarios();
    if let Some(cpus) = &args.pin_client {
        pin_self(cpus)?;
    }
    if let Some(need) = args.fds_needed(&scenarios) {
        ensure_own_fd_limit(need)?;
    }
    let started = utc_now();
    let upstreams = match &args.upstreams {
        Some(addrs) => Upstreams::external(addrs.clone()),
        None => Upstreams::start(args.upstream_threads, args.body_size)?,
    };
    let mut client = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.client_threads {
        client.worker_threads(n);
    }
    let client = client
        .thread_name("load-client")
        .enable_all()
        .build()
        .context("starting the client runtime")?;
    let report = client.block_on(run_scenarios(args, &scenarios, &upstreams))?;
    drop(client);
    drop(upstreams);

    let machine = machine();
    println!();
    println!(
        "splitgate load bench, {started}, {} CPUs ({}), gateway threads {}",
        machine["nproc"],
        machine["cpu_model"].as_str().unwrap_or("?"),
        args.gateway_threads
    );
    print!("{}", report.table());
    if smoke {
        if report.rows.iter().any(|r| r.answered == Some(0)) {
            bail!("a run got no successful answer at all");
        }
        return Ok(());
    }
    let doc = json!({
        "date": started,
        "machine": machine,
        "params": params_json(args, &scenarios),
        "rows": report.rows.iter().map(|r| r.json.clone()).collect::<Vec<_>>(),
        "notes": report.notes,
    });
    write_json(&args.json, &doc)?;
    eprintln!("JSON report: {}", args.json.display());
    Ok(())
}

async fn run_scenarios(args: &Args, scenarios: &[Scenario], own: &Upstreams) -> Result<Report> {
    let mut report = Report::default();
    let upstreams = &own.addrs;
    check_outside_parts(args, upstreams).await?;
    let shared = if scenarios.iter().any(|s| s.shares_gateway()) {
        Some(Gateway::start(args, upstreams, &Tweaks::default()).await?)
    } else {
        None
    };
    let mut max_rps = None;
    for &scenario in scenarios {
        let gw = || shared.as_ref().context("no shared gateway");
        let report = &mut report;
        match scenario {
            Scenario::Max => max_rps = Some(run_max(args, gw()?, upstreams, report).await?),
            Scenario::Open => run_open(args, gw()?, upstreams, max_rps, report).await?,
            Scenario::H2 => run_h2(args, gw()?, report).await?,
            Scenario::Flip => run_flip(args, gw()?, report).await?,
            Scenario::Idle => run_idle(args, upstreams, report).await?,
            Scenario::Hostile => hostile::run(args, upstreams, report).await?,
            Scenario::H2flood => h2flood::run(args, own, report).await?,
            Scenario::Churn => churn::run(args, report).await?,
            Scenario::Drain => drain::run(args, upstreams, report).await?,
            Scenario::Retry => retry::run(args, upstreams, report).await?,
            Scenario::Outage => outage::run(args, upstreams, report).await?,
            Scenario::Reload => reload::run(args, upstreams, report).await?,
            Scenario::All => unreachable!("expanded by Args::scenarios"),
        }
        if let Some(gw) = &shared {
            gw.check_alive()?;
        }
    }
    if let Some(gw) = &shared {
        gw.note_log(&mut report);
    }
    Ok(report)
}

/// Before any load: the upstreams given by `--upstreams` name their subset, and every `--peer`
/// answers 2xx from one of them.
async fn check_outside_parts(args: &Args, upstreams: &UpstreamAddrs) -> Result<()> {
    let mut checks = Vec::new();
    if args.upstreams.is_some() {
        for (addr, subset) in [(upstreams.stable, "stable"), (upstreams.canary, "canary")] {
            let mut target = Target::direct(addr);
            target.name = format!("the {subset} upstream (--upstreams)");
            checks.push((target, Some(subset)));
        }
    }
    checks.extend(args.peer.iter().map(|p| (Target::peer(p), None)));
    for (target, want) in checks {
        let mut slot = None;
        let answer = attempt(&target, &mut slot)
            .await
            .map_err(|e| anyhow!("{} at {}: {e}", target.name, target.addr))?;
        let subset = match answer {
            Answer::Ok(Some(Subset::Stable)) => "stable",
            Answer::Ok(Some(Subset::Canary)) => "canary",
            Answer::Ok(None) => bail!(
                "{} at {} answered with a body that starts with neither `stable` nor `canary`",
                target.name,
                target.addr
            ),
            Answer::Status(code) => bail!("{} at {} answered {code}", target.name, target.addr),
        };
        if want.is_some_and(|w| w != subset) {
            bail!(
                "{} at {} answered as the {subset} upstream; --upstreams is stable first, then canary",
                target.name,
                target.addr
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// `max`: closed loop over HTTP/1.1, direct then through the gateway; returns the gateway's rps.
async fn run_max(
    args: &Args,
    gw: &Gateway,
    upstreams: &UpstreamAddrs,
    report: &mut Report,
) -> Result<f64> {
    let mut gateway_rps = 0.0;
    for target in h1_targets(args, gw, upstreams) {
        let label = format!("max {}", target.name);
        let tally = max_loop(args, &label, &target).await?;
        let row = Row::from_tally("max", &target.name, &tally, args.duration, json!({}));
        if target.name == "gateway" {
            gateway_rps = row.rps.unwrap_or(0.0);
        }
        report.push(row, &tally);
    }
    Ok(gateway_rps)
}

/// `open`: the same fixed rate direct and through the gateway, and the latency the gateway adds.
async fn run_open(
    args: &Args,
    gw: &Gateway,
    upstreams: &UpstreamAddrs,
    max_rps: Option<f64>,
    report: &mut Report,
) -> Result<()> {
    let rate = match (args.rate, max_rps) {
        (Some(rate), _) => rate as f64,
        (None, Some(max)) => (max / 2.0).round().max(1.0),
        (None, None) => 10_000.0,
    };
    let mut measured = Vec::new();
    for target in h1_targets(args, gw, upstreams) {
        let label = format!("open {rate}/s {}", target.name);
        let tally = open_loop(&label, &target, args.connections, rate, args.timing()).await?;
        let extra = json!({ "rate": rate });
        let row = Row::from_tally("open", &target.name, &tally, args.duration, extra);
        measured.push((target.name, tally.quantiles()));
        report.push(row, &tally);
    }
    let (_, direct) = measured[0].clone();
    for (name, quantiles) in &measured[1..] {
        let added: [i64; 4] = std::array::from_fn(|i| quantiles[i] - direct[i]);
        report.rows.push(Row {
            scenario: "open",
            target: "added".into(),
            rps: None,
            latency: Some(added),
            errors: None,
            answered: None,
            split: format!("{name} minus direct"),
            json: json!({
                "scenario": "open",
                "target": "added",
                "proxy": name,
                "rate": rate,
                "added_latency_us": { "p50": added[0], "p90": added[1], "p99": added[2], "p99.9": added[3] },
            }),
        });
    }
    Ok(())
}

/// What `max` and `open` measure, in turn: the stable upstream directly, the gateway, and each
/// `--peer`.
fn h1_targets(args: &Args, gw: &Gateway, upstreams: &UpstreamAddrs) -> Vec<Target> {
    let mut targets = vec![
        Target::direct(upstreams.stable),
        Target::gateway(gw.listen, Proto::H1),
    ];
    targets.extend(args.peer.iter().map(Target::peer));
    targets
}

/// `h2`: closed loop over multiplexed h2c connections.
async fn run_h2(args: &Args, gw: &Gateway, report: &mut Report) -> Result<()> {
    let target = Target::gateway(gw.listen, Proto::H2);
    let label = format!("h2 {} streams", args.streams);
    let connections = args.h2_connections.min(args.streams);
    let tally = closed_loop(&label, &target, connections, args.streams, args.timing()).await?;
    let extra = json!({ "connections": connections, "streams": args.streams });
    let row = Row::from_tally("h2", "gateway", &tally, args.duration, extra);
    report.push(row, &tally);
    Ok(())
}

/// `flip`: closed loop through the gateway while the admin API flips the weights.
async fn run_flip(args: &Args, gw: &Gateway, report: &mut Report) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = tokio::spawn(flip_weights(gw.admin, args.flip_rate, stop.clone()));
    let target = Target::gateway(gw.listen, Proto::H1);
    let label = format!("flip {}/s", args.flip_rate);
    let zero = Instant::now() + args.warmup;
    let sampling = async {
        match args.rss_every {
            Some(every) => Some(rss_series(gw.pid, every, zero, zero + args.duration).await),
            None => None,
        }
    };
    let (tally, series) = tokio::join!(max_loop(args, &label, &target), sampling);
    // One more read at the end.
    let series = series.map(|mut s| {
        if let Ok(kib) = gw.rss_kib() {
            s.push((zero.elapsed().as_secs_f64(), kib));
        }
        s
    });
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.await.context("the weight flipper panicked")?;
    let tally = tally?;
    // Leave the route as the config has it, for whatever runs next.
    let mut conn = None;
    put_weights(&mut conn, gw.admin, 90, 10)
        .await
        .context("setting the weights back to 90/10 after flip")?;

    let seconds = flips.elapsed.as_secs_f64().max(1e-9);
    let mut extra = json!({
        "flip_rate": args.flip_rate,
        "admin_ok": flips.ok,
        "admin_failed": flips.failed,
        "admin_ok_per_s": flips.ok as f64 / seconds,
        "admin_first_failure": flips.first_failure,
        "admin_latency_us": latency_json(&flips.latency),
    });
    if let Some(series) = &series {
        let rss = rss_growth(series, args.duration);
        report.notes.push(rss.text.clone());
        extra["rss"] = rss.json;
    }
    let row = Row::from_tally("flip", "gateway", &tally, args.duration, extra);
    report.notes.push(format!(
        "flip: {} weight changes applied ({:.1}/s over {:.1} s), {} admin calls failed{}",
        flips.ok,
        flips.ok as f64 / seconds,
        seconds,
        flips.failed,
        first(&flips.first_failure)
    ));
    report.push(row, &tally);
    Ok(())
}

/// The VmRSS of process `pid` in KiB every `every` from now until `end`, each with its time in
/// seconds from `zero` (negative before it).
async fn rss_series(pid: u32, every: Duration, zero: Instant, end: Instant) -> Vec<(f64, u64)> {
    let mut series = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let at = tick.tick().await.into_std();
        if at >= end {
            break;
        }
        let path = format!("/proc/{pid}/status");
        let kib = std::fs::read_to_string(&path).ok().and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        });
        if let Some(kib) = kib {
            let t = if at >= zero {
                (at - zero).as_secs_f64()
            } else {
                -(zero - at).as_secs_f64()
            };
            series.push((t, kib));
        }
    }
    series
}

/// What an RSS series says.
struct RssGrowth {
    text: String,
    json: Value,
}

/// The RSS after warm-up (the first read at or after 20% of `duration`), at the end, and the
/// growth between them.
fn rss_growth(series: &[(f64, u64)], duration: Duration) -> RssGrowth {
    let warm_at = duration.as_secs_f64() * 0.2;
    let warm = series
        .iter()
        .find(|(t, _)| *t >= warm_at)
        .or(series.first())
        .copied();
    let end = series.last().copied();
    let growth = match (warm, end) {
        (Some((_, w)), Some((_, e))) if w > 0 => Some(100.0 * (e as f64 - w as f64) / w as f64),
        _ => None,
    };
    let text = match (warm, end, growth) {
        (Some((wt, w)), Some((et, e)), Some(g)) => format!(
            "flip: gateway RSS {w} KiB after warm-up (read at {wt:.1} s), {e} KiB at the end \
             ({et:.1} s): {g:+.2}% (soak goal: at most +1% after warm-up); {} reads, peak {} KiB",
            series.len(),
            series.iter().map(|(_, k)| *k).max().unwrap_or(0)
        ),
        _ => format!("flip: only {} RSS reads, too few to compare", series.len()),
    };
    let json = json!({
        "series": series.iter().map(|(t, k)| json!([t, k])).collect::<Vec<_>>(),
        "warm_up_end_s": warm_at,
        "after_warm_up": warm.map(|(t, k)| json!({ "t_s": t, "kib": k })),
        "end": end.map(|(t, k)| json!({ "t_s": t, "kib": k })),
        "growth_percent": growth,
    });
    RssGrowth { text, json }
}

/// p50, p99, p99.9 and max of a µs histogram, for the JSON report.
fn latency_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.5),
        "p99": h.value_at_quantile(0.99),
        "p99.9": h.value_at_quantile(0.999),
        "max": h.max(),
    })
}

/// `idle`: the memory a fresh gateway takes at a steady 1000 requests/s and per idle connection.
async fn run_idle(args: &Args, upstreams: &UpstreamAddrs, report: &mut Report) -> Result<()> {
    let gw = Gateway::start(args, upstreams, &Tweaks::default()).await?;
    gw.ensure_fd_limit(args.idle_connections as u64 + FD_MARGIN)?;
    let target = Target::gateway(gw.listen, Proto::H1);
    let rss_fresh = gw.rss_kib()?;

    let steady = Timing {
        warmup: args.warmup.min(Duration::from_secs(1)),
        duration: args.duration.min(Duration::from_secs(5)),
    };
    let label = format!("idle: {IDLE_RATE}/s");
    let tally = open_loop(&label, &target, IDLE_RATE_CONNECTIONS, IDLE_RATE, steady).await?;
    let rss_steady = gw.rss_kib()?;

    eprintln!(
        "  idle: opening {} keep-alive connections",
        args.idle_connections
    );
    let set = open_idle_connections(&target, args.idle_connections).await;
    tokio::time::sleep(args.idle_hold).await;
    let rss_with_idle = gw.rss_kib()?;
    let active = gw.active_downstream_connections().await.ok();
    let closed = set.senders.iter().filter(|s| s.is_closed()).count();
    let peak = gw.peak_rss_kib()?;
    let opened = set.senders.len();
    let per_connection = if opened > 0 {
        (rss_with_idle as f64 - rss_steady as f64) / opened as f64
    } else {
        f64::NAN
    };
    gw.check_alive()?;
    drop(set.senders);

    report.notes.push(format!(
        "idle: gateway RSS {rss_fresh} KiB fresh, {rss_steady} KiB after {:.1} s at {IDLE_RATE}/s, \
         {rss_with_idle} KiB with {opened} idle connections (peak {peak} KiB): \
         {per_connection:.1} KiB per idle connection",
        steady.duration.as_secs_f64()
    ));
    report.notes.push(format!(
        "idle: {opened} of {} connections set up, {} failed{}; {closed} closed by the gateway within {:.1} s idle; \
         gateway reports {} active downstream connections",
        args.idle_connections,
        set.failed,
        first(&set.first_error),
        args.idle_hold.as_secs_f64(),
        active.map_or("?".to_string(), |n| n.to_string()),
    ));
    let extra = json!({
        "rate": IDLE_RATE,
        "rss_kib": { "fresh": rss_fresh, "at_rate": rss_steady,
                     "with_idle": rss_with_idle, "peak": peak },
        "idle_connections": { "requested": args.idle_connections, "opened": opened,
                              "failed": set.failed, "first_error": set.first_error,
                              "closed_by_gateway": closed, "gateway_reports_active": active },
        "kib_per_idle_connection": per_connection,
    });
    let row = Row::from_tally("idle", "gateway@1000/s", &tally, steady.duration, extra);
    report.push(row, &tally);
    gw.note_log(report);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Load drivers

/// Where load goes and how it is spoken.
#[derive(Clone)]
struct Target {
    /// `direct`, `gateway` or a peer's name.
    name: String,
    addr: SocketAddr,
    proto: Proto,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

impl Target {
    fn direct(addr: SocketAddr) -> Target {
        Target {
            name: "direct".into(),
            addr,
            proto: Proto::H1,
        }
    }

    fn peer(peer: &Peer) -> Target {
        Target {
            name: peer.name.clone(),
            addr: peer.addr,
            proto: Proto::H1,
        }
    }

    fn gateway(addr: SocketAddr, proto: Proto) -> Target {
        Target {
            name: "gateway".into(),
            addr,
            proto,
        }
    }

    /// The bench request, from static parts: nothing is parsed per request.
    fn request(&self) -> Request<Empty<Bytes>> {
        let mut req = Request::new(Empty::new());
        match self.proto {
            Proto::H1 => {
                *req.uri_mut() = Uri::from_static("/");
                req.headers_mut()
                    .insert(HOST, HeaderValue::from_static(HOST_NAME));
            }
            // HTTP/2 carries the host as `:authority`, taken from the URI.
            Proto::H2 => *req.uri_mut() = Uri::from_static("http://bench.example.com/"),
        }
        req
    }
}

/// The measured part of a run: requests are counted when they complete (closed loop) or are due
/// (open loop) inside it.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
}

#[derive(Clone, Copy)]
struct Timing {
    warmup: Duration,
    duration: Duration,
}

impl Timing {
    /// The window of a run whose warm-up starts now.
    fn window_from_now(&self) -> Window {
        let start = Instant::now() + self.warmup;
        Window {
            start,
            end: start + self.duration,
        }
    }
}

/// A client connection ready to carry requests.
enum Sender {
    H1(client_h1::SendRequest<Empty<Bytes>>),
    H2(client_h2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    /// Sends one request and reads its whole answer.
    async fn exchange(&mut self, req: Request<Empty<Bytes>>) -> Result<Answer, hyper::Error> {
        let resp = match self {
            Sender::H1(tx) => {
                tx.ready().await?;
                tx.send_request(req).await?
            }
            Sender::H2(tx) => {
                tx.ready().await?;
                tx.send_request(req).await?
            }
        };
        read_answer(resp).await
    }

    /// Waits until the connection can take a request; an error when it is closed.
    async fn ready(&mut self) -> Result<(), hyper::Error> {
        match self {
            Sender::H1(tx) => tx.ready().await,
            Sender::H2(tx) => tx.ready().await,
        }
    }

    /// Another handle on the same connection: a new stream for HTTP/2, nothing for HTTP/1.1.
    fn share(&self) -> Option<Sender> {
        match self {
            Sender::H1(_) => None,
            Sender::H2(tx) => Some(Sender::H2(tx.clone())),
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(tx) => tx.is_closed(),
            Sender::H2(tx) => tx.is_closed(),
        }
    }
}

/// Opens a connection (TCP_NODELAY) and drives it on a task of its own.
async fn connect(target: &Target) -> Result<Sender> {
    let stream = TcpStream::connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let io = TokioIo::new(stream);
    Ok(match target.proto {
        Proto::H1 => {
            let (tx, conn) = client_h1::handshake(io).await?;
            tokio::spawn(conn);
            Sender::H1(tx)
        }
        Proto::H2 => {
            let (tx, conn) = client_h2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Sender::H2(tx)
        }
    })
}

/// `in_flight` senders over `connections` connections (opened in parallel), spread evenly: one
/// each for HTTP/1.1, where the two must be equal; streams sharing a connection for HTTP/2.
async fn open_senders(
    target: &Target,
    connections: usize,
    in_flight: usize,
) -> Result<Vec<Sender>> {
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let target = target.clone();
            tokio::spawn(async move { connect(&target).await })
        })
        .collect();
    let mut senders = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let sender = task
            .await?
            .with_context(|| format!("connecting to the {} at {}", target.name, target.addr))?;
        let streams = in_flight / connections + usize::from(i < in_flight % connections);
        for _ in 1..streams {
            senders.extend(sender.share());
        }
        senders.push(sender);
    }
    if senders.len() != in_flight {
        bail!("{in_flight} requests in flight need HTTP/2 over {connections} connections");
    }
    Ok(senders)
}

/// What one request came to.
#[derive(Clone, Copy)]
enum Answer {
    /// A 2xx answer and the subset its body names (`None`: neither).
    Ok(Option<Subset>),
    /// Any other status.
    Status(u16),
}

#[derive(Clone, Copy)]
enum Subset {
    Stable,
    Canary,
}

/// Reads an answer's body to the end and tells the subset from its first bytes.
async fn read_answer(resp: Response<Incoming>) -> Result<Answer, hyper::Error> {
    let status = resp.status();
    let mut body = resp.into_body();
    let mut head = [0u8; 6];
    let mut have = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            let n = (head.len() - have).min(data.len());
            head[have..have + n].copy_from_slice(&data[..n]);
            have += n;
        }
    }
    if !status.is_success() {
        return Ok(Answer::Status(status.as_u16()));
    }
    Ok(Answer::Ok(match &head[..have] {
        b"stable" => Some(Subset::Stable),
        b"canary" => Some(Subset::Canary),
        _ => None,
    }))
}

/// One request on `slot`'s connection, connecting first when there is none. A transport error
/// drops the connection, so the next attempt makes a new one. A connection the server closed
/// between requests (an answer with `Connection: close`, an idle timeout seen in time) is
/// replaced before the request goes out, as a client's pool does: nothing was sent on it.
async fn attempt(target: &Target, slot: &mut Option<Sender>) -> Result<Answer, String> {
    if let Some(sender) = slot {
        if sender.ready().await.is_err() {
            *slot = None;
        }
    }
    let sender = match slot {
        Some(sender) => sender,
        None => match connect(target).await {
            Ok(sender) => slot.insert(sender),
            Err(e) => {
                // Don't spin while the target is down.
                tokio::time::sleep(Duration::from_millis(10)).await;
                return Err(format!("connect: {e:#}"));
            }
        },
    };
    match sender.exchange(target.request()).await {
        Ok(answer) => Ok(answer),
        Err(e) => {
            *slot = None;
            Err(error_chain(&e))
        }
    }
}

/// Counts of a run so far, for the progress lines.
#[derive(Default)]
struct Live {
    ok: AtomicU64,
    errors: AtomicU64,
    /// The highest latency since the last progress line, µs.
    slowest: AtomicU64,
}

impl Live {
    fn count(&self, result: &Result<Answer, String>, latency: Duration) {
        let counter = match result {
            Ok(Answer::Ok(_)) => &self.ok,
            _ => &self.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.slowest.fetch_max(us, Ordering::Relaxed);
    }
}

/// Prints a line to stderr every second of the window: the answers of that second, the errors
/// so far and the slowest answer of that second (which shows when a stall happened).
fn spawn_progress(label: String, live: Arc<Live>, window: Window) -> JoinHandle<()> {
    tokio::spawn(async move {
        eprintln!("{label}: warming up");
        let mut last = 0;
        for second in 1.. {
            let at = window.start + Duration::from_secs(second);
            if at > window.end {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
            let ok = live.ok.load(Ordering::Relaxed);
            let errors = live.errors.load(Ordering::Relaxed);
            let slowest = live.slowest.swap(0, Ordering::Relaxed) as f64 / 1e3;
            eprintln!(
                "  {label}: {second:>3} s {:>8} rps, {errors} errors, slowest {slowest:.1} ms",
                ok - last
            );
            last = ok;
        }
    })
}

/// `max`'s closed loop: `--connections` HTTP/1.1 keep-alive connections, one request in
/// flight on each.
async fn max_loop(args: &Args, label: &str, target: &Target) -> Result<Tally> {
    closed_loop(
        label,
        target,
        args.connections,
        args.connections,
        args.timing(),
    )
    .await
}

/// Closed loop: every sender sends its next request as soon as its last answer is in.
async fn closed_loop(
    label: &str,
    target: &Target,
    connections: usize,
    in_flight: usize,
    timing: Timing,
) -> Result<Tally> {
    let senders = open_senders(target, connections, in_flight).await?;
    let window = timing.window_from_now();
    let live = Arc::new(Live::default());
    let progress = spawn_progress(label.to_string(), live.clone(), window);
    let workers = senders
        .into_iter()
        .map(|sender| tokio::spawn(closed_worker(target.clone(), sender, window, live.clone())))
        .collect();
    let tally = join_tallies(workers).await;
    progress.abort();
    tally
}

async fn closed_worker(target: Target, sender: Sender, window: Window, live: Arc<Live>) -> Tally {
    let mut tally = Tally::new();
    let mut slot = Some(sender);
    loop {
        let sent = Instant::now();
        if sent >= window.end {
            break;
        }
        let result = attempt(&target, &mut slot).await;
        let done = Instant::now();
        if window.contains(done) {
            tally.record(&result, done - sent);
            live.count(&result, done - sent);
        }
    }
    tally
}

/// Open loop at `rate` requests/s over `connections` HTTP/1.1 connections; latency counts from
/// each request's due time.
async fn open_loop(
    label: &str,
    target: &Target,
    connections: usize,
    rate: f64,
    timing: Timing,
) -> Result<Tally> {
    let senders = open_senders(target, connections, connections).await?;
    let window = timing.window_from_now();
    let (dues, queues): (Vec<_>, Vec<_>) =
        (0..connections).map(|_| mpsc::unbounded_channel()).unzip();
    let first_due = Instant::now();
    let pacer = std::thread::Builder::new()
        .name("load-pacer".into())
        .spawn(move || pace(rate, first_due, window.end, dues))
        .context("starting the pacer thread")?;
    let live = Arc::new(Live::default());
    let progress = spawn_progress(label.to_string(), live.clone(), window);
    let workers = senders
        .into_iter()
        .zip(queues)
        .map(|(sender, queue)| {
            tokio::spawn(open_worker(
                target.clone(),
                sender,
                queue,
                window,
                live.clone(),
            ))
        })
        .collect();
    let tally = join_tallies(workers).await;
    progress.abort();
    // The workers end when the pacer has dropped its senders, so it is done.
    pacer
        .join()
        .map_err(|_| anyhow!("the pacer thread panicked"))?;
    tally
}

/// Hands out due times from `first_due` on, `1/rate` apart, round robin over `dues`, until
/// `end`. It sleeps with the OS's precision (tens of µs) rather than tokio's timer wheel (1 ms),
/// and hands out at once whatever fell due while it slept.
fn pace(rate: f64, first_due: Instant, end: Instant, dues: Vec<mpsc::UnboundedSender<Instant>>) {
    for k in 0u64.. {
        let due = first_due + Duration::from_secs_f64(k as f64 / rate);
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        // Only a panicked worker drops its queue, and `join_tallies` reports that.
        let _ = dues[(k % dues.len() as u64) as usize].send(due);
    }
}

async fn open_worker(
    target: Target,
    sender: Sender,
    mut queue: mpsc::UnboundedReceiver<Instant>,
    window: Window,
    live: Arc<Live>,
) -> Tally {
    let mut tally = Tally::new();
    let mut slot = Some(sender);
    let give_up = window.end + DRAIN_LIMIT;
    while let Some(due) = queue.recv().await {
        let measured = window.contains(due);
        if Instant::now() > give_up {
            tally.unsent += u64::from(measured);
            continue;
        }
        let result = attempt(&target, &mut slot).await;
        let done = Instant::now();
        if measured {
            let latency = done.saturating_duration_since(due);
            tally.record(&result, latency);
            live.count(&result, latency);
        }
    }
    tally
}

async fn join_tallies(workers: Vec<JoinHandle<Tally>>) -> Result<Tally> {
    let mut total = Tally::new();
    for worker in workers {
        total.merge(&worker.await.context("a load task panicked")?);
    }
    Ok(total)
}

/// What the requests of one task (or, merged, of one run) came to.
struct Tally {
    /// Latency of every answer, 2xx or not, in µs.
    latency: Histogram<u64>,
    stable: u64,
    canary: u64,
    /// 2xx answers from neither subset.
    other: u64,
    /// Non-2xx answers by status.
    statuses: BTreeMap<u16, u64>,
    /// Connections refused or broken, requests without an answer.
    transport: u64,
    /// Open loop: due requests given up on after the drain limit.
    unsent: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                .expect("constant histogram bounds are valid"),
            stable: 0,
            canary: 0,
            other: 0,
            statuses: BTreeMap::new(),
            transport: 0,
            unsent: 0,
            first_error: None,
        }
    }

    fn record(&mut self, result: &Result<Answer, String>, latency: Duration) {
        match result {
            Ok(answer) => {
                let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                self.latency.saturating_record(us.max(1));
                match answer {
                    Answer::Ok(Some(Subset::Stable)) => self.stable += 1,
                    Answer::Ok(Some(Subset::Canary)) => self.canary += 1,
                    Answer::Ok(None) => self.other += 1,
                    Answer::Status(code) => *self.statuses.entry(*code).or_default() += 1,
                }
            }
            Err(e) => {
                self.transport += 1;
                self.first_error.get_or_insert_with(|| e.clone());
            }
        }
    }

    fn merge(&mut self, other: &Tally) {
        self.latency
            .add(&other.latency)
            .expect("histograms with the same bounds merge");
        self.stable += other.stable;
        self.canary += other.canary;
        self.other += other.other;
        for (code, n) in &other.statuses {
            *self.statuses.entry(*code).or_default() += n;
        }
        self.transport += other.transport;
        self.unsent += other.unsent;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    /// 2xx answers.
    fn answered(&self) -> u64 {
        self.stable + self.canary + self.other
    }

    fn errors(&self) -> u64 {
        self.transport + self.unsent + self.statuses.values().sum::<u64>()
    }

    /// p50, p90, p99 and p99.9 in µs.
    fn quantiles(&self) -> [i64; 4] {
        [0.5, 0.9, 0.99, 0.999].map(|q| self.latency.value_at_quantile(q) as i64)
    }

    /// Like `stable 90.1% canary 9.9%`.
    fn split_text(&self) -> String {
        let total = self.answered();
        if total == 0 {
            return "-".into();
        }
        let pct = |n: u64| 100.0 * n as f64 / total as f64;
        let mut text = format!(
            "stable {:.1}% canary {:.1}%",
            pct(self.stable),
            pct(self.canary)
        );
        if self.other > 0 {
            text.push_str(&format!(" other {}", self.other));
        }
        text
    }

    fn error_text(&self) -> Option<String> {
        let mut parts: Vec<String> = self
            .statuses
            .iter()
            .map(|(code, n)| format!("{n} × status {code}"))
            .collect();
        if self.transport > 0 {
            parts.push(format!(
                "{} transport errors (first: {})",
                self.transport,
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
        if self.unsent > 0 {
            parts.push(format!("{} due requests never sent", self.unsent));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// A set of idle keep-alive connections.
struct IdleSet {
    senders: Vec<Sender>,
    failed: usize,
    first_error: Option<String>,
}

/// Opens `n` connections, each sending one request, a bounded number at a time so the gateway's
/// upstream pool stays small; keeps the ones that got a 2xx answer.
async fn open_idle_connections(target: &Target, n: usize) -> IdleSet {
    let gate = Arc::new(tokio::sync::Semaphore::new(IDLE_SETUP_PARALLELISM));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (target, gate) = (target.clone(), gate.clone());
            tokio::spawn(async move {
                let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
                let mut slot = None;
                match attempt(&target, &mut slot).await? {
                    Answer::Ok(_) => slot.ok_or_else(|| "connection lost".to_string()),
                    Answer::Status(code) => Err(format!("status {code}")),
                }
            })
        })
        .collect();
    let mut set = IdleSet {
        senders: Vec::with_capacity(n),
        failed: 0,
        first_error: None,
    };
    for task in tasks {
        match task.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(sender) => set.senders.push(sender),
            Err(e) => {
                set.failed += 1;
                set.first_error.get_or_insert(e);
            }
        }
    }
    set
}

// ---------------------------------------------------------------------------------------------
// Admin API and small HTTP/1.1 calls

type CallConn = client_h1::SendRequest<Full<Bytes>>;

/// One HTTP/1.1 call on `slot`'s keep-alive connection to `addr` (made when there is none);
/// returns the status and the whole body.
async fn call(
    slot: &mut Option<CallConn>,
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes)> {
    if slot.is_none() {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (tx, conn) = client_h1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        *slot = Some(tx);
    }
    let Some(tx) = slot.as_mut() else {
        unreachable!("connected above")
    };
    let result: Result<_> = async {
        tx.ready().await?;
        let resp = tx.send_request(req).await?;
        let status = resp.status();
        Ok((status, resp.into_body().collect().await?.to_bytes()))
    }
    .await;
    if result.is_err() {
        *slot = None;
    }
    result.with_context(|| format!("calling {addr}"))
}

fn get_request(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Request<Full<Bytes>>> {
    let mut req = Request::get(path).header(HOST, addr.to_string());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    Ok(req.body(Full::default())?)
}

/// `PUT /v1/routes/bench/weights` for the rule `primary`.
async fn put_weights(
    slot: &mut Option<CallConn>,
    admin: SocketAddr,
    stable: u32,
    canary: u32,
) -> Result<()> {
    let body = json!({ "rule": "primary", "weights": { "stable": stable, "canary": canary } });
    let req = Request::builder()
        .method(Method::PUT)
        .uri("/v1/routes/bench/weights")
        .header(HOST, admin.to_string())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let (status, body) = call(slot, admin, req).await?;
    if status != StatusCode::OK {
        bail!("status {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    Ok(())
}

struct FlipStats {
    ok: u64,
    failed: u64,
    first_failure: Option<String>,
    elapsed: Duration,
    /// How long each admin call took, µs.
    latency: Histogram<u64>,
}

/// Flips `primary` between 90/10 and 10/90 `rate` times a second until `stop`.
async fn flip_weights(admin: SocketAddr, rate: f64, stop: Arc<AtomicBool>) -> FlipStats {
    let started = Instant::now();
    let mut stats = FlipStats {
        ok: 0,
        failed: 0,
        first_failure: None,
        elapsed: Duration::ZERO,
        latency: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
            .expect("constant histogram bounds are valid"),
    };
    if rate > 0.0 {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut conn = None;
        let mut canary_heavy = false;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            canary_heavy = !canary_heavy;
            let (stable, canary) = if canary_heavy { (10, 90) } else { (90, 10) };
            let called = Instant::now();
            let result = put_weights(&mut conn, admin, stable, canary).await;
            let us = u64::try_from(called.elapsed().as_micros()).unwrap_or(u64::MAX);
            stats.latency.saturating_record(us.max(1));
            match result {
                Ok(()) => stats.ok += 1,
                Err(e) => {
                    stats.failed += 1;
                    stats.first_failure.get_or_insert(format!("{e:#}"));
                }
            }
        }
    }
    stats.elapsed = started.elapsed();
    stats
}

// ---------------------------------------------------------------------------------------------
// Upstreams

#[derive(Clone, Debug)]
struct UpstreamAddrs {
    stable: SocketAddr,
    canary: SocketAddr,
}

/// The two upstreams, on a runtime of their own.
struct Upstreams {
    addrs: UpstreamAddrs,
    /// What the bench's own upstreams have seen (none for `--upstreams`).
    seen: Option<[Arc<Seen>; 2]>,
    _runtime: Option<tokio::runtime::Runtime>,
}

/// Requests and connections one of the bench's upstreams has seen.
#[derive(Default)]
struct Seen {
    requests: AtomicU64,
    open: AtomicU64,
    peak: AtomicU64,
    /// Connections opened in all.
    opened: AtomicU64,
}

impl Seen {
    fn opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(open, Ordering::Relaxed);
    }

    fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    fn opened_total(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Starts a new peak from the connections open now.
    fn reset_peak(&self) {
        self.peak
            .store(self.open.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

impl Upstreams {
    /// Upstreams somebody else runs.
    fn external(addrs: UpstreamAddrs) -> Upstreams {
        Upstreams {
            addrs,
            seen: None,
            _runtime: None,
        }
    }

    fn start(threads: usize, body_size: usize) -> Result<Upstreams> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("load-upstream")
            .enable_all()
            .build()
            .context("starting the upstream runtime")?;
        let seen = [Arc::new(Seen::default()), Arc::new(Seen::default())];
        let addrs = runtime.block_on(async {
            Ok::<_, anyhow::Error>(UpstreamAddrs {
                stable: serve_upstream("stable", body_size, seen[0].clone()).await?,
                canary: serve_upstream("canary", body_size, seen[1].clone()).await?,
            })
        })?;
        Ok(Upstreams {
            addrs,
            seen: Some(seen),
            _runtime: Some(runtime),
        })
    }
}

/// `name` padded with dots to `size` bytes, ending in a newline when there is room.
fn upstream_body(name: &str, size: usize) -> Bytes {
    let mut body = name.as_bytes().to_vec();
    body.resize(size.max(name.len()), b'.');
    if body.len() > name.len() {
        *body.last_mut().expect("not empty") = b'\n';
    }
    Bytes::from(body)
}

/// An HTTP/1.1 server on a free loopback port that answers every request 200 with its body,
/// counting requests and connections in `seen`.
async fn serve_upstream(
    name: &'static str,
    body_size: usize,
    seen: Arc<Seen>,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .with_context(|| format!("binding the {name} upstream"))?;
    serve_upstream_at(listener, name, body_size, seen)
}

/// [`serve_upstream`] on a listener already bound.
fn serve_upstream_at(
    listener: TcpListener,
    name: &'static str,
    body_size: usize,
    seen: Arc<Seen>,
) -> Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let body = upstream_body(name, body_size);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of file descriptors, most likely: wait instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            seen.opened();
            let (body, counted) = (body.clone(), seen.clone());
            let service = hyper::service::service_fn(move |_req| {
                counted.requests.fetch_add(1, Ordering::Relaxed);
                let body = body.clone();
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            let seen = seen.clone();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                seen.closed();
            });
        }
    });
    Ok(addr)
}

// ---------------------------------------------------------------------------------------------
// The gateway process

/// A running `splitgate run`; killed (and its temp dir removed) on drop.
struct Gateway {
    child: std::sync::Mutex<Child>,
    /// The cgroup that caps its CPU (`--gateway-quota`); removed after the gateway.
    _cap: Option<CpuCap>,
    pid: u32,
    listen: SocketAddr,
    admin: SocketAddr,
    metrics: SocketAddr,
    dir: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(child) = self.child.get_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Gateway {
    /// Starts a gateway and waits until it serves both subsets. A port that another process
    /// took between our pick and the gateway's bind gets a retry with new ports.
    async fn start(args: &Args, upstreams: &UpstreamAddrs, tweaks: &Tweaks) -> Result<Gateway> {
        let mut attempt = 1;
        loop {
            let gw = Gateway::spawn(args, upstreams, tweaks)?;
            match gw.wait_ready().await {
                Ok(()) => return Ok(gw),
                Err(_) if attempt < 3 && gw.log_tail(20).contains("in use") => {
                    eprintln!("gateway: a port was taken meanwhile; retrying with new ones");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn spawn(args: &Args, upstreams: &UpstreamAddrs, tweaks: &Tweaks) -> Result<Gateway> {
        let bin = match &args.gateway_bin {
            Some(path) => path.clone(),
            None => PathBuf::from(env!("CARGO_BIN_EXE_splitgate")),
        };
        if !bin.is_file() {
            bail!("no splitgate binary at {}", bin.display());
        }
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("splitgate-load-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let [listen, admin, readiness, metrics] = free_ports()?;
        let config = dir.join("splitgate.yaml");
        let yaml = gateway_config(listen, admin, readiness, metrics, upstreams, tweaks);
        std::fs::write(&config, yaml).with_context(|| format!("writing {}", config.display()))?;
        let log = std::fs::File::create(dir.join("gateway.log"))?;
        // A shell raises the open-files limit to the hard limit first: idle and hostile hold
        // thousands of connections.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@""#)
            .arg("sh");
        if let Some(cpus) = &args.pin_gateway {
            if find_in_path("taskset").is_some() {
                cmd.args(["taskset", "-c", cpus]);
            } else {
                eprintln!("gateway: taskset not found, so --pin-gateway {cpus} is ignored");
            }
        }
        cmd.arg(&bin)
            .args(["--log-level", "warn", "run", "-c"])
            .arg(&config)
            .arg("--concurrency")
            .arg(args.gateway_threads.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        eprintln!(
            "gateway: {} (pid {}) on {listen}, {} thread(s)",
            bin.display(),
            child.id(),
            args.gateway_threads
        );
        let cap = match args.gateway_quota {
            Some(percent) => Some(CpuCap::new(child.id(), percent)?),
            None => None,
        };
        Ok(Gateway {
            _cap: cap,
            pid: child.id(),
            child: std::sync::Mutex::new(child),
            listen,
            admin,
            metrics,
            dir,
        })
    }

    /// Polls until a plain request and an `x-canary: always` request both get 200 from the
    /// right subsets.
    async fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_alive()?;
            match self.probe().await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!(
                        "the gateway did not serve within {} s; its log ends with:\n{}",
                        READY_TIMEOUT.as_secs(),
                        self.log_tail(20)
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn probe(&self) -> Result<()> {
        let mut conn = None;
        for (headers, want) in [
            (&[][..], None),
            (&[("x-canary", "always")][..], Some("canary")),
        ] {
            let mut all = vec![("host", HOST_NAME)];
            all.extend_from_slice(headers);
            let mut req = Request::get("/");
            for (name, value) in all {
                req = req.header(name, value);
            }
            let (status, body) = call(&mut conn, self.listen, req.body(Full::default())?).await?;
            if status != StatusCode::OK {
                bail!("the gateway answered {status}");
            }
            if let Some(want) = want {
                if !body.starts_with(want.as_bytes()) {
                    bail!("x-canary: always was not served by {want}");
                }
            }
        }
        Ok(())
    }

    /// An error with the end of the gateway's log when it is no longer running.
    fn check_alive(&self) -> Result<()> {
        let status = self
            .child
            .lock()
            .map_err(|_| anyhow!("gateway handle poisoned"))?
            .try_wait()?;
        match status {
            None => Ok(()),
            Some(status) => bail!(
                "the gateway exited ({status}); its log ends with:\n{}",
                self.log_tail(20)
            ),
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        if all.is_empty() {
            return "(nothing)".into();
        }
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Adds a note when the gateway logged anything (it runs at `warn`).
    fn note_log(&self, report: &mut Report) {
        let log = std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default();
        let count = log.lines().count();
        if count > 0 {
            report.notes.push(format!(
                "gateway pid {} logged {count} warning/error lines; the last ones:\n{}",
                self.pid,
                self.log_tail(5)
            ));
        }
    }

    fn status_field_kib(&self, field: &str) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow!("no {field} in {path}"))
    }

    fn rss_kib(&self) -> Result<u64> {
        self.status_field_kib("VmRSS:")
    }

    fn peak_rss_kib(&self) -> Result<u64> {
        self.status_field_kib("VmHWM:")
    }

    fn ensure_fd_limit(&self, need: u64) -> Result<()> {
        let (soft, hard) = open_files_limit(&self.pid.to_string())?;
        if soft < need {
            bail!(
                "the gateway may open only {soft} files (hard limit {hard}) and this needs about \
                 {need}: raise the hard limit (`ulimit -Hn`) or lower --idle-connections or \
                 --hostile-connections"
            );
        }
        Ok(())
    }

    /// `splitgate_downstream_connections_active` from the metrics endpoint.
    async fn active_downstream_connections(&self) -> Result<u64> {
        let req = get_request(self.metrics, "/metrics", &[])?;
        let (_, body) = call(&mut None, self.metrics, req).await?;
        let text = String::from_utf8_lossy(&body);
        text.lines()
            .filter(|l| l.starts_with("splitgate_downstream_connections_active"))
            .find_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .ok_or_else(|| anyhow!("no splitgate_downstream_connections_active in the metrics"))
    }
}

/// What a scenario's gateway sets beyond the bench's base config.
#[derive(Clone, Debug, Default)]
struct Tweaks {
    /// The listener's `limits.first_byte_timeout` and `limits.request_headers_timeout`.
    head_deadline: Option<Duration>,
    /// The service's `policy.max_connections_per_endpoint`.
    upstream_cap: Option<usize>,
    /// Kubernetes mode with this kubeconfig: the services and routes come from the API
    /// server, and the file has none.
    kubeconfig: Option<PathBuf>,
    /// `drain.delay` (the bench's gateways otherwise have `delay: 0s`: they are killed, not
    /// drained).
    drain_delay: Option<Duration>,
    /// The `stable` subset's endpoints, instead of the stable upstream.
    stable_endpoints: Option<Vec<SocketAddr>>,
    /// The weighted rule's `retries` (YAML flow).
    retries: Option<String>,
    /// More fields of the service's `policy` (YAML flow, without the braces), like
    /// `outlier_detection: { … }`.
    service_policy: Option<String>,
    /// The weighted rule's `timeout`.
    route_timeout: Option<Duration>,
    /// The weighted rule's stable and canary weights, instead of 90/10.
    primary_weights: Option<(u32, u32)>,
    /// Rules (YAML, list items indented for `http:`) put between `canary-by-header` and the
    /// weighted rule.
    extra_rules: Option<String>,
}

fn gateway_config(
    listen: SocketAddr,
    admin: SocketAddr,
    readiness: SocketAddr,
    metrics: SocketAddr,
    upstreams: &UpstreamAddrs,
    tweaks: &Tweaks,
) -> String {
    let (stable, canary) = (upstreams.stable, upstreams.canary);
    let stable_endpoints = match &tweaks.stable_endpoints {
        Some(list) => list
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", "),
        None => format!("\"{stable}\""),
    };
    let retries = tweaks
        .retries
        .as_ref()
        .map_or(String::new(), |r| format!("        retries: {r}\n"));
    let limits = tweaks.head_deadline.map_or(String::new(), |d| {
        let ms = d.as_millis();
        format!("    limits: {{ first_byte_timeout: {ms}ms, request_headers_timeout: {ms}ms }}\n")
    });
    let mut policy: Vec<String> = tweaks
        .upstream_cap
        .map(|n| format!("max_connections_per_endpoint: {n}"))
        .into_iter()
        .collect();
    policy.extend(tweaks.service_policy.clone());
    let policy = if policy.is_empty() {
        String::new()
    } else {
        format!("    policy: {{ {} }}\n", policy.join(", "))
    };
    let timeout = tweaks.route_timeout.map_or(String::new(), |t| {
        format!("        timeout: {}ms\n", t.as_millis())
    });
    let (stable_weight, canary_weight) = tweaks.primary_weights.unwrap_or((90, 10));
    let extra_rules = tweaks.extra_rules.as_deref().unwrap_or_default();
    let drain = format!(
        "drain: {{ delay: {}ms, timeout: 5s }}\n",
        tweaks.drain_delay.unwrap_or_default().as_millis()
    );
    let head = format!(
        r#"# Written by benches/load.rs.
listeners:
  - name: bench
    address: "{listen}"
{limits}admin: {{ address: "{admin}" }}
readiness: {{ address: "{readiness}" }}
metrics: {{ address: "{metrics}" }}
"#
    );
    if let Some(kubeconfig) = &tweaks.kubeconfig {
        return format!(
            "{head}kubernetes:\n  gateway: istio-system/splitgate\n  kubeconfig: \"{}\"\n",
            kubeconfig.display()
        );
    }
    format!(
        r#"{head}{drain}services:
  bench:
    namespace: default
    host: bench.default.svc.cluster.local
{policy}    subsets:
      stable: {{ labels: {{ version: v1 }}, endpoints: [{stable_endpoints}] }}
      canary: {{ labels: {{ version: v2 }}, endpoints: ["{canary}"] }}
routes:
  - name: bench
    hosts: ["*"]
    http:
      - name: canary-by-header
        match:
          - headers: {{ x-canary: {{ exact: always }} }}
        route:
          - destination: {{ service: bench, subset: canary }}
{extra_rules}      - name: primary
        route:
          - {{ destination: {{ service: bench, subset: stable }}, weight: {stable_weight} }}
          - {{ destination: {{ service: bench, subset: canary }}, weight: {canary_weight} }}
{retries}{timeout}"#
    )
}

/// Four distinct free loopback addresses: all are bound at once, then released.
fn free_ports() -> Result<[SocketAddr; 4]> {
    let bound: Vec<std::net::TcpListener> = (0..4)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("finding free ports")?;
    let addrs: Vec<SocketAddr> = bound
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<_, _>>()?;
    Ok([addrs[0], addrs[1], addrs[2], addrs[3]])
}

// ---------------------------------------------------------------------------------------------
// The machine: limits, pinning, description

/// A cgroup capping one process at a share of one CPU; removed on drop (after the process).
struct CpuCap {
    dir: PathBuf,
}

impl CpuCap {
    /// Moves `pid` into a new cgroup capped at `percent` of one CPU: cgroup v1's `cpu`
    /// controller when it is mounted, else cgroup v2.
    fn new(pid: u32, percent: u32) -> Result<CpuCap> {
        if percent == 0 {
            bail!("--gateway-quota must be above 0");
        }
        let name = format!("splitgate-load-{}-{pid}", std::process::id());
        let (quota, period) = (u64::from(percent) * 1000, 100_000u64);
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let (dir, settings) = if v1.join("cpu.cfs_quota_us").is_file() {
            let dir = v1.join(&name);
            let settings = vec![
                ("cpu.cfs_period_us", period.to_string()),
                ("cpu.cfs_quota_us", quota.to_string()),
            ];
            (dir, settings)
        } else {
            let dir = Path::new("/sys/fs/cgroup").join(&name);
            (dir, vec![("cpu.max", format!("{quota} {period}"))])
        };
        std::fs::create_dir_all(&dir).with_context(|| {
            format!(
                "creating the cgroup {} (--gateway-quota needs root)",
                dir.display()
            )
        })?;
        let cap = CpuCap { dir };
        for (file, value) in settings {
            std::fs::write(cap.dir.join(file), value)
                .with_context(|| format!("writing {}/{file}", cap.dir.display()))?;
        }
        std::fs::write(cap.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving the gateway into {}", cap.dir.display()))?;
        eprintln!(
            "gateway: capped at {percent}% of one CPU ({})",
            cap.dir.display()
        );
        Ok(cap)
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Soft and hard `Max open files` of a process (`self` or a pid), from `/proc/<pid>/limits`.
fn open_files_limit(pid: &str) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/limits");
    let limits = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .ok_or_else(|| anyhow!("no `Max open files` in {path}"))?;
    let value = |v: Option<&str>| match v {
        Some("unlimited") => Some(u64::MAX),
        Some(v) => v.parse().ok(),
        None => None,
    };
    let mut fields = line.split_whitespace();
    let soft = value(fields.next()).ok_or_else(|| anyhow!("unreadable {path}"))?;
    let hard = value(fields.next()).ok_or_else(|| anyhow!("unreadable {path}"))?;
    Ok((soft, hard))
}

/// Makes sure this process may open `need` files: raises its soft limit to the hard one with
/// `prlimit` when that is enough and the tool exists, else explains what to do.
fn ensure_own_fd_limit(need: u64) -> Result<()> {
    let (soft, hard) = open_files_limit("self")?;
    if soft >= need {
        return Ok(());
    }
    if hard >= need && find_in_path("prlimit").is_some() {
        let status = Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={hard}:{hard}"))
            .status();
        if status.is_ok_and(|s| s.success()) && open_files_limit("self")?.0 >= need {
            eprintln!("load: raised this process's open-files limit from {soft} to {hard}");
            return Ok(());
        }
    }
    bail!(
        "this run needs about {need} open files, but this process may open only {soft} \
         (hard limit {hard}). Run `ulimit -n 65536` in this shell first (as root, or after raising \
         the hard limit, if that is refused), or lower --idle-connections or --hostile-connections."
    )
}

/// Pins every thread of this process, and the threads it starts later, to `cpus`.
fn pin_self(cpus: &str) -> Result<()> {
    if find_in_path("taskset").is_none() {
        eprintln!("load: taskset not found, so --pin-client {cpus} is ignored");
        return Ok(());
    }
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .context("running taskset")?;
    if !status.success() {
        bail!("taskset -a -p -c {cpus} failed ({status})");
    }
    Ok(())
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let nproc = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, m)| m.trim());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "nproc": nproc,
        "cpu_model": model,
        "cpus_available": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "kernel": kernel.trim(),
    })
}

fn params_json(args: &Args, scenarios: &[Scenario]) -> Value {
    let names: Vec<String> = scenarios
        .iter()
        .map(|s| format!("{s:?}").to_lowercase())
        .collect();
    json!({
        "scenarios": names,
        "duration_s": args.duration.as_secs_f64(),
        "warmup_s": args.warmup.as_secs_f64(),
        "rate": args.rate,
        "connections": args.connections,
        "body_size": args.body_size,
        "streams": args.streams,
        "h2_connections": args.h2_connections,
        "flip_rate": args.flip_rate,
        "idle_connections": args.idle_connections,
        "idle_hold_s": args.idle_hold.as_secs_f64(),
        "hostile_duration_s": args.hostile_duration.as_secs_f64(),
        "hostile_connections": args.hostile_connections,
        "hostile_kinds": args.hostile_kinds().iter().map(|k| format!("{k:?}")).collect::<Vec<_>>(),
        "hostile_deadline_s": args.hostile_deadline.as_secs_f64(),
        "flood_duration_s": args.flood_duration.as_secs_f64(),
        "flood_connections": args.flood_connections,
        "gateway_threads": args.gateway_threads,
        "pin_gateway": args.pin_gateway,
        "pin_client": args.pin_client,
        "gateway_quota_percent": args.gateway_quota,
        "outage_at_s": args.outage_at().as_secs_f64(),
        "reload_rules": args.reload_rules,
        "reload_flip_rate": args.reload_flip_rate,
        "reload_rounds": args.reload_rounds,
        "rss_every_s": args.rss_every.map(|d| d.as_secs_f64()),
        "churn_rate": args.churn_rate,
        "churn_endpoints": args.churn_endpoints,
        "drain_delay_s": args.drain_delay.as_secs_f64(),
        "drain_clients": args.drain_clients,
        "drain_new": args.drain_new,
        "client_threads": args.client_threads,
        "upstream_threads": args.upstream_threads,
        "upstreams": args.upstreams.as_ref().map(|u| json!({ "stable": u.stable.to_string(), "canary": u.canary.to_string() })),
        "peers": args.peer.iter().map(|p| json!({ "name": p.name, "addr": p.addr.to_string() })).collect::<Vec<_>>(),
        "gateway_bin": args.gateway_bin.as_ref().map_or(env!("CARGO_BIN_EXE_splitgate").to_string(), |p| p.display().to_string()),
    })
}

/// Now in UTC as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_date(secs / 86_400);
    let time = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        time / 3600,
        time / 60 % 60,
        time % 60
    )
}

/// The Gregorian date `days` after 1970-01-01.
fn civil_date(mut days: u64) -> (u64, u64, u64) {
    let leap = |y: u64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mut year = 1970;
    loop {
        let length = if leap(year) { 366 } else { 365 };
        if days < length {
            break;
        }
        days -= length;
        year += 1;
    }
    let february = if leap(year) { 29 } else { 28 };
    let mut month = 1;
    for length in [31, february, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31] {
        if days < length {
            break;
        }
        days -= length;
        month += 1;
    }
    (year, month, days + 1)
}

fn write_json(path: &Path, doc: &Value) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(doc)? + "\n";
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// ` (first: E)` for a first error, else nothing.
fn first(error: &Option<String>) -> String {
    error
        .as_ref()
        .map(|e| format!(" (first: {e})"))
        .unwrap_or_default()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Report

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

/// One line of the table, and its full detail for the JSON report.
struct Row {
    scenario: &'static str,
    target: String,
    rps: Option<f64>,
    /// p50, p90, p99, p99.9 in µs.
    latency: Option<[i64; 4]>,
    errors: Option<u64>,
    answered: Option<u64>,
    split: String,
    json: Value,
}

impl Row {
    fn from_tally(
        scenario: &'static str,
        target: &str,
        tally: &Tally,
        duration: Duration,
        extra: Value,
    ) -> Row {
        let rps = tally.answered() as f64 / duration.as_secs_f64();
        let [p50, p90, p99, p999] = tally.quantiles();
        let percent = |n: u64| {
            let total = tally.answered();
            if total == 0 {
                0.0
            } else {
                100.0 * n as f64 / total as f64
            }
        };
        let mut json = json!({
            "scenario": scenario,
            "target": target,
            "rps": rps,
            "answered": tally.answered(),
            "latency_us": {
                "p50": p50, "p90": p90, "p99": p99, "p99.9": p999,
                "max": tally.latency.max(), "mean": tally.latency.mean(),
            },
            "errors": {
                "total": tally.errors(),
                "transport": tally.transport,
                "unsent": tally.unsent,
                "status": tally.statuses.iter().map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
                "first_transport_error": tally.first_error,
            },
            "split": {
                "stable": { "count": tally.stable, "percent": percent(tally.stable) },
                "canary": { "count": tally.canary, "percent": percent(tally.canary) },
                "other": tally.other,
            },
        });
        if let (Some(row), Value::Object(extra)) = (json.as_object_mut(), extra) {
            row.extend(extra);
        }
        Row {
            scenario,
            target: target.to_string(),
            rps: Some(rps),
            latency: Some([p50, p90, p99, p999]),
            errors: Some(tally.errors()),
            answered: Some(tally.answered()),
            split: tally.split_text(),
            json,
        }
    }

    fn line(&self) -> String {
        let cell = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        let latency = |i: usize| cell(self.latency.map(|l| l[i].to_string()));
        format!(
            "{:<9} {:<19} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7}  {}",
            self.scenario,
            self.target,
            cell(self.rps.map(|r| format!("{r:.0}"))),
            latency(0),
            latency(1),
            latency(2),
            latency(3),
            cell(self.errors.map(|e| e.to_string())),
            self.split
        )
    }
}

impl Report {
    /// Adds a row, and a note when its run had errors.
    fn push(&mut self, row: Row, tally: &Tally) {
        if let Some(errors) = tally.error_text() {
            self.notes
                .push(format!("{} {}: {errors}", row.scenario, row.target));
        }
        self.rows.push(row);
    }

    fn table(&self) -> String {
        let mut out = format!(
            "{:<9} {:<19} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7}  {}\n",
            "scenario",
            "target",
            "rps",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "p99.9 µs",
            "errors",
            "split"
        );
        for row in &self.rows {
            out.push_str(&row.line());
            out.push('\n');
        }
        for note in &self.notes {
            out.push_str(&format!("* {note}\n"));
        }
        out
    }
}
