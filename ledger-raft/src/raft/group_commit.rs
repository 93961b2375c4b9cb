//! Group commit on the leader: the transactions submitted meanwhile are verified together and
//! proposed as one Raft entry ([`LedgerCommand::Batch`]), so they share one log append, one
//! fsync and one replication message per follower, and a few batches are in flight at once.
//!
//! This is where a transaction's signature is verified (strict Ed25519, as before), once, before
//! it is proposed; a bad one is refused alone and costs no entry. Replicas applying a batch do
//! not verify its signatures again: they trust the leader that proposed it for this one check,
//! as they already trust any scheduler replica with the system key, and check everything else
//! (chain, nonce, authority, balances, invariants) themselves. `SECURITY.md` (B3) says so.

use std::sync::Arc;
use std::time::Instant;

use openraft::error::ClientWriteError;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::state_machine::SharedState;
use super::types::{CommandOutcome, LedgerCommand, Raft};
use crate::api::{LedgerApiError, LedgerResponse, LedgerResult};
use crate::authz;
use crate::error::TxError;
use crate::metrics::LedgerMetrics;
use crate::tx::SignedTransaction;

/// Most transactions in one batch entry.
pub const MAX_BATCH_TRANSACTIONS: usize = 1024;
/// Most encoded bytes of the transactions in one batch entry (a larger transaction, at most a
/// 1 MiB system one, goes alone): well under what one replication message carries.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Batches proposed and not yet committed. While these wait, the next batch grows.
const BATCHES_IN_FLIGHT: usize = 4;
/// Batches this large have their signatures verified on several threads.
const PARALLEL_FROM: usize = 64;
/// At most this many verifying threads per batch.
const MAX_THREADS: usize = 8;
/// Submissions waiting for a batch; a full queue makes submitters wait (backpressure).
const QUEUE: usize = 4 * MAX_BATCH_TRANSACTIONS;

struct Pending {
    signed: SignedTransaction,
    bytes: usize,
    answer: oneshot::Sender<LedgerResult>,
}

/// The leader's submission queue. Cloned handles share it.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Pending>,
    metrics: LedgerMetrics,
}

impl GroupCommit {
    /// Starts the batching task of a replica; it proposes only while the replica leads (a
    /// follower's proposals come back as `NoLeader`).
    pub fn start(raft: Raft, shared: SharedState, metrics: LedgerMetrics) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(propose_batches(raft, shared, receiver, metrics.clone()));
        GroupCommit { queue, metrics }
    }

    /// Verifies, proposes and commits `signed` in the next batch; answers once it is applied.
    pub async fn submit(&self, signed: SignedTransaction) -> LedgerResult {
        let started = Instant::now();
        let bytes = postcard::experimental::serialized_size(&signed).unwrap_or(usize::MAX);
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Pending {
                signed,
                bytes,
                answer,
            })
            .await
            .map_err(|_| LedgerApiError::Raft("the replica is shutting down".into()))?;
        let result = answered
            .await
            .map_err(|_| LedgerApiError::Raft("the replica stopped before the batch committed".into()))?;
        if result.is_ok() {
            self.metrics
                .commit_latency
                .observe(started.elapsed().as_secs_f64());
        }
        result
    }
}

/// The next batch: the first submission waited for, then whatever else is queued, within the
/// batch's bounds. A submission that does not fit is kept for the batch after.
async fn next_batch(
    queue: &mut mpsc::Receiver<Pending>,
    carried: &mut Option<Pending>,
) -> Option<Vec<Pending>> {
    let first = match carried.take() {
        Some(first) => first,
        None => queue.recv().await?,
    };
    let mut bytes = first.bytes;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH_TRANSACTIONS {
        let Ok(next) = queue.try_recv() else { break };
        if bytes.saturating_add(next.bytes) > MAX_BATCH_BYTES {
            *carried = Some(next);
            break;
        }
        bytes += next.bytes;
        batch.push(next);
    }
    Some(batch)
}

