//! The `Job` actor: one per job this replica runs. It owns the job's [`Engine`], carries out each
//! command it answers (each I/O command as a future whose outcome is fed back as an event), and
//! publishes the report on the board until the engine says the job has finished.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use actix::prelude::*;
use aic_ledger::state::JobRecord;
use aic_protocol::messages::NodeStatus;
use aic_protocol::rpc::RpcClient;
use aic_protocol::{JobId, NodeId};
use serde_json::json;
use tracing::{info, warn, Instrument, Span};

use super::admission::{self, Plan, RecordedJob};
use super::board::{JobState, Open, Update};
use super::checkpoint::Progress;
use super::engine::{CheckpointOutcome, Command, Ending, Engine, EngineSetup, Event, Resumed};
use super::report::{JobReport, WireTally};
use super::JobContext;
use crate::allocator::UpdateTopology;
use crate::data_plane::OuterState;
use crate::payroll;
use crate::rater::RecordCheck;
use crate::registry::ListNodes;

/// What the job's commands act on: the grid's actors and ledger, the job's weights, its view
/// of the nodes and its connections. Shared by the futures the actor spawns.
pub struct Effects {
    pub(super) ctx: JobContext,
    pub(super) plan: Plan,
    nodes: RwLock<Vec<NodeStatus>>,
    /// Connections to compute nodes, reused across tasks.
    pub(super) clients: Mutex<HashMap<NodeId, RpcClient>>,
    pub(super) wire: WireTally,
    /// The weights and the outer optimizer's state.
    pub(super) outer: Mutex<OuterState>,
    /// The round's mean update, between `Collect` and `OuterStep`.
    pub(super) mean_update: Mutex<Option<Vec<f32>>>,
    /// Nodes banned in this job: a ticket signed after the ban is not granted.
    pub(super) banned: Mutex<HashSet<NodeId>>,
    /// Rounds the job trains in all (what the learning-rate schedule spans).
    pub(super) rounds: u32,
}

impl Effects {
    pub(super) fn new(ctx: JobContext, plan: Plan) -> Self {
        let outer = OuterState::new(
            plan.trainable.init(plan.request.training_seed()).flat(),
            plan.request.outer_optimizer,
        );
        Effects {
            ctx,
            plan,
            nodes: RwLock::new(Vec::new()),
            clients: Mutex::new(HashMap::new()),
            wire: WireTally::default(),
            outer: Mutex::new(outer),
            mean_update: Mutex::new(None),
            banned: Mutex::new(HashSet::new()),
            rounds: 0,
        }
    }

    /// The nodes as the registry last listed them.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        self.nodes.read().expect("nodes").clone()
    }

    pub fn node(&self, id: &NodeId) -> Option<NodeStatus> {
        self.nodes
            .read()
            .expect("nodes")
            .iter()
            .find(|n| &n.node_id == id)
            .cloned()
    }

    pub fn address_of(&self, id: &NodeId) -> Option<String> {
        self.node(id).map(|n| n.quic_addr)
    }

    pub fn name(&self, id: &NodeId) -> String {
        self.node(id).map_or_else(|| id.short(), |n| n.name)
    }

    /// Reads the registry and hands the allocator the same view.
    pub async fn refresh_nodes(self: Arc<Self>) -> Result<Vec<NodeStatus>, String> {
        let nodes = self
            .ctx
            .registry
            .send(ListNodes)
            .await
            .map_err(|e| e.to_string())?;
        self.ctx
            .allocator
            .send(UpdateTopology { nodes: nodes.clone() })
            .await
            .map_err(|e| e.to_string())?;
        *self.nodes.write().expect("nodes") = nodes.clone();
        Ok(nodes)
    }
}

