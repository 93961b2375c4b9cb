//! The ledger's client API: what a client asks a scheduler replica and what it answers. Carried
//! as postcard bytes inside the protocol's `ClientRequest::Ledger` (and `ReplicaRequest::Forward`
//! when a follower passes a request to the leader).

use aic_protocol::AssetId;
use serde::{Deserialize, Serialize};

use crate::amount::Amount;
use crate::block::BlockHeader;
use crate::error::TxError;
use crate::keys::Address;
use crate::raft::types::{ReplicaAddr, ReplicaId};
use crate::state::{
    Account, ApiKey, Asset, Event, HistoryEntry, JobLogFilter, JobSummary, JobWork, Publication,
};
use crate::tx::SignedTransaction;

/// Most blocks one `Blocks` answer carries.
pub const MAX_BLOCKS_PER_REQUEST: u64 = 500;
/// Most listings one `Listings` answer carries.
pub const MAX_LISTINGS_PER_REQUEST: u32 = 500;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerRequest {
    /// Append a signed transaction; answers once it is committed and applied.
    Submit(Box<SignedTransaction>),
    Account(Address),
    Allowance {
        owner: Address,
        spender: Address,
    },
    History {
        account: Address,
        limit: u32,
    },
    /// Assets, all or one owner's.
    Assets {
        owner: Option<Address>,
    },
    Asset(AssetId),
    /// A job's escrow, if open.
    Escrow(aic_protocol::JobId),
    /// Every recorded (running, unsettled) job.
    Jobs,
    /// ERC721 isApprovedForAll.
    IsApprovedForAll {
        owner: Address,
        operator: Address,
    },
    /// Blocks `from..from+count` with their transaction hashes.
    Blocks {
        from: u64,
        count: u64,
    },
    Status,
    Audit,
    AddLearner {
        id: ReplicaId,
        addr: ReplicaAddr,
    },
    /// Set the voting members (promote learners, remove replicas).
    ChangeMembership {
        voters: Vec<ReplicaId>,
    },
    /// What a gateway checks before serving a call: the API key (by its hash), its account's
    /// inference escrow, and the published model a name (alias or asset id) resolves to.
    InferenceAccess {
        key_hash: [u8; 32],
        model: String,
    },
    /// An account's API keys (hashes and labels) and its inference escrow.
    ApiKeys(Address),
    /// Assets for sale, in asset id order after `after`, at most `limit` (capped at
    /// [`MAX_LISTINGS_PER_REQUEST`]).
    Listings {
        after: Option<AssetId>,
        limit: u32,
    },
    /// The job log, newest first: entries numbered below `before`, at most `limit` (capped at
    /// [`crate::state::MAX_JOB_LOG_PER_REQUEST`]).
    JobLog {
        filter: JobLogFilter,
        before: Option<u64>,
        limit: u32,
    },
    /// One job's log entry, with its number.
    JobSummary(aic_protocol::JobId),
    /// A piece of an online backup: `snapshot: None` takes a fresh snapshot on the leader and
    /// answers its first piece; later pieces name it and their offset.
    Backup {
        snapshot: Option<[u8; 32]>,
        offset: u64,
    },
}

