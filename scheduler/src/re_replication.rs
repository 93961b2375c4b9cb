//! Re-replication decisions without I/O: which storage nodes are lost for good, which datasets
//! are short of their replica count, and for each such dataset which holder copies it to which
//! node. The `re_replicator` task feeds it the registry's node table on the Raft leader and
//! carries out the copies it names; tests drive it with chosen tables.
//!
//! A dataset counts its copies as the storage nodes report them in heartbeats: whole on an up
//! node; or not yet whole but expected back (an up node whose scrubber repairs it, a node down
//! for less than the lost-for-good threshold, a copy already decided). It is under-replicated
//! while fewer up nodes than `replicas_wanted` report it whole, and copied while even the copies
//! expected back fall short. A target is an up storage node that neither reports nor is already
//! getting the dataset, with room for it when its capacity is known, the roomiest first; the
//! source is the whole holder nearest to it (measured RTT), so the bytes cross the shortest link.

use std::collections::{BTreeMap, BTreeSet};

use aic_protocol::messages::{NodeState, NodeStatus};
use aic_protocol::{NodeId, Role};

/// When a storage node counts as lost for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LossRules {
    /// Silent (and marked down) at least this long.
    pub lost_after_ms: u64,
}

/// One copy to make: `source` (up, holding `dataset` whole) copies it to `target`, and drops the
/// `lost` holders from the dataset's holder set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    pub dataset: String,
    pub source: NodeId,
    pub source_addr: String,
    pub target: NodeId,
    pub target_addr: String,
    pub lost: Vec<NodeId>,
}

/// What the node table says now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assessment {
    /// Storage nodes lost for good.
    pub lost: Vec<NodeId>,
    /// Datasets fewer up nodes hold whole than they want.
    pub under_replicated: Vec<String>,
    /// Copies to start now.
    pub copies: Vec<Copy>,
}

/// What the table says about one dataset.
#[derive(Default)]
struct Holding<'n> {
    wanted: u32,
    bytes: u64,
    whole: Vec<&'n NodeStatus>,
    /// Copies not whole now but expected back without a new copy.
    recovering: u32,
    lost: Vec<NodeId>,
    /// Every node reporting the dataset, in any state.
    reporting: BTreeSet<NodeId>,
}

/// Assesses the node table. `pending` names, per dataset, the targets of copies already decided
/// (under way, or done and not yet in a heartbeat); `avoid` the (dataset, target) pairs whose
/// copy failed lately.
pub fn assess(
    nodes: &[NodeStatus],
    rules: LossRules,
    pending: &BTreeMap<String, BTreeSet<NodeId>>,
    avoid: &BTreeSet<(String, NodeId)>,
) -> Assessment {
    let storage: Vec<&NodeStatus> = nodes.iter().filter(|n| n.role == Role::Storage).collect();
    let is_lost = |n: &NodeStatus| {
        n.state == NodeState::Down
            && n.last_heartbeat_ms_ago
                .is_some_and(|ms| ms >= rules.lost_after_ms)
    };
    let mut datasets: BTreeMap<&str, Holding> = BTreeMap::new();
    for node in &storage {
        for held in &node.holdings {
            let entry = datasets.entry(held.dataset.as_str()).or_default();
            entry.wanted = entry.wanted.max(held.replicas_wanted);
            entry.bytes = entry.bytes.max(held.bytes);
            entry.reporting.insert(node.node_id);
            let up = node.state == NodeState::Up;
            if up && held.shards > 0 && held.healthy_shards >= held.shards {
                entry.whole.push(node);
            } else if up || !is_lost(node) {
                entry.recovering = entry.recovering.saturating_add(1);
            } else {
                entry.lost.push(node.node_id);
            }
        }
    }
    let mut room: BTreeMap<NodeId, Option<u64>> =
        storage.iter().map(|n| (n.node_id, free_bytes(n))).collect();
    let mut assessment = Assessment {
        lost: storage.iter().filter(|n| is_lost(n)).map(|n| n.node_id).collect(),
        ..Assessment::default()
    };
    let none = BTreeSet::new();
    for (dataset, holding) in &datasets {
        let whole = u32::try_from(holding.whole.len()).unwrap_or(u32::MAX);
        if whole < holding.wanted {
            assessment.under_replicated.push(dataset.to_string());
        }
        let decided = pending.get(*dataset).unwrap_or(&none);
        let coming = decided.iter().filter(|t| !holding.reporting.contains(t)).count();
        let expected = whole
            .saturating_add(holding.recovering)
            .saturating_add(u32::try_from(coming).unwrap_or(u32::MAX));
        let short = holding.wanted.saturating_sub(expected);
        if short == 0 || holding.whole.is_empty() {
            // Nothing to do, or nothing whole to copy from (a scrub may yet repair a copy).
            continue;
        }
        let mut targets: Vec<&NodeStatus> = storage
            .iter()
            .copied()
            .filter(|n| {
                n.state == NodeState::Up
                    && !holding.reporting.contains(&n.node_id)
                    && !decided.contains(&n.node_id)
                    && !avoid.contains(&(dataset.to_string(), n.node_id))
                    && room
                        .get(&n.node_id)
                        .copied()
                        .flatten()
                        .is_none_or(|free| free >= holding.bytes)
            })
            .collect();
        // The roomiest known first, then nodes whose room is unknown; ties by id.
        targets.sort_by_key(|n| {
            let free = room.get(&n.node_id).copied().flatten();
            (free.is_none(), std::cmp::Reverse(free.unwrap_or(0)), n.node_id)
        });
        for target in targets.into_iter().take(short as usize) {
            let source = nearest(&holding.whole, target);
            if let Some(Some(free)) = room.get_mut(&target.node_id) {
                *free = free.saturating_sub(holding.bytes);
            }
            assessment.copies.push(Copy {
                dataset: dataset.to_string(),
                source: source.node_id,
                source_addr: source.quic_addr.clone(),
                target: target.node_id,
                target_addr: target.quic_addr.clone(),
                lost: holding.lost.clone(),
            });
        }
    }
    assessment
}

