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
//! Then two open-loop runs (as `open`: `--rate`, default 5000/s, over `--connections`) on that
//! gateway: without changes, then while `primary`'s weights flip between 90/10 and 10/90
//! `--reload-flip-rate` (100) times a second through the admin API, one call at a time. The
//! report gives both runs' latency, the growth of p50, p99, p99.9 and max (goal: at most 1 ms
//! each, and no failed or unsent request), the admin calls' latency and rate, and the gateway's
//! CPU in each run. The `added` row is the second run's p50, p90, p99 and p99.9 minus the first's.

use super::probe::{cpu_time, met};
use super::{
    call, first, flip_weights, latency_json, open_loop, put_weights, Args, Gateway, Proto, Report,
    Row, Target, Tweaks, UpstreamAddrs,
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

    let mut runs = Vec::new();
    for flip_rate in [0.0, args.reload_flip_rate] {
        let name = if flip_rate > 0.0 {
            format!("{flip_rate} changes/s")
        } else {
            "no changes".to_string()
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flipper = tokio::spawn(flip_weights(gw.admin, flip_rate, stop.clone()));
        let cpu_before = cpu_time(&pid)?;
        let started = Instant::now();
        let label = format!("reload {rate}/s, {n} rules, {name}");
        let tally = open_loop(&label, &target, args.connections, rate, args.timing()).await;
        stop.store(true, Ordering::Relaxed);
        let flips = flipper.await.context("the weight flipper panicked")?;
        let cpu = cpu_time(&pid)?.saturating_sub(cpu_before).as_secs_f64()
            / started.elapsed().as_secs_f64();
        let tally = tally?;
        gw.check_alive()?;
        let seconds = flips.elapsed.as_secs_f64().max(1e-9);
        let extra = json!({
            "rate": rate,
            "rules": n,
            "flip_rate": flip_rate,
            "admin_ok": flips.ok,
            "admin_failed": flips.failed,
            "admin_ok_per_s": flips.ok as f64 / seconds,
            "admin_first_failure": flips.first_failure,
            "admin_latency_us": latency_json(&flips.latency),
            "gateway_cpu_share": cpu,
        });
        if flip_rate > 0.0 {
            let h = &flips.latency;
            report.notes.push(format!(
                "reload, {name}: {} weight changes applied ({:.1}/s over {seconds:.1} s), {} \
                 failed{}; admin call latency p50 {} µs, p99 {} µs, max {} µs",
                flips.ok,
                flips.ok as f64 / seconds,
                flips.failed,
                first(&flips.first_failure),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.max()
            ));
        }
        let row = Row::from_tally("reload", &name, &tally, args.duration, extra);
        let latency = [0.5, 0.99, 0.999].map(|q| tally.latency.value_at_quantile(q) as i64);
        let four = [
            latency[0],
            latency[1],
            latency[2],
            tally.latency.max() as i64,
        ];
        runs.push((
            name,
            four,
            row.latency,
            cpu,
            tally.errors(),
            tally.answered(),
        ));
        report.push(row, &tally);
    }
    // Leave the route as the config has it.
    put_weights(&mut None, gw.admin, 90, 10)
        .await
        .context("setting the weights back to 90/10 after reload")?;
    gw.note_log(report);

    let (base_name, base, base_row, base_cpu, base_errors, _) = &runs[0];
    let (name, with, with_row, cpu, errors, answered) = &runs[1];
    let growth: [i64; 4] = std::array::from_fn(|i| with[i] - base[i]);
    // A request that failed or was never sent grew without bound.
    let added = match (base_row, with_row) {
        (Some(b), Some(w)) => Some(std::array::from_fn(|i| w[i] - b[i])),
        _ => None,
    };
    let within = growth.iter().all(|&g| g <= GOAL_GROWTH_US) && *errors == 0 && *answered > 0;
    report.rows.push(Row {
        scenario: "reload",
        target: "added".into(),
        rps: None,
        latency: added,
        errors: None,
        answered: None,
        split: format!("{name} minus {base_name}"),
        json: json!({
            "scenario": "reload",
            "target": "added",
            "rate": rate,
            "rules": n,
            "added_latency_us": {
                "p50": growth[0], "p99": growth[1], "p99.9": growth[2], "max": growth[3],
            },
            "goal_us": GOAL_GROWTH_US,
            "goal_met": within,
        }),
    });
    report.notes.push(format!(
        "reload: {rate}/s with {n} regex rules; latency p50/p99/p99.9/max {}/{}/{}/{} µs with \
         {base_name} ({base_errors} errors), {}/{}/{}/{} µs with {name} ({errors} errors): growth \
         {:+}/{:+}/{:+}/{:+} µs (goal: at most +{GOAL_GROWTH_US} µs, max included, and no \
         error): {}; gateway CPU {base_cpu:.2} and {cpu:.2} of a core ({:.1} and {:.1} µs per \
         request due)",
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
        met(within),
        1e6 * base_cpu / rate,
        1e6 * cpu / rate,
    ));
    Ok(())
}
