//! The ledger on openraft: type configuration, durable log store, state machine with
//! snapshots, and the replica that ties them to the QUIC network.

mod commit_hint;
pub mod disk_faults;
pub mod group_commit;
pub mod log_store;
pub mod mem_log_store;
pub mod network;
pub mod replica;
pub mod state_machine;
pub mod types;
