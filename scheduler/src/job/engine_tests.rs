//! Scenario tests of the job engine: each drives it with events and asserts the commands it
//! answers. Nodes 1–3 are compute nodes, node 100 the storage node holding the dataset.

use std::collections::HashMap;

use aic_protocol::messages::{Capacity, DatasetHolding, NodeState, NodeStatus, TaskKind, TaskResult};
use aic_protocol::tensor::TensorRef;
use aic_protocol::{JobId, NodeId, Role, ShardId, TaskId};

use super::*;

const PARAMETERS: u64 = 1_000;
const STORAGE: u8 = 100;
const DATASET: &str = "dataset-1";

fn id(b: u8) -> NodeId {
    hex::encode([b; 32]).parse().expect("64 hex digits")
}

fn address(b: u8) -> Address {
    Address([b; 32])
}

fn node(b: u8, role: Role) -> NodeStatus {
    let holdings = if role == Role::Storage {
        vec![DatasetHolding {
            dataset: DATASET.into(),
            healthy_shards: 6,
            shards: 6,
            bytes: 6_000,
            replicas_wanted: 1,
        }]
    } else {
        Vec::new()
    };
    NodeStatus {
        node_id: id(b),
        name: format!("node-{b}"),
        role,
        version: "test".into(),
        quic_addr: format!("127.0.0.1:{}", 7000 + u16::from(b)),
        metrics_addr: String::new(),
        state: NodeState::Up,
        last_heartbeat_ms_ago: Some(0),
        times_marked_down: 0,
        capacity: Capacity::default(),
        rtts: Vec::new(),
        holdings,
        payout_address: address(b).to_string(),
    }
}

/// Three compute nodes and the storage node.
fn grid() -> Vec<NodeStatus> {
    vec![
        node(1, Role::Compute),
        node(2, Role::Compute),
        node(3, Role::Compute),
        node(STORAGE, Role::Storage),
    ]
}

fn shard(i: u8) -> ShardEntry {
    ShardEntry {
        id: ShardId::of_content(&[i]).to_string(),
        rows: 100 + u64::from(i),
        bytes: 1_000 * (u64::from(i) + 1),
    }
}

fn tensors(n: u8) -> CheckpointTensors {
    CheckpointTensors {
        weights: TensorRef {
            hash: [n; 32],
            elements: PARAMETERS,
        },
        optimizer_state: None,
        holders: vec![id(STORAGE)],
    }
}

fn placement(b: u8) -> Placement<NodeId> {
    Placement {
        node: id(b),
        replica: id(STORAGE),
        rtt_ms: 1.0,
        transfer_secs: 0.0,
        queue_secs: 0.0,
        compute_secs: 0.0,
        reputation: 1.0,
        cost: 1.0,
    }
}

fn fees() -> Vec<(Address, Amount, PayoutKind)> {
    vec![
        (address(200), Amount(7), PayoutKind::DatasetFee),
        (address(201), Amount(5), PayoutKind::ModelFee),
    ]
}

/// `train` shards, `steps` rounds per epoch, `epochs` epochs, two held-out shards.
fn setup(train: u8, steps: u32, epochs: u32) -> EngineSetup {
    EngineSetup {
        job: JobId::from_bytes([9; 16]),
        dataset: DATASET.into(),
        train: (0..train).map(shard).collect(),
        test: vec![shard(10), shard(11)],
        steps_per_epoch: steps,
        epochs,
        evaluate_every_rounds: 0,
        parameters: PARAMETERS,
        regression: false,
        fees: fees(),
        task_seed: 42,
        payer: address(250),
        resumed: None,
        verification: Verification::Sampled,
    }
}

/// A result for `task` on `entry` whose update is named by `version` (equal versions agree).
fn result(task: TaskId, entry: &ShardEntry, kind: TaskKind, version: u8) -> TaskResult {
    let update = (kind == TaskKind::Gradient).then_some(TensorRef {
        hash: [version; 32],
        elements: PARAMETERS,
    });
    let (loss, correct) = (
        0.5,
        if kind == TaskKind::Evaluate {
            entry.rows / 2
        } else {
            0
        },
    );
    TaskResult {
        task,
        rows: entry.rows,
        loss,
        update,
        values: Vec::new(),
        correct,
        digest: TaskResult::compute_digest(&task, entry.rows, loss, update.as_ref(), &[], correct),
        fetch_micros: 1,
        compute_micros: 1,
        cache_hits: 0,
        weights_fetched_bytes: 0,
        backend: "cpu".into(),
    }
}

fn with_digest(mut r: TaskResult) -> TaskResult {
    r.digest = TaskResult::compute_digest(&r.task, r.rows, r.loss, r.update.as_ref(), &r.values, r.correct);
    r
}

/// The engine with what the tests need to answer its commands: each execution's shard, task
/// and kind as its commands named them.
struct Harness {
    engine: Engine,
    shard_of: HashMap<u64, ShardEntry>,
    task_of: HashMap<u64, (TaskId, TaskKind)>,
}

impl Harness {
    fn new(setup: EngineSetup) -> Self {
        Harness {
            engine: Engine::new(setup),
            shard_of: HashMap::new(),
            task_of: HashMap::new(),
        }
    }

    fn send(&mut self, event: Event) -> Vec<Command> {
        let commands = self.engine.handle(event);
        for command in &commands {
            match command {
                Command::Place { exec, shard, .. } => {
                    self.shard_of.insert(*exec, shard.clone());
                }
                Command::Dispatch { exec, task, kind, .. } => {
                    self.task_of.insert(*exec, (*task, *kind));
                }
                _ => {}
            }
        }
        commands
    }

    /// A new job from `Start` to its first round's placements.
    fn started(setup: EngineSetup) -> (Self, Vec<Command>) {
        let mut h = Harness::new(setup);
        assert_eq!(h.send(Event::Start), [Command::RefreshNodes { after: None }]);
        assert_eq!(h.send(Event::Nodes(Ok(grid()))), [Command::StoreState]);
        assert_eq!(
            h.send(Event::Stored(Ok(tensors(0)))),
            [Command::RefreshNodes { after: None }]
        );
        let places = h.send(Event::Nodes(Ok(grid())));
        (h, places)
    }

    /// Places `exec` on node `b` and answers its dispatch with a result of `version`.
    fn run(&mut self, exec: u64, b: u8, version: u8) -> Vec<Command> {
        let dispatched = self.send(Event::Placed {
            exec,
            placement: Some(placement(b)),
        });
        assert!(
            matches!(dispatched.as_slice(), [Command::Dispatch { exec: e, .. }] if *e == exec),
            "{dispatched:?}"
        );
        let (task, kind) = self.task_of[&exec];
        let outcome = Ok(result(task, &self.shard_of[&exec], kind, version));
        self.send(Event::Ran { exec, outcome })
    }

    /// Places `exec` on node `b` and answers its dispatch with `outcome(task, shard)`.
    fn run_with(
        &mut self,
        exec: u64,
        b: u8,
        outcome: impl FnOnce(TaskId, &ShardEntry) -> Result<TaskResult, String>,
    ) -> Vec<Command> {
        self.send(Event::Placed {
            exec,
            placement: Some(placement(b)),
        });
        let (task, _) = self.task_of[&exec];
        let outcome = outcome(task, &self.shard_of[&exec]);
        self.send(Event::Ran { exec, outcome })
    }

    /// Runs one unchecked round of the given executions on nodes in turn, through the outer
    /// step; answers the checkpoint command's output.
    fn unchecked_round(&mut self, execs: &[u64], stored: u8) -> Vec<Command> {
        for (i, exec) in execs.iter().enumerate() {
            let b = 1 + (i as u8 % 3);
            self.run(*exec, b, 1);
            let slot = i;
            let out = self.send(Event::CheckDrawn { slot, check: false });
            if i + 1 == execs.len() {
                assert!(matches!(out.as_slice(), [Command::Collect { .. }]), "{out:?}");
            }
        }
        assert_eq!(
            self.send(Event::Collected(Ok(()))),
            [Command::OuterStep {
                round: self.engine.rounds()
            }]
        );
        self.send(Event::Stepped(Ok(tensors(stored))))
    }
}

fn verdict(agree: bool) -> Comparison {
    if agree {
        Comparison::Agree
    } else {
        Comparison::Disagree
    }
}

fn execs_of(commands: &[Command]) -> Vec<u64> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Place { exec, .. } => Some(*exec),
            _ => None,
        })
        .collect()
}

fn decisions(commands: Vec<Command>) -> Vec<Command> {
    commands
        .into_iter()
        .filter(|c| !matches!(c, Command::Report(_)))
        .collect()
}

fn is_error(command: &Command) -> bool {
    matches!(command, Command::Report(ReportItem::Error(_)))
}

fn claim(round: u32, stored: Option<CheckpointTensors>, tallies: Tallies) -> Command {
    claim_with(round, stored, tallies, RewindPoints::default())
}

fn claim_with(
    round: u32,
    stored: Option<CheckpointTensors>,
    tallies: Tallies,
    rewind: RewindPoints,
) -> Command {
    Command::Checkpoint {
        round,
        tensors: stored,
        progress: Progress {
            tallies,
            assignments: Vec::new(),
            rewind,
        },
    }
}

