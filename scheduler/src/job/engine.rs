//! The job engine: every decision of a training job as a pure state machine,
//! `handle(event) -> Vec<Command>`, with no I/O — as openraft's `Engine` and `membership.rs` do.
//!
//! The engine decides placement requests, dispatch, which results are spot-checked, when a
//! third execution decides a disagreement, retries on other nodes, re-runs after a ban, whether
//! a result is acceptable, the tallies, checkpoints, settlement, cancel and takeover. The `Job`
//! actor (`runner.rs`) carries out each [`Command`] and feeds back what came of it as an
//! [`Event`]; the unit tests drive the engine directly and assert the commands it answers.
//!
//! ```text
//!  Start → RefreshNodes (until a storage node reports the dataset) → StoreState (a new job)
//!  per round: RefreshNodes → per shard: Place → Dispatch → [DrawCheck → Place/Dispatch a
//!             checker → Compare → maybe a third: Place/Dispatch → Compare ×2 → verdict]
//!             → re-run unverified results of nodes banned this step → Collect (shard order)
//!             → OuterStep → Checkpoint → DropTensors (superseded) → Publish
//!  a node found wrong whose unconfirmed results are in earlier rounds: Rewind to the start of
//!             its earliest such round (weights restored, the ledger told) → DropTensors (the
//!             discarded rounds') → the rounds from there, without it
//!  at the end: RefreshNodes → evaluate the held-out shards → Checkpoint (the claim) → Settle
//!             → Finish. A checkpoint refused because another replica runs the job: Finish(Moved)
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use aic_ledger::state::CheckpointTensors;
use aic_ledger::tx::PayoutKind;
use aic_ledger::{Address, Amount};
use aic_protocol::manifest::ShardEntry;
use aic_protocol::messages::{NodeState, NodeStatus, TaskKind, TaskResult, Verification};
use aic_protocol::tensor::TensorRef;
use aic_protocol::{JobId, NodeId, Role, TaskId};

use super::checkpoint::{Progress, RewindPoints, RoundStart, Tallies};
use crate::payroll::WorkDone;
use crate::placement::Placement;
use crate::rating::{self, Verdict};

/// How many nodes one execution of a task is tried on before it counts as failed.
pub const MAX_ATTEMPTS: usize = 4;
/// How often a placement is asked again while every eligible node is busy.
pub const SLOT_POLL: Duration = Duration::from_millis(20);
/// How many times a placement is asked again before the task gives up (30 s).
pub const MAX_SLOT_WAITS: u32 = 1_500;
/// How often the registry is read while waiting for a storage node to report the dataset.
pub const REPLICA_POLL: Duration = Duration::from_millis(200);
/// How many times before the job starts anyway (15 s; the tasks then fail without a replica).
pub const MAX_REPLICA_WAITS: u32 = 75;

/// Rounds in an epoch: `steps_per_epoch`, but never more than there are training shards (each
/// round takes every n-th shard) and at least one.
pub fn rounds_per_epoch(steps_per_epoch: u32, train_shards: usize) -> u32 {
    steps_per_epoch
        .min(u32::try_from(train_shards).unwrap_or(u32::MAX))
        .max(1)
}

/// What the engine needs to know about a job, resolved before it starts.
#[derive(Clone, Debug)]
pub struct EngineSetup {
    pub job: JobId,
    /// The dataset's id, as storage nodes report their holdings.
    pub dataset: String,
    pub train: Vec<ShardEntry>,
    pub test: Vec<ShardEntry>,
    /// Rounds per epoch (each round takes every `steps`-th training shard).
    pub steps_per_epoch: u32,
    pub epochs: u32,
    /// A held-out evaluation after every this many rounds (0: only after the last).
    pub evaluate_every_rounds: u32,
    /// The model's parameters: the length every update must have.
    pub parameters: u64,
    pub regression: bool,
    /// The usage fees paid once the job completes: (owner, fee, kind).
    pub fees: Vec<(Address, Amount, PayoutKind)>,
    /// Mixed into task ids, so a resumed job's tasks never reuse an earlier runner's ids.
    pub task_seed: u64,
    /// The account that pays for the job: a node it is paid through never checks the job's
    /// work.
    pub payer: Address,
    /// Where a resumed job starts: the checkpoint's round, tallies and tensors.
    pub resumed: Option<Resumed>,
    /// Whether every training result is checked, or a sample drawn by the rater.
    pub verification: Verification,
}

/// A checkpoint a resumed job starts from.
#[derive(Clone, Debug)]
pub struct Resumed {
    pub round: u32,
    pub tallies: Tallies,
    pub tensors: Option<CheckpointTensors>,
    /// The rounds the job can still rewind to.
    pub rewind: RewindPoints,
}

/// One execution of a task that produced a result, with where it ran.
#[derive(Clone, Debug, PartialEq)]
pub struct Done {
    pub result: TaskResult,
    pub placement: Placement<NodeId>,
    /// Nodes that failed this execution before it ran here, and why (never paid).
    pub failed_attempts: Vec<(Option<NodeId>, String)>,
}

/// Which two executions of a spot-checked task a comparison is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pair {
    OriginalChecker,
    CheckerThird,
    OriginalThird,
}

/// How two executions of one task compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    Agree,
    Disagree,
    /// This node's update could not be read (it went away, or sent what its result did not
    /// name): no verdict on anyone, the task starts over elsewhere.
    Unreadable(NodeId),
}

/// Why a round's update could not be collected from the node that holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct CollectFailure {
    /// The position (in shard order) of the update that failed; none when no one node is to
    /// blame (the reduce itself failed), which fails the job.
    pub index: Option<usize>,
    pub error: String,
}

/// What the ledger made of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointOutcome {
    Recorded,
    /// Another replica runs the job now (or settled it already): this one must not pay it.
    TakenOver,
    /// Any other failure: resumability is lost for the round, nothing else.
    NotRecorded,
}

/// How a job ended on this replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Done,
    Failed,
    Cancelled,
    /// Another replica took the job over; that one runs and settles it.
    Moved,
}

/// A spot check's outcome, as reported and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckVerdict {
    Agreed,
    OriginalWrong,
    CheckerWrong,
    Undecided,
}

impl CheckVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckVerdict::Agreed => "agreed",
            CheckVerdict::OriginalWrong => "original_wrong",
            CheckVerdict::CheckerWrong => "checker_wrong",
            CheckVerdict::Undecided => "undecided",
        }
    }
}

/// What came of a command (or from outside: a cancel).
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Start,
    /// The registry's nodes (answers `RefreshNodes`).
    Nodes(Result<Vec<NodeStatus>, String>),
    /// The initial weights are stored (answers `StoreState`).
    Stored(Result<CheckpointTensors, String>),
    /// The allocator's choice for an execution (answers `Place`).
    Placed {
        exec: u64,
        placement: Option<Placement<NodeId>>,
    },
    /// A node's answer to a task (answers `Dispatch`).
    Ran {
        exec: u64,
        outcome: Result<TaskResult, String>,
    },
    /// Whether the rater draws a re-execution of a slot's result (answers `DrawCheck`).
    CheckDrawn {
        slot: usize,
        check: bool,
    },
    /// How two executions compared (answers `Compare`).
    Compared {
        slot: usize,
        pair: Pair,
        outcome: Comparison,
    },
    /// The round's updates were reduced, or one could not be collected (answers `Collect`).
    Collected(Result<(), CollectFailure>),
    /// The outer step was applied and the new weights stored (answers `OuterStep`).
    Stepped(Result<CheckpointTensors, String>),
    Checkpointed(CheckpointOutcome),
    /// The weights a rewind goes back to were restored and the ledger told (answers
    /// `Rewind`), or restoring them failed.
    Rewound(Result<CheckpointOutcome, String>),
    /// Settlement ran (answers `Settle`); whether it succeeded.
    Settled {
        ok: bool,
    },
    /// The submitter cancelled the job: it stops at the next round boundary.
    Cancel,
}

