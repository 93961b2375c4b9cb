//! Why a transaction was refused (each with a stable code), and the ledger's own faults.

use serde::{Deserialize, Serialize};

use crate::amount::Amount;

/// A transaction's refusal. The state is unchanged whenever one of these is returned. The codes
/// are part of the protocol: append only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum TxError {
    #[error("signature does not verify (strict Ed25519)")]
    BadSignature,
    #[error("transaction is for chain {got:?}, this ledger is {expected:?}")]
    WrongChain { expected: String, got: String },
    #[error("nonce {got} is not the account's next nonce {expected}")]
    BadNonce { expected: u64, got: u64 },
    #[error("balance {available} base units is less than {needed}")]
    InsufficientBalance { available: u128, needed: u128 },
    #[error("allowance {available} base units is less than {needed}")]
    InsufficientAllowance { available: u128, needed: u128 },
    #[error("{locked} base units are still locked by vesting")]
    Locked { locked: u128 },
    #[error("amount would overflow")]
    Overflow,
    #[error("unknown asset {0}")]
    UnknownAsset(String),
    #[error("caller is neither the owner nor approved for asset {0}")]
    NotOwnerOrApproved(String),
    #[error("asset {asset} is owned by {owner}, not {claimed}")]
    WrongOwner {
        asset: String,
        owner: String,
        claimed: String,
    },
    #[error("only the scheduler's system key may send this")]
    NotSystem,
    #[error("unknown escrow for job {0}")]
    UnknownEscrow(String),
    #[error("an escrow for job {0} already exists")]
    EscrowExists(String),
    #[error("stake {available} base units is less than {needed}")]
    InsufficientStake { available: u128, needed: u128 },
    #[error("issuance of {requested} base units exceeds what may be issued now ({allowed})")]
    IssuanceCap { requested: u128, allowed: u128 },
    #[error("invalid transaction: {0}")]
    Invalid(String),
    #[error("block does not extend the chain: {0}")]
    BadBlock(String),
    /// A content hash is minted at most once per kind.
    #[error("this content is already minted as {kind:?} asset {asset}")]
    AlreadyMinted {
        kind: crate::tx::AssetKind,
        asset: aic_protocol::AssetId,
    },
    /// Dataset and TrainedModel assets come only from an attested import or a settled job.
    #[error("a {0:?} asset cannot be minted directly: it comes from an attested import or a job")]
    NeedsProvenance(crate::tx::AssetKind),
    #[error("import attestation refused: {0}")]
    BadAttestation(String),
    #[error("job {0} has no trained model to mint (not settled here, or minted already)")]
    NoTrainedModelPending(String),
    /// The job has no record: never recorded, or settled (its record went with its escrow).
    #[error("job {0} is not recorded (or is settled)")]
    JobNotRecorded(String),
    /// Another replica runs the job: only its runner may checkpoint it.
    #[error("job {job} is run by {runner}, not {caller}")]
    NotTheRunner {
        job: String,
        runner: String,
        caller: String,
    },
    /// Refused before consensus: the transaction is larger than its kind may be.
    #[error("a {what} transaction of {bytes} bytes exceeds the {max}-byte limit")]
    TooLarge { what: String, bytes: u64, max: u64 },
    #[error("alias {alias:?} already names asset {asset}")]
    AliasTaken {
        alias: String,
        asset: aic_protocol::AssetId,
    },
    #[error("model {0} is not published for inference")]
    NotPublished(String),
    /// A gateway's settlement periods only go forward: a retried settlement is refused whole.
    #[error("inference period {period} is settled already (last settled: {last})")]
    PeriodSettled { period: u64, last: u64 },
    #[error("only the system key or an inference settler named in genesis may settle inference")]
    NotSettler,
    #[error("asset {0} is not for sale")]
    NotListed(String),
    /// The listing's price is above what the buyer agreed to pay (it was raised after it looked).
    #[error("the price is {price} AIC, above the {limit} AIC the buyer agreed to")]
    PriceAboveLimit { price: Amount, limit: Amount },
}

impl TxError {
    /// The stable numeric code of this refusal.
    pub fn code(&self) -> u16 {
        match self {
            TxError::BadSignature => 100,
            TxError::WrongChain { .. } => 101,
            TxError::BadNonce { .. } => 102,
            TxError::InsufficientBalance { .. } => 103,
            TxError::InsufficientAllowance { .. } => 104,
            TxError::Locked { .. } => 105,
            TxError::Overflow => 106,
            TxError::UnknownAsset(_) => 107,
            TxError::NotOwnerOrApproved(_) => 108,
            TxError::WrongOwner { .. } => 109,
            TxError::NotSystem => 110,
            TxError::UnknownEscrow(_) => 111,
            TxError::EscrowExists(_) => 112,
            TxError::InsufficientStake { .. } => 113,
            TxError::IssuanceCap { .. } => 114,
            TxError::Invalid(_) => 115,
            TxError::BadBlock(_) => 116,
            TxError::AlreadyMinted { .. } => 117,
            TxError::NeedsProvenance(_) => 118,
            TxError::BadAttestation(_) => 119,
            TxError::NoTrainedModelPending(_) => 120,
            TxError::TooLarge { .. } => 121,
            TxError::JobNotRecorded(_) => 122,
            TxError::NotTheRunner { .. } => 123,
            TxError::AliasTaken { .. } => 124,
            TxError::NotPublished(_) => 125,
            TxError::PeriodSettled { .. } => 126,
            TxError::NotSettler => 127,
            TxError::NotListed(_) => 128,
            TxError::PriceAboveLimit { .. } => 129,
        }
    }

    /// A snake_case name for metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            TxError::BadSignature => "bad_signature",
            TxError::WrongChain { .. } => "wrong_chain",
            TxError::BadNonce { .. } => "bad_nonce",
            TxError::InsufficientBalance { .. } => "insufficient_balance",
            TxError::InsufficientAllowance { .. } => "insufficient_allowance",
            TxError::Locked { .. } => "locked",
            TxError::Overflow => "overflow",
            TxError::UnknownAsset(_) => "unknown_asset",
            TxError::NotOwnerOrApproved(_) => "not_owner_or_approved",
            TxError::WrongOwner { .. } => "wrong_owner",
            TxError::NotSystem => "not_system",
            TxError::UnknownEscrow(_) => "unknown_escrow",
            TxError::EscrowExists(_) => "escrow_exists",
            TxError::InsufficientStake { .. } => "insufficient_stake",
            TxError::IssuanceCap { .. } => "issuance_cap",
            TxError::Invalid(_) => "invalid",
            TxError::BadBlock(_) => "bad_block",
            TxError::AlreadyMinted { .. } => "already_minted",
            TxError::NeedsProvenance(_) => "needs_provenance",
            TxError::BadAttestation(_) => "bad_attestation",
            TxError::NoTrainedModelPending(_) => "no_trained_model_pending",
            TxError::TooLarge { .. } => "too_large",
            TxError::JobNotRecorded(_) => "job_not_recorded",
            TxError::NotTheRunner { .. } => "not_the_runner",
            TxError::AliasTaken { .. } => "alias_taken",
            TxError::NotPublished(_) => "not_published",
            TxError::PeriodSettled { .. } => "period_settled",
            TxError::NotSettler => "not_settler",
            TxError::NotListed(_) => "not_listed",
            TxError::PriceAboveLimit { .. } => "price_above_limit",
        }
    }
}

/// A broken ledger invariant. Never a transaction's fault: the replica stops.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("ledger invariant violated: {0}")]
pub struct InvariantViolation(pub String);
