//! `aic devnet`: a whole grid on this machine — a throw-away CA and genesis, three scheduler
//! replicas sharing a Raft ledger, two storage and three compute nodes, each on its own loopback
//! QUIC port — in this process or, with `--processes`, each as its own OS process started from
//! the same binary and config files.
//!
//! ```text
//! data dir/
//!   .aic-devnet            marks the dir as ours (only such a dir is ever wiped)
//!   certs/                 ca.pem, ca.key, <name>.pem, <name>.key
//!   config/<name>.toml     each service's config, the same files in both modes
//!   client.toml            the profile for `aic nodes --profile …` (a user's client certificate)
//!   operator.toml          the operator's profile (`aic ledger add-learner|promote|remove`)
//!   genesis.toml           the ledger's genesis; wallets/<holder>.key spend its shares
//!   data/digits.csv        the bundled dataset, imported at start (wallets/data-owner.key owns it)
//!   data/<storage node>/   each storage node's shards and catalog
//!   ledger/<scheduler>/    each replica's Raft log and snapshots
//!   run/<name>.ready       bound addresses (process mode)
//!   logs/<name>.log        each process's log (process mode)
//! ```

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aic_ledger::api::{LedgerRequest, LedgerResponse, LedgerStatus};
use aic_ledger::genesis::{Genesis, Holders};
use aic_ledger::raft::types::{replica_id_of, ReplicaAddr};
use aic_ledger::{Address, Keypair};
use aic_protocol::rpc::RpcClient;
use aic_protocol::NodeId;

use aic_protocol::certs::{CertificateAuthority, IdentityFiles, Validity};
use aic_protocol::config;
use aic_protocol::messages::{NodeState, NodeStatus};
use aic_protocol::service::{EndpointSettings, ServiceHandle};
use aic_protocol::Role;
use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::devnet_control;
use crate::ledger_client;
use crate::nodes::{self, ClientProfile};
use crate::roles::{shutdown_signal, ReadyFile};

const MARKER: &str = ".aic-devnet";
const SCHEDULERS: [&str; 3] = ["scheduler-1", "scheduler-2", "scheduler-3"];
const STORAGE_NODES: [&str; 2] = ["storage-1", "storage-2"];
const COMPUTE_NODES: [&str; 3] = ["compute-1", "compute-2", "compute-3"];
/// The inference gateway, serving the main job's trained model.
const GATEWAY: &str = "gateway-1";
/// What a call to the devnet's model costs its caller, per 1,000 rows (the owner's price).
const DEVNET_MODEL_PRICE: &str = "0.1";
/// Devnet heartbeats are brisk so the grid settles in about a second.
const HEARTBEAT_INTERVAL_MS: u64 = 300;
/// Devnet blocks come every half second, so the lottery is seen within the run.
const BLOCK_INTERVAL_MS: u64 = 500;
/// Devnet reward epochs are short, so the main job's rewards are issued within the run.
const REWARD_EPOCH_BLOCKS: u64 = 5;
/// Devnet rounds take a fraction of a second: a job silent for 10 s has lost its replica (under
/// a loaded machine a round can stall a few seconds; a takeover then is harmless, only wasteful).
/// A bigger model's rounds take longer: `--resume-after-secs` raises the lease.
const RESUME_AFTER_SECS: u64 = 10;
/// The longest the devnet follows a job that another replica must resume.
const RESUMED_JOB_LIMIT: Duration = Duration::from_secs(300);

#[derive(Args, Clone, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DevnetArgs {
    /// Act on a running devnet instead of starting one.
    #[command(subcommand)]
    pub control: Option<DevnetControl>,
    /// Where to put the CA, configs and logs. Default: a new temporary directory. An existing
    /// directory is reused only if an earlier devnet made it.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Exit once the grid is up and the status is printed.
    #[arg(long)]
    pub once: bool,
    /// Print the status as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Run each service as its own OS process.
    #[arg(long)]
    pub processes: bool,
    /// Give up if the grid is not up after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
    /// Epochs of the main job (softmax regression on the digits).
    #[arg(long, default_value_t = 30)]
    pub epochs: u32,
    /// Start compute-3 corrupting this percentage of its training results (fault injection, to
    /// watch the rater catch and slash it).
    #[arg(long, default_value_t = 0)]
    pub faulty_percent: u8,
    /// Which of the main job's results are checked on another node: a sample drawn from each
    /// node's record, or every one.
    #[arg(long = "verify", value_enum, default_value_t = crate::job::VerifyArg::Sampled)]
    pub verification: crate::job::VerifyArg,
    /// Start compute-3 corrupting this percentage of its inference outputs (fault injection, to
    /// watch the gateway's verification outvote it), with every batch verified.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub faulty_inference_percent: u8,
    /// Drill (with --processes): kill compute-2's process once the main job reaches this
    /// round, to watch its tasks re-run elsewhere.
    #[arg(long, requires = "processes")]
    pub kill_compute_at_round: Option<u64>,
    /// Drill (with --processes): kill scheduler-1, the replica running the main job, once the
    /// job reaches this round, to watch the new Raft leader resume it from its last checkpoint.
    #[arg(long, requires = "processes", conflicts_with = "kill_compute_at_round")]
    pub kill_scheduler_at_round: Option<u64>,
    /// Drill (with --processes): the first honest compute node the gateway hands an inference
    /// batch of at least this many rows exits holding it, to watch the batch served elsewhere.
    #[arg(long, requires = "processes", value_parser = clap::value_parser!(u32).range(1..))]
    pub kill_compute_on_inference_rows: Option<u32>,
    /// How long a job's runner may go without a checkpoint before another scheduler replica
    /// takes the job over. Raise it above the longest round (a large model's).
    #[arg(long, default_value_t = RESUME_AFTER_SECS, value_parser = clap::value_parser!(u64).range(1..))]
    pub resume_after_secs: u64,
    /// How long a task may run on a compute node before it is placed elsewhere.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub task_timeout_secs: u64,
}

