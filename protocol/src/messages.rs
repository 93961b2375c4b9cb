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
//! [`crate::frame::PROTOCOL_VERSION`]. Which roles may send each request is one table,
//! [`crate::authz::TABLE`], enforced by [`crate::rpc`] before any handler runs.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::frame::FrameKind;
use crate::ids::{NodeId, Role};

/// A request of one conversation: its frame kind, its response type, and who may send it.
pub trait Request: Serialize + DeserializeOwned + Send + 'static {
    type Response: Serialize + DeserializeOwned + Send + 'static;
    const KIND: FrameKind;

    /// The RPC's name, a closed set used as a metric label and as the key of its row in the
    /// authorization table ([`crate::authz::TABLE`]).
    fn rpc_name(&self) -> &'static str;
}

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
    /// Memory of that device (host memory for the CPU backend).
    pub device_memory_bytes: u64,
    /// Measured by the node's own matrix-multiply benchmark at start; 0 for storage nodes.
    pub measured_mflops: u64,
    /// Tasks it runs at once.
    pub task_slots: u32,
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
    /// The ledger account paid for this node's work (hex Ed25519 public key); empty if none.
    pub payout_address: String,
}

/// A measured round trip from the reporting node to a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RttSample {
    pub peer: NodeId,
    pub rtt_micros: u64,
}

/// What a storage node holds of one dataset, as it reports it to the scheduler.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetHolding {
    pub dataset: String,
    /// Shards present and intact at the last scrub.
    pub healthy_shards: u32,
    /// Shards the dataset has in all.
    pub shards: u32,
    pub bytes: u64,
    /// Copies of each shard the dataset's manifest asks for (its replica count).
    pub replicas_wanted: u32,
}

/// A node's periodic sign of life, carrying its latest RTT measurements and, for storage
/// nodes, what they hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub sequence: u64,
    pub rtts: Vec<RttSample>,
    pub holdings: Vec<DatasetHolding>,
}

/// A peer a node should measure its round-trip time to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeTarget {
    pub node_id: NodeId,
    pub role: Role,
    pub quic_addr: String,
}

/// One storage replica's signature that it holds every shard of an import whole: an Ed25519
/// signature by its certificate key over [`ImportAttestation::message`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportAttestation {
    /// The replica's certificate public key (its node id is the key's BLAKE3 hash).
    pub node_key: [u8; 32],
    pub signature: Vec<u8>,
}

impl ImportAttestation {
    /// The bytes a replica signs: the dataset's content hash (its manifest's BLAKE3) and the
    /// account the import was made for.
    pub fn message(content_hash: &[u8; 32], owner: &[u8; 32]) -> Vec<u8> {
        let mut message = b"aic-import-attestation-v1".to_vec();
        message.extend_from_slice(content_hash);
        message.extend_from_slice(owner);
        message
    }
}

/// A completed import, attested by every replica that holds it, for the scheduler to mint its
/// Dataset asset to `owner` (the only way a Dataset asset comes to exist).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetMint {
    pub owner: [u8; 32],
    pub name: String,
    /// BLAKE3 of the full manifest JSON.
    pub content_hash: [u8; 32],
    /// The manifest as the ledger publishes it (shard lists left out when too large).
    pub published_manifest: String,
    /// The usage fee in AIC, decimal text.
    pub fee: String,
    pub attestations: Vec<ImportAttestation>,
}

