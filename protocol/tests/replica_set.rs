//! A node follows the ledger's scheduler replica set: seeded with one replica, it registers with
//! a replica the set adds and lets go of one the set drops, without a restart; an older set
//! (from a replica that was removed and does not know it yet) does not bring a replica back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aic_protocol::certs::{CertificateAuthority, Identity, PeerIdentity, Validity};
use aic_protocol::messages::{Capacity, NodeRequest, NodeResponse, SchedulerReplicas};
use aic_protocol::node_agent::{follow, run_agent, AgentMetrics, AgentSettings};
use aic_protocol::transport::{self, TransportTuning};
use aic_protocol::{Role, RpcError};
use tokio_util::sync::CancellationToken;

/// A scheduler that answers every node with the replica set the test gives it, counting what
/// it receives.
struct FakeScheduler {
    replicas: Mutex<SchedulerReplicas>,
    registrations: AtomicU64,
    heartbeats: AtomicU64,
    /// Woken at every registration or heartbeat this scheduler answers.
    heard: Arc<tokio::sync::Notify>,
}

impl aic_protocol::rpc::RpcHandler for FakeScheduler {
    async fn node(&self, peer: &PeerIdentity, request: NodeRequest) -> Result<NodeResponse, RpcError> {
        let scheduler_replicas = self.replicas.lock().unwrap().clone();
        match request {
            NodeRequest::Register(_) => {
                self.registrations.fetch_add(1, Ordering::SeqCst);
                self.heard.notify_waiters();
                Ok(NodeResponse::Registered {
                    node_id: peer.node_id,
                    heartbeat_interval_ms: 20,
                    probe_targets: Vec::new(),
                    scheduler_replicas,
                })
            }
            NodeRequest::Heartbeat(_) => {
                self.heartbeats.fetch_add(1, Ordering::SeqCst);
                self.heard.notify_waiters();
                Ok(NodeResponse::HeartbeatAccepted {
                    probe_targets: Vec::new(),
                    scheduler_replicas,
                })
            }
            NodeRequest::AttestImport(_) => Err(RpcError::new(aic_protocol::ErrorCode::Unsupported, "no")),
        }
    }
}

fn endpoint(ca: &CertificateAuthority, role: Role, name: &str) -> quinn::Endpoint {
    let identity =
        Identity::from_issued(ca, &ca.issue(role, name, &[], Validity::default()).unwrap()).unwrap();
    let tuning = TransportTuning::default();
    transport::endpoint(
        transport::bind_udp("127.0.0.1:0".parse().unwrap(), &tuning).unwrap(),
        &identity,
        &tuning,
    )
    .unwrap()
}

fn start_scheduler(
    ca: &CertificateAuthority,
    name: &str,
    heard: &Arc<tokio::sync::Notify>,
    shutdown: &CancellationToken,
) -> (String, Arc<FakeScheduler>) {
    let endpoint = endpoint(ca, Role::Scheduler, name);
    let addr = endpoint.local_addr().unwrap().to_string();
    let handler = Arc::new(FakeScheduler {
        replicas: Mutex::new(SchedulerReplicas::default()),
        registrations: AtomicU64::new(0),
        heartbeats: AtomicU64::new(0),
        heard: heard.clone(),
    });
    let metrics =
        aic_protocol::metrics::TransportMetrics::register(&prometheus::Registry::new(), "scheduler").unwrap();
    tokio::spawn(aic_protocol::rpc::serve(
        endpoint,
        handler.clone(),
        metrics,
        shutdown.clone(),
    ));
    (addr, handler)
}

/// Waits until `check` holds, looking again each time a scheduler hears from the node (bounded:
/// 10 s in all).
async fn until(heard: &tokio::sync::Notify, what: &str, check: impl Fn() -> bool) {
    let waiting = async {
        loop {
            let next = heard.notified();
            if check() {
                return;
            }
            next.await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

fn set(index: u64, addrs: &[&String]) -> SchedulerReplicas {
    SchedulerReplicas {
        membership_index: index,
        addrs: addrs.iter().map(|a| a.to_string()).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_follows_the_replica_set_the_ledger_names() {
    aic_protocol::install_crypto_provider();
    let ca = CertificateAuthority::generate("replica-set").unwrap();
    let shutdown = CancellationToken::new();
    let heard = Arc::new(tokio::sync::Notify::new());
    let (a, scheduler_a) = start_scheduler(&ca, "sched-a", &heard, &shutdown);
    let (b, scheduler_b) = start_scheduler(&ca, "sched-b", &heard, &shutdown);
    *scheduler_a.replicas.lock().unwrap() = set(5, &[&a]);

    let registry = prometheus::Registry::new();
    let metrics = AgentMetrics::register(&registry, "storage").unwrap();
    let settings = AgentSettings {
        role: Role::Storage,
        name: "storage-1".into(),
        scheduler_addrs: vec![a.clone()],
        quic_addr: "127.0.0.1:1".into(),
        metrics_addr: "127.0.0.1:2".into(),
        capacity: Capacity::default(),
        on_registered: None,
        holdings: None,
        payout_address: String::new(),
    };
    tokio::spawn(run_agent(
        endpoint(&ca, Role::Storage, "storage-1"),
        settings,
        metrics.clone(),
        shutdown.clone(),
    ));
    until(&heard, "registered with the seed", || {
        scheduler_a.heartbeats.load(Ordering::SeqCst) > 0
    })
    .await;
    assert_eq!(scheduler_b.registrations.load(Ordering::SeqCst), 0);

    // B joins the cluster: the seed's answers name it, and the node registers with it.
    *scheduler_a.replicas.lock().unwrap() = set(7, &[&a, &b]);
    *scheduler_b.replicas.lock().unwrap() = set(7, &[&a, &b]);
    until(&heard, "registered with the added replica", || {
        scheduler_b.heartbeats.load(Ordering::SeqCst) > 0
    })
    .await;
    until(&heard, "two schedulers connected", || {
        metrics.scheduler_connected.get() == 2
    })
    .await;

    // A is removed; it still answers with its own older set (index 7), B with the new one.
    *scheduler_b.replicas.lock().unwrap() = set(9, &[&b]);
    until(&heard, "the removed replica let go", || {
        metrics.scheduler_connected.get() == 1
    })
    .await;
    let a_heartbeats = scheduler_a.heartbeats.load(Ordering::SeqCst);
    let b_heartbeats = scheduler_b.heartbeats.load(Ordering::SeqCst);
    until(&heard, "more heartbeats to the remaining replica", || {
        scheduler_b.heartbeats.load(Ordering::SeqCst) >= b_heartbeats + 5
    })
    .await;
    assert_eq!(
        scheduler_a.heartbeats.load(Ordering::SeqCst),
        a_heartbeats,
        "none to the removed one"
    );
    assert_eq!(metrics.scheduler_connected.get(), 1);
    shutdown.cancel();
}

#[test]
fn an_older_or_empty_set_is_not_followed() {
    let (a, b) = ("a:1".to_string(), "b:1".to_string());
    let mut known = SchedulerReplicas::default();
    assert!(follow(&mut known, set(3, &[&b, &a, &a])));
    assert_eq!(known.addrs, [a.clone(), b.clone()]);
    assert!(!follow(&mut known, set(2, &[&a])), "older");
    assert!(
        !follow(&mut known, set(4, &[])),
        "empty: the replica knows no membership"
    );
    assert!(!follow(&mut known, set(4, &[&a, &b])), "the same set");
    assert_eq!(known.membership_index, 4);
    assert!(follow(&mut known, set(6, &[&b])));
    assert_eq!(known.addrs, [b]);
}