/// What `aic devnet SUBCOMMAND` does to a running devnet.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum DevnetControl {
    /// Restart one of a running devnet's services (started with --processes), as a
    /// supervisor would: SIGTERM, wait, start it again from its config.
    Restart(devnet_control::RestartArgs),
    /// SIGKILL one of a running devnet's services (a crash, for drills); `restart` brings it
    /// back.
    Kill(devnet_control::RestartArgs),
}

pub async fn run(args: DevnetArgs) -> anyhow::Result<()> {
    match args.control {
        Some(DevnetControl::Restart(service)) => return devnet_control::ask("restart", service).await,
        Some(DevnetControl::Kill(service)) => return devnet_control::ask("kill", service).await,
        None => {}
    }
    let (dir, temporary) = prepare_data_dir(args.data_dir.as_deref())?;
    let result = run_in(&dir, &args).await;
    if temporary && args.once {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn run_in(dir: &Path, args: &DevnetArgs) -> anyhow::Result<()> {
    let certs = dir.join("certs");
    let ca = CertificateAuthority::generate("devnet")?;
    ca.save(&certs)?;
    let issue = |role: Role, name: &str| -> anyhow::Result<(IdentityFiles, NodeId)> {
        let issued = ca.issue(role, name, &[], Validity::default())?;
        Ok((issued.save(&certs, name)?, issued.node_id))
    };
    let genesis_path = write_genesis(dir)?;
    // Payout wallets for the providers and the model owner, and the user who pays for the job.
    let mut payout = std::collections::BTreeMap::new();
    for name in STORAGE_NODES
        .iter()
        .chain(COMPUTE_NODES.iter())
        .chain(["model-owner", "user"].iter())
    {
        let key = Keypair::generate();
        ledger_client::save_wallet(&dir.join("wallets").join(format!("{name}.key")), &key)?;
        payout.insert(name.to_string(), key);
    }

    let mut grid = if args.processes {
        Grid::Processes(Vec::new())
    } else {
        Grid::InProcess {
            handles: Vec::new(),
            shutdown: CancellationToken::new(),
        }
    };
    let plaza_shutdown = CancellationToken::new();
    // A kill drill is synchronised with the job through the schedulers' drill hook: each holds
    // the job after the drill's round and tells this socket, which answers once the victim died.
    let drill_round = args.kill_compute_at_round.or(args.kill_scheduler_at_round);
    let drill_gate = dir.join("run").join("drill.sock");
    let drill_listener = match drill_round {
        Some(_) if args.processes => {
            std::fs::create_dir_all(dir.join("run"))?;
            let _ = std::fs::remove_file(&drill_gate);
            Some(tokio::net::UnixListener::bind(&drill_gate).context("binding the drill's socket")?)
        }
        _ => None,
    };
    let outcome = async {
        let mut metrics_urls = Map::new();
        let mut replicas = Vec::new();
        for (i, name) in SCHEDULERS.iter().enumerate() {
            let (tls, node_id) = issue(Role::Scheduler, name)?;
            let mut config = aic_scheduler::SchedulerConfig {
                endpoint: loopback_endpoint(name, tls),
                ..Default::default()
            };
            config.membership.heartbeat_interval_ms = HEARTBEAT_INTERVAL_MS;
            config.ledger.genesis = genesis_path.clone();
            config.ledger.data_dir = dir.join("ledger").join(name);
            config.ledger.bootstrap = i == 0;
            config.jobs.system_key = dir.join("wallets").join("system.key");
            config.ledger.block_interval_ms = BLOCK_INTERVAL_MS;
            config.jobs.resume_after_ms = args.resume_after_secs * 1000;
            config.jobs.task_timeout_ms = args.task_timeout_secs * 1000;
            config.jobs.reward_epoch_blocks = REWARD_EPOCH_BLOCKS;
            if let (Some(round), Some(_)) = (drill_round, &drill_listener) {
                config.jobs.drill = Some(aic_scheduler::job::drill::DrillHook {
                    hold_after_round: u32::try_from(round).unwrap_or(u32::MAX),
                    gate: drill_gate.clone(),
                });
            }
            let (addr, metrics) = grid.start(dir, name, "scheduler", &config).await?;
            metrics_urls.insert(name.to_string(), json!(metrics));
            replicas.push(ReplicaAddr {
                addr: addr.to_string(),
                node_id: node_id.to_string(),
            });
        }
        let scheduler_addr = replicas[0].addr.clone();

        // Nodes register with every replica, so any of them can place work and resume a job.
        let link = aic_protocol::node_agent::SchedulerLink {
            addr: scheduler_addr.clone(),
            replicas: replicas[1..].iter().map(|r| r.addr.clone()).collect(),
        };
        for name in STORAGE_NODES {
            let mut config = aic_storage_node::StorageConfig {
                endpoint: loopback_endpoint(name, issue(Role::Storage, name)?.0),
                scheduler: link.clone(),
                ..Default::default()
            };
            config.storage.data_dir = dir.join("data").join(name);
            config.storage.payout_address = payout[name].address().to_string();
            let (_, metrics) = grid.start(dir, name, "storage-node", &config).await?;
            metrics_urls.insert(name.to_string(), json!(metrics));
        }
        for name in COMPUTE_NODES {
            let config = aic_compute_node::ComputeConfig {
                endpoint: loopback_endpoint(name, issue(Role::Compute, name)?.0),
                scheduler: link.clone(),
                compute: aic_compute_node::config::ComputeSettings {
                    payout_address: payout[name].address().to_string(),
                    corrupt_results_percent: if name == "compute-3" {
                        args.faulty_percent
                    } else {
                        0
                    },
                    corrupt_inference_percent: if name == "compute-3" {
                        args.faulty_inference_percent
                    } else {
                        0
                    },
                    // compute-3 is the one the faults corrupt: the drill spares it.
                    exit_on_inference_rows: match args.kill_compute_on_inference_rows {
                        Some(rows) if name != "compute-3" => rows,
                        _ => 0,
                    },
                    exit_claim_file: dir.join("drill-inference-exit"),
                    ..Default::default()
                },
            };
            let (_, metrics) = grid.start(dir, name, "compute-node", &config).await?;
            metrics_urls.insert(name.to_string(), json!(metrics));
        }
        let gateway_config = aic_gateway::GatewayConfig {
            endpoint: aic_gateway::config::GatewayEndpoint {
                name: GATEWAY.to_string(),
                https_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                metrics_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                tls: issue(Role::Gateway, GATEWAY)?.0,
            },
            scheduler: link.clone(),
            settlement: aic_gateway::config::SettlementSettings {
                key: dir.join("wallets").join("gateway-settler.key"),
                // Devnet periods are short, so a call's settlement is seen within a second.
                period_ms: 1000,
                ..Default::default()
            },
            batching: aic_gateway::config::BatchingSettings {
                // The devnet's compute nodes share this machine's cores: batches side by side
                // only contend (measured: 0.25× the in-process rows/s with three at once, 0.64×
                // with one, for a 4.9 M-parameter model on two cores).
                max_in_flight: 1,
                ..Default::default()
            },
            verification: aic_gateway::config::VerificationSettings {
                // Every batch is checked where a node is made to lie; one in ten otherwise.
                sample_percent: if args.faulty_percent > 0 || args.faulty_inference_percent > 0 {
                    100
                } else {
                    10
                },
            },
            ..Default::default()
        };
        let (https_addr, metrics) = grid.start(dir, GATEWAY, "gateway", &gateway_config).await?;
        metrics_urls.insert(GATEWAY.to_string(), json!(metrics));

        let profile = ClientProfile {
            scheduler: scheduler_addr,
            replicas: replicas[1..].iter().map(|r| r.addr.clone()).collect(),
            tls: issue(Role::Client, "client")?.0,
            ..ClientProfile::default()
        };
        let profile_path = dir.join("client.toml");
        write_toml(&profile_path, &profile)?;
        // Membership changes need the operator role; a client certificate is refused them.
        let operator = ClientProfile {
            tls: issue(Role::Operator, "operator")?.0,
            ..profile.clone()
        };
        write_toml(&dir.join("operator.toml"), &operator)?;

        let mut client = nodes::connect(&profile).await?;
        join_replicas(&nodes::connect(&operator).await?, &replicas).await?;
        let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
        let prometheus = crate::devnet_prometheus::write(dir, &metrics_urls)?;
        let nodes = wait_until_up(&client, deadline, &mut grid).await?;
        wait_for_ledger(&client, deadline).await?;
        let digits = import_digits(dir, &profile).await?;
        let victim = match (args.kill_compute_at_round, args.kill_scheduler_at_round) {
            (Some(_), _) => "compute-2",
            (_, Some(_)) => "scheduler-1",
            _ => "",
        };
        if let (Some(listener), Grid::Processes(children)) = (drill_listener, &mut grid) {
            // The drill owns its victim from here: it kills and reaps it when the job holds.
            if let Some(service) = children.iter_mut().find(|s| s.name == victim) {
                if let Some(child) = service.child.take() {
                    tokio::spawn(kill_when_held(listener, service.name.clone(), child));
                }
            }
        }
        // The other replicas, which follow a job whose replica the drill kills.
        let mut others = Vec::new();
        for replica in &replicas[1..] {
            // This replica first, then every other (scheduler-1 included: restarted, it may
            // lead again).
            let profile = ClientProfile {
                scheduler: replica.addr.clone(),
                replicas: replicas
                    .iter()
                    .filter(|r| r.addr != replica.addr)
                    .map(|r| r.addr.clone())
                    .collect(),
                ..profile.clone()
            };
            others.push((profile.clone(), nodes::connect(&profile).await?));
        }
        let replica_dies = args.kill_scheduler_at_round.is_some();
        let drill = Drill {
            replica_dies,
            followers: others.iter().map(|(_, c)| c.clone()).collect(),
        };
        // The console reads the grid as the devnet's user, through every replica: it is up
        // before the main job, so a drill that kills a replica kills the one it reads through.
        let plaza = aic_plaza::start(
            aic_plaza::PlazaSettings {
                listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                remote_https: None,
                schedulers: replicas.iter().map(|r| r.addr.clone()).collect(),
                identity: profile.tls.clone(),
                // The job's payer: the account that owns the trained model.
                wallet: Some(ledger_client::load_wallet(&dir.join("wallets").join("user.key"))?),
                gateway: Some(aic_plaza::GatewayLink {
                    url: format!("https://{https_addr}"),
                    ca: profile.tls.ca.display().to_string(),
                }),
                form_lifetime: aic_plaza::forms::DEFAULT_FORM_LIFETIME,
            },
            plaza_shutdown.clone(),
        )
        .await?;
        let job = main_job(dir, &client, &profile, &payout, &digits, args, &drill).await?;
        if let (true, Some((profile, other))) = (replica_dies, others.into_iter().next()) {
            // scheduler-1 is gone: the rest of the run, and the profile, use scheduler-2.
            client = other;
            write_toml(&profile_path, &profile)?;
        }
        let gateway = serve_trained_model(dir, &client, &job, https_addr).await?;
        let lottery_blocks = wait_for_lottery_block(&client).await?;
        wait_for_reward_epoch(&client).await?;
        let ledger = wait_for_ledger(&client, deadline).await?;
        let chain_verified = ledger_client::verify(&client).await.is_ok();
        let status = GridStatus {
            nodes,
            metrics: metrics_urls,
            prometheus,
            ledger,
            chain_verified,
            digits,
            job,
            gateway,
            plaza: json!({ "url": plaza.url }),
            lottery_blocks,
        };
        report(dir, args, &profile_path, &status)?;
        if !args.once {
            serve_until_stopped(dir, &mut grid).await?;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    plaza_shutdown.cancel();
    grid.stop().await;
    outcome
}

/// The whole story on the digits: providers stake, a model is registered, a user funds and
/// submits a job, the grid trains it with spot checks, the escrow settles and the trained model
/// is minted. Answers the job's report.
async fn main_job(
    dir: &Path,
    client: &RpcClient,
    profile: &ClientProfile,
    wallets: &std::collections::BTreeMap<String, Keypair>,
    digits: &crate::dataset::Imported,
    args: &DevnetArgs,
    drill: &Drill,
) -> anyhow::Result<Value> {
    let fundraiser = ledger_client::load_wallet(&dir.join("wallets").join("fundraiser.key"))?;
    let aic = |n: &str| n.parse::<aic_ledger::Amount>().expect("an amount");
    for (name, amount) in [
        ("user", "1000"),
        ("compute-1", "100"),
        ("compute-2", "100"),
        ("compute-3", "100"),
    ] {
        let to = wallets[name].address();
        ledger_client::submit(
            client,
            &fundraiser,
            aic_ledger::Call::Transfer {
                to,
                amount: aic(amount),
            },
        )
        .await?;
    }
    for name in COMPUTE_NODES {
        ledger_client::submit(
            client,
            &wallets[name],
            aic_ledger::Call::Stake { amount: aic("50") },
        )
        .await?;
    }
    let model = crate::job::register_model(
        profile,
        &wallets["model-owner"],
        "softmax-64x10",
        aic_protocol::messages::ModelShape::SoftmaxRegression {
            features: 64,
            classes: 10,
        },
        aic("0.5"),
    )
    .await?;
    let mut submit = crate::job::SubmitArgs::synchronous(digits.asset, model, args.epochs, aic("50"), 0.5);
    submit.verification = args.verification;
    let job = crate::job::submit_job(client, &wallets["user"], &submit).await?;
    if !drill.replica_dies {
        let report = crate::job::follow(client, job, !args.json).await?;
        if report["state"] != "moved" {
            return Ok(report);
        }
        // A slow round let another replica take the job over: it finishes it.
    }
    follow_resumed(&drill.followers, job).await
}

/// Serves the main job's trained model: its owner (the job's payer) publishes it as "digits",
/// and a caller — a wallet of its own, funded by the fundraiser — funds an inference escrow and
/// gets an API key. Answers what `--json` reports as `gateway`.
async fn serve_trained_model(
    dir: &Path,
    client: &RpcClient,
    job: &Value,
    https: std::net::SocketAddr,
) -> anyhow::Result<Value> {
    let Some(asset) = job["trained_model"]
        .as_str()
        .or(job["trained_model_identical_to"].as_str())
    else {
        return Ok(Value::Null);
    };
    let asset: aic_protocol::AssetId = asset
        .parse()
        .map_err(|e| anyhow::anyhow!("trained model {asset}: {e}"))?;
    let wallets = dir.join("wallets");
    let aic = |n: &str| n.parse::<aic_ledger::Amount>().expect("an amount");
    let owner = ledger_client::load_wallet(&wallets.join("user.key"))?;
    ledger_client::submit(
        client,
        &owner,
        aic_ledger::Call::PublishModel {
            asset,
            price_per_1k_rows: aic(DEVNET_MODEL_PRICE),
            alias: Some("digits".into()),
        },
    )
    .await?;
    let caller = Keypair::generate();
    ledger_client::save_wallet(&wallets.join("caller.key"), &caller)?;
    let fundraiser = ledger_client::load_wallet(&wallets.join("fundraiser.key"))?;
    ledger_client::submit(
        client,
        &fundraiser,
        aic_ledger::Call::Transfer {
            to: caller.address(),
            amount: aic("100"),
        },
    )
    .await?;
    ledger_client::submit(
        client,
        &caller,
        aic_ledger::Call::FundInference { amount: aic("50") },
    )
    .await?;
    let api_key = aic_gateway::access::new_key();
    ledger_client::submit(
        client,
        &caller,
        aic_ledger::Call::CreateApiKey {
            key_hash: aic_gateway::access::key_hash(&api_key),
            label: "devnet demo".into(),
        },
    )
    .await?;
    let key_file = dir.join("gateway-api-key");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key_file)
            .with_context(|| format!("writing {}", key_file.display()))?;
        writeln!(file, "{api_key}")?;
    }
    Ok(json!({
        "url": format!("https://{https}"),
        "model": "digits",
        "asset": asset.to_string(),
        "api_key": api_key,
        "api_key_file": key_file.display().to_string(),
        "ca": dir.join("certs").join("ca.pem").display().to_string(),
        "caller_wallet": wallets.join("caller.key").display().to_string(),
        "price_per_1k_rows": DEVNET_MODEL_PRICE,
    }))
}

/// Serves until SIGTERM or Ctrl-C; a devnet of processes also takes `aic devnet restart NAME`
/// on its control socket meanwhile, one at a time.
async fn serve_until_stopped(dir: &Path, grid: &mut Grid) -> anyhow::Result<()> {
    let control = match grid {
        Grid::Processes(_) => Some(devnet_control::bind(dir)?),
        Grid::InProcess { .. } => None,
    };
    let stopped = shutdown_signal();
    tokio::pin!(stopped);
    loop {
        let accepted = async {
            match &control {
                Some(listener) => listener.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = &mut stopped => return result,
            accepted = accepted => {
                let Ok((mut stream, _)) = accepted else { continue };
                let outcome = match devnet_control::read_request(&mut stream).await {
                    Some(devnet_control::Request::Restart(name)) => {
                        grid.restart(dir, &name).await.map(|ready| {
                            format!("restarted {name}: QUIC {}, metrics http://{}/metrics", ready.quic, ready.metrics)
                        })
                    }
                    Some(devnet_control::Request::Kill(name)) => {
                        grid.kill(&name).await.map(|()| format!("killed {name}"))
                    }
                    None => continue,
                };
                if let Err(error) = &outcome {
                    eprintln!("devnet: {error:#}");
                }
                devnet_control::answer(&mut stream, outcome).await;
            }
        }
    }
}

/// The kill drill's side of the schedulers' drill hook: when the job holds after the drill's
/// round (the first call on `gate`), SIGKILL the victim, wait until it is gone, and let the job
/// go on. Later holds (a replica that resumed the job and reached the round again) go straight
/// on.
async fn kill_when_held(gate: tokio::net::UnixListener, name: String, mut victim: tokio::process::Child) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let Ok((held, _)) = gate.accept().await else {
        return;
    };
    let mut held = tokio::io::BufReader::new(held);
    let mut line = String::new();
    let _ = held.read_line(&mut line).await;
    // kill() sends SIGKILL and reaps the process: nothing of it runs once this returns.
    if let Err(error) = victim.kill().await {
        eprintln!("devnet: the drill could not kill {name}: {error}");
    }
    eprintln!(
        "devnet: drill: killed {name} with the job held at {}",
        line.trim()
    );
    let _ = held.get_mut().write_all(b"go\n").await;
    while let Ok((mut later, _)) = gate.accept().await {
        let _ = later.write_all(b"go\n").await;
    }
}

/// A failure drill during the main job.
struct Drill {
    /// The job's own replica is the one killed.
    replica_dies: bool,
    /// The other replicas, which follow the job when another replica takes it over.
    followers: Vec<RpcClient>,
}

/// Follows a job that another replica will resume: polls every other replica until one of them
/// reports it ended.
async fn follow_resumed(replicas: &[RpcClient], job: aic_protocol::JobId) -> anyhow::Result<Value> {
    let deadline = Instant::now() + RESUMED_JOB_LIMIT;
    loop {
        for replica in replicas {
            if let Ok((state, report)) = crate::job::status(replica, job).await {
                match state.as_str() {
                    "running" | "moved" => {}
                    "failed" => bail!("job {job} failed after it was resumed: {}", report["error"]),
                    _ => return Ok(report),
                }
            }
        }
        if Instant::now() > deadline {
            bail!("no replica finished job {job} within {RESUMED_JOB_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits (at most 20 block intervals) for the first block the lottery elected after the job:
/// its session's verified nodes hold tickets. Answers every lottery block with its proposer.
async fn wait_for_lottery_block(client: &RpcClient) -> anyhow::Result<Vec<Value>> {
    let nodes = nodes::list_nodes(client).await?;
    let name_of = |id: &NodeId| {
        nodes
            .iter()
            .find(|n| &n.node_id == id)
            .map_or_else(|| id.short(), |n| n.name.clone())
    };
    let deadline = Instant::now() + Duration::from_millis(20 * BLOCK_INTERVAL_MS);
    loop {
        let blocks: Vec<Value> = ledger_client::all_blocks(client)
            .await?
            .iter()
            .filter_map(|(header, _)| {
                header.session.map(|session| {
                    json!({"height": header.height, "proposer": name_of(&header.proposer), "session": session.to_string(), "signatures": header.signatures.len()})
                })
            })
            .collect();
        if !blocks.is_empty() || Instant::now() > deadline {
            return Ok(blocks);
        }
        tokio::time::sleep(Duration::from_millis(BLOCK_INTERVAL_MS / 2)).await;
    }
}

/// Waits (at most 20 block intervals) until a reward epoch has issued what the main job accrued,
/// as far as the issuance cap allows (the rest stays accrued for later epochs).
async fn wait_for_reward_epoch(client: &RpcClient) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_millis(20 * BLOCK_INTERVAL_MS);
    loop {
        let settled = match ledger_client::request(client, &LedgerRequest::Status).await? {
            LedgerResponse::Status(status) => status.accrued_rewards.is_zero() || !status.issued.is_zero(),
            _ => false,
        };
        if settled || Instant::now() > deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(BLOCK_INTERVAL_MS / 2)).await;
    }
}

/// The bundled digits data imported the way `aic dataset import` does it: preprocessed, placed on
/// both storage nodes, its Dataset asset minted to the `data-owner` wallet (fee 1 AIC per use).
async fn import_digits(dir: &Path, profile: &ClientProfile) -> anyhow::Result<crate::dataset::Imported> {
    let file = dir.join("data").join("digits.csv");
    std::fs::create_dir_all(dir.join("data"))?;
    std::fs::write(&file, aic_storage_node::bundled::DIGITS_CSV)?;
    let owner = Keypair::generate();
    ledger_client::save_wallet(&dir.join("wallets").join("data-owner.key"), &owner)?;
    let import = crate::dataset::ImportArgs {
        name: Some("digits".into()),
        shard_rows: Some(256),
        fee: "1".parse().expect("an amount"),
        replicas: STORAGE_NODES.len(),
        ..crate::dataset::ImportArgs::new(file, aic_storage_node::bundled::DIGITS_LABEL)
    };
    crate::dataset::import_dataset(profile, None, &owner, &import)
        .await
        .context("importing the bundled digits dataset")
}

/// Makes a wallet for each genesis holder and the system key, and writes the genesis file.
fn write_genesis(dir: &Path) -> anyhow::Result<PathBuf> {
    let wallets = dir.join("wallets");
    let key = |name: &str| -> anyhow::Result<Address> {
        let key = Keypair::generate();
        ledger_client::save_wallet(&wallets.join(format!("{name}.key")), &key)?;
        Ok(key.address())
    };
    let holders = Holders {
        fundraiser: key("fundraiser")?,
        advisors: key("advisors")?,
        company: key("company")?,
        team: key("team")?,
        operations: key("operations")?,
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut genesis = Genesis::local("aic-devnet", now_ms, holders, key("system")?);
    // The gateway signs its inference settlements with a key of its own.
    genesis.inference_settlers = vec![key("gateway-settler")?];
    let path = dir.join("genesis.toml");
    genesis.save(&path).map_err(anyhow::Error::msg)?;
    Ok(path)
}

/// Adds the second and third scheduler as learners, then makes all three voters — the same
/// requests `aic ledger add-learner` and `aic ledger promote` send.
async fn join_replicas(client: &RpcClient, replicas: &[ReplicaAddr]) -> anyhow::Result<()> {
    let id_of = |r: &ReplicaAddr| -> anyhow::Result<u64> { Ok(replica_id_of(&r.node_id.parse()?)) };
    for replica in &replicas[1..] {
        let add = LedgerRequest::AddLearner {
            id: id_of(replica)?,
            addr: replica.clone(),
        };
        ledger_client::request(client, &add).await?;
    }
    let voters = replicas.iter().map(id_of).collect::<anyhow::Result<Vec<_>>>()?;
    ledger_client::request(client, &LedgerRequest::ChangeMembership { voters }).await?;
    Ok(())
}

/// Waits until the ledger has three voters, a leader and a sealed block.
async fn wait_for_ledger(client: &RpcClient, deadline: Instant) -> anyhow::Result<LedgerStatus> {
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    loop {
        poll.tick().await;
        if let LedgerResponse::Status(status) = ledger_client::request(client, &LedgerRequest::Status).await?
        {
            let voters = status.replicas.iter().filter(|r| r.voter).count();
            if voters == SCHEDULERS.len() && status.leader.is_some() && status.block_height >= 1 {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("the ledger did not settle in time: {status:?}");
            }
        }
    }
}

/// An endpoint on ephemeral loopback ports: nothing to collide with, on any machine.
fn loopback_endpoint(name: &str, tls: IdentityFiles) -> EndpointSettings {
    EndpointSettings {
        name: name.to_string(),
        tls,
        ..EndpointSettings::with_ports(0, 0)
    }
}

/// The running services, in this process or as child processes.
enum Grid {
    InProcess {
        handles: Vec<ServiceHandle>,
        shutdown: CancellationToken,
    },
    Processes(Vec<Service>),
}

/// A service the devnet started as a process: enough to start it again.
struct Service {
    name: String,
    /// The `aic` subcommand that runs it (`scheduler`, `compute-node`, …).
    command: String,
    /// None once a drill has killed it.
    child: Option<tokio::process::Child>,
}

impl Grid {
    /// Writes the service's config file and starts it from that file; returns its QUIC
    /// address and its metrics URL.
    async fn start<C>(
        &mut self,
        dir: &Path,
        name: &str,
        command: &str,
        config: &C,
    ) -> anyhow::Result<(std::net::SocketAddr, String)>
    where
        C: Serialize + serde::de::DeserializeOwned + Default + config::Validate,
    {
        let config_path = dir.join("config").join(format!("{name}.toml"));
        write_toml(&config_path, config)?;
        match self {
            Grid::InProcess { handles, shutdown } => {
                // Load the file back through the same layers the binaries use.
                let no_flags = Value::Object(Map::new());
                let handle = match command {
                    "scheduler" => {
                        let c: aic_scheduler::SchedulerConfig = config::load(Some(&config_path), &no_flags)?;
                        let bound = c.endpoint.bind()?;
                        aic_scheduler::start(c, bound, shutdown.clone()).await?
                    }
                    "storage-node" => {
                        let c: aic_storage_node::StorageConfig = config::load(Some(&config_path), &no_flags)?;
                        let bound = c.endpoint.bind()?;
                        aic_storage_node::start(c, bound, shutdown.clone())?
                    }
                    "compute-node" => {
                        let c: aic_compute_node::ComputeConfig = config::load(Some(&config_path), &no_flags)?;
                        let bound = c.endpoint.bind()?;
                        aic_compute_node::start(c, bound, shutdown.clone())?
                    }
                    "gateway" => {
                        let c: aic_gateway::GatewayConfig = config::load(Some(&config_path), &no_flags)?;
                        aic_gateway::start(c, shutdown.clone()).await?
                    }
                    other => bail!("unknown service {other}"),
                };
                let started = (handle.quic_addr, handle.metrics_url());
                handles.push(handle);
                Ok(started)
            }
            Grid::Processes(children) => {
                let (child, ready) = spawn_service(dir, name, command).await;
                children.push(Service {
                    name: name.to_string(),
                    command: command.to_string(),
                    child,
                });
                let ready = ready?;
                pin_ports(&config_path, &ready)?;
                Ok((ready.quic, format!("http://{}/metrics", ready.metrics)))
            }
        }
    }

    /// Restarts a service started as a process, as a supervisor would: SIGTERM and wait (a
    /// service a drill killed is already gone), then start it again from its config file.
    async fn restart(&mut self, dir: &Path, name: &str) -> anyhow::Result<ReadyFile> {
        let service = self.service(name)?;
        if let Some(child) = service.child.take() {
            stop_child(name, child).await;
        }
        let (child, ready) = spawn_service(dir, name, &service.command).await;
        service.child = child;
        ready
    }

    /// SIGKILLs a service started as a process and reaps it: a crash, for drills.
    async fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let service = self.service(name)?;
        let Some(mut child) = service.child.take() else {
            bail!("{name} is not running");
        };
        child.kill().await.with_context(|| format!("killing {name}"))
    }

    fn service(&mut self, name: &str) -> anyhow::Result<&mut Service> {
        let Grid::Processes(children) = self else {
            bail!("only a devnet started with --processes runs its services as processes");
        };
        let names: Vec<String> = children.iter().map(|s| s.name.clone()).collect();
        children
            .iter_mut()
            .find(|s| s.name == name)
            .with_context(|| format!("no service {name}; the devnet runs {}", names.join(", ")))
    }

    /// Stops every service gracefully and waits for it.
    async fn stop(self) {
        match self {
            Grid::InProcess { handles, shutdown } => {
                shutdown.cancel();
                for handle in handles {
                    handle.stopped().await;
                }
            }
            Grid::Processes(children) => {
                let running: Vec<(String, tokio::process::Child)> = children
                    .into_iter()
                    .filter_map(|s| Some((s.name, s.child?)))
                    .collect();
                // All are told at once, then waited for.
                for (_, child) in &running {
                    terminate(child);
                }
                for (name, child) in running {
                    stop_child(&name, child).await;
                }
            }
        }
    }
}

/// Starts `aic COMMAND --config config/NAME.toml` with its log under logs/, and waits for its
/// ready file. The child comes back even when it did not get ready, so it is still stopped.
async fn spawn_service(
    dir: &Path,
    name: &str,
    command: &str,
) -> (Option<tokio::process::Child>, anyhow::Result<ReadyFile>) {
    let ready_path = dir.join("run").join(format!("{name}.ready"));
    let log_path = dir.join("logs").join(format!("{name}.log"));
    let config_path = dir.join("config").join(format!("{name}.toml"));
    let started = (|| -> anyhow::Result<tokio::process::Child> {
        for parent in [&ready_path, &log_path] {
            std::fs::create_dir_all(parent.parent().expect("has a parent"))?;
        }
        // A restart appends to the log and must not read the previous run's ready file.
        let _ = std::fs::remove_file(&ready_path);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut child = tokio::process::Command::new(std::env::current_exe()?);
        child
            .arg(command)
            .arg("--config")
            .arg(&config_path)
            .arg("--ready-file")
            .arg(&ready_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the
        // parent; it makes the child exit if the devnet dies without stopping it.
        unsafe {
            child.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                    .map_err(std::io::Error::from)
            });
        }
        child.spawn().with_context(|| format!("starting {name}"))
    })();
    match started {
        Ok(mut child) => {
            let ready = wait_for_ready(&ready_path, &log_path, &mut child).await;
            (Some(child), ready)
        }
        Err(error) => (None, Err(error)),
    }
}

/// Writes the ports a service bound into its config file, so a restart listens where its peers
/// (the Raft membership, the nodes' registrations) already look for it.
fn pin_ports(config_path: &Path, ready: &ReadyFile) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config_path)?;
    let mut config: toml::Table = toml::from_str(&text)?;
    let Some(toml::Value::Table(endpoint)) = config.get_mut("endpoint") else {
        return Ok(());
    };
    endpoint.insert("listen".into(), toml::Value::String(ready.quic.to_string()));
    endpoint.insert(
        "metrics_listen".into(),
        toml::Value::String(ready.metrics.to_string()),
    );
    std::fs::write(config_path, toml::to_string(&config)?)?;
    Ok(())
}

/// Sends SIGTERM: a graceful stop.
fn terminate(child: &tokio::process::Child) {
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
}

/// Stops a child gracefully (SIGTERM) and waits for it, killing it after 10 s.
async fn stop_child(name: &str, mut child: tokio::process::Child) {
    terminate(&child);
    match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => eprintln!("devnet: {name} exited with {status}"),
        _ => {
            eprintln!("devnet: {name} did not stop in time; killing it");
            let _ = child.kill().await;
        }
    }
}

