//! The `Rater` actor (Contribution Rating): each node's record of spot checks, whether to check
//! its next result, and the penalties it has earned, with the decisions in [`crate::rating`].

use std::collections::BTreeMap;

use actix::prelude::*;
use aic_protocol::NodeId;
use serde::Serialize;

use crate::allocator::{Allocator, SetReputation};
use crate::rating::{self, NodeRecord};

/// A penalty a node earned, as `aic nodes` and the job report show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Penalty {
    pub node: String,
    pub job: String,
    pub task: String,
    pub reason: String,
    /// AIC slashed from its stake ("0" when it had none).
    pub slashed: String,
    pub reputation_after: f64,
}

/// Whether to re-execute `node`'s next result elsewhere.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct ShouldCheck {
    pub node: NodeId,
}

/// The outcome of a check of `node`'s result.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RecordCheck {
    pub node: NodeId,
    pub matched: bool,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct RecordPenalty(pub Penalty);

/// A gateway's verification found `node`'s outputs for `model` wrong (two other nodes agreed
/// against it): a mismatch on its record, and a penalty. Inference pays per period, so there is
/// no job escrow to withhold: the node's stake (slashed as for a wrong training result) and its
/// reputation, and so its placement, pay.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RecordInferenceFault {
    pub node: NodeId,
    /// The node's name, as penalties show it.
    pub name: String,
    pub model: aic_protocol::AssetId,
    /// AIC slashed from its stake for it.
    pub slashed: aic_ledger::Amount,
}

/// Every node's record and penalties.
#[derive(Message)]
#[rtype(result = "(BTreeMap<NodeId, NodeRecord>, Vec<Penalty>)")]
pub struct Records;

pub struct Rater {
    records: BTreeMap<NodeId, NodeRecord>,
    penalties: Vec<Penalty>,
    allocator: Addr<Allocator>,
}

impl Rater {
    pub fn new(allocator: Addr<Allocator>) -> Self {
        Rater {
            records: BTreeMap::new(),
            penalties: Vec::new(),
            allocator,
        }
    }
}

impl Actor for Rater {
    type Context = Context<Self>;
}

impl Handler<ShouldCheck> for Rater {
    type Result = bool;

    fn handle(&mut self, message: ShouldCheck, _: &mut Self::Context) -> bool {
        let record = self.records.entry(message.node).or_default();
        rating::should_check(record, rand::random::<f64>())
    }
}

impl Handler<RecordCheck> for Rater {
    type Result = ();

    fn handle(&mut self, message: RecordCheck, _: &mut Self::Context) {
        let record = self.records.entry(message.node).or_default();
        if message.matched {
            record.record_match();
        } else {
            record.record_mismatch();
        }
        self.allocator.do_send(SetReputation {
            node: message.node,
            reputation: record.reputation,
        });
    }
}

impl Handler<RecordPenalty> for Rater {
    type Result = ();

    fn handle(&mut self, message: RecordPenalty, _: &mut Self::Context) {
        self.penalties.push(message.0);
    }
}

impl Handler<RecordInferenceFault> for Rater {
    type Result = ();

    fn handle(&mut self, message: RecordInferenceFault, _: &mut Self::Context) {
        let record = self.records.entry(message.node).or_default();
        record.record_mismatch();
        let reputation = record.reputation;
        self.allocator.do_send(SetReputation {
            node: message.node,
            reputation,
        });
        self.penalties.push(Penalty {
            node: message.name,
            job: "inference".into(),
            task: message.model.to_string(),
            reason: "wrong_inference_outputs".into(),
            slashed: message.slashed.to_string(),
            reputation_after: reputation,
        });
    }
}

impl Handler<Records> for Rater {
    type Result = MessageResult<Records>;

    fn handle(&mut self, _: Records, _: &mut Self::Context) -> Self::Result {
        MessageResult((self.records.clone(), self.penalties.clone()))
    }
}