/// Bytes a storage node offers less what it reports holding; `None` when it offers no figure.
fn free_bytes(node: &NodeStatus) -> Option<u64> {
    let offered = node.capacity.storage_bytes;
    if offered == 0 {
        return None;
    }
    let held = node
        .holdings
        .iter()
        .fold(0u64, |sum, h| sum.saturating_add(h.bytes));
    Some(offered.saturating_sub(held))
}

/// The whole holder with the lowest measured RTT to `target` (either side's measurement), the
/// lowest id when none was measured.
fn nearest<'n>(holders: &[&'n NodeStatus], target: &NodeStatus) -> &'n NodeStatus {
    let rtt = |holder: &NodeStatus| {
        let there = holder
            .rtts
            .iter()
            .find(|s| s.peer == target.node_id)
            .map(|s| s.rtt_micros);
        let back = target
            .rtts
            .iter()
            .find(|s| s.peer == holder.node_id)
            .map(|s| s.rtt_micros);
        there.into_iter().chain(back).min().unwrap_or(u64::MAX)
    };
    holders
        .iter()
        .copied()
        .min_by_key(|h| (rtt(h), h.node_id))
        .expect("called with at least one whole holder")
}

#[cfg(test)]
mod tests {
    use aic_protocol::messages::{Capacity, DatasetHolding, RttSample};

    use super::*;

    const RULES: LossRules = LossRules {
        lost_after_ms: 60_000,
    };
    const GB: u64 = 1_000_000_000;

    fn node(name: &str, state: NodeState, silent_ms: u64, held: &[(&str, u32)]) -> NodeStatus {
        NodeStatus {
            node_id: NodeId::from_public_key(name.as_bytes()),
            name: name.into(),
            role: Role::Storage,
            version: "test".into(),
            quic_addr: format!("{name}:7410"),
            metrics_addr: String::new(),
            state,
            last_heartbeat_ms_ago: Some(silent_ms),
            times_marked_down: 0,
            capacity: Capacity {
                storage_bytes: 10 * GB,
                ..Capacity::default()
            },
            rtts: Vec::new(),
            holdings: held
                .iter()
                .map(|(dataset, healthy)| DatasetHolding {
                    dataset: (*dataset).into(),
                    healthy_shards: *healthy,
                    shards: 4,
                    bytes: GB,
                    replicas_wanted: 2,
                })
                .collect(),
            payout_address: String::new(),
        }
    }

    fn id(name: &str) -> NodeId {
        NodeId::from_public_key(name.as_bytes())
    }

    fn run(nodes: &[NodeStatus]) -> Assessment {
        assess(nodes, RULES, &BTreeMap::new(), &BTreeSet::new())
    }

    #[test]
    fn a_lost_holders_dataset_is_copied_from_the_survivor_to_a_node_without_it() {
        let nodes = [
            node("a", NodeState::Up, 0, &[("d", 4)]),
            node("b", NodeState::Down, 60_000, &[("d", 4)]),
            node("c", NodeState::Up, 0, &[]),
        ];
        let assessment = run(&nodes);
        assert_eq!(assessment.lost, vec![id("b")]);
        assert_eq!(assessment.under_replicated, vec!["d".to_string()]);
        assert_eq!(
            assessment.copies,
            vec![Copy {
                dataset: "d".into(),
                source: id("a"),
                source_addr: "a:7410".into(),
                target: id("c"),
                target_addr: "c:7410".into(),
                lost: vec![id("b")],
            }]
        );
    }

