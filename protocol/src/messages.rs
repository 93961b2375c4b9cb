//! The message enums of each conversation, one request and one response enum per conversation.
//!
//! | conversation      | frame kind      | request           | response           |
//! |-------------------|-----------------|-------------------|--------------------|
//! | node → scheduler  | `NodeRequest`   | [`NodeRequest`]   | [`NodeResponse`]   |
//! | client → scheduler| `ClientRequest` | [`ClientRequest`] | [`ClientResponse`] |
//! | node → node       | `PeerRequest`   | [`PeerRequest`]   | [`PeerResponse`]   |
//! | replica → replica | `ReplicaRequest`| [`ReplicaRequest`]| [`ReplicaResponse`]|
//!
//! Versioning: the frame header carries the protocol version. Within a version, variants and
//! fields are append-only (postcard encodes variants by index); anything else bumps
//! [`crate::frame::PROTOCOL_VERSION`]. Which roles may send each request is declared here,
//! beside the message, and enforced by [`crate::rpc`] before any handler runs.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::frame::FrameKind;
use crate::ids::{NodeId, Role};

/// A request of one conversation: its frame kind, its response type, and who may send it.
pub trait Request: Serialize + DeserializeOwned + Send + 'static {
    type Response: Serialize + DeserializeOwned + Send + 'static;
    const KIND: FrameKind;

    /// The RPC's name, a closed set used as a metric label.
    fn rpc_name(&self) -> &'static str;
    /// The certificate roles allowed to send this request.
    fn allowed_roles(&self) -> &'static [Role];
}

const NODES: &[Role] = &[Role::Storage, Role::Compute];
const ANY_NODE: &[Role] = &[Role::Scheduler, Role::Storage, Role::Compute];
const OPERATORS: &[Role] = &[Role::Client, Role::Scheduler];
const REPLICAS: &[Role] = &[Role::Scheduler];

// ---------------------------------------------------------------------------------------------
// node → scheduler

/// What a node offers the grid. Later issues add device details (memory, measured GFLOP/s).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub cpu_cores: u32,
    pub memory_bytes: u64,
    /// Bytes a storage node offers for shards; 0 for compute nodes.
    pub storage_bytes: u64,
    /// The compute device in use, e.g. "cpu" or a Vulkan device name.
    pub device: String,
}

/// A node announcing itself. The node id and role are not claimed here: the scheduler takes
/// them from the verified certificate; `role` must agree with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub role: Role,
    pub name: String,
    pub version: String,
    /// Where peers reach this node over QUIC (`host:port`).
    pub quic_addr: String,
    /// Where Prometheus scrapes this node (`host:port`).
    pub metrics_addr: String,
    pub capacity: Capacity,
}

/// A measured round trip from the reporting node to a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RttSample {
    pub peer: NodeId,
    pub rtt_micros: u64,
}

/// A node's periodic sign of life, carrying its latest RTT measurements.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub sequence: u64,
    pub rtts: Vec<RttSample>,
}

/// A peer a node should measure its round-trip time to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeTarget {
    pub node_id: NodeId,
    pub role: Role,
    pub quic_addr: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeRequest {
    Register(Registration),
    Heartbeat(Heartbeat),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeResponse {
    Registered {
        node_id: NodeId,
        heartbeat_interval_ms: u64,
        probe_targets: Vec<ProbeTarget>,
    },
    HeartbeatAccepted {
        probe_targets: Vec<ProbeTarget>,
    },
}

impl Request for NodeRequest {
    type Response = NodeResponse;
    const KIND: FrameKind = FrameKind::NodeRequest;

    fn rpc_name(&self) -> &'static str {
        match self {
            NodeRequest::Register(_) => "register",
            NodeRequest::Heartbeat(_) => "heartbeat",
        }
    }

    fn allowed_roles(&self) -> &'static [Role] {
        NODES
    }
}

// ---------------------------------------------------------------------------------------------
// client → scheduler

/// Whether the scheduler currently hears from a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Up,
    Down,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Down => "down",
        }
    }
}

