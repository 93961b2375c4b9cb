//! The openraft type configuration of the ledger, and the commands its log carries.

use std::fmt;
use std::io::Cursor;

use aic_protocol::NodeId;
use serde::{Deserialize, Serialize};

use crate::block::BlockHeader;
use crate::error::TxError;
use crate::state::Event;
use crate::tx::SignedTransaction;

/// A Raft replica id: the first eight bytes of the replica's node id, so it is derived from the
/// scheduler's certificate like everything else.
pub type ReplicaId = u64;

pub fn replica_id_of(node: &NodeId) -> ReplicaId {
    let mut first = [0u8; 8];
    first.copy_from_slice(&node.as_bytes()[..8]);
    u64::from_be_bytes(first)
}

/// How the cluster reaches a replica.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaAddr {
    /// `host:port` of the replica's QUIC endpoint.
    pub addr: String,
    /// Its full node id (hex), checked against the certificate it presents.
    pub node_id: String,
}

impl fmt::Display for ReplicaAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{}",
            &self.node_id.get(..12).unwrap_or(&self.node_id),
            self.addr
        )
    }
}

/// What the ledger's log carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerCommand {
    /// One transaction; every replica verifies its signature when applying it.
    Transaction(SignedTransaction),
    SealBlock(BlockHeader),
    /// Many transactions in one entry (group commit), applied in order, each succeeding or
    /// failing alone. The leader that proposed it verified every signature before proposing
    /// (see [`crate::raft::group_commit`]); replicas check everything else again.
    Batch(Vec<SignedTransaction>),
}

impl fmt::Display for LedgerCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LedgerCommand::Transaction(tx) => {
                write!(f, "tx {} from {}", tx.tx.call.kind(), tx.tx.from.short())
            }
            LedgerCommand::SealBlock(header) => write!(f, "seal block {}", header.height),
            LedgerCommand::Batch(batch) => write!(f, "batch of {} tx", batch.len()),
        }
    }
}

/// What applying a command gave, returned to the writer once the entry is committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutcome {
    Transaction {
        hash: [u8; 32],
        result: Result<Vec<Event>, TxError>,
    },
    Block(Result<u64, TxError>),
    /// A batch's transactions, in order.
    Batch(Vec<TxOutcome>),
    /// Blank and membership entries.
    None,
}

/// What applying one transaction of a batch gave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxOutcome {
    pub hash: [u8; 32],
    pub result: Result<Vec<Event>, TxError>,
}

openraft::declare_raft_types!(
    /// The ledger's Raft types.
    pub LedgerRaft:
        D = LedgerCommand,
        R = CommandOutcome,
        NodeId = ReplicaId,
        Node = ReplicaAddr,
        Entry = openraft::Entry<LedgerRaft>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type LogId = openraft::LogId<ReplicaId>;
pub type StorageError = openraft::StorageError<ReplicaId>;
pub type Entry = openraft::Entry<LedgerRaft>;
pub type Raft = openraft::Raft<LedgerRaft>;
