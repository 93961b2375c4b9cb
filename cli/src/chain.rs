//! `aic chain …` (blocks, verification, audit) and `aic ledger …` (replicas and membership).

use aic_ledger::api::{LedgerRequest, LedgerResponse};
use aic_ledger::block::BlockHeader;
use aic_ledger::raft::types::{replica_id_of, ReplicaAddr};
use aic_protocol::NodeId;
use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::ledger_client;
use crate::nodes::{self, ClientArgs};
use crate::wallet::print_out;

#[derive(Args, Clone, Debug)]
pub struct ChainArgs {
    #[command(subcommand)]
    pub command: ChainCommand,
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Clone, Debug)]
pub enum ChainCommand {
    /// The newest block.
    Head,
    /// Block N.
    Block { height: u64 },
    /// Re-check every hash link, Merkle root and proposer signature from genesis.
    Verify,
    /// Run the ledger's invariant audit on the leader.
    Audit,
}

fn block_json(header: &BlockHeader, txs: &[[u8; 32]]) -> serde_json::Value {
    json!({
        "height": header.height,
        "hash": hex::encode(header.hash()),
        "prev_hash": hex::encode(header.prev_hash),
        "merkle_root": hex::encode(header.merkle_root),
        "timestamp_ms": header.timestamp_ms,
        "proposer": header.proposer.to_string(),
        "session": header.session.map(|s| s.to_string()),
        "difficulty": header.difficulty,
        "tx_count": header.tx_count,
        "transactions": txs.iter().map(hex::encode).collect::<Vec<_>>(),
        "signatures": header.signatures.iter().map(|s| s.signer.to_string()).collect::<Vec<_>>(),
    })
}

async fn block(
    client: &aic_protocol::rpc::RpcClient,
    height: u64,
) -> anyhow::Result<(BlockHeader, Vec<[u8; 32]>)> {
    let LedgerResponse::Blocks(mut blocks) = ledger_client::request(
        client,
        &LedgerRequest::Blocks {
            from: height,
            count: 1,
        },
    )
    .await?
    else {
        bail!("unexpected answer");
    };
    blocks
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no block at height {height}"))
}

pub async fn run(args: ChainArgs) -> anyhow::Result<()> {
    let client = nodes::connect(&args.client.load()?).await?;
    match args.command {
        ChainCommand::Head | ChainCommand::Block { .. } => {
            let height = match args.command {
                ChainCommand::Block { height } => height,
                _ => {
                    let LedgerResponse::Status(status) =
                        ledger_client::request(&client, &LedgerRequest::Status).await?
                    else {
                        bail!("unexpected answer");
                    };
                    status.block_height
                }
            };
            let (header, txs) = block(&client, height).await?;
            let value = block_json(&header, &txs);
            print_out(args.json, value.clone(), || {
                serde_json::to_string_pretty(&value).unwrap_or_default()
            });
        }
        ChainCommand::Verify => {
            let height = ledger_client::verify(&client).await?;
            print_out(args.json, json!({"verified": true, "height": height}), || {
                format!("chain verified from genesis to height {height}")
            });
        }
        ChainCommand::Audit => {
            let LedgerResponse::Audit(result) =
                ledger_client::request(&client, &LedgerRequest::Audit).await?
            else {
                bail!("unexpected answer");
            };
            match result {
                Ok(()) => print_out(args.json, json!({"ok": true}), || {
                    "ledger invariants hold".to_string()
                }),
                Err(violation) => bail!("ledger audit failed: {violation}"),
            }
        }
    }
    Ok(())
}

#[derive(Args, Clone, Debug)]
pub struct LedgerArgs {
    #[command(subcommand)]
    pub command: LedgerCommand,
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Clone, Debug)]
pub enum LedgerCommand {
    /// Leader, term, replicas, applied index, supply and chain head.
    Status,
    /// Add a scheduler replica as a non-voting learner (it catches up from the leader).
    AddLearner {
        /// The replica's QUIC address (host:port).
        #[arg(long)]
        addr: String,
        /// The replica's node id (from its certificate; `aic nodes` shows it).
        #[arg(long)]
        node_id: NodeId,
    },
    /// Make learners voters: the new voter set is the current one plus these node ids.
    Promote { node_ids: Vec<NodeId> },
    /// Remove replicas from the voter set and the cluster.
    Remove { node_ids: Vec<NodeId> },
    /// Write a genesis file for a new cluster (every replica must be given the same file).
    Genesis(GenesisArgs),
}

