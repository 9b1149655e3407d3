//! What the edge scenarios (`hostile`, `h2flood`) read while they run: the gateway's memory and
//! CPU from `/proc/<pid>`, loopback TCP sockets by state from `/proc/net/tcp`, and the gateway's
//! closed-connection counters from its metrics port. Also a thread of their own for attackers,
//! and the spread of how long connections lived.

use super::{call, get_request, Gateway, LATENCY_MAX_US};
use anyhow::{anyhow, Context, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::task::JoinHandle;

/// How often the gateway's RSS (and, when asked, its sockets) is read.
const EVERY: Duration = Duration::from_millis(100);
/// Socket counts are kept at every this many reads (once a second).
const KEEP_EVERY: u32 = 10;
/// The states `/proc/net/tcp` gives a socket.
const ESTABLISHED: &str = "01";
const TIME_WAIT: &str = "06";
/// The metric the gateway counts its closes at a limit in.
const CLOSED_METRIC: &str = "splitgate_downstream_connections_closed_total";

/// Reads the gateway's RSS every 100 ms, and its sockets too when given their ports, until
/// [`Sampler::stop`].
pub(super) struct Sampler {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Samples>,
}

/// What a [`Sampler`] saw.
pub(super) struct Samples {
    /// Highest VmRSS read, KiB.
    pub peak_rss_kib: u64,
    pub rss_reads: u64,
    /// The sockets once a second.
    pub sockets: Vec<Sockets>,
    /// The most connections to each upstream seen in any read (every 100 ms).
    pub peak_to_upstream: [u64; 2],
}

impl Sampler {
    /// Starts sampling the process `pid`, and the sockets on `ports` when given.
    pub(super) fn start(pid: u32, ports: Option<Ports>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(sample(pid, ports, stop.clone()));
        Sampler { stop, task }
    }

    pub(super) async fn stop(self) -> Result<Samples> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.context("the sampler panicked")
    }
}

async fn sample(pid: u32, ports: Option<Ports>, stop: Arc<AtomicBool>) -> Samples {
    let mut samples = Samples {
        peak_rss_kib: 0,
        rss_reads: 0,
        sockets: Vec::new(),
        peak_to_upstream: [0; 2],
    };
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u32.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        tick.tick().await;
        if let Ok(kib) = vm_rss_kib(pid) {
            samples.peak_rss_kib = samples.peak_rss_kib.max(kib);
            samples.rss_reads += 1;
        }
        if let Some(ports) = ports {
            let now = sockets(ports);
            for (peak, seen) in samples.peak_to_upstream.iter_mut().zip(now.to_upstream) {
                *peak = (*peak).max(seen);
            }
            if n % KEEP_EVERY == 0 {
                samples.sockets.push(now);
            }
        }
    }
    samples
}

fn vm_rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in {path}"))
}

/// User plus system CPU time the process `pid` has used, from `/proc/<pid>/stat`.
pub(super) fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces; the fields after it start at field 3.
    let (_, rest) = stat
        .rsplit_once(')')
        .ok_or_else(|| anyhow!("unreadable {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        let field = fields.get(i).ok_or_else(|| anyhow!("short {path}"))?;
        field
            .parse()
            .with_context(|| format!("field {} of {path}", i + 3))
    };
    // utime and stime are fields 14 and 15.
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_secs_f64(total as f64 / clock_ticks()))
}

/// Clock ticks per second (`getconf CLK_TCK`, which is 100 on Linux nearly everywhere).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|t: &f64| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// The ports whose sockets a [`Sampler`] counts: the gateway's listener and the two upstreams.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ports {
    pub gateway: u16,
    pub upstreams: [u16; 2],
}

/// One read of the loopback TCP sockets on [`Ports`].
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Sockets {
    /// TIME_WAIT with either end on the gateway's port: its clients' connections.
    pub time_wait_gateway: u64,
    /// TIME_WAIT with either end on an upstream's port: the gateway's upstream connections.
    pub time_wait_upstreams: u64,
    /// ESTABLISHED connections to each upstream, counted at their connecting end (so once
    /// each, and closed as soon as the gateway closes them, however late the upstream notices).
    pub to_upstream: [u64; 2],
}

/// Counts the sockets on `ports` in `/proc/net/tcp` (and `tcp6`); unreadable tables count as
/// empty.
pub(super) fn sockets(ports: Ports) -> Sockets {
    let mut count = Sockets::default();
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(table) = std::fs::read_to_string(path) else {
            continue;
        };
        for line in table.lines().skip(1) {
            let mut fields = line.split_whitespace().skip(1);
            let (Some(local), Some(remote), Some(state)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let port = |end: &str| {
                end.rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            };
            let (local, remote) = (port(local), port(remote));
            let on = |p: u16| local == Some(p) || remote == Some(p);
            match state {
                TIME_WAIT if on(ports.gateway) => count.time_wait_gateway += 1,
                TIME_WAIT if ports.upstreams.iter().any(|p| on(*p)) => {
                    count.time_wait_upstreams += 1
                }
                ESTABLISHED => {
                    for (n, p) in count.to_upstream.iter_mut().zip(ports.upstreams) {
                        *n += u64::from(remote == Some(p));
                    }
                }
                _ => {}
            }
        }
    }
    count
}

/// The gateway's `splitgate_downstream_connections_closed_total` sample lines.
pub(super) async fn closed_lines(gw: &Gateway) -> Result<Vec<String>> {
    let req = get_request(gw.metrics, "/metrics", &[])?;
    let (_, body) = call(&mut None, gw.metrics, req).await?;
    Ok(String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with(CLOSED_METRIC))
        .map(str::to_string)
        .collect())
}

/// Runs `work` on a thread with a current-thread runtime of its own: the attackers then compete
/// with the load generator for the CPU as one more thread, not as hundreds of tasks queued in
/// front of its requests.
pub(super) async fn on_own_thread<F, T>(name: &str, work: F) -> Result<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let _ = done.send(runtime.map(|rt| rt.block_on(work)));
        })
        .with_context(|| format!("starting the {name} thread"))?;
    result
        .await
        .with_context(|| format!("the {name} thread panicked"))?
        .with_context(|| format!("starting the {name} runtime"))
}

/// How long connections lived, in µs: up to a minute.
pub(super) fn lifetimes() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("constant histogram bounds are valid")
}

/// Records `d` in a [`lifetimes`] histogram.
pub(super) fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    h.saturating_record(us.max(1));
}

/// `min / median / max` of a [`lifetimes`] histogram in `unit` (`s` or `ms`), or `-` when empty.
pub(super) fn spread_text(h: &Histogram<u64>, unit: &str) -> String {
    if h.is_empty() {
        return "-".into();
    }
    let (scale, digits) = if unit == "s" { (1e6, 2) } else { (1e3, 1) };
    let v = |us: u64| format!("{:.digits$}", us as f64 / scale);
    format!(
        "{} / {} / {} {unit}",
        v(h.min()),
        v(h.value_at_quantile(0.5)),
        v(h.max())
    )
}

/// The spread of a [`lifetimes`] histogram for the JSON report, in ms.
pub(super) fn spread_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    let ms = |us: u64| us as f64 / 1e3;
    json!({
        "count": h.len(),
        "min_ms": ms(h.min()),
        "median_ms": ms(h.value_at_quantile(0.5)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
    })
}

/// `yes` or `NO`, for the goal lines.
pub(super) fn met(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "NO"
    }
}