async fn wait_for_ready(
    ready: &Path,
    log: &Path,
    child: &mut tokio::process::Child,
) -> anyhow::Result<ReadyFile> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut poll = tokio::time::interval(Duration::from_millis(25));
    loop {
        poll.tick().await;
        if let Ok(bytes) = std::fs::read(ready) {
            return Ok(serde_json::from_slice(&bytes)?);
        }
        if let Some(status) = child.try_wait()? {
            let log_text = std::fs::read_to_string(log).unwrap_or_default();
            bail!(
                "{} exited with {status} before listening:\n{log_text}",
                log.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "no ready file {} after 30 s; see {}",
                ready.display(),
                log.display()
            );
        }
    }
}

/// Polls the scheduler until every node is registered, up, and has measured an RTT.
async fn wait_until_up(
    client: &RpcClient,
    deadline: Instant,
    grid: &mut Grid,
) -> anyhow::Result<Vec<NodeStatus>> {
    let expected = STORAGE_NODES.len() + COMPUTE_NODES.len();
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    loop {
        poll.tick().await;
        let listed = nodes::list_nodes(client).await?;
        let members: Vec<&NodeStatus> = listed.iter().filter(|n| n.role != Role::Scheduler).collect();
        let settled = members.len() == expected
            && members
                .iter()
                .all(|n| n.state == NodeState::Up && !n.rtts.is_empty());
        if settled {
            return Ok(listed);
        }
        if let Grid::Processes(children) = grid {
            for service in children.iter_mut() {
                if let Some(status) = service
                    .child
                    .as_mut()
                    .map(|c| c.try_wait())
                    .transpose()?
                    .flatten()
                {
                    bail!("{} exited with {status}; see its log under logs/", service.name);
                }
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the grid did not come up in time; the scheduler sees:\n{}",
                nodes::render_table(&listed)
            );
        }
    }
}

