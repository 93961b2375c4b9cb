//! Training jobs: admission, the pure job engine and the `Job` actor that carries out its
//! commands, dispatch, checkpoints, settlement, the report, and the board of every job.
//!
//! ```text
//!  admission   request → assets fit → quote → fits a node → escrow → recorded → launched
//!  engine      every decision of a running job: handle(event) -> Vec<Command>, no I/O
//!  runner      the Job actor: carries out commands, feeds outcomes back as events
//!  dispatch    placement, RunTask, the rater's draw, comparing updates, collecting them
//!  checkpoint  tallies and tensor names on the ledger; weights stored, restored, dropped
//!  settlement  escrow paid and refunded, slashing, rewards, the trained model minted
//!  report      the job's JSON report and metrics; bytes on the wire
//!  board       every job on this replica: state, report, cancel, escrow share left
//! ```
//!
//! A round stores the weights on storage nodes by name, places one task per shard, runs H local
//! steps on each compute node (which keeps the update), maybe re-executes elsewhere (the rater
//! draws; a third run decides a disagreement), collects the updates in shard order weighted by
//! rows, applies the outer optimizer and checkpoints the new weights' names on the ledger. A
//! node confirmed wrong is cut from the job, its unverified results of the step re-run, and
//! none of its work is paid.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use aic_ledger::raft::replica::LedgerReplica;
use aic_ledger::Amount;
use aic_protocol::NodeId;

use crate::allocator::Allocator;
use crate::coin_payroll::CoinPayroll;
use crate::metrics::SchedulerMetrics;
use crate::payroll::Pricing;
use crate::rater::Rater;
use crate::registry::Registry;

mod admission;
mod board;
pub(crate) mod checkpoint;
mod dispatch;
pub mod drill;
pub mod engine;
mod report;
mod runner;
mod settlement;
mod signer;

pub use admission::{quote, submit, task_memory_bytes};
pub use board::{Cancel, JobBoard, JobState, Open, StateOf, Status, Update};
pub use checkpoint::{Progress, Tallies};
pub use runner::resume;
pub use signer::{Refusal, SystemSigner};

/// Everything a job talks to.
#[derive(Clone)]
pub struct JobContext {
    /// This scheduler replica: the runner its job records name.
    pub me: NodeId,
    /// Where the `Job` actors run (the system's arbiter).
    pub arbiter: actix::ArbiterHandle,
    pub registry: Addr<Registry>,
    pub allocator: Addr<Allocator>,
    pub rater: Addr<Rater>,
    pub board: Addr<JobBoard>,
    pub ledger: Arc<LedgerReplica>,
    /// Dials compute nodes with the scheduler's certificate.
    pub endpoint: quinn::Endpoint,
    /// Signs shard tickets (the scheduler's certificate key, which storage nodes trust).
    pub ticket_key: ed25519_dalek::SigningKey,
    pub system: Option<Arc<SystemSigner>>,
    /// Pays jobs from escrow (absent without a system key, when jobs are refused).
    pub payroll: Option<Addr<CoinPayroll>>,
    pub pricing: Pricing,
    pub slash: Amount,
    /// Proof-of-Value reward from the reserve per million verified rows (capped by issuance).
    pub reward_per_million_rows: Amount,
    pub steps_per_epoch: u32,
    pub task_timeout: Duration,
    /// Block lottery tickets: nodes whose work a spot check confirmed hold one.
    pub tickets: crate::lottery::Tickets,
    pub metrics: SchedulerMetrics,
    /// A fault drill's hook (`[jobs.drill]`): hold a job at a round until the drill is done.
    pub drill: Option<drill::DrillHook>,
}
