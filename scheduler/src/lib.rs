//! The AIC control plane: one scheduler replica.
//!
//! It runs a ledger replica (`aic-ledger`, Raft over QUIC) and, behind the QUIC API, the actors:
//! `Registry` (membership, heartbeats, liveness), `Allocator` (placement), `Rater` (Proof of
//! Value: spot checks, reputation, penalties), `CoinPayroll` (escrow payouts and rewards),
//! `BlockGenerator` (blocks and the lottery), `JobBoard` (jobs by id) and one `Job` actor per
//! running job; on the leader, the `re_replicator` task has a lost storage node's datasets
//! copied to other storage nodes. Decisions live in pure functions (`placement`, `rating`,
//! `payroll`, `lottery`, `re_replication`); the actors carry them out.
//!
//! [`start`] must run inside an actix `System` built on a multi-thread tokio runtime
//! (`actix_rt::System::with_tokio_rt`), so quinn's tasks run on tokio workers and reach the
//! actors through their addresses.

pub mod allocator;
pub mod api;
pub mod block_generator;
pub mod coin_payroll;
pub mod config;
pub mod data_plane;
pub mod job;
pub mod lottery;
pub mod membership;
pub mod metrics;
pub mod payroll;
pub mod placement;
pub mod provenance;
pub mod rater;
pub mod rating;
pub mod re_replication;
pub mod re_replicator;
pub mod registry;
pub mod resumer;
pub mod reward_epochs;
pub mod round_placement;
pub mod tensor_sweeper;
pub mod vivaldi;

use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use aic_ledger::raft::replica::{LedgerReplica, ReplicaSettings};
use aic_protocol::messages::{Capacity, NodeState, NodeStatus};
use aic_protocol::node_agent::{advertised, display_name, local_capacity};
use aic_protocol::service::{BoundSockets, ServiceHandle};
use aic_protocol::transport::{self, TransportTuning};
use aic_protocol::{metrics_http, rpc, Role};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::SchedulerConfig;

use crate::block_generator::BlockGenerator;
use crate::membership::{Membership, MembershipRules};
use crate::metrics::SchedulerMetrics;
use crate::registry::Registry;

/// Why a scheduler could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Protocol(#[from] aic_protocol::Error),
    #[error("ledger: {0}")]
    Ledger(String),
}

