//! The node side of membership, shared by storage and compute nodes: register with the
//! scheduler, heartbeat, and measure round-trip times to the peers the scheduler names.
//!
//! ```text
//!  agent task ── Register ──► scheduler ── probe targets ──┐
//!      ▲   └──── Heartbeat{rtts} every interval ◄──────────┤
//!      │                                                   ▼
//!  latest RTTs ◄── prober task ── Ping×3, min ──► peer nodes (their QUIC endpoints)
//! ```
//!
//! The prober runs apart from the heartbeat so a dead peer (whose probe waits for a timeout)
//! never delays the node's own sign of life.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::certs::{Identity, PeerIdentity};
use crate::config::Invalid;
use crate::error::{Error, ErrorCode, Result, RpcError};
use crate::ids::{NodeId, Role};
use crate::messages::{
    Capacity, DatasetHolding, Heartbeat, NodeRequest, NodeResponse, PeerRequest, PeerResponse, ProbeTarget,
    Registration, RttSample, SchedulerReplicas,
};
use crate::metrics::{registered, TransportMetrics};
use crate::rpc::{self, RpcClient, RpcHandler};
use crate::service::{BoundSockets, EndpointSettings, ServiceHandle};
use crate::transport::{self, TransportTuning};

/// Pings per probe; the minimum of them is the RTT (queueing only ever adds delay).
const PINGS_PER_PROBE: u32 = 3;
/// The longest a probe may take, dead peers included.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// `aic_<role>_probe_failures_total{reason}`.
const PROBE_FAILURE_REASONS: [&str; 2] = ["timeout", "error"];
/// Longest wait between attempts to reach the scheduler.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Most other scheduler replicas a node registers with.
pub const MAX_SCHEDULER_REPLICAS: usize = 8;

/// The `[scheduler]` table of a node's config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerLink {
    /// `host:port` of the scheduler's QUIC endpoint; its probe targets drive the RTT prober.
    pub addr: String,
    /// The other scheduler replicas (`host:port`). The node registers and heartbeats with each,
    /// so every replica can place work on it, its tickets are trusted from each, and a replica
    /// that takes over a job finds the node it needs.
    pub replicas: Vec<String>,
}

impl Default for SchedulerLink {
    fn default() -> Self {
        SchedulerLink {
            addr: "127.0.0.1:7400".into(),
            replicas: Vec::new(),
        }
    }
}

impl SchedulerLink {
    pub fn validate(&self, prefix: &str) -> Result<(), Invalid> {
        if !self.addr.contains(':') {
            return Err(Invalid::new(format!("{prefix}.addr"), "must be host:port"));
        }
        if self.replicas.len() > MAX_SCHEDULER_REPLICAS {
            return Err(Invalid::new(
                format!("{prefix}.replicas"),
                format!("at most {MAX_SCHEDULER_REPLICAS} other replicas"),
            ));
        }
        for replica in &self.replicas {
            if !replica.contains(':') || replica == &self.addr {
                return Err(Invalid::new(
                    format!("{prefix}.replicas"),
                    format!("{replica:?} must be host:port and differ from {prefix}.addr"),
                ));
            }
        }
        Ok(())
    }

    /// Every scheduler address, the primary first.
    pub fn all(&self) -> Vec<String> {
        std::iter::once(self.addr.clone())
            .chain(self.replicas.iter().cloned())
            .collect()
    }
}

/// Metrics of a node's membership agent.
#[derive(Clone)]
pub struct AgentMetrics {
    pub registrations: IntCounterVec,
    pub heartbeats: IntCounterVec,
    pub scheduler_connected: IntGauge,
    pub peer_rtt: Histogram,
    pub probe_failures: IntCounterVec,
}

impl AgentMetrics {
    pub fn register(registry: &Registry, component: &str) -> Result<Self> {
        let name = |what: &str| format!("aic_{component}_{what}");
        Ok(AgentMetrics {
            registrations: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        name("registrations_total"),
                        "Registration attempts with the scheduler, by result",
                    ),
                    &["result"],
                )?,
            )?,
            heartbeats: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        name("heartbeats_sent_total"),
                        "Heartbeats sent to the scheduler, by result",
                    ),
                    &["result"],
                )?,
            )?,
            scheduler_connected: registered(
                registry,
                IntGauge::new(
                    name("scheduler_connected"),
                    "Scheduler replicas this node is registered with",
                )?,
            )?,
            peer_rtt: registered(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(name("peer_rtt_seconds"), "Measured round-trip time to peer nodes")
                        .buckets(prometheus::exponential_buckets(0.00005, 2.0, 14)?),
                )?,
            )?,
            probe_failures: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(name("probe_failures_total"), "RTT probes that failed, by reason"),
                    &["reason"],
                )?,
            )?,
        })
        .inspect(|metrics: &AgentMetrics| {
            for reason in PROBE_FAILURE_REASONS {
                metrics.probe_failures.with_label_values(&[reason]);
            }
        })
    }
}

