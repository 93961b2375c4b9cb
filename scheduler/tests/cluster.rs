//! A scheduler and three nodes in one process on loopback QUIC: they register and measure RTTs,
//! a killed node is marked down, and it is marked up again when it returns.

use std::path::Path;
use std::time::{Duration, Instant};

use aic_protocol::certs::{CertificateAuthority, Identity, IdentityFiles, Validity};
use aic_protocol::messages::{ClientRequest, ClientResponse, NodeState, NodeStatus};
use aic_protocol::node_agent::SchedulerLink;
use aic_protocol::rpc::RpcClient;
use aic_protocol::service::{BoundSockets, EndpointSettings, ServiceHandle};
use aic_protocol::transport::{self, TransportTuning};
use aic_protocol::Role;
use aic_scheduler::SchedulerConfig;
use tokio_util::sync::CancellationToken;

/// A node is marked down after three missed heartbeats. At 100 ms a node that was merely slow
/// under a loaded CI box was once marked down too (the metric counted two downs); 250 ms keeps
/// the test quick and the window (750 ms) clear of scheduling hiccups.
const HEARTBEAT_MS: u64 = 250;

fn endpoint_settings(files: IdentityFiles) -> EndpointSettings {
    EndpointSettings {
        tls: files,
        ..EndpointSettings::with_ports(0, 0)
    }
}

fn issue(ca: &CertificateAuthority, dir: &Path, role: Role, name: &str) -> IdentityFiles {
    ca.issue(role, name, &[], Validity::default())
        .unwrap()
        .save(dir, name)
        .unwrap()
}

fn start_compute(files: &IdentityFiles, scheduler: &str) -> (ServiceHandle, CancellationToken) {
    let shutdown = CancellationToken::new();
    let config = aic_compute_node::ComputeConfig {
        endpoint: endpoint_settings(files.clone()),
        scheduler: SchedulerLink {
            addr: scheduler.to_string(),
            replicas: Vec::new(),
        },
        compute: aic_compute_node::config::ComputeSettings {
            backend: aic_compute_node::config::BackendSetting::Cpu,
            ..Default::default()
        },
    };
    let handle = aic_compute_node::start(
        config,
        BoundSockets::loopback_ephemeral().unwrap(),
        shutdown.clone(),
    )
    .unwrap();
    (handle, shutdown)
}

async fn list(client: &RpcClient) -> Vec<NodeStatus> {
    match client.call(&ClientRequest::ListNodes).await.unwrap() {
        ClientResponse::Nodes(nodes) => nodes,
        other => panic!("unexpected answer {other:?}"),
    }
}

/// Polls the node list until `condition` holds; fails with the last list after 20 s.
async fn wait_until(
    client: &RpcClient,
    what: &str,
    condition: impl Fn(&[NodeStatus]) -> bool,
) -> Vec<NodeStatus> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    loop {
        poll.tick().await;
        let nodes = list(client).await;
        if condition(&nodes) {
            return nodes;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}; nodes: {nodes:#?}"
        );
    }
}

fn by_name<'a>(nodes: &'a [NodeStatus], name: &str) -> Option<&'a NodeStatus> {
    nodes.iter().find(|n| n.name == name)
}

