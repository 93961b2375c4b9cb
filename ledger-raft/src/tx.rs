//! Transactions: what an account asks the ledger to do, signed over a canonical encoding that
//! binds the chain id and the account's next nonce (so neither replays nor cross-chain replays
//! apply twice).

use aic_protocol::{AssetId, JobId, NodeId};
use serde::{Deserialize, Serialize};

use crate::amount::Amount;
use crate::keys::{verify_strict, Address, Keypair};

/// Kinds of ERC721 asset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssetKind {
    Dataset,
    Model,
    TrainedModel,
}

/// What an asset's token records about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetMetadata {
    pub name: String,
    /// BLAKE3 of the asset's content (manifest or weights).
    #[serde(with = "aic_protocol::hex_serde")]
    pub content_hash: [u8; 32],
    /// The manifest, as JSON text.
    pub manifest: String,
    /// What a user pays the owner each time a job uses the asset.
    pub usage_fee: Amount,
}

/// A storage replica's signature over an import (see `aic_protocol::messages::ImportAttestation`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    /// The replica's certificate public key.
    pub node_key: Address,
    #[serde(with = "signature_bytes")]
    pub signature: [u8; 64],
}

/// Why escrow money goes to someone; fees count towards the issuance curve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayoutKind {
    Compute,
    Storage,
    DatasetFee,
    ModelFee,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payout {
    pub to: Address,
    pub amount: Amount,
    pub kind: PayoutKind,
}

/// The operations of the ledger. User calls are signed by `from`; system calls only by the
/// scheduler's system key named in genesis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    // ERC20
    Transfer {
        to: Address,
        amount: Amount,
    },
    Approve {
        spender: Address,
        amount: Amount,
    },
    TransferFrom {
        owner: Address,
        to: Address,
        amount: Amount,
    },
    Burn {
        amount: Amount,
    },
    // ERC721
    MintAsset {
        kind: AssetKind,
        metadata: AssetMetadata,
    },
    TransferAsset {
        from: Address,
        to: Address,
        asset: AssetId,
    },
    ApproveAsset {
        approved: Option<Address>,
        asset: AssetId,
    },
    SetApprovalForAll {
        operator: Address,
        approved: bool,
    },
    BurnAsset {
        asset: AssetId,
    },
    // Jobs and stake
    OpenEscrow {
        job: JobId,
        amount: Amount,
    },
    Stake {
        amount: Amount,
    },
    Unstake {
        amount: Amount,
    },
    // System calls
    ReleaseEscrow {
        job: JobId,
        payouts: Vec<Payout>,
        platform_fee: Amount,
    },
    RefundEscrow {
        job: JobId,
    },
    Slash {
        account: Address,
        amount: Amount,
        reason: String,
    },
    Reward {
        to: Address,
        amount: Amount,
    },
    /// A Dataset asset for an import the storage replicas attest (each signature over
    /// `ImportAttestation::message(content_hash, owner)`), minted to `owner`.
    MintImportedDataset {
        owner: Address,
        metadata: AssetMetadata,
        attestations: Vec<Attestation>,
    },
    /// The TrainedModel asset of a settled job, minted to the job's payer.
    MintTrainedModel {
        job: JobId,
        metadata: AssetMetadata,
    },
    /// A job started on scheduler replica `runner`: its request as that scheduler encodes it.
    RecordJob {
        job: JobId,
        runner: NodeId,
        /// The dataset and model assets the job trains: the job log and the dataset's usage
        /// name them.
        dataset: AssetId,
        model: AssetId,
        #[serde(with = "serde_bytes")]
        request: Vec<u8>,
    },
    /// A job's progress after a round: the names of its weights (stored on storage nodes, never
    /// on the chain) and its running tallies (assignments, work done, nodes banned), from which
    /// another replica can resume it. O(1) in the model's size.
    CheckpointJob {
        job: JobId,
        runner: NodeId,
        round: u32,
        tensors: Option<crate::state::CheckpointTensors>,
        #[serde(with = "serde_bytes")]
        progress: Vec<u8>,
    },
    /// Each compute node's part in a job, recorded by its runner before the escrow is released,
    /// for the job log: what the trained model's card shows of the work behind it.
    RecordJobWork {
        job: JobId,
        runner: NodeId,
        nodes: Vec<crate::state::NodeWork>,
    },
    /// Proof-of-Value rewards a settled job earned its verified providers: they accrue and are
    /// issued at the next reward epoch.
    AccrueRewards {
        job: JobId,
        rewards: Vec<(Address, Amount)>,
    },
    /// Issues the accrued rewards of reward epoch `epoch` (the chain height divided by the
    /// scheduler's epoch length), as far as the issuance cap allows; the rest stays accrued.
    PayRewardEpoch {
        epoch: u64,
    },
    /// Another replica takes a job over (its runner stopped checkpointing): the old runner's
    /// next checkpoint is refused, so it stops.
    TakeOverJob {
        job: JobId,
        runner: NodeId,
    },
    // Inference
    /// Offers a TrainedModel the caller owns for inference at a price per 1,000 rows, under an
    /// optional alias; publishing again changes the price and alias.
    PublishModel {
        asset: AssetId,
        price_per_1k_rows: Amount,
        alias: Option<String>,
    },
    UnpublishModel {
        asset: AssetId,
    },
    /// Moves AIC from the caller's balance into its prepaid inference escrow.
    FundInference {
        amount: Amount,
    },
    WithdrawInference {
        amount: Amount,
    },
    /// Binds an API key (by its BLAKE3 hash; the key never reaches the ledger) to the caller.
    CreateApiKey {
        #[serde(with = "aic_protocol::hex_serde")]
        key_hash: [u8; 32],
        label: String,
    },
    RevokeApiKey {
        #[serde(with = "aic_protocol::hex_serde")]
        key_hash: [u8; 32],
    },
    /// One period of a gateway's metered usage, signed by the system key or an inference
    /// settler named in genesis; each signer's periods only go forward.
    SettleInference {
        period: u64,
        tariff: crate::state::InferenceTariff,
        usage: Vec<crate::state::InferenceUsage>,
    },
    // Marketplace
    /// Offers an asset the caller owns for sale at a fixed price (listing again changes it).
    ListAsset {
        asset: AssetId,
        price: Amount,
    },
    UnlistAsset {
        asset: AssetId,
    },
    /// Buys a listed asset: the price to its seller and the asset to the caller, or neither;
    /// refused if the price is above `max_price`.
    BuyAsset {
        asset: AssetId,
        max_price: Amount,
    },
    // Appended (not inserted by topic), so the encodings of the calls above stay (a
    // signed transaction means what it meant when it was signed).
    /// A job goes back to an earlier round: a node found wrong had results no spot check
    /// confirmed in the rounds since, so they are re-run without it from the weights `round`
    /// started with. Only the job's runner may, and only backwards.
    RewindJob {
        job: JobId,
        runner: NodeId,
        round: u32,
        tensors: crate::state::CheckpointTensors,
        #[serde(with = "serde_bytes")]
        progress: Vec<u8>,
        /// The node found wrong.
        wrong: NodeId,
    },
}

