//! The AIC ledger: who owns what.
//!
//! This crate will own the ledger state machine (accounts with u128 balances, ERC20 allowances,
//! ERC721 assets, job escrow, stakes, issuance), its openraft log store and snapshots, the Raft
//! network over the protocol crate's QUIC transport, signed transactions and blocks, and the
//! ledger client. It is filled by the ledger issue; until then it only re-exports the ids the
//! ledger will key its state by, so the workspace's dependency graph is already in its final shape.

pub use aic_protocol::{AssetId, JobId, NodeId};
