//! Which compute node serves a batch: the allocator's cost model (the scheduler's placement, over
//! [`aic_protocol::path_model`]) with the gateway as the data's source — the batch crosses the gateway's path to the node, waits behind
//! the batches already there and runs at the node's measured speed, all divided by the node's
//! reputation. A pure function of what the gateway knows, so it is unit-tested here.
//!
//! ```text
//!  transfer = 2 · RTT(gateway, node) + bytes / min(link, window / RTT)
//!  compute  = flops / measured FLOP/s
//!  cost     = (transfer + batches in flight · compute + compute) / reputation
//! ```
//!
//! Equal costs go to the better reputation, then the lower node id.

use std::cmp::Ordering;

use aic_protocol::NodeId;

use aic_protocol::path_model::NetworkModel;

/// RTT assumed for a node the gateway has not connected to yet: a datacenter path, so an unknown
/// node is neither preferred to a measured near one nor shunned.
pub const UNMEASURED_RTT_MS: f64 = 1.0;

/// A compute node as the gateway sees it when placing one batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub node: NodeId,
    /// The gateway's measured round trip to it (its QUIC connection's estimate), if connected.
    pub rtt_ms: Option<f64>,
    /// Batches the gateway has in flight on it.
    pub in_flight: u32,
    /// Measured at registration by the node's own benchmark.
    pub flops_per_sec: f64,
    /// In (0, 1]: the scheduler's rater's word on the node.
    pub reputation: f64,
}

/// One batch's demand.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchDemand {
    /// Encoded inputs and outputs that cross the path.
    pub bytes: u64,
    /// Floating-point operations of its forward pass.
    pub flops: f64,
}

/// Why a node was ranked where it was.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranked {
    pub node: NodeId,
    pub cost_secs: f64,
    pub reputation: f64,
}

/// Every candidate, cheapest first.
pub fn rank(batch: BatchDemand, candidates: &[Candidate], network: &NetworkModel) -> Vec<Ranked> {
    let mut ranked: Vec<Ranked> = candidates
        .iter()
        .map(|c| {
            let rtt_ms = c.rtt_ms.unwrap_or(UNMEASURED_RTT_MS);
            let transfer = network.transfer_secs(batch.bytes, rtt_ms);
            let compute = batch.flops / c.flops_per_sec.max(1.0);
            let queue = f64::from(c.in_flight) * compute;
            let reputation = c.reputation.clamp(0.01, 1.0);
            Ranked {
                node: c.node,
                cost_secs: (transfer + queue + compute) / reputation,
                reputation,
            }
        })
        .collect();
    ranked.sort_by(compare);
    ranked
}

fn compare(a: &Ranked, b: &Ranked) -> Ordering {
    a.cost_secs
        .total_cmp(&b.cost_secs)
        .then_with(|| b.reputation.total_cmp(&a.reputation))
        .then_with(|| a.node.cmp(&b.node))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId::from_public_key(&[n])
    }

    fn node(n: u8, rtt_ms: Option<f64>, in_flight: u32, gflops: f64, reputation: f64) -> Candidate {
        Candidate {
            node: id(n),
            rtt_ms,
            in_flight,
            flops_per_sec: gflops * 1e9,
            reputation,
        }
    }

    fn order(batch: BatchDemand, candidates: &[Candidate]) -> Vec<u8> {
        rank(batch, candidates, &NetworkModel::default())
            .iter()
            .map(|r| (1..=9).find(|n| id(*n) == r.node).expect("a test node"))
            .collect()
    }

    /// A batch of 64 digits rows through a softmax regression: small, so the path dominates.
    const SMALL: BatchDemand = BatchDemand {
        bytes: 64 * 74 * 4,
        flops: 64.0 * 2.0 * 650.0,
    };
    /// A batch of 256 rows through a 50 M-parameter network: the device dominates.
    const LARGE: BatchDemand = BatchDemand {
        bytes: 256 * 3072 * 4,
        flops: 256.0 * 2.0 * 50e6,
    };

    #[test]
    fn a_small_batch_goes_to_the_nearest_node() {
        let far_fast = node(1, Some(40.0), 0, 500.0, 1.0);
        let near_slow = node(2, Some(0.3), 0, 20.0, 1.0);
        assert_eq!(order(SMALL, &[far_fast.clone(), near_slow.clone()]), [2, 1]);
        // A large batch is worth the trip to the fast device.
        assert_eq!(order(LARGE, &[far_fast, near_slow]), [1, 2]);
    }

    #[test]
    fn batches_in_flight_push_a_node_down_until_another_is_cheaper() {
        let a = node(1, Some(0.5), 0, 100.0, 1.0);
        let b = node(2, Some(0.5), 1, 100.0, 1.0);
        assert_eq!(order(LARGE, &[a.clone(), b.clone()]), [1, 2]);
        let busier_a = Candidate { in_flight: 2, ..a };
        assert_eq!(order(LARGE, &[busier_a, b]), [2, 1]);
    }

    #[test]
    fn a_node_the_rater_marked_down_serves_only_when_the_others_cost_more() {
        let honest = node(1, Some(0.5), 0, 100.0, 1.0);
        let doubted = node(2, Some(0.5), 0, 100.0, 0.25);
        assert_eq!(order(LARGE, &[doubted.clone(), honest.clone()]), [1, 2]);
        // Four batches queued on the honest node cost more than a quarter of the speed.
        let busy = Candidate {
            in_flight: 4,
            ..honest
        };
        assert_eq!(order(LARGE, &[doubted, busy]), [2, 1]);
    }

    #[test]
    fn an_unmeasured_node_ranks_as_a_datacenter_path() {
        let measured_near = node(1, Some(0.2), 0, 100.0, 1.0);
        let unmeasured = node(2, None, 0, 100.0, 1.0);
        let measured_far = node(3, Some(30.0), 0, 100.0, 1.0);
        assert_eq!(
            order(SMALL, &[measured_far, unmeasured, measured_near]),
            [1, 2, 3]
        );
    }

    #[test]
    fn equal_costs_go_to_the_better_reputation_then_the_lower_id() {
        let ranked = rank(
            SMALL,
            &[
                node(3, Some(1.0), 0, 100.0, 1.0),
                node(2, Some(1.0), 0, 100.0, 1.0),
            ],
            &NetworkModel::default(),
        );
        assert_eq!(ranked[0].node, id(2).min(id(3)));
        assert_eq!(ranked[0].cost_secs, ranked[1].cost_secs);
    }
}
