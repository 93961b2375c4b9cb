//! `aic scheduler|storage-node|compute-node`: load the layered config, bind, start the service
//! from its library crate, and stop it gracefully on Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use aic_protocol::config::{self, Invalid, Preflight, Validate};
use aic_protocol::service::ServiceHandle;
use anyhow::Context;
use clap::Args;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Flags every service shares.
#[derive(Args, Clone, Debug, Default)]
pub struct ServiceArgs {
    /// TOML config file (layers: defaults, this file, AIC_* environment, flags).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the default config as TOML and exit.
    #[arg(long)]
    pub print_sample_config: bool,
    /// Load and validate the config (defaults, file, environment, flags), print the result as
    /// TOML and exit without binding anything.
    #[arg(long)]
    pub check_config: bool,
    /// Display name (default: the certificate's name).
    #[arg(long)]
    pub name: Option<String>,
    /// QUIC listen address (UDP).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// host:port peers should dial.
    #[arg(long)]
    pub advertise: Option<String>,
    /// Metrics listen address (TCP); loopback unless set otherwise.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Write the bound addresses as JSON to this file once listening (used by `aic devnet`).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

#[derive(Args, Clone, Debug)]
pub struct SchedulerArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Heartbeat interval asked of nodes, in milliseconds.
    #[arg(long)]
    pub heartbeat_interval_ms: Option<u64>,
}

#[derive(Args, Clone, Debug)]
pub struct NodeArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// The scheduler's QUIC address (host:port).
    #[arg(long)]
    pub scheduler: Option<String>,
}

/// The flags as a config layer: only flags that were given appear.
fn endpoint_overrides(args: &ServiceArgs) -> Map<String, Value> {
    let mut endpoint = Map::new();
    if let Some(name) = &args.name {
        endpoint.insert("name".into(), json!(name));
    }
    if let Some(listen) = args.listen {
        endpoint.insert("listen".into(), json!(listen.to_string()));
    }
    if let Some(advertise) = &args.advertise {
        endpoint.insert("advertise".into(), json!(advertise));
    }
    if let Some(metrics) = args.metrics_listen {
        endpoint.insert("metrics_listen".into(), json!(metrics.to_string()));
    }
    let mut layer = Map::new();
    if !endpoint.is_empty() {
        layer.insert("endpoint".into(), Value::Object(endpoint));
    }
    layer
}

pub async fn run_scheduler(args: SchedulerArgs) -> anyhow::Result<()> {
    let mut flags = endpoint_overrides(&args.service);
    if let Some(interval) = args.heartbeat_interval_ms {
        flags.insert("membership".into(), json!({ "heartbeat_interval_ms": interval }));
    }
    run_service::<aic_scheduler::SchedulerConfig, _>(
        &args.service,
        flags,
        "aic scheduler",
        |config, shutdown| async move {
            let bound = config.endpoint.bind()?;
            Ok(aic_scheduler::start(config, bound, shutdown).await?)
        },
    )
    .await
}

pub async fn run_storage(args: NodeArgs) -> anyhow::Result<()> {
    run_service::<aic_storage_node::StorageConfig, _>(
        &args.service,
        node_overrides(&args),
        "aic storage-node",
        |config, shutdown| async move {
            let bound = config.endpoint.bind()?;
            Ok(aic_storage_node::start(config, bound, shutdown)?)
        },
    )
    .await
}

pub async fn run_compute(args: NodeArgs) -> anyhow::Result<()> {
    run_service::<aic_compute_node::ComputeConfig, _>(
        &args.service,
        node_overrides(&args),
        "aic compute-node",
        |config, shutdown| async move {
            let bound = config.endpoint.bind()?;
            Ok(aic_compute_node::start(config, bound, shutdown)?)
        },
    )
    .await
}

fn node_overrides(args: &NodeArgs) -> Map<String, Value> {
    let mut flags = endpoint_overrides(&args.service);
    if let Some(scheduler) = &args.scheduler {
        flags.insert("scheduler".into(), json!({ "addr": scheduler }));
    }
    flags
}

/// Loads a service's layered config (or prints it), starts the service, writes the ready file,
/// and stops the service on Ctrl-C or SIGTERM.
pub(crate) async fn run_service<C, Fut>(
    args: &ServiceArgs,
    flags: Map<String, Value>,
    title: &str,
    start: impl FnOnce(C, CancellationToken) -> Fut,
) -> anyhow::Result<()>
where
    C: Serialize + DeserializeOwned + Default + Validate + Preflight,
    Fut: std::future::Future<Output = anyhow::Result<ServiceHandle>>,
{
    if args.print_sample_config {
        print!("{}", config::sample::<C>(&format!("{title} configuration")));
        return Ok(());
    }
    let config: C = config::load(args.config.as_deref(), &Value::Object(flags))?;
    if args.check_config {
        print!("{}", toml::to_string_pretty(&config)?);
        return refuse_problems(title, &config.preflight(true));
    }
    // What the config names is checked before anything starts, so a missing file is one line
    // per problem rather than whichever part of the service trips over it first. The ports are
    // bound next, and say so themselves.
    refuse_problems(title, &config.preflight(false))?;
    let shutdown = CancellationToken::new();
    let handle = start(config, shutdown.clone()).await?;
    if let Some(path) = &args.ready_file {
        write_ready_file(path, &handle)?;
    }
    info!(quic = %handle.quic_addr, metrics = %handle.metrics_url(), "serving; Ctrl-C or SIGTERM stops");
    let failure = handle.failure();
    tokio::select! {
        signal = shutdown_signal() => {
            signal?;
            info!("stopping");
            handle.stop().await;
            Ok(())
        }
        reason = failure.reported() => {
            tracing::error!(%reason, "stopping: the service cannot go on");
            handle.stop().await;
            anyhow::bail!("{title} stopped: {reason}")
        }
    }
}

/// Prints each problem as one line on stderr; an error saying how many when there are any.
fn refuse_problems(title: &str, problems: &[Invalid]) -> anyhow::Result<()> {
    for problem in problems {
        eprintln!("{title}: {}: {}", problem.key, problem.reason);
    }
    match problems.len() {
        0 => Ok(()),
        1 => anyhow::bail!("{title}: the config names something unusable (above)"),
        n => anyhow::bail!("{title}: the config names {n} unusable things (above)"),
    }
}

/// The addresses a started service bound, for a parent process that asked for port 0 (a
/// gateway's `quic` is its HTTPS address: it accepts no QUIC).
#[derive(Serialize, serde::Deserialize)]
pub struct ReadyFile {
    pub quic: SocketAddr,
    pub metrics: SocketAddr,
}

fn write_ready_file(path: &Path, handle: &ServiceHandle) -> anyhow::Result<()> {
    let ready = ReadyFile {
        quic: handle.quic_addr,
        metrics: handle.metrics_addr,
    };
    // Write then rename, so a reader never sees half a file.
    let partial = path.with_extension("partial");
    std::fs::write(&partial, serde_json::to_vec(&ready)?)
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
