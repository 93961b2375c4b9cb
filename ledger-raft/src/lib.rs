//! The AIC ledger: who owns what, replicated by Raft.
//!
//! ```text
//!  SignedTransaction ─┐                        ┌─► LedgerState::apply_transaction (pure, checked)
//!  BlockHeader ───────┴─► LedgerCommand ─► Raft log (fsync) ─► state machine ─► audit (tests)
//!                                              │
//!                                 snapshots ◄──┘  (install on lagging followers)
//! ```
//!
//! `state` is the deterministic core: accounts, ERC20 and ERC721 semantics, escrow, stake,
//! issuance and blocks, with an audit of the invariants. `raft` wires it into openraft with a
//! durable log and a QUIC network on the protocol crate's transport.

pub mod amount;
pub mod api;
pub mod authz;
pub mod backup;
pub mod block;
pub mod error;
pub mod genesis;
pub mod issuance;
pub mod keys;
pub mod lottery;
pub mod metrics;
pub mod raft;
pub mod remote;
pub mod state;
pub mod testkit;
pub mod tx;

pub use amount::Amount;
pub use error::{InvariantViolation, TxError};
pub use keys::{Address, Keypair};
pub use state::LedgerState;
pub use tx::{Call, SignedTransaction, Transaction};