/// What the engine asks the actor to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Read the registry's nodes (after waiting, when given) and answer `Nodes`.
    RefreshNodes {
        after: Option<Duration>,
    },
    /// Store the current weights on storage nodes and answer `Stored`.
    StoreState,
    /// Ask the allocator for a node for an execution (after waiting, when given).
    Place {
        exec: u64,
        shard: ShardEntry,
        exclude: Vec<NodeId>,
        after: Option<Duration>,
    },
    /// Run a task on the placed node with the round's weights.
    Dispatch {
        exec: u64,
        task: TaskId,
        kind: TaskKind,
        round: u32,
        shard: ShardEntry,
        placement: Placement<NodeId>,
        weights: CheckpointTensors,
    },
    /// Ask the rater whether this node's result is re-executed.
    DrawCheck {
        slot: usize,
        node: NodeId,
    },
    /// Compare two executions of one task (their numbers, then their updates chunk by chunk).
    Compare {
        slot: usize,
        pair: Pair,
        a: (NodeId, TaskResult),
        b: (NodeId, TaskResult),
    },
    Rate {
        node: NodeId,
        matched: bool,
    },
    Penalise {
        node: NodeId,
        task: TaskId,
    },
    /// The node was confirmed wrong: never used in this job again, its lottery tickets revoked.
    Ban {
        node: NodeId,
    },
    /// The node's work was confirmed: it may hold a lottery ticket for this job.
    GrantTicket {
        node: NodeId,
    },
    /// Collect every update (in this order, weighted by rows) into the round's mean update.
    Collect {
        round: u32,
        parts: Vec<(NodeId, TensorRef, u64)>,
    },
    /// Apply the outer optimizer to the collected mean update and store the new weights.
    OuterStep {
        round: u32,
    },
    /// Record the job's progress on the ledger (answers `Checkpointed`).
    Checkpoint {
        round: u32,
        tensors: Option<CheckpointTensors>,
        progress: Progress,
    },
    /// Go back to the start of `round`: restore its weights (and optimizer state) from
    /// `tensors`, and record on the ledger that the job rewound there because `wrong` was found
    /// wrong (answers `Rewound`). Answers to anything asked before it are stale: the actor
    /// drops them (see `Engine::generation`).
    Rewind {
        round: u32,
        tensors: CheckpointTensors,
        progress: Progress,
        wrong: NodeId,
    },
    /// Forget tensors no checkpoint names any more.
    DropTensors {
        tensors: Vec<TensorRef>,
        holders: Vec<NodeId>,
    },
    Report(ReportItem),
    /// Publish the job's report on the board.
    Publish,
    /// Pay the work from the escrow, slash, accrue rewards, mint the trained model when
    /// `completed` (answers `Settled`).
    Settle(SettleOrder),
    Finish(Ending),
}

/// What settlement pays and whom it slashes: decided here, carried out by the actor.
#[derive(Clone, Debug, PartialEq)]
pub struct SettleOrder {
    pub completed: bool,
    pub work: WorkDone,
    /// Verified rows of each provider not banned, with its payout address (Proof of Value).
    pub verified: Vec<(NodeId, Address, u64)>,
    /// Nodes confirmed wrong in this job, with their accounts.
    pub slash: Vec<(NodeId, Address)>,
    /// Each compute node's part, for the job log (the trained model's card).
    pub nodes: Vec<aic_ledger::state::NodeWork>,
    /// The trained weights, when the job completed.
    pub trained: Option<CheckpointTensors>,
}

/// Something for the job's report (and its metrics).
#[derive(Clone, Debug, PartialEq)]
pub enum ReportItem {
    /// An execution's attempt on a node ended.
    Attempt {
        kind: TaskKind,
        ok: bool,
    },
    Failure {
        node: NodeId,
        task: TaskId,
        shard: String,
        error: String,
    },
    SpotCheck {
        round: u32,
        task: TaskId,
        shard: String,
        original: NodeId,
        checker: NodeId,
        third: Option<NodeId>,
        verdict: CheckVerdict,
    },
    /// An accepted task, credited.
    Task {
        round: u32,
        kind: TaskKind,
        shard: ShardEntry,
        done: Box<Done>,
    },
    /// A round completed: rounds so far, its epoch (1-based) and mean loss.
    Round {
        rounds: u32,
        epoch: u32,
        loss: f64,
    },
    /// The job went back from `from` rounds done to `to`, because `node` was found wrong: the
    /// rounds after `to` are re-run without it.
    Rewound {
        from: u32,
        to: u32,
        node: NodeId,
    },
    /// A held-out evaluation of the weights after `round`; `last` is the final one.
    Evaluation {
        round: u32,
        last: bool,
        rows: u64,
        loss: f64,
        accuracy: Option<f64>,
        r2: Option<f64>,
    },
    Error(String),
}

/// Which execution of a task an `exec` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExecRole {
    Original,
    Checker,
    Third,
    /// A re-run because the update could not be collected (no spot check).
    Redo,
}

#[derive(Debug)]
struct Exec {
    slot: usize,
    role: ExecRole,
    task: TaskId,
    excluded: Vec<NodeId>,
    attempts: usize,
    waits: u32,
    placement: Option<Placement<NodeId>>,
    failures: Vec<(Option<NodeId>, String)>,
}

/// One shard's task within a step.
#[derive(Debug)]
struct Slot {
    entry: ShardEntry,
    task: TaskId,
    original: Option<Done>,
    checker: Option<Done>,
    third: Option<Done>,
    checker_vs_third: Option<bool>,
    original_vs_third: Option<bool>,
    /// The accepted result and whether a re-execution confirmed it.
    accepted: Option<(Done, bool)>,
}

#[derive(Debug)]
struct Step {
    kind: TaskKind,
    slots: Vec<Slot>,
    /// Passes run (each re-runs results of nodes banned in the previous one).
    passes: usize,
    collect_failures: usize,
    /// Slots started over because a check could not read an update.
    restarts: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    WaitingForReplicas,
    StoringInitial,
    /// Nodes were asked for before a training round or the evaluation.
    Refreshing {
        evaluate: bool,
    },
    Running,
    Collecting,
    OuterStepping,
    Checkpointing,
    /// Restoring the weights a rewind goes back to.
    Rewinding,
    /// The final checkpoint before paying: a replica that took the job over settles it.
    Claiming(Ending),
    Settling(Ending),
    Finished,
}

