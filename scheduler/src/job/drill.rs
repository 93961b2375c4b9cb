//! The drill hook: a fault drill (the devnet's `--kill-*-at-round`) is synchronised with the
//! job it interrupts, never raced against it. A scheduler configured with `[jobs.drill]` holds a
//! job after recording the checkpoint of the named round, tells the drill over a Unix socket,
//! and goes on only when the drill answers — after it has done its damage (or never, when the
//! damage is this replica's death). Without the section nothing waits.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

/// The `[jobs.drill]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillHook {
    /// Hold a job once its checkpoint of this round is on the ledger.
    pub hold_after_round: u32,
    /// The drill's Unix socket: told `JOB ROUND`, it answers (anything, or by closing) once the
    /// job may go on.
    pub gate: PathBuf,
}

impl DrillHook {
    /// Called by a job after each recorded checkpoint; returns when the job may go on.
    pub async fn checkpointed(&self, job: aic_protocol::JobId, round: u32) {
        if round != self.hold_after_round {
            return;
        }
        info!(%job, round, gate = %self.gate.display(), "drill: holding the job");
        let mut gate = match tokio::net::UnixStream::connect(&self.gate).await {
            Ok(gate) => gate,
            Err(error) => {
                // A drill that is not listening does not stop the job.
                warn!(%job, %error, "drill: the gate is not listening; going on");
                return;
            }
        };
        if gate
            .write_all(format!("{job} {round}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
        let mut answer = [0u8; 16];
        let _ = gate.read(&mut answer).await;
        info!(%job, round, "drill: going on");
    }
}
