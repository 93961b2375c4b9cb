//! Resumes orphaned jobs: on the Raft leader, watches the job records on the ledger and takes
//! over a job whose runner has stopped checkpointing for longer than the lease (its replica
//! died or was cut off), or one recorded as run here that this replica no longer runs (it
//! restarted). The ledger arbitrates: after a takeover the old runner's checkpoints are refused,
//! so it stops without settling, and exactly one replica pays the job.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aic_ledger::api::{LedgerRequest, LedgerResponse};
use aic_protocol::{JobId, NodeId};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::job::{self, JobContext, JobState, StateOf};

/// What the resumer last saw of a job record, and since when.
struct Seen {
    runner: NodeId,
    checkpoints: u64,
    takeovers: u32,
    since: Instant,
}

/// Checks the ledger's job records every `check_every` while this replica leads.
pub async fn run(ctx: JobContext, lease: Duration, shutdown: CancellationToken) {
    let check_every = (lease / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
    let mut ticker = tokio::time::interval(check_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: HashMap<JobId, Seen> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if !ctx.ledger.is_leader() {
            // A new leader starts each lease afresh.
            seen.clear();
            continue;
        }
        let records = match ctx.ledger.execute(LedgerRequest::Jobs).await {
            Ok(LedgerResponse::Jobs(records)) => records,
            _ => continue,
        };
        seen.retain(|job, _| records.iter().any(|(recorded, _)| recorded == job));
        let now = Instant::now();
        for (job, record) in records {
            let here = ctx
                .board
                .send(StateOf { job })
                .await
                .unwrap_or(Some(JobState::Running));
            // Running here, or ended here (a failed settlement is reported, not retried in a
            // loop): nothing to resume.
            if here == Some(JobState::Running) || (record.runner == ctx.me && here.is_some()) {
                seen.remove(&job);
                continue;
            }
            let entry = seen.entry(job).or_insert(Seen {
                runner: record.runner,
                checkpoints: record.checkpoints,
                takeovers: record.takeovers,
                since: now,
            });
            let moved = (entry.runner, entry.checkpoints, entry.takeovers)
                != (record.runner, record.checkpoints, record.takeovers);
            if moved {
                *entry = Seen {
                    runner: record.runner,
                    checkpoints: record.checkpoints,
                    takeovers: record.takeovers,
                    since: now,
                };
                continue;
            }
            // Recorded as ours but unknown here: this replica restarted; resume at once.
            let orphaned = record.runner == ctx.me || now.duration_since(entry.since) >= lease;
            if !orphaned {
                continue;
            }
            seen.remove(&job);
            match job::resume(&ctx, job, &record).await {
                Ok(()) => info!(%job, round = record.round, "resumed a job whose runner stopped"),
                Err(error) => warn!(%job, %error, "could not resume the job"),
            }
        }
    }
}
