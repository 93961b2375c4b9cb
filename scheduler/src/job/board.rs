//! The job board: the jobs this replica runs and the last ones it ran, each with its state and
//! latest report, the submitter who may cancel it, and the escrow share it has left (what the
//! escrow alert watches). Ended jobs' reports are kept up to a bound in number and in bytes,
//! oldest dropped first: a replica that runs jobs for months must not keep every report (the
//! ledger's job log keeps every job's summary for good), and one report can be large (every
//! task of every round).

use std::collections::{HashMap, VecDeque};
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

/// How many ended jobs' reports a replica keeps, and how many bytes of them (as JSON text);
/// the newest is always kept.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub jobs: usize,
    pub bytes: usize,
}

/// The default: the last 256 ended jobs, within 32 MiB of reports.
pub const KEPT_ENDED: Retention = Retention {
    jobs: 256,
    bytes: 32 * 1024 * 1024,
};

pub struct JobBoard {
    jobs: HashMap<JobId, Entry>,
    /// Ended jobs, oldest first, with their reports' sizes.
    ended: VecDeque<(JobId, usize)>,
    ended_bytes: usize,
    retention: Retention,
    metrics: SchedulerMetrics,
}

impl JobBoard {
    pub fn new(metrics: SchedulerMetrics) -> Self {
        Self::keeping(metrics, KEPT_ENDED)
    }

    /// A board that keeps ended jobs' reports as `retention` says.
    pub fn keeping(metrics: SchedulerMetrics, retention: Retention) -> Self {
        JobBoard {
            jobs: HashMap::new(),
            ended: VecDeque::new(),
            ended_bytes: 0,
            retention,
            metrics,
        }
    }

    /// Notes that `job` ended with a report of `bytes`, and forgets the oldest ended jobs
    /// beyond the bound (one that runs again here, resumed, is kept).
    fn ended(&mut self, job: JobId, bytes: usize) {
        if let Some(at) = self.ended.iter().position(|(j, _)| *j == job) {
            let (_, earlier) = self.ended.remove(at).expect("found above");
            self.ended_bytes = self.ended_bytes.saturating_sub(earlier);
        }
        self.ended.push_back((job, bytes));
        self.ended_bytes = self.ended_bytes.saturating_add(bytes);
        while self.ended.len() > 1
            && (self.ended.len() > self.retention.jobs || self.ended_bytes > self.retention.bytes)
        {
            let Some((oldest, size)) = self.ended.pop_front() else {
                break;
            };
            self.ended_bytes = self.ended_bytes.saturating_sub(size);
            if self
                .jobs
                .get(&oldest)
                .is_some_and(|e| e.state != JobState::Running)
            {
                self.jobs.remove(&oldest);
            }
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
            let ended = entry.state == JobState::Running && message.state != JobState::Running;
            entry.state = message.state;
            entry.report = message.report;
            entry.escrow_left = message.escrow_left;
            if ended {
                let bytes = serde_json::to_vec(&entry.report).map_or(0, |text| text.len());
                self.ended(message.job, bytes);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A board keeping `retention` of ended reports, in a running actor system.
    fn board(retention: Retention) -> Addr<JobBoard> {
        let metrics = SchedulerMetrics::register(&prometheus::Registry::new()).unwrap();
        JobBoard::keeping(metrics, retention).start()
    }

    /// Opens `job` on `board` for a user.
    async fn open(board: &Addr<JobBoard>, job: JobId) {
        let open = Open {
            job,
            submitter: NodeId::from_public_key(b"user"),
            resuming: false,
        };
        board.send(open).await.unwrap().unwrap();
    }

    fn update(job: JobId, state: JobState) -> Update {
        Update {
            job,
            state,
            report: json!({"state": state.as_str()}),
            escrow_left: 1.0,
        }
    }

    #[test]
    fn the_board_keeps_the_last_ended_reports_and_every_running_job() {
        actix::System::new().block_on(keeps_the_last_ended_reports());
    }

    async fn keeps_the_last_ended_reports() {
        let board = board(Retention {
            jobs: 2,
            bytes: usize::MAX,
        });
        let submitter = NodeId::from_public_key(b"user");
        let jobs: Vec<JobId> = (0..4u8).map(|b| JobId::from_bytes([b; 16])).collect();
        for job in &jobs {
            open(&board, *job).await;
        }
        // Jobs 0, 1 and 2 end in that order; job 3 runs on.
        for job in &jobs[..3] {
            board.send(update(*job, JobState::Done)).await.unwrap();
        }
        let state = |job: JobId| {
            let board = board.clone();
            async move { board.send(StateOf { job }).await.unwrap() }
        };
        assert_eq!(state(jobs[0]).await, None, "the oldest ended report is dropped");
        assert_eq!(state(jobs[1]).await, Some(JobState::Done));
        assert_eq!(state(jobs[2]).await, Some(JobState::Done));
        assert_eq!(state(jobs[3]).await, Some(JobState::Running));
        // A job that ends again later (resumed here, then ended) counts as the newest.
        let resumed = Open {
            job: jobs[1],
            submitter,
            resuming: true,
        };
        board.send(resumed).await.unwrap().unwrap();
        board.send(update(jobs[1], JobState::Done)).await.unwrap();
        board.send(update(jobs[3], JobState::Failed)).await.unwrap();
        assert_eq!(state(jobs[2]).await, None);
        assert_eq!(state(jobs[1]).await, Some(JobState::Done));
        assert_eq!(state(jobs[3]).await, Some(JobState::Failed));
    }

    #[test]
    fn the_board_drops_the_oldest_reports_beyond_its_bytes_and_keeps_the_newest() {
        actix::System::new().block_on(async {
            // Room for about two reports of 1 KB.
            let board = board(Retention {
                jobs: 100,
                bytes: 2_500,
            });
            let done = |job: JobId, tasks: usize| Update {
                job,
                state: JobState::Done,
                report: json!({"tasks": "x".repeat(tasks)}),
                escrow_left: 1.0,
            };
            let jobs: Vec<JobId> = (0..4u8).map(|b| JobId::from_bytes([b; 16])).collect();
            for job in &jobs {
                open(&board, *job).await;
                board.send(done(*job, 1_000)).await.unwrap();
            }
            let mut kept = Vec::new();
            for job in &jobs {
                kept.push(board.send(StateOf { job: *job }).await.unwrap().is_some());
            }
            assert_eq!(kept, [false, false, true, true]);
            // One report larger than the whole bound is still kept, alone.
            let huge = JobId::from_bytes([9; 16]);
            open(&board, huge).await;
            board.send(done(huge, 10_000)).await.unwrap();
            assert!(board.send(StateOf { job: huge }).await.unwrap().is_some());
            assert!(board.send(StateOf { job: jobs[3] }).await.unwrap().is_none());
        });
    }
}
