//! One ledger replica: openraft with the durable log, the state machine and the QUIC network,
//! plus the client API on top — writes go through the leader (a follower forwards them), reads
//! are linearizable (served by the leader after it confirms its leadership).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aic_protocol::messages::{ReplicaRequest, ReplicaResponse};
use aic_protocol::rpc::RpcClient;
use aic_protocol::{ErrorCode, NodeId, Role, RpcError};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{Config, SnapshotPolicy};
use tokio::sync::Mutex;

use super::group_commit::GroupCommit;
use super::log_store::FileLogStore;
use super::mem_log_store::MemLogStore;
use super::network::QuicNetwork;
use super::state_machine::{Applied, LedgerStateMachine, SharedState};
use super::types::{replica_id_of, CommandOutcome, LedgerCommand, Raft, ReplicaAddr, ReplicaId};
use crate::amount::Amount;
use crate::api::{
    decode, encode, AccountView, InferenceAccess, LedgerApiError, LedgerRequest, LedgerResponse,
    LedgerResult, LedgerStatus, PublishedModel, ReplicaView, MAX_BLOCKS_PER_REQUEST,
    MAX_LISTINGS_PER_REQUEST,
};
use crate::authz;
use crate::error::TxError;
use crate::genesis::Genesis;
use crate::keys::Keypair;
use crate::metrics::LedgerMetrics;

/// How a replica runs.
#[derive(Clone, Debug)]
pub struct ReplicaSettings {
    pub dir: PathBuf,
    pub genesis: Genesis,
    /// Audit the state after every applied entry (tests; costs O(state) per entry).
    pub audit_every_entry: bool,
    pub heartbeat_interval: Duration,
    pub election_timeout: (Duration, Duration),
    /// Build a snapshot after this many entries.
    pub snapshot_every_entries: u64,
    /// Log entries kept after a snapshot (for followers that lag a little).
    pub logs_kept_after_snapshot: u64,
    /// Keep the Raft log in memory only. For the benchmark's baseline; never durable.
    pub volatile_log: bool,
    /// Faults under the log's disk (tests of a full disk or a failing fsync).
    pub disk_faults: Option<Arc<super::disk_faults::DiskFaults>>,
    /// Ask the peers at start whether this replica's log reaches what it acknowledged (see
    /// [`ReplicaError::RevertedLog`]). Off only in a test of what happens when none can say.
    pub check_log_with_peers: bool,
}

impl ReplicaSettings {
    pub fn new(dir: PathBuf, genesis: Genesis) -> Self {
        ReplicaSettings {
            dir,
            genesis,
            audit_every_entry: false,
            heartbeat_interval: Duration::from_millis(100),
            // openraft waits out a leader lease of the maximum before electing, and twice the
            // maximum more when it last saw a longer log than its own (a flag it keeps until its
            // next election): a follower left by a dead leader elects 0.9–1.2 s later, at most
            // 2.4 s; with 500–1000 ms it took 1.5–4 s. Still three heartbeats or more.
            election_timeout: (Duration::from_millis(300), Duration::from_millis(600)),
            snapshot_every_entries: 5000,
            logs_kept_after_snapshot: 1000,
            volatile_log: false,
            disk_faults: None,
            check_log_with_peers: true,
        }
    }

    fn raft_config(&self) -> Result<Config, String> {
        let config = Config {
            cluster_name: self.genesis.chain_id.clone(),
            heartbeat_interval: self.heartbeat_interval.as_millis() as u64,
            election_timeout_min: self.election_timeout.0.as_millis() as u64,
            election_timeout_max: self.election_timeout.1.as_millis() as u64,
            // At most 48 entries per message; the network also splits by bytes (network.rs).
            max_payload_entries: 48,
            snapshot_max_chunk_size: 1024 * 1024,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            ..Default::default()
        };
        config.validate().map_err(|e| e.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("ledger storage in {dir}: {reason}")]
    Storage { dir: PathBuf, reason: String },
    #[error("raft configuration: {0}")]
    Config(String),
    #[error("raft: {0}")]
    Raft(String),
    /// The log ends before what the leader knows this replica acknowledged: the data dir is an
    /// older copy of its own. A replica on it could vote again in a term it already voted in.
    #[error(
        "this replica's log ends at index {held}, but the leader ({peer}) knows it acknowledged up \
         to index {acknowledged}: its data dir is an older copy. Do not run on it: start on an empty \
         data dir and rejoin (aic ledger remove, add-learner, promote)"
    )]
    RevertedLog {
        held: u64,
        acknowledged: u64,
        peer: String,
    },
    /// The data dir is another replica's (copied from it): this replica will not run on it.
    #[error(
        "{dir} belongs to the replica with node id {owner}, not to this one; a replica's data dir \
         is its own: start on an empty one and rejoin (aic ledger add-learner, promote), or \
         restore the whole cluster (aic ledger restore)"
    )]
    ForeignDataDir { dir: PathBuf, owner: String },
}

