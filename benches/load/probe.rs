//! What the edge scenarios (`hostile`, `h2flood`) read while they run: the gateway's memory and
//! CPU from `/proc/<pid>`, loopback TCP sockets by state from `/proc/net/tcp`, and the gateway's
//! closed-connection counters from its metrics port. Also a thread of their own for attackers,
//! and the spread of how long connections lived.

use super::{call, get_request, Gateway, LATENCY_MAX_US};
use anyhow::{anyhow, Context, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
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

/// User plus system CPU time the process `pid` (or `self`) has used, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: &str) -> Result<Duration> {
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

/// The sockets a [`Sampler`] counts: those on the gateway's listening port and the two
/// upstreams' ports, and the gateway process, whose own connections to the upstreams are told
/// apart by their inodes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ports {
    pub gateway: u16,
    pub upstreams: [u16; 2],
    pub gateway_pid: u32,
}

/// One read of the loopback TCP sockets on [`Ports`].
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Sockets {
    /// TIME_WAIT with either end on the gateway's port: its clients' connections.
    pub time_wait_gateway: u64,
    /// TIME_WAIT with either end on an upstream's port: the gateway's upstream connections.
    pub time_wait_upstreams: u64,
    /// The gateway's ESTABLISHED connections to each upstream: sockets it held open when the
    /// read began (its descriptors are listed first) and still established when the table was
    /// read. Sockets opened while the table is read are not counted, so under churn the count
    /// stays at or below what was open at once; it is read at the gateway's end, which knows of
    /// a close at once, however late the upstream notices it.
    pub to_upstream: [u64; 2],
}

/// Counts the sockets on `ports` in `/proc/net/tcp` (and `tcp6`); unreadable tables count as
/// empty. The kernel writes the table a page at a time, so a socket may be listed twice while
/// sockets come and go: each is counted once, by its two ends.
pub(super) fn sockets(ports: Ports) -> Sockets {
    let mut count = Sockets::default();
    let owned = socket_inodes(ports.gateway_pid);
    let mut seen = HashSet::new();
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(table) = std::fs::read_to_string(path) else {
            continue;
        };
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().take(10).collect();
            // sl, local, remote, state, queues, timer, retransmits, uid, timeout, inode
            let [_, local, remote, state, _, _, _, _, _, inode] = fields[..] else {
                continue;
            };
            let port = |end: &str| {
                end.rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            };
            if !seen.insert((local.to_string(), remote.to_string())) {
                continue;
            }
            let (local, remote) = (port(local), port(remote));
            let on = |p: u16| local == Some(p) || remote == Some(p);
            match state {
                TIME_WAIT if on(ports.gateway) => count.time_wait_gateway += 1,
                TIME_WAIT if ports.upstreams.iter().any(|p| on(*p)) => {
                    count.time_wait_upstreams += 1
                }
                ESTABLISHED if inode.parse().is_ok_and(|i: u64| owned.contains(&i)) => {
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

/// The inodes of the sockets process `pid` holds open, from `/proc/<pid>/fd`.
fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy();
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
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

/// Runs `work` on a thread with a current-thread runtime of its own, at the lowest priority
/// (nice 19): the attackers then take the CPU the load generator and the upstreams leave, and
/// are neither tasks queued in front of their requests nor a thread that delays their wake-ups.
/// The attackers stand for other machines; on this one they share a core with the measuring
/// side, which must not starve. Returns its output and what the thread ran and waited.
pub(super) async fn on_own_thread<F, T>(name: &str, work: F) -> Result<(T, Sched)>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            lowest_priority();
            let before = sched("/proc/thread-self/schedstat");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let output = runtime.map(|rt| rt.block_on(work));
            let used = sched("/proc/thread-self/schedstat").minus(before);
            let _ = done.send(output.map(|o| (o, used)));
        })
        .with_context(|| format!("starting the {name} thread"))?;
    result
        .await
        .with_context(|| format!("the {name} thread panicked"))?
        .with_context(|| format!("starting the {name} runtime"))
}