fn settle_order(commands: &[Command]) -> SettleOrder {
    commands
        .iter()
        .find_map(|c| match c {
            Command::Settle(order) => Some(order.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no settle order in {commands:?}"))
}

// ---------------------------------------------------------------------------------------------
// Starting

#[test]
fn a_job_starts_by_reading_the_registry() {
    let mut h = Harness::new(setup(2, 1, 1));
    assert_eq!(h.send(Event::Start), [Command::RefreshNodes { after: None }]);
    // A second start is no new job.
    assert_eq!(h.send(Event::Start), []);
}

#[test]
fn without_a_replica_yet_the_registry_is_read_again_after_a_pause() {
    let mut h = Harness::new(setup(2, 1, 1));
    h.send(Event::Start);
    let no_storage: Vec<NodeStatus> = grid().into_iter().filter(|n| n.role == Role::Compute).collect();
    assert_eq!(
        h.send(Event::Nodes(Ok(no_storage))),
        [Command::RefreshNodes {
            after: Some(REPLICA_POLL)
        }]
    );
    assert_eq!(h.send(Event::Nodes(Ok(grid()))), [Command::StoreState]);
}

#[test]
fn when_the_replica_wait_runs_out_the_job_fails_unpaid() {
    let mut h = Harness::new(setup(2, 1, 1));
    h.send(Event::Start);
    let no_storage: Vec<NodeStatus> = grid().into_iter().filter(|n| n.role == Role::Compute).collect();
    for _ in 0..MAX_REPLICA_WAITS {
        h.send(Event::Nodes(Ok(no_storage.clone())));
    }
    assert_eq!(
        h.send(Event::Nodes(Ok(no_storage.clone()))),
        [Command::StoreState]
    );
    h.send(Event::Stored(Ok(tensors(0))));
    let out = h.send(Event::Nodes(Ok(no_storage)));
    assert!(is_error(&out[0]), "{out:?}");
    assert_eq!(out[1], claim(0, Some(tensors(0)), Tallies::default()));
    let out = h.send(Event::Checkpointed(CheckpointOutcome::Recorded));
    let order = settle_order(&out);
    assert!(!order.completed && order.work == WorkDone::default() && order.trained.is_none());
    assert_eq!(
        h.send(Event::Settled { ok: true }),
        [Command::Finish(Ending::Failed)]
    );
    assert!(h.engine.finished());
}

#[test]
fn the_registry_failing_fails_the_job() {
    let mut h = Harness::new(setup(2, 1, 1));
    h.send(Event::Start);
    let out = h.send(Event::Nodes(Err("mailbox closed".into())));
    assert!(is_error(&out[0]));
    assert_eq!(out[1], claim(0, None, Tallies::default()));
}

#[test]
fn storing_the_initial_weights_failing_fails_the_job() {
    let mut h = Harness::new(setup(2, 1, 1));
    h.send(Event::Start);
    h.send(Event::Nodes(Ok(grid())));
    let out = h.send(Event::Stored(Err("no storage node took the weights".into())));
    assert!(is_error(&out[0]));
    assert_eq!(out[1], claim(0, None, Tallies::default()));
}

#[test]
fn a_round_places_every_nth_shard_with_no_exclusions() {
    let (_, places) = Harness::started(setup(4, 2, 1));
    assert_eq!(
        places,
        [
            Command::Place {
                exec: 0,
                shard: shard(0),
                exclude: vec![],
                after: None
            },
            Command::Place {
                exec: 1,
                shard: shard(2),
                exclude: vec![],
                after: None
            },
        ]
    );
}

#[test]
fn a_resumed_job_starts_at_its_round_with_its_weights_and_tallies() {
    let mut s = setup(4, 2, 1);
    let mut tallies = Tallies::default();
    tallies.compute_rows.insert(id(1), 500);
    s.resumed = Some(Resumed {
        round: 1,
        tallies: tallies.clone(),
        tensors: Some(tensors(7)),
        rewind: RewindPoints::default(),
    });
    let mut h = Harness::new(s);
    h.send(Event::Start);
    // No initial weights to store: the checkpoint's are on the storage nodes.
    assert_eq!(
        h.send(Event::Nodes(Ok(grid()))),
        [Command::RefreshNodes { after: None }]
    );
    let places = h.send(Event::Nodes(Ok(grid())));
    let shards: Vec<ShardEntry> = places
        .iter()
        .filter_map(|c| match c {
            Command::Place { shard, .. } => Some(shard.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(shards, [shard(1), shard(3)]);
    let out = h.send(Event::Placed {
        exec: 0,
        placement: Some(placement(1)),
    });
    assert!(
        matches!(&out[..], [Command::Dispatch { round: 1, weights, .. }] if *weights == tensors(7)),
        "{out:?}"
    );
    assert_eq!(h.engine.tallies(), &tallies);
}

#[test]
fn resumed_runs_mint_task_ids_of_their_own() {
    let (a, _) = Harness::started(setup(2, 1, 1));
    let mut other = setup(2, 1, 1);
    other.task_seed = 43;
    let (b, _) = Harness::started(other);
    let first = |h: &Harness| h.engine.step.as_ref().unwrap().slots[0].task;
    assert_ne!(first(&a), first(&b));
}

// ---------------------------------------------------------------------------------------------
// Placement, dispatch, retries

#[test]
fn a_placement_dispatches_the_task_with_the_rounds_weights() {
    let (mut h, places) = Harness::started(setup(2, 1, 1));
    let exec = execs_of(&places)[0];
    let out = h.send(Event::Placed {
        exec,
        placement: Some(placement(2)),
    });
    let [Command::Dispatch {
        exec: e,
        kind,
        round,
        shard: s,
        placement: p,
        weights,
        ..
    }] = out.as_slice()
    else {
        panic!("{out:?}")
    };
    assert_eq!((*e, *kind, *round), (exec, TaskKind::Gradient, 0));
    assert_eq!((s, p, weights), (&shard(0), &placement(2), &tensors(0)));
}

#[test]
fn busy_nodes_are_asked_again_after_a_pause() {
    let (mut h, places) = Harness::started(setup(2, 1, 1));
    let exec = execs_of(&places)[0];
    assert_eq!(
        h.send(Event::Placed {
            exec,
            placement: None
        }),
        [Command::Place {
            exec,
            shard: shard(0),
            exclude: vec![],
            after: Some(SLOT_POLL)
        }]
    );
}

#[test]
fn with_no_eligible_node_the_job_fails() {
    let mut h = Harness::new(setup(1, 1, 1));
    h.send(Event::Start);
    let storage_only = vec![node(STORAGE, Role::Storage)];
    h.send(Event::Nodes(Ok(storage_only.clone())));
    h.send(Event::Stored(Ok(tensors(0))));
    let places = h.send(Event::Nodes(Ok(storage_only)));
    let out = h.send(Event::Placed {
        exec: execs_of(&places)[0],
        placement: None,
    });
    assert!(is_error(&out[0]), "{out:?}");
    assert!(matches!(out[1], Command::Checkpoint { .. }));
}

#[test]
fn a_failed_task_is_placed_elsewhere_and_reported() {
    let (mut h, places) = Harness::started(setup(2, 1, 1));
    let exec = execs_of(&places)[0];
    let out = h.run_with(exec, 2, |_, _| Err("connection lost".into()));
    let (task, _) = h.task_of[&exec];
    assert_eq!(
        out,
        [
            Command::Report(ReportItem::Attempt {
                kind: TaskKind::Gradient,
                ok: false
            }),
            Command::Report(ReportItem::Failure {
                node: id(2),
                task,
                shard: shard(0).id,
                error: "connection lost".into()
            }),
            Command::Place {
                exec,
                shard: shard(0),
                exclude: vec![id(2)],
                after: None
            },
        ]
    );
}

#[test]
fn a_task_failing_on_four_nodes_fails_the_job_and_pays_no_compute() {
    let (mut h, places) = Harness::started(setup(1, 1, 1));
    let exec = execs_of(&places)[0];
    let mut out = Vec::new();
    for b in 1..=4 {
        out = h.run_with(exec, b, |_, _| Err("crashed".into()));
    }
    let error = out.iter().find(|c| is_error(c)).expect("the job failed");
    let Command::Report(ReportItem::Error(message)) = error else {
        unreachable!()
    };
    assert!(message.starts_with("task on shard"), "{message}");
    let out = h.send(Event::Checkpointed(CheckpointOutcome::Recorded));
    let order = settle_order(&out);
    assert!(!order.completed);
    assert!(order.work.compute_rows.is_empty() && order.work.fees.is_empty());
}

#[test]
fn a_result_for_another_task_is_refused() {
    let (mut h, places) = Harness::started(setup(2, 1, 1));
    let exec = execs_of(&places)[0];
    let out = h.run_with(exec, 1, |_, entry| {
        Ok(result(
            TaskId::from_bytes([0xee; 16]),
            entry,
            TaskKind::Gradient,
            1,
        ))
    });
    assert_eq!(
        out[0],
        Command::Report(ReportItem::Attempt {
            kind: TaskKind::Gradient,
            ok: false
        })
    );
    assert!(matches!(&out[2], Command::Place { exclude, .. } if exclude == &vec![id(1)]));
}

#[test]
fn a_result_whose_digest_does_not_match_its_numbers_is_refused() {
    let (mut h, places) = Harness::started(setup(2, 1, 1));
    let exec = execs_of(&places)[0];
    let out = h.run_with(exec, 1, |task, entry| {
        let mut r = result(task, entry, TaskKind::Gradient, 1);
        r.loss = 0.01;
        Ok(r)
    });
    assert!(matches!(&out[2], Command::Place { .. }), "{out:?}");
}

#[test]
fn an_update_of_the_wrong_length_is_refused() {
    let (mut h, places) = Harness::started(setup(2, 1, 1));
    let exec = execs_of(&places)[0];
    let out = h.run_with(exec, 1, |task, entry| {
        let mut r = result(task, entry, TaskKind::Gradient, 1);
        r.update = Some(TensorRef {
            hash: [1; 32],
            elements: PARAMETERS + 1,
        });
        Ok(with_digest(r))
    });
    assert!(matches!(&out[2], Command::Place { .. }), "{out:?}");
}

#[test]
fn a_non_finite_loss_or_the_wrong_rows_is_refused() {
    let (mut h, places) = Harness::started(setup(2, 1, 1));
    let [a, b] = execs_of(&places)[..] else { panic!() };
    let nan = h.run_with(a, 1, |task, entry| {
        let mut r = result(task, entry, TaskKind::Gradient, 1);
        r.loss = f32::NAN;
        Ok(with_digest(r))
    });
    assert!(matches!(&nan[2], Command::Place { .. }), "{nan:?}");
    let rows = h.run_with(b, 1, |task, entry| {
        let mut r = result(task, entry, TaskKind::Gradient, 1);
        r.rows += 1;
        Ok(with_digest(r))
    });
    assert!(matches!(&rows[2], Command::Place { .. }), "{rows:?}");
}

// ---------------------------------------------------------------------------------------------
// Spot checks

#[test]
fn a_training_result_asks_the_rater_whether_to_check_it() {
    let (mut h, places) = Harness::started(setup(2, 1, 1));
    let out = h.run(execs_of(&places)[1], 3, 1);
    assert_eq!(decisions(out), [Command::DrawCheck { slot: 1, node: id(3) }]);
}

#[test]
fn unchecked_results_are_collected_in_shard_order_whatever_order_they_came_in() {
    let (mut h, places) = Harness::started(setup(2, 1, 1));
    let [a, b] = execs_of(&places)[..] else { panic!() };
    h.run(b, 2, 5);
    h.send(Event::CheckDrawn {
        slot: 1,
        check: false,
    });
    h.run(a, 1, 4);
    let out = h.send(Event::CheckDrawn {
        slot: 0,
        check: false,
    });
    let part = |b: u8, v: u8, rows: u64| {
        (
            id(b),
            TensorRef {
                hash: [v; 32],
                elements: PARAMETERS,
            },
            rows,
        )
    };
    assert_eq!(
        out,
        [Command::Collect {
            round: 0,
            parts: vec![part(1, 4, shard(0).rows), part(2, 5, shard(1).rows)]
        }]
    );
}

#[test]
fn a_drawn_check_is_placed_away_from_the_original() {
    let (mut h, places) = Harness::started(setup(2, 1, 1));
    h.run(execs_of(&places)[0], 2, 1);
    let out = h.send(Event::CheckDrawn { slot: 0, check: true });
    assert!(
        matches!(&out[..], [Command::Place { shard: s, exclude, after: None, .. }] if *s == shard(0) && exclude == &vec![id(2)]),
        "{out:?}"
    );
}

/// Runs slot 0's original on node 1 and a checker on node 2 (versions given); answers the
/// harness, the checker's exec and the compare command's output.
fn checked(original: u8, checker: u8) -> (Harness, Vec<u64>, Vec<Command>) {
    let (mut h, places) = Harness::started(setup(2, 1, 1));
    let execs = execs_of(&places);
    h.run(execs[0], 1, original);
    let place = h.send(Event::CheckDrawn { slot: 0, check: true });
    let check = execs_of(&place)[0];
    let out = h.run(check, 2, checker);
    (h, vec![execs[0], execs[1], check], out)
}

#[test]
fn a_checker_result_is_compared_with_the_original() {
    let (h, execs, out) = checked(1, 1);
    let (task, _) = h.task_of[&execs[0]];
    assert_eq!(h.task_of[&execs[2]].0, task, "a check re-runs the same task");
    assert!(
        matches!(&decisions(out)[..], [Command::Compare { slot: 0, pair: Pair::OriginalChecker, a, b }] if a.0 == id(1) && b.0 == id(2)),
    );
}

#[test]
fn agreement_rates_both_credits_their_rows_and_grants_tickets() {
    let (mut h, _, _) = checked(1, 1);
    let out = h.send(Event::Compared {
        slot: 0,
        pair: Pair::OriginalChecker,
        outcome: Comparison::Agree,
    });
    assert_eq!(
        decisions(out),
        [
            Command::Rate {
                node: id(1),
                matched: true
            },
            Command::Rate {
                node: id(2),
                matched: true
            },
            Command::GrantTicket { node: id(1) },
            Command::GrantTicket { node: id(2) },
        ]
    );
    let rows = shard(0).rows;
    assert_eq!(
        h.engine.tallies().verified_rows,
        BTreeMap::from([(id(1), rows), (id(2), rows)])
    );
}

#[test]
fn a_check_no_other_node_can_run_leaves_the_result_unverified() {
    let mut h = Harness::new(setup(1, 1, 1));
    let one_compute = vec![node(1, Role::Compute), node(STORAGE, Role::Storage)];
    h.send(Event::Start);
    h.send(Event::Nodes(Ok(one_compute.clone())));
    h.send(Event::Stored(Ok(tensors(0))));
    let places = h.send(Event::Nodes(Ok(one_compute)));
    h.run(execs_of(&places)[0], 1, 1);
    let place = h.send(Event::CheckDrawn { slot: 0, check: true });
    let out = h.send(Event::Placed {
        exec: execs_of(&place)[0],
        placement: None,
    });
    assert!(
        matches!(&out[..], [Command::Collect { parts, .. }] if parts[0].0 == id(1)),
        "{out:?}"
    );
    assert!(h.engine.tallies().verified_rows.is_empty());
}

#[test]
fn a_disagreement_calls_a_third_execution_away_from_both() {
    let (mut h, _, _) = checked(1, 2);
    let out = h.send(Event::Compared {
        slot: 0,
        pair: Pair::OriginalChecker,
        outcome: Comparison::Disagree,
    });
    assert!(
        matches!(&out[..], [Command::Place { exclude, .. }] if exclude == &vec![id(1), id(2)]),
        "{out:?}"
    );
}

/// A disagreement between node 1 (original) and node 2 (checker), a third run on node 3:
/// answers the harness, the executions and the output of both comparisons.
fn third(checker_vs_third: bool, original_vs_third: bool) -> (Harness, Vec<u64>, Vec<Command>) {
    let (mut h, mut execs, _) = checked(1, 2);
    let place = h.send(Event::Compared {
        slot: 0,
        pair: Pair::OriginalChecker,
        outcome: Comparison::Disagree,
    });
    let exec = execs_of(&place)[0];
    execs.push(exec);
    let compares = h.run(exec, 3, 2);
    assert_eq!(
        decisions(compares)
            .iter()
            .filter(|c| matches!(c, Command::Compare { .. }))
            .count(),
        2
    );
    let first = h.send(Event::Compared {
        slot: 0,
        pair: Pair::CheckerThird,
        outcome: verdict(checker_vs_third),
    });
    assert_eq!(first, [], "the verdict waits for both comparisons");
    let out = h.send(Event::Compared {
        slot: 0,
        pair: Pair::OriginalThird,
        outcome: verdict(original_vs_third),
    });
    (h, execs, out)
}

#[test]
fn a_third_siding_with_the_checker_bans_the_original() {
    let (h, execs, out) = third(true, false);
    let (task, _) = h.task_of[&execs[0]];
    let rows = shard(0).rows;
    assert_eq!(
        decisions(out.clone()),
        [
            Command::Rate {
                node: id(1),
                matched: false
            },
            Command::Rate {
                node: id(2),
                matched: true
            },
            Command::Rate {
                node: id(3),
                matched: true
            },
            Command::Penalise { node: id(1), task },
            Command::Ban { node: id(1) },
            Command::GrantTicket { node: id(2) },
            Command::GrantTicket { node: id(3) },
        ]
    );
    assert!(out.iter().any(|c| matches!(
        c,
        Command::Report(ReportItem::SpotCheck { verdict: CheckVerdict::OriginalWrong, third: Some(t), .. }) if *t == id(3)
    )));
    let tallies = h.engine.tallies();
    assert!(tallies.banned.contains(&id(1)));
    assert_eq!(
        tallies.verified_rows,
        BTreeMap::from([(id(2), rows), (id(3), rows)])
    );
}

#[test]
fn a_third_siding_with_the_original_bans_the_checker_and_keeps_the_original() {
    let (mut h, execs, out) = third(false, true);
    assert!(decisions(out).contains(&Command::Ban { node: id(2) }));
    // Slot 1 next, unchecked: the round's parts use the original's update for slot 0.
    h.run(execs[1], 3, 1);
    let out = h.send(Event::CheckDrawn {
        slot: 1,
        check: false,
    });
    assert!(
        matches!(&out[..], [Command::Collect { parts, .. }] if parts[0].0 == id(1) && parts[0].1.hash == [1; 32])
    );
}

#[test]
fn three_disagreeing_executions_fail_the_round_and_ban_nobody() {
    let (h, _, out) = third(false, false);
    assert!(out.iter().any(|c| matches!(
        c,
        Command::Report(ReportItem::SpotCheck {
            verdict: CheckVerdict::Undecided,
            ..
        })
    )));
    assert!(out.iter().any(is_error));
    assert!(!out
        .iter()
        .any(|c| matches!(c, Command::Ban { .. } | Command::Penalise { .. })));
    assert!(h.engine.tallies().banned.is_empty());
}

#[test]
fn no_node_for_a_third_execution_leaves_the_check_undecided() {
    let (mut h, _, _) = checked(1, 2);
    let place = h.send(Event::Compared {
        slot: 0,
        pair: Pair::OriginalChecker,
        outcome: Comparison::Disagree,
    });
    let exec = execs_of(&place)[0];
    // Node 3 is up, so the engine waits for it; then it goes and nothing is eligible.
    h.send(Event::Nodes(Ok(vec![
        node(1, Role::Compute),
        node(2, Role::Compute),
        node(STORAGE, Role::Storage),
    ])));
    let out = h.send(Event::Placed {
        exec,
        placement: None,
    });
    assert!(out.iter().any(|c| matches!(
        c,
        Command::Report(ReportItem::SpotCheck {
            verdict: CheckVerdict::Undecided,
            third: None,
            ..
        })
    )));
    assert!(out.iter().any(is_error));
}

#[test]
fn a_node_marked_down_during_a_check_is_replaced_for_the_check() {
    let (mut h, places) = Harness::started(setup(2, 1, 1));
    h.run(execs_of(&places)[0], 1, 1);
    let place = h.send(Event::CheckDrawn { slot: 0, check: true });
    let check = execs_of(&place)[0];
    let out = h.run_with(check, 2, |_, _| {
        Err("the node was marked down while running the task".into())
    });
    assert!(
        matches!(out.last(), Some(Command::Place { exec, exclude, .. }) if *exec == check && exclude == &vec![id(1), id(2)]),
        "{out:?}"
    );
}

#[test]
fn a_ban_mid_round_reruns_the_banned_nodes_unverified_results() {
    // Slot 1 ran unchecked on node 1; slot 0's check then finds node 1 wrong.
    let (mut h, execs, _) = checked(1, 2);
    h.run(execs[1], 1, 1);
    h.send(Event::CheckDrawn {
        slot: 1,
        check: false,
    });
    let place = h.send(Event::Compared {
        slot: 0,
        pair: Pair::OriginalChecker,
        outcome: Comparison::Disagree,
    });
    h.run(execs_of(&place)[0], 3, 2);
    h.send(Event::Compared {
        slot: 0,
        pair: Pair::CheckerThird,
        outcome: Comparison::Agree,
    });
    let out = h.send(Event::Compared {
        slot: 0,
        pair: Pair::OriginalThird,
        outcome: Comparison::Disagree,
    });
    let rerun = out.last().expect("commands");
    assert!(
        matches!(rerun, Command::Place { shard: s, exclude, .. } if *s == shard(1) && exclude == &vec![id(1)]),
        "{out:?}"
    );
    // The re-run is a new task, placed away from the banned node.
    let exec = execs_of(std::slice::from_ref(rerun))[0];
    h.run(exec, 2, 2);
    assert_ne!(h.task_of[&exec].0, h.task_of[&execs[1]].0);
    let out = h.send(Event::CheckDrawn {
        slot: 1,
        check: false,
    });
    assert!(matches!(&out[..], [Command::Collect { parts, .. }] if parts.iter().all(|p| p.0 != id(1))));
}

#[test]
fn late_answers_for_a_settled_slot_are_ignored() {
    let (mut h, _, _) = checked(1, 1);
    h.send(Event::Compared {
        slot: 0,
        pair: Pair::OriginalChecker,
        outcome: Comparison::Agree,
    });
    assert_eq!(
        h.send(Event::Compared {
            slot: 0,
            pair: Pair::OriginalChecker,
            outcome: Comparison::Disagree
        }),
        []
    );
    assert_eq!(h.send(Event::CheckDrawn { slot: 0, check: true }), []);
    assert_eq!(h.send(Event::CheckDrawn { slot: 9, check: true }), []);
}

// ---------------------------------------------------------------------------------------------
// Collecting, the outer step, checkpoints

fn round_ready() -> (Harness, Vec<u64>) {
    let (mut h, places) = Harness::started(setup(2, 1, 1));
    let execs = execs_of(&places);
    for (slot, exec) in execs.iter().enumerate() {
        h.run(*exec, 1 + slot as u8, 1);
        h.send(Event::CheckDrawn { slot, check: false });
    }
    (h, execs)
}

#[test]
fn an_update_that_cannot_be_collected_is_rerun_elsewhere_then_all_are_collected_again() {
    let (mut h, _) = round_ready();
    let out = h.send(Event::Collected(Err(CollectFailure {
        index: Some(1),
        error: "stream truncated".into(),
    })));
    assert!(matches!(&out[0], Command::Report(ReportItem::Failure { node, .. }) if *node == id(2)));
    let [Command::Place { exec, exclude, .. }] = &out[1..] else {
        panic!("{out:?}")
    };
    assert_eq!(exclude, &vec![id(2)]);
    // The re-run is not spot-checked again: its result goes straight into a new collect.
    let out = h.run(*exec, 3, 1);
    assert!(matches!(&decisions(out)[..], [Command::Collect { parts, .. }] if parts[1].0 == id(3)));
}

#[test]
fn updates_that_keep_failing_to_collect_fail_the_job() {
    let (mut h, _) = round_ready();
    let mut last = Vec::new();
    for n in 0..MAX_ATTEMPTS {
        last = h.send(Event::Collected(Err(CollectFailure {
            index: Some(0),
            error: "gone".into(),
        })));
        if n + 1 < MAX_ATTEMPTS {
            let exec = execs_of(&last)[0];
            h.run(exec, 3, 1);
        }
    }
    assert!(last.iter().any(is_error), "{last:?}");
}

#[test]
fn a_reduce_failure_no_node_caused_fails_the_job() {
    let (mut h, _) = round_ready();
    let out = h.send(Event::Collected(Err(CollectFailure {
        index: None,
        error: "out of memory".into(),
    })));
    assert!(is_error(&out[0]));
    assert!(matches!(out[1], Command::Checkpoint { .. }));
}

#[test]
fn the_outer_step_checkpoints_the_new_names_and_the_tallies() {
    let (mut h, _) = round_ready();
    assert_eq!(
        h.send(Event::Collected(Ok(()))),
        [Command::OuterStep { round: 0 }]
    );
    let out = h.send(Event::Stepped(Ok(tensors(1))));
    let tasks = out
        .iter()
        .filter(|c| matches!(c, Command::Report(ReportItem::Task { .. })))
        .count();
    assert_eq!(tasks, 2);
    let Some(Command::Checkpoint {
        round,
        tensors: named,
        progress,
    }) = out.last()
    else {
        panic!("{out:?}")
    };
    assert_eq!((*round, named), (1, &Some(tensors(1))));
    assert_eq!(
        progress.tallies.compute_rows,
        BTreeMap::from([(id(1), shard(0).rows), (id(2), shard(1).rows)])
    );
    assert_eq!(
        progress.tallies.storage_bytes,
        BTreeMap::from([(id(STORAGE), shard(0).bytes + shard(1).bytes)])
    );
    assert_eq!(progress.assignments.len(), 2);
}

#[test]
fn the_outer_step_failing_fails_the_job() {
    let (mut h, _) = round_ready();
    h.send(Event::Collected(Ok(())));
    let out = h.send(Event::Stepped(Err("no storage node took the weights".into())));
    assert!(is_error(&out[0]));
}

#[test]
fn a_recorded_checkpoint_drops_the_superseded_weights_unless_a_rewind_may_go_back_to_them() {
    let (mut h, places) = Harness::started(setup(2, 1, 2));
    let out = h.unchecked_round(&execs_of(&places), 1);
    // Round 0 took nodes 1 and 2's first unconfirmed results: a rewind would go back to the
    // weights it started from, so they stay.
    let Some(Command::Checkpoint { progress, .. }) = out.last() else {
        panic!("{out:?}")
    };
    assert_eq!(
        progress.rewind.first_unverified,
        BTreeMap::from([(id(1), 0), (id(2), 0)])
    );
    assert_eq!(progress.rewind.starts.keys().copied().collect::<Vec<_>>(), [0]);
    assert_eq!(progress.rewind.starts[&0].tensors, tensors(0));
    assert_eq!(
        h.send(Event::Checkpointed(CheckpointOutcome::Recorded)),
        [Command::Publish, Command::RefreshNodes { after: None }]
    );
    // Round 1's results are the same nodes' later ones: the weights it started from go.
    let places = h.send(Event::Nodes(Ok(grid())));
    h.unchecked_round(&execs_of(&places), 2);
    assert_eq!(
        h.send(Event::Checkpointed(CheckpointOutcome::Recorded)),
        [
            Command::DropTensors {
                tensors: vec![tensors(1).weights],
                holders: vec![id(STORAGE)]
            },
            Command::Publish,
            Command::RefreshNodes { after: None },
        ]
    );
}

#[test]
fn a_round_of_confirmed_results_keeps_no_weights_to_rewind_to() {
    let (mut h, places) = Harness::started(setup(1, 1, 2));
    let exec = execs_of(&places)[0];
    h.run(exec, 1, 1);
    let place = h.send(Event::CheckDrawn { slot: 0, check: true });
    h.run(execs_of(&place)[0], 2, 1);
    h.send(Event::Compared {
        slot: 0,
        pair: Pair::OriginalChecker,
        outcome: Comparison::Agree,
    });
    h.send(Event::Collected(Ok(())));
    let out = h.send(Event::Stepped(Ok(tensors(1))));
    let Some(Command::Checkpoint { progress, .. }) = out.last() else {
        panic!("{out:?}")
    };
    assert_eq!(progress.rewind, RewindPoints::default());
    assert!(matches!(
        &h.send(Event::Checkpointed(CheckpointOutcome::Recorded))[0],
        Command::DropTensors { tensors: t, .. } if *t == vec![tensors(0).weights]
    ));
}

/// Round 0 of a two-round job (one shard a round) runs on node 1 unchecked; in round 1 a spot
/// check finds node 1 wrong. Answers the harness and the verdict's commands.
fn caught_in_round_one() -> (Harness, Vec<Command>) {
    let (mut h, places) = Harness::started(setup(2, 2, 1));
    h.unchecked_round(&execs_of(&places), 1);
    h.send(Event::Checkpointed(CheckpointOutcome::Recorded));
    let places = h.send(Event::Nodes(Ok(grid())));
    let out = catch_node_one(&mut h, &places);
    (h, out)
}

/// The round's only task runs on node 1, which answers wrong; the check on node 2 and the third
/// run on node 3 agree against it. Answers the verdict's commands.
fn catch_node_one(h: &mut Harness, places: &[Command]) -> Vec<Command> {
    h.run(execs_of(places)[0], 1, 9);
    let place = h.send(Event::CheckDrawn { slot: 0, check: true });
    h.run(execs_of(&place)[0], 2, 1);
    let place = h.send(Event::Compared {
        slot: 0,
        pair: Pair::OriginalChecker,
        outcome: Comparison::Disagree,
    });
    h.run(execs_of(&place)[0], 3, 1);
    h.send(Event::Compared {
        slot: 0,
        pair: Pair::CheckerThird,
        outcome: Comparison::Agree,
    });
    h.send(Event::Compared {
        slot: 0,
        pair: Pair::OriginalThird,
        outcome: Comparison::Disagree,
    })
}

#[test]
fn a_node_found_wrong_sends_the_job_back_before_its_unconfirmed_results() {
    let (mut h, out) = caught_in_round_one();
    assert!(out.contains(&Command::Ban { node: id(1) }));
    assert!(out.contains(&Command::Report(ReportItem::Rewound {
        from: 1,
        to: 0,
        node: id(1)
    })));
    let Some(Command::Rewind {
        round,
        tensors: to,
        progress,
        wrong,
    }) = out.last()
    else {
        panic!("{out:?}")
    };
    assert_eq!((*round, to, *wrong), (0, &tensors(0), id(1)));
    // Nothing is left to rewind to; the ban stays; the rows node 2 and 3 confirmed in the
    // discarded round earn nothing; the compute rows done stay credited.
    assert_eq!(progress.rewind, RewindPoints::default());
    assert!(progress.tallies.banned.contains(&id(1)));
    assert!(progress.tallies.verified_rows.is_empty());
    assert_eq!(
        progress.tallies.compute_rows,
        BTreeMap::from([(id(1), shard(0).rows)])
    );
    assert_eq!(h.engine.rounds(), 0);
    assert_eq!(h.engine.generation(), 1);
    // The rewind recorded: the discarded round's weights go, and round 0 runs again from the
    // weights it started with, away from node 1.
    assert_eq!(
        h.send(Event::Rewound(Ok(CheckpointOutcome::Recorded))),
        [
            Command::DropTensors {
                tensors: vec![tensors(1).weights],
                holders: vec![id(STORAGE)]
            },
            Command::RefreshNodes { after: None },
        ]
    );
    let places = h.send(Event::Nodes(Ok(grid())));
    let [Command::Place {
        exec,
        shard: s,
        exclude,
        ..
    }] = places.as_slice()
    else {
        panic!("{places:?}")
    };
    assert_eq!((s, exclude), (&shard(0), &vec![id(1)]));
    let dispatched = h.send(Event::Placed {
        exec: *exec,
        placement: Some(placement(2)),
    });
    assert!(
        matches!(&dispatched[..], [Command::Dispatch { round: 0, weights, .. }] if *weights == tensors(0)),
        "{dispatched:?}"
    );
}

#[test]
fn a_rewind_the_ledger_did_not_record_keeps_the_weights_it_names() {
    let (mut h, _) = caught_in_round_one();
    assert_eq!(
        h.send(Event::Rewound(Ok(CheckpointOutcome::NotRecorded))),
        [Command::RefreshNodes { after: None }]
    );
    let (mut h, _) = caught_in_round_one();
    assert_eq!(
        h.send(Event::Rewound(Ok(CheckpointOutcome::TakenOver))),
        [Command::Finish(Ending::Moved)]
    );
    let (mut h, _) = caught_in_round_one();
    let out = h.send(Event::Rewound(Err("no storage node holds the weights".into())));
    assert!(out.iter().any(is_error), "{out:?}");
}

#[test]
fn a_resumed_job_rewinds_to_a_round_its_earlier_runner_kept() {
    let (h, places) = Harness::started(setup(2, 2, 1));
    let mut h = h;
    let out = h.unchecked_round(&execs_of(&places), 1);
    let Some(Command::Checkpoint { progress, .. }) = out.last() else {
        panic!("{out:?}")
    };
    // Another replica resumes from the checkpoint after round 0, then catches node 1.
    let mut s = setup(2, 2, 1);
    s.task_seed = 7;
    s.resumed = Some(Resumed {
        round: 1,
        tallies: progress.tallies.clone(),
        tensors: Some(tensors(1)),
        rewind: Progress::decode(&progress.encode()).unwrap().rewind,
    });
    let mut h = Harness::new(s);
    h.send(Event::Start);
    h.send(Event::Nodes(Ok(grid())));
    let places = h.send(Event::Nodes(Ok(grid())));
    let out = catch_node_one(&mut h, &places);
    assert!(
        matches!(out.last(), Some(Command::Rewind { round: 0, tensors: t, .. }) if *t == tensors(0)),
        "{out:?}"
    );
}

#[test]
fn an_unrecorded_checkpoint_keeps_the_weights_the_ledger_still_names() {
    let (mut h, places) = Harness::started(setup(2, 1, 2));
    h.unchecked_round(&execs_of(&places), 1);
    assert_eq!(
        h.send(Event::Checkpointed(CheckpointOutcome::NotRecorded)),
        [Command::Publish, Command::RefreshNodes { after: None }]
    );
}

#[test]
fn a_takeover_at_a_checkpoint_ends_the_job_here_without_paying() {
    let (mut h, places) = Harness::started(setup(2, 1, 2));
    h.unchecked_round(&execs_of(&places), 1);
    assert_eq!(
        h.send(Event::Checkpointed(CheckpointOutcome::TakenOver)),
        [Command::Finish(Ending::Moved)]
    );
    assert!(h.engine.finished());
    assert_eq!(h.send(Event::Settled { ok: true }), []);
}

// ---------------------------------------------------------------------------------------------
// Cancel, evaluation, settlement

#[test]
fn a_cancel_during_a_spot_check_stops_the_job_at_the_round_boundary() {
    let (mut h, execs, _) = checked(1, 1);
    assert_eq!(h.send(Event::Cancel), []);
    // The check and the round finish; their work is credited.
    h.send(Event::Compared {
        slot: 0,
        pair: Pair::OriginalChecker,
        outcome: Comparison::Agree,
    });
    h.run(execs[1], 3, 1);
    h.send(Event::CheckDrawn {
        slot: 1,
        check: false,
    });
    h.send(Event::Collected(Ok(())));
    h.send(Event::Stepped(Ok(tensors(1))));
    let out = h.send(Event::Checkpointed(CheckpointOutcome::Recorded));
    let tallies = h.engine.tallies().clone();
    // Node 3's unchecked result keeps the round's starting weights for a rewind until the job
    // is settled.
    let rewind = h.engine.rewind_points().clone();
    assert_eq!(rewind.first_unverified, BTreeMap::from([(id(3), 0)]));
    assert_eq!(
        out,
        [Command::Publish, claim_with(1, Some(tensors(1)), tallies, rewind),]
    );
    let out = h.send(Event::Checkpointed(CheckpointOutcome::Recorded));
    assert!(out.contains(&Command::DropTensors {
        tensors: vec![tensors(0).weights],
        holders: vec![id(STORAGE)]
    }));
    let order = settle_order(&out);
    assert!(!order.completed && order.trained.is_none() && order.work.fees.is_empty());
    assert_eq!(order.work.compute_rows.len(), 2);
    // Node 1's result agreed with node 2's re-run; node 3's was not checked.
    let parts: Vec<(NodeId, u64, u64, u32, u32)> = order
        .nodes
        .iter()
        .map(|n| (n.node, n.rows, n.verified_rows, n.checks_passed, n.checks_failed))
        .collect();
    assert_eq!(
        parts,
        [
            (id(1), shard(0).rows, shard(0).rows, 1, 0),
            (id(3), shard(1).rows, 0, 0, 0)
        ]
    );
    assert_eq!(
        h.send(Event::Settled { ok: true }),
        [Command::Finish(Ending::Cancelled)]
    );
}

#[test]
fn a_cancel_before_the_first_round_runs_no_task() {
    let mut h = Harness::new(setup(2, 1, 1));
    h.send(Event::Start);
    h.send(Event::Cancel);
    h.send(Event::Nodes(Ok(grid())));
    let out = h.send(Event::Stored(Ok(tensors(0))));
    assert_eq!(out, [claim(0, Some(tensors(0)), Tallies::default())]);
}

/// A one-round job run to its evaluation's placements.
fn evaluating(regression: bool) -> (Harness, Vec<u64>) {
    let mut s = setup(2, 1, 1);
    s.regression = regression;
    let (mut h, places) = Harness::started(s);
    h.unchecked_round(&execs_of(&places), 1);
    h.send(Event::Checkpointed(CheckpointOutcome::Recorded));
    let places = h.send(Event::Nodes(Ok(grid())));
    let shards: Vec<ShardEntry> = places
        .iter()
        .filter_map(|c| match c {
            Command::Place { shard, .. } => Some(shard.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(shards, [shard(10), shard(11)], "the held-out shards");
    (h, execs_of(&places))
}

#[test]
fn the_evaluation_runs_unchecked_reports_accuracy_and_settles_completed() {
    let (mut h, execs) = evaluating(false);
    let out = h.run(execs[0], 1, 0);
    assert_eq!(decisions(out), [], "no spot check of an evaluation");
    let out = h.run(execs[1], 2, 0);
    let rows = shard(10).rows + shard(11).rows;
    let correct = shard(10).rows / 2 + shard(11).rows / 2;
    assert!(out.iter().any(|c| matches!(
        c,
        Command::Report(ReportItem::Evaluation { rows: r, accuracy: Some(a), r2: None, .. })
            if *r == rows && (*a - correct as f64 / rows as f64).abs() < 1e-12
    )));
    assert!(matches!(out.last(), Some(Command::Checkpoint { round: 1, .. })));
    let order = settle_order(&h.send(Event::Checkpointed(CheckpointOutcome::Recorded)));
    assert!(order.completed);
    assert_eq!(order.trained, Some(tensors(1)));
    assert_eq!(order.work.fees, fees());
    assert_eq!(
        h.send(Event::Settled { ok: false }),
        [Command::Finish(Ending::Done)]
    );
}

/// The shards a step's placements are for.
fn placed_shards(commands: &[Command]) -> Vec<ShardEntry> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Place { shard, .. } => Some(shard.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn periodic_evaluations_run_between_rounds_and_the_last_one_ends_the_job() {
    // Three rounds (one a epoch), held-out accuracy after every second: after round 2, then the
    // final one after round 3 — as many as the quote counts.
    let mut s = setup(2, 1, 3);
    s.evaluate_every_rounds = 2;
    let (mut h, mut places) = Harness::started(s);
    let mut evaluations = Vec::new();
    for round in 1..=3u8 {
        assert!(
            placed_shards(&places).iter().all(|e| e != &shard(10)),
            "round {round} trains"
        );
        h.unchecked_round(&execs_of(&places), round);
        let out = h.send(Event::Checkpointed(CheckpointOutcome::Recorded));
        assert!(out.contains(&Command::RefreshNodes { after: None }), "{out:?}");
        places = h.send(Event::Nodes(Ok(grid())));
        if round == 1 {
            continue;
        }
        assert_eq!(
            placed_shards(&places),
            [shard(10), shard(11)],
            "held-out after round {round}"
        );
        let execs = execs_of(&places);
        h.run(execs[0], 1, 0);
        let out = h.run(execs[1], 2, 0);
        evaluations.extend(out.iter().filter_map(|c| match c {
            Command::Report(ReportItem::Evaluation {
                round,
                last,
                accuracy,
                ..
            }) => Some((*round, *last, accuracy.is_some())),
            _ => None,
        }));
        if round == 2 {
            // Training goes on: the nodes are read again for round 3.
            assert_eq!(decisions(out), [Command::RefreshNodes { after: None }]);
            places = h.send(Event::Nodes(Ok(grid())));
        } else {
            assert!(
                matches!(out.last(), Some(Command::Checkpoint { round: 3, .. })),
                "{out:?}"
            );
        }
    }
    assert_eq!(evaluations, [(2, false, true), (3, true, true)]);
    // Each evaluation's tasks are credited: the held-out rows twice.
    let held_out = 2 * (shard(10).rows + shard(11).rows);
    let trained = 3 * (shard(0).rows + shard(1).rows);
    assert_eq!(
        h.engine.tallies().compute_rows.values().sum::<u64>(),
        held_out + trained
    );
}

#[test]
fn a_regression_reports_r2_from_the_targets_sums() {
    let (mut h, execs) = evaluating(true);
    let mut out = Vec::new();
    for (i, exec) in execs.iter().enumerate() {
        out = h.run_with(*exec, 1 + i as u8, |task, entry| {
            let mut r = result(task, entry, TaskKind::Evaluate, 0);
            r.correct = 0;
            // Σy = 0, Σy² = 2·rows: the targets' variance is 2, the loss (MSE) 0.5 → R² = 0.75.
            r.values = vec![0.0, 2.0 * entry.rows as f32];
            Ok(with_digest(r))
        });
    }
    assert!(
        out.iter().any(|c| matches!(
            c,
            Command::Report(ReportItem::Evaluation { r2: Some(r2), accuracy: None, .. }) if (*r2 - 0.75).abs() < 1e-9
        )),
        "{out:?}"
    );
}

#[test]
fn an_evaluation_of_a_regression_without_its_sums_is_refused() {
    let (mut h, execs) = evaluating(true);
    let out = h.run(execs[0], 1, 0);
    assert!(matches!(out.last(), Some(Command::Place { .. })), "{out:?}");
}

#[test]
fn a_takeover_at_the_final_claim_pays_nothing_here() {
    let (mut h, execs) = evaluating(false);
    h.run(execs[0], 1, 0);
    h.run(execs[1], 2, 0);
    assert_eq!(
        h.send(Event::Checkpointed(CheckpointOutcome::TakenOver)),
        [Command::Finish(Ending::Moved)]
    );
}

#[test]
fn settlement_pays_no_banned_node_and_no_bytes_of_a_cached_shard() {
    let (mut h, execs, _) = third(true, false);
    // Node 1 is banned; slot 1 runs on node 3 from its cache.
    h.run_with(execs[1], 3, |task, entry| {
        let mut r = result(task, entry, TaskKind::Gradient, 2);
        r.cache_hits = 1;
        Ok(r)
    });
    h.send(Event::CheckDrawn {
        slot: 1,
        check: false,
    });
    h.send(Event::Collected(Ok(())));
    h.send(Event::Stepped(Ok(tensors(1))));
    h.send(Event::Checkpointed(CheckpointOutcome::Recorded));
    let places = h.send(Event::Nodes(Ok(grid())));
    for (i, exec) in execs_of(&places).into_iter().enumerate() {
        let out = h.run_with(exec, 2 + i as u8, |task, entry| {
            let mut r = result(task, entry, TaskKind::Evaluate, 0);
            r.cache_hits = 1;
            Ok(with_digest(r))
        });
        if let Some(Command::Place { exclude, .. }) = out.last() {
            panic!("evaluation refused: {exclude:?}");
        }
    }
    let order = settle_order(&h.send(Event::Checkpointed(CheckpointOutcome::Recorded)));
    assert!(!order.work.compute_rows.contains_key(&address(1)));
    assert_eq!(order.slash, vec![(id(1), address(1))]);
    assert!(order.verified.iter().all(|(n, _, _)| *n != id(1)));
    // The work record for the job log: node 1 caught once, confirmed wrong.
    let record = |b: u8| order.nodes.iter().find(|n| n.node == id(b)).cloned();
    let caught = record(1).expect("node 1's part is recorded");
    assert_eq!(
        (caught.checks_passed, caught.checks_failed, caught.confirmed_wrong),
        (0, 1, true)
    );
    assert!(order
        .nodes
        .iter()
        .all(|n| n.node == id(1) || (n.checks_failed == 0 && !n.confirmed_wrong)));
    assert!(order.nodes.iter().all(|n| n.verified_rows <= n.rows));
    // Slot 0 came from the storage node (checker's placement), everything else from caches.
    assert_eq!(
        order.work.storage_bytes,
        BTreeMap::from([(address(STORAGE), shard(0).bytes)])
    );
}

#[test]
fn a_resumed_jobs_earlier_tallies_are_paid() {
    let mut s = setup(2, 1, 1);
    let mut tallies = Tallies::default();
    tallies.compute_rows.insert(id(3), 1_000);
    tallies.verified_rows.insert(id(3), 1_000);
    s.resumed = Some(Resumed {
        round: 1,
        tallies,
        tensors: Some(tensors(5)),
        rewind: RewindPoints::default(),
    });
    let mut h = Harness::new(s);
    h.send(Event::Start);
    h.send(Event::Nodes(Ok(grid())));
    let places = h.send(Event::Nodes(Ok(grid())));
    for (i, exec) in execs_of(&places).into_iter().enumerate() {
        h.run(exec, 1 + i as u8, 0);
    }
    let order = settle_order(&h.send(Event::Checkpointed(CheckpointOutcome::Recorded)));
    assert!(order.completed);
    assert_eq!(order.work.compute_rows[&address(3)], 1_000);
    assert_eq!(order.verified, vec![(id(3), address(3), 1_000)]);
}

#[test]
fn answers_after_the_job_ended_are_ignored() {
    let (mut h, places) = Harness::started(setup(2, 1, 1));
    let execs = execs_of(&places);
    // Every compute node leaves: the first placement fails the job.
    h.send(Event::Nodes(Ok(vec![node(STORAGE, Role::Storage)])));
    let out = h.send(Event::Placed {
        exec: execs[0],
        placement: None,
    });
    assert!(out.iter().any(is_error), "{out:?}");
    // The round's other answers arrive late.
    assert_eq!(
        h.send(Event::Placed {
            exec: execs[1],
            placement: Some(placement(1))
        }),
        []
    );
    assert_eq!(h.send(Event::Collected(Ok(()))), []);
    assert_eq!(h.send(Event::Stepped(Ok(tensors(3)))), []);
    let out = h.send(Event::Checkpointed(CheckpointOutcome::Recorded));
    assert!(matches!(&out[..], [Command::Settle(_)]));
    assert_eq!(
        h.send(Event::Settled { ok: true }),
        [Command::Finish(Ending::Failed)]
    );
    assert_eq!(h.send(Event::Settled { ok: true }), []);
}

// ---------------------------------------------------------------------------------------------
// Any interleaving balances the escrow

mod interleavings {
    use proptest::prelude::*;

    use super::*;
    use crate::payroll::{self, Pricing};

    /// Node 3 lies: its updates differ from every honest execution's.
    const LIAR: u8 = 3;
    const MAX_STEPS: usize = 20_000;

    /// The engine and a world that answers its commands as the choices say, in the order the
    /// choices pick from everything outstanding.
    struct World {
        h: Harness,
        /// Commands to answer, each with the engine's generation when it was given.
        pending: Vec<(u64, Command)>,
        choices: Vec<u8>,
        at: usize,
        settled: Vec<SettleOrder>,
        endings: Vec<Ending>,
        /// Rows the engine credited per node (its `Task` report items).
        credited: BTreeMap<NodeId, u64>,
        stored: u8,
    }

    impl World {
        fn choice(&mut self) -> u8 {
            let c = self.choices.get(self.at).copied().unwrap_or(0);
            self.at += 1;
            c
        }

        fn take(&mut self, commands: Vec<Command>) {
            for command in commands {
                match command {
                    Command::Report(ReportItem::Task { done, .. }) => {
                        *self.credited.entry(done.placement.node).or_insert(0) += done.result.rows;
                    }
                    Command::Finish(ending) => self.endings.push(ending),
                    Command::Rate { .. }
                    | Command::Penalise { .. }
                    | Command::Ban { .. }
                    | Command::GrantTicket { .. }
                    | Command::Report(_)
                    | Command::Publish
                    | Command::DropTensors { .. } => {}
                    other => self.pending.push((self.h.engine.generation(), other)),
                }
            }
        }

        fn answer(&mut self, command: Command) -> Option<Event> {
            let c = self.choice();
            Some(match command {
                Command::RefreshNodes { .. } => Event::Nodes(Ok(grid())),
                Command::StoreState => Event::Stored(Ok(tensors(0))),
                Command::Place { exec, exclude, .. } => {
                    let candidates: Vec<u8> = [1, 2, LIAR]
                        .into_iter()
                        .filter(|b| !exclude.contains(&id(*b)))
                        .collect();
                    let placement = if candidates.is_empty() || c % 6 == 5 {
                        None
                    } else {
                        Some(placement(candidates[c as usize % candidates.len()]))
                    };
                    Event::Placed { exec, placement }
                }
                Command::Dispatch {
                    exec,
                    task,
                    kind,
                    shard,
                    placement,
                    ..
                } => {
                    let version = if placement.node == id(LIAR) { 9 } else { 1 };
                    let outcome = if c % 8 == 7 {
                        Err("crashed".into())
                    } else {
                        Ok(result(task, &shard, kind, version))
                    };
                    Event::Ran { exec, outcome }
                }
                Command::DrawCheck { slot, .. } => Event::CheckDrawn {
                    slot,
                    check: c % 2 == 1,
                },
                Command::Compare { slot, pair, a, b } => Event::Compared {
                    slot,
                    pair,
                    // The truth, flipped now and then (a flaky comparison), and now and then a
                    // node whose update cannot be read.
                    outcome: if c % 17 == 16 {
                        Comparison::Unreadable(b.0)
                    } else {
                        verdict((a.1.update == b.1.update) != (c % 11 == 10))
                    },
                },
                Command::Collect { parts, .. } => Event::Collected(if c % 7 == 6 {
                    Err(CollectFailure {
                        index: Some(c as usize % parts.len()),
                        error: "stream truncated".into(),
                    })
                } else {
                    Ok(())
                }),
                Command::OuterStep { .. } => {
                    self.stored += 1;
                    Event::Stepped(Ok(tensors(self.stored)))
                }
                Command::Checkpoint { .. } => Event::Checkpointed(match c {
                    c if c % 29 == 28 => CheckpointOutcome::TakenOver,
                    c if c % 13 == 12 => CheckpointOutcome::NotRecorded,
                    _ => CheckpointOutcome::Recorded,
                }),
                Command::Rewind { .. } => Event::Rewound(match c % 10 {
                    9 => Err("no storage node holds the weights".into()),
                    8 => Ok(CheckpointOutcome::NotRecorded),
                    _ => Ok(CheckpointOutcome::Recorded),
                }),
                Command::Settle(order) => {
                    self.settled.push(order);
                    Event::Settled { ok: true }
                }
                _ => return None,
            })
        }

        fn run(setup: EngineSetup, choices: Vec<u8>) -> World {
            let mut w = World {
                h: Harness::new(setup),
                pending: Vec::new(),
                choices,
                at: 0,
                settled: Vec::new(),
                endings: Vec::new(),
                credited: BTreeMap::new(),
                stored: 0,
            };
            let out = w.h.send(Event::Start);
            w.take(out);
            for _ in 0..MAX_STEPS {
                if w.pending.is_empty() {
                    break;
                }
                let c = w.choice();
                if c == 255 {
                    let out = w.h.send(Event::Cancel);
                    w.take(out);
                }
                let (generation, command) = w.pending.remove(c as usize % w.pending.len());
                // As the actor does: an answer to a command a rewind discarded is dropped.
                let stale = generation != w.h.engine.generation();
                if let Some(event) = w.answer(command).filter(|_| !stale) {
                    let out = w.h.send(event);
                    w.take(out);
                }
            }
            w
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn any_interleaving_of_results_failures_and_verdicts_balances_the_escrow(
            choices in proptest::collection::vec(any::<u8>(), 0..600),
            budget in 12u128..1_000_000_000_000_000_000_000u128,
            compute in 0u128..1_000_000_000_000_000_000u128,
            storage in 0u128..1_000_000_000_000_000_000u128,
            fee_percent in 0u8..=50,
            shards in 1u8..5,
            epochs in 1u32..3,
        ) {
            let w = World::run(setup(shards, 2, epochs), choices);
            prop_assert!(w.pending.is_empty(), "the job did not end: {:?}", w.pending);
            prop_assert_eq!(w.endings.len(), 1);
            let ending = w.endings[0];
            let tallies = w.h.engine.tallies().clone();
            if ending == Ending::Moved {
                prop_assert!(w.settled.is_empty(), "a job taken over is settled by its new runner");
                return Ok(());
            }
            prop_assert_eq!(w.settled.len(), 1);
            let order = &w.settled[0];
            prop_assert_eq!(order.completed, ending == Ending::Done);
            prop_assert_eq!(order.trained.is_some(), ending == Ending::Done);
            // Every accepted task of a node not banned is paid, and nothing else.
            for (node, rows) in &w.credited {
                let paid = order.work.compute_rows.get(&Address(*node.as_bytes())).copied().unwrap_or(0);
                let expected = if tallies.banned.contains(node) { 0 } else { *rows };
                prop_assert_eq!(paid, expected);
            }
            prop_assert_eq!(
                order.work.compute_rows.values().sum::<u64>(),
                w.credited.iter().filter(|(n, _)| !tallies.banned.contains(n)).map(|(_, r)| r).sum::<u64>()
            );
            prop_assert!(order.verified.iter().all(|(n, _, _)| !tallies.banned.contains(n)));
            prop_assert!(order.slash.iter().all(|(n, _)| tallies.banned.contains(n)));
            // The escrow balances to the base unit: payouts + burned fee + refund = budget.
            let pricing = Pricing {
                compute_per_million_rows: Amount(compute),
                storage_per_gb: Amount(storage),
                platform_fee_percent: fee_percent,
            };
            let settlement = payroll::settle(Amount(budget), &order.work, &pricing).expect("settles");
            let paid = settlement.payouts.iter().map(|p| p.amount.0).sum::<u128>();
            prop_assert_eq!(paid + settlement.platform_fee.0 + settlement.refund.0, budget);
        }
    }
}

#[test]
fn an_update_a_check_cannot_read_starts_the_task_over_and_judges_nobody() {
    let (mut h, execs, _) = checked(1, 1);
    let out = h.send(Event::Compared {
        slot: 0,
        pair: Pair::OriginalChecker,
        outcome: Comparison::Unreadable(id(1)),
    });
    // A new task, placed away from the node that went away; no rating, penalty or ban.
    let [Command::Place { exec, exclude, .. }] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(exclude, &vec![id(1)]);
    assert!(h.engine.tallies().banned.is_empty() && h.engine.tallies().verified_rows.is_empty());
    h.run(*exec, 2, 1);
    assert_ne!(h.task_of[exec].0, h.task_of[&execs[0]].0);
    // The stale check's answer for the old executions changes nothing.
    assert_eq!(
        h.send(Event::Compared {
            slot: 0,
            pair: Pair::OriginalChecker,
            outcome: Comparison::Disagree
        }),
        []
    );
}

// ---------------------------------------------------------------------------------------------
// Colluding nodes

/// What a job run among colluders showed: each spot check's original and verdict, the settle
/// order, and each checker placement's original with the nodes it excluded.
struct CollusionRun {
    verdicts: Vec<(NodeId, CheckVerdict)>,
    order: SettleOrder,
    checker_exclusions: Vec<(NodeId, Vec<NodeId>)>,
}

/// Drives a job to its end, answering every command as the grid would: each task placed on the
/// first allowed node after the previous placement (round robin), every result checked, the
/// nodes in `colluders` answering the same wrong update and every other node the right one.
fn run_with_colluders(mut h: Harness, nodes: &[NodeStatus], colluders: &[NodeId]) -> CollusionRun {
    use std::collections::VecDeque;
    let compute: Vec<NodeId> = nodes
        .iter()
        .filter(|n| n.role == Role::Compute)
        .map(|n| n.node_id)
        .collect();
    let mut next = 0usize;
    let mut queue: VecDeque<Command> = h.send(Event::Start).into();
    let mut verdicts = Vec::new();
    let mut checker_exclusions = Vec::new();
    let mut placed: HashMap<u64, NodeId> = HashMap::new();
    let mut original_of_slot: HashMap<usize, NodeId> = HashMap::new();
    let mut steps = 0;
    while let Some(command) = queue.pop_front() {
        steps += 1;
        assert!(steps < 100_000, "the job does not end");
        let answer = match command {
            Command::RefreshNodes { .. } => Some(Event::Nodes(Ok(nodes.to_vec()))),
            Command::StoreState => Some(Event::Stored(Ok(tensors(0)))),
            Command::Place { exec, exclude, .. } => {
                let node = (0..compute.len())
                    .map(|i| compute[(next + i) % compute.len()])
                    .find(|n| !exclude.contains(n));
                next += 1;
                if let Some(node) = node {
                    placed.insert(exec, node);
                }
                let b = node.map(|n| compute.iter().position(|c| *c == n).unwrap() as u8 + 1);
                Some(Event::Placed {
                    exec,
                    placement: b.map(placement),
                })
            }
            Command::Dispatch {
                exec,
                task,
                kind,
                shard,
                ..
            } => {
                let node = placed[&exec];
                let version = if colluders.contains(&node) { 9 } else { 1 };
                Some(Event::Ran {
                    exec,
                    outcome: Ok(result(task, &shard, kind, version)),
                })
            }
            Command::DrawCheck { slot, node } => {
                original_of_slot.insert(slot, node);
                Some(Event::CheckDrawn { slot, check: true })
            }
            Command::Compare { slot, pair, a, b } => Some(Event::Compared {
                slot,
                pair,
                outcome: verdict(a.1.update == b.1.update),
            }),
            Command::Collect { .. } => Some(Event::Collected(Ok(()))),
            Command::OuterStep { round } => Some(Event::Stepped(Ok(tensors(round as u8 + 1)))),
            Command::Checkpoint { .. } => Some(Event::Checkpointed(CheckpointOutcome::Recorded)),
            Command::Settle(order) => {
                return CollusionRun {
                    verdicts,
                    order,
                    checker_exclusions,
                }
            }
            Command::Report(ReportItem::SpotCheck {
                original, verdict, ..
            }) => {
                verdicts.push((original, verdict));
                None
            }
            _ => None,
        };
        if let Some(event) = answer {
            let out = h.send(event);
            // A checker's placement: note whom it may not run on.
            for c in &out {
                if let Command::Place { exec, exclude, .. } = c {
                    if let Some(e) = h.engine.execs.get(exec) {
                        if e.role == ExecRole::Checker {
                            let original = original_of_slot.get(&e.slot).copied();
                            if let Some(original) = original {
                                checker_exclusions.push((original, exclude.clone()));
                            }
                        }
                    }
                }
            }
            queue.extend(out);
        }
    }
    panic!("the job ended without a settle order");
}

/// Twenty compute nodes; nodes 1 to 4 (20 %) are one operator's, paid to one account.
fn grid_with_an_operator_of_four() -> Vec<NodeStatus> {
    let mut nodes: Vec<NodeStatus> = (1..=20).map(|b| node(b, Role::Compute)).collect();
    for i in 1..4 {
        nodes[i].payout_address = nodes[0].payout_address.clone();
    }
    nodes.push(node(STORAGE, Role::Storage));
    nodes
}

#[test]
fn colluding_nodes_never_check_each_other_and_every_checked_wrong_result_is_caught() {
    let nodes = grid_with_an_operator_of_four();
    let colluders = [id(1), id(2), id(3), id(4)];
    // Forty training shards over two rounds, every result checked.
    let s = setup(40, 2, 1);
    let CollusionRun {
        verdicts,
        order,
        checker_exclusions: exclusions,
    } = run_with_colluders(Harness::new(s), &nodes, &colluders);
    // A colluder's check never ran on its partner.
    let of_colluders: Vec<&(NodeId, Vec<NodeId>)> =
        exclusions.iter().filter(|(o, _)| colluders.contains(o)).collect();
    assert!(
        !of_colluders.is_empty(),
        "the colluders ran tasks: {exclusions:?}"
    );
    for (original, exclude) in &of_colluders {
        assert!(
            colluders.iter().all(|c| exclude.contains(c)),
            "{original:?}'s check may not run on its operator's other node: {exclude:?}"
        );
    }
    // Detection: every result a colluder delivered was caught; no honest node penalised.
    let colluder_checks: Vec<CheckVerdict> = verdicts
        .iter()
        .filter(|(o, _)| colluders.contains(o))
        .map(|(_, v)| *v)
        .collect();
    assert!(!colluder_checks.is_empty());
    assert!(
        colluder_checks.iter().all(|v| *v == CheckVerdict::OriginalWrong),
        "{verdicts:?}"
    );
    // An honest node's result checked by a colluder: the third run sides with the honest one.
    assert!(verdicts
        .iter()
        .filter(|(o, _)| !colluders.contains(o))
        .all(|(_, v)| matches!(v, CheckVerdict::Agreed | CheckVerdict::CheckerWrong)));
    let slashed: Vec<NodeId> = order.slash.iter().map(|(n, _)| *n).collect();
    eprintln!(
        "colluders (4 of 20 nodes, one operator): {} of their results checked, {} caught; {} checks of honest \
         results, none penalised",
        colluder_checks.len(),
        colluder_checks.iter().filter(|v| **v == CheckVerdict::OriginalWrong).count(),
        verdicts.len() - colluder_checks.len()
    );
    assert!(slashed.iter().all(|n| colluders.contains(n)), "{slashed:?}");
    assert!(!slashed.is_empty());
}

#[test]
fn a_node_on_the_same_network_or_paid_through_the_payer_is_no_checker() {
    let mut nodes: Vec<NodeStatus> = (1..=5).map(|b| node(b, Role::Compute)).collect();
    nodes[0].quic_addr = "203.0.113.10:7000".into();
    nodes[1].quic_addr = "203.0.113.77:7000".into(); // the same /24
    nodes[2].quic_addr = "198.51.100.5:7000".into();
    nodes[3].payout_address = address(250).to_string(); // the job's payer
    let mut h = Harness::new(setup(2, 1, 1));
    h.send(Event::Start);
    h.send(Event::Nodes(Ok(nodes)));
    assert_eq!(h.engine.could_collude_with(&[id(1)]), vec![id(1), id(2), id(4)]);
    // Loopback addresses say nothing about operators: only the payer's node is excluded.
    assert_eq!(h.engine.could_collude_with(&[id(5)]), vec![id(5), id(4)]);
}

#[test]
fn a_grid_of_one_operator_still_checks_its_nodes_against_each_other() {
    // Every node paid to one account: no independent checker exists, so a check runs on any
    // other node (it catches faulty hardware, not collusion) rather than not at all.
    let mut nodes: Vec<NodeStatus> = (1..=3).map(|b| node(b, Role::Compute)).collect();
    for n in &mut nodes {
        n.payout_address = address(1).to_string();
    }
    nodes.push(node(STORAGE, Role::Storage));
    let mut h = Harness::new(setup(2, 1, 1));
    h.send(Event::Start);
    h.send(Event::Nodes(Ok(nodes)));
    assert_eq!(h.engine.could_collude_with(&[id(1)]), vec![id(1), id(2), id(3)]);
    assert_eq!(h.engine.independent_of(&[id(1)]), vec![id(1)]);
}

// ---------------------------------------------------------------------------------------------
// No wrong result stays in a model

/// What jobs run beside a node that corrupts some of its results showed.
#[derive(Debug, Default)]
struct CorrupterRuns {
    jobs: u32,
    /// Jobs in which the corrupter was found wrong.
    caught: u32,
    /// Corrupted updates reduced into the weights at some point (before a rewind took them out).
    entered: u64,
    /// Corrupted updates in the weights each job ended with.
    in_final_models: u64,
    /// Of those, in jobs where the corrupter was found wrong.
    in_final_models_caught: u64,
    rewinds: u32,
    rounds_discarded: u32,
    rounds_trained: u32,
    /// Training tasks run, checks and re-runs included, and the rounds' own tasks.
    executions: u64,
    tasks: u64,
}

/// Runs `jobs` jobs of `rounds` rounds of `shards` shards on five compute nodes; node 5 corrupts
/// `percent` % of its results. Spot checks are drawn by the rater's own rule from each node's
/// record, kept across jobs, with a seeded draw; answers are carried out in order, and an answer
/// to a command of a generation a rewind discarded is dropped, as the actor does.
fn run_beside_a_corrupter(
    jobs: u32,
    rounds: u32,
    shards: u8,
    percent: u32,
    seed: u64,
    verification: Verification,
) -> CorrupterRuns {
    use std::collections::VecDeque;

    use rand::{Rng, SeedableRng};

    const CORRUPTER: u8 = 5;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut nodes: Vec<NodeStatus> = (1..=5).map(|b| node(b, Role::Compute)).collect();
    nodes.push(node(STORAGE, Role::Storage));
    // Every node new to the rater, as on a fresh devnet: checked every time at first, less as
    // its checks pass; the records carry over from job to job.
    let mut records: BTreeMap<NodeId, rating::NodeRecord> = BTreeMap::new();
    let mut runs = CorrupterRuns::default();
    let mut next_tensor = 0u8;
    for job in 0..jobs {
        let mut s = setup(shards, rounds, 1);
        s.task_seed = u64::from(job);
        s.train = (0..shards).map(|i| shard(i % 10)).collect();
        s.verification = verification;
        let mut h = Harness::new(s);
        let mut queue: VecDeque<(u64, Command)> = h.send(Event::Start).into_iter().map(|c| (0, c)).collect();
        let mut placed: HashMap<u64, u8> = HashMap::new();
        // Corrupted updates in the weights after each round.
        let mut model: Vec<u64> = Vec::new();
        let mut next = 0usize;
        let mut caught = false;
        let mut steps = 0;
        'job: while let Some((generation, command)) = queue.pop_front() {
            steps += 1;
            assert!(steps < 1_000_000, "the job does not end");
            let answer = match command {
                Command::RefreshNodes { .. } => Some(Event::Nodes(Ok(nodes.clone()))),
                Command::StoreState => Some(Event::Stored(Ok(tensors(0)))),
                Command::Place { exec, exclude, .. } => {
                    let b = (0..5u8)
                        .map(|i| 1 + (next as u8 + i) % 5)
                        .find(|b| !exclude.contains(&id(*b)));
                    next += 1;
                    if let Some(b) = b {
                        placed.insert(exec, b);
                    }
                    Some(Event::Placed {
                        exec,
                        placement: b.map(placement),
                    })
                }
                Command::Dispatch {
                    exec,
                    task,
                    kind,
                    shard,
                    ..
                } => {
                    if kind == TaskKind::Gradient {
                        runs.executions += 1;
                    }
                    let corrupt = placed[&exec] == CORRUPTER && rng.random_range(0..100) < percent;
                    let version = if corrupt { 9 } else { 1 };
                    Some(Event::Ran {
                        exec,
                        outcome: Ok(result(task, &shard, kind, version)),
                    })
                }
                Command::DrawCheck { slot, node } => {
                    let record = records.entry(node).or_default();
                    let check = rating::should_check(record, rng.random::<f64>());
                    Some(Event::CheckDrawn { slot, check })
                }
                Command::Rate { node, matched } => {
                    let record = records.entry(node).or_default();
                    if matched {
                        record.record_match();
                    } else {
                        record.record_mismatch();
                    }
                    None
                }
                Command::Ban { node } => {
                    caught |= node == id(CORRUPTER);
                    None
                }
                Command::Compare { slot, pair, a, b } => Some(Event::Compared {
                    slot,
                    pair,
                    outcome: verdict(a.1.update == b.1.update),
                }),
                Command::Collect { round, parts } => {
                    let wrong = parts.iter().filter(|p| p.1.hash == [9; 32]).count() as u64;
                    runs.entered += wrong;
                    runs.tasks += parts.len() as u64;
                    model.truncate(round as usize);
                    model.push(wrong);
                    Some(Event::Collected(Ok(())))
                }
                Command::OuterStep { .. } => {
                    next_tensor = next_tensor.wrapping_add(1).max(1);
                    runs.rounds_trained += 1;
                    Some(Event::Stepped(Ok(tensors(next_tensor))))
                }
                Command::Checkpoint { .. } => Some(Event::Checkpointed(CheckpointOutcome::Recorded)),
                Command::Rewind { round, .. } => {
                    runs.rewinds += 1;
                    runs.rounds_discarded += model.len() as u32 - round;
                    model.truncate(round as usize);
                    Some(Event::Rewound(Ok(CheckpointOutcome::Recorded)))
                }
                Command::Settle(order) => {
                    assert!(order.completed, "job {job} did not complete");
                    break 'job;
                }
                _ => None,
            };
            if let Some(event) = answer {
                if generation != h.engine.generation() {
                    continue;
                }
                let out = h.send(event);
                let generation = h.engine.generation();
                queue.extend(out.into_iter().map(|c| (generation, c)));
            }
        }
        runs.jobs += 1;
        let wrong: u64 = model.iter().sum();
        runs.in_final_models += wrong;
        if caught {
            runs.caught += 1;
            runs.in_final_models_caught += wrong;
        }
    }
    runs
}

const JOBS: u32 = 20;
const ROUNDS: u32 = 10;
const SHARDS: u8 = 100;
const PERCENT: u32 = 10;
const SEED: u64 = 17;

#[test]
fn no_result_of_a_node_found_wrong_stays_in_the_model() {
    // A node corrupting 10 % of its results beside four honest ones, 30 jobs of 6 rounds of 10
    // shards: each time it is caught the job rewinds, so none of its results stays in the model.
    let (jobs, rounds, shards, percent, seed) = (JOBS, ROUNDS, SHARDS, PERCENT, SEED);
    let runs = run_beside_a_corrupter(jobs, rounds, shards, percent, seed, Verification::Sampled);
    eprintln!(
        "a node corrupting 10 % of its results, {} jobs: caught in {}; {} corrupted updates entered \
         the weights, {} stayed in a final model ({} in jobs that caught it); {} rewinds threw away \
         {} of {} rounds trained ({:.1} %); {} executions for {} tasks ({:.2}×)",
        runs.jobs,
        runs.caught,
        runs.entered,
        runs.in_final_models,
        runs.in_final_models_caught,
        runs.rewinds,
        runs.rounds_discarded,
        runs.rounds_trained,
        100.0 * f64::from(runs.rounds_discarded) / f64::from(runs.rounds_trained.max(1)),
        runs.executions,
        runs.tasks,
        runs.executions as f64 / runs.tasks.max(1) as f64,
    );
    assert!(runs.caught > 0, "{runs:?}");
    assert!(
        runs.rewinds > 0,
        "some catch came after unconfirmed results: {runs:?}"
    );
    assert!(
        runs.entered > 0,
        "corrupted updates were reduced before a catch: {runs:?}"
    );
    assert_eq!(runs.in_final_models_caught, 0, "{runs:?}");
}

#[test]
fn with_every_result_checked_no_corrupted_result_ever_enters_the_weights() {
    // The same corrupter, every result checked: each corrupted update is caught before its round
    // is reduced, so none enters the weights, none is rewound, and the node is caught in every
    // job. The price: every task runs at least twice.
    let runs = run_beside_a_corrupter(JOBS, ROUNDS, SHARDS, PERCENT, SEED, Verification::Every);
    eprintln!(
        "every result checked, {} jobs: caught in {}; {} corrupted updates entered the weights; \
         {} executions for {} tasks ({:.2}×)",
        runs.jobs,
        runs.caught,
        runs.entered,
        runs.executions,
        runs.tasks,
        runs.executions as f64 / runs.tasks.max(1) as f64,
    );
    assert_eq!(runs.caught, runs.jobs, "{runs:?}");
    assert_eq!(
        (runs.entered, runs.in_final_models, runs.rewinds),
        (0, 0, 0),
        "{runs:?}"
    );
    assert!(runs.executions >= 2 * runs.tasks, "{runs:?}");
}

#[test]
fn with_every_result_checked_the_check_follows_the_result_without_a_draw() {
    let mut s = setup(2, 1, 1);
    s.verification = Verification::Every;
    let (mut h, places) = Harness::started(s);
    let out = decisions(h.run(execs_of(&places)[0], 2, 1));
    assert!(
        matches!(&out[..], [Command::Place { shard: s, exclude, .. }] if *s == shard(0) && exclude == &vec![id(2)]),
        "{out:?}"
    );
}

#[test]
fn with_every_result_checked_a_result_no_other_node_can_check_fails_the_job() {
    let mut s = setup(1, 1, 1);
    s.verification = Verification::Every;
    let mut h = Harness::new(s);
    let one_compute = vec![node(1, Role::Compute), node(STORAGE, Role::Storage)];
    h.send(Event::Start);
    h.send(Event::Nodes(Ok(one_compute.clone())));
    h.send(Event::Stored(Ok(tensors(0))));
    let places = h.send(Event::Nodes(Ok(one_compute)));
    let place = h.run(execs_of(&places)[0], 1, 1);
    let out = h.send(Event::Placed {
        exec: execs_of(&place)[0],
        placement: None,
    });
    assert!(out.iter().any(is_error), "{out:?}");
    assert!(
        !out.iter().any(|c| matches!(c, Command::Collect { .. })),
        "the unchecked result was not reduced: {out:?}"
    );
    assert!(
        matches!(out.last(), Some(Command::Checkpoint { round: 0, .. })),
        "the job ends, claimed before it is paid: {out:?}"
    );
}
