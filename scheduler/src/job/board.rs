//! The job board: every job this replica ran, its state and latest report, the submitter who
//! may cancel it, and the escrow share it has left (what the escrow alert watches).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use aic_protocol::{ErrorCode, JobId, NodeId, RpcError};
use serde_json::{json, Value};

use crate::metrics::SchedulerMetrics;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    Running,
    Done,
    Failed,
    Cancelled,
    /// Another replica took the job over (this one stalled); that replica runs and settles it.
    Moved,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Moved => "moved",
        }
    }
}

struct Entry {
    state: JobState,
    report: Value,
    submitter: NodeId,
    cancel: Arc<AtomicBool>,
    /// Share of the escrow left after what the job owes so far.
    escrow_left: f64,
}

pub struct JobBoard {
    jobs: HashMap<JobId, Entry>,
    metrics: SchedulerMetrics,
}

impl JobBoard {
    pub fn new(metrics: SchedulerMetrics) -> Self {
        JobBoard {
            jobs: HashMap::new(),
            metrics,
        }
    }

    /// Publishes the running jobs and the lowest escrow share any of them has left.
    fn publish(&self) {
        let running: Vec<&Entry> = self
            .jobs
            .values()
            .filter(|e| e.state == JobState::Running)
            .collect();
        self.metrics.jobs_running.set(running.len() as i64);
        let lowest = running.iter().map(|e| e.escrow_left).fold(1.0f64, f64::min);
        self.metrics.job_escrow_left.set(lowest);
    }
}

impl Actor for JobBoard {
    type Context = Context<Self>;
}

/// Registers a new job; fails if the id is taken.
#[derive(Message)]
#[rtype(result = "Result<Arc<AtomicBool>, RpcError>")]
pub struct Open {
    pub job: JobId,
    pub submitter: NodeId,
    /// A job resumed here may replace an ended entry (it ran here before another replica took
    /// it over).
    pub resuming: bool,
}

/// The job's state on this replica, if it ran here.
#[derive(Message)]
#[rtype(result = "Option<JobState>")]
pub struct StateOf {
    pub job: JobId,
}

impl Handler<StateOf> for JobBoard {
    type Result = Option<JobState>;

    fn handle(&mut self, message: StateOf, _: &mut Self::Context) -> Option<JobState> {
        self.jobs.get(&message.job).map(|e| e.state)
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Update {
    pub job: JobId,
    pub state: JobState,
    pub report: Value,
    pub escrow_left: f64,
}

#[derive(Message)]
#[rtype(result = "Option<(JobState, Value)>")]
pub struct Status {
    pub job: JobId,
}

#[derive(Message)]
#[rtype(result = "Result<(), RpcError>")]
pub struct Cancel {
    pub job: JobId,
    pub caller: NodeId,
}

impl Handler<Open> for JobBoard {
    type Result = Result<Arc<AtomicBool>, RpcError>;

    fn handle(&mut self, message: Open, _: &mut Self::Context) -> Self::Result {
        let replaceable = message.resuming
            && self
                .jobs
                .get(&message.job)
                .is_some_and(|e| e.state != JobState::Running);
        if self.jobs.contains_key(&message.job) && !replaceable {
            return Err(RpcError::new(
                ErrorCode::AlreadyExists,
                format!("job {} exists", message.job),
            ));
        }
        let cancel = Arc::new(AtomicBool::new(false));
        self.jobs.insert(
            message.job,
            Entry {
                state: JobState::Running,
                report: json!({"id": message.job.to_string(), "state": "running"}),
                submitter: message.submitter,
                cancel: cancel.clone(),
                escrow_left: 1.0,
            },
        );
        self.publish();
        Ok(cancel)
    }
}

impl Handler<Update> for JobBoard {
    type Result = ();

    fn handle(&mut self, message: Update, _: &mut Self::Context) {
        if let Some(entry) = self.jobs.get_mut(&message.job) {
            if entry.state == JobState::Running && message.state != JobState::Running {
                self.metrics
                    .jobs_finished
                    .with_label_values(&[message.state.as_str()])
                    .inc();
            }
            entry.state = message.state;
            entry.report = message.report;
            entry.escrow_left = message.escrow_left;
        }
        self.publish();
    }
}

impl Handler<Status> for JobBoard {
    type Result = Option<(JobState, Value)>;

    fn handle(&mut self, message: Status, _: &mut Self::Context) -> Self::Result {
        self.jobs.get(&message.job).map(|e| (e.state, e.report.clone()))
    }
}

impl Handler<Cancel> for JobBoard {
    type Result = Result<(), RpcError>;

    fn handle(&mut self, message: Cancel, _: &mut Self::Context) -> Self::Result {
        let entry = self
            .jobs
            .get(&message.job)
            .ok_or_else(|| RpcError::new(ErrorCode::NotFound, format!("no job {}", message.job)))?;
        if entry.submitter != message.caller {
            return Err(RpcError::new(
                ErrorCode::PermissionDenied,
                "only the submitter may cancel a job",
            ));
        }
        entry.cancel.store(true, Ordering::SeqCst);
        Ok(())
    }
}
