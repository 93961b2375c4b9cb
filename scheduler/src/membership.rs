//! Membership decisions without I/O: who is registered, who is up, whom each node should probe.
//!
//! The `Registry` actor owns one [`Membership`] and feeds it events with the current time; tests
//! drive it directly with chosen instants.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aic_protocol::certs::PeerIdentity;
use aic_protocol::messages::{
    DatasetHolding, Heartbeat, NodeState, NodeStatus, ProbeTarget, Registration, RttSample,
};
use aic_protocol::{ErrorCode, NodeId, Role, RpcError};

/// Limits on what a node may tell us, so one node cannot grow the registry without bound.
const MAX_NAME_LEN: usize = 128;
const MAX_ADDR_LEN: usize = 256;
const MAX_RTT_SAMPLES: usize = 64;
const MAX_HOLDINGS: usize = 4096;

/// Tunables of membership.
#[derive(Clone, Debug)]
pub struct MembershipRules {
    pub heartbeat_interval: Duration,
    /// A node silent for this many intervals is marked down.
    pub missed_heartbeats_before_down: u32,
    /// How many peers each node is asked to probe.
    pub probe_targets_per_node: usize,
}

impl MembershipRules {
    fn down_after(&self) -> Duration {
        self.heartbeat_interval * self.missed_heartbeats_before_down
    }
}

/// A change worth logging and counting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipEvent {
    Registered {
        node: NodeId,
        role: Role,
        rejoined: bool,
    },
    MarkedDown {
        node: NodeId,
        role: Role,
    },
    BackUp {
        node: NodeId,
        role: Role,
    },
}

#[derive(Clone, Debug)]
struct Member {
    role: Role,
    registration: Registration,
    state: NodeState,
    last_seen: Instant,
    times_marked_down: u64,
    rtts: Vec<RttSample>,
    holdings: Vec<DatasetHolding>,
    /// Where this node's next round of probe targets starts, so it covers all peers over time.
    probe_cursor: usize,
}

/// The registered nodes and the rules that mark them up and down.
#[derive(Debug)]
pub struct Membership {
    rules: MembershipRules,
    /// The scheduler's own row in listings.
    scheduler: NodeStatus,
    members: BTreeMap<NodeId, Member>,
}

impl Membership {
    pub fn new(rules: MembershipRules, scheduler: NodeStatus) -> Self {
        Membership {
            rules,
            scheduler,
            members: BTreeMap::new(),
        }
    }

    pub fn rules(&self) -> &MembershipRules {
        &self.rules
    }