/// The scheduler replicas the ledger's membership names (voters and learners, `host:port`), as
/// of the membership entry at `membership_index`: a node keeps the newest set it has heard, so a
/// replica that was removed (and may not know it yet) cannot bring itself back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerReplicas {
    pub membership_index: u64,
    /// Empty while the answering replica knows no membership.
    pub addrs: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeRequest {
    Register(Registration),
    Heartbeat(Heartbeat),
    /// Storage node to scheduler: mint the Dataset asset of an import its replicas attest.
    AttestImport(Box<DatasetMint>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeResponse {
    Registered {
        node_id: NodeId,
        heartbeat_interval_ms: u64,
        probe_targets: Vec<ProbeTarget>,
        /// The ledger's scheduler replicas, for the node to register with.
        scheduler_replicas: SchedulerReplicas,
    },
    HeartbeatAccepted {
        probe_targets: Vec<ProbeTarget>,
        /// As in `Registered`: the node follows changes to the replica set from here.
        scheduler_replicas: SchedulerReplicas,
    },
    DatasetMinted {
        asset: crate::AssetId,
    },
}

impl Request for NodeRequest {
    type Response = NodeResponse;
    const KIND: FrameKind = FrameKind::NodeRequest;

    fn rpc_name(&self) -> &'static str {
        match self {
            NodeRequest::Register(_) => "register",
            NodeRequest::Heartbeat(_) => "heartbeat",
            NodeRequest::AttestImport(_) => "attest_import",
        }
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
    /// What a storage node last reported holding.
    pub holdings: Vec<DatasetHolding>,
    /// The ledger account paid for the node's work (hex); empty if none.
    pub payout_address: String,
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

/// A few preprocessed rows of a dataset: model input columns, and each row's class index
/// (`labels`) or, for a regression target, its value (`targets`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetPreview {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<f32>>,
    pub labels: Vec<u32>,
    pub targets: Vec<f32>,
}

/// How one shard of a dataset stands on a storage node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardState {
    Healthy,
    Damaged,
    Missing,
}

impl ShardState {
    pub const ALL: [ShardState; 3] = [ShardState::Healthy, ShardState::Damaged, ShardState::Missing];

    pub fn as_str(self) -> &'static str {
        match self {
            ShardState::Healthy => "healthy",
            ShardState::Damaged => "damaged",
            ShardState::Missing => "missing",
        }
    }
}

/// One shard in a [`DatasetStat`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStat {
    pub id: crate::ShardId,
    pub test: bool,
    pub rows: u64,
    pub bytes: u64,
    pub state: ShardState,
}

/// A dataset on one storage node, shard by shard (`aic dataset stat`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetStat {
    pub summary: DatasetSummary,
    pub shards: Vec<ShardStat>,
}

/// Proof that the caller holds the key of a Dataset asset's owner: an Ed25519 signature over
/// [`OwnerProof::message`], which binds the asset, the dataset, the caller's certificate and
/// an expiry. The storage node checks the owner on the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerProof {
    pub asset: crate::AssetId,
    pub owner: [u8; 32],
    pub expires_ms: u64,
    pub signature: Vec<u8>,
}

impl OwnerProof {
    /// The bytes the owner signs.
    pub fn message(asset: &crate::AssetId, dataset: &str, requester: &NodeId, expires_ms: u64) -> Vec<u8> {
        let mut message = b"aic-owner-proof-v1".to_vec();
        message.extend_from_slice(asset.as_bytes());
        message.extend_from_slice(&(dataset.len() as u32).to_le_bytes());
        message.extend_from_slice(dataset.as_bytes());
        message.extend_from_slice(requester.as_bytes());
        message.extend_from_slice(&expires_ms.to_le_bytes());
        message
    }
}

/// A training job as a user asks for it. The budget is the job's escrow on the ledger, opened
/// by the payer before the job is submitted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRequest {
    pub job: crate::JobId,
    pub dataset_asset: crate::AssetId,
    pub model_asset: crate::AssetId,
    pub epochs: u32,
    /// The learning rate of the local (inner) optimizer, in thousandths.
    pub learning_rate_milli: u32,
    /// Local steps each task takes on its shard before answering a weight update (H in
    /// DiLoCo). 1 with an SGD inner and outer optimizer is synchronous data-parallel SGD.
    pub local_steps: u32,
    pub inner_optimizer: InnerOptimizer,
    pub outer_optimizer: OuterOptimizer,
    /// The outer learning rate applied to the round's mean update, in thousandths.
    pub outer_learning_rate_milli: u32,
    /// Weight decay of the inner optimizer, in millionths: added to the gradient (L2) for SGD
    /// and momentum, decoupled for AdamW; Adam ignores it (use AdamW).
    #[serde(default)]
    pub weight_decay_micro: u32,
    /// How the inner learning rate changes over the job's rounds.
    #[serde(default)]
    pub schedule: LrSchedule,
    /// Rows per local step: each step takes the next minibatch of a seeded shuffle of the
    /// task's rows. 0: every step takes all of them (full-batch).
    #[serde(default)]
    pub batch_size: u32,
    /// Seeds the initial weights, every task's dropout masks and minibatch order: the same job
    /// with the same seed trains the same weights. None: drawn from the job id.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Held-out evaluation every this many rounds as the job trains, for its accuracy (or R²)
    /// curve; each costs one pass over the held-out split and is quoted. 0: only once, after
    /// the last round.
    #[serde(default)]
    pub evaluate_every_rounds: u32,
    /// Which training results are re-executed on an independent node before they enter the
    /// weights.
    #[serde(default)]
    pub verification: Verification,
}