pub struct LedgerReplica {
    pub id: ReplicaId,
    pub me: ReplicaAddr,
    raft: Raft,
    shared: SharedState,
    endpoint: quinn::Endpoint,
    metrics: LedgerMetrics,
    leader_client: Mutex<Option<(ReplicaId, RpcClient)>>,
    /// Where submitted transactions wait for their batch while this replica leads.
    group_commit: GroupCommit,
    /// Where the state machine keeps its snapshot (what a backup reads).
    snapshot_path: PathBuf,
    /// The snapshot a backup in progress is fetching: its hash and bytes.
    backup: Mutex<Option<BackupSnapshot>>,
}

/// A snapshot a backup is fetching: its BLAKE3 hash and its bytes.
type BackupSnapshot = ([u8; 32], Arc<Vec<u8>>);

/// How long a forwarded request may take on the leader before this replica stops waiting: well
/// inside a client's own call timeout, so the client hears why and can try again.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a starting replica waits for its peers' word on what it acknowledged.
const REVERT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks the replicas of the stored membership (through any of them, the leader) how far the
/// leader knows this replica's log reached, and refuses a log that ends before that: an older
/// copy of the data dir put back. No peer answering (a whole cluster starting) proves nothing
/// either way, and the replica starts.
async fn check_not_reverted(
    endpoint: &quinn::Endpoint,
    me: ReplicaId,
    held: u64,
    members: &[(ReplicaId, ReplicaAddr)],
) -> Result<(), ReplicaError> {
    let mut asks = tokio::task::JoinSet::new();
    for (_, addr) in members.iter().filter(|(id, _)| *id != me) {
        let endpoint = endpoint.clone();
        let addr = addr.clone();
        asks.spawn(async move {
            let client = RpcClient::connect(&endpoint, &addr.addr, Role::Scheduler)
                .await
                .map_err(|e| e.to_string())?;
            let ReplicaResponse(bytes) = client
                .call(&ReplicaRequest::Forward(encode(&LedgerRequest::Status)))
                .await
                .map_err(|e| e.to_string())?;
            match decode::<LedgerResult>(&bytes).map_err(|e| e.to_string())? {
                Ok(LedgerResponse::Status(status)) => Ok((addr.addr, status)),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(error) => Err(error.to_string()),
            }
        });
    }
    let first_answer = async {
        while let Some(done) = asks.join_next().await {
            if let Ok(Ok(answer)) = done {
                return Some(answer);
            }
        }
        None
    };
    let Ok(Some((peer, status))) = tokio::time::timeout(REVERT_CHECK_TIMEOUT, first_answer).await else {
        return Ok(());
    };
    let acknowledged = status
        .replicas
        .iter()
        .find(|r| r.id == me)
        .and_then(|r| r.matched_index);
    match acknowledged {
        Some(acknowledged) if acknowledged > held => Err(ReplicaError::RevertedLog {
            held,
            acknowledged,
            peer,
        }),
        _ => Ok(()),
    }
}

/// Marks `dir` as this replica's own, or refuses it when it is another replica's: a data dir
/// copied from another replica carries that replica's vote and log, and a replica started on it
/// would vote and acknowledge in the other's name.
fn claim_data_dir(dir: &Path, node_id: &NodeId) -> Result<(), ReplicaError> {
    let owner = dir.join("replica");
    let storage = |e: std::io::Error| ReplicaError::Storage {
        dir: dir.to_path_buf(),
        reason: format!("{}: {e}", owner.display()),
    };
    match std::fs::read_to_string(&owner) {
        Ok(text) if text.trim() == node_id.to_string() => Ok(()),
        Ok(text) => Err(ReplicaError::ForeignDataDir {
            dir: dir.to_path_buf(),
            owner: text.trim().to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(storage)?;
            std::fs::write(&owner, format!("{node_id}\n")).map_err(storage)
        }
        Err(e) => Err(storage(e)),
    }
}

/// What [`LedgerReplica::bootstrap`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// A new one-replica cluster.
    Started,
    /// Nothing: this replica already belongs to a cluster.
    AlreadyMember,
}