    /// A node (re-)registers. Its id and role come from its certificate; the registration's role
    /// must agree.
    pub fn register(
        &mut self,
        peer: &PeerIdentity,
        registration: Registration,
        now: Instant,
    ) -> Result<(Vec<ProbeTarget>, Vec<MembershipEvent>), RpcError> {
        if registration.role != peer.role {
            return Err(RpcError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "registration claims role {} but the certificate says {}",
                    registration.role, peer.role
                ),
            ));
        }
        check_len("name", &registration.name, MAX_NAME_LEN)?;
        check_len("quic_addr", &registration.quic_addr, MAX_ADDR_LEN)?;
        check_len("metrics_addr", &registration.metrics_addr, MAX_ADDR_LEN)?;
        check_len("version", &registration.version, MAX_NAME_LEN)?;
        check_len("capacity.device", &registration.capacity.device, MAX_NAME_LEN)?;
        check_len("payout_address", &registration.payout_address, 64)?;
        if !registration.quic_addr.contains(':') {
            return Err(RpcError::new(
                ErrorCode::InvalidArgument,
                "quic_addr must be host:port",
            ));
        }

        let node = peer.node_id;
        let rejoined = self.members.contains_key(&node);
        let previous = self.members.remove(&node);
        self.members.insert(
            node,
            Member {
                role: peer.role,
                registration,
                state: NodeState::Up,
                last_seen: now,
                times_marked_down: previous.as_ref().map_or(0, |m| m.times_marked_down),
                rtts: Vec::new(),
                holdings: previous.as_ref().map(|m| m.holdings.clone()).unwrap_or_default(),
                probe_cursor: 0,
            },
        );
        let mut events = vec![MembershipEvent::Registered {
            node,
            role: peer.role,
            rejoined,
        }];
        if previous.is_some_and(|m| m.state == NodeState::Down) {
            events.push(MembershipEvent::BackUp {
                node,
                role: peer.role,
            });
        }
        Ok((self.probe_targets(node), events))
    }

    /// A registered node's heartbeat: it is alive now, and these are its latest RTTs.
    pub fn heartbeat(
        &mut self,
        node: NodeId,
        heartbeat: Heartbeat,
        now: Instant,
    ) -> Result<(Vec<ProbeTarget>, Vec<MembershipEvent>), RpcError> {
        if heartbeat.rtts.len() > MAX_RTT_SAMPLES {
            return Err(RpcError::new(
                ErrorCode::InvalidArgument,
                format!("at most {MAX_RTT_SAMPLES} RTT samples per heartbeat"),
            ));
        }
        if heartbeat.holdings.len() > MAX_HOLDINGS
            || heartbeat.holdings.iter().any(|h| h.dataset.len() > MAX_NAME_LEN)
        {
            return Err(RpcError::new(
                ErrorCode::InvalidArgument,
                format!("at most {MAX_HOLDINGS} dataset holdings per heartbeat, ids of at most {MAX_NAME_LEN} bytes"),
            ));
        }
        let member = self.members.get_mut(&node).ok_or_else(|| {
            RpcError::new(
                ErrorCode::UnknownNode,
                format!("node {} is not registered", node.short()),
            )
        })?;
        member.last_seen = now;
        member.rtts = heartbeat.rtts;
        member.rtts.retain(|sample| sample.peer != node);
        member.holdings = heartbeat.holdings;
        let mut events = Vec::new();
        if member.state == NodeState::Down {
            member.state = NodeState::Up;
            events.push(MembershipEvent::BackUp {
                node,
                role: member.role,
            });
        }
        Ok((self.probe_targets(node), events))
    }

    /// Marks down every up node silent for longer than the rules allow.
    pub fn sweep(&mut self, now: Instant) -> Vec<MembershipEvent> {
        let down_after = self.rules.down_after();
        let mut events = Vec::new();
        for (node, member) in &mut self.members {
            if member.state == NodeState::Up && now.saturating_duration_since(member.last_seen) > down_after {
                member.state = NodeState::Down;
                member.times_marked_down = member.times_marked_down.saturating_add(1);
                events.push(MembershipEvent::MarkedDown {
                    node: *node,
                    role: member.role,
                });
            }
        }
        events
    }

    /// Every node, the scheduler first, then by role and name.
    pub fn list(&self, now: Instant) -> Vec<NodeStatus> {
        let mut rows: Vec<NodeStatus> = self
            .members
            .iter()
            .map(|(node, member)| NodeStatus {
                node_id: *node,
                name: member.registration.name.clone(),
                role: member.role,
                version: member.registration.version.clone(),
                quic_addr: member.registration.quic_addr.clone(),
                metrics_addr: member.registration.metrics_addr.clone(),
                state: member.state,
                last_heartbeat_ms_ago: Some(
                    u64::try_from(now.saturating_duration_since(member.last_seen).as_millis())
                        .unwrap_or(u64::MAX),
                ),
                times_marked_down: member.times_marked_down,
                capacity: member.registration.capacity.clone(),
                rtts: member.rtts.clone(),
                holdings: member.holdings.clone(),
                payout_address: member.registration.payout_address.clone(),
            })
            .collect();
        rows.sort_by(|a, b| (a.role, &a.name).cmp(&(b.role, &b.name)));
        rows.insert(0, self.scheduler.clone());
        rows
    }

    /// How many nodes are in each (role, state), for the node-state gauge.
    /// Shard copies that datasets ask for (replicas × shards, as their holders report it) less
    /// the healthy copies up storage nodes hold: 0 when every dataset is fully replicated.
    pub fn missing_shard_copies(&self) -> u64 {
        let mut wanted: BTreeMap<&str, u64> = BTreeMap::new();
        let mut healthy: BTreeMap<&str, u64> = BTreeMap::new();
        for member in self.members.values() {
            for holding in &member.holdings {
                let copies = u64::from(holding.replicas_wanted) * u64::from(holding.shards);
                let entry = wanted.entry(holding.dataset.as_str()).or_insert(0);
                *entry = (*entry).max(copies);
                if member.state == NodeState::Up {
                    *healthy.entry(holding.dataset.as_str()).or_insert(0) +=
                        u64::from(holding.healthy_shards.min(holding.shards));
                }
            }
        }
        wanted
            .iter()
            .map(|(dataset, copies)| copies.saturating_sub(healthy.get(dataset).copied().unwrap_or(0)))
            .sum()
    }

    pub fn counts(&self) -> BTreeMap<(Role, NodeState), usize> {
        let mut counts = BTreeMap::new();
        for member in self.members.values() {
            *counts.entry((member.role, member.state)).or_insert(0) += 1;
        }
        counts
    }

    /// Up to `probe_targets_per_node` other up nodes, rotating through all of them over calls.
    fn probe_targets(&mut self, node: NodeId) -> Vec<ProbeTarget> {
        let peers: Vec<ProbeTarget> = self
            .members
            .iter()
            .filter(|(id, m)| **id != node && m.state == NodeState::Up)
            .map(|(id, m)| ProbeTarget {
                node_id: *id,
                role: m.role,
                quic_addr: m.registration.quic_addr.clone(),
            })
            .collect();
        let wanted = self.rules.probe_targets_per_node.min(peers.len());
        let Some(member) = self.members.get_mut(&node) else {
            return Vec::new();
        };
        if peers.is_empty() {
            return Vec::new();
        }
        let start = member.probe_cursor % peers.len();
        member.probe_cursor = (start + 1) % peers.len();
        peers.iter().cycle().skip(start).take(wanted).cloned().collect()
    }
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), RpcError> {
    if value.len() > max {
        return Err(RpcError::new(
            ErrorCode::InvalidArgument,
            format!("{field} is {} bytes; at most {max}", value.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aic_protocol::messages::{Capacity, DatasetHolding};

    fn rules() -> MembershipRules {
        MembershipRules {
            heartbeat_interval: Duration::from_secs(1),
            missed_heartbeats_before_down: 3,
            probe_targets_per_node: 2,
        }
    }

    fn scheduler_row() -> NodeStatus {
        NodeStatus {
            node_id: NodeId::from_public_key(b"scheduler"),
            name: "scheduler".into(),
            role: Role::Scheduler,
            version: "test".into(),
            quic_addr: "127.0.0.1:7400".into(),
            metrics_addr: "127.0.0.1:9400".into(),
            state: NodeState::Up,
            last_heartbeat_ms_ago: None,
            times_marked_down: 0,
            capacity: Capacity::default(),
            rtts: Vec::new(),
            holdings: Vec::new(),
            payout_address: String::new(),
        }
    }

    fn peer(name: &str, role: Role) -> PeerIdentity {
        PeerIdentity {
            role,
            node_id: NodeId::from_public_key(name.as_bytes()),
            name: name.into(),
            public_key: [0; 32],
        }
    }

    fn registration(peer: &PeerIdentity, port: u16) -> Registration {
        Registration {
            role: peer.role,
            name: peer.name.clone(),
            version: "test".into(),
            quic_addr: format!("127.0.0.1:{port}"),
            metrics_addr: format!("127.0.0.1:{}", port + 1000),
            capacity: Capacity::default(),
            payout_address: String::new(),
        }
    }

    fn heartbeat() -> Heartbeat {
        Heartbeat {
            sequence: 1,
            rtts: Vec::new(),
            holdings: Vec::new(),
        }
    }

    #[test]
    fn missing_shard_copies_count_damaged_and_silent_replicas() {
        let t0 = Instant::now();
        let mut membership = Membership::new(rules(), scheduler_row());
        let holding = |healthy: u32| DatasetHolding {
            dataset: "digits".into(),
            healthy_shards: healthy,
            shards: 10,
            bytes: 1000,
            replicas_wanted: 2,
        };
        let (a, b) = (peer("a", Role::Storage), peer("b", Role::Storage));
        membership.register(&a, registration(&a, 1), t0).unwrap();
        membership.register(&b, registration(&b, 2), t0).unwrap();
        let report = |healthy: u32| Heartbeat {
            holdings: vec![holding(healthy)],
            ..heartbeat()
        };
        membership.heartbeat(a.node_id, report(10), t0).unwrap();
        assert_eq!(membership.missing_shard_copies(), 10, "b holds no copy yet");
        membership.heartbeat(b.node_id, report(10), t0).unwrap();
        assert_eq!(membership.missing_shard_copies(), 0);
        membership.heartbeat(b.node_id, report(7), t0).unwrap();
        assert_eq!(membership.missing_shard_copies(), 3, "three damaged shards on b");
        membership
            .heartbeat(a.node_id, report(10), t0 + Duration::from_secs(4))
            .unwrap();
        membership.sweep(t0 + Duration::from_secs(4));
        assert_eq!(
            membership.missing_shard_copies(),
            10,
            "b is down: its copies do not count"
        );
    }

    #[test]
    fn a_silent_node_is_marked_down_once_and_comes_back_with_a_heartbeat() {
        let t0 = Instant::now();
        let mut membership = Membership::new(rules(), scheduler_row());
        let a = peer("a", Role::Compute);
        membership.register(&a, registration(&a, 1), t0).unwrap();

        assert!(
            membership.sweep(t0 + Duration::from_secs(3)).is_empty(),
            "3 s is the limit, not past it"
        );
        let events = membership.sweep(t0 + Duration::from_millis(3001));
        assert_eq!(
            events,
            vec![MembershipEvent::MarkedDown {
                node: a.node_id,
                role: Role::Compute
            }]
        );
        assert!(
            membership.sweep(t0 + Duration::from_secs(10)).is_empty(),
            "down is reported once"
        );

        let (_, events) = membership
            .heartbeat(a.node_id, heartbeat(), t0 + Duration::from_secs(11))
            .unwrap();
        assert_eq!(
            events,
            vec![MembershipEvent::BackUp {
                node: a.node_id,
                role: Role::Compute
            }]
        );
        let row = &membership.list(t0 + Duration::from_secs(11))[1];
        assert_eq!((row.state, row.times_marked_down), (NodeState::Up, 1));
    }

    #[test]
    fn a_heartbeat_from_an_unregistered_node_asks_it_to_register() {
        let mut membership = Membership::new(rules(), scheduler_row());
        let err = membership
            .heartbeat(NodeId::from_public_key(b"stranger"), heartbeat(), Instant::now())
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownNode);
    }

    #[test]
    fn a_registration_must_claim_the_certificate_role() {
        let mut membership = Membership::new(rules(), scheduler_row());
        let a = peer("a", Role::Compute);
        let mut claim = registration(&a, 1);
        claim.role = Role::Storage;
        let err = membership.register(&a, claim, Instant::now()).unwrap_err();
        assert_eq!(err.code, ErrorCode::PermissionDenied);
        assert_eq!(membership.list(Instant::now()).len(), 1, "nothing was registered");
    }

    #[test]
    fn oversized_fields_are_refused() {
        let mut membership = Membership::new(rules(), scheduler_row());
        let a = peer("a", Role::Compute);
        let mut claim = registration(&a, 1);
        claim.name = "x".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            membership.register(&a, claim, Instant::now()).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        membership
            .register(&a, registration(&a, 1), Instant::now())
            .unwrap();
        let flood = Heartbeat {
            sequence: 2,
            rtts: vec![
                RttSample {
                    peer: a.node_id,
                    rtt_micros: 1
                };
                MAX_RTT_SAMPLES + 1
            ],
            holdings: Vec::new(),
        };
        assert_eq!(
            membership
                .heartbeat(a.node_id, flood, Instant::now())
                .unwrap_err()
                .code,
            ErrorCode::InvalidArgument
        );
    }

    #[test]
    fn probe_targets_exclude_the_node_and_down_peers_and_rotate() {
        let t0 = Instant::now();
        let mut membership = Membership::new(rules(), scheduler_row());
        let nodes: Vec<PeerIdentity> = (0..4).map(|i| peer(&format!("n{i}"), Role::Storage)).collect();
        for (i, node) in nodes.iter().enumerate() {
            membership
                .register(node, registration(node, i as u16 + 1), t0)
                .unwrap();
        }
        let me = nodes[0].node_id;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..3 {
            let (targets, _) = membership.heartbeat(me, heartbeat(), t0).unwrap();
            assert_eq!(targets.len(), 2);
            assert!(targets.iter().all(|t| t.node_id != me));
            seen.extend(targets.iter().map(|t| t.node_id));
        }
        assert_eq!(seen.len(), 3, "over a few rounds every peer gets probed");

        // Let everyone but `me` go silent: no targets remain.
        let later = t0 + Duration::from_secs(5);
        membership.heartbeat(me, heartbeat(), later).unwrap();
        membership.sweep(later);
        let (targets, _) = membership.heartbeat(me, heartbeat(), later).unwrap();
        assert!(targets.is_empty());
    }

    #[test]
    fn counts_follow_states() {
        let t0 = Instant::now();
        let mut membership = Membership::new(rules(), scheduler_row());
        let a = peer("a", Role::Compute);
        let b = peer("b", Role::Storage);
        membership.register(&a, registration(&a, 1), t0).unwrap();
        membership.register(&b, registration(&b, 2), t0).unwrap();
        membership
            .heartbeat(b.node_id, heartbeat(), t0 + Duration::from_secs(2))
            .unwrap();
        membership.sweep(t0 + Duration::from_millis(3500));
        let counts = membership.counts();
        assert_eq!(counts.get(&(Role::Compute, NodeState::Down)), Some(&1));
        assert_eq!(counts.get(&(Role::Storage, NodeState::Up)), Some(&1));
    }
}