/// Starts a job's actor on the system's arbiter: a new job, or one resumed from a checkpoint
/// (its weights already restored into `effects`, and `note` saying so in the report).
pub fn launch(
    ctx: JobContext,
    effects: Effects,
    cancel: Arc<AtomicBool>,
    resumed: Option<Resumed>,
    note: Option<serde_json::Value>,
) {
    let plan = &effects.plan;
    let setup = EngineSetup {
        job: plan.request.job,
        dataset: plan.dataset.clone(),
        train: plan.manifest.train.clone(),
        test: plan.manifest.test.clone(),
        steps_per_epoch: ctx.steps_per_epoch,
        epochs: plan.request.epochs,
        evaluate_every_rounds: plan.request.evaluate_every_rounds,
        parameters: plan.parameters(),
        regression: plan.trainable.is_regression(),
        fees: vec![
            (
                plan.dataset_owner,
                plan.dataset_fee,
                aic_ledger::tx::PayoutKind::DatasetFee,
            ),
            (
                plan.model_owner,
                plan.model_fee,
                aic_ledger::tx::PayoutKind::ModelFee,
            ),
        ],
        task_seed: rand::random(),
        payer: plan.payer,
        resumed,
        verification: plan.request.verification,
    };
    let start_round = setup.resumed.as_ref().map_or(0, |r| r.round);
    let mut report = JobReport::new(&ctx, plan, start_round);
    if let Some(note) = note {
        report.set("resumed", note);
    }
    let span = tracing::info_span!("job", job = %plan.request.job);
    let arbiter = ctx.arbiter.clone();
    let engine = Engine::new(setup);
    let mut effects = effects;
    effects.rounds = engine.total_rounds();
    let effects = Arc::new(effects);
    Job::start_in_arbiter(&arbiter, move |_| Job {
        engine,
        effects,
        report,
        cancel,
        cancel_told: false,
        span,
    });
}