impl LedgerRequest {
    /// The request's name: its row in the authorization table ([`crate::authz::TABLE`]).
    pub fn kind_name(&self) -> &'static str {
        match self {
            LedgerRequest::Submit(_) => "submit",
            LedgerRequest::Account(_) => "account",
            LedgerRequest::Allowance { .. } => "allowance",
            LedgerRequest::History { .. } => "history",
            LedgerRequest::Assets { .. } => "assets",
            LedgerRequest::Asset(_) => "asset",
            LedgerRequest::Escrow(_) => "escrow",
            LedgerRequest::Jobs => "jobs",
            LedgerRequest::IsApprovedForAll { .. } => "is_approved_for_all",
            LedgerRequest::Blocks { .. } => "blocks",
            LedgerRequest::Status => "status",
            LedgerRequest::Audit => "audit",
            LedgerRequest::AddLearner { .. } => "add_learner",
            LedgerRequest::ChangeMembership { .. } => "change_membership",
            LedgerRequest::InferenceAccess { .. } => "inference_access",
            LedgerRequest::ApiKeys(_) => "api_keys",
            LedgerRequest::Listings { .. } => "listings",
            LedgerRequest::JobLog { .. } => "job_log",
            LedgerRequest::JobSummary(_) => "job_summary",
            LedgerRequest::Backup { .. } => "backup",
        }
    }

    /// One request of every kind, harmless to send (the authorization tests walk them).
    pub fn examples() -> Vec<LedgerRequest> {
        let nobody = Address([7; 32]);
        let job = aic_protocol::JobId::from_bytes([7; 16]);
        let tx = crate::tx::Transaction {
            chain_id: "examples".into(),
            from: nobody,
            nonce: 0,
            call: crate::tx::Call::Burn { amount: Amount::ZERO },
        };
        vec![
            // Signed by nobody's key: refused by the signature check, never applied.
            LedgerRequest::Submit(Box::new(crate::tx::SignedTransaction {
                tx,
                signature: [0; 64],
            })),
            LedgerRequest::Account(nobody),
            LedgerRequest::Allowance {
                owner: nobody,
                spender: nobody,
            },
            LedgerRequest::History {
                account: nobody,
                limit: 1,
            },
            LedgerRequest::Assets { owner: Some(nobody) },
            LedgerRequest::Asset(AssetId::from_bytes([7; 16])),
            LedgerRequest::Escrow(job),
            LedgerRequest::Jobs,
            LedgerRequest::IsApprovedForAll {
                owner: nobody,
                operator: nobody,
            },
            LedgerRequest::Blocks { from: 0, count: 1 },
            LedgerRequest::Status,
            LedgerRequest::Audit,
            // A learner that cannot be reached: refused by openraft, never added.
            LedgerRequest::AddLearner {
                id: 0,
                addr: ReplicaAddr {
                    addr: "127.0.0.1:9".into(),
                    node_id: String::new(),
                },
            },
            // No voters: refused by openraft, membership unchanged.
            LedgerRequest::ChangeMembership { voters: Vec::new() },
            LedgerRequest::InferenceAccess {
                key_hash: [7; 32],
                model: "nothing".into(),
            },
            LedgerRequest::ApiKeys(nobody),
            LedgerRequest::Listings {
                after: None,
                limit: 1,
            },
            LedgerRequest::JobLog {
                filter: JobLogFilter::All,
                before: None,
                limit: 1,
            },
            LedgerRequest::JobSummary(aic_protocol::JobId::from_bytes([9; 16])),
            // A snapshot nobody took: refused as gone, nothing read.
            LedgerRequest::Backup {
                snapshot: Some([7; 32]),
                offset: 0,
            },
        ]
    }

    pub fn is_write(&self) -> bool {
        matches!(
            self,
            LedgerRequest::Submit(_)
                | LedgerRequest::AddLearner { .. }
                | LedgerRequest::ChangeMembership { .. }
        )
    }
}

/// An account as the CLI shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub address: Address,
    pub account: Account,
    pub spendable: Amount,
    pub assets: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaView {
    pub id: ReplicaId,
    pub addr: ReplicaAddr,
    pub voter: bool,
    /// The last log index the leader knows this replica holds (answered by the leader; none
    /// from a follower, or for a replica it has not heard from).
    #[serde(default)]
    pub matched_index: Option<u64>,
}

