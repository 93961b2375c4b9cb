//! `aic nodes`, and the client side every user command shares: a profile naming the scheduler
//! and the client's certificate, a client endpoint, and the node table's text and JSON forms.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use aic_protocol::certs::IdentityFiles;
use aic_protocol::config::{self, Invalid, Validate};
use aic_protocol::messages::{ClientRequest, ClientResponse, NodeStatus};
use aic_protocol::rpc::RpcClient;
use aic_protocol::transport::{self, TransportTuning};
use aic_protocol::Role;
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// A client profile (`client.toml`): where the scheduler is and who we are.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientProfile {
    /// The scheduler's QUIC address (host:port).
    pub scheduler: String,
    /// The cluster's other scheduler replicas, tried in turn when `scheduler` does not answer:
    /// any replica serves every command (writes are forwarded to the ledger's leader).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    /// How long a command waits for a ledger leader with a majority of replicas behind it
    /// before it fails, saying so (an election takes about a second; fewer than a majority of
    /// replicas up never ends on its own).
    pub leader_wait_ms: u64,
    pub tls: IdentityFiles,
}

impl Default for ClientProfile {
    fn default() -> Self {
        ClientProfile {
            scheduler: "127.0.0.1:7400".into(),
            replicas: Vec::new(),
            leader_wait_ms: 15_000,
            tls: IdentityFiles {
                ca: "certs/ca.pem".into(),
                cert: "certs/client.pem".into(),
                key: "certs/client.key".into(),
            },
        }
    }
}

impl Validate for ClientProfile {
    fn validate(&self) -> Result<(), Invalid> {
        if !self.scheduler.contains(':') {
            return Err(Invalid::new("scheduler", "must be host:port"));
        }
        if self.replicas.iter().any(|r| !r.contains(':')) {
            return Err(Invalid::new("replicas", "each must be host:port"));
        }
        if !(100..=600_000).contains(&self.leader_wait_ms) {
            return Err(Invalid::new("leader_wait_ms", "must be 100 to 600000"));
        }
        Ok(())
    }
}

/// Flags shared by every client command.
#[derive(Args, Clone, Debug, Default)]
pub struct ClientArgs {
    /// Client profile (TOML with `scheduler` and `[tls]`; `aic profile init` or `aic devnet`
    /// writes one).
    #[arg(long, env = "AIC_PROFILE", global = true)]
    pub profile: Option<PathBuf>,
    /// The scheduler's QUIC address, overriding the profile.
    #[arg(long, global = true)]
    pub scheduler: Option<String>,
    /// How long to wait for a ledger leader with a majority before failing, overriding the
    /// profile's `leader_wait_ms`.
    #[arg(long, global = true, value_name = "MS")]
    pub leader_wait_ms: Option<u64>,
}

impl ClientArgs {
    pub fn load(&self) -> anyhow::Result<ClientProfile> {
        let mut flags = Map::new();
        if let Some(scheduler) = &self.scheduler {
            flags.insert("scheduler".into(), json!(scheduler));
        }
        if let Some(wait) = self.leader_wait_ms {
            flags.insert("leader_wait_ms".into(), json!(wait));
        }
        let mut profile: ClientProfile = config::load(self.profile.as_deref(), &Value::Object(flags))?;
        if let Some(file) = &self.profile {
            crate::profile::resolve_relative_to(&mut profile, file);
        }
        aic_ledger::remote::set_leader_wait(std::time::Duration::from_millis(profile.leader_wait_ms));
        Ok(profile)
    }
}

/// How long the profile's own scheduler may take to answer before the other replicas are asked.
const PRIMARY_HEAD_START: std::time::Duration = std::time::Duration::from_millis(300);

