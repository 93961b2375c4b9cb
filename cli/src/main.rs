//! `aic`: the one command line of the grid. Each subcommand parses its flags and config and
//! calls into a library crate; nothing here decides anything the libraries could.

mod asset;
mod ca;
mod chain;
mod dataset;
mod devnet;
mod devnet_control;
mod devnet_prometheus;
mod gateway;
mod job;
mod ledger_client;
mod model_export;
mod model_use;
mod nodes;
mod onnx;
mod plaza;
mod profile;
mod roles;
mod storage;
mod wallet;

use clap::{Parser, Subcommand};

use aic_protocol::logging::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "aic",
    version,
    about = "AIC: a grid for sharing GPUs, data and models, paid for verified value"
)]
struct Cli {
    /// Log format on stderr: human or json. The filter comes from AIC_LOG (RUST_LOG syntax).
    #[arg(long, global = true, default_value = "human", env = "AIC_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage the cluster certificate authority and issue certificates.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Run a scheduler replica.
    Scheduler(roles::SchedulerArgs),
    /// Run a storage node.
    StorageNode(roles::NodeArgs),
    /// Run a compute node.
    ComputeNode(roles::NodeArgs),
    /// List the grid's nodes as the scheduler sees them.
    Nodes(nodes::NodesArgs),
    /// Start a whole grid on this machine with a throw-away CA.
    Devnet(devnet::DevnetArgs),
    /// Keys, balances, transfers and approvals of AIC.
    Wallet(wallet::WalletArgs),
    /// Dataset, Model and TrainedModel tokens.
    Asset(asset::AssetArgs),
    /// Blocks: head, one block, verify the chain, audit the ledger.
    Chain(chain::ChainArgs),
    /// The ledger's replicas: status and membership changes.
    Ledger(chain::LedgerArgs),
    /// Datasets on storage nodes: list, stat, preview, import, export.
    Dataset(dataset::DatasetArgs),
    /// Model assets: register an architecture others may train.
    Model(job::ModelArgs),
    /// Training jobs: submit, status, result, cancel.
    Job(job::JobArgs),
    /// Run an inference gateway (`--config`), or manage your API keys and inference escrow.
    Gateway(gateway::GatewayArgs),
    /// The AI PLAZA web console for your grid, on loopback (open the address it prints).
    Plaza(plaza::PlazaArgs),
    /// The client profile every command reads: write one, check one.
    Profile(profile::ProfileArgs),
    /// A storage node's backup and restore (dataset keys recovered from their escrows).
    Storage(storage::StorageArgs),
}

fn main() -> std::process::ExitCode {
    aic_protocol::install_crypto_provider();
    let cli = Cli::parse();
    // Services log at info; one-shot tools only warn, so their output stays readable.
    let default_level = match cli.command {
        Command::Scheduler(_) | Command::StorageNode(_) | Command::ComputeNode(_) => "info",
        Command::Gateway(ref args) if args.command.is_none() => "info",
        // openraft warns about routine election races; operators of one-shot tools need not see them.
        _ => "warn,openraft=error",
    };
    logging::init(cli.log_format, default_level);

    let result = match cli.command {
        Command::Ca(command) => ca::run(command),
        Command::Profile(args) => profile::run(args),
        command => run_async(command),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs a command inside an actix system on a multi-thread tokio runtime: quinn's tasks run on
/// the tokio workers, actors on the system's arbiter.
fn run_async(command: Command) -> anyhow::Result<()> {
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    });
    system.block_on(async move {
        match command {
            Command::Scheduler(args) => roles::run_scheduler(args).await,
            Command::StorageNode(args) => roles::run_storage(args).await,
            Command::ComputeNode(args) => roles::run_compute(args).await,
            Command::Nodes(args) => nodes::run(args).await,
            Command::Devnet(args) => devnet::run(args).await,
            Command::Wallet(args) => wallet::run(args).await,
            Command::Asset(args) => asset::run(args).await,
            Command::Chain(args) => chain::run(args).await,
            Command::Ledger(args) => chain::run_ledger(args).await,
            Command::Dataset(args) => dataset::run(args).await,
            Command::Model(args) => job::run_model(args).await,
            Command::Job(args) => job::run_job(args).await,
            Command::Gateway(args) => gateway::run(args).await,
            Command::Plaza(args) => plaza::run(args).await,
            Command::Storage(args) => storage::run(args).await,
            Command::Ca(_) | Command::Profile(_) => unreachable!("handled synchronously"),
        }
    })
}
