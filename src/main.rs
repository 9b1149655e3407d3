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
        /// Worker threads, 1 or more (default: the CPUs this process may use).
        #[arg(long, value_parser = parse_concurrency)]
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
        /// Where the demo's admin API listens.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
    },
    /// Read or set a route's weights through the admin API.
    Weights {
        #[command(subcommand)]
        action: WeightsAction,
    },
    /// Check that every ready gateway pod serves a VirtualService's current generation: exit
    /// 0 if all do, 1 if one lags or rejected it, 2 if that cannot be known.
    Verify {
        /// The VirtualService, as NAMESPACE/NAME.
        #[arg(long, value_parser = parse_ns_name)]
        virtual_service: (String, String),
        /// Label selector of the gateway pods.
        #[arg(long, default_value = "app=splitgate")]
        gateway_selector: String,
        /// Namespace of the gateway pods.
        #[arg(long, default_value = "istio-system")]
        gateway_namespace: String,
        /// The gateways' admin API port.
        #[arg(long, default_value_t = 15000)]
        admin_port: u16,
        /// File holding the admin bearer token.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// A kubeconfig file (default: the in-cluster account, else $KUBECONFIG, else
        /// ~/.kube/config).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
}

fn parse_ns_name(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
    }
}

fn parse_concurrency(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1 (the number of worker threads)".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "{s:?} is not a whole number of worker threads, at least 1"
        )),
    }
}

/// The admin API's base URL: `http://HOST:PORT`, or `HOST:PORT`, which means the same.
fn parse_admin_url(s: &str) -> Result<String, String> {
    let full = if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    let usage = |why: &str| {
        format!("{why}; expected http://HOST:PORT (or HOST:PORT), like http://127.0.0.1:15000")
    };
    let uri: http::Uri = full.parse().map_err(|_| usage("not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(usage("the admin API speaks plain http"));
    }
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return Err(usage("no host"));
    };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(usage("no path is taken"));
    }
    Ok(format!("http://{authority}"))
}