/// The engine. See the module documentation.
#[derive(Debug)]
pub struct Engine {
    setup: EngineSetup,
    groups: Vec<Vec<usize>>,
    nodes: Vec<NodeStatus>,
    tallies: Tallies,
    stored: Option<CheckpointTensors>,
    /// Tensors the round's step superseded: dropped once the ledger names the new ones.
    superseded: Option<CheckpointTensors>,
    /// Rounds completed.
    round: u32,
    phase: Phase,
    step: Option<Step>,
    execs: BTreeMap<u64, Exec>,
    next_exec: u64,
    tasks_minted: u64,
    replica_waits: u32,
    /// The round after which the latest held-out evaluation ran.
    evaluated_at: Option<u32>,
    /// Where a node found wrong sends the job back to.
    rewind: RewindPoints,
    /// Confirmed rows when the running training round started (what a rewind to it restores).
    verified_at_round_start: BTreeMap<NodeId, u64>,
    /// Tensors of the rounds a rewind discarded: dropped once the ledger names the rewind.
    discarded: Vec<CheckpointTensors>,
    /// Bumped at each rewind: answers to commands of an earlier generation are stale.
    generation: u64,
    cancelled: bool,
    out: Vec<Command>,
}

impl Engine {
    pub fn new(setup: EngineSetup) -> Self {
        let steps = rounds_per_epoch(setup.steps_per_epoch, setup.train.len()) as usize;
        let groups = (0..steps)
            .map(|s| (0..setup.train.len()).skip(s).step_by(steps).collect())
            .collect();
        let (round, tallies, stored, rewind) = match &setup.resumed {
            Some(r) => (r.round, r.tallies.clone(), r.tensors.clone(), r.rewind.clone()),
            None => (0, Tallies::default(), None, RewindPoints::default()),
        };
        Engine {
            setup,
            groups,
            nodes: Vec::new(),
            tallies,
            stored,
            superseded: None,
            round,
            phase: Phase::Idle,
            step: None,
            execs: BTreeMap::new(),
            next_exec: 0,
            tasks_minted: 0,
            replica_waits: 0,
            evaluated_at: None,
            rewind,
            verified_at_round_start: BTreeMap::new(),
            discarded: Vec::new(),
            generation: 0,
            cancelled: false,
            out: Vec::new(),
        }
    }

    /// Which run of the rounds the engine is in: bumped when a rewind throws the running
    /// round away. The actor tags what it carries out with it and drops an answer that comes
    /// back under an older one (a task or check of a discarded round).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The rounds the job can rewind to.
    pub fn rewind_points(&self) -> &RewindPoints {
        &self.rewind
    }

    /// Rounds the job trains in all.
    pub fn total_rounds(&self) -> u32 {
        self.setup.epochs.saturating_mul(self.groups.len() as u32)
    }

    /// Rounds completed so far.
    pub fn rounds(&self) -> u32 {
        self.round
    }

    pub fn tallies(&self) -> &Tallies {
        &self.tallies
    }

    pub fn nodes(&self) -> &[NodeStatus] {
        &self.nodes
    }

    /// Whether the job has ended (after `Finish`).
    pub fn finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Takes one event and answers what to do about it.
    pub fn handle(&mut self, event: Event) -> Vec<Command> {
        match event {
            Event::Start => self.on_start(),
            Event::Nodes(nodes) => self.on_nodes(nodes),
            Event::Stored(stored) => self.on_stored(stored),
            Event::Placed { exec, placement } => self.on_placed(exec, placement),
            Event::Ran { exec, outcome } => self.on_ran(exec, outcome),
            Event::CheckDrawn { slot, check } => self.on_check_drawn(slot, check),
            Event::Compared { slot, pair, outcome } => self.on_compared(slot, pair, outcome),
            Event::Collected(outcome) => self.on_collected(outcome),
            Event::Stepped(stored) => self.on_stepped(stored),
            Event::Checkpointed(outcome) => self.on_checkpointed(outcome),
            Event::Rewound(outcome) => self.on_rewound(outcome),
            Event::Settled { ok: _ } => self.on_settled(),
            Event::Cancel => self.cancelled = true,
        }
        std::mem::take(&mut self.out)
    }

    /// What the job owes so far: the compute rows of nodes not banned and the bytes served,
    /// each to its node's payout address, and the usage fees once `completed`.
    pub fn work_done(&self, completed: bool) -> WorkDone {
        let mut work = WorkDone::default();
        for (node, rows) in &self.tallies.compute_rows {
            if self.tallies.banned.contains(node) {
                continue;
            }
            if let Some(to) = self.payout_address(node) {
                *work.compute_rows.entry(to).or_insert(0) += rows;
            }
        }
        for (node, bytes) in &self.tallies.storage_bytes {
            if let Some(to) = self.payout_address(node) {
                *work.storage_bytes.entry(to).or_insert(0) += bytes;
            }
        }
        if completed {
            work.fees = self.setup.fees.clone();
        }
        work
    }

    // -----------------------------------------------------------------------------------------
    // Starting and rounds

    fn on_start(&mut self) {
        if self.phase != Phase::Idle {
            return;
        }
        self.phase = Phase::WaitingForReplicas;
        self.out.push(Command::RefreshNodes { after: None });
    }

    fn on_nodes(&mut self, nodes: Result<Vec<NodeStatus>, String>) {
        let nodes = match nodes {
            Ok(nodes) => nodes,
            Err(error) => {
                if matches!(self.phase, Phase::WaitingForReplicas | Phase::Refreshing { .. }) {
                    self.fail(format!("reading the registry: {error}"));
                }
                return;
            }
        };
        self.nodes = nodes;
        match self.phase {
            Phase::WaitingForReplicas => {
                // Storage nodes report what they hold with their heartbeats: a dataset imported
                // a moment ago may not be reported yet.
                if self.replicas().is_empty() && self.replica_waits < MAX_REPLICA_WAITS {
                    self.replica_waits += 1;
                    self.out.push(Command::RefreshNodes {
                        after: Some(REPLICA_POLL),
                    });
                } else if self.stored.is_none() {
                    self.phase = Phase::StoringInitial;
                    self.out.push(Command::StoreState);
                } else {
                    self.begin_round();
                }
            }
            Phase::Refreshing { evaluate: false } => {
                self.verified_at_round_start = self.tallies.verified_rows.clone();
                let shards = self.groups[self.group_of(self.round)]
                    .iter()
                    .map(|&i| self.setup.train[i].clone())
                    .collect();
                self.start_step(TaskKind::Gradient, shards);
            }
            Phase::Refreshing { evaluate: true } => {
                let shards = self.setup.test.clone();
                self.start_step(TaskKind::Evaluate, shards);
            }
            _ => {}
        }
    }

    fn on_stored(&mut self, stored: Result<CheckpointTensors, String>) {
        if self.phase != Phase::StoringInitial {
            return;
        }
        match stored {
            Ok(tensors) => {
                self.stored = Some(tensors);
                self.begin_round();
            }
            Err(error) => self.fail(error),
        }
    }

    fn group_of(&self, round: u32) -> usize {
        round as usize % self.groups.len()
    }

    /// At a round boundary: stop if cancelled, else refresh the nodes for the next round, or
    /// for a held-out evaluation when one is due (every `evaluate_every_rounds`, and the final
    /// one once every round ran).
    fn begin_round(&mut self) {
        if self.cancelled {
            self.end(Ending::Cancelled);
            return;
        }
        let every = self.setup.evaluate_every_rounds;
        let periodic =
            every > 0 && self.round > 0 && self.round % every == 0 && self.evaluated_at != Some(self.round);
        let evaluate = self.round >= self.total_rounds() || periodic;
        self.phase = Phase::Refreshing { evaluate };
        self.out.push(Command::RefreshNodes { after: None });
    }

