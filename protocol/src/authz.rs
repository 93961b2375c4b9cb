//! Who may send what: every request of every conversation against every certificate role, as one
//! table of data, checked by [`crate::rpc`] before any handler runs.
//!
//! A request that is not in the table is refused for every role (deny by default). Ledger
//! requests travel inside `ClientRequest::Ledger`; which ledger calls each role may make is a
//! second table of the same shape in `aic-ledger` (`authz.rs`), checked by the replica that
//! receives the request. `SECURITY.md` names both tables and the tests that walk them.

use crate::frame::FrameKind;
use crate::ids::Role;

/// One row: the roles allowed to send request `rpc` (its metric name) of conversation `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub kind: FrameKind,
    pub rpc: &'static str,
    pub roles: &'static [Role],
}

const NODES: &[Role] = &[Role::Storage, Role::Compute];
const GATEWAY: &[Role] = &[Role::Gateway];
const STORAGE: &[Role] = &[Role::Storage];
const COMPUTE: &[Role] = &[Role::Compute];
const REPLICAS: &[Role] = &[Role::Scheduler];
const REPLICAS_AND_COMPUTE: &[Role] = &[Role::Scheduler, Role::Compute];
const ANY_NODE: &[Role] = &[Role::Scheduler, Role::Storage, Role::Compute];
/// People: users and operators.
const PEOPLE: &[Role] = &[Role::Client, Role::Operator];
/// People, and scheduler replicas reading the grid for a job.
const PEOPLE_AND_REPLICAS: &[Role] = &[Role::Client, Role::Operator, Role::Scheduler];
/// Who looks up the grid's nodes: people, replicas, gateways placing inference, and storage
/// nodes choosing where to escrow their datasets' keys.
const NODE_READERS: &[Role] = &[
    Role::Client,
    Role::Operator,
    Role::Scheduler,
    Role::Gateway,
    Role::Storage,
];
const EVERYONE: &[Role] = &[
    Role::Client,
    Role::Operator,
    Role::Scheduler,
    Role::Storage,
    Role::Compute,
    Role::Gateway,
];

const fn rule(kind: FrameKind, rpc: &'static str, roles: &'static [Role]) -> Rule {
    Rule { kind, rpc, roles }
}

use FrameKind::{ClientRequest as C, NodeRequest as N, PeerRequest as P, ReplicaRequest as R};

/// The whole table. Each request's `rpc_name` appears exactly once per conversation.
pub const TABLE: &[Rule] = &[
    // node → scheduler
    rule(N, "register", NODES),
    rule(N, "heartbeat", NODES),
    rule(N, "attest_import", STORAGE),
    // client → scheduler or storage node
    rule(C, "list_nodes", NODE_READERS),
    // Every role reads the ledger (a storage node checks an asset before an export); which
    // ledger calls a role may make is the ledger's own table.
    rule(C, "ledger", EVERYONE),
    rule(C, "list_datasets", PEOPLE_AND_REPLICAS),
    rule(C, "preview", PEOPLE_AND_REPLICAS),
    rule(C, "stat", PEOPLE_AND_REPLICAS),
    // Imports are people's: a job's weights are tensors (`put_tensor`), never a dataset.
    rule(C, "begin_import", PEOPLE),
    rule(C, "upload_shard", PEOPLE),
    rule(C, "commit_import", PEOPLE),
    rule(C, "abort_import", PEOPLE),
    rule(C, "drop_dataset", PEOPLE),
    rule(C, "export", PEOPLE),
    rule(C, "export_tensor", PEOPLE),
    rule(C, "quote_job", PEOPLE),
    rule(C, "submit_job", PEOPLE),
    rule(C, "job_status", PEOPLE),
    rule(C, "cancel_job", PEOPLE),
    // Gateways read reputations to place inference as the allocator places tasks.
    rule(C, "ratings", NODE_READERS),
    // A gateway reports what its verification of a node's inference found.
    rule(C, "inference_verdict", GATEWAY),
    // node → node
    rule(P, "ping", ANY_NODE),
    rule(P, "get_shard", COMPUTE),
    rule(P, "replicate", STORAGE),
    rule(P, "fetch_sealed", STORAGE),
    rule(P, "drop_replica", STORAGE),
    // Re-replication: the scheduler asks a holder to copy a lost node's dataset elsewhere; only
    // a storage node may hand another one a dataset key and have it pull, or update holders.
    rule(P, "re_replicate", REPLICAS),
    rule(P, "take_replica", STORAGE),
    rule(P, "update_holders", STORAGE),
    rule(P, "escrow_key", STORAGE),
    rule(P, "recover_key", STORAGE),
    rule(P, "list_tensors", REPLICAS),
    rule(P, "run_task", REPLICAS),
    rule(P, "sign_ticket", REPLICAS),
    rule(P, "sign_block", REPLICAS),
    // Compute nodes read a round's weights (with a ticket); replicas store and read tensors.
    rule(P, "get_tensor", REPLICAS_AND_COMPUTE),
    rule(P, "put_tensor", REPLICAS),
    rule(P, "drop_tensor", REPLICAS),
    // Inference: a gateway asks a compute node; the node reads a published model's weights.
    rule(P, "infer", GATEWAY),
    rule(P, "get_published_tensor", COMPUTE),
    // replica → replica
    rule(R, "raft_append_entries", REPLICAS),
    rule(R, "raft_vote", REPLICAS),
    rule(R, "raft_install_snapshot", REPLICAS),
    rule(R, "forward", REPLICAS),
];

/// The roles allowed to send `rpc` in conversation `kind`; none when the table has no row.
pub fn allowed_roles(kind: FrameKind, rpc: &str) -> &'static [Role] {
    TABLE
        .iter()
        .find(|rule| rule.kind == kind && rule.rpc == rpc)
        .map_or(&[], |rule| rule.roles)
}

/// Whether a certificate of `role` may send `rpc` in conversation `kind`.
pub fn allows(kind: FrameKind, rpc: &str, role: Role) -> bool {
    allowed_roles(kind, rpc).contains(&role)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn each_request_has_one_row_and_unknown_requests_are_refused() {
        let mut seen = BTreeSet::new();
        for rule in TABLE {
            assert!(
                seen.insert((rule.kind as u8, rule.rpc)),
                "{} appears twice",
                rule.rpc
            );
            assert!(!rule.roles.is_empty(), "{} allows nobody", rule.rpc);
        }
        for role in Role::ALL {
            assert!(!allows(FrameKind::ClientRequest, "no_such_rpc", role));
            // A name is only allowed in its own conversation.
            assert!(!allows(FrameKind::PeerRequest, "ledger", role));
        }
    }

    #[test]
    fn membership_and_raft_traffic_are_for_replicas_only() {
        for rpc in [
            "raft_append_entries",
            "raft_vote",
            "raft_install_snapshot",
            "forward",
        ] {
            assert_eq!(allowed_roles(FrameKind::ReplicaRequest, rpc), &[Role::Scheduler]);
        }
    }
}