/// One row of `aic nodes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub name: String,
    pub role: Role,
    pub version: String,
    pub quic_addr: String,
    pub metrics_addr: String,
    pub state: NodeState,
    /// Milliseconds since the last heartbeat (or registration); `None` for the scheduler itself.
    pub last_heartbeat_ms_ago: Option<u64>,
    /// How many times the node has been marked down.
    pub times_marked_down: u64,
    pub capacity: Capacity,
    /// The node's latest RTT to each peer it measured.
    pub rtts: Vec<RttSample>,
}

/// A dataset as a storage node lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetSummary {
    pub id: String,
    pub name: String,
    pub rows: u64,
    pub shards: u64,
    /// The manifest, as JSON (schema, preprocessing, shard hashes).
    pub manifest: String,
}

/// A few preprocessed rows of a dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetPreview {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<f32>>,
    pub labels: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    ListNodes,
    /// A ledger request (transaction, query or admin), encoded by `aic-ledger`'s API types:
    /// the protocol carries it without depending on the ledger.
    Ledger(Vec<u8>),
    /// The datasets a storage node holds.
    ListDatasets,
    /// Up to `rows` random rows of a dataset (capped at 1 % of it and at 100 rows).
    Preview {
        dataset: String,
        rows: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientResponse {
    Nodes(Vec<NodeStatus>),
    Ledger(Vec<u8>),
    Datasets(Vec<DatasetSummary>),
    Preview(DatasetPreview),
}

impl Request for ClientRequest {
    type Response = ClientResponse;
    const KIND: FrameKind = FrameKind::ClientRequest;

    fn rpc_name(&self) -> &'static str {
        match self {
            ClientRequest::ListNodes => "list_nodes",
            ClientRequest::Ledger(_) => "ledger",
            ClientRequest::ListDatasets => "list_datasets",
            ClientRequest::Preview { .. } => "preview",
        }
    }

    fn allowed_roles(&self) -> &'static [Role] {
        OPERATORS
    }
}

// ---------------------------------------------------------------------------------------------
// node → node

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// An RTT probe: the answer echoes the nonce.
    Ping { nonce: u64 },
    /// A shard of a dataset, against a scheduler-signed ticket (compute nodes only).
    GetShard {
        dataset: String,
        shard: crate::ShardId,
        ticket: crate::ticket::SignedTicket,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerResponse {
    Pong {
        nonce: u64,
    },
    /// The shard's plaintext Parquet bytes (their BLAKE3 hash is the shard id).
    Shard {
        parquet: Vec<u8>,
    },
}

impl Request for PeerRequest {
    type Response = PeerResponse;
    const KIND: FrameKind = FrameKind::PeerRequest;

    fn rpc_name(&self) -> &'static str {
        match self {
            PeerRequest::Ping { .. } => "ping",
            PeerRequest::GetShard { .. } => "get_shard",
        }
    }

    fn allowed_roles(&self) -> &'static [Role] {
        match self {
            PeerRequest::Ping { .. } => ANY_NODE,
            PeerRequest::GetShard { .. } => &[Role::Compute],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// replica → replica

/// Traffic between scheduler replicas. Payloads are encoded by `aic-ledger` (openraft's types
/// and the ledger API), so the protocol does not depend on the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaRequest {
    AppendEntries(Vec<u8>),
    Vote(Vec<u8>),
    InstallSnapshot(Vec<u8>),
    /// A client's ledger request forwarded by a follower to the leader.
    Forward(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaResponse(pub Vec<u8>);

impl Request for ReplicaRequest {
    type Response = ReplicaResponse;
    const KIND: FrameKind = FrameKind::ReplicaRequest;

    fn rpc_name(&self) -> &'static str {
        match self {
            ReplicaRequest::AppendEntries(_) => "raft_append_entries",
            ReplicaRequest::Vote(_) => "raft_vote",
            ReplicaRequest::InstallSnapshot(_) => "raft_install_snapshot",
            ReplicaRequest::Forward(_) => "forward",
        }
    }

    fn allowed_roles(&self) -> &'static [Role] {
        REPLICAS
    }
}
