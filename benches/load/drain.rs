//! `drain`: a gateway rolled under load. A fresh gateway with `drain.delay` of `--drain-delay`
//! (5 s, its default) serves `--drain-clients` (32) keep-alive connections in a closed loop and,
//! beside them, `--drain-new` (4) clients that open a new connection for every request (as
//! clients do that the Service keeps sending to a terminating pod for a moment). Two seconds
//! into the measured part it gets SIGTERM.
//!
//! Requests are counted in two phases: before the signal, and during the drain delay (up to
//! half a second before it ends, when the listeners close). The goal is zero refused
//! connections and zero failed requests in both. Then the report gives how long the gateway
//! took to exit after the signal and its exit code.

use super::{attempt, Args, Gateway, Proto, Report, Row, Tally, Target, Tweaks, UpstreamAddrs};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::time::{Duration, Instant};

/// The part of the run before the signal.
const BEFORE: Duration = Duration::from_secs(2);
/// The end of the drain delay left out of the count: the listeners close at its end.
const MARGIN: Duration = Duration::from_millis(500);
/// How often each `--drain-new` client opens its next connection.
const NEW_EVERY: Duration = Duration::from_millis(5);

pub async fn run(args: &Args, upstreams: &UpstreamAddrs, report: &mut Report) -> Result<()> {
    if args.drain_delay <= MARGIN {
        bail!("--drain-delay must be above {MARGIN:?}");
    }
    let tweaks = Tweaks {
        drain_delay: Some(args.drain_delay),
        ..Tweaks::default()
    };
    let gw = Gateway::start(args, upstreams, &tweaks).await?;
    let target = Target::gateway(gw.listen, Proto::H1);
    let start = Instant::now() + args.warmup;
    let term_at = start + BEFORE;
    let end = term_at + args.drain_delay - MARGIN;
    let phases = [(start, term_at), (term_at, end)];

    let mut workers = Vec::new();
    for k in 0..args.drain_clients + args.drain_new {
        let fresh = k >= args.drain_clients;
        workers.push(tokio::spawn(worker(target.clone(), fresh, phases)));
    }
    tokio::time::sleep_until(term_at.into()).await;
    let signalled = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &gw.pid.to_string()])
        .status()
        .context("running kill")?;
    if !killed.success() {
        bail!("kill -TERM {} failed", gw.pid);
    }
    let mut tallies = [[Tally::new(), Tally::new()], [Tally::new(), Tally::new()]];
    for (k, w) in workers.into_iter().enumerate() {
        let got = w.await.context("a drain client panicked")?;
        let kind = usize::from(k >= args.drain_clients);
        for (phase, t) in got.iter().enumerate() {
            tallies[kind][phase].merge(t);
        }
    }
    // The exit, after the rest of the delay and the connections left.
    let limit = args.drain_delay + Duration::from_secs(15);
    let exit = loop {
        let status = gw
            .child
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .try_wait()?;
        if let Some(status) = status {
            break Some((status, signalled.elapsed()));
        }
        if signalled.elapsed() > limit {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    let mut failed = 0;
    for (kind, name) in [(0, "keep-alive"), (1, "new conns")] {
        for (phase, when) in [(0, "before"), (1, "draining")] {
            let t = &tallies[kind][phase];
            let seconds = if phase == 0 {
                BEFORE
            } else {
                args.drain_delay - MARGIN
            };
            failed += t.errors();
            let extra = json!({ "clients": name, "phase": when, "drain_delay_s": args.drain_delay.as_secs_f64() });
            let row = Row::from_tally("drain", &format!("{name}, {when}"), t, seconds, extra);
            report.push(row, t);
        }
    }
    report.notes.push(match exit {
        Some((status, after)) => format!(
            "drain: {failed} failed requests or refused connections in all (goal 0); the \
             gateway exited {status} {:.2} s after SIGTERM (delay {:.1} s)",
            after.as_secs_f64(),
            args.drain_delay.as_secs_f64()
        ),
        None => format!(
            "drain: {failed} failed requests or refused connections in all (goal 0); the \
             gateway still ran {limit:?} after SIGTERM"
        ),
    });
    Ok(())
}

/// One client until `phases` end: a keep-alive connection, or (`fresh`) a new connection for
/// each request, every [`NEW_EVERY`]. Each answer counts in the phase it came in.
async fn worker(target: Target, fresh: bool, phases: [(Instant, Instant); 2]) -> [Tally; 2] {
    let mut tallies = [Tally::new(), Tally::new()];
    let mut slot = None;
    let end = phases[1].1;
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let result = attempt(&target, &mut slot).await;
        let done = Instant::now();
        for (t, (from, to)) in tallies.iter_mut().zip(phases) {
            if done >= from && done < to {
                t.record(&result, done - sent);
            }
        }
        if fresh {
            slot = None;
            tokio::time::sleep(NEW_EVERY).await;
        }
    }
    tallies
}