/// Resumes a job another replica (or this one, before a restart) ran: takes it over on the
/// ledger, restores its weights and tallies from the latest checkpoint, and runs it from there.
pub async fn resume(ctx: &JobContext, job: JobId, record: &JobRecord) -> Result<(), String> {
    let recorded: RecordedJob =
        serde_json::from_slice(&record.request).map_err(|e| format!("the recorded request: {e}"))?;
    let progress = Progress::decode(&record.progress).map_err(|e| format!("the checkpoint: {e}"))?;
    let system = ctx.system.clone().ok_or("no system key")?;
    let mut plan = admission::resolve(&ctx.ledger, &recorded.request)
        .await
        .map_err(|e| e.to_string())?;
    match admission::read(&ctx.ledger, aic_ledger::api::LedgerRequest::Escrow(job)).await {
        Ok(aic_ledger::api::LedgerResponse::Escrow(Some(escrow))) => {
            plan.payer = escrow.payer;
            plan.budget = escrow.remaining;
        }
        other => return Err(format!("job {job} has no escrow to resume: {other:?}")),
    }
    let cancel = ctx
        .board
        .send(Open {
            job,
            submitter: recorded.submitter,
            resuming: true,
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let failed = |error: String| Update {
        job,
        state: JobState::Failed,
        report: json!({"id": job.to_string(), "state": "failed", "error": error}),
        escrow_left: 1.0,
    };
    if record.runner != ctx.me {
        if let Err(error) = system
            .submit(
                &ctx.ledger,
                aic_ledger::tx::Call::TakeOverJob { job, runner: ctx.me },
            )
            .await
        {
            let _ = ctx.board.send(failed(error.clone())).await;
            return Err(format!("taking job {job} over: {error}"));
        }
    }
    let effects = Arc::new(Effects::new(ctx.clone(), plan));
    let tensors = record.tensors.clone().filter(|_| record.round > 0);
    if let Some(tensors) = &tensors {
        let restored = match effects.clone().refresh_nodes().await {
            Ok(_) => effects.restore(tensors).await,
            Err(error) => Err(error),
        };
        if let Err(error) = restored {
            let _ = ctx.board.send(failed(error.clone())).await;
            return Err(error);
        }
    }
    let effects = Arc::into_inner(effects).expect("no future holds the effects yet");
    info!(%job, round = record.round, previous = %record.runner.short(), "resuming a job");
    let resumed = Resumed {
        round: record.round,
        tallies: progress.tallies,
        tensors: tensors.clone(),
        rewind: progress.rewind,
    };
    let note = json!({
        "from_round": record.round,
        "by": ctx.me.to_string(),
        "previous_runner": record.runner.to_string(),
        // The checkpoint's weights, fetched back from the storage nodes that held them.
        "weights": tensors.as_ref().map(|t| t.weights.hex()),
        "weights_holders": tensors.as_ref().map(|t| t.holders.len()),
    });
    launch(ctx.clone(), effects, cancel, Some(resumed), Some(note));
    Ok(())
}

/// The actor. See the module documentation.
pub struct Job {
    engine: Engine,
    effects: Arc<Effects>,
    report: JobReport,
    cancel: Arc<AtomicBool>,
    /// Whether the engine has been told of the cancel.
    cancel_told: bool,
    span: Span,
}

impl Actor for Job {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.feed(Event::Start, ctx);
    }
}

impl Job {
    fn feed(&mut self, event: Event, ctx: &mut Context<Self>) {
        if !self.cancel_told && self.cancel.load(Ordering::SeqCst) {
            self.cancel_told = true;
            let commands = self.engine.handle(Event::Cancel);
            self.carry_out(commands, ctx);
        }
        let commands = self.engine.handle(event);
        self.carry_out(commands, ctx);
    }

    /// Runs `future` on the actor's context and feeds its event back to the engine, unless a
    /// rewind threw away the rounds it was for meanwhile.
    fn answer<F>(&mut self, future: F, span: Span, ctx: &mut Context<Self>)
    where
        F: Future<Output = Event> + 'static,
    {
        self.answer_all(async move { vec![future.await] }, span, ctx);
    }

    /// Runs `future` on the actor's context; nothing comes back to the engine.
    fn background<F>(&mut self, future: F, span: Span, ctx: &mut Context<Self>)
    where
        F: Future<Output = ()> + 'static,
    {
        ctx.spawn(future.instrument(span).into_actor(self));
    }

    /// Runs `future` on the actor's context and feeds the events it answers back to the engine
    /// in order, unless a rewind threw away the rounds they were for meanwhile.
    fn answer_all<F>(&mut self, future: F, span: Span, ctx: &mut Context<Self>)
    where
        F: Future<Output = Vec<Event>> + 'static,
    {
        let generation = self.engine.generation();
        ctx.spawn(
            future
                .instrument(span)
                .into_actor(self)
                .map(move |events, job, ctx| {
                    for event in events {
                        if job.engine.generation() != generation {
                            return;
                        }
                        job.feed(event, ctx);
                    }
                }),
        );
    }

    fn carry_out(&mut self, commands: Vec<Command>, ctx: &mut Context<Self>) {
        // The placements asked for at once (a round's tasks) are made at once: one pass of the
        // allocator over the nodes, the same choices as one request each.
        let immediate = |c: &Command| matches!(c, Command::Place { after: None, .. });
        if commands.iter().filter(|c| immediate(c)).count() < 2 {
            return self.carry_out_each(commands, ctx);
        }
        let (now, rest): (Vec<Command>, Vec<Command>) = commands.into_iter().partition(immediate);
        let fx = self.effects.clone();
        let round = tracing::info_span!(parent: &self.span, "round", round = self.engine.rounds());
        let (execs, tasks): (Vec<u64>, Vec<_>) = now
            .into_iter()
            .filter_map(|c| match c {
                Command::Place {
                    exec, shard, exclude, ..
                } => Some((exec, (shard, exclude))),
                _ => None,
            })
            .unzip();
        self.answer_all(
            async move {
                let placed = fx.place_round(tasks).await;
                execs
                    .into_iter()
                    .zip(placed)
                    .map(|(exec, placement)| Event::Placed { exec, placement })
                    .collect()
            },
            round,
            ctx,
        );
        self.carry_out_each(rest, ctx);
    }

    fn carry_out_each(&mut self, commands: Vec<Command>, ctx: &mut Context<Self>) {
        for command in commands {
            let fx = self.effects.clone();
            let round = tracing::info_span!(parent: &self.span, "round", round = self.engine.rounds());
            match command {
                Command::RefreshNodes { after } => self.answer(
                    async move {
                        if let Some(wait) = after {
                            tokio::time::sleep(wait).await;
                        }
                        Event::Nodes(fx.refresh_nodes().await)
                    },
                    round,
                    ctx,
                ),
                Command::StoreState => {
                    self.answer(async move { Event::Stored(fx.store_state().await) }, round, ctx)
                }
                Command::Place {
                    exec,
                    shard,
                    exclude,
                    after,
                } => self.answer(
                    async move {
                        if let Some(wait) = after {
                            tokio::time::sleep(wait).await;
                        }
                        Event::Placed {
                            exec,
                            placement: fx.place(&shard, exclude).await,
                        }
                    },
                    round,
                    ctx,
                ),
                Command::Dispatch {
                    exec,
                    task,
                    kind,
                    round: task_round,
                    shard,
                    placement,
                    weights,
                } => {
                    let span = tracing::info_span!(parent: &round, "task", %task, shard = %shard.id, node = %placement.node.short());
                    self.answer(
                        async move {
                            let outcome = fx
                                .dispatch(task, kind, task_round, &shard, &placement, &weights)
                                .await;
                            Event::Ran { exec, outcome }
                        },
                        span,
                        ctx,
                    )
                }
                Command::DrawCheck { slot, node } => self.answer(
                    async move {
                        Event::CheckDrawn {
                            slot,
                            check: fx.draw_check(node).await,
                        }
                    },
                    round,
                    ctx,
                ),
                Command::Compare { slot, pair, a, b } => self.answer(
                    async move {
                        Event::Compared {
                            slot,
                            pair,
                            outcome: fx.agree(&a, &b).await,
                        }
                    },
                    round,
                    ctx,
                ),
                Command::Rate { node, matched } => {
                    self.effects.ctx.rater.do_send(RecordCheck { node, matched })
                }
                Command::Penalise { node, task } => self.background(fx.penalise(node, task), round, ctx),
                Command::Ban { node } => {
                    self.effects.banned.lock().expect("banned").insert(node);
                    self.effects.ctx.tickets.revoke(&node);
                }
                Command::GrantTicket { node } => self.background(fx.grant_ticket(node), round, ctx),
                Command::Collect { round: _, parts } => self.answer(
                    async move { Event::Collected(fx.collect(parts).await) },
                    round,
                    ctx,
                ),
                Command::OuterStep { round: _ } => {
                    self.answer(async move { Event::Stepped(fx.outer_step().await) }, round, ctx)
                }
                Command::Checkpoint {
                    round: at,
                    tensors,
                    progress,
                } => self.answer(
                    async move {
                        let outcome = fx.clone().record_checkpoint(at, tensors, progress).await;
                        if let (Some(drill), CheckpointOutcome::Recorded) = (&fx.ctx.drill, outcome) {
                            drill.checkpointed(fx.plan.request.job, at).await;
                        }
                        Event::Checkpointed(outcome)
                    },
                    round,
                    ctx,
                ),
                Command::Rewind {
                    round: to,
                    tensors,
                    progress,
                    wrong,
                } => self.answer(
                    async move { Event::Rewound(fx.rewind(to, tensors, progress, wrong).await) },
                    round,
                    ctx,
                ),
                Command::DropTensors { tensors, holders } => {
                    self.background(fx.drop_tensors(tensors, holders), round, ctx)
                }
                Command::Report(item) => self.report.add(item, &self.effects),
                Command::Publish => self.publish(JobState::Running),
                Command::Settle(order) => {
                    let report = self.report.take_value();
                    let settle = fx.settle(order, report).instrument(round);
                    ctx.spawn(settle.into_actor(self).map(|(report, ok), job, ctx| {
                        job.report.put_value(report);
                        job.feed(Event::Settled { ok }, ctx);
                    }));
                }
                Command::Finish(ending) => {
                    self.finish(ending);
                    ctx.stop();
                }
            }
        }
    }

    /// The share of the escrow left once the work so far and the usage fees are paid: what the
    /// escrow alert watches (0 when the work already exceeds it).
    fn escrow_left(&self) -> f64 {
        let plan = &self.effects.plan;
        if plan.budget.is_zero() {
            return 0.0;
        }
        let work = self.engine.work_done(true);
        match payroll::settle(plan.budget, &work, &self.effects.ctx.pricing) {
            Ok(settlement) => settlement.refund.0 as f64 / plan.budget.0 as f64,
            Err(_) => 0.0,
        }
    }

    fn publish(&self, state: JobState) {
        self.effects.ctx.board.do_send(Update {
            job: self.effects.plan.request.job,
            state,
            report: self.report.value().clone(),
            escrow_left: self.escrow_left(),
        });
    }

    fn finish(&mut self, ending: Ending) {
        let job = self.effects.plan.request.job;
        let state = match ending {
            Ending::Done => JobState::Done,
            Ending::Failed => JobState::Failed,
            Ending::Cancelled => JobState::Cancelled,
            Ending::Moved => {
                warn!(%job, "another replica took this job over; it settles the job");
                self.report.set(
                    "moved",
                    json!("taken over by another scheduler replica, which runs and settles it"),
                );
                JobState::Moved
            }
        };
        self.report.set("state", json!(state.as_str()));
        info!(%job, state = state.as_str(), accuracy = ?self.report.value()["accuracy"], "job finished");
        self.publish(state);
    }
}