/// Why a replica's Raft core stopped for good.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoreStopped {
    /// Its log or state could not be written or read (a full disk, a failed fsync).
    #[error("{0}")]
    Storage(String),
    #[error("the Raft core panicked")]
    Panicked,
    #[error("the Raft core was shut down")]
    Shutdown,
}

impl From<&openraft::error::Fatal<ReplicaId>> for CoreStopped {
    fn from(fatal: &openraft::error::Fatal<ReplicaId>) -> Self {
        match fatal {
            openraft::error::Fatal::StorageError(error) => CoreStopped::Storage(error.to_string()),
            openraft::error::Fatal::Panicked => CoreStopped::Panicked,
            openraft::error::Fatal::Stopped => CoreStopped::Shutdown,
        }
    }
}

/// Why a replica is not ready to serve (`/readyz` says it in one line).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("the ledger replica stopped: {0}")]
    Stopped(CoreStopped),
    #[error("no ledger leader known (an election, or no majority reachable)")]
    NoLeader,
    #[error("{0} ledger entries held but not applied yet")]
    Behind(u64),
}

/// Entries a replica may hold unapplied and still be ready: a replica catching up after a
/// restart is not.
pub const READY_LAG: u64 = 1_000;

/// How long a request waits for a new leader after the one it was sent to could not be reached.
const ELECTION_WAIT: Duration = Duration::from_secs(3);

fn raft_error(error: impl std::fmt::Display) -> LedgerApiError {
    LedgerApiError::Raft(error.to_string())
}

impl LedgerReplica {
    /// Starts the replica of node `node_id`, reachable at `advertised`, on `endpoint`.
    pub async fn start(
        settings: ReplicaSettings,
        node_id: NodeId,
        advertised: String,
        endpoint: quinn::Endpoint,
        metrics: LedgerMetrics,
    ) -> Result<Arc<Self>, ReplicaError> {
        let storage_error = |reason: String| ReplicaError::Storage {
            dir: settings.dir.clone(),
            reason,
        };
        claim_data_dir(&settings.dir, &node_id)?;
        let machine = LedgerStateMachine::open(
            &settings.dir.join("state"),
            settings.genesis.clone(),
            settings.audit_every_entry,
            metrics.clone(),
        )
        .map_err(|e| storage_error(e.to_string()))?;
        let shared = machine.shared();
        let config = Arc::new(settings.raft_config().map_err(ReplicaError::Config)?);
        let id = replica_id_of(&node_id);
        let network = QuicNetwork {
            endpoint: endpoint.clone(),
        };
        let raft = if settings.volatile_log {
            Raft::new(id, config, network, MemLogStore::default(), machine).await
        } else {
            let log = FileLogStore::open_with(&settings.dir.join("log"), settings.disk_faults.clone())
                .map_err(|e| storage_error(e.to_string()))?;
            let (last_log, log_members) = log.durable_end().await;
            let (applied, snapshot_members) = {
                let applied = shared.read().expect("state lock");
                let members: Vec<(ReplicaId, ReplicaAddr)> = applied
                    .membership
                    .membership()
                    .nodes()
                    .map(|(id, addr)| (*id, addr.clone()))
                    .collect();
                (applied.last_applied, members)
            };
            let held = last_log.max(applied).map(|l| l.index);
            let members = if log_members.is_empty() {
                snapshot_members
            } else {
                log_members
            };
            if let (Some(held), true) = (held, settings.check_log_with_peers) {
                check_not_reverted(&endpoint, id, held, &members).await?;
            }
            Raft::new(id, config, network, log, machine).await
        }
        .map_err(|e| ReplicaError::Raft(e.to_string()))?;
        let group_commit = GroupCommit::start(raft.clone(), shared.clone(), metrics.clone());
        let replica = Arc::new(LedgerReplica {
            id,
            group_commit,
            me: ReplicaAddr {
                addr: advertised,
                node_id: node_id.to_string(),
            },
            raft,
            shared,
            endpoint,
            metrics,
            leader_client: Mutex::new(None),
            snapshot_path: settings.dir.join("state").join("snapshot"),
            backup: Mutex::new(None),
        });
        tokio::spawn(watch_leadership(replica.raft.clone(), replica.metrics.clone()));
        Ok(replica)
    }