/// Connects to the scheduler named by `profile` with the profile's client certificate.
pub async fn connect(profile: &ClientProfile) -> anyhow::Result<RpcClient> {
    let identity = profile.tls.load()?;
    let any: SocketAddr = if profile.scheduler.starts_with('[') {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let tuning = TransportTuning::default();
    let endpoint = transport::endpoint(transport::bind_udp(any, &tuning)?, &identity, &tuning)?;
    // The profile's scheduler first; every other replica too once it has had a head start, and
    // the first to answer serves (each handshake is bounded by the transport's timeout), so a
    // dead scheduler costs the head start while another replica is up.
    let addresses: Vec<&String> = std::iter::once(&profile.scheduler)
        .chain(&profile.replicas)
        .collect();
    let attempts: Vec<_> = addresses
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let endpoint = endpoint.clone();
            Box::pin(async move {
                if i > 0 {
                    tokio::time::sleep(PRIMARY_HEAD_START).await;
                }
                RpcClient::connect(&endpoint, addr, Role::Scheduler).await
            })
        })
        .collect();
    let first = futures::future::select_ok(attempts).await;
    match first {
        Ok((client, _)) => Ok(client),
        Err(error) if addresses.len() == 1 => Err(error.into()),
        Err(error) => anyhow::bail!(
            "no scheduler replica of {} answers (the last: {error})",
            addresses
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

pub async fn list_nodes(client: &RpcClient) -> anyhow::Result<Vec<NodeStatus>> {
    match client.call(&ClientRequest::ListNodes).await? {
        ClientResponse::Nodes(nodes) => Ok(nodes),
        other => anyhow::bail!("unexpected answer to ListNodes: {other:?}"),
    }
}

#[derive(Args, Clone, Debug)]
pub struct NodesArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: NodesArgs) -> anyhow::Result<()> {
    let profile = args.client.load()?;
    let client = connect(&profile).await?;
    let nodes = list_nodes(&client).await?;
    let ratings = ratings(&client).await?;
    if args.json {
        let mut listed = nodes_json(&nodes);
        for node in listed.as_array_mut().into_iter().flatten() {
            let id = node["id"].as_str().unwrap_or_default().to_string();
            node["rating"] = ratings["records"][&id].clone();
            node["penalties"] = json!(penalties_of(&ratings, node["name"].as_str().unwrap_or_default()));
        }
        println!("{}", serde_json::to_string_pretty(&listed)?);
    } else {
        print!("{}", render_table(&nodes));
        let penalties = ratings["penalties"].as_array().cloned().unwrap_or_default();
        if !penalties.is_empty() {
            println!("\npenalties:");
            for p in penalties {
                println!(
                    "  {:<12} job {} task {}: {} (reputation now {:.2})",
                    p["node"].as_str().unwrap_or_default(),
                    p["job"].as_str().unwrap_or_default(),
                    p["task"].as_str().unwrap_or_default(),
                    p["reason"].as_str().unwrap_or_default(),
                    p["reputation_after"].as_f64().unwrap_or(0.0)
                );
            }
        }
    }
    Ok(())
}

/// The rater's records (by node id) and penalties, from the scheduler.
pub async fn ratings(client: &RpcClient) -> anyhow::Result<Value> {
    match client.call(&ClientRequest::Ratings).await? {
        ClientResponse::Ratings { report } => Ok(serde_json::from_str(&report)?),
        other => anyhow::bail!("unexpected answer to Ratings: {other:?}"),
    }
}

fn penalties_of(ratings: &Value, name: &str) -> Vec<Value> {
    ratings["penalties"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["node"] == name)
        .cloned()
        .collect()
}

/// The node list as JSON: ids in full, RTT peers by id and name.
pub fn nodes_json(nodes: &[NodeStatus]) -> Value {
    let names = names_by_id(nodes);
    Value::Array(
        nodes
            .iter()
            .map(|node| {
                json!({
                    "id": node.node_id.to_string(),
                    "name": node.name,
                    "role": node.role,
                    "addr": node.quic_addr,
                    "metrics_addr": node.metrics_addr,
                    "state": node.state,
                    "version": node.version,
                    "last_heartbeat_ms_ago": node.last_heartbeat_ms_ago,
                    "times_marked_down": node.times_marked_down,
                    "payout_address": node.payout_address,
                    "unpaid": is_unpaid(node),
                    "capacity": {
                        "cpu_cores": node.capacity.cpu_cores,
                        "memory_bytes": node.capacity.memory_bytes,
                        "storage_bytes": node.capacity.storage_bytes,
                        "device": node.capacity.device,
                    },
                    "rtts": node.rtts.iter().map(|rtt| json!({
                        "peer": rtt.peer.to_string(),
                        "peer_name": names.get(&rtt.peer.to_string()).cloned().unwrap_or_default(),
                        "rtt_us": rtt.rtt_micros,
                    })).collect::<Vec<_>>(),
                    "holdings": node.holdings.iter().map(|h| json!({
                        "dataset": h.dataset,
                        "healthy_shards": h.healthy_shards,
                        "shards": h.shards,
                        "bytes": h.bytes,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

/// A provider (storage or compute node) with no payout address: it works for nothing.
fn is_unpaid(node: &NodeStatus) -> bool {
    matches!(node.role, Role::Storage | Role::Compute) && node.payout_address.is_empty()
}

fn names_by_id(nodes: &[NodeStatus]) -> HashMap<String, String> {
    nodes
        .iter()
        .map(|n| (n.node_id.to_string(), n.name.clone()))
        .collect()
}

/// The node list as an aligned text table.
pub fn render_table(nodes: &[NodeStatus]) -> String {
    let names = names_by_id(nodes);
    let header = [
        "NAME",
        "ROLE",
        "STATE",
        "ADDRESS",
        "LAST HEARTBEAT",
        "NODE ID",
        "DOWN",
        "PAID TO",
        "RTT TO PEERS",
    ];
    let rows: Vec<[String; 9]> = nodes
        .iter()
        .map(|node| {
            let heartbeat = node
                .last_heartbeat_ms_ago
                .map_or_else(|| "-".to_string(), |ms| format!("{:.1}s ago", ms as f64 / 1000.0));
            let rtts = if node.rtts.is_empty() {
                "-".to_string()
            } else {
                node.rtts
                    .iter()
                    .map(|rtt| {
                        let peer = names
                            .get(&rtt.peer.to_string())
                            .cloned()
                            .unwrap_or_else(|| rtt.peer.short());
                        format!("{peer} {:.2}ms", rtt.rtt_micros as f64 / 1000.0)
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            [
                node.name.clone(),
                node.role.to_string(),
                node.state.as_str().to_string(),
                node.quic_addr.clone(),
                heartbeat,
                node.node_id.short(),
                node.times_marked_down.to_string(),
                match (&node.role, node.payout_address.as_str()) {
                    _ if is_unpaid(node) => "unpaid".to_string(),
                    (_, "") => "-".to_string(),
                    (_, address) => address.chars().take(12).collect(),
                },
                rtts,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ");
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut table = line(header.to_vec());
    for row in &rows {
        table.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use aic_protocol::messages::{Capacity, NodeState};
    use aic_protocol::NodeId;

    fn node(name: &str, role: Role, payout_address: &str) -> NodeStatus {
        NodeStatus {
            node_id: NodeId::from_public_key(name.as_bytes()),
            name: name.into(),
            role,
            version: String::new(),
            quic_addr: "127.0.0.1:7410".into(),
            metrics_addr: String::new(),
            state: NodeState::Up,
            last_heartbeat_ms_ago: Some(100),
            times_marked_down: 0,
            capacity: Capacity::default(),
            rtts: Vec::new(),
            holdings: Vec::new(),
            payout_address: payout_address.into(),
        }
    }

    #[test]
    fn a_provider_without_a_payout_address_shows_as_unpaid() {
        let nodes = [
            node("storage-1", Role::Storage, ""),
            node(
                "compute-1",
                Role::Compute,
                "aa11bb22cc33dd44ee55ff6677889900aabbccdd",
            ),
            node("scheduler-1", Role::Scheduler, ""),
        ];
        let table = render_table(&nodes);
        let row = |name: &str| table.lines().find(|l| l.starts_with(name)).unwrap().to_string();
        assert!(row("storage-1").contains(" unpaid "), "{table}");
        assert!(row("compute-1").contains(" aa11bb22cc33 "), "{table}");
        assert!(!row("scheduler-1").contains("unpaid"), "{table}");
        let listed = nodes_json(&nodes);
        assert_eq!(listed[0]["unpaid"], true);
        assert_eq!(listed[1]["unpaid"], false);
        assert_eq!(listed[2]["unpaid"], false);
    }
}