/// Called with the scheduler's identity after each successful registration.
pub type RegisteredHook = Arc<dyn Fn(&PeerIdentity) + Send + Sync>;

/// What the agent tells the scheduler about its node.
#[derive(Clone)]
pub struct AgentSettings {
    pub role: Role,
    pub name: String,
    /// The scheduler replicas to register with until one answers with the ledger's replica set
    /// (seeds: the set the ledger names is followed from then on).
    pub scheduler_addrs: Vec<String>,
    pub quic_addr: String,
    pub metrics_addr: String,
    pub capacity: Capacity,
    /// Called with the scheduler's identity after each successful registration (a storage node
    /// trusts the tickets that scheduler signs).
    pub on_registered: Option<RegisteredHook>,
    /// What a storage node holds, sent with every heartbeat.
    pub holdings: Option<watch::Receiver<Vec<DatasetHolding>>>,
    /// The ledger account paid for this node's work.
    pub payout_address: String,
}

/// What a role adds to the common node runtime.
#[derive(Default)]
pub struct NodeExtras {
    pub on_registered: Option<RegisteredHook>,
    pub holdings: Option<watch::Receiver<Vec<DatasetHolding>>>,
    pub payout_address: String,
}

/// Answers the node↔node conversation every node serves. Storage and compute handlers call it
/// for the requests they do not specialise.
pub fn answer_peer(request: PeerRequest) -> Result<PeerResponse, RpcError> {
    match request {
        PeerRequest::Ping { nonce } => Ok(PeerResponse::Pong { nonce }),
        PeerRequest::GetShard { .. }
        | PeerRequest::Replicate { .. }
        | PeerRequest::FetchSealed { .. }
        | PeerRequest::DropReplica { .. }
        | PeerRequest::ReReplicate { .. }
        | PeerRequest::TakeReplica { .. }
        | PeerRequest::UpdateHolders { .. }
        | PeerRequest::EscrowKey { .. }
        | PeerRequest::RecoverKey { .. }
        | PeerRequest::ListTensors => Err(RpcError::new(ErrorCode::Unsupported, "this node holds no shards")),
        PeerRequest::RunTask(_) | PeerRequest::SignTicket { .. } | PeerRequest::SignBlock { .. } => {
            Err(RpcError::new(ErrorCode::Unsupported, "this node runs no tasks"))
        }
        PeerRequest::GetTensor { .. }
        | PeerRequest::PutTensor { .. }
        | PeerRequest::DropTensor { .. }
        | PeerRequest::GetPublishedTensor { .. } => Err(RpcError::new(
            ErrorCode::Unsupported,
            "this node holds no tensors",
        )),
        PeerRequest::Infer(_) => Err(RpcError::new(
            ErrorCode::Unsupported,
            "this node serves no models",
        )),
    }
}

/// Starts a node service: the QUIC server with `handler`, the metrics endpoint serving
/// `registry` (where the role may have registered metrics of its own), the membership agent and
/// the RTT prober.
#[allow(clippy::too_many_arguments)]
pub fn start_node<H: RpcHandler>(
    role: Role,
    settings: &EndpointSettings,
    scheduler: &SchedulerLink,
    capacity: Capacity,
    bound: BoundSockets,
    handler: Arc<H>,
    registry: Registry,
    extras: NodeExtras,
    shutdown: CancellationToken,
) -> Result<ServiceHandle> {
    let identity = settings.tls.load()?;
    let component = role.as_str();
    if extras.payout_address.is_empty() {
        // Not an error (a lab's own nodes need no pay), but never silent: `aic nodes` shows
        // such a node as unpaid too.
        tracing::warn!(
            "no payout address: this node's work is never paid; set [{component}] payout_address \
             to a wallet's address (aic wallet address --wallet FILE)"
        );
    }
    let transport_metrics = TransportMetrics::register(&registry, component)?;
    let agent_metrics = AgentMetrics::register(&registry, component)?;

    let quic_addr = bound.quic_addr()?;
    let metrics_addr = bound.metrics_addr()?;
    let endpoint = transport::endpoint(bound.quic, &identity, &TransportTuning::default())?;
    let name = display_name(settings, &identity);
    let agent = AgentSettings {
        role,
        name: name.clone(),
        scheduler_addrs: scheduler.all(),
        quic_addr: advertised(settings, quic_addr),
        metrics_addr: metrics_addr.to_string(),
        capacity,
        on_registered: extras.on_registered,
        holdings: extras.holdings,
        payout_address: extras.payout_address,
    };
    info!(%name, %role, node = %identity.me.node_id.short(), %quic_addr, %metrics_addr, "node starting");

    let mut handle = ServiceHandle::new(name, quic_addr, metrics_addr, shutdown.clone());
    handle.spawn(rpc::serve(
        endpoint.clone(),
        handler,
        transport_metrics,
        shutdown.clone(),
    ));
    let metrics_shutdown = shutdown.clone();
    handle.spawn(async move {
        if let Err(error) = crate::metrics_http::serve(bound.metrics, registry, metrics_shutdown).await {
            warn!(%error, "metrics endpoint failed");
        }
    });
    handle.spawn(run_agent(endpoint, agent, agent_metrics, shutdown));
    Ok(handle)
}

