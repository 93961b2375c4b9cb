//! Carries out re-replication: on every replica it reads the registry's node table a few times
//! per heartbeat interval and publishes what [`re_replication::assess`] finds (lost storage
//! nodes, under-replicated datasets); on the Raft leader only, it also asks each chosen holder
//! to copy its dataset to the chosen target (`PeerRequest::ReReplicate`) and follows the copy
//! until the target's heartbeat reports it.
//!
//! ```text
//!  Registry ─ ListNodes ─► assess (pure) ─► copies ─► holder ─ TakeReplica ─► target
//!                              ▲                                                 │
//!                              └──────────── target's heartbeat: holds it whole ◄┘
//! ```
//!
//! Why the scheduler drives rather than the surviving holders: only it sees every storage
//! node's heartbeats (who is lost rather than restarting, who is up with room, who holds what);
//! the copy itself goes holder to target, since only storage nodes hold dataset keys
//! (`aic-storage-node`'s `handover.rs`). Only the leader copies, so replicas with the same table
//! do not place the same copy twice.
//! A copy that failed is not tried on the same target again for a while, so another node is
//! chosen; one that succeeded counts as held until the target reports it or [`SETTLE`] passes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use aic_ledger::raft::replica::LedgerReplica;
use aic_protocol::messages::{PeerRequest, PeerResponse};
use aic_protocol::metrics::registered;
use aic_protocol::rpc::RpcClient;
use aic_protocol::{NodeId, Role, RpcError};
use prometheus::{IntCounterVec, IntGauge, Opts};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::re_replication::{self, Copy, LossRules};
use crate::registry::{ListNodes, Registry};

/// How long dialing a holder may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one copy may take: the target pulls the whole dataset within the holder's call
/// (which the holder bounds at 10 minutes).
const COPY_TIMEOUT: Duration = Duration::from_secs(11 * 60);
/// How long a copy that succeeded counts as held before the target's heartbeat says so.
pub const SETTLE: Duration = Duration::from_secs(60);
/// How long a failed (dataset, target) pair is not tried again.
const COOL_OFF: Duration = Duration::from_secs(120);
/// Copies under way at once, over all datasets.
const MAX_COPIES_IN_FLIGHT: usize = 4;

/// Why a copy failed, as the scheduler saw it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    #[error("holder {addr} unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("the node at {addr} is {found}, not the holder {expected}")]
    WrongHolder {
        addr: String,
        expected: String,
        found: String,
    },
    #[error("refused: {0}")]
    Refused(RpcError),
    #[error("transport: {0}")]
    Transport(String),
    #[error("the holder answered something other than ReReplicated")]
    Unexpected,
}

/// `aic_scheduler_*` metrics of re-replication.
#[derive(Clone)]
pub struct ReReplicationMetrics {
    pub under_replicated: IntGauge,
    pub lost: IntGauge,
    pub in_flight: IntGauge,
    pub copies: IntCounterVec,
}

impl ReReplicationMetrics {
    pub fn register(registry: &prometheus::Registry) -> aic_protocol::Result<Self> {
        let metrics = ReReplicationMetrics {
            under_replicated: registered(
                registry,
                IntGauge::new(
                    "aic_scheduler_datasets_under_replicated",
                    "Datasets fewer up storage nodes hold whole than their replica count",
                )?,
            )?,
            lost: registered(
                registry,
                IntGauge::new(
                    "aic_scheduler_storage_nodes_lost",
                    "Storage nodes silent past membership.storage_lost_after_ms",
                )?,
            )?,
            in_flight: registered(
                registry,
                IntGauge::new(
                    "aic_scheduler_re_replications_in_flight",
                    "Dataset copies to a new holder under way (leader only)",
                )?,
            )?,
            copies: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_scheduler_re_replications_total",
                        "Dataset copies to a new holder after a holder was lost, by result",
                    ),
                    &["result"],
                )?,
            )?,
        };
        for result in ["ok", "failed"] {
            metrics.copies.with_label_values(&[result]);
        }
        Ok(metrics)
    }
}

/// What the task needs from the scheduler.
pub struct ReReplicator {
    pub registry: Addr<Registry>,
    pub ledger: Arc<LedgerReplica>,
    /// The scheduler's endpoint (its certificate is what holders check).
    pub endpoint: quinn::Endpoint,
    pub rules: LossRules,
    /// How often the node table is assessed.
    pub check_every: Duration,
    pub metrics: ReReplicationMetrics,
}

/// Copies decided and not yet settled, and pairs to leave alone for a while.
#[derive(Default)]
struct Follow {
    in_flight: BTreeMap<String, BTreeSet<NodeId>>,
    /// Done, until the target reports it or the deadline passes.
    settling: Vec<(String, NodeId, Instant)>,
    cooling: BTreeMap<(String, NodeId), Instant>,
}

impl Follow {
    fn pending(&self) -> BTreeMap<String, BTreeSet<NodeId>> {
        let mut pending = self.in_flight.clone();
        for (dataset, target, _) in &self.settling {
            pending.entry(dataset.clone()).or_default().insert(*target);
        }
        pending
    }