impl Call {
    pub fn is_system(&self) -> bool {
        matches!(
            self,
            Call::ReleaseEscrow { .. }
                | Call::RefundEscrow { .. }
                | Call::Slash { .. }
                | Call::Reward { .. }
                | Call::MintImportedDataset { .. }
                | Call::MintTrainedModel { .. }
                | Call::RecordJob { .. }
                | Call::CheckpointJob { .. }
                | Call::RewindJob { .. }
                | Call::TakeOverJob { .. }
                | Call::RecordJobWork { .. }
                | Call::AccrueRewards { .. }
                | Call::PayRewardEpoch { .. }
        )
    }

    /// Settlements are signed by a gateway's key (or the system key), not a user's.
    pub fn is_settlement(&self) -> bool {
        matches!(self, Call::SettleInference { .. })
    }

    /// The call's name, a closed set for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Call::Transfer { .. } => "transfer",
            Call::Approve { .. } => "approve",
            Call::TransferFrom { .. } => "transfer_from",
            Call::Burn { .. } => "burn",
            Call::MintAsset { .. } => "mint_asset",
            Call::TransferAsset { .. } => "transfer_asset",
            Call::ApproveAsset { .. } => "approve_asset",
            Call::SetApprovalForAll { .. } => "set_approval_for_all",
            Call::BurnAsset { .. } => "burn_asset",
            Call::OpenEscrow { .. } => "open_escrow",
            Call::Stake { .. } => "stake",
            Call::Unstake { .. } => "unstake",
            Call::ReleaseEscrow { .. } => "release_escrow",
            Call::RefundEscrow { .. } => "refund_escrow",
            Call::Slash { .. } => "slash",
            Call::Reward { .. } => "reward",
            Call::MintImportedDataset { .. } => "mint_imported_dataset",
            Call::MintTrainedModel { .. } => "mint_trained_model",
            Call::RecordJob { .. } => "record_job",
            Call::CheckpointJob { .. } => "checkpoint_job",
            Call::RewindJob { .. } => "rewind_job",
            Call::TakeOverJob { .. } => "take_over_job",
            Call::RecordJobWork { .. } => "record_job_work",
            Call::AccrueRewards { .. } => "accrue_rewards",
            Call::PayRewardEpoch { .. } => "pay_reward_epoch",
            Call::PublishModel { .. } => "publish_model",
            Call::UnpublishModel { .. } => "unpublish_model",
            Call::FundInference { .. } => "fund_inference",
            Call::WithdrawInference { .. } => "withdraw_inference",
            Call::CreateApiKey { .. } => "create_api_key",
            Call::RevokeApiKey { .. } => "revoke_api_key",
            Call::SettleInference { .. } => "settle_inference",
            Call::ListAsset { .. } => "list_asset",
            Call::UnlistAsset { .. } => "unlist_asset",
            Call::BuyAsset { .. } => "buy_asset",
        }
    }
}

/// The signed part of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    pub chain_id: String,
    pub from: Address,
    pub nonce: u64,
    pub call: Call,
}

impl Transaction {
    /// The canonical bytes that are signed: a domain tag, then the postcard encoding.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut bytes = b"aic-tx-v1\0".to_vec();
        bytes.extend(postcard::to_stdvec(self).expect("a transaction always encodes"));
        bytes
    }

    pub fn sign(self, key: &Keypair) -> SignedTransaction {
        let signature = key.sign(&self.signing_bytes());
        SignedTransaction { tx: self, signature }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTransaction {
    pub tx: Transaction,
    #[serde(with = "signature_bytes")]
    pub signature: [u8; 64],
}

impl SignedTransaction {
    pub fn verify(&self) -> bool {
        verify_strict(&self.tx.from, &self.tx.signing_bytes(), &self.signature)
    }

    /// The transaction's id: BLAKE3 of its signed bytes and signature.
    pub fn hash(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.tx.signing_bytes());
        hasher.update(&self.signature);
        *hasher.finalize().as_bytes()
    }
}

/// serde for `[u8; 64]` (serde derives arrays only up to 32).
pub(crate) mod signature_bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 64], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 64], D::Error> {
        let bytes: Vec<u8> = serde::de::Deserialize::deserialize(deserializer)?;
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("a signature is 64 bytes"))
    }
}