    #[test]
    fn a_node_down_for_less_than_the_threshold_is_waited_for() {
        let nodes = [
            node("a", NodeState::Up, 0, &[("d", 4)]),
            node("b", NodeState::Down, 59_999, &[("d", 4)]),
            node("c", NodeState::Up, 0, &[]),
        ];
        let assessment = run(&nodes);
        assert!(assessment.lost.is_empty());
        assert_eq!(
            assessment.under_replicated,
            vec!["d".to_string()],
            "short now, but not copied"
        );
        assert!(assessment.copies.is_empty());
    }

    #[test]
    fn a_damaged_copy_on_an_up_node_is_left_to_its_scrubber() {
        let nodes = [
            node("a", NodeState::Up, 0, &[("d", 4)]),
            node("b", NodeState::Up, 0, &[("d", 3)]),
            node("c", NodeState::Up, 0, &[]),
        ];
        let assessment = run(&nodes);
        assert_eq!(assessment.under_replicated, vec!["d".to_string()]);
        assert!(assessment.copies.is_empty());
    }

    #[test]
    fn a_copy_decided_or_reported_is_not_made_twice() {
        let nodes = [
            node("a", NodeState::Up, 0, &[("d", 4)]),
            node("b", NodeState::Down, 90_000, &[("d", 4)]),
            node("c", NodeState::Up, 0, &[]),
            node("e", NodeState::Up, 0, &[]),
        ];
        let pending = BTreeMap::from([("d".to_string(), BTreeSet::from([id("c")]))]);
        let assessment = assess(&nodes, RULES, &pending, &BTreeSet::new());
        assert!(assessment.copies.is_empty(), "{assessment:?}");
        // Once c reports it whole, the dataset is whole again.
        let mut nodes = nodes.to_vec();
        nodes[2] = node("c", NodeState::Up, 0, &[("d", 4)]);
        let assessment = assess(&nodes, RULES, &pending, &BTreeSet::new());
        assert_eq!(assessment.lost, vec![id("b")]);
        assert!(assessment.under_replicated.is_empty());
        assert!(assessment.copies.is_empty());
    }

    #[test]
    fn targets_need_room_and_the_roomiest_comes_first_then_avoided_pairs_are_skipped() {
        let mut full = node("full", NodeState::Up, 0, &[("x", 4)]);
        full.capacity.storage_bytes = GB + GB / 2;
        let mut roomy = node("roomy", NodeState::Up, 0, &[]);
        roomy.capacity.storage_bytes = 100 * GB;
        let mut unknown = node("unknown", NodeState::Up, 0, &[]);
        unknown.capacity.storage_bytes = 0;
        let nodes = [
            node("a", NodeState::Up, 0, &[("d", 4)]),
            node("b", NodeState::Down, 90_000, &[("d", 4)]),
            full,
            unknown,
            roomy,
        ];
        let targets = |avoid: &BTreeSet<(String, NodeId)>| -> Vec<NodeId> {
            // (`full` holds "x" alone, which is short too.)
            assess(&nodes, RULES, &BTreeMap::new(), avoid)
                .copies
                .iter()
                .filter(|c| c.dataset == "d")
                .map(|c| c.target)
                .collect()
        };
        assert_eq!(targets(&BTreeSet::new()), vec![id("roomy")]);
        let avoid = BTreeSet::from([("d".to_string(), id("roomy"))]);
        assert_eq!(
            targets(&avoid),
            vec![id("unknown")],
            "room unknown, still a candidate"
        );
    }

    #[test]
    fn the_source_is_the_whole_holder_nearest_the_target() {
        let mut far = node("far", NodeState::Up, 0, &[("d", 4)]);
        let mut near = node("near", NodeState::Up, 0, &[("d", 4)]);
        far.rtts = vec![RttSample {
            peer: id("c"),
            rtt_micros: 9_000,
        }];
        near.rtts = vec![RttSample {
            peer: id("c"),
            rtt_micros: 300,
        }];
        let mut lost = node("lost", NodeState::Down, 90_000, &[("d", 4)]);
        for h in &mut lost.holdings {
            h.replicas_wanted = 3;
        }
        let nodes = [far, near, lost, node("c", NodeState::Up, 0, &[])];
        let copies = run(&nodes).copies;
        assert_eq!(copies.len(), 1);
        assert_eq!((copies[0].source, copies[0].target), (id("near"), id("c")));
    }

    #[test]
    fn with_no_whole_copy_left_or_no_target_nothing_is_started() {
        let nodes = [
            node("a", NodeState::Down, 90_000, &[("d", 4)]),
            node("b", NodeState::Down, 90_000, &[("d", 4)]),
            node("c", NodeState::Up, 0, &[]),
        ];
        let assessment = run(&nodes);
        assert_eq!(assessment.under_replicated, vec!["d".to_string()]);
        assert!(assessment.copies.is_empty(), "nothing whole to copy from");
        let nodes = [
            node("a", NodeState::Up, 0, &[("d", 4)]),
            node("b", NodeState::Down, 90_000, &[("d", 4)]),
        ];
        assert!(run(&nodes).copies.is_empty(), "no node to copy to");
    }
}
