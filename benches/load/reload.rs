//! `reload`: weight changes while the route holds many regex rules. The issue's goal: "100
//! weight changes per second with 1,000 regex rules loaded: no request's latency grows by more
//! than 1 ms."
//!
//! A fresh gateway's route `bench` has, between `canary-by-header` and the weighted rule
//! `primary`, `--reload-rules` (1000) rules `r0`, `r1`, … that send to canary. Each matches a
//! regex of its own, which every bench request is tested against and fails: the even ones on
//! the path (`/r<i>/[a-z0-9]{1,32}/(x|y|z)+`), the odd ones on the authority
//! (`r<i>-[a-z0-9]{1,16}\.(bench|shop)\.example\.com(:[0-9]+)?`). Before measuring, requests that
//! match the first and the last two of them must come from canary, so the rules are known to
//! be loaded.
//!
//! Then `--reload-rounds` (5) pairs of open-loop runs (as `open`: `--rate`, default 5000/s, over
//! `--connections`) on that gateway, interleaved: one without changes, then one while
//! `primary`'s weights flip between 90/10 and 10/90 `--reload-flip-rate` (100) times a second
//! through the admin API, one call at a time. This machine's own stalls reach tens of
//! milliseconds at p99.9, so one pair cannot tell 1 ms; the report compares the median of each
//! kind, and reads from the gateway's `splitgate_config_compile_seconds` how long each change
//! held the thread that also serves requests, which bounds what a change can add to a request
//! queued behind it. Goal: medians of p50, p99, p99.9 and max grow at most 1 ms, no change
//! holds the thread over 1 ms, and no request fails or goes unsent.

use super::probe::{cpu_time, met};
use super::{
    call, first, flip_weights, get_request, latency_json, open_loop, put_weights, Args, Gateway,
    Proto, Report, Row, Target, Tweaks, UpstreamAddrs,
};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::HOST;
use hyper::{Request, StatusCode};
use serde_json::json;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The open loop's rate without `--rate`.
const DEFAULT_RATE: f64 = 5000.0;
/// The most a request's latency may grow, µs.
const GOAL_GROWTH_US: i64 = 1000;

/// The YAML of `n` regex rules for the route's `http:` list.
fn regex_rules(n: usize) -> String {
    let mut yaml = String::new();
    for i in 0..n {
        let condition = if i % 2 == 0 {
            format!(r#"uri: {{ regex: "/r{i}/[a-z0-9]{{1,32}}/(x|y|z)+" }}"#)
        } else {
            format!(
                r#"authority: {{ regex: "r{i}-[a-z0-9]{{1,16}}\\.(bench|shop)\\.example\\.com(:[0-9]+)?" }}"#
            )
        };
        let _ = write!(
            yaml,
            "      - name: r{i}\n        match:\n          - {condition}\n        route:\n          \
             - destination: {{ service: bench, subset: canary }}\n"
        );
    }
    yaml
}

/// A request that matches rule `i` and no rule before it: its path or its authority.
fn matching(i: usize) -> (String, String) {
    if i % 2 == 0 {
        (format!("/r{i}/abc123/xyz"), super::HOST_NAME.to_string())
    } else {
        ("/".to_string(), format!("r{i}-abc.shop.example.com"))
    }
}

/// Requests that only the first and the last two extra rules match get canary's answer.
async fn check_rules(gw: &Gateway, n: usize) -> Result<()> {
    let mut conn = None;
    let mut picks = vec![0, 1, n.saturating_sub(2), n.saturating_sub(1)];
    picks.retain(|&i| i < n);
    picks.dedup();
    for i in picks {
        let (path, host) = matching(i);
        let req = Request::get(path.as_str())
            .header(HOST, host.as_str())
            .body(Full::<Bytes>::default())?;
        let (status, body) = call(&mut conn, gw.listen, req).await?;
        if status != StatusCode::OK || !body.starts_with(b"canary") {
            bail!(
                "reload: a request for rule r{i} ({host}{path}) got {status} {:?}, not canary's \
                 answer: are the rules loaded?",
                String::from_utf8_lossy(&body[..body.len().min(16)])
            );
        }
    }
    Ok(())
}

/// One measured run.
struct Run {
    name: String,
    /// p50, p99, p99.9 and max, µs.
    four: [i64; 4],
    cpu: f64,
    errors: u64,
    answered: u64,
}

/// The gateway's `splitgate_config_compile_seconds`: the count, the sum and the cumulative
/// buckets by upper bound. A weight change through the API is timed there from the moment it
/// holds the state lock to the moment the new snapshot is live, all of it on the thread that
/// took the admin call, which is the thread that also serves requests.
#[derive(Default)]
struct CompileTimes {
    count: f64,
    sum: f64,
    buckets: Vec<(f64, f64)>,
}

impl CompileTimes {
    async fn scrape(gw: &Gateway) -> Result<CompileTimes> {
        let req = get_request(gw.metrics, "/metrics", &[])?;
        let (status, body) = call(&mut None, gw.metrics, req).await?;
        if status != StatusCode::OK {
            bail!("the metrics endpoint answered {status}");
        }
        let mut t = CompileTimes::default();
        for line in String::from_utf8_lossy(&body).lines() {
            let Some(rest) = line.strip_prefix("splitgate_config_compile_seconds") else {
                continue;
            };
            let value = || -> Result<f64> {
                line.split_whitespace()
                    .last()
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("unreadable metrics line {line:?}"))
            };
            if rest.starts_with("_count") {
                t.count = value()?;
            } else if rest.starts_with("_sum") {
                t.sum = value()?;
            } else if let Some(le) = rest.strip_prefix("_bucket{le=\"") {
                let le = le.split('"').next().unwrap_or_default();
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().with_context(|| format!("bucket bound {le:?}"))?
                };
                t.buckets.push((bound, value()?));
            }
        }
        if t.buckets.is_empty() {
            bail!("the gateway reports no splitgate_config_compile_seconds");
        }
        Ok(t)
    }

    /// What happened between `self` and `later`: (changes, mean µs, the bucket bound that
    /// holds 99% of them in µs, and the bound of the slowest one's bucket in µs).
    fn since(&self, later: &CompileTimes) -> (u64, f64, f64, f64) {
        let n = later.count - self.count;
        let mean = if n > 0.0 {
            1e6 * (later.sum - self.sum) / n
        } else {
            0.0
        };
        let deltas: Vec<(f64, f64)> = later
            .buckets
            .iter()
            .map(|&(le, c)| {
                let before = self.buckets.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
                (le, c - before)
            })
            .collect();
        let bound = |share: f64| {
            if n <= 0.0 {
                return 0.0;
            }
            deltas
                .iter()
                .find(|(_, c)| *c >= share * n)
                .map_or(f64::INFINITY, |(le, _)| 1e6 * le)
        };
        (n as u64, mean, bound(0.99), bound(1.0))
    }
}