/// Which of a job's training results are re-executed on an independent compute node (one that
/// shares no operator, subnet or payer with the first) before they enter the weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verification {
    /// A sample, at each node's rate from its record (adaptive replication: every result of a
    /// new node, at least 1 in 20 of a trusted one). A node found wrong sends the job back to
    /// before its first unconfirmed result; a node never caught can leave wrong results in.
    #[default]
    Sampled,
    /// Every result: none enters the weights unconfirmed, so no wrong result is in the final
    /// model unless two independent nodes return the same wrong one. Twice the compute.
    Every,
}

impl JobRequest {
    /// How many held-out evaluations a job of `total_rounds` runs: one after every
    /// `evaluate_every_rounds`-th round before the last, and the final one.
    pub fn evaluations(&self, total_rounds: u32) -> u32 {
        match self.evaluate_every_rounds {
            0 => 1,
            every => 1 + total_rounds.saturating_sub(1) / every,
        }
    }

    /// The seed the job trains with: the one asked for, else the job id's first bytes.
    pub fn training_seed(&self) -> u64 {
        self.seed
            .unwrap_or_else(|| u64::from_le_bytes(self.job.as_bytes()[..8].try_into().expect("8 bytes")))
    }

    /// The seed of the task that trains `shard` in `round`: a spot check or a retry of that task
    /// draws the same dropout masks and minibatches.
    pub fn task_seed(&self, round: u32, shard: &crate::ShardId) -> u64 {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"aic-task-seed");
        hasher.update(&self.training_seed().to_le_bytes());
        hasher.update(&round.to_le_bytes());
        hasher.update(shard.as_bytes());
        u64::from_le_bytes(hasher.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
    }
}

/// How the inner learning rate changes over a job's rounds; the runner sends each round's rate
/// with its tasks, so a task and its spot check use the same one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    #[default]
    Constant,
    /// The rate times `factor_milli`/1000 after every `every_rounds` rounds.
    Step { every_rounds: u32, factor_milli: u32 },
    /// A linear warm-up over `warmup_rounds`, then a cosine decay to zero at the last round.
    Cosine { warmup_rounds: u32 },
}

impl LrSchedule {
    /// The rate for round `round` (0-based) of `rounds`, from the base rate. Never below a
    /// millionth of the base (a task's rate must be positive); rounds past the last (the
    /// evaluation) keep the last round's rate.
    pub fn rate(&self, base: f32, round: u32, rounds: u32) -> f32 {
        let round = round.min(rounds.saturating_sub(1));
        let rate = match *self {
            LrSchedule::Constant => base,
            LrSchedule::Step {
                every_rounds,
                factor_milli,
            } => {
                let decays = round / every_rounds.max(1);
                base * (factor_milli as f32 / 1000.0).powi(decays.min(i32::MAX as u32) as i32)
            }
            LrSchedule::Cosine { warmup_rounds } => {
                if round < warmup_rounds {
                    return base * (round + 1) as f32 / warmup_rounds as f32;
                }
                let span = rounds.saturating_sub(warmup_rounds).max(1) as f32;
                let progress = (round - warmup_rounds) as f32 / span;
                base * 0.5 * (1.0 + (std::f32::consts::PI * progress.min(1.0)).cos())
            }
        };
        rate.max(base * 1e-6)
    }
}

/// The optimizer a task runs for its local steps (its state starts fresh each task).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InnerOptimizer {
    #[default]
    Sgd,
    /// SGD with heavy-ball momentum 0.9.
    Momentum,
    /// Adam with β₁ = 0.9, β₂ = 0.999, ε = 1e-8 and bias correction.
    Adam,
    /// Adam with decoupled weight decay (Loshchilov & Hutter).
    #[serde(rename = "adamw")]
    AdamW,
}

/// How the runner applies a round's mean weight update Δ to the weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OuterOptimizer {
    /// w ← w − η·Δ
    #[default]
    Sgd,
    /// Nesterov momentum (μ = 0.9): m ← μ·m + Δ; w ← w − η·(Δ + μ·m). Its state m is
    /// checkpointed with the weights.
    Nesterov,
}

/// The local training a task runs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalTraining {
    pub steps: u32,
    pub optimizer: InnerOptimizer,
    /// This round's rate (the job's schedule applied by the runner).
    pub learning_rate: f32,
    pub weight_decay: f32,
    /// Rows per local step (0: all the task's rows each step).
    pub batch_size: u32,
}