/// The name a service shows: the configured one, else its certificate's.
pub fn display_name(settings: &EndpointSettings, identity: &Identity) -> String {
    if settings.name.is_empty() {
        identity.me.name.clone()
    } else {
        settings.name.clone()
    }
}

/// The address peers should dial: the configured one, else the bound one.
pub fn advertised(settings: &EndpointSettings, bound: SocketAddr) -> String {
    if settings.advertise.is_empty() {
        bound.to_string()
    } else {
        settings.advertise.clone()
    }
}

/// Keeps the node registered and heartbeating with every scheduler replica until `shutdown`;
/// reconnects to each with backoff. The configured addresses are seeds: once a replica answers
/// with the ledger's replica set, the node follows that set (a replica added is registered with,
/// one removed is let go) without a restart.
pub async fn run_agent(
    endpoint: quinn::Endpoint,
    settings: AgentSettings,
    metrics: AgentMetrics,
    shutdown: CancellationToken,
) {
    let latest_rtts: Arc<Mutex<HashMap<NodeId, RttSample>>> = Arc::default();
    let (targets_tx, targets_rx) = watch::channel((Duration::from_secs(1), Vec::new()));
    tokio::spawn(run_prober(
        endpoint.clone(),
        targets_rx,
        latest_rtts.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let (learned_tx, mut learned_rx) = watch::channel(SchedulerReplicas::default());
    let session = Arc::new(Session {
        endpoint,
        settings,
        metrics,
        latest_rtts,
        targets_tx,
        learned_tx,
    });
    let mut running: HashMap<String, CancellationToken> = HashMap::new();
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        let learned = learned_rx.borrow_and_update().addrs.clone();
        let wanted = wanted_schedulers(&session.settings.scheduler_addrs, &learned);
        running.retain(|addr, stop| {
            let keep = wanted.contains(addr);
            if !keep {
                info!(scheduler = %addr, "no longer a scheduler replica of the ledger; letting it go");
                stop.cancel();
            }
            keep
        });
        for addr in wanted {
            if running.contains_key(&addr) {
                continue;
            }
            let stop = shutdown.child_token();
            running.insert(addr.clone(), stop.clone());
            let session = session.clone();
            sessions.spawn(async move { session.stay_registered(&addr, &stop).await });
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = learned_rx.changed() => if changed.is_err() { break },
        }
    }
    while sessions.join_next().await.is_some() {}
    debug!("membership agent stopped");
}

/// The scheduler addresses to stay registered with: the replica set the ledger names, once a
/// replica has told it (at most [`MAX_SCHEDULER_REPLICAS`] + 1); the configured seeds before.
pub fn wanted_schedulers(seeds: &[String], learned: &[String]) -> Vec<String> {
    let mut wanted: Vec<String> = if learned.is_empty() {
        seeds.to_vec()
    } else {
        learned.to_vec()
    };
    wanted.sort();
    wanted.dedup();
    wanted.truncate(MAX_SCHEDULER_REPLICAS + 1);
    wanted
}

/// Takes `heard` as the replica set when it is not empty and no older than `known`; answers
/// whether the set changed.
pub fn follow(known: &mut SchedulerReplicas, mut heard: SchedulerReplicas) -> bool {
    if heard.addrs.is_empty() || heard.membership_index < known.membership_index {
        return false;
    }
    heard.addrs.sort();
    heard.addrs.dedup();
    if heard.addrs == known.addrs {
        known.membership_index = heard.membership_index;
        return false;
    }
    *known = heard;
    true
}

/// What every scheduler session of one node shares.
struct Session {
    endpoint: quinn::Endpoint,
    settings: AgentSettings,
    metrics: AgentMetrics,
    latest_rtts: Arc<Mutex<HashMap<NodeId, RttSample>>>,
    targets_tx: watch::Sender<(Duration, Vec<ProbeTarget>)>,
    /// The newest replica set the schedulers answered, for [`run_agent`] to follow.
    learned_tx: watch::Sender<SchedulerReplicas>,
}

impl Session {
    fn learned(&self, replicas: SchedulerReplicas) {
        self.learned_tx.send_if_modified(|known| {
            let newer = follow(known, replicas);
            if newer {
                info!(replicas = ?known.addrs, index = known.membership_index, "the ledger's scheduler replicas");
            }
            newer
        });
    }

    /// Registers with the scheduler at `addr` and heartbeats it, registering again whenever the
    /// session breaks, until `stop`.
    async fn stay_registered(&self, addr: &str, stop: &CancellationToken) {
        let (settings, metrics) = (&self.settings, &self.metrics);
        let mut backoff = Duration::from_millis(100);
        let mut sequence = 0u64;
        while !stop.is_cancelled() {
            let session = async {
                let client = RpcClient::connect(&self.endpoint, addr, Role::Scheduler).await?;
                let (interval, targets, replicas) = register(&client, settings).await?;
                metrics.registrations.with_label_values(&["ok"]).inc();
                metrics.scheduler_connected.inc();
                if let Some(hook) = &settings.on_registered {
                    hook(client.peer());
                }
                let _ = self.targets_tx.send((interval, targets));
                self.learned(replicas);
                Ok::<_, Error>((client, interval))
            };
            let (client, interval) = tokio::select! {
                _ = stop.cancelled() => break,
                session = session => match session {
                    Ok(session) => session,
                    Err(error) => {
                        metrics.registrations.with_label_values(&["error"]).inc();
                        warn!(scheduler = %addr, %error, retry_in = ?backoff, "cannot register");
                        let _ = tokio::time::timeout(backoff, stop.cancelled()).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                },
            };
            backoff = Duration::from_millis(100);
            info!(scheduler = %client.peer().name, "registered");

            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                sequence += 1;
                let rtts: Vec<RttSample> = self
                    .latest_rtts
                    .lock()
                    .expect("rtt map")
                    .values()
                    .copied()
                    .collect();
                let holdings = settings
                    .holdings
                    .as_ref()
                    .map(|h| h.borrow().clone())
                    .unwrap_or_default();
                let heartbeat = NodeRequest::Heartbeat(Heartbeat {
                    sequence,
                    rtts,
                    holdings,
                });
                match client.call(&heartbeat).await {
                    Ok(NodeResponse::HeartbeatAccepted {
                        probe_targets,
                        scheduler_replicas,
                    }) => {
                        metrics.heartbeats.with_label_values(&["ok"]).inc();
                        let _ = self.targets_tx.send((interval, probe_targets));
                        self.learned(scheduler_replicas);
                    }
                    Ok(other) => {
                        metrics.heartbeats.with_label_values(&["error"]).inc();
                        warn!(?other, "unexpected answer to a heartbeat");
                    }
                    Err(Error::Rpc(RpcError {
                        code: ErrorCode::UnknownNode,
                        ..
                    })) => {
                        // The scheduler lost us (it restarted): register again on a fresh session.
                        metrics.heartbeats.with_label_values(&["unknown_node"]).inc();
                        info!(scheduler = %addr, "scheduler does not know this node; registering again");
                        break;
                    }
                    Err(error) => {
                        metrics.heartbeats.with_label_values(&["error"]).inc();
                        warn!(scheduler = %addr, %error, "heartbeat failed; reconnecting");
                        break;
                    }
                }
            }
            metrics.scheduler_connected.dec();
        }
    }
}

async fn register(
    client: &RpcClient,
    settings: &AgentSettings,
) -> Result<(Duration, Vec<ProbeTarget>, SchedulerReplicas)> {
    let registration = NodeRequest::Register(Registration {
        role: settings.role,
        name: settings.name.clone(),
        version: crate::SOFTWARE_VERSION.to_string(),
        quic_addr: settings.quic_addr.clone(),
        metrics_addr: settings.metrics_addr.clone(),
        capacity: settings.capacity.clone(),
        payout_address: settings.payout_address.clone(),
    });
    match client.call(&registration).await? {
        NodeResponse::Registered {
            heartbeat_interval_ms,
            probe_targets,
            scheduler_replicas,
            ..
        } => Ok((
            Duration::from_millis(heartbeat_interval_ms.max(10)),
            probe_targets,
            scheduler_replicas,
        )),
        NodeResponse::HeartbeatAccepted { .. } | NodeResponse::DatasetMinted { .. } => Err(
            Error::UnexpectedFrame("another request's answer to a registration"),
        ),
    }
}

/// Measures RTTs to the current probe targets once per heartbeat interval.
async fn run_prober(
    endpoint: quinn::Endpoint,
    mut targets: watch::Receiver<(Duration, Vec<ProbeTarget>)>,
    latest: Arc<Mutex<HashMap<NodeId, RttSample>>>,
    metrics: AgentMetrics,
    shutdown: CancellationToken,
) {
    let connections: Arc<Mutex<HashMap<NodeId, RpcClient>>> = Arc::default();
    loop {
        let (interval, current) = targets.borrow_and_update().clone();
        let mut probes = tokio::task::JoinSet::new();
        for target in current.clone() {
            let endpoint = endpoint.clone();
            let connections = connections.clone();
            probes.spawn(async move {
                let outcome =
                    tokio::time::timeout(PROBE_TIMEOUT, probe(&endpoint, &target, &connections)).await;
                (
                    target.node_id,
                    outcome.unwrap_or(Err(Error::Timeout(PROBE_TIMEOUT))),
                )
            });
        }
        while let Some(joined) = probes.join_next().await {
            let Ok((peer, outcome)) = joined else {
                continue;
            };
            match outcome {
                Ok(rtt) => {
                    metrics.peer_rtt.observe(rtt.as_secs_f64());
                    let sample = RttSample {
                        peer,
                        rtt_micros: u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX),
                    };
                    latest.lock().expect("rtt map").insert(peer, sample);
                }
                Err(error) => {
                    let reason = if matches!(error, Error::Timeout(_)) {
                        "timeout"
                    } else {
                        "error"
                    };
                    metrics.probe_failures.with_label_values(&[reason]).inc();
                    debug!(peer = %peer.short(), %error, "probe failed");
                    latest.lock().expect("rtt map").remove(&peer);
                    connections.lock().expect("connection map").remove(&peer);
                }
            }
        }
        // Forget peers that are no longer targets, so reports stay about the current set.
        let wanted: Vec<NodeId> = current.iter().map(|t| t.node_id).collect();
        latest
            .lock()
            .expect("rtt map")
            .retain(|id, _| wanted.contains(id));
        connections
            .lock()
            .expect("connection map")
            .retain(|id, _| wanted.contains(id));

        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::timeout(interval, targets.changed()) => {}
        }
    }
}

