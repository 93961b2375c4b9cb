//! Calling the ledger over a scheduler connection: ledger requests carried in client frames,
//! waiting out a leader election, and trying again a read whose leader could not confirm its
//! leadership in time (a loaded replica's heartbeats ran late). Used by the `aic` commands, the
//! gateway and the nodes that read the ledger.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aic_protocol::messages::{ClientRequest, ClientResponse};
use aic_protocol::rpc::RpcClient;

use crate::api::{decode, encode, LedgerApiError, LedgerRequest, LedgerResponse, LedgerResult};

/// How long a caller waits for a leader before giving up, unless it set its own bound.
pub const LEADER_WAIT: Duration = Duration::from_secs(15);

/// This process's bound, in milliseconds (0: `LEADER_WAIT`).
static LEADER_WAIT_MS: AtomicU64 = AtomicU64::new(0);

/// Sets how long this process's ledger requests wait for a leader with a majority before they
/// fail (a client's profile says; an operator who would rather hear at once sets it low).
pub fn set_leader_wait(wait: Duration) {
    let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
    LEADER_WAIT_MS.store(ms, Ordering::Relaxed);
}

/// The bound in force: the one set for this process, else `LEADER_WAIT`.
pub fn leader_wait() -> Duration {
    match LEADER_WAIT_MS.load(Ordering::Relaxed) {
        0 => LEADER_WAIT,
        ms => Duration::from_millis(ms),
    }
}

/// Why a remote ledger request failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Transport(#[from] aic_protocol::Error),
    #[error("the ledger refused the request: {0}")]
    Ledger(#[from] LedgerApiError),
    #[error("unexpected answer to a ledger request: {0}")]
    Unexpected(String),
    /// No leader with a majority behind it answered in time: fewer than a quorum of replicas
    /// are up or reachable. Nothing was written.
    #[error("no ledger leader with a majority of replicas within {0:?}; nothing was written")]
    NoLeaderWithin(Duration),
}

/// Sends one ledger request; while no leader is known (an election), or while a read's leader
/// cannot confirm it leads, retries until [`leader_wait`] has passed. A write Raft refused is
/// not retried here: whether it applied is for the caller to find out (its nonce says).
pub async fn request(client: &RpcClient, request: &LedgerRequest) -> Result<LedgerResponse, RemoteError> {
    let wait = leader_wait();
    let deadline = Instant::now() + wait;
    loop {
        let bytes = match client.call(&ClientRequest::Ledger(encode(request))).await? {
            ClientResponse::Ledger(bytes) => bytes,
            other => return Err(RemoteError::Unexpected(format!("{other:?}"))),
        };
        match decode::<LedgerResult>(&bytes)? {
            Ok(response) => return Ok(response),
            Err(
                LedgerApiError::NoLeader | LedgerApiError::LeaderUnreachable(_) | LedgerApiError::NoQuorum,
            ) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(
                LedgerApiError::NoLeader | LedgerApiError::LeaderUnreachable(_) | LedgerApiError::NoQuorum,
            ) => {
                return Err(RemoteError::NoLeaderWithin(wait));
            }
            Err(LedgerApiError::Raft(_)) if !request.is_write() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}