    fn in_flight(&self) -> usize {
        self.in_flight.values().map(BTreeSet::len).sum()
    }

    fn finish(&mut self, copy: &Copy, ok: bool, now: Instant) {
        if let Some(targets) = self.in_flight.get_mut(&copy.dataset) {
            targets.remove(&copy.target);
            if targets.is_empty() {
                self.in_flight.remove(&copy.dataset);
            }
        }
        if ok {
            self.settling
                .push((copy.dataset.clone(), copy.target, now + SETTLE));
        } else {
            self.cooling
                .insert((copy.dataset.clone(), copy.target), now + COOL_OFF);
        }
    }

    /// Drops what the table now shows (the target reports the dataset) and what expired.
    fn prune(&mut self, nodes: &[aic_protocol::messages::NodeStatus], now: Instant) {
        let reports = |dataset: &str, target: &NodeId| {
            nodes
                .iter()
                .any(|n| n.node_id == *target && n.holdings.iter().any(|h| h.dataset == dataset))
        };
        self.settling
            .retain(|(dataset, target, until)| *until > now && !reports(dataset, target));
        self.cooling.retain(|_, until| *until > now);
    }
}

impl ReReplicator {
    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.check_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut follow = Follow::default();
        let mut copies: JoinSet<(Copy, Result<Vec<NodeId>, CopyError>)> = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                Some(done) = copies.join_next(), if !copies.is_empty() => {
                    if let Ok((copy, result)) = done {
                        self.finished(&mut follow, &copy, result);
                    }
                    continue;
                }
                _ = ticker.tick() => {}
            }
            let Ok(nodes) = self.registry.send(ListNodes).await else {
                continue;
            };
            let now = Instant::now();
            follow.prune(&nodes, now);
            let cooling: BTreeSet<(String, NodeId)> = follow.cooling.keys().cloned().collect();
            let assessment = re_replication::assess(&nodes, self.rules, &follow.pending(), &cooling);
            let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            self.metrics
                .under_replicated
                .set(gauge(assessment.under_replicated.len()));
            self.metrics.lost.set(gauge(assessment.lost.len()));
            if !self.ledger.is_leader() {
                continue;
            }
            for copy in assessment.copies {
                if follow.in_flight() >= MAX_COPIES_IN_FLIGHT {
                    break;
                }
                info!(
                    dataset = %copy.dataset,
                    source = %copy.source.short(),
                    target = %copy.target.short(),
                    lost = copy.lost.len(),
                    "a dataset is short of replicas: copying it to a new holder"
                );
                follow
                    .in_flight
                    .entry(copy.dataset.clone())
                    .or_default()
                    .insert(copy.target);
                let endpoint = self.endpoint.clone();
                copies.spawn(async move {
                    let result = ask_holder(&endpoint, &copy).await;
                    (copy, result)
                });
            }
            self.metrics.in_flight.set(gauge(follow.in_flight()));
        }
    }

    fn finished(&self, follow: &mut Follow, copy: &Copy, result: Result<Vec<NodeId>, CopyError>) {
        let ok = result.is_ok();
        follow.finish(copy, ok, Instant::now());
        self.metrics
            .in_flight
            .set(i64::try_from(follow.in_flight()).unwrap_or(i64::MAX));
        self.metrics
            .copies
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
        match result {
            Ok(holders) => info!(
                dataset = %copy.dataset,
                target = %copy.target.short(),
                holders = holders.len(),
                "dataset copied to a new holder"
            ),
            Err(error) => warn!(
                dataset = %copy.dataset,
                target = %copy.target.short(),
                %error,
                "copying a dataset to a new holder failed; another target will be tried"
            ),
        }
    }
}

/// Asks the copy's source to hand the dataset to its target; answers the holders now.
async fn ask_holder(endpoint: &quinn::Endpoint, copy: &Copy) -> Result<Vec<NodeId>, CopyError> {
    let addr = &copy.source_addr;
    let unreachable = |reason: String| CopyError::Unreachable {
        addr: addr.clone(),
        reason,
    };
    let client =
        match tokio::time::timeout(DIAL_TIMEOUT, RpcClient::connect(endpoint, addr, Role::Storage)).await {
            Ok(Ok(client)) => client.with_timeout(COPY_TIMEOUT),
            Ok(Err(error)) => return Err(unreachable(error.to_string())),
            Err(_) => return Err(unreachable(format!("no answer within {DIAL_TIMEOUT:?}"))),
        };
    if client.peer().node_id != copy.source {
        return Err(CopyError::WrongHolder {
            addr: addr.clone(),
            expected: copy.source.short(),
            found: client.peer().node_id.short(),
        });
    }
    let request = PeerRequest::ReReplicate {
        dataset: copy.dataset.clone(),
        target: copy.target,
        target_addr: copy.target_addr.clone(),
        lost: copy.lost.clone(),
    };
    match client.call(&request).await {
        Ok(PeerResponse::ReReplicated { holders }) => Ok(holders),
        Ok(_) => Err(CopyError::Unexpected),
        Err(aic_protocol::Error::Rpc(refusal)) => Err(CopyError::Refused(refusal)),
        Err(error) => Err(CopyError::Transport(error.to_string())),
    }
}