/// The send buffer of an attacker's socket. The kernel's default grows to megabytes on
/// loopback: an attacker would then copy megabytes the gateway never reads (it closes first),
/// spending the CPU the legitimate clients share with it. With a small buffer the gateway's
/// reading sets the pace, as it would over a network.
const ATTACKER_SEND_BUFFER: u32 = 64 * 1024;

/// The address attackers connect from (`--attacker-source`).
static ATTACKER_SOURCE: std::sync::OnceLock<std::net::IpAddr> = std::sync::OnceLock::new();

/// Sets the attackers' source address, once.
pub(super) fn set_attacker_source(ip: std::net::IpAddr) {
    let _ = ATTACKER_SOURCE.set(ip);
}

/// Connects as an attacker: from the attackers' address, with a small send buffer.
pub(super) async fn connect_attacker(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_send_buffer_size(ATTACKER_SEND_BUFFER)?;
    if let Some(ip) = ATTACKER_SOURCE
        .get()
        .filter(|ip| ip.is_ipv4() == addr.is_ipv4())
    {
        socket.bind(SocketAddr::new(*ip, 0))?;
    }
    socket.connect(addr).await
}

/// Moves the calling thread to nice 19 with `renice` (Linux keeps a nice value per thread);
/// says so when it cannot.
fn lowest_priority() {
    let tid = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()));
    let reniced = tid.is_some_and(|tid| {
        std::process::Command::new("renice")
            .args(["-n", "19", "-p", &tid])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !reniced {
        eprintln!("load: could not renice the attackers' thread; they compete with the clients");
    }
}

/// Time a thread (or, summed, a process's threads) ran on a CPU, and was runnable but waited
/// for one: from `schedstat`, which the kernel keeps per thread.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Sched {
    pub ran: Duration,
    pub waited: Duration,
}

impl Sched {
    fn minus(self, earlier: Sched) -> Sched {
        Sched {
            ran: self.ran.saturating_sub(earlier.ran),
            waited: self.waited.saturating_sub(earlier.waited),
        }
    }

    fn plus(self, other: Sched) -> Sched {
        Sched {
            ran: self.ran + other.ran,
            waited: self.waited + other.waited,
        }
    }
}

/// One `schedstat` file; zero when unreadable.
fn sched(path: &str) -> Sched {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut ns = text
        .split_whitespace()
        .map(|v| Duration::from_nanos(v.parse().unwrap_or(0)));
    Sched {
        ran: ns.next().unwrap_or_default(),
        waited: ns.next().unwrap_or_default(),
    }
}

/// Every live thread of process `pid` (`self` for this one), by thread id.
fn threads(pid: &str) -> BTreeMap<String, Sched> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return BTreeMap::new();
    };
    dir.filter_map(|e| e.ok())
        .map(|e| {
            let tid = e.file_name().to_string_lossy().into_owned();
            let stat = sched(&format!("/proc/{pid}/task/{tid}/schedstat"));
            (tid, stat)
        })
        .collect()
}

/// The machine-wide TCP counters of a listener that accepts too slowly: connections dropped
/// because an accept queue was full, and SYNs sent again (a client whose SYN was dropped
/// waits 1 s, then 3 s, before it tries again).
#[derive(Clone, Copy, Debug, Default)]
struct Net {
    listen_overflows: u64,
    syn_retransmits: u64,
}