    fn start_step(&mut self, kind: TaskKind, shards: Vec<ShardEntry>) {
        if self.replicas().is_empty() {
            self.fail(format!(
                "no storage node reports dataset {} whole",
                self.setup.dataset
            ));
            return;
        }
        let slots = shards
            .into_iter()
            .map(|entry| Slot::new(entry, self.mint_task()))
            .collect::<Vec<_>>();
        let count = slots.len();
        self.step = Some(Step {
            kind,
            slots,
            passes: 1,
            collect_failures: 0,
            restarts: 0,
        });
        self.phase = Phase::Running;
        for slot in 0..count {
            self.start_exec(slot, ExecRole::Original, Vec::new(), Vec::new());
        }
    }

    /// A fresh task id: the job, a seed of this run, and a counter.
    fn mint_task(&mut self) -> TaskId {
        self.tasks_minted += 1;
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"aic-task-id");
        hasher.update(self.setup.job.as_bytes());
        hasher.update(&self.setup.task_seed.to_le_bytes());
        hasher.update(&self.tasks_minted.to_le_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        TaskId::from_bytes(id)
    }

    // -----------------------------------------------------------------------------------------
    // Executions: placement, dispatch, retries

    fn start_exec(
        &mut self,
        slot: usize,
        role: ExecRole,
        exclude: Vec<NodeId>,
        failures: Vec<(Option<NodeId>, String)>,
    ) {
        let Some(step) = &self.step else { return };
        let task = step.slots[slot].task;
        let shard = step.slots[slot].entry.clone();
        let mut excluded = exclude;
        for node in &self.tallies.banned {
            if !excluded.contains(node) {
                excluded.push(*node);
            }
        }
        let exec = self.next_exec;
        self.next_exec += 1;
        self.out.push(Command::Place {
            exec,
            shard,
            exclude: excluded.clone(),
            after: None,
        });
        self.execs.insert(
            exec,
            Exec {
                slot,
                role,
                task,
                excluded,
                attempts: 0,
                waits: 0,
                placement: None,
                failures,
            },
        );
    }

    fn on_placed(&mut self, exec: u64, placement: Option<Placement<NodeId>>) {
        let Some(kind) = self.step.as_ref().map(|s| s.kind) else {
            return;
        };
        let round = self.round;
        let weights = self.stored.clone();
        let eligible = |excluded: &[NodeId]| {
            self.nodes.iter().any(|n| {
                n.role == Role::Compute && n.state == NodeState::Up && !excluded.contains(&n.node_id)
            })
        };
        let Some(e) = self.execs.get(&exec) else { return };
        let shard = self.step.as_ref().expect("a step runs").slots[e.slot]
            .entry
            .clone();
        let Some(placement) = placement else {
            // Every eligible node may just be busy: ask again while any could take it.
            let wait = eligible(&e.excluded) && e.waits < MAX_SLOT_WAITS;
            let e = self.execs.get_mut(&exec).expect("looked up above");
            if wait {
                e.waits += 1;
                self.out.push(Command::Place {
                    exec,
                    shard,
                    exclude: e.excluded.clone(),
                    after: Some(SLOT_POLL),
                });
            } else {
                e.failures.push((None, "no eligible compute node".into()));
                self.exec_failed(exec);
            }
            return;
        };
        let Some(weights) = weights else {
            self.fail("the round's weights are not stored".into());
            return;
        };
        let e = self.execs.get_mut(&exec).expect("looked up above");
        e.attempts += 1;
        e.placement = Some(placement.clone());
        self.out.push(Command::Dispatch {
            exec,
            task: e.task,
            kind,
            round,
            shard,
            placement,
            weights,
        });
    }

    fn on_ran(&mut self, exec: u64, outcome: Result<TaskResult, String>) {
        let Some(step) = &self.step else { return };
        let kind = step.kind;
        let Some(e) = self.execs.get(&exec) else { return };
        let Some(placement) = e.placement.clone() else {
            return;
        };
        let entry = step.slots[e.slot].entry.clone();
        let outcome = outcome.and_then(|result| self.acceptable(kind, &entry, e.task, result));
        self.out.push(Command::Report(ReportItem::Attempt {
            kind,
            ok: outcome.is_ok(),
        }));
        match outcome {
            Ok(result) => {
                let e = self.execs.remove(&exec).expect("looked up above");
                let done = Done {
                    result,
                    placement,
                    failed_attempts: e.failures,
                };
                self.exec_succeeded(e.slot, e.role, done);
            }
            Err(error) => {
                let node = placement.node;
                let e = self.execs.get_mut(&exec).expect("looked up above");
                e.placement = None;
                e.failures.push((Some(node), error.clone()));
                e.excluded.push(node);
                let retry = e.attempts < MAX_ATTEMPTS;
                let task = e.task;
                let exclude = e.excluded.clone();
                self.out.push(Command::Report(ReportItem::Failure {
                    node,
                    task,
                    shard: entry.id.clone(),
                    error,
                }));
                if retry {
                    self.out.push(Command::Place {
                        exec,
                        shard: entry,
                        exclude,
                        after: None,
                    });
                } else {
                    self.exec_failed(exec);
                }
            }
        }
    }

    /// Result acceptance: the right task, a digest that matches its numbers, the shape the
    /// task must have (an update of the model's length for training; Σy, Σy² for a regression's
    /// evaluation), the shard's rows, and finite numbers. Anything else is the node's failure.
    fn acceptable(
        &self,
        kind: TaskKind,
        entry: &ShardEntry,
        task: TaskId,
        result: TaskResult,
    ) -> Result<TaskResult, String> {
        if result.task != task || !result.digest_matches() {
            return Err("the result's digest does not match its numbers".into());
        }
        let (expected_update, expected_values) = match kind {
            TaskKind::Gradient => (Some(self.setup.parameters), 0),
            TaskKind::Evaluate if self.setup.regression => (None, 2),
            TaskKind::Evaluate => (None, 0),
        };
        if result.update.map(|u| u.elements) != expected_update
            || result.values.len() != expected_values
            || result.rows != entry.rows
            || !result.loss.is_finite()
            || result.values.iter().any(|v| !v.is_finite())
        {
            return Err(format!(
                "the result has the wrong shape (an update of {:?} values, {} values, {} rows; \
                 expected {expected_update:?}, {expected_values} and {})",
                result.update.map(|u| u.elements),
                result.values.len(),
                result.rows,
                entry.rows
            ));
        }
        Ok(result)
    }

    fn exec_failed(&mut self, exec: u64) {
        let Some(e) = self.execs.remove(&exec) else { return };
        let Some(step) = &self.step else { return };
        let slot = &step.slots[e.slot];
        match e.role {
            ExecRole::Original | ExecRole::Redo => {
                let why: Vec<String> = e
                    .failures
                    .iter()
                    .map(|(node, error)| match node {
                        Some(node) => format!("{}: {error}", self.name(node)),
                        None => error.clone(),
                    })
                    .collect();
                let message = format!("task on shard {}: {}", slot.entry.id, why.join("; "));
                self.fail(message);
            }
            // No other node could re-run it now: the result stands unverified, unless the job
            // was promised that none does.
            ExecRole::Checker => {
                let original = slot.original.clone().expect("a checker follows an original");
                if self.setup.verification == Verification::Every {
                    let message = format!(
                        "task on shard {}: every result must be checked and no other compute node could \
                         re-run it",
                        slot.entry.id
                    );
                    self.fail(message);
                } else {
                    self.accept(e.slot, original, false);
                }
            }
            // Nothing can decide between the two: the round cannot be trusted.
            ExecRole::Third => self.decide(e.slot, None),
        }
    }