/// The median of `runs`' `i`-th latency figure.
fn median(runs: &[&Run], i: usize) -> i64 {
    let mut v: Vec<i64> = runs.iter().map(|r| r.four[i]).collect();
    v.sort_unstable();
    let m = v.len() / 2;
    if v.len() % 2 == 0 {
        (v[m - 1] + v[m]) / 2
    } else {
        v[m]
    }
}

pub async fn run(args: &Args, upstreams: &UpstreamAddrs, report: &mut Report) -> Result<()> {
    let n = args.reload_rules;
    let tweaks = Tweaks {
        extra_rules: Some(regex_rules(n)),
        ..Tweaks::default()
    };
    let gw = Gateway::start(args, upstreams, &tweaks).await?;
    check_rules(&gw, n).await?;
    let rate = args.rate.map_or(DEFAULT_RATE, |r| r as f64);
    let target = Target::gateway(gw.listen, Proto::H1);
    let pid = gw.pid.to_string();

    let mut quiet = Vec::new();
    let mut changing = Vec::new();
    let mut serving_thread = Vec::new();
    for round in 1..=args.reload_rounds {
        for (flipping, flip_rate) in [(false, 0.0), (true, args.reload_flip_rate)] {
            let name = if flipping {
                format!("{flip_rate} changes/s #{round}")
            } else {
                format!("no changes #{round}")
            };
            let compile_before = CompileTimes::scrape(&gw).await?;
            let stop = Arc::new(AtomicBool::new(false));
            let flipper = tokio::spawn(flip_weights(gw.admin, flip_rate, stop.clone()));
            let cpu_before = cpu_time(&pid)?;
            let started = Instant::now();
            let label = format!("reload {rate}/s, {n} rules, {name}");
            let tally = open_loop(&label, &target, args.connections, rate, args.timing()).await;
            stop.store(true, Ordering::Relaxed);
            let flips = flipper.await.context("the weight flipper panicked")?;
            if flipping {
                // The next run without changes starts from the config's weights.
                put_weights(&mut None, gw.admin, 90, 10)
                    .await
                    .context("setting the weights back to 90/10 after a run")?;
            }
            let cpu = cpu_time(&pid)?.saturating_sub(cpu_before).as_secs_f64()
                / started.elapsed().as_secs_f64();
            let tally = tally?;
            gw.check_alive()?;
            let (changes, mean_us, p99_us, max_us) =
                compile_before.since(&CompileTimes::scrape(&gw).await?);
            let seconds = flips.elapsed.as_secs_f64().max(1e-9);
            let extra = json!({
                "rate": rate,
                "rules": n,
                "round": round,
                "flip_rate": flip_rate,
                "admin_ok": flips.ok,
                "admin_failed": flips.failed,
                "admin_ok_per_s": flips.ok as f64 / seconds,
                "admin_first_failure": flips.first_failure,
                "admin_latency_us": latency_json(&flips.latency),
                "gateway_cpu_share": cpu,
                "gateway_change_us": {
                    "changes": changes, "mean": mean_us,
                    "p99_at_most": p99_us, "max_at_most": max_us,
                },
            });
            if flipping {
                let h = &flips.latency;
                report.notes.push(format!(
                    "reload, {name}: {} weight changes applied ({:.1}/s over {seconds:.1} s), {} \
                     failed{}; admin call latency p50 {} µs, p99 {} µs, max {} µs; on the \
                     gateway's serving thread a change took {mean_us:.0} µs on average, 99% \
                     within {p99_us:.0} µs, all within {max_us:.0} µs",
                    flips.ok,
                    flips.ok as f64 / seconds,
                    flips.failed,
                    first(&flips.first_failure),
                    h.value_at_quantile(0.5),
                    h.value_at_quantile(0.99),
                    h.max()
                ));
                serving_thread.push(max_us);
            }
            let four = [
                tally.latency.value_at_quantile(0.5) as i64,
                tally.latency.value_at_quantile(0.99) as i64,
                tally.latency.value_at_quantile(0.999) as i64,
                tally.latency.max() as i64,
            ];
            let row = Row::from_tally("reload", &name, &tally, args.duration, extra);
            let run = Run {
                name,
                four,
                cpu,
                errors: tally.errors(),
                answered: tally.answered(),
            };
            if flipping {
                changing.push(run);
            } else {
                quiet.push(run);
            }
            report.push(row, &tally);
        }
    }
    gw.note_log(report);

    let quiet: Vec<&Run> = quiet.iter().collect();
    let changing: Vec<&Run> = changing.iter().collect();
    let base: [i64; 4] = std::array::from_fn(|i| median(&quiet, i));
    let with: [i64; 4] = std::array::from_fn(|i| median(&changing, i));
    let growth: [i64; 4] = std::array::from_fn(|i| with[i] - base[i]);
    // How far runs with no change at all differ among themselves: the resolution this machine
    // gives the growth above.
    let spread: [i64; 4] = std::array::from_fn(|i| {
        let v = quiet.iter().map(|r| r.four[i]);
        v.clone().max().unwrap_or(0) - v.min().unwrap_or(0)
    });
    let errors: u64 = changing.iter().chain(&quiet).map(|r| r.errors).sum();
    let answered = changing.iter().all(|r| r.answered > 0);
    let slowest_change = serving_thread.iter().copied().fold(0.0, f64::max);
    let within = growth.iter().all(|&g| g <= GOAL_GROWTH_US)
        && errors == 0
        && answered
        && slowest_change <= GOAL_GROWTH_US as f64;
    let rounds = args.reload_rounds;
    report.rows.push(Row {
        scenario: "reload",
        target: "added".into(),
        rps: None,
        latency: None,
        errors: None,
        answered: None,
        split: format!("median of {rounds} with changes minus median of {rounds} without"),
        json: json!({
            "scenario": "reload",
            "target": "added",
            "rate": rate,
            "rules": n,
            "rounds": rounds,
            "added_latency_us": {
                "p50": growth[0], "p99": growth[1], "p99.9": growth[2], "max": growth[3],
            },
            "quiet_spread_us": {
                "p50": spread[0], "p99": spread[1], "p99.9": spread[2], "max": spread[3],
            },
            "slowest_change_at_most_us": slowest_change,
            "goal_us": GOAL_GROWTH_US,
            "goal_met": within,
        }),
    });
    let each = |runs: &[&Run]| {
        runs.iter()
            .map(|r| {
                format!(
                    "{}: {}/{}/{}/{} µs, {} errors, CPU {:.2}",
                    r.name, r.four[0], r.four[1], r.four[2], r.four[3], r.errors, r.cpu
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    report.notes.push(format!(
        "reload: {rate}/s with {n} regex rules, {rounds} rounds; p50/p99/p99.9/max by run: {}; {}. \
         Medians {}/{}/{}/{} µs without changes and {}/{}/{}/{} µs with: growth \
         {:+}/{:+}/{:+}/{:+} µs (the runs without changes differ among themselves by up to \
         {}/{}/{}/{} µs); the slowest change held the serving thread at most \
         {slowest_change:.0} µs (goal: growth and slowest change at most {GOAL_GROWTH_US} µs, \
         and no error): {}",
        each(&quiet),
        each(&changing),
        base[0],
        base[1],
        base[2],
        base[3],
        with[0],
        with[1],
        with[2],
        with[3],
        growth[0],
        growth[1],
        growth[2],
        growth[3],
        spread[0],
        spread[1],
        spread[2],
        spread[3],
        met(within),
    ));
    Ok(())
}