/// The ledger at a glance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerStatus {
    pub chain_id: String,
    pub leader: Option<ReplicaId>,
    pub term: u64,
    pub replicas: Vec<ReplicaView>,
    pub applied_index: u64,
    pub total_supply: Amount,
    pub burned: Amount,
    pub issued: Amount,
    /// Proof-of-Value rewards accrued and not yet issued.
    pub accrued_rewards: Amount,
    /// The last reward epoch paid.
    pub reward_epoch: u64,
    pub block_height: u64,
    pub head_hash: [u8; 32],
    pub state_hash: [u8; 32],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerResponse {
    Submitted {
        hash: [u8; 32],
        index: u64,
        result: Result<Vec<Event>, TxError>,
    },
    Account(AccountView),
    Allowance(Amount),
    History(Vec<HistoryEntry>),
    Assets(Vec<(AssetId, Asset)>),
    Asset(Option<Asset>),
    Escrow(Option<crate::state::Escrow>),
    Jobs(Vec<(aic_protocol::JobId, crate::state::JobRecord)>),
    ApprovedForAll(bool),
    Blocks(Vec<(BlockHeader, Vec<[u8; 32]>)>),
    Status(LedgerStatus),
    Audit(Result<(), String>),
    MembershipChanged {
        index: u64,
    },
    InferenceAccess(InferenceAccess),
    ApiKeys {
        keys: Vec<([u8; 32], ApiKey)>,
        escrow: Amount,
    },
    /// Each listed asset, its listing and the asset itself.
    Listings(Vec<(AssetId, crate::state::Listing, Asset)>),
    /// Entries of the job log with their numbers, newest first; and how many the log holds.
    JobLog {
        entries: Vec<(u64, JobSummary)>,
        total: u64,
    },
    /// The job's entry number, its summary and its work record.
    JobSummary(Option<(u64, JobSummary, JobWork)>),
    /// A piece of a backup: the snapshot's hash, its length and the bytes from the offset asked.
    Backup {
        snapshot: [u8; 32],
        total: u64,
        bytes: Vec<u8>,
    },
}

/// A published model as a gateway serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedModel {
    pub id: AssetId,
    pub asset: Asset,
    pub publication: Publication,
}

/// The answer to [`LedgerRequest::InferenceAccess`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferenceAccess {
    /// The key's record, if the hash is registered (revoked or not).
    pub key: Option<ApiKey>,
    /// The key's account's inference escrow (zero without a key).
    pub escrow: Amount,
    /// The live publication the name resolves to, if any.
    pub model: Option<PublishedModel>,
}

/// Why a ledger request could not be served (distinct from a transaction's refusal, which is a
/// successful answer carrying a [`TxError`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum LedgerApiError {
    #[error("no leader is known yet; retry shortly")]
    NoLeader,
    #[error("this replica is not the leader and could not reach it: {0}")]
    LeaderUnreachable(String),
    /// A forwarded write reached for the leader and no answer came back: it may or may not have
    /// been applied (the account's nonce tells).
    #[error("the leader did not answer a forwarded write, which may have applied: {0}")]
    Indeterminate(String),
    /// The leader could not hear from a majority of the replicas.
    #[error("fewer than a majority of the ledger's replicas answer")]
    NoQuorum,
    #[error("raft: {0}")]
    Raft(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The caller's certificate role may not make this request.
    #[error("role {role} may not make ledger request {request}")]
    Forbidden { role: String, request: String },
    /// Refused before consensus (no Raft entry was written): see the transaction error.
    #[error("refused before consensus: {0}")]
    Refused(TxError),
    /// The backup's snapshot is no longer the one the leader holds (it took a newer one, or
    /// leadership moved): start the backup again.
    #[error(
        "the snapshot being backed up is gone (a newer one was taken, or the leader changed); start again"
    )]
    BackupGone,
}

pub type LedgerResult = Result<LedgerResponse, LedgerApiError>;

/// Encodes a value for the wire.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("ledger API values always encode")
}

/// Decodes a value from the wire (the frame codec already bounded its size).
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, LedgerApiError> {
    postcard::from_bytes(bytes).map_err(|e| LedgerApiError::BadRequest(format!("undecodable: {e}")))
}