    fn exec_succeeded(&mut self, slot: usize, role: ExecRole, done: Done) {
        let kind = self.step.as_ref().expect("a step runs").kind;
        let node = done.placement.node;
        match role {
            ExecRole::Original if kind == TaskKind::Gradient => {
                self.slot_mut(slot).original = Some(done);
                match self.setup.verification {
                    Verification::Sampled => self.out.push(Command::DrawCheck { slot, node }),
                    Verification::Every => self.on_check_drawn(slot, true),
                }
            }
            ExecRole::Original => {
                self.slot_mut(slot).original = Some(done.clone());
                self.accept(slot, done, false);
            }
            ExecRole::Checker => {
                let original = self.slot_mut(slot).original.clone().expect("an original ran");
                self.slot_mut(slot).checker = Some(done.clone());
                self.out.push(Command::Compare {
                    slot,
                    pair: Pair::OriginalChecker,
                    a: (original.placement.node, original.result),
                    b: (node, done.result),
                });
            }
            ExecRole::Third => {
                let s = self.slot_mut(slot);
                s.third = Some(done.clone());
                let original = s.original.clone().expect("an original ran");
                let checker = s.checker.clone().expect("a checker ran");
                self.out.push(Command::Compare {
                    slot,
                    pair: Pair::CheckerThird,
                    a: (checker.placement.node, checker.result),
                    b: (node, done.result.clone()),
                });
                self.out.push(Command::Compare {
                    slot,
                    pair: Pair::OriginalThird,
                    a: (original.placement.node, original.result),
                    b: (node, done.result),
                });
            }
            ExecRole::Redo => {
                let s = self.slot_mut(slot);
                s.original = Some(done.clone());
                s.accepted = Some((done, false));
                self.collect();
            }
        }
    }

    fn slot_mut(&mut self, slot: usize) -> &mut Slot {
        &mut self.step.as_mut().expect("a step runs").slots[slot]
    }

    // -----------------------------------------------------------------------------------------
    // Spot checks

    fn on_check_drawn(&mut self, slot: usize, check: bool) {
        if self.phase != Phase::Running {
            return;
        }
        let Some(original) = self
            .step
            .as_ref()
            .and_then(|s| s.slots.get(slot)?.original.clone())
        else {
            return;
        };
        if self.step.as_ref().expect("a step runs").slots[slot]
            .accepted
            .is_some()
        {
            return;
        }
        if check {
            let exclude = self.independent_of(&[original.placement.node]);
            self.start_exec(slot, ExecRole::Checker, exclude, Vec::new());
        } else {
            self.accept(slot, original, false);
        }
    }

    fn on_compared(&mut self, slot: usize, pair: Pair, outcome: Comparison) {
        if self.phase != Phase::Running {
            return;
        }
        let Some(s) = self.step.as_mut().and_then(|s| s.slots.get_mut(slot)) else {
            return;
        };
        // Answers for executions this slot no longer has (it started over) are stale.
        let current = match pair {
            Pair::OriginalChecker => s.checker.is_some() && s.third.is_none(),
            Pair::CheckerThird | Pair::OriginalThird => s.third.is_some(),
        };
        if s.accepted.is_some() || !current {
            return;
        }
        let agree = match outcome {
            Comparison::Agree => true,
            Comparison::Disagree => false,
            Comparison::Unreadable(node) => {
                self.start_over(slot, node);
                return;
            }
        };
        match pair {
            Pair::OriginalChecker => {
                let (Some(original), Some(checker)) = (s.original.clone(), s.checker.clone()) else {
                    return;
                };
                let (o, c) = (original.placement.node, checker.placement.node);
                if agree {
                    self.out.push(Command::Rate {
                        node: o,
                        matched: true,
                    });
                    self.out.push(Command::Rate {
                        node: c,
                        matched: true,
                    });
                    self.report_check(slot, None, CheckVerdict::Agreed);
                    self.confirm(&[o, c], original.result.rows);
                    self.accept(slot, original, true);
                } else {
                    let exclude = self.independent_of(&[o, c]);
                    self.start_exec(slot, ExecRole::Third, exclude, Vec::new());
                }
            }
            Pair::CheckerThird => {
                s.checker_vs_third = Some(agree);
                if let Some(original_vs_third) = s.original_vs_third {
                    self.decide(slot, Some((agree, original_vs_third)));
                }
            }
            Pair::OriginalThird => {
                s.original_vs_third = Some(agree);
                if let Some(checker_vs_third) = s.checker_vs_third {
                    self.decide(slot, Some((checker_vs_third, agree)));
                }
            }
        }
    }

    /// A slot whose check could not read `node`'s update starts over under a new task id away
    /// from that node: a node that went away mid-check is not judged, and its result of the
    /// task is not paid (nothing of the slot was credited yet).
    fn start_over(&mut self, slot: usize, node: NodeId) {
        let step = self.step.as_mut().expect("a step runs");
        step.restarts += 1;
        if step.restarts > MAX_ATTEMPTS * step.slots.len() {
            self.fail("spot checks kept failing to read the updates; giving up".into());
            return;
        }
        let task = self.mint_task();
        let s = self.slot_mut(slot);
        *s = Slot::new(s.entry.clone(), task);
        self.start_exec(slot, ExecRole::Original, vec![node], Vec::new());
    }

    /// The verdict on a disagreement, from how a third execution (if any ran) compared with
    /// the checker and with the original.
    fn decide(&mut self, slot: usize, third: Option<(bool, bool)>) {
        let s = &self.step.as_ref().expect("a step runs").slots[slot];
        let original = s.original.clone().expect("an original ran");
        let checker = s.checker.clone().expect("a checker ran");
        let third_done = s.third.clone();
        let third_node = third_done.as_ref().map(|d| d.placement.node);
        let (accepted, wrong, verdict) = match rating::decide(false, third) {
            Verdict::OriginalWrong => (
                checker.clone(),
                original.placement.node,
                CheckVerdict::OriginalWrong,
            ),
            Verdict::CheckerWrong => (
                original.clone(),
                checker.placement.node,
                CheckVerdict::CheckerWrong,
            ),
            // `decide(false, …)` never agrees; all three disagreeing (or no third) is undecided.
            Verdict::Agreed | Verdict::Undecided => {
                self.report_check(slot, third_node, CheckVerdict::Undecided);
                let task = s_task(&self.step, slot);
                self.fail(format!(
                    "task {task}: three executions disagree; the round cannot be trusted"
                ));
                return;
            }
        };
        self.report_check(slot, third_node, verdict);
        let executions: Vec<NodeId> = [Some(&original), Some(&checker), third_done.as_ref()]
            .into_iter()
            .flatten()
            .map(|d| d.placement.node)
            .collect();
        let honest: Vec<NodeId> = executions.iter().copied().filter(|n| *n != wrong).collect();
        self.out.push(Command::Rate {
            node: wrong,
            matched: false,
        });
        for node in &honest {
            self.out.push(Command::Rate {
                node: *node,
                matched: true,
            });
        }
        self.out.push(Command::Penalise {
            node: wrong,
            task: s_task(&self.step, slot),
        });
        self.tallies.banned.insert(wrong);
        self.out.push(Command::Ban { node: wrong });
        self.confirm(&honest, accepted.result.rows);
        if let Some(&to) = self.rewind.first_unverified.get(&wrong) {
            // Its unconfirmed results of earlier rounds are in the weights: go back before them.
            self.rewind_to(to, wrong);
            return;
        }
        self.accept(slot, accepted, true);
    }