/// One probe: reuse or open a connection to the target, ping a few times, keep the fastest.
async fn probe(
    endpoint: &quinn::Endpoint,
    target: &ProbeTarget,
    connections: &Mutex<HashMap<NodeId, RpcClient>>,
) -> Result<Duration> {
    let cached = connections
        .lock()
        .expect("connection map")
        .get(&target.node_id)
        .filter(|client| !client.is_closed())
        .cloned();
    let client = match cached {
        Some(client) => client,
        None => {
            let client = RpcClient::connect(endpoint, &target.quic_addr, target.role).await?;
            check_is(client.peer(), target)?;
            connections
                .lock()
                .expect("connection map")
                .insert(target.node_id, client.clone());
            client
        }
    };
    let mut best = Duration::MAX;
    for nonce in 0..u64::from(PINGS_PER_PROBE) {
        let started = Instant::now();
        match client.call(&PeerRequest::Ping { nonce }).await? {
            PeerResponse::Pong { nonce: echoed } if echoed == nonce => {}
            _ => return Err(Error::UnexpectedFrame("a pong with the wrong nonce")),
        }
        best = best.min(started.elapsed());
    }
    Ok(best)
}

/// The scheduler told us who should answer at that address; make sure it is who answered.
fn check_is(peer: &PeerIdentity, target: &ProbeTarget) -> Result<()> {
    if peer.node_id != target.node_id {
        return Err(Error::Certificate(format!(
            "{} answered as {}, expected {}",
            target.quic_addr,
            peer.node_id.short(),
            target.node_id.short()
        )));
    }
    Ok(())
}

/// CPU cores and memory of this machine, for registration.
pub fn local_capacity() -> Capacity {
    let cpu_cores = std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1);
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| {
            meminfo
                .lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .and_then(|kib| kib.checked_mul(1024))
        .unwrap_or(0);
    Capacity {
        cpu_cores,
        memory_bytes,
        ..Capacity::default()
    }
}