/// Starts a scheduler on already-bound sockets. It stops when `shutdown` is cancelled.
pub async fn start(
    config: SchedulerConfig,
    bound: BoundSockets,
    shutdown: CancellationToken,
) -> Result<ServiceHandle, StartError> {
    let identity = config.endpoint.tls.load()?;
    if identity.me.role != Role::Scheduler {
        return Err(aic_protocol::Error::WrongPeerRole {
            got: identity.me.role,
            expected: Role::Scheduler,
        }
        .into());
    }
    let registry = prometheus::Registry::new();
    let metrics = SchedulerMetrics::register(&registry)?;
    let ledger_metrics = aic_ledger::metrics::LedgerMetrics::register(&registry)?;
    let re_replication_metrics = re_replicator::ReReplicationMetrics::register(&registry)?;
    let quic_addr = bound.quic_addr()?;
    let metrics_addr = bound.metrics_addr()?;
    let endpoint = transport::endpoint(bound.quic, &identity, &TransportTuning::default())?;
    let name = display_name(&config.endpoint, &identity);

    let me = NodeStatus {
        node_id: identity.me.node_id,
        name: name.clone(),
        role: Role::Scheduler,
        version: aic_protocol::SOFTWARE_VERSION.to_string(),
        quic_addr: advertised(&config.endpoint, quic_addr),
        metrics_addr: metrics_addr.to_string(),
        state: NodeState::Up,
        last_heartbeat_ms_ago: None,
        times_marked_down: 0,
        capacity: Capacity {
            device: "none".into(),
            ..local_capacity()
        },
        rtts: Vec::new(),
        holdings: Vec::new(),
        payout_address: String::new(),
    };
    let rules = MembershipRules {
        heartbeat_interval: Duration::from_millis(config.membership.heartbeat_interval_ms),
        missed_heartbeats_before_down: config.membership.missed_heartbeats_before_down,
        probe_targets_per_node: config.membership.probe_targets_per_node as usize,
    };
    let registry_addr = Registry::new(Membership::new(rules, me), metrics.clone()).start();

    let genesis = aic_ledger::genesis::Genesis::load(&config.ledger.genesis).map_err(StartError::Ledger)?;
    let mut settings = ReplicaSettings::new(config.ledger.data_dir.clone(), genesis);
    settings.snapshot_every_entries = config.ledger.snapshot_every_entries;
    settings.audit_every_entry = config.ledger.audit_every_entry;
    let [low, high] = config.ledger.election_timeout_ms;
    settings.election_timeout = (Duration::from_millis(low), Duration::from_millis(high));
    let ledger = LedgerReplica::start(
        settings,
        identity.me.node_id,
        advertised(&config.endpoint, quic_addr),
        endpoint.clone(),
        ledger_metrics,
    )
    .await
    .map_err(|e| StartError::Ledger(e.to_string()))?;
    if config.ledger.bootstrap {
        let bootstrapped = ledger
            .bootstrap()
            .await
            .map_err(|e| StartError::Ledger(e.to_string()))?;
        match bootstrapped {
            aic_ledger::raft::replica::Bootstrap::Started => {
                info!("ledger.bootstrap: started a new one-replica cluster")
            }
            aic_ledger::raft::replica::Bootstrap::AlreadyMember => info!(
                "ledger.bootstrap is set, but this replica already belongs to a cluster: ignored \
                 (set it to false)"
            ),
        }
    }
    let node_key = aic_ledger::Keypair::from_pkcs8_der(identity.key.secret_der())
        .map_err(|e| StartError::Ledger(format!("the scheduler key cannot sign blocks: {e}")))?;
    let tickets = lottery::Tickets::default();
    let generator = BlockGenerator::new(
        ledger.clone(),
        node_key.clone(),
        Duration::from_millis(config.ledger.block_interval_ms),
        tickets.clone(),
        endpoint.clone(),
        metrics.clone(),
    )
    .start();
    info!(%name, node = %identity.me.node_id.short(), %quic_addr, %metrics_addr, "scheduler starting");

    let allocator = allocator::Allocator::default().start();
    let rater = rater::Rater::new(allocator.clone()).start();
    let system = if config.jobs.system_key.as_os_str().is_empty() {
        None
    } else {
        let key = aic_ledger::Keypair::from_wallet_file(&config.jobs.system_key)
            .map_err(|e| StartError::Ledger(format!("jobs.system_key {e}")))?;
        Some(Arc::new(job::SystemSigner::new(key)))
    };
    let amount = |text: &str| {
        text.parse::<aic_ledger::Amount>()
            .map_err(|e| StartError::Ledger(e.to_string()))
    };
    let pricing = payroll::Pricing {
        compute_per_million_rows: amount(&config.jobs.compute_per_million_rows)?,
        storage_per_gb: amount(&config.jobs.storage_per_gb)?,
        platform_fee_percent: config.jobs.platform_fee_percent,
    };
    let payroll = system.clone().map(|system| {
        coin_payroll::CoinPayroll::new(ledger.clone(), system, pricing, metrics.clone()).start()
    });
    let jobs = job::JobContext {
        me: identity.me.node_id,
        arbiter: actix::Arbiter::current(),
        payroll,
        registry: registry_addr.clone(),
        allocator,
        rater,
        board: job::JobBoard::new(metrics.clone()).start(),
        ledger: ledger.clone(),
        endpoint: endpoint.clone(),
        ticket_key: ed25519_dalek::SigningKey::from_bytes(&node_key.secret_bytes()),
        system,
        pricing,
        slash: amount(&config.jobs.slash_aic)?,
        reward_per_million_rows: amount(&config.jobs.reward_per_million_rows)?,
        steps_per_epoch: config.jobs.steps_per_epoch,
        tickets,
        metrics: metrics.clone(),
        task_timeout: Duration::from_millis(config.jobs.task_timeout_ms),
        drill: config.jobs.drill.clone(),
    };

    let mut handle = ServiceHandle::new(name, quic_addr, metrics_addr, shutdown.clone());
    // A replica whose Raft core stopped (its log could not be written durably) takes the
    // process down with it, so the supervisor restarts it on the disk as it is then.
    let failure = handle.failure();
    let (watched, watching) = (ledger.clone(), shutdown.clone());
    handle.spawn(async move {
        tokio::select! {
            biased;
            () = watching.cancelled() => {}
            reason = watched.stopped() => {
                tracing::error!(%reason, "the ledger replica stopped");
                failure.report(format!("the ledger replica stopped: {reason}"));
            }
        }
    });
    if let Some(system) = jobs.system.clone() {
        handle.spawn(reward_epochs::run(
            ledger.clone(),
            system,
            config.jobs.reward_epoch_blocks,
            Duration::from_millis(config.ledger.block_interval_ms),
            shutdown.clone(),
        ));
        handle.spawn(resumer::run(
            jobs.clone(),
            Duration::from_millis(config.jobs.resume_after_ms),
            shutdown.clone(),
        ));
    }
    // Twice per heartbeat interval: a lost node is acted on soon after it crosses the threshold.
    let re_replicator = re_replicator::ReReplicator {
        registry: registry_addr.clone(),
        ledger: ledger.clone(),
        endpoint: endpoint.clone(),
        rules: re_replication::LossRules {
            lost_after_ms: config.membership.storage_lost_after_ms,
        },
        check_every: (Duration::from_millis(config.membership.heartbeat_interval_ms) / 2)
            .max(Duration::from_millis(50)),
        metrics: re_replication_metrics,
    };
    handle.spawn(re_replicator.run(shutdown.clone()));
    let grace = Duration::from_secs(config.jobs.tensor_sweep_grace_secs);
    let tensor_sweeper = tensor_sweeper::TensorSweeper {
        ledger: ledger.clone(),
        registry: registry_addr.clone(),
        endpoint: endpoint.clone(),
        grace,
        // A few sweeps per grace period, not more than one a minute.
        every: (grace / 4).max(Duration::from_secs(60)),
    };
    handle.spawn(tensor_sweeper.run(shutdown.clone()));
    let api = Arc::new(api::SchedulerApi {
        registry: registry_addr.clone(),
        ledger: ledger.clone(),
        jobs,
    });
    handle.spawn(rpc::serve(
        endpoint,
        api,
        metrics.transport.clone(),
        shutdown.clone(),
    ));
    let metrics_shutdown = shutdown.clone();
    let ledger_for_readiness = ledger.clone();
    handle.spawn(async move {
        let replica = ledger_for_readiness;
        let ready: metrics_http::Readiness =
            Arc::new(move || replica.readiness().map_err(|why| why.to_string()));
        if let Err(error) =
            metrics_http::serve_with_readiness(bound.metrics, registry, ready, metrics_shutdown).await
        {
            warn!(%error, "metrics endpoint failed");
        }
    });
    handle.spawn(async move {
        shutdown.cancelled().await;
        let _ = registry_addr.send(registry::Stop).await;
        let _ = generator.send(block_generator::StopGenerator).await;
        ledger.shutdown().await;
    });
    Ok(handle)
}