/// Most local steps one task may take.
pub const MAX_LOCAL_STEPS: u32 = 1000;
/// Most rows one local step may take (a bigger minibatch is no longer a minibatch).
pub const MAX_BATCH_SIZE: u32 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    ListNodes,
    /// A ledger request (transaction, query or admin), encoded by `aic-ledger`'s API types:
    /// the protocol carries it without depending on the ledger.
    Ledger(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The datasets a storage node holds.
    ListDatasets,
    /// Up to `rows` random rows of a dataset (capped at 1 % of it and at 100 rows).
    Preview {
        dataset: String,
        rows: u32,
    },
    /// A dataset's shards and their state on this storage node.
    Stat {
        dataset: String,
    },
    /// Opens an upload: plaintext shards arrive next, then the manifest that names them.
    BeginImport,
    /// Part of one preprocessed Parquet shard. Parts arrive in order; the last one completes
    /// the shard, which must hash to its id.
    UploadShard {
        upload: u64,
        shard: crate::ShardId,
        offset: u64,
        total: u64,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Seals the upload: every shard the manifest names must have arrived. The node stores
    /// the dataset on itself and on the replicas the manifest lists, or on none of them; for a
    /// dataset, the replicas then attest it and the scheduler mints its Dataset asset to
    /// `owner` (an Ed25519 public key), or the import is undone.
    CommitImport {
        upload: u64,
        manifest: String,
        owner: [u8; 32],
    },
    /// Removes a dataset this client imported (an import whose asset could not be minted).
    DropDataset {
        dataset: String,
    },
    /// Plain Parquet of one shard, streamed, for the Dataset asset's owner only.
    Export {
        dataset: String,
        shard: crate::ShardId,
        proof: OwnerProof,
    },
    /// What a job would cost at most: the budget its escrow must hold.
    QuoteJob(JobRequest),
    /// Starts a job whose escrow is open on the ledger.
    SubmitJob(JobRequest),
    JobStatus {
        job: crate::JobId,
    },
    CancelJob {
        job: crate::JobId,
    },
    /// Each node's spot-check record and the penalties the rater has given.
    Ratings,
    /// Gives up an upload: its shards are deleted and its slot is free again.
    AbortImport {
        upload: u64,
    },
    /// A trained model's weights for the TrainedModel asset's owner (the proof signs the
    /// tensor's ticket name), streamed as [`ClientResponse::TensorChunk`]s then
    /// [`ClientResponse::TensorEnd`].
    ExportTensor {
        tensor: crate::tensor::TensorRef,
        proof: OwnerProof,
    },
    /// Gateway to scheduler: a verification of a compute node's inference outputs (the same
    /// batch re-run on other nodes) found them right or wrong; the rater records it.
    InferenceVerdict {
        node: NodeId,
        model: crate::AssetId,
        matched: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientResponse {
    Nodes(Vec<NodeStatus>),
    Ledger(#[serde(with = "serde_bytes")] Vec<u8>),
    Datasets(Vec<DatasetSummary>),
    Preview(DatasetPreview),
    Stat(DatasetStat),
    ImportStarted {
        upload: u64,
    },
    ShardReceived {
        received: u64,
    },
    Imported {
        dataset: String,
        replicas: Vec<NodeId>,
        /// The Dataset asset minted for it (none for a trained model's weights, whose asset
        /// the job mints).
        asset: Option<crate::AssetId>,
    },
    Dropped,
    /// A piece of an exported shard's Parquet bytes.
    ExportChunk {
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The most the job may cost (decimal AIC), and how that was reckoned.
    JobQuote {
        amount: String,
        detail: String,
    },
    /// A job's state and its report (JSON: tasks and their cost terms, spot checks,
    /// penalties, payments, accuracy).
    Job {
        state: String,
        report: String,
    },
    /// The rater's records and penalties, as JSON.
    Ratings {
        report: String,
    },
    /// A verdict was recorded.
    Recorded,
    Aborted,
    TensorChunk {
        index: u64,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    TensorEnd {
        chunks: u64,
    },
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
            ClientRequest::Stat { .. } => "stat",
            ClientRequest::BeginImport => "begin_import",
            ClientRequest::UploadShard { .. } => "upload_shard",
            ClientRequest::CommitImport { .. } => "commit_import",
            ClientRequest::DropDataset { .. } => "drop_dataset",
            ClientRequest::Export { .. } => "export",
            ClientRequest::QuoteJob(_) => "quote_job",
            ClientRequest::SubmitJob(_) => "submit_job",
            ClientRequest::JobStatus { .. } => "job_status",
            ClientRequest::CancelJob { .. } => "cancel_job",
            ClientRequest::Ratings => "ratings",
            ClientRequest::AbortImport { .. } => "abort_import",
            ClientRequest::ExportTensor { .. } => "export_tensor",
            ClientRequest::InferenceVerdict { .. } => "inference_verdict",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// node → node

/// The architecture a task trains, as it travels (the kernels crate has the executable form).
/// Externally tagged: postcard cannot decode internally tagged enums.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelShape {
    SoftmaxRegression {
        features: u32,
        classes: u32,
    },
    Mlp {
        features: u32,
        hidden: u32,
        classes: u32,
    },
    /// y = X·w + b on mean squared error, for a dataset with a numeric target.
    LinearRegression {
        features: u32,
    },
}

impl ModelShape {
    /// How many parameters the model has (weights and biases).
    pub fn parameters(&self) -> u64 {
        match *self {
            ModelShape::SoftmaxRegression { features, classes } => (features as u64 + 1) * classes as u64,
            ModelShape::Mlp {
                features,
                hidden,
                classes,
            } => (features as u64 + 1) * hidden as u64 + (hidden as u64 + 1) * classes as u64,
            ModelShape::LinearRegression { features } => features as u64 + 1,
        }
    }

    /// Whether the model regresses a numeric target rather than classifying.
    pub fn is_regression(&self) -> bool {
        matches!(self, ModelShape::LinearRegression { .. })
    }

    pub fn features(&self) -> u32 {
        match *self {
            ModelShape::SoftmaxRegression { features, .. }
            | ModelShape::Mlp { features, .. }
            | ModelShape::LinearRegression { features } => features,
        }
    }

    /// Classes of a classifier; 0 for a regression.
    pub fn classes(&self) -> u32 {
        match *self {
            ModelShape::SoftmaxRegression { classes, .. } | ModelShape::Mlp { classes, .. } => classes,
            ModelShape::LinearRegression { .. } => 0,
        }
    }
}

/// Where a task reads one shard, with the ticket that lets it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSource {
    pub dataset: String,
    pub shard: crate::ShardId,
    /// The storage node to read from (`host:port`), chosen by the allocator.
    pub storage: String,
    pub ticket: crate::ticket::SignedTicket,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// The local steps over the shards' rows: the loss at the starting weights and the weight
    /// update (start − end), which the node holds for the runner to collect.
    Gradient,
    /// Mean loss and the count of correctly classified rows.
    Evaluate,
}

/// Most shards one task may name.
pub const MAX_TASK_SHARDS: usize = 256;
/// Most storage nodes a task may be told hold its weights.
pub const MAX_WEIGHT_SOURCES: usize = 8;

/// Where a task's weights are, with the ticket that lets the compute node read them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightsSource {
    pub tensor: crate::tensor::TensorRef,
    /// Storage nodes (`host:port`) holding the tensor, nearest first.
    pub storage: Vec<String>,
    pub ticket: crate::ticket::SignedTicket,
}

/// What a task trains: one of the fixed shapes, or a layer graph as its description's canonical
/// JSON (`model_graph`), which the compute node validates again before running it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskModel {
    Shape(ModelShape),
    Graph(String),
}

/// One unit of work the scheduler gives a compute node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub job: crate::JobId,
    pub task: crate::TaskId,
    pub round: u32,
    pub kind: TaskKind,
    pub model: TaskModel,
    /// The parameters to start from (in the model's tensor order, flattened), fetched by name.
    pub weights: WeightsSource,
    /// Gradient tasks: the local steps to take.
    pub training: LocalTraining,
    /// The label column of the shards.
    pub label: String,
    pub shards: Vec<ShardSource>,
    /// Seeds the task's dropout masks and minibatch order (`JobRequest::task_seed`).
    pub seed: u64,
}

/// What a compute node returns for a task, with a digest binding the numbers to the task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub task: crate::TaskId,
    pub rows: u64,
    pub loss: f32,
    /// Gradient: the weight update (start − end of the local steps), flattened like the
    /// weights; the node holds it until the runner collects it with `GetTensor`.
    pub update: Option<crate::tensor::TensorRef>,
    /// Evaluate of a regression: Σy and Σy² of the targets. Otherwise empty.
    pub values: Vec<f32>,
    /// Evaluate: rows classified correctly. Gradient: 0.
    pub correct: u64,
    pub digest: [u8; 32],
    pub fetch_micros: u64,
    pub compute_micros: u64,
    /// Shards served from the node's cache rather than fetched.
    pub cache_hits: u32,
    /// Bytes of weights the node fetched for this task (0 when it held them already).
    pub weights_fetched_bytes: u64,
    /// The backend that ran it, e.g. a Vulkan device name or "cpu".
    pub backend: String,
}

impl TaskResult {
    /// The digest of the result's numbers for `task`: what the node signs off on and what a
    /// re-execution is compared against besides the tolerance check.
    pub fn compute_digest(
        task: &crate::TaskId,
        rows: u64,
        loss: f32,
        update: Option<&crate::tensor::TensorRef>,
        values: &[f32],
        correct: u64,
    ) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"aic-task-result-v2");
        hasher.update(task.as_bytes());
        hasher.update(&rows.to_le_bytes());
        hasher.update(&loss.to_le_bytes());
        hasher.update(&correct.to_le_bytes());
        if let Some(update) = update {
            hasher.update(&update.hash);
            hasher.update(&update.elements.to_le_bytes());
        }
        for v in values {
            hasher.update(&v.to_le_bytes());
        }
        *hasher.finalize().as_bytes()
    }

    /// Whether the digest matches the numbers carried.
    pub fn digest_matches(&self) -> bool {
        self.digest
            == Self::compute_digest(
                &self.task,
                self.rows,
                self.loss,
                self.update.as_ref(),
                &self.values,
                self.correct,
            )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// An RTT probe: the answer echoes the nonce.
    Ping { nonce: u64 },
    /// A shard of a dataset, against a scheduler-signed ticket (compute nodes only). The answer
    /// is streamed: [`PeerResponse::ShardBatch`] frames, then [`PeerResponse::ShardEnd`].
    GetShard {
        dataset: String,
        shard: crate::ShardId,
        ticket: crate::ticket::SignedTicket,
    },
    /// Storage to storage: hold a replica of `dataset`, pulling its sealed shards from `source`,
    /// and attest it for `owner`.
    Replicate {
        manifest: String,
        key: Vec<u8>,
        importer: NodeId,
        source: String,
        owner: [u8; 32],
    },
    /// Storage to storage: a sealed shard, streamed as [`PeerResponse::SealedChunk`]s.
    FetchSealed { dataset: String, shard: crate::ShardId },
    /// Storage to storage: forget a replica (an import that did not complete).
    DropReplica { dataset: String },
    /// Scheduler to compute node: run a task and answer its result.
    RunTask(Box<TaskSpec>),
    /// Scheduler to a node whose work a spot check confirmed: sign your lottery ticket for this
    /// session (it wins blocks without the node taking part; the node learns when they land).
    SignTicket { session: crate::JobId },
    /// Scheduler to the drawn co-signer: check the lottery block (a postcard `BlockHeader` of
    /// `aic-ledger`: the winner's ticket under the target) and sign it.
    SignBlock { header: Vec<u8> },
    /// A tensor by name, streamed as [`PeerResponse::TensorChunk`]s then
    /// [`PeerResponse::TensorEnd`]: from a storage node (a compute node shows a ticket naming
    /// the tensor; a scheduler needs none) or from a compute node (the scheduler collecting a
    /// task's update).
    GetTensor {
        tensor: crate::tensor::TensorRef,
        ticket: Option<crate::ticket::SignedTicket>,
    },
    /// Scheduler to storage node: chunk `index` of `tensor`, chunks sent in order; the node
    /// seals each as it arrives and keeps the tensor once the last one hashes to its name.
    PutTensor {
        tensor: crate::tensor::TensorRef,
        index: u64,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Scheduler to storage node: forget a tensor no checkpoint names any more (a superseded
    /// round's weights); answered [`PeerResponse::Dropped`].
    DropTensor { tensor: crate::tensor::TensorRef },
    /// Gateway to compute node: the outputs of a published model for a batch of encoded rows,
    /// answered [`PeerResponse::Inferred`].
    Infer(Box<InferRequest>),
    /// Compute node to storage node: the weights of a TrainedModel that is published for
    /// inference (the ledger says so; no ticket), streamed like [`PeerRequest::GetTensor`].
    GetPublishedTensor {
        asset: crate::AssetId,
        tensor: crate::tensor::TensorRef,
    },
    /// Scheduler to a storage node holding `dataset` whole, when another holder is lost for
    /// good: copy the dataset to `target` (a storage node at `target_addr` that does not hold
    /// it) and drop `lost` from its holders; answered [`PeerResponse::ReReplicated`].
    ReReplicate {
        dataset: String,
        target: NodeId,
        target_addr: String,
        lost: Vec<NodeId>,
    },
    /// Storage to storage: take a copy of a dataset from the node asking, which holds it: its
    /// manifest, its key and the new holder set naming both nodes. Every sealed shard is
    /// pulled from the asker and checked before the copy is kept; answered
    /// [`PeerResponse::ReplicaTaken`].
    TakeReplica {
        manifest: String,
        key: [u8; 32],
        holders: crate::holders::HolderSet,
    },
    /// Storage to storage: a holder's newer holder set of a dataset the receiver holds;
    /// answered [`PeerResponse::HoldersUpdated`].
    UpdateHolders { holders: crate::holders::HolderSet },
    /// Storage → storage: keep this dataset's key, sealed to the receiver's node key, for the
    /// nodes named in `holders` to recover after they lose it (`aic storage restore`).
    EscrowKey {
        dataset: String,
        sealed: SealedKey,
        holders: Vec<NodeId>,
    },
    /// Storage → storage: the key of `dataset` this node escrowed with the receiver, sealed to
    /// the caller's node key; only for a node its depositor named.
    RecoverKey { dataset: String },
    /// Scheduler → storage: every whole tensor the node keeps, with its age, for the leader's
    /// sweep of tensors nothing on the ledger names any more.
    ListTensors,
}

/// A published model a compute node serves: its TrainedModel asset, the weights tensor the asset
/// names and where it is held, and the model they fit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedModel {
    pub asset: crate::AssetId,
    pub tensor: crate::tensor::TensorRef,
    pub model: TaskModel,
    /// Storage nodes holding the weights (QUIC addresses).
    pub holders: Vec<String>,
}

impl ServedModel {
    /// What a TrainedModel asset's manifest names (as the job that trained it wrote it): the
    /// weights tensor (whose hash is the asset's content hash), the model — a fixed shape as
    /// itself, a layer graph under "graph" — and the storage nodes holding the weights.
    pub fn from_trained_manifest(
        asset: crate::AssetId,
        content_hash: [u8; 32],
        manifest: &serde_json::Value,
    ) -> Result<ServedModel, String> {
        let elements = manifest["weights"]["elements"]
            .as_u64()
            .ok_or("the asset's manifest names no weights tensor")?;
        let model = match serde_json::from_value::<ModelShape>(manifest["model"].clone()) {
            Ok(shape) => TaskModel::Shape(shape),
            Err(_) if manifest["model"]["graph"].is_object() => {
                TaskModel::Graph(manifest["model"]["graph"].to_string())
            }
            Err(_) => return Err("the asset's manifest names no model".into()),
        };
        let holders = manifest["weights"]["holders"]
            .as_array()
            .map(|h| {
                h.iter()
                    .filter_map(|h| h["quic_addr"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        Ok(ServedModel {
            asset,
            tensor: crate::tensor::TensorRef {
                hash: content_hash,
                elements,
            },
            model,
            holders,
        })
    }
}

/// The most tensors one `ListTensors` answer names.
pub const MAX_LISTED_TENSORS: usize = 20_000;

/// A secret sealed to one node's key: an ephemeral X25519 public key, and AES-256-GCM over the
/// secret under a key derived from the Diffie-Hellman of that ephemeral key with the recipient's
/// (its Ed25519 node key in Montgomery form). See `aic_storage_node::escrow`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedKey {
    pub ephemeral: [u8; 32],
    pub nonce: [u8; 12],
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// A batch of rows, already encoded as the model's features (row-major, `rows` × `width`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferRequest {
    pub model: ServedModel,
    pub rows: u32,
    pub width: u32,
    pub features: Vec<f32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerResponse {
    Pong {
        nonce: u64,
    },
    /// Record batches of a shard as an Arrow IPC stream (schema and batches), within the frame
    /// limit.
    ShardBatch {
        #[serde(with = "serde_bytes")]
        ipc: Vec<u8>,
    },
    /// The end of a shard: how many rows and batches were sent, so a cut stream is noticed.
    ShardEnd {
        rows: u64,
        batches: u32,
    },
    /// The replica holds every shard, and attests it for the import's owner.
    Replicated {
        shards: u32,
        attestation: ImportAttestation,
    },
    SealedChunk {
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    Dropped,
    TaskDone(Box<TaskResult>),
    /// The node's Ed25519 signature (certificate key) over its ticket for the session.
    TicketSigned {
        signature: Vec<u8>,
    },
    /// An Ed25519 signature over the block's signing bytes by the node's certificate key.
    BlockSigned {
        signature: Vec<u8>,
    },
    TensorChunk {
        index: u64,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The end of a tensor: how many chunks were sent, so a cut stream is noticed.
    TensorEnd {
        chunks: u64,
    },
    /// A chunk was stored; `complete` once the whole tensor is kept.
    TensorStored {
        complete: bool,
    },
    /// The model's outputs (logits, or a regression's values), row-major `rows` × `width`.
    Inferred {
        rows: u32,
        width: u32,
        outputs: Vec<f32>,
    },
    /// The target holds the dataset whole; these are its holders now.
    ReReplicated {
        holders: Vec<NodeId>,
    },
    /// Every shard was pulled, checked and kept.
    ReplicaTaken {
        shards: u32,
    },
    /// The receiver keeps this epoch of the holder set (its own when it was newer).
    HoldersUpdated {
        epoch: u64,
    },
    /// The escrowed key is kept.
    Escrowed,
    /// The dataset's key, sealed to the caller's node key.
    RecoveredKey {
        sealed: SealedKey,
    },
    /// The node's whole tensors and how many seconds ago each was completed (at most
    /// `MAX_LISTED_TENSORS`; `more` when there were others).
    Tensors {
        tensors: Vec<(crate::tensor::TensorRef, u64)>,
        more: bool,
    },
}

impl Request for PeerRequest {
    type Response = PeerResponse;
    const KIND: FrameKind = FrameKind::PeerRequest;

    fn rpc_name(&self) -> &'static str {
        match self {
            PeerRequest::Ping { .. } => "ping",
            PeerRequest::GetShard { .. } => "get_shard",
            PeerRequest::Replicate { .. } => "replicate",
            PeerRequest::FetchSealed { .. } => "fetch_sealed",
            PeerRequest::DropReplica { .. } => "drop_replica",
            PeerRequest::RunTask(_) => "run_task",
            PeerRequest::SignTicket { .. } => "sign_ticket",
            PeerRequest::SignBlock { .. } => "sign_block",
            PeerRequest::GetTensor { .. } => "get_tensor",
            PeerRequest::PutTensor { .. } => "put_tensor",
            PeerRequest::DropTensor { .. } => "drop_tensor",
            PeerRequest::Infer(_) => "infer",
            PeerRequest::GetPublishedTensor { .. } => "get_published_tensor",
            PeerRequest::ReReplicate { .. } => "re_replicate",
            PeerRequest::TakeReplica { .. } => "take_replica",
            PeerRequest::UpdateHolders { .. } => "update_holders",
            PeerRequest::EscrowKey { .. } => "escrow_key",
            PeerRequest::RecoverKey { .. } => "recover_key",
            PeerRequest::ListTensors => "list_tensors",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// replica → replica

/// Traffic between scheduler replicas. Payloads are encoded by `aic-ledger` (openraft's types
/// and the ledger API), so the protocol does not depend on the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaRequest {
    AppendEntries(#[serde(with = "serde_bytes")] Vec<u8>),
    Vote(#[serde(with = "serde_bytes")] Vec<u8>),
    InstallSnapshot(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A client's ledger request forwarded by a follower to the leader.
    Forward(#[serde(with = "serde_bytes")] Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaResponse(#[serde(with = "serde_bytes")] pub Vec<u8>);

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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_counts_its_periodic_evaluations_and_the_final_one() {
        let mut request = JobRequest {
            job: crate::JobId::from_bytes([1; 16]),
            dataset_asset: crate::AssetId::from_bytes([2; 16]),
            model_asset: crate::AssetId::from_bytes([3; 16]),
            epochs: 3,
            learning_rate_milli: 100,
            local_steps: 1,
            inner_optimizer: InnerOptimizer::Sgd,
            outer_optimizer: OuterOptimizer::Sgd,
            outer_learning_rate_milli: 1000,
            weight_decay_micro: 0,
            schedule: LrSchedule::Constant,
            batch_size: 0,
            seed: None,
            evaluate_every_rounds: 0,
            verification: Verification::Sampled,
        };
        let counts = |request: &mut JobRequest, every: u32| {
            request.evaluate_every_rounds = every;
            [1, 3, 4, 6].map(|rounds| request.evaluations(rounds))
        };
        assert_eq!(counts(&mut request, 0), [1, 1, 1, 1]);
        assert_eq!(counts(&mut request, 1), [1, 3, 4, 6]);
        // Every 2nd round before the last, then the last: rounds 2 | 2, 3 | 2, 4 | 2, 4, 6.
        assert_eq!(counts(&mut request, 2), [1, 2, 2, 3]);
        assert_eq!(counts(&mut request, 10), [1, 1, 1, 1]);
    }
}