async fn propose_batches(
    raft: Raft,
    shared: SharedState,
    mut queue: mpsc::Receiver<Pending>,
    metrics: LedgerMetrics,
) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let mut carried = None;
    loop {
        // Waiting for a free slot first lets the batch grow while earlier ones commit.
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(batch) = next_batch(&mut queue, &mut carried).await else {
            return;
        };
        // Verification is CPU work: off the async threads, which carry the network.
        let shared_for_checks = shared.clone();
        let admitted = match tokio::task::spawn_blocking(move || admit(batch, &shared_for_checks)).await {
            Ok(admitted) => admitted,
            // The check panicked (a bug): its waiters hear that their sender was dropped.
            Err(_) => continue,
        };
        if admitted.is_empty() {
            continue;
        }
        let (transactions, answers): (Vec<SignedTransaction>, Vec<_>) =
            admitted.into_iter().map(|p| (p.signed, p.answer)).unzip();
        metrics.batch_transactions.observe(transactions.len() as f64);
        // Proposed in order, here; only the wait for the commit runs beside the next batch.
        match raft.client_write_ff(LedgerCommand::Batch(transactions)).await {
            Err(fatal) => {
                for answer in answers {
                    let _ = answer.send(Err(LedgerApiError::Raft(fatal.to_string())));
                }
            }
            Ok(committed) => {
                tokio::spawn(async move {
                    let outcome = committed.await;
                    drop(slot);
                    answer_batch(outcome, answers);
                });
            }
        }
    }
}

/// Signatures (strict Ed25519) and nonces, on the leader's applied state. What fails is answered
/// at once and left out of the batch.
fn admit(batch: Vec<Pending>, shared: &SharedState) -> Vec<Pending> {
    // A large batch's signatures are verified on every core at once: the batch waits for its
    // verification before it is proposed, and the next one behind it.
    let valid: Vec<bool> = if batch.len() >= PARALLEL_FROM {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_THREADS);
        let share = batch.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let parts: Vec<_> = batch
                .chunks(share)
                .map(|part| scope.spawn(move || part.iter().map(|p| p.signed.verify()).collect::<Vec<_>>()))
                .collect();
            parts
                .into_iter()
                .flat_map(|part| part.join().expect("verifying signatures"))
                .collect()
        })
    } else {
        batch.iter().map(|p| p.signed.verify()).collect()
    };
    let applied = shared.read().expect("state lock");
    batch
        .into_iter()
        .zip(valid)
        .filter_map(|(pending, valid)| {
            let checked = if valid {
                authz::check_nonce(&applied.state, &pending.signed)
            } else {
                Err(TxError::BadSignature)
            };
            match checked {
                Ok(()) => Some(pending),
                Err(refusal) => {
                    let _ = pending.answer.send(Err(LedgerApiError::Refused(refusal)));
                    None
                }
            }
        })
        .collect()
}

type Committed = Result<
    Result<
        openraft::raft::ClientWriteResponse<super::types::LedgerRaft>,
        ClientWriteError<u64, super::types::ReplicaAddr>,
    >,
    oneshot::error::RecvError,
>;

fn answer_batch(outcome: Committed, answers: Vec<oneshot::Sender<LedgerResult>>) {
    let committed = match outcome {
        Ok(Ok(response)) => match response.data {
            CommandOutcome::Batch(outcomes) => Ok((response.log_id.index, outcomes)),
            _ => Err(LedgerApiError::Raft("a batch gave no outcome".into())),
        },
        // Not proposed here: the caller may try again once a leader is known.
        Ok(Err(ClientWriteError::ForwardToLeader(_))) => Err(LedgerApiError::NoLeader),
        Ok(Err(other)) => Err(LedgerApiError::Raft(other.to_string())),
        Err(_) => Err(LedgerApiError::Raft("the Raft core stopped".into())),
    };
    match committed {
        Ok((index, outcomes)) => {
            for (answer, outcome) in answers.into_iter().zip(outcomes) {
                let _ = answer.send(Ok(LedgerResponse::Submitted {
                    hash: outcome.hash,
                    index,
                    result: outcome.result,
                }));
            }
        }
        Err(error) => {
            for answer in answers {
                let _ = answer.send(Err(error.clone()));
            }
        }
    }
}
