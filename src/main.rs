//! The `splitgate` command line.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use splitgate::config;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "splitgate",
    version,
    about = "L7 traffic-splitting gateway for canary releases"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `splitgate=debug`; RUST_LOG also works.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic from a config file.
    Run {
        /// Config file.
        #[arg(short, long, default_value = "config/splitgate.yaml")]
        config: PathBuf,
        /// Worker threads (default: the CPUs this process may use).
        #[arg(long)]
        concurrency: Option<usize>,
    },
    /// Check a config file; print every problem as `path.to.field: message`.
    Validate {
        /// Config file.
        #[arg(short, long, default_value = "config/splitgate.yaml")]
        config: PathBuf,
    },
    /// Run two built-in upstreams and a gateway with a 90/10 split on loopback.
    Demo {
        /// Where the demo gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logging(cli.log_format, &cli.log_level);
    match cli.command {
        Command::Validate { config } => match config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} listener(s), {} service(s), {} route(s))",
                    config.display(),
                    c.listeners.len(),
                    c.services.len(),
                    c.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Run {
            config,
            concurrency,
        } => match config::load(&config) {
            Ok(c) => exit(runtime(concurrency).and_then(|rt| rt.block_on(serve(c)))),
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Demo { listen } => exit(runtime(None).and_then(|rt| rt.block_on(demo(listen)))),
    }
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logged; printed plainly when logging is filtered off, so a fatal error always shows.
            if tracing::enabled!(tracing::Level::ERROR) {
                tracing::error!("{e:#}");
            } else {
                eprintln!("splitgate: {e:#}");
            }
            ExitCode::from(2)
        }
    }
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn runtime(concurrency: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let workers =
        concurrency.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // One worker: a single-threaded scheduler skips the cross-thread work-stealing machinery.
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn serve(config: config::Config) -> anyhow::Result<()> {
    let (gateway, _runtime) = splitgate::start(&config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down: draining connections");
    gateway.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

async fn demo(listen: SocketAddr) -> anyhow::Result<()> {
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let stable = splitgate::demo::spawn_named_upstream(loopback, "stable").await?;
    let canary = splitgate::demo::spawn_named_upstream(loopback, "canary").await?;
    let config = splitgate::demo::demo_config(listen, stable, canary)?;
    let (gateway, _runtime) = splitgate::start(&config).await?;
    let addr = gateway
        .local_addr("http")
        .context("the demo listener is bound")?;
    println!(
        "splitgate demo: gateway on http://{addr}  (stable upstream {stable}, canary upstream {canary})

  90/10 weighted split:   for i in $(seq 20); do curl -s http://{addr}/; done | sort | uniq -c
  header route (canary):  curl -s -H 'x-canary: always' http://{addr}/
  HTTP/2 (h2c):           curl -s --http2-prior-knowledge http://{addr}/

Press Ctrl-C to stop."
    );
    shutdown_signal().await;
    gateway.shutdown(Duration::from_secs(2)).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler works on unix");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