fn net() -> Net {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let mut out = Net::default();
    if let [names, values] = lines[..] {
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            match name {
                "ListenOverflows" => out.listen_overflows = value.parse().unwrap_or(0),
                "TCPSynRetrans" => out.syn_retransmits = value.parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    out
}

/// Who had the CPUs during an attack: the gateway, this process (client, upstreams, and the
/// attackers' thread, which reports its own), what they waited for a CPU, the machine's load
/// and its accept-queue overflows. On a shared machine this tells a slow gateway from a busy
/// machine.
pub(super) struct Watch {
    at: Instant,
    pid: u32,
    gateway_cpu: Duration,
    gateway: BTreeMap<String, Sched>,
    own: BTreeMap<String, Sched>,
    own_cpu: Duration,
    net: Net,
    load: String,
}

/// What a [`Watch`] saw, as shares of the wall time (1.0: one CPU's worth).
pub(super) struct Watched {
    pub elapsed: Duration,
    /// utime + stime from `/proc/<pid>/stat`.
    pub gateway_cpu: f64,
    pub gateway_waited: f64,
    pub own_cpu: f64,
    pub own_waited: f64,
    /// The attackers' thread alone (part of `own_cpu`).
    pub attackers_cpu: f64,
    pub listen_overflows: u64,
    pub syn_retransmits: u64,
    /// `/proc/loadavg`'s first three fields at the start.
    pub load: String,
}

impl Watch {
    pub(super) fn start(pid: u32) -> Result<Watch> {
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        Ok(Watch {
            at: Instant::now(),
            pid,
            gateway_cpu: cpu_time(&pid.to_string())?,
            gateway: threads(&pid.to_string()),
            own: threads("self"),
            own_cpu: cpu_time("self")?,
            net: net(),
            load: load
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        })
    }

    /// Ends the watch; `attackers` is what the attackers' thread ran and waited.
    pub(super) fn stop(self, attackers: Sched) -> Result<Watched> {
        let elapsed = self.at.elapsed();
        let delta = |before: &BTreeMap<String, Sched>, now: BTreeMap<String, Sched>| {
            now.into_iter()
                .map(|(tid, s)| s.minus(before.get(&tid).copied().unwrap_or_default()))
                .fold(Sched::default(), Sched::plus)
        };
        let gateway = delta(&self.gateway, threads(&self.pid.to_string()));
        let own = delta(&self.own, threads("self")).plus(attackers);
        let share = |d: Duration| d.as_secs_f64() / elapsed.as_secs_f64();
        let net = net();
        Ok(Watched {
            elapsed,
            gateway_cpu: share(cpu_time(&self.pid.to_string())?.saturating_sub(self.gateway_cpu)),
            gateway_waited: share(gateway.waited),
            own_cpu: share(cpu_time("self")?.saturating_sub(self.own_cpu)),
            own_waited: share(own.waited),
            attackers_cpu: share(attackers.ran),
            listen_overflows: net
                .listen_overflows
                .saturating_sub(self.net.listen_overflows),
            syn_retransmits: net.syn_retransmits.saturating_sub(self.net.syn_retransmits),
            load: self.load,
        })
    }
}

impl Watched {
    /// One line for the notes.
    pub(super) fn text(&self) -> String {
        format!(
            "over {:.1} s the gateway used {:.2} of a core and waited for one {:.2} of the time; \
             this process (clients, upstreams, attackers) used {:.2} (the attackers {:.2}) and \
             its threads waited {:.2}; the machine's load average was {} at the start; {} \
             connections were dropped at a full accept queue on the machine, {} SYNs sent again",
            self.elapsed.as_secs_f64(),
            self.gateway_cpu,
            self.gateway_waited,
            self.own_cpu,
            self.attackers_cpu,
            self.own_waited,
            self.load,
            self.listen_overflows,
            self.syn_retransmits
        )
    }

    pub(super) fn json(&self) -> Value {
        json!({
            "elapsed_s": self.elapsed.as_secs_f64(),
            "gateway_cpu_share": self.gateway_cpu,
            "gateway_waited_share": self.gateway_waited,
            "own_cpu_share": self.own_cpu,
            "own_waited_share": self.own_waited,
            "attackers_cpu_share": self.attackers_cpu,
            "load_average": self.load,
            "listen_overflows": self.listen_overflows,
            "syn_retransmits": self.syn_retransmits,
        })
    }
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
