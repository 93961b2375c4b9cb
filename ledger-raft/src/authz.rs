//! Which ledger requests each certificate role may make, as one table of data, and the checks a
//! request passes before anything is proposed to Raft.
//!
//! The RPC layer's table ([`aic_protocol::authz`]) lets every role send `ClientRequest::Ledger`;
//! this table narrows it per ledger request and is checked by the replica that receives it,
//! before it forwards or executes anything. Membership changes are for the `operator` role only:
//! a certificate `aic ca issue --role operator` made for the people who run the cluster.

use aic_protocol::Role;

use crate::api::LedgerRequest;
use crate::error::TxError;
use crate::state::LedgerState;
use crate::tx::SignedTransaction;

/// One row: the roles that may make ledger request `call` (its [`LedgerRequest::kind_name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedgerRule {
    pub call: &'static str,
    pub roles: &'static [Role],
}

const EVERYONE: &[Role] = &[
    Role::Client,
    Role::Operator,
    Role::Scheduler,
    Role::Storage,
    Role::Compute,
    Role::Gateway,
];
/// Signed transactions come from people's wallets, the scheduler's system key and gateways'
/// settlement keys.
const SIGNERS: &[Role] = &[Role::Client, Role::Operator, Role::Scheduler, Role::Gateway];
const OPERATORS: &[Role] = &[Role::Operator];

const fn rule(call: &'static str, roles: &'static [Role]) -> LedgerRule {
    LedgerRule { call, roles }
}

/// The whole table; every [`LedgerRequest`] kind has exactly one row.
pub const TABLE: &[LedgerRule] = &[
    rule("submit", SIGNERS),
    // The ledger is public: every role reads it (a storage node checks an asset's owner and
    // provenance before an export).
    rule("account", EVERYONE),
    rule("allowance", EVERYONE),
    rule("history", EVERYONE),
    rule("assets", EVERYONE),
    rule("asset", EVERYONE),
    rule("escrow", EVERYONE),
    rule("jobs", EVERYONE),
    rule("is_approved_for_all", EVERYONE),
    rule("blocks", EVERYONE),
    rule("status", EVERYONE),
    rule("audit", EVERYONE),
    rule("inference_access", EVERYONE),
    rule("api_keys", EVERYONE),
    rule("listings", EVERYONE),
    rule("job_log", EVERYONE),
    rule("job_summary", EVERYONE),
    rule("add_learner", OPERATORS),
    rule("change_membership", OPERATORS),
    // Public data, but each backup makes the leader take a snapshot: for the people who run it.
    rule("backup", OPERATORS),
];

/// Whether a certificate of `role` may make `request`.
pub fn allows(request: &LedgerRequest, role: Role) -> bool {
    let call = request.kind_name();
    TABLE
        .iter()
        .find(|rule| rule.call == call)
        .is_some_and(|rule| rule.roles.contains(&role))
}

/// The largest transaction a user may submit (a manifest of 64 KiB and room around it).
pub const MAX_USER_TX_BYTES: usize = 128 * 1024;
/// The largest system transaction (a job checkpoint's weights and tallies, a model's manifest).
pub const MAX_SYSTEM_TX_BYTES: usize = 1024 * 1024;
/// The largest encoded ledger request a replica decodes at all.
pub const MAX_LEDGER_REQUEST_BYTES: usize = MAX_SYSTEM_TX_BYTES + 4096;
/// How far ahead of the account's next nonce a transaction may be and still be proposed.
pub const MAX_NONCE_AHEAD: u64 = 1024;

/// The cheap checks that need no state: size for its kind, chain, system key. Run by the
/// replica that receives a request, before it forwards it to the leader. The signature is
/// verified once, by the leader, in the batch it proposes ([`crate::raft::group_commit`]).
pub fn check_stateless(state: &LedgerState, signed: &SignedTransaction) -> Result<(), TxError> {
    let tx = &signed.tx;
    let system = tx.call.is_system();
    if system && tx.from != state.genesis.system_key {
        return Err(TxError::NotSystem);
    }
    if tx.call.is_settlement() && !state.may_settle_inference(&tx.from) {
        return Err(TxError::NotSettler);
    }
    let system = system || tx.call.is_settlement();
    let (what, max) = if system {
        ("system", MAX_SYSTEM_TX_BYTES)
    } else {
        ("user", MAX_USER_TX_BYTES)
    };
    let bytes = postcard::experimental::serialized_size(signed).unwrap_or(usize::MAX);
    if bytes > max {
        return Err(TxError::TooLarge {
            what: what.to_string(),
            bytes: bytes as u64,
            max: max as u64,
        });
    }
    if tx.chain_id != state.genesis.chain_id {
        return Err(TxError::WrongChain {
            expected: state.genesis.chain_id.clone(),
            got: tx.chain_id.clone(),
        });
    }
    Ok(())
}

/// The leader's last check before it proposes a transaction that passed [`check_stateless`]
/// where it entered: a nonce neither spent nor implausibly far ahead, on the leader's applied
/// state. A refusal here costs no Raft entry; what passes is checked again when the entry is
/// applied.
pub fn check_nonce(state: &LedgerState, signed: &SignedTransaction) -> Result<(), TxError> {
    let expected = state.account(&signed.tx.from).nonce;
    let got = signed.tx.nonce;
    if got < expected || got - expected > MAX_NONCE_AHEAD {
        return Err(TxError::BadNonce { expected, got });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_kind_has_one_row() {
        let mut names: Vec<&str> = TABLE.iter().map(|r| r.call).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a ledger request has two rows");
        for request in LedgerRequest::examples() {
            assert!(
                TABLE.iter().any(|r| r.call == request.kind_name()),
                "{} has no row",
                request.kind_name()
            );
        }
        assert_eq!(TABLE.len(), LedgerRequest::examples().len());
    }
}