/// What the devnet reports once it is up.
struct GridStatus {
    nodes: Vec<NodeStatus>,
    metrics: Map<String, Value>,
    /// The command that starts Prometheus against this devnet.
    prometheus: String,
    ledger: LedgerStatus,
    chain_verified: bool,
    digits: crate::dataset::Imported,
    job: Value,
    /// The gateway serving the job's trained model: its URL, the model's name, a demo key.
    gateway: Value,
    /// The AI PLAZA console: its URL, with the login token.
    plaza: Value,
    /// Blocks whose proposer won the lottery (a session's ticket holder, co-signed).
    lottery_blocks: Vec<Value>,
}

fn report(dir: &Path, args: &DevnetArgs, profile_path: &Path, status: &GridStatus) -> anyhow::Result<()> {
    let GridStatus {
        nodes,
        metrics,
        prometheus,
        ledger,
        chain_verified,
        digits,
        job,
        gateway,
        plaza,
        lottery_blocks,
    } = status;
    let chain_verified = *chain_verified;
    let mode = if args.processes { "processes" } else { "in-process" };
    let replica_name = |id: u64| {
        nodes
            .iter()
            .find(|n| n.role == Role::Scheduler && replica_id_of(&n.node_id) == id)
            .map_or_else(|| id.to_string(), |n| n.name.clone())
    };
    let ledger_json = json!({
        "chain_id": ledger.chain_id,
        "leader": ledger.leader.map(replica_name),
        "term": ledger.term,
        "replicas": ledger.replicas.iter().map(|r| json!({
            "id": r.id.to_string(),
            "addr": r.addr.addr,
            "node_id": r.addr.node_id,
            "voter": r.voter,
        })).collect::<Vec<_>>(),
        "applied_index": ledger.applied_index,
        "total_supply": ledger.total_supply,
        "block_height": ledger.block_height,
        "chain_verified": chain_verified,
    });
    let nodes_command = format!("aic nodes --profile {}", profile_path.display());
    let dataset_json = json!({
        "id": digits.dataset,
        "asset": digits.asset.to_string(),
        "name": digits.manifest.name,
        "rows": digits.manifest.rows,
        "train_shards": digits.manifest.train.len(),
        "test_shards": digits.manifest.test.len(),
        "replicas": digits.replicas.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
    });
    if args.json {
        let status = json!({
            "data_dir": dir.display().to_string(),
            "mode": mode,
            "nodes": nodes::nodes_json(nodes),
            "metrics": metrics,
            "prometheus": {"dir": dir.join("prometheus").display().to_string(), "command": prometheus},
            "ledger": ledger_json,
            "datasets": [dataset_json],
            "job": job,
            "gateway": gateway,
            "plaza": plaza,
            "chain": {
                "height": ledger.block_height,
                "verified": chain_verified,
                "lottery_blocks": lottery_blocks,
                "reward_epoch": ledger.reward_epoch,
                "rewards_issued": ledger.issued.to_string(),
                "rewards_accrued": ledger.accrued_rewards.to_string(),
            },
            "profile": profile_path.display().to_string(),
        });
        println!("{}", serde_json::to_string(&status)?);
        return Ok(());
    }
    println!(
        "AIC devnet is up ({mode}): {} scheduler replicas, {} storage nodes, {} compute nodes\ndata dir: {}\n",
        SCHEDULERS.len(),
        STORAGE_NODES.len(),
        COMPUTE_NODES.len(),
        dir.display()
    );
    print!("{}", nodes::render_table(nodes));
    println!(
        "\nledger {}: leader {}, term {}, applied index {}, total supply {} AIC, block height {}, chain {}",
        ledger.chain_id,
        ledger.leader.map_or_else(|| "none".to_string(), replica_name),
        ledger.term,
        ledger.applied_index,
        ledger.total_supply,
        ledger.block_height,
        if chain_verified {
            "verified"
        } else {
            "NOT verified"
        }
    );
    println!(
        "\ndataset {} ({}): {} rows in {} train + {} test shards on {} storage nodes, asset {}",
        digits.manifest.name,
        digits.dataset,
        digits.manifest.rows,
        digits.manifest.train.len(),
        digits.manifest.test.len(),
        digits.replicas.len(),
        digits.asset
    );
    println!("\nthe main job: softmax regression on the digits, paid from escrow\n");
    print!("{}", crate::job::render_report(job));
    let proposers: Vec<&str> = lottery_blocks
        .iter()
        .filter_map(|b| b["proposer"].as_str())
        .collect();
    println!(
        "\nchain: height {}, {} lottery blocks (proposers {}), {}",
        ledger.block_height,
        lottery_blocks.len(),
        proposers.join(", "),
        if chain_verified {
            "verified"
        } else {
            "NOT verified"
        }
    );
    if let Some(url) = gateway["url"].as_str() {
        println!(
            "\nthe trained model is served at {url}/v2/models/{} (Open Inference Protocol v2; key in {}):",
            gateway["model"].as_str().unwrap_or_default(),
            gateway["api_key_file"].as_str().unwrap_or_default()
        );
        println!(
            "  curl --cacert {} -H \"Authorization: Bearer $(cat {})\" {url}/v2/models/{}",
            gateway["ca"].as_str().unwrap_or_default(),
            gateway["api_key_file"].as_str().unwrap_or_default(),
            gateway["model"].as_str().unwrap_or_default()
        );
    }
    if let Some(url) = plaza["url"].as_str() {
        println!("\nAI PLAZA console: {url}");
    }
    println!("\nmetrics:");
    for (name, url) in metrics {
        println!("  {name:<12} {}", url.as_str().unwrap_or_default());
    }
    println!("\nPrometheus (ops/prometheus configuration, this devnet's targets, rules and alerts):");
    println!("  {prometheus}");
    println!("\ntry:");
    println!("  {nodes_command}");
    println!(
        "  aic wallet balance --profile {} --wallet {}",
        profile_path.display(),
        dir.join("wallets/fundraiser.key").display()
    );
    println!("  aic chain verify --profile {}", profile_path.display());
    println!(
        "  aic dataset stat {} --profile {}",
        digits.dataset,
        profile_path.display()
    );
    if !args.once {
        println!("Ctrl-C stops the devnet.");
    }
    Ok(())
}

/// Makes a fresh data dir: a new temporary one, or `dir` if it is empty or an earlier devnet's.
/// Returns the dir and whether it is temporary.
fn prepare_data_dir(dir: Option<&Path>) -> anyhow::Result<(PathBuf, bool)> {
    let Some(dir) = dir else {
        let temp = tempfile::Builder::new().prefix("aic-devnet-").tempdir()?;
        let path = temp.keep();
        std::fs::write(path.join(MARKER), b"made by aic devnet\n")?;
        return Ok((path, true));
    };
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !empty {
            if !dir.join(MARKER).exists() {
                bail!(
                    "{} is not empty and was not made by `aic devnet`; refusing to wipe it",
                    dir.display()
                );
            }
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), b"made by aic devnet\n")?;
    // Absolute, so the profiles and configs written inside name files that any working
    // directory finds.
    let dir = std::fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    Ok((dir, false))
}

fn write_toml(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let text = toml::to_string_pretty(value)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