    /// A piece of an online backup (see [`crate::backup`]): a new snapshot for a new backup, then
    /// pieces of that one by offset.
    async fn backup_piece(&self, snapshot: Option<[u8; 32]>, offset: u64) -> LedgerResult {
        let mut cached = self.backup.lock().await;
        let (hash, bytes) = match (snapshot, cached.as_ref()) {
            (None, _) => {
                let applied = self.read(|a| a.last_applied.map(|l| l.index));
                self.raft.trigger().snapshot().await.map_err(raft_error)?;
                if let Some(applied) = applied {
                    self.raft
                        .wait(Some(Duration::from_secs(60)))
                        .metrics(
                            |m| m.snapshot.is_some_and(|s| s.index >= applied),
                            "a snapshot for the backup",
                        )
                        .await
                        .map_err(|e| LedgerApiError::Raft(e.to_string()))?;
                }
                let bytes = std::fs::read(&self.snapshot_path)
                    .map_err(|e| LedgerApiError::Raft(format!("reading the snapshot: {e}")))?;
                let entry = (*blake3::hash(&bytes).as_bytes(), Arc::new(bytes));
                *cached = Some(entry.clone());
                entry
            }
            (Some(asked), Some((hash, bytes))) if asked == *hash => (*hash, bytes.clone()),
            (Some(_), _) => return Err(LedgerApiError::BackupGone),
        };
        let total = bytes.len() as u64;
        if offset > total {
            return Err(LedgerApiError::BadRequest(format!(
                "offset {offset} is past the snapshot's {total} bytes"
            )));
        }
        let start = offset as usize;
        let end = (start + crate::backup::BACKUP_PIECE_BYTES).min(bytes.len());
        Ok(LedgerResponse::Backup {
            snapshot: hash,
            total,
            bytes: bytes[start..end].to_vec(),
        })
    }

    /// Makes this replica a one-member cluster if it has never been part of one; a replica that
    /// has (its log or vote is not empty) is left as it is.
    pub async fn bootstrap(&self) -> Result<Bootstrap, ReplicaError> {
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| ReplicaError::Raft(e.to_string()))?
        {
            return Ok(Bootstrap::AlreadyMember);
        }
        let members = BTreeMap::from([(self.id, self.me.clone())]);
        match self.raft.initialize(members).await {
            Ok(()) => Ok(Bootstrap::Started),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {
                Ok(Bootstrap::AlreadyMember)
            }
            Err(e) => Err(ReplicaError::Raft(e.to_string())),
        }
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Reads the applied state (not linearizable by itself: see [`Self::execute`]).
    pub fn read<T>(&self, f: impl FnOnce(&Applied) -> T) -> T {
        f(&self.shared.read().expect("state lock"))
    }

    /// Waits until this replica's Raft core stops for good (a storage error, a panic inside
    /// it, a shutdown) and answers why. The process running it must stop too, non-zero, so
    /// that its supervisor restarts it: a replica whose core is gone neither votes, replicates
    /// nor applies, while everything else in the process would still look alive.
    pub async fn stopped(&self) -> CoreStopped {
        let mut watch = self.raft.metrics();
        loop {
            if let Err(fatal) = &watch.borrow_and_update().running_state {
                return CoreStopped::from(fatal);
            }
            if watch.changed().await.is_err() {
                return CoreStopped::Shutdown;
            }
        }
    }

    /// Whether this replica can serve (`/readyz`): its Raft core runs, it knows a leader, and it
    /// has applied the entries it holds (within [`READY_LAG`]).
    pub fn readiness(&self) -> Result<(), NotReady> {
        let metrics = self.raft.metrics().borrow().clone();
        if let Err(fatal) = &metrics.running_state {
            return Err(NotReady::Stopped(CoreStopped::from(fatal)));
        }
        if metrics.current_leader.is_none() {
            return Err(NotReady::NoLeader);
        }
        let applied = metrics.last_applied.map_or(0, |id| id.index);
        let held = metrics.last_log_index.unwrap_or(0);
        match held.saturating_sub(applied) {
            behind if behind > READY_LAG => Err(NotReady::Behind(behind)),
            _ => Ok(()),
        }
    }

