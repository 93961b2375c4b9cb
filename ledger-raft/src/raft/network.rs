//! Raft traffic between scheduler replicas over the protocol crate's QUIC transport. Only
//! scheduler-role certificates may send it (checked by the RPC layer), and each connection is
//! checked to reach the replica the membership names. Replication is split by bytes: a batch of
//! entries that would not fit one frame is refused here with openraft's `PayloadTooLarge` and a
//! hint of how many entries do fit, so openraft sends fewer — no message can exceed the frame
//! limit, whatever the entries (each is bounded when it is proposed).

use aic_protocol::messages::{ReplicaRequest, ReplicaResponse};
use aic_protocol::rpc::RpcClient;
use aic_protocol::Role;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::AnyError;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::types::{LedgerRaft, ReplicaAddr, ReplicaId};

/// Makes a [`ReplicaPeer`] per target replica, all on this replica's endpoint.
#[derive(Clone)]
pub struct QuicNetwork {
    pub endpoint: quinn::Endpoint,
}

impl RaftNetworkFactory<LedgerRaft> for QuicNetwork {
    type Network = ReplicaPeer;

    async fn new_client(&mut self, target: ReplicaId, node: &ReplicaAddr) -> ReplicaPeer {
        ReplicaPeer {
            endpoint: self.endpoint.clone(),
            target,
            addr: node.clone(),
            client: None,
            connecting: None,
            unanswered_since: None,
        }
    }
}

/// The connection to one other replica, made lazily and remade after failures.
pub struct ReplicaPeer {
    endpoint: quinn::Endpoint,
    target: ReplicaId,
    addr: ReplicaAddr,
    client: Option<RpcClient>,
    /// A connection being made. It runs as its own task, so openraft cancelling the call that
    /// started it (each has one heartbeat interval) does not cancel the handshake: under load a
    /// handshake may take longer than any one call may.
    connecting: Option<tokio::task::JoinHandle<Result<RpcClient, String>>>,
    /// Since when calls on the current connection have gone unanswered (failed or cancelled).
    unanswered_since: Option<std::time::Instant>,
}

/// A connection that has answered nothing for this long is made again: its peer died or
/// restarted (QUIC would notice only at its idle timeout).
const UNANSWERED_FOR: std::time::Duration = std::time::Duration::from_secs(2);

type Rpc<T, E> = Result<T, RPCError<ReplicaId, ReplicaAddr, E>>;

fn unreachable<E: std::error::Error>(error: impl std::fmt::Display) -> RPCError<ReplicaId, ReplicaAddr, E> {
    RPCError::Unreachable(Unreachable::new(&AnyError::error(error.to_string())))
}

impl ReplicaPeer {
    async fn client(&mut self) -> Result<RpcClient, String> {
        if let Some(client) = self.client.as_ref().filter(|c| !c.is_closed()) {
            if self
                .unanswered_since
                .is_none_or(|t| t.elapsed() <= UNANSWERED_FOR)
            {
                return Ok(client.clone());
            }
            self.client = None;
        }
        let connecting = self.connecting.get_or_insert_with(|| {
            tokio::spawn(connect_checked(
                self.endpoint.clone(),
                self.addr.clone(),
                self.target,
            ))
        });
        let made = connecting.await;
        self.connecting = None;
        let client = made.map_err(|e| e.to_string())??;
        self.client = Some(client.clone());
        self.unanswered_since = None;
        Ok(client)
    }

    async fn send<Req, Resp, E>(&mut self, wrap: fn(Vec<u8>) -> ReplicaRequest, request: &Req) -> Rpc<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = postcard::to_stdvec(request).map_err(|e| unreachable::<E>(e))?;
        self.send_encoded(wrap(payload)).await
    }

    /// Sends an already encoded request and decodes its answer.
    async fn send_encoded<Resp, E>(&mut self, request: ReplicaRequest) -> Rpc<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = self.client().await.map_err(unreachable)?;
        // Cleared when the call answers; a call that fails, or that openraft cancels at its
        // deadline, leaves it set, and a connection unanswered for long is made again.
        self.unanswered_since.get_or_insert_with(std::time::Instant::now);
        let ReplicaResponse(bytes) = match client.call(&request).await {
            Ok(response) => response,
            Err(error) => {
                self.client = None;
                return Err(RPCError::Network(NetworkError::new(&AnyError::error(
                    error.to_string(),
                ))));
            }
        };
        self.unanswered_since = None;
        let result: Result<Resp, E> = postcard::from_bytes(&bytes)
            .map_err(|e| RPCError::Network(NetworkError::new(&AnyError::new(&e))))?;
        result.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e)))
    }
}

/// Most bytes of Raft payload one replication message carries (one entry larger than this — at
/// most a system transaction, 1 MiB — goes alone). Far under the 4 MiB frame limit, and small
/// because openraft gives each append-entries call one heartbeat interval to be sent, written
/// and fsynced: a lagging follower fed larger messages timed out on every one and never caught
/// up (openraft does not retry a timed-out batch smaller).
pub const MAX_REPLICATION_BYTES: usize = 1024 * 1024;