#[test]
fn nodes_register_are_marked_down_when_killed_and_up_when_back() {
    aic_protocol::install_crypto_provider();
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    });
    system.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("cluster-test").unwrap();
        ca.save(dir.path()).unwrap();

        let mut config = SchedulerConfig {
            endpoint: endpoint_settings(issue(&ca, dir.path(), Role::Scheduler, "scheduler")),
            ..Default::default()
        };
        config.membership.heartbeat_interval_ms = HEARTBEAT_MS;
        config.membership.missed_heartbeats_before_down = 3;
        let (genesis, _) = aic_ledger::testkit::test_genesis("cluster-test");
        config.ledger.genesis = dir.path().join("genesis.toml");
        genesis.save(&config.ledger.genesis).unwrap();
        config.ledger.data_dir = dir.path().join("ledger");
        config.ledger.bootstrap = true;
        config.ledger.block_interval_ms = 200;
        let scheduler_shutdown = CancellationToken::new();
        let scheduler = aic_scheduler::start(
            config,
            BoundSockets::loopback_ephemeral().unwrap(),
            scheduler_shutdown.clone(),
        )
        .await
        .unwrap();
        let scheduler_addr = scheduler.quic_addr.to_string();

        let storage_shutdown = CancellationToken::new();
        let storage = aic_storage_node::start(
            aic_storage_node::StorageConfig {
                endpoint: endpoint_settings(issue(&ca, dir.path(), Role::Storage, "storage-1")),
                scheduler: SchedulerLink {
                    addr: scheduler_addr.clone(),
                    replicas: Vec::new(),
                },
                ..Default::default()
            },
            BoundSockets::loopback_ephemeral().unwrap(),
            storage_shutdown.clone(),
        )
        .unwrap();
        let compute_1 = issue(&ca, dir.path(), Role::Compute, "compute-1");
        let compute_2 = issue(&ca, dir.path(), Role::Compute, "compute-2");
        let (first, first_shutdown) = start_compute(&compute_1, &scheduler_addr);
        let (victim, victim_shutdown) = start_compute(&compute_2, &scheduler_addr);

        let client_identity = Identity::from_issued(
            &ca,
            &ca.issue(Role::Client, "operator", &[], Validity::default())
                .unwrap(),
        )
        .unwrap();
        let tuning = TransportTuning::default();
        let endpoint = transport::endpoint(
            transport::bind_udp("127.0.0.1:0".parse().unwrap(), &tuning).unwrap(),
            &client_identity,
            &tuning,
        )
        .unwrap();
        let client = RpcClient::connect(&endpoint, &scheduler_addr, Role::Scheduler)
            .await
            .unwrap();

        // All three register, and each reports RTTs to its peers.
        let nodes = wait_until(&client, "three nodes are up with RTTs", |nodes| {
            let members: Vec<_> = nodes.iter().filter(|n| n.role != Role::Scheduler).collect();
            members.len() == 3
                && members
                    .iter()
                    .all(|n| n.state == NodeState::Up && n.rtts.len() == 2)
        })
        .await;
        assert_eq!(nodes[0].role, Role::Scheduler, "the scheduler lists itself first");
        let victim_before = by_name(&nodes, "compute-2").unwrap().clone();
        assert_eq!(victim_before.quic_addr, victim.quic_addr.to_string());
        let ids: Vec<_> = nodes.iter().map(|n| n.node_id).collect();
        for node in nodes.iter().filter(|n| n.role != Role::Scheduler) {
            assert!(node
                .rtts
                .iter()
                .all(|rtt| ids.contains(&rtt.peer) && rtt.peer != node.node_id));
            assert!(node.rtts.iter().all(|rtt| rtt.rtt_micros > 0));
        }

        // Kill one: it is marked down, the others stay up.
        victim_shutdown.cancel();
        victim.stopped().await;
        let nodes = wait_until(&client, "compute-2 is marked down", |nodes| {
            by_name(nodes, "compute-2").is_some_and(|n| n.state == NodeState::Down)
        })
        .await;
        let down = by_name(&nodes, "compute-2").unwrap();
        assert_eq!(down.times_marked_down, 1);
        assert!(down.last_heartbeat_ms_ago.unwrap() >= 3 * HEARTBEAT_MS);
        for name in ["storage-1", "compute-1"] {
            assert_eq!(by_name(&nodes, name).unwrap().state, NodeState::Up, "{name}");
        }
        // Peers stop being asked to probe the dead node, so their reports drop it.
        wait_until(&client, "no node reports an RTT to the dead one", |nodes| {
            nodes
                .iter()
                .all(|n| n.rtts.iter().all(|rtt| rtt.peer != down.node_id))
        })
        .await;

        // Bring it back with the same certificate on a new port: same id, up again.
        let (returned, returned_shutdown) = start_compute(&compute_2, &scheduler_addr);
        let nodes = wait_until(&client, "compute-2 is back up", |nodes| {
            by_name(nodes, "compute-2").is_some_and(|n| n.state == NodeState::Up)
        })
        .await;
        let back = by_name(&nodes, "compute-2").unwrap();
        assert_eq!(back.node_id, victim_before.node_id);
        assert_eq!(back.quic_addr, returned.quic_addr.to_string());
        assert_eq!(back.times_marked_down, 1);
        assert_eq!(nodes.len(), 4, "a returning node is not listed twice");

        let metrics = aic_protocol::metrics_http::scrape(scheduler.metrics_addr)
            .await
            .unwrap();
        for line in [
            "aic_scheduler_nodes{role=\"compute\",state=\"up\"} 2",
            "aic_scheduler_nodes{role=\"storage\",state=\"up\"} 1",
            "aic_scheduler_node_state_changes_total{role=\"compute\",state=\"down\"} 1",
        ] {
            assert!(metrics.contains(line), "missing {line:?} in:\n{metrics}");
        }
        assert!(metrics.contains("aic_scheduler_heartbeats_received_total{result=\"ok\"}"));
        // The one-replica ledger leads itself and its block generator has been sealing blocks
        // signed with the scheduler's certificate key.
        let height: u64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix("aic_ledger_block_height "))
            .expect("block height exported")
            .trim()
            .parse()
            .unwrap();
        assert!(height >= 1, "blocks are sealed: height {height}");
        assert!(metrics.contains("aic_ledger_is_leader 1"));

        for (handle, token) in [
            (returned, returned_shutdown),
            (first, first_shutdown),
            (storage, storage_shutdown),
            (scheduler, scheduler_shutdown),
        ] {
            token.cancel();
            handle.stopped().await;
        }
    });
}