#[derive(Args, Clone, Debug)]
pub struct GenesisArgs {
    #[arg(long)]
    pub chain_id: String,
    #[arg(long)]
    pub fundraiser: String,
    #[arg(long)]
    pub advisors: String,
    #[arg(long)]
    pub company: String,
    #[arg(long)]
    pub team: String,
    #[arg(long)]
    pub operations: String,
    /// The key that signs system transactions (escrow release, slash, reward).
    #[arg(long)]
    pub system_key: String,
    /// Unsold part of the fundraiser's share, burned at genesis (AIC).
    #[arg(long, default_value = "0")]
    pub unsold: aic_ledger::Amount,
    /// Vesting of the advisors', company's and team's shares.
    #[arg(long, default_value_t = 365)]
    pub vesting_days: u64,
    #[arg(long, default_value_t = 0)]
    pub cliff_days: u64,
    #[arg(long)]
    pub out: std::path::PathBuf,
}

fn write_genesis(args: GenesisArgs) -> anyhow::Result<()> {
    use crate::ledger_client::parse_address;
    use aic_ledger::genesis::{Genesis, Holders, VestingSchedule};
    anyhow::ensure!(
        !args.out.exists(),
        "{} exists; a genesis is never overwritten",
        args.out.display()
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let day_ms = 24 * 3600 * 1000;
    let mut genesis = Genesis::local(
        &args.chain_id,
        now_ms,
        Holders {
            fundraiser: parse_address(&args.fundraiser)?,
            advisors: parse_address(&args.advisors)?,
            company: parse_address(&args.company)?,
            team: parse_address(&args.team)?,
            operations: parse_address(&args.operations)?,
        },
        parse_address(&args.system_key)?,
    );
    genesis.unsold_fundraiser = args.unsold;
    genesis.vesting = VestingSchedule {
        start_ms: now_ms,
        cliff_ms: args.cliff_days.saturating_mul(day_ms),
        duration_ms: args.vesting_days.saturating_mul(day_ms),
    };
    genesis.validate().map_err(anyhow::Error::msg)?;
    genesis.save(&args.out).map_err(anyhow::Error::msg)?;
    println!("wrote {}", args.out.display());
    Ok(())
}

pub async fn run_ledger(args: LedgerArgs) -> anyhow::Result<()> {
    if let LedgerCommand::Genesis(genesis) = args.command {
        return write_genesis(genesis);
    }
    let client = nodes::connect(&args.client.load()?).await?;
    let LedgerResponse::Status(status) = ledger_client::request(&client, &LedgerRequest::Status).await?
    else {
        bail!("unexpected answer");
    };
    let voters: Vec<u64> = status.replicas.iter().filter(|r| r.voter).map(|r| r.id).collect();
    let request = match args.command {
        LedgerCommand::Genesis(_) => unreachable!("handled above"),
        LedgerCommand::Status => {
            let value = serde_json::to_value(&status)?;
            print_out(args.json, value, || {
                let mut text = format!(
                    "chain {}  leader {}  term {}  applied index {}\nsupply {} AIC  burned {} AIC  issued {} AIC  height {}\nreplicas:",
                    status.chain_id,
                    status.leader.map_or("none".to_string(), |l| l.to_string()),
                    status.term,
                    status.applied_index,
                    status.total_supply,
                    status.burned,
                    status.issued,
                    status.block_height
                );
                for r in &status.replicas {
                    text.push_str(&format!(
                        "\n  {:<20} {}  {}",
                        r.id,
                        r.addr,
                        if r.voter { "voter" } else { "learner" }
                    ));
                }
                text
            });
            return Ok(());
        }
        LedgerCommand::AddLearner { addr, node_id } => LedgerRequest::AddLearner {
            id: replica_id_of(&node_id),
            addr: ReplicaAddr {
                addr,
                node_id: node_id.to_string(),
            },
        },
        LedgerCommand::Promote { node_ids } => {
            let mut set = voters;
            set.extend(node_ids.iter().map(replica_id_of));
            set.sort_unstable();
            set.dedup();
            LedgerRequest::ChangeMembership { voters: set }
        }
        LedgerCommand::Remove { node_ids } => {
            let removed: Vec<u64> = node_ids.iter().map(replica_id_of).collect();
            let set: Vec<u64> = voters.into_iter().filter(|v| !removed.contains(v)).collect();
            if set.is_empty() {
                bail!("refusing to remove every voter");
            }
            LedgerRequest::ChangeMembership { voters: set }
        }
    };
    let LedgerResponse::MembershipChanged { index } = ledger_client::request(&client, &request).await? else {
        bail!("unexpected answer");
    };
    print_out(args.json, json!({"membership_log_index": index}), || {
        format!("membership changed at log index {index}")
    });
    Ok(())
}