    /// Throws away the running round and every round from `to` on, and starts again from the
    /// weights round `to` started with, without `wrong` (banned already). Compute rows of the
    /// discarded rounds stay credited: honest nodes did that work as asked, and `wrong` — whose
    /// results caused the re-run — is paid nothing and slashed. Confirmed rows (Proof of Value)
    /// go back to what they were: only what stays in the model earns rewards.
    fn rewind_to(&mut self, to: u32, wrong: NodeId) {
        let Some(start) = self.rewind.starts.get(&to).cloned() else {
            // Every round a node's `first_unverified` names has its start kept (`note_unverified`).
            self.fail(format!("no weights kept to rewind to round {to}"));
            return;
        };
        let from = self.round;
        self.step = None;
        self.execs.clear();
        self.generation += 1;
        self.rewind.first_unverified.retain(|_, round| *round < to);
        let later = self.rewind.starts.split_off(&to);
        self.discarded = later
            .into_values()
            .map(|s| s.tensors)
            .chain(self.stored.take())
            .chain(self.superseded.take())
            .filter(|t| *t != start.tensors)
            .collect();
        self.discarded.dedup();
        self.tallies.verified_rows = start.verified_rows.clone();
        self.round = to;
        self.stored = Some(start.tensors.clone());
        self.evaluated_at = self.evaluated_at.filter(|round| *round <= to);
        self.phase = Phase::Rewinding;
        self.out.push(Command::Report(ReportItem::Rewound {
            from,
            to,
            node: wrong,
        }));
        self.out.push(Command::Rewind {
            round: to,
            tensors: start.tensors,
            progress: Progress {
                tallies: self.tallies.clone(),
                assignments: Vec::new(),
                rewind: self.rewind.clone(),
            },
            wrong,
        });
    }

    fn on_rewound(&mut self, outcome: Result<CheckpointOutcome, String>) {
        if self.phase != Phase::Rewinding {
            return;
        }
        match outcome {
            Err(error) => self.fail(format!("rewinding to round {}: {error}", self.round)),
            Ok(CheckpointOutcome::TakenOver) => self.moved(),
            Ok(CheckpointOutcome::Recorded) => {
                // The ledger names the rewound weights: the discarded rounds' can go.
                for tensors in std::mem::take(&mut self.discarded) {
                    self.drop_tensors(tensors);
                }
                self.begin_round();
            }
            Ok(CheckpointOutcome::NotRecorded) => {
                // The ledger still names the latest weights: keep them.
                self.discarded.clear();
                self.begin_round();
            }
        }
    }

    fn drop_tensors(&mut self, tensors: CheckpointTensors) {
        self.out.push(Command::DropTensors {
            tensors: std::iter::once(tensors.weights)
                .chain(tensors.optimizer_state)
                .collect(),
            holders: tensors.holders,
        });
    }

    fn report_check(&mut self, slot: usize, third: Option<NodeId>, verdict: CheckVerdict) {
        let s = &self.step.as_ref().expect("a step runs").slots[slot];
        let (Some(original), Some(checker)) = (&s.original, &s.checker) else {
            return;
        };
        // Each node's record of checks on the work it did: agreed, caught.
        let (original_node, checker_node) = (original.placement.node, checker.placement.node);
        let mut count = |node: NodeId, agreed: bool| {
            let (passed, failed) = self.tallies.checks.entry(node).or_insert((0, 0));
            let tally = if agreed { passed } else { failed };
            *tally = tally.saturating_add(1);
        };
        match verdict {
            CheckVerdict::Agreed => count(original_node, true),
            CheckVerdict::OriginalWrong => count(original_node, false),
            CheckVerdict::CheckerWrong => {
                count(original_node, true);
                count(checker_node, false);
            }
            CheckVerdict::Undecided => {}
        }
        let s = &self.step.as_ref().expect("a step runs").slots[slot];
        let (Some(original), Some(checker)) = (&s.original, &s.checker) else {
            return;
        };
        self.out.push(Command::Report(ReportItem::SpotCheck {
            round: self.round,
            task: s.task,
            shard: s.entry.id.clone(),
            original: original.placement.node,
            checker: checker.placement.node,
            third,
            verdict,
        }));
    }

