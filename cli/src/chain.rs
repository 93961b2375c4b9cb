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
    /// Rejoin a replica that lost its data (started again on an empty data dir): removed from the
    /// membership if it is still in it, added as a learner (which waits until it has caught
    /// up), then promoted to voter. Needs the operator's profile and a majority without it.
    Rejoin {
        /// The replica's QUIC address (host:port).
        #[arg(long)]
        addr: String,
        /// The replica's node id (its certificate's; `aic ledger status` lists them).
        #[arg(long)]
        node_id: NodeId,
    },
    /// Back the ledger up online: the leader takes a snapshot and it is fetched into FILE
    /// (never over an existing file). Needs the operator's profile.
    Backup {
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// What a backup holds: chain, height, last log index, members.
    Inspect {
        #[arg(long)]
        backup: std::path::PathBuf,
    },
    /// Restore one replica of a cluster being restored as a whole from a backup, into its empty
    /// data dir (the service stopped). Run it for every replica of the new cluster with the
    /// same backup and the same --voter list; replicas the list leaves out (retired ones) are
    /// not members any more. A data dir holding data is refused: a single lost replica rejoins
    /// empty instead (add-learner, promote).
    Restore {
        #[arg(long)]
        backup: std::path::PathBuf,
        /// The replica's data dir ([ledger] data_dir); must be empty or absent.
        #[arg(long)]
        data_dir: std::path::PathBuf,
        /// The cluster's genesis file: the backup must be of its chain.
        #[arg(long)]
        genesis: std::path::PathBuf,
        /// A replica of the restored cluster by node id (repeatable; `aic ledger inspect` lists
        /// the backup's members).
        #[arg(long = "voter", required = true)]
        voters: Vec<NodeId>,
    },
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
    match args.command {
        LedgerCommand::Genesis(genesis) => return write_genesis(genesis),
        LedgerCommand::Inspect { backup } => {
            let info = aic_ledger::backup::describe(&aic_ledger::backup::read_file(&backup)?)?;
            print_out(args.json, backup_json(&info), || backup_text(&info));
            return Ok(());
        }
        LedgerCommand::Restore {
            backup,
            data_dir,
            genesis,
            voters,
        } => return restore(&backup, &data_dir, &genesis, &voters, args.json),
        _ => {}
    }
    let client = nodes::connect(&args.client.load()?).await?;
    if let LedgerCommand::Backup { out } = &args.command {
        return backup(&client, out, args.json).await;
    }
    if let LedgerCommand::Rejoin { addr, node_id } = &args.command {
        return rejoin(&client, addr, *node_id, args.json).await;
    }
    let LedgerResponse::Status(status) = ledger_client::request(&client, &LedgerRequest::Status).await?
    else {
        bail!("unexpected answer");
    };
    let request = match args.command {
        LedgerCommand::Genesis(_)
        | LedgerCommand::Inspect { .. }
        | LedgerCommand::Restore { .. }
        | LedgerCommand::Backup { .. }
        | LedgerCommand::Rejoin { .. } => unreachable!("handled above"),
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
        command => {
            let (request, warning) = membership_change(&status.replicas, command)?;
            if let Some(warning) = warning {
                eprintln!("warning: {warning}");
            }
            request
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

/// Removes (when still a member), adds as a learner and promotes one replica, each step checked
/// against the membership as it then is.
async fn rejoin(
    client: &aic_protocol::rpc::RpcClient,
    addr: &str,
    node_id: NodeId,
    json: bool,
) -> anyhow::Result<()> {
    let replicas = || async {
        match ledger_client::request(client, &LedgerRequest::Status).await? {
            LedgerResponse::Status(status) => Ok::<_, anyhow::Error>(status.replicas),
            other => bail!("unexpected answer {other:?}"),
        }
    };
    let change = |request: LedgerRequest| async move {
        match ledger_client::request(client, &request).await? {
            LedgerResponse::MembershipChanged { index } => Ok::<_, anyhow::Error>(index),
            other => bail!("unexpected answer {other:?}"),
        }
    };
    let id = replica_id_of(&node_id);
    let mut steps = Vec::new();
    if replicas().await?.iter().any(|r| r.id == id) {
        let (request, _) = membership_change(
            &replicas().await?,
            LedgerCommand::Remove {
                node_ids: vec![node_id],
            },
        )?;
        steps.push(("removed", change(request).await?));
    }
    let (request, _) = membership_change(
        &replicas().await?,
        LedgerCommand::AddLearner {
            addr: addr.to_string(),
            node_id,
        },
    )?;
    steps.push(("added as a learner, caught up", change(request).await?));
    let (request, warning) = membership_change(
        &replicas().await?,
        LedgerCommand::Promote {
            node_ids: vec![node_id],
        },
    )?;
    if let Some(warning) = warning {
        eprintln!("warning: {warning}");
    }
    steps.push(("promoted to voter", change(request).await?));
    print_out(
        json,
        json!(steps
            .iter()
            .map(|(step, index)| json!({"step": step, "membership_log_index": index}))
            .collect::<Vec<_>>()),
        || {
            steps
                .iter()
                .map(|(step, index)| format!("{node_id}: {step} (membership at log index {index})"))
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
    Ok(())
}

/// Fetches an online backup piece by piece into `out`.
async fn backup(
    client: &aic_protocol::rpc::RpcClient,
    out: &std::path::Path,
    json: bool,
) -> anyhow::Result<()> {
    if out.exists() {
        bail!("{} exists; a backup is never overwritten", out.display());
    }
    let mut snapshot = None;
    let mut bytes = Vec::new();
    loop {
        let request = LedgerRequest::Backup {
            snapshot,
            offset: bytes.len() as u64,
        };
        let LedgerResponse::Backup {
            snapshot: hash,
            total,
            bytes: piece,
        } = ledger_client::request(client, &request).await?
        else {
            bail!("unexpected answer to a backup request");
        };
        if total > aic_ledger::backup::MAX_BACKUP_BYTES {
            bail!(
                "the ledger's snapshot is {total} bytes, over the {} a backup takes",
                aic_ledger::backup::MAX_BACKUP_BYTES
            );
        }
        if piece.is_empty() && (bytes.len() as u64) < total {
            bail!(
                "the leader answered an empty piece at {} of {total} bytes",
                bytes.len()
            );
        }
        snapshot = Some(hash);
        bytes.extend_from_slice(&piece);
        if bytes.len() as u64 >= total {
            if blake3::hash(&bytes).as_bytes() != &hash {
                bail!("the backup's pieces do not add up to the snapshot the leader took; nothing written");
            }
            break;
        }
    }
    let info = aic_ledger::backup::describe(&bytes)?;
    aic_ledger::backup::write_file(out, &bytes)?;
    let mut value = backup_json(&info);
    value["file"] = json!(out);
    value["bytes"] = json!(bytes.len());
    print_out(json, value, || {
        format!(
            "wrote {} ({} bytes)\n{}",
            out.display(),
            bytes.len(),
            backup_text(&info)
        )
    });
    Ok(())
}

/// Fills one replica's empty data dir from a backup, as a member of the restored cluster.
fn restore(
    backup: &std::path::Path,
    data_dir: &std::path::Path,
    genesis: &std::path::Path,
    voters: &[NodeId],
    json: bool,
) -> anyhow::Result<()> {
    let genesis = aic_ledger::genesis::Genesis::load(genesis).map_err(anyhow::Error::msg)?;
    let snapshot = aic_ledger::backup::read_file(backup)?;
    let ids: Vec<u64> = voters
        .iter()
        .map(aic_ledger::raft::types::replica_id_of)
        .collect();
    let info = aic_ledger::backup::restore_into(data_dir, &snapshot, &ids, &genesis.chain_id)?;
    if ids.len() % 2 == 0 {
        eprintln!(
            "warning: {} voters: an even count tolerates no more failures than one fewer",
            ids.len()
        );
    }
    let mut value = backup_json(&info);
    value["data_dir"] = json!(data_dir);
    print_out(json, value, || {
        format!(
            "restored {} from {}\n{}\nstart the replica; once every voter above is restored and started they elect a leader",
            data_dir.display(),
            backup.display(),
            backup_text(&info)
        )
    });
    Ok(())
}

fn backup_json(info: &aic_ledger::backup::BackupInfo) -> serde_json::Value {
    json!({
        "chain_id": info.chain_id,
        "last_log_index": info.last_log.map(|l| l.index),
        "block_height": info.block_height,
        "state_hash": hex::encode(info.state_hash),
        "members": info.members.iter().map(|(id, addr)| json!({
            "id": id,
            "node_id": addr.node_id,
            "addr": addr.addr,
            "voter": info.voters.contains(id),
        })).collect::<Vec<_>>(),
    })
}

fn backup_text(info: &aic_ledger::backup::BackupInfo) -> String {
    let mut text = format!(
        "chain {}  height {}  last log index {}  state {}\nmembers:",
        info.chain_id,
        info.block_height,
        info.last_log.map_or("none".to_string(), |l| l.index.to_string()),
        &hex::encode(info.state_hash)[..16]
    );
    for (id, addr) in &info.members {
        text.push_str(&format!(
            "\n  {:<20} {}  {}  {}",
            id,
            addr.node_id,
            addr.addr,
            if info.voters.contains(id) {
                "voter"
            } else {
                "learner"
            }
        ));
    }
    text
}

/// Why `aic ledger` refuses a membership change (nothing is changed).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum MembershipRefusal {
    #[error("replica {node} is already a {} of this cluster (at {addr}); nothing changed", if *.voter { "voter" } else { "learner" })]
    AlreadyMember { node: NodeId, voter: bool, addr: String },
    #[error(
        "{0} is not a learner of this cluster: add it with `aic ledger add-learner` first; nothing changed"
    )]
    NotALearner(NodeId),
    #[error("{0} is already a voter; nothing changed")]
    AlreadyVoter(NodeId),
    #[error("{0} is not a member of this cluster; nothing changed")]
    NotAMember(NodeId),
    #[error("refusing to remove every voter; nothing changed")]
    EveryVoter,
    #[error("not a membership change")]
    NotAChange,
}

/// The membership request an `aic ledger` command makes of the cluster as it is, and a warning to
/// print with it; a change that would do nothing, or undo the cluster, is refused with one line.
fn membership_change(
    replicas: &[aic_ledger::api::ReplicaView],
    command: LedgerCommand,
) -> Result<(LedgerRequest, Option<String>), MembershipRefusal> {
    let member = |id: u64| replicas.iter().find(|r| r.id == id);
    let mut voters: Vec<u64> = replicas.iter().filter(|r| r.voter).map(|r| r.id).collect();
    let request = match command {
        LedgerCommand::AddLearner { addr, node_id } => {
            let id = replica_id_of(&node_id);
            if let Some(r) = member(id) {
                return Err(MembershipRefusal::AlreadyMember {
                    node: node_id,
                    voter: r.voter,
                    addr: r.addr.addr.clone(),
                });
            }
            return Ok((
                LedgerRequest::AddLearner {
                    id,
                    addr: ReplicaAddr {
                        addr,
                        node_id: node_id.to_string(),
                    },
                },
                None,
            ));
        }
        LedgerCommand::Promote { node_ids } => {
            for node in &node_ids {
                match member(replica_id_of(node)) {
                    None => return Err(MembershipRefusal::NotALearner(*node)),
                    Some(r) if r.voter => return Err(MembershipRefusal::AlreadyVoter(*node)),
                    Some(_) => voters.push(replica_id_of(node)),
                }
            }
            voters
        }
        LedgerCommand::Remove { node_ids } => {
            for node in &node_ids {
                if member(replica_id_of(node)).is_none() {
                    return Err(MembershipRefusal::NotAMember(*node));
                }
            }
            let removed: Vec<u64> = node_ids.iter().map(replica_id_of).collect();
            voters.retain(|v| !removed.contains(v));
            if voters.is_empty() {
                return Err(MembershipRefusal::EveryVoter);
            }
            voters
        }
        LedgerCommand::Status
        | LedgerCommand::Genesis(_)
        | LedgerCommand::Backup { .. }
        | LedgerCommand::Inspect { .. }
        | LedgerCommand::Restore { .. }
        | LedgerCommand::Rejoin { .. } => return Err(MembershipRefusal::NotAChange),
    };
    let mut voters = request;
    voters.sort_unstable();
    voters.dedup();
    let warning = (voters.len() % 2 == 0).then(|| {
        format!(
            "{} voters: a majority is {}, so it survives {} down, no more than {} voters would; \
             an odd count is the one to aim for",
            voters.len(),
            voters.len() / 2 + 1,
            (voters.len() - 1) / 2,
            voters.len() - 1
        )
    });
    Ok((LedgerRequest::ChangeMembership { voters }, warning))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aic_ledger::api::ReplicaView;

    fn node(b: u8) -> NodeId {
        hex::encode([b; 32]).parse().expect("64 hex digits")
    }

    fn view(b: u8, voter: bool) -> ReplicaView {
        ReplicaView {
            id: replica_id_of(&node(b)),
            addr: ReplicaAddr {
                addr: format!("127.0.0.1:{}", 7400 + u16::from(b)),
                node_id: node(b).to_string(),
            },
            voter,
            matched_index: None,
        }
    }

    /// Three voters and a learner.
    fn cluster() -> Vec<ReplicaView> {
        vec![view(1, true), view(2, true), view(3, true), view(4, false)]
    }

    fn refusal(command: LedgerCommand) -> MembershipRefusal {
        membership_change(&cluster(), command).expect_err("refused")
    }

    #[test]
    fn a_replica_added_twice_or_promoted_before_it_was_added_is_refused() {
        let again = refusal(LedgerCommand::AddLearner {
            addr: "127.0.0.1:9999".into(),
            node_id: node(2),
        });
        assert_eq!(
            again,
            MembershipRefusal::AlreadyMember {
                node: node(2),
                voter: true,
                addr: "127.0.0.1:7402".into()
            }
        );
        let stranger = refusal(LedgerCommand::Promote {
            node_ids: vec![node(9)],
        });
        assert_eq!(stranger, MembershipRefusal::NotALearner(node(9)));
        let voter = refusal(LedgerCommand::Promote {
            node_ids: vec![node(1)],
        });
        assert_eq!(voter, MembershipRefusal::AlreadyVoter(node(1)));
        let unknown = refusal(LedgerCommand::Remove {
            node_ids: vec![node(9)],
        });
        assert_eq!(unknown, MembershipRefusal::NotAMember(node(9)));
        let everyone = refusal(LedgerCommand::Remove {
            node_ids: vec![node(1), node(2), node(3)],
        });
        assert_eq!(everyone, MembershipRefusal::EveryVoter);
    }

    #[test]
    fn an_even_voter_count_is_warned_about_and_an_odd_one_is_not() {
        let (request, warning) = membership_change(
            &cluster(),
            LedgerCommand::Promote {
                node_ids: vec![node(4)],
            },
        )
        .unwrap();
        let LedgerRequest::ChangeMembership { voters } = request else {
            panic!("{request:?}")
        };
        assert_eq!(voters.len(), 4);
        let warning = warning.expect("four voters are warned about");
        assert!(
            warning.starts_with("4 voters: a majority is 3, so it survives 1 down"),
            "{warning}"
        );
        let (_, warning) = membership_change(
            &cluster(),
            LedgerCommand::Remove {
                node_ids: vec![node(3)],
            },
        )
        .unwrap();
        assert!(warning.is_some(), "two voters are warned about");
        let mut five = cluster();
        five.push(view(5, false));
        let (request, warning) = membership_change(
            &five,
            LedgerCommand::Promote {
                node_ids: vec![node(4), node(5)],
            },
        )
        .unwrap();
        assert!(matches!(request, LedgerRequest::ChangeMembership { ref voters } if voters.len() == 5));
        assert_eq!(warning, None);
        let (request, warning) = membership_change(
            &cluster(),
            LedgerCommand::AddLearner {
                addr: "127.0.0.1:7405".into(),
                node_id: node(5),
            },
        )
        .unwrap();
        assert!(matches!(request, LedgerRequest::AddLearner { .. }));
        assert_eq!(warning, None);
    }
}