#[derive(clap::Args)]
struct AdminArgs {
    /// Admin API base URL: http://HOST:PORT, or HOST:PORT.
    #[arg(long, global = true, default_value = "http://127.0.0.1:15000", value_parser = parse_admin_url)]
    admin: String,
    /// File holding the admin bearer token.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum WeightsAction {
    /// Show a route's rules and their effective weights.
    Get {
        /// Route name.
        route: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Set the weights of a route's rule, e.g. `set reviews stable=80 canary=20`.
    Set {
        /// Route name.
        route: String,
        /// Rule name (needed when the route has several weighted rules).
        #[arg(long)]
        rule: Option<String>,
        /// `subset=weight` pairs.
        #[arg(required = true, value_parser = parse_weight)]
        weights: Vec<(String, u32)>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

fn parse_weight(s: &str) -> Result<(String, u32), String> {
    let (subset, w) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected subset=weight, like canary=20"))?;
    let w = w
        .parse()
        .map_err(|_| format!("{s:?}: the weight must be a whole number from 0 up"))?;
    if subset.is_empty() {
        return Err(format!("{s:?}: the subset name is missing"));
    }
    Ok((subset.to_string(), w))
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
    let json_logs = matches!(cli.log_format, LogFormat::Json);
    match cli.command {
        Command::Validate { config } => match config::load_for_start(&config) {
            Ok((c, warnings)) => {
                print_warnings(&warnings);
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
        } => match config::load_for_start(&config) {
            Ok((c, warnings)) => {
                for w in &warnings {
                    tracing::warn!(warning = %w, "config");
                }
                exit(runtime(concurrency).and_then(|rt| rt.block_on(serve(c, config))))
            }
            Err(e) => {
                print_config_error(&e, json_logs);
                ExitCode::from(1)
            }
        },
        Command::Demo { listen, admin } => {
            exit(runtime(None).and_then(|rt| rt.block_on(demo(listen, admin))))
        }
        Command::Weights { action } => weights(action),
        Command::Verify {
            virtual_service,
            gateway_selector,
            gateway_namespace,
            admin_port,
            token_file,
            kubeconfig,
        } => {
            let token = match token_file
                .as_deref()
                .map(config::files::read_token)
                .transpose()
            {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("splitgate: the token file: {e}");
                    return ExitCode::from(2);
                }
            };
            let v = splitgate::kubernetes::verify::Verify {
                namespace: virtual_service.0,
                name: virtual_service.1,
                gateway_selector,
                gateway_namespace,
                admin_port,
                token,
            };
            verify(v, kubeconfig)
        }
    }
}

fn verify(v: splitgate::kubernetes::verify::Verify, kubeconfig: Option<PathBuf>) -> ExitCode {
    let rt = match runtime(Some(1)) {
        Ok(rt) => rt,
        Err(e) => return exit(Err(e)),
    };
    let verdict = rt.block_on(async {
        let spec = config::kubernetes::KubernetesSpec {
            gateway_namespace: String::new(),
            gateway_name: String::new(),
            namespaces: Vec::new(),
            kubeconfig,
            cluster_domain: "cluster.local".into(),
            sticky: Default::default(),
        };
        match splitgate::kubernetes::watch::client(&spec).await {
            Ok(client) => splitgate::kubernetes::verify::verify(client, &v).await,
            Err(e) => splitgate::kubernetes::verify::Verdict {
                lines: vec![e.to_string()],
                code: 2,
            },
        }
    });
    for line in &verdict.lines {
        println!("{line}");
    }
    ExitCode::from(verdict.code)
}

/// A config that cannot be used at start: as text, or as one JSON log record (its `errors` a
/// JSON array) with `--log-format json`.
fn print_config_error(e: &config::ConfigError, json_logs: bool) {
    if json_logs {
        let errors: Vec<String> = e.errors.iter().map(ToString::to_string).collect();
        tracing::error!(
            file = %e.source_name,
            errors = %serde_json::json!(errors),
            "the config cannot be used; not starting"
        );
    } else {
        eprintln!("{e}");
    }
}

fn print_warnings(warnings: &[config::FieldError]) {
    for w in warnings {
        eprintln!("warning: {w}");
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
    // hyper and h2 warn once per client connection that breaks the protocol (an HTTP/2 flood
    // closed with GOAWAY, say): under attack that is thousands of lines a second about clients,
    // not about the gateway. They log errors only, unless the filter names them.
    let level = if level.contains("h2") || level.contains("hyper") {
        level.to_string()
    } else {
        format!("{level},h2=error,hyper=error")
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder
            .json()
            .event_format(JsonLists(tracing_subscriber::fmt::format().json()))
            .init(),
    }
}

/// Fields logged as a JSON-encoded list (`errors = %serde_json::json!(list)`): in JSON logs they
/// become real JSON arrays, not strings holding JSON.
const JSON_LIST_FIELDS: [&str; 2] = ["errors", "restart_required"];

/// The JSON event format, with [`JSON_LIST_FIELDS`] embedded as arrays.
struct JsonLists<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for JsonLists<F>
where
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        let Ok(mut record) = serde_json::from_str::<serde_json::Value>(&line) else {
            return writer.write_str(&line);
        };
        let mut embedded = false;
        if let Some(fields) = record.get_mut("fields").and_then(|f| f.as_object_mut()) {
            for name in JSON_LIST_FIELDS {
                let list = fields
                    .get(name)
                    .and_then(|v| v.as_str())
                    .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
                    .filter(serde_json::Value::is_array);
                if let Some(list) = list {
                    fields.insert(name.to_string(), list);
                    embedded = true;
                }
            }
        }
        if !embedded {
            return writer.write_str(&line);
        }
        writeln!(writer, "{record}")
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

async fn serve(config: config::Config, path: PathBuf) -> anyhow::Result<()> {
    // Installed before anything starts, so that a SIGHUP never finds the default action (exit).
    #[cfg(unix)]
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot handle SIGHUP")?;
    let app = splitgate::app::App::start(config, Some(path)).await?;
    #[cfg(unix)]
    tokio::spawn(reload_on_hangup(hangup, app.control.clone()));
    shutdown_signal().await;
    let drain = app.control.drain_spec().await;
    tracing::info!(
        delay = ?drain.delay,
        timeout = ?drain.timeout,
        "draining: readiness is 503; still accepting for the delay, every answer asking its \
         client to go; then the connections left get the timeout (a second signal ends it now)"
    );
    app.drain();
    let finish = async {
        tokio::time::sleep(drain.delay).await;
        tracing::info!("drain delay over: closing the listeners");
        app.shutdown(drain.timeout).await;
    };
    tokio::select! {
        () = finish => Ok(()),
        () = shutdown_signal() => {
            tracing::warn!("a second signal: exiting without finishing the drain");
            std::process::exit(1);
        }
    }
}

/// SIGHUP re-reads the config file, as `POST /v1/reload` does (nginx and HAProxy reload on it),
/// and logs what came of it; the gateway serves on either way.
#[cfg(unix)]
async fn reload_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    control: std::sync::Arc<splitgate::control::Control>,
) {
    use splitgate::control::ChangeError;
    while hangup.recv().await.is_some() {
        match control.reload(None).await {
            Ok(outcome) => tracing::info!(
                generation = outcome.generation,
                dropped_overrides = outcome.dropped.len(),
                restart_required = %serde_json::json!(outcome.restart_required),
                "config file reloaded on SIGHUP"
            ),
            Err(ChangeError::Config(errors)) => {
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                tracing::error!(
                    errors = %serde_json::json!(errors),
                    "SIGHUP: the config file was rejected; the running config stays"
                );
            }
            Err(e) => tracing::error!(error = ?e, "SIGHUP: the config file was not reloaded"),
        }
    }
}

/// How to run this very binary again, as a shell word: its full path, quoted when needed.
fn this_binary() -> String {
    let path = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "splitgate".into());
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:@%".contains(c);
    if path.chars().all(plain) {
        path
    } else {
        format!("'{}'", path.replace('\'', "'\\''"))
    }
}

async fn demo(listen: SocketAddr, admin: SocketAddr) -> anyhow::Result<()> {
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let stable = splitgate::demo::spawn_named_upstream(loopback, "stable").await?;
    let canary = splitgate::demo::spawn_named_upstream(loopback, "canary").await?;
    let config = splitgate::demo::demo_config(listen, admin, stable, canary)?;
    let app = splitgate::app::App::start(config, None).await?;
    let addr = app
        .gateway
        .local_addr("http")
        .context("the demo listener is bound")?;
    let admin = app.admin_addr;
    println!(
        "splitgate demo: gateway on http://{addr}  (stable upstream {stable}, canary upstream {canary})

  90/10 weighted split:   for i in $(seq 20); do curl -s http://{addr}/; done | sort | uniq -c
  header route (canary):  curl -s -H 'x-canary: always' http://{addr}/
  HTTP/2 (h2c):           curl -s --http2-prior-knowledge http://{addr}/

  admin API:              curl -s http://{admin}/v1/state
  shift to 50/50:         {exe} weights set demo stable=50 canary=50 --admin http://{admin}
  readiness:              curl -s http://{ready}/healthz/ready
  Istio metrics:          curl -s http://{metrics}/stats/prometheus | grep istio_requests_total
  canary analysis:        curl -s 'http://{admin}/v1/analysis?route=demo&window=60s'

Press Ctrl-C to stop.",
        ready = app.readiness_addr,
        metrics = app.metrics_addr,
        exe = this_binary(),
    );
    shutdown_signal().await;
    app.shutdown(Duration::from_secs(2)).await;
    Ok(())
}

fn weights(action: WeightsAction) -> ExitCode {
    use splitgate::admin::client::{describe_route, AdminClient, ClientError};
    let (WeightsAction::Get { admin, .. } | WeightsAction::Set { admin, .. }) = &action;
    let token = match &admin.token_file {
        Some(f) => match config::files::read_token(f) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("splitgate: the token file: {e}");
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    if let WeightsAction::Set { weights, .. } = &action {
        let mut seen = std::collections::BTreeSet::new();
        if let Some((subset, _)) = weights.iter().find(|(s, _)| !seen.insert(s)) {
            eprintln!("splitgate: subset {subset:?} is given twice: give each subset one weight");
            return ExitCode::from(1);
        }
    }
    let client = AdminClient::new(&admin.admin, token);
    let rt = match runtime(Some(1)) {
        Ok(rt) => rt,
        Err(e) => return exit(Err(e)),
    };
    let result = rt.block_on(async {
        match &action {
            WeightsAction::Get { route, .. } => {
                let state = client.state().await?;
                Ok(
                    describe_route(&state, route).ok_or_else(|| ClientError::Refused {
                        status: http::StatusCode::NOT_FOUND,
                        message: format!("unknown route {route:?}"),
                        field: Some("route".into()),
                    })?,
                )
            }
            WeightsAction::Set {
                route,
                rule,
                weights,
                ..
            } => {
                let weights: std::collections::BTreeMap<String, u32> =
                    weights.iter().cloned().collect();
                let generation = client.set_weights(route, rule.as_deref(), &weights).await?;
                Ok::<_, ClientError>(format!("generation {generation}\n"))
            }
        }
    });
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("splitgate: {e}");
            // Refused by the gateway: bad usage (1). Unreachable: runtime failure (2).
            ExitCode::from(if matches!(e, ClientError::Refused { .. }) {
                1
            } else {
                2
            })
        }
    }
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