    /// The leader this replica knows of; none once its Raft core has stopped (what it last
    /// believed is stale from then on).
    pub fn current_leader(&self) -> Option<ReplicaId> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics.running_state.as_ref().ok().and(metrics.current_leader)
    }

    pub fn is_leader(&self) -> bool {
        self.current_leader() == Some(self.id)
    }

    /// Serves Raft traffic from another replica.
    pub async fn handle_replica(&self, request: ReplicaRequest) -> Result<ReplicaResponse, RpcError> {
        let bad = |e: postcard::Error| RpcError::new(ErrorCode::MalformedFrame, format!("raft payload: {e}"));
        let bytes = match request {
            ReplicaRequest::AppendEntries(payload) => {
                let rpc = postcard::from_bytes(&payload).map_err(bad)?;
                encode(&self.raft.append_entries(rpc).await)
            }
            ReplicaRequest::Vote(payload) => {
                let rpc = postcard::from_bytes(&payload).map_err(bad)?;
                encode(&self.raft.vote(rpc).await)
            }
            ReplicaRequest::InstallSnapshot(payload) => {
                let rpc = postcard::from_bytes(&payload).map_err(bad)?;
                encode(&self.raft.install_snapshot(rpc).await)
            }
            ReplicaRequest::Forward(payload) => {
                let result = match decode::<LedgerRequest>(&payload) {
                    Ok(request) => self.execute_here(request).await,
                    Err(e) => Err(e),
                };
                encode(&result)
            }
        };
        Ok(ReplicaResponse(bytes))
    }

    /// Serves a client's encoded ledger request, made with a certificate of `role`; the answer
    /// is an encoded [`LedgerResult`]. Before anything is forwarded or proposed: the request's
    /// size, the role's row in the authorization table, and a transaction's stateless checks.
    pub async fn handle_client(&self, payload: &[u8], role: Role) -> Vec<u8> {
        encode(&self.admit(payload, role).await)
    }

    async fn admit(&self, payload: &[u8], role: Role) -> LedgerResult {
        if payload.len() > authz::MAX_LEDGER_REQUEST_BYTES {
            return Err(LedgerApiError::Refused(TxError::TooLarge {
                what: "ledger request".into(),
                bytes: payload.len() as u64,
                max: authz::MAX_LEDGER_REQUEST_BYTES as u64,
            }));
        }
        let request = decode::<LedgerRequest>(payload)?;
        if !authz::allows(&request, role) {
            return Err(LedgerApiError::Forbidden {
                role: role.to_string(),
                request: request.kind_name().to_string(),
            });
        }
        if let LedgerRequest::Submit(signed) = &request {
            self.read(|a| authz::check_stateless(&a.state, signed))
                .map_err(LedgerApiError::Refused)?;
        }
        self.execute(request).await
    }

    /// Executes a request here if this replica leads, else on the leader. A leader that cannot
    /// be reached (it died; this replica still names it until the election) is waited out:
    /// once another leader is known the request goes there, within one election's time.
    pub async fn execute(&self, request: LedgerRequest) -> LedgerResult {
        let leader = self.current_leader();
        let first = match leader {
            Some(leader) if leader == self.id => return self.execute_here(request).await,
            Some(leader) => self.forward(leader, &request).await,
            None => Err(LedgerApiError::NoLeader),
        };
        if !matches!(
            first,
            Err(LedgerApiError::NoLeader | LedgerApiError::LeaderUnreachable(_))
        ) {
            return first;
        }
        // Nothing reached a leader (a call that may have is `Indeterminate`, never retried), so
        // nothing was proposed: trying again cannot apply twice.
        let changed = self
            .raft
            .wait(Some(ELECTION_WAIT))
            .metrics(
                |m| m.current_leader.is_some() && m.current_leader != leader,
                "a new leader",
            )
            .await;
        match changed.ok().and_then(|m| m.current_leader) {
            Some(next) if next == self.id => self.execute_here(request).await,
            Some(next) => self.forward(next, &request).await,
            None => first,
        }
    }

    async fn forward(&self, leader: ReplicaId, request: &LedgerRequest) -> LedgerResult {
        let addr = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .nodes()
            .find(|(id, _)| **id == leader)
            .map(|(_, addr)| addr.clone())
            .ok_or(LedgerApiError::NoLeader)?;
        let cached = self
            .leader_client
            .lock()
            .await
            .as_ref()
            .filter(|(id, client)| *id == leader && !client.is_closed())
            .map(|(_, client)| client.clone());
        // A leader that dies mid-call never answers; this replica learns of it when its election
        // timer fires, and stops waiting then (connecting or waiting for the answer) rather than
        // at a timeout.
        let leader_moved = async {
            let moved = self
                .raft
                .wait(Some(FORWARD_TIMEOUT))
                .metrics(|m| m.current_leader != Some(leader), "the leader to change")
                .await;
            if moved.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(leader_moved);
        let client = match cached {
            Some(client) => client,
            None => {
                // Connecting (bounded by the transport's handshake timeout) holds no lock: a
                // dead leader's address does not stall every other forward behind it. Nothing
                // was sent yet, so giving up here is `LeaderUnreachable`, safe to send elsewhere.
                let connected = tokio::select! {
                    connected = RpcClient::connect(&self.endpoint, &addr.addr, Role::Scheduler) => {
                        connected.map_err(|e| LedgerApiError::LeaderUnreachable(e.to_string()))
                    }
                    () = &mut leader_moved => Err(LedgerApiError::LeaderUnreachable(format!(
                        "replica {leader} stopped leading while this replica connected to it"
                    ))),
                };
                let client = connected?.with_timeout(FORWARD_TIMEOUT);
                *self.leader_client.lock().await = Some((leader, client.clone()));
                client
            }
        };
        let forwarded = ReplicaRequest::Forward(encode(request));
        let answered = tokio::select! {
            answered = client.call(&forwarded) => answered,
            () = &mut leader_moved => Err(aic_protocol::Error::Connect {
                addr: addr.addr.clone(),
                reason: format!("replica {leader} stopped leading before it answered"),
            }),
        };
        match answered {
            Ok(ReplicaResponse(bytes)) => decode::<LedgerResult>(&bytes)?,
            Err(error) => {
                // A failed call's connection is not trusted again.
                let mut cached = self.leader_client.lock().await;
                if cached.as_ref().is_some_and(|(id, _)| *id == leader) {
                    *cached = None;
                }
                // A write the leader may have received may also have been applied.
                Err(if request.is_write() {
                    LedgerApiError::Indeterminate(error.to_string())
                } else {
                    LedgerApiError::LeaderUnreachable(error.to_string())
                })
            }
        }
    }

    /// Executes a request on this replica, which must be the leader.
    async fn execute_here(&self, request: LedgerRequest) -> LedgerResult {
        if !request.is_write() {
            self.raft.ensure_linearizable().await.map_err(|e| match e {
                RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)) => LedgerApiError::NoLeader,
                RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)) => LedgerApiError::NoQuorum,
                other => raft_error(other),
            })?;
        }
        match request {
            LedgerRequest::Submit(signed) => {
                // Chain, size and authority were checked where the request entered (`admit`, on
                // this replica or the follower that forwarded it). The signature and the nonce
                // are checked in the batch (group_commit), before it is proposed; what passes is
                // checked again, all but the signature, when the entry is applied.
                self.group_commit.submit(*signed).await
            }
            LedgerRequest::Account(address) => Ok(self.read(|a| {
                LedgerResponse::Account(AccountView {
                    address,
                    account: a.state.account(&address),
                    spendable: a.state.spendable(&address),
                    assets: a.state.asset_balance_of(&address),
                })
            })),
            LedgerRequest::Allowance { owner, spender } => Ok(LedgerResponse::Allowance(
                self.read(|a| a.state.allowance(&owner, &spender)),
            )),
            LedgerRequest::History { account, limit } => Ok(LedgerResponse::History(self.read(|a| {
                let history = a.state.history.get(&account);
                let skip = history.map_or(0, |h| h.len().saturating_sub(limit as usize));
                history.into_iter().flatten().skip(skip).cloned().collect()
            }))),
            LedgerRequest::Assets { owner } => Ok(LedgerResponse::Assets(self.read(|a| {
                a.state
                    .assets
                    .iter()
                    .filter(|(_, asset)| owner.is_none_or(|o| asset.owner == o))
                    .map(|(id, asset)| (*id, asset.clone()))
                    .collect()
            }))),
            LedgerRequest::Asset(id) => Ok(LedgerResponse::Asset(
                self.read(|a| a.state.assets.get(&id).cloned()),
            )),
            LedgerRequest::Escrow(job) => Ok(LedgerResponse::Escrow(
                self.read(|a| a.state.escrows.get(&job).cloned()),
            )),
            LedgerRequest::Jobs => Ok(LedgerResponse::Jobs(self.read(|a| {
                a.state
                    .jobs
                    .iter()
                    .map(|(job, record)| (*job, record.clone()))
                    .collect()
            }))),
            LedgerRequest::IsApprovedForAll { owner, operator } => Ok(LedgerResponse::ApprovedForAll(
                self.read(|a| a.state.is_approved_for_all(&owner, &operator)),
            )),
            LedgerRequest::Blocks { from, count } => Ok(LedgerResponse::Blocks(self.read(|a| {
                let from = from as usize;
                let count = count.min(MAX_BLOCKS_PER_REQUEST) as usize;
                a.state
                    .blocks
                    .iter()
                    .zip(&a.state.block_transactions)
                    .skip(from)
                    .take(count)
                    .map(|(header, txs)| (header.clone(), txs.clone()))
                    .collect()
            }))),
            LedgerRequest::InferenceAccess { key_hash, model } => {
                Ok(LedgerResponse::InferenceAccess(self.read(|a| {
                    let key = a.state.api_keys.get(&key_hash).cloned();
                    let escrow = key
                        .as_ref()
                        .map_or(Amount::ZERO, |k| a.state.inference_escrow_of(&k.account));
                    let model = a.state.resolve_model(&model).and_then(|(id, publication)| {
                        let asset = a.state.assets.get(&id)?.clone();
                        publication.live.then(|| PublishedModel {
                            id,
                            asset,
                            publication: publication.clone(),
                        })
                    });
                    InferenceAccess { key, escrow, model }
                })))
            }
            LedgerRequest::ApiKeys(account) => Ok(self.read(|a| LedgerResponse::ApiKeys {
                keys: a
                    .state
                    .api_keys
                    .iter()
                    .filter(|(_, k)| k.account == account)
                    .map(|(hash, k)| (*hash, k.clone()))
                    .collect(),
                escrow: a.state.inference_escrow_of(&account),
            })),
            LedgerRequest::Listings { after, limit } => Ok(LedgerResponse::Listings(self.read(|a| {
                let after = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
                a.state
                    .listings
                    .range((after, std::ops::Bound::Unbounded))
                    .take(limit.min(MAX_LISTINGS_PER_REQUEST) as usize)
                    .filter_map(|(id, listing)| Some((*id, *listing, a.state.assets.get(id)?.clone())))
                    .collect()
            }))),
            LedgerRequest::JobLog {
                filter,
                before,
                limit,
            } => Ok(self.read(|a| LedgerResponse::JobLog {
                entries: a.state.job_log.page(filter, before, limit),
                total: a.state.job_log.len() as u64,
            })),
            LedgerRequest::JobSummary(job) => Ok(LedgerResponse::JobSummary(self.read(|a| {
                a.state
                    .job_log
                    .get(&job)
                    .map(|(n, summary)| (n, summary.clone(), a.state.job_log.work(&job)))
            }))),
            LedgerRequest::Status => Ok(LedgerResponse::Status(self.status())),
            LedgerRequest::Backup { snapshot, offset } => self.backup_piece(snapshot, offset).await,
            LedgerRequest::Audit => Ok(LedgerResponse::Audit(
                self.read(|a| a.state.audit().map_err(|v| v.to_string())),
            )),
            LedgerRequest::AddLearner { id, addr } => {
                let response = self.raft.add_learner(id, addr, true).await.map_err(raft_error)?;
                Ok(LedgerResponse::MembershipChanged {
                    index: response.log_id.index,
                })
            }
            LedgerRequest::ChangeMembership { voters } => {
                let voters: BTreeSet<ReplicaId> = voters.into_iter().collect();
                let response = self
                    .raft
                    .change_membership(voters, false)
                    .await
                    .map_err(raft_error)?;
                Ok(LedgerResponse::MembershipChanged {
                    index: response.log_id.index,
                })
            }
        }
    }

    /// Proposes a block seal and waits for it to apply. (Transactions are proposed in batches,
    /// by [`GroupCommit`].)
    async fn write_block(&self, header: crate::block::BlockHeader) -> LedgerResult {
        let started = Instant::now();
        let response = self
            .raft
            .client_write(LedgerCommand::SealBlock(header))
            .await
            .map_err(|e| match e {
                // Not proposed here: the caller may try again once a leader is known.
                RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => LedgerApiError::NoLeader,
                other => raft_error(other),
            })?;
        self.metrics
            .commit_latency
            .observe(started.elapsed().as_secs_f64());
        match response.data {
            CommandOutcome::Block(result) => Ok(LedgerResponse::Submitted {
                hash: [0; 32],
                index: response.log_id.index,
                result: result.map(|_| Vec::new()),
            }),
            _ => Err(LedgerApiError::Raft("a block seal gave no block outcome".into())),
        }
    }

    /// On the leader: seals the pending transactions into a block signed by `key`. Returns the
    /// new height, or `None` when this replica does not lead.
    /// The header of the next block over the pending transactions, unsigned (for a lottery
    /// block, whose signers are nodes elsewhere).
    pub fn next_block_template(&self) -> crate::block::BlockHeader {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.read(|a| a.state.next_block_template(now_ms, None))
    }

    /// Commits a signed block header through Raft (leader only); every replica checks it.
    pub async fn commit_block(&self, header: crate::block::BlockHeader) -> Result<u64, String> {
        let height = header.height;
        match self.write_block(header).await {
            Ok(LedgerResponse::Submitted { result: Ok(_), .. }) => Ok(height),
            Ok(LedgerResponse::Submitted { result: Err(e), .. }) => Err(e.to_string()),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    pub async fn seal_block(&self, key: &Keypair) -> Option<Result<u64, String>> {
        if !self.is_leader() {
            return None;
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut header = self.read(|a| a.state.next_block_template(now_ms, None));
        header.proposer = NodeId::from_public_key(&key.address().0);
        header.proposer_key = key.address();
        header.sign(key);
        let height = header.height;
        Some(match self.write_block(header).await {
            Ok(LedgerResponse::Submitted { result: Ok(_), .. }) => Ok(height),
            Ok(LedgerResponse::Submitted { result: Err(e), .. }) => Err(e.to_string()),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        })
    }

    pub fn status(&self) -> LedgerStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<ReplicaId> = membership.voter_ids().collect();
        let replicas = membership
            .nodes()
            .map(|(id, addr)| ReplicaView {
                id: *id,
                addr: addr.clone(),
                voter: voters.contains(id),
                matched_index: metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|log_id| log_id.index),
            })
            .collect();
        self.read(|a| LedgerStatus {
            chain_id: a.state.chain_id().to_string(),
            leader: metrics.current_leader,
            term: metrics.current_term,
            replicas,
            applied_index: a.last_applied.map_or(0, |id| id.index),
            total_supply: a.state.total_supply(),
            burned: a.state.burned,
            issued: a.state.issued,
            accrued_rewards: crate::Amount(
                a.state
                    .accrued_rewards
                    .values()
                    .map(|r| r.0)
                    .fold(0u128, u128::saturating_add),
            ),
            reward_epoch: a.state.reward_epoch,
            block_height: a.state.height(),
            head_hash: a.state.blocks.last().map_or([0; 32], |b| b.hash()),
            state_hash: a.state.state_hash(),
        })
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

/// Publishes term and leadership as metrics, counting leader changes.
async fn watch_leadership(raft: Raft, metrics: LedgerMetrics) {
    let mut watch = raft.metrics();
    let mut leader = None;
    loop {
        let (term, current, me, running) = {
            let m = watch.borrow_and_update();
            (m.current_term, m.current_leader, m.id, m.running_state.is_ok())
        };
        metrics.raft_term.set(term as i64);
        // A core that stopped leads nothing, whatever it last believed.
        metrics.is_leader.set(i64::from(running && current == Some(me)));
        if current != leader {
            if current.is_some() {
                metrics.leader_changes.inc();
            }
            leader = current;
        }
        if !running || watch.changed().await.is_err() {
            metrics.is_leader.set(0);
            return;
        }
    }
}