    /// Credits verified rows to nodes whose execution a spot check confirmed, and grants them
    /// a lottery ticket.
    fn confirm(&mut self, nodes: &[NodeId], rows: u64) {
        for node in nodes {
            let verified = self.tallies.verified_rows.entry(*node).or_insert(0);
            *verified = verified.saturating_add(rows);
            if !self.tallies.banned.contains(node) {
                self.out.push(Command::GrantTicket { node: *node });
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Accepting results, collecting, the outer step

    fn accept(&mut self, slot: usize, done: Done, verified: bool) {
        let step = self.step.as_mut().expect("a step runs");
        step.slots[slot].accepted = Some((done, verified));
        if step.slots.iter().all(|s| s.accepted.is_some()) {
            self.step_complete();
        }
    }

    /// Every slot has a result: re-run the unverified ones of nodes banned meanwhile, then
    /// collect (training) or evaluate.
    fn step_complete(&mut self) {
        let banned = self.tallies.banned.clone();
        let step = self.step.as_ref().expect("a step runs");
        let rerun: Vec<usize> = step
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.accepted
                    .as_ref()
                    .is_some_and(|(d, verified)| !verified && banned.contains(&d.placement.node))
            })
            .map(|(i, _)| i)
            .collect();
        if !rerun.is_empty() {
            if step.passes >= MAX_ATTEMPTS {
                self.fail("results kept coming from nodes found wrong; giving up".into());
                return;
            }
            self.step.as_mut().expect("a step runs").passes += 1;
            for slot in rerun {
                let task = self.mint_task();
                let s = self.slot_mut(slot);
                *s = Slot::new(s.entry.clone(), task);
                self.start_exec(slot, ExecRole::Original, Vec::new(), Vec::new());
            }
            return;
        }
        match step.kind {
            TaskKind::Gradient => {
                self.phase = Phase::Collecting;
                self.collect();
            }
            TaskKind::Evaluate => self.evaluated(),
        }
    }

    fn collect(&mut self) {
        let step = self.step.as_ref().expect("a step runs");
        let mut parts = Vec::with_capacity(step.slots.len());
        for s in &step.slots {
            let (done, _) = s.accepted.as_ref().expect("every slot accepted");
            let Some(update) = done.result.update else {
                self.fail("a training result without an update".into());
                return;
            };
            parts.push((done.placement.node, update, done.result.rows));
        }
        self.out.push(Command::Collect {
            round: self.round,
            parts,
        });
    }

    fn on_collected(&mut self, outcome: Result<(), CollectFailure>) {
        if self.phase != Phase::Collecting {
            return;
        }
        let failure = match outcome {
            Ok(()) => {
                self.phase = Phase::OuterStepping;
                self.out.push(Command::OuterStep { round: self.round });
                return;
            }
            Err(failure) => failure,
        };
        let step = self.step.as_mut().expect("a step runs");
        step.collect_failures += 1;
        if step.collect_failures >= MAX_ATTEMPTS {
            self.fail("the round's updates could not be collected".into());
            return;
        }
        let Some(index) = failure.index.filter(|i| *i < step.slots.len()) else {
            self.fail(format!("collecting the round's updates: {}", failure.error));
            return;
        };
        let slot = &step.slots[index];
        let (done, _) = slot.accepted.as_ref().expect("every slot accepted");
        let node = done.placement.node;
        let error = format!("update not collected: {}", failure.error);
        self.out.push(Command::Report(ReportItem::Failure {
            node,
            task: done.result.task,
            shard: slot.entry.id.clone(),
            error: error.clone(),
        }));
        // Re-run under a new task id elsewhere; the reduce starts over once it is in.
        let task = self.mint_task();
        let s = self.slot_mut(index);
        s.task = task;
        s.accepted = None;
        self.start_exec(index, ExecRole::Redo, vec![node], vec![(Some(node), error)]);
    }

    fn on_stepped(&mut self, stored: Result<CheckpointTensors, String>) {
        if self.phase != Phase::OuterStepping {
            return;
        }
        let tensors = match stored {
            Ok(tensors) => tensors,
            Err(error) => {
                self.fail(error);
                return;
            }
        };
        let step = self.step.take().expect("a step ran");
        let round = self.round;
        self.note_unverified(round, &step);
        self.superseded = self.stored.replace(tensors);
        let rows: u64 = step.slots.iter().map(|s| accepted(s).result.rows).sum();
        let loss: f64 = step
            .slots
            .iter()
            .map(|s| {
                let r = &accepted(s).result;
                f64::from(r.loss) * r.rows as f64 / rows.max(1) as f64
            })
            .sum();
        let assignments = self.credit(round, &step);
        self.round += 1;
        let epoch = (round / self.groups.len() as u32) + 1;
        self.out.push(Command::Report(ReportItem::Round {
            rounds: self.round,
            epoch,
            loss,
        }));
        self.phase = Phase::Checkpointing;
        self.out.push(Command::Checkpoint {
            round: self.round,
            tensors: self.stored.clone(),
            progress: Progress {
                tallies: self.tallies.clone(),
                assignments,
                rewind: self.rewind.clone(),
            },
        });
    }

    /// Notes the round as the earliest one with an unconfirmed result of each node that had
    /// none before, and keeps the weights the round started from while any node names it.
    fn note_unverified(&mut self, round: u32, step: &Step) {
        let mut named = false;
        for s in &step.slots {
            if let Some((done, false)) = &s.accepted {
                if let std::collections::btree_map::Entry::Vacant(entry) =
                    self.rewind.first_unverified.entry(done.placement.node)
                {
                    entry.insert(round);
                    named = true;
                }
            }
        }
        if let (true, Some(start)) = (named, self.stored.clone()) {
            self.rewind.starts.entry(round).or_insert(RoundStart {
                tensors: start,
                verified_rows: self.verified_at_round_start.clone(),
            });
        }
    }

    /// Credits a step's accepted tasks: rows to the compute node, the shard's bytes to the
    /// storage node it came from (unless the compute node had it cached). Answers where each
    /// task ran (shard, compute node, storage node).
    fn credit(&mut self, round: u32, step: &Step) -> Vec<(aic_protocol::ShardId, NodeId, NodeId)> {
        let mut assignments = Vec::new();
        for s in &step.slots {
            let done = accepted(s);
            let rows = self.tallies.compute_rows.entry(done.placement.node).or_insert(0);
            *rows = rows.saturating_add(done.result.rows);
            if done.result.cache_hits == 0 {
                let bytes = self
                    .tallies
                    .storage_bytes
                    .entry(done.placement.replica)
                    .or_insert(0);
                *bytes = bytes.saturating_add(s.entry.bytes);
            }
            if let Ok(shard) = s.entry.id.parse() {
                assignments.push((shard, done.placement.node, done.placement.replica));
            }
            self.out.push(Command::Report(ReportItem::Task {
                round,
                kind: step.kind,
                shard: s.entry.clone(),
                done: Box::new(done.clone()),
            }));
        }
        assignments
    }

    fn on_checkpointed(&mut self, outcome: CheckpointOutcome) {
        match self.phase {
            Phase::Checkpointing => match outcome {
                CheckpointOutcome::Recorded => {
                    // The ledger names the new weights now; the old ones can go.
                    self.drop_superseded();
                    self.out.push(Command::Publish);
                    self.begin_round();
                }
                CheckpointOutcome::NotRecorded => {
                    // The ledger still names the old weights: keep them.
                    self.superseded = None;
                    self.out.push(Command::Publish);
                    self.begin_round();
                }
                CheckpointOutcome::TakenOver => self.moved(),
            },
            Phase::Claiming(ending) => match outcome {
                CheckpointOutcome::TakenOver => self.moved(),
                CheckpointOutcome::Recorded | CheckpointOutcome::NotRecorded => self.settle(ending),
            },
            _ => {}
        }
    }

    fn drop_superseded(&mut self) {
        let (Some(old), Some(new)) = (self.superseded.take(), self.stored.as_ref()) else {
            return;
        };
        if self.rewind.starts.values().any(|start| start.tensors == old) {
            // A rewind may still go back to these weights.
            return;
        }
        let tensors: Vec<TensorRef> = std::iter::once(old.weights)
            .chain(old.optimizer_state)
            .filter(|t| *t != new.weights && Some(*t) != new.optimizer_state)
            .collect();
        if !tensors.is_empty() {
            self.out.push(Command::DropTensors {
                tensors,
                holders: old.holders,
            });
        }
    }

    // -----------------------------------------------------------------------------------------
    // Evaluation, the end, settlement

    fn evaluated(&mut self) {
        let step = self.step.take().expect("a step ran");
        let results: Vec<&TaskResult> = step.slots.iter().map(|s| &accepted(s).result).collect();
        let rows: u64 = results.iter().map(|r| r.rows).sum();
        let correct: u64 = results.iter().map(|r| r.correct).sum();
        let loss = results
            .iter()
            .map(|r| f64::from(r.loss) * r.rows as f64)
            .sum::<f64>()
            / rows.max(1) as f64;
        let (accuracy, r2) = if self.setup.regression {
            // R² over the whole held-out split: 1 − SSE/SST, SSE from the tasks' mean squared
            // errors, SST from their targets' sums (Σy, Σy²).
            let n = rows.max(1) as f64;
            let sum = |i: usize| -> f64 {
                results
                    .iter()
                    .map(|r| r.values.get(i).copied().map_or(0.0, f64::from))
                    .sum()
            };
            let sst = sum(1) - sum(0) * sum(0) / n;
            (None, Some(if sst > 0.0 { 1.0 - loss * n / sst } else { 0.0 }))
        } else {
            (Some(correct as f64 / rows.max(1) as f64), None)
        };
        let round = self.round;
        self.credit(round, &step);
        let last = round >= self.total_rounds();
        self.out.push(Command::Report(ReportItem::Evaluation {
            round,
            last,
            rows,
            loss,
            accuracy,
            r2,
        }));
        self.evaluated_at = Some(round);
        if !last {
            // A periodic evaluation: training goes on from the same weights.
            self.begin_round();
            return;
        }
        self.end(if self.cancelled {
            Ending::Cancelled
        } else {
            Ending::Done
        });
    }

    fn fail(&mut self, error: String) {
        if matches!(
            self.phase,
            Phase::Claiming(_) | Phase::Settling(_) | Phase::Finished
        ) {
            return;
        }
        self.out.push(Command::Report(ReportItem::Error(error)));
        self.end(Ending::Failed);
    }

    /// Ends the job: anything in flight is forgotten, and the job is claimed once more on the
    /// ledger before it is paid (a replica that took it over settles it).
    fn end(&mut self, ending: Ending) {
        self.step = None;
        self.execs.clear();
        self.phase = Phase::Claiming(ending);
        self.out.push(Command::Checkpoint {
            round: self.round,
            tensors: self.stored.clone(),
            progress: Progress {
                tallies: self.tallies.clone(),
                assignments: Vec::new(),
                rewind: self.rewind.clone(),
            },
        });
    }

    fn moved(&mut self) {
        self.step = None;
        self.execs.clear();
        self.phase = Phase::Finished;
        self.out.push(Command::Finish(Ending::Moved));
    }

    fn settle(&mut self, ending: Ending) {
        let completed = ending == Ending::Done;
        let verified = self
            .tallies
            .verified_rows
            .iter()
            .filter(|(node, _)| !self.tallies.banned.contains(node))
            .filter_map(|(node, rows)| Some((*node, self.payout_address(node)?, *rows)))
            .collect();
        let slash = self
            .tallies
            .banned
            .iter()
            .filter_map(|node| Some((*node, self.payout_address(node)?)))
            .collect();
        let t = &self.tallies;
        let nodes = t
            .compute_rows
            .keys()
            .chain(t.checks.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|node| {
                let (checks_passed, checks_failed) = t.checks.get(node).copied().unwrap_or((0, 0));
                let rows = t.compute_rows.get(node).copied().unwrap_or(0);
                aic_ledger::state::NodeWork {
                    node: *node,
                    rows,
                    verified_rows: t.verified_rows.get(node).copied().unwrap_or(0).min(rows),
                    checks_passed,
                    checks_failed,
                    confirmed_wrong: t.banned.contains(node),
                }
            })
            .collect();
        // Settled here: no rewind can come any more, so the rounds kept for one can go.
        for start in std::mem::take(&mut self.rewind.starts).into_values() {
            if Some(&start.tensors) != self.stored.as_ref() {
                self.drop_tensors(start.tensors);
            }
        }
        self.phase = Phase::Settling(ending);
        self.out.push(Command::Settle(SettleOrder {
            completed,
            work: self.work_done(completed),
            verified,
            slash,
            nodes,
            trained: if completed { self.stored.clone() } else { None },
        }));
    }

    fn on_settled(&mut self) {
        let Phase::Settling(ending) = self.phase else {
            return;
        };
        self.phase = Phase::Finished;
        self.out.push(Command::Finish(ending));
    }

    // -----------------------------------------------------------------------------------------
    // What the engine reads from its view of the nodes

    fn replicas(&self) -> Vec<NodeId> {
        replicas_of(&self.nodes, &self.setup.dataset)
    }

    /// `nodes` and every node that could agree with one of them on a wrong result: the same
    /// operator (payout account), the same network (an IPv4 /24 or IPv6 /48, unless loopback,
    /// where a one-machine grid's nodes cannot be told apart by address), or paid through the
    /// job's own payer. None of them may check `nodes`' work.
    pub fn could_collude_with(&self, nodes: &[NodeId]) -> Vec<NodeId> {
        let of = |id: &NodeId| self.nodes.iter().find(|n| n.node_id == *id);
        let accounts: Vec<&str> = nodes
            .iter()
            .filter_map(of)
            .map(|n| n.payout_address.as_str())
            .filter(|a| !a.is_empty())
            .collect();
        let networks: Vec<Vec<u8>> = nodes
            .iter()
            .filter_map(of)
            .filter_map(|n| network_of(&n.quic_addr))
            .collect();
        let payer = self.setup.payer.to_string();
        let mut excluded = nodes.to_vec();
        for n in &self.nodes {
            let related = accounts.contains(&n.payout_address.as_str())
                || n.payout_address == payer
                || network_of(&n.quic_addr).is_some_and(|net| networks.contains(&net));
            if related && !excluded.contains(&n.node_id) {
                excluded.push(n.node_id);
            }
        }
        excluded
    }

    /// Whom a check of `nodes`' work must avoid: every node that could collude with them when
    /// another compute node is up; else only `nodes` themselves. A grid of one operator (a lab
    /// cluster) still re-runs work on its other nodes, which catches faulty hardware, though not
    /// collusion.
    fn independent_of(&self, nodes: &[NodeId]) -> Vec<NodeId> {
        let independent = self.could_collude_with(nodes);
        let any_left = self.nodes.iter().any(|n| {
            n.role == Role::Compute && n.state == NodeState::Up && !independent.contains(&n.node_id)
        });
        if any_left {
            independent
        } else {
            nodes.to_vec()
        }
    }

    fn payout_address(&self, node: &NodeId) -> Option<Address> {
        self.nodes
            .iter()
            .find(|n| &n.node_id == node)
            .and_then(|n| n.payout_address.parse().ok())
    }

    fn name(&self, node: &NodeId) -> String {
        self.nodes
            .iter()
            .find(|n| &n.node_id == node)
            .map_or_else(|| node.short(), |n| n.name.clone())
    }
}

/// Storage nodes up that report `dataset` whole.
pub fn replicas_of(nodes: &[NodeStatus], dataset: &str) -> Vec<NodeId> {
    nodes
        .iter()
        .filter(|n| {
            n.role == Role::Storage
                && n.state == NodeState::Up
                && n.holdings
                    .iter()
                    .any(|h| h.dataset == dataset && h.healthy_shards == h.shards)
        })
        .map(|n| n.node_id)
        .collect()
}

impl Slot {
    fn new(entry: ShardEntry, task: TaskId) -> Self {
        Slot {
            entry,
            task,
            original: None,
            checker: None,
            third: None,
            checker_vs_third: None,
            original_vs_third: None,
            accepted: None,
        }
    }
}

fn accepted(slot: &Slot) -> &Done {
    &slot.accepted.as_ref().expect("every slot accepted").0
}

fn s_task(step: &Option<Step>, slot: usize) -> TaskId {
    step.as_ref().expect("a step runs").slots[slot].task
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;

/// The network a node's address is in, for telling operators apart: an IPv4 /24 or an IPv6 /48.
/// None for loopback and unspecified addresses (every node of a one-machine grid) and for an
/// address that does not parse.
fn network_of(addr: &str) -> Option<Vec<u8>> {
    let ip = addr.parse::<std::net::SocketAddr>().ok()?.ip();
    if ip.is_loopback() || ip.is_unspecified() {
        return None;
    }
    Some(match ip {
        std::net::IpAddr::V4(v4) => v4.octets()[..3].to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets()[..6].to_vec(),
    })
}