/// `None` when the request fits one message; else how many of its entries do (at least one).
/// Each entry is measured once (the request around them is a few dozen bytes, counted as
/// [`ENVELOPE_BYTES`]), since this runs inside the append-entries call's time budget.
pub fn entries_that_fit(rpc: &AppendEntriesRequest<LedgerRaft>, budget: usize) -> Option<u64> {
    if rpc.entries.len() <= 1 {
        return None;
    }
    let mut used = ENVELOPE_BYTES;
    for (fit, entry) in rpc.entries.iter().enumerate() {
        used = used.saturating_add(erased_size::EncodedSize::size(entry));
        if used > budget {
            return Some((fit as u64).max(1));
        }
    }
    None
}

/// A generous bound on an AppendEntries request's bytes besides its entries (vote, previous log
/// id, commit index, lengths).
const ENVELOPE_BYTES: usize = 256;

/// Encoded sizes of the values replication measures.
mod erased_size {
    pub trait EncodedSize {
        fn size(&self) -> usize;
    }

    impl<T: serde::Serialize> EncodedSize for T {
        fn size(&self) -> usize {
            postcard::experimental::serialized_size(self).unwrap_or(usize::MAX / 4)
        }
    }
}

impl RaftNetwork<LedgerRaft> for ReplicaPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<LedgerRaft>,
        _option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<ReplicaId>, RaftError<ReplicaId>> {
        // Encoded once, as it is sent; only a message over the budget is measured entry by entry.
        let payload = postcard::to_stdvec(&rpc).map_err(unreachable::<RaftError<ReplicaId>>)?;
        if payload.len() > MAX_REPLICATION_BYTES {
            if let Some(fit) = entries_that_fit(&rpc, MAX_REPLICATION_BYTES) {
                return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fit)));
            }
        }
        self.send_encoded(ReplicaRequest::AppendEntries(payload)).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<LedgerRaft>,
        _option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<ReplicaId>, RaftError<ReplicaId, InstallSnapshotError>> {
        self.send(ReplicaRequest::InstallSnapshot, &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<ReplicaId>,
        _option: RPCOption,
    ) -> Rpc<VoteResponse<ReplicaId>, RaftError<ReplicaId>> {
        self.send(ReplicaRequest::Vote, &rpc).await
    }
}

/// Connects to a replica and checks it is the one the membership names.
async fn connect_checked(
    endpoint: quinn::Endpoint,
    addr: ReplicaAddr,
    target: ReplicaId,
) -> Result<RpcClient, String> {
    let client = RpcClient::connect(&endpoint, &addr.addr, Role::Scheduler)
        .await
        .map_err(|e| e.to_string())?;
    if client.peer().node_id.to_string() != addr.node_id {
        return Err(format!(
            "{} answered as {}, membership says replica {target} is {}",
            addr.addr,
            client.peer().node_id.short(),
            addr.node_id
        ));
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

    use super::*;
    use crate::keys::Keypair;
    use crate::raft::types::LedgerCommand;
    use crate::tx::{Call, Transaction};

    fn checkpoint(index: u64, weights: usize) -> Entry<LedgerRaft> {
        let key = Keypair::generate();
        let signed = Transaction {
            chain_id: "split".into(),
            from: key.address(),
            nonce: index,
            call: Call::CheckpointJob {
                job: aic_protocol::JobId::from_bytes([1; 16]),
                runner: aic_protocol::NodeId::from_public_key(b"runner"),
                round: index as u32,
                tensors: None,
                progress: vec![0xab; weights],
            },
        }
        .sign(&key);
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
            payload: EntryPayload::Normal(LedgerCommand::Transaction(signed)),
        }
    }

    fn request(entries: Vec<Entry<LedgerRaft>>) -> AppendEntriesRequest<LedgerRaft> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 0),
            prev_log_id: None,
            entries,
            leader_commit: None,
        }
    }

    #[test]
    fn a_batch_over_the_budget_is_cut_to_the_entries_that_fit() {
        let big = request((1..=5).map(|i| checkpoint(i, 900 * 1024)).collect());
        // 900 KiB each: three fit in 3 MiB, four do not; one in the default budget.
        assert_eq!(entries_that_fit(&big, 3 * 1024 * 1024), Some(3));
        assert_eq!(entries_that_fit(&big, MAX_REPLICATION_BYTES), Some(1));
        let small = request((1..=48).map(|i| checkpoint(i, 1024 * 16)).collect());
        assert_eq!(entries_that_fit(&small, MAX_REPLICATION_BYTES), None);
        // One entry is always sent as it is (entries are bounded when proposed).
        let one = request(vec![checkpoint(1, 900 * 1024)]);
        assert_eq!(entries_that_fit(&one, 100), None);
        // The hint is never zero, so replication always makes progress.
        let two = request(vec![checkpoint(1, 900 * 1024), checkpoint(2, 10)]);
        assert_eq!(entries_that_fit(&two, 100), Some(1));
    }
}
