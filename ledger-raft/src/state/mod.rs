//! The ledger's state and the deterministic application of transactions and blocks to it.
//!
//! Every operation checks everything it needs before it changes anything, so a refused
//! transaction leaves the state exactly as it was. The concerns live in sibling files:
//! `erc20` (balances, allowances, burn), `erc721` (assets), `escrow` (jobs, stake, slash,
//! rewards), `jobs` (what running jobs have done, for a replica that resumes one), `blocks`
//! (sealing), `invariants` (the audit).

mod blocks;
mod erc20;
mod erc721;
pub use erc721::MAX_MANIFEST_BYTES;
pub use escrow::MAX_PAYOUTS;
mod escrow;
mod inference;
pub use inference::{
    ApiKey, InferenceTariff, InferenceUsage, Publication, MAX_ALIAS_BYTES, MAX_KEYS_PER_ACCOUNT,
    MAX_USAGE_LINES,
};
mod invariants;
mod market;
pub use market::Listing;
mod job_log;
pub use job_log::{JobLog, JobLogFilter, JobOutcome, JobSummary, JobWork, NodeWork, MAX_JOB_LOG_PER_REQUEST};
mod jobs;
pub use jobs::{
    CheckpointTensors, JobRecord, MAX_CHECKPOINT_HOLDERS, MAX_JOB_PROGRESS_BYTES, MAX_JOB_REQUEST_BYTES,
};

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use aic_protocol::{AssetId, JobId, NodeId};
use serde::{Deserialize, Serialize};

use crate::amount::Amount;
use crate::block::BlockHeader;
use crate::error::{InvariantViolation, TxError};
use crate::genesis::{Genesis, VestingSchedule};
use crate::keys::Address;
use crate::tx::{AssetKind, AssetMetadata, Call, PayoutKind, SignedTransaction};

/// How many recent events each account's history keeps.
pub const HISTORY_PER_ACCOUNT: usize = 256;

/// A vesting lock on part of an account's balance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vesting {
    pub total: Amount,
    pub schedule: VestingSchedule,
}

impl Vesting {
    /// What is still locked at ledger time `now_ms`.
    pub fn locked_at(&self, now_ms: u64) -> Amount {
        let s = self.schedule;
        if now_ms < s.start_ms.saturating_add(s.cliff_ms) {
            return self.total;
        }
        let elapsed = now_ms - s.start_ms;
        if elapsed >= s.duration_ms {
            return Amount::ZERO;
        }
        let vested = self
            .total
            .mul_div(u128::from(elapsed), u128::from(s.duration_ms))
            .unwrap_or(self.total);
        self.total.checked_sub(vested).unwrap_or(Amount::ZERO)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub balance: Amount,
    /// The nonce the account's next transaction must carry.
    pub nonce: u64,
    pub stake: Amount,
    pub vesting: Option<Vesting>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asset {
    pub kind: AssetKind,
    pub owner: Address,
    pub approved: Option<Address>,
    pub metadata: AssetMetadata,
    /// Where the asset came from, as the ledger enforced it at mint.
    pub provenance: Provenance,
}

/// How an asset came to exist. Storage nodes and jobs check it, not only the content hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Provenance {
    /// Registered by its author (a Model's description).
    Registered,
    /// An import held whole by these storage replicas, each of which signed it.
    Imported { attesters: Vec<NodeId> },
    /// The result of this settled job.
    Trained { job: JobId },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escrow {
    pub payer: Address,
    pub remaining: Amount,
}

/// What a successful transaction did, as the standards name it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// ERC20 Transfer; `None` is the zero address (mint or burn).
    Transfer {
        from: Option<Address>,
        to: Option<Address>,
        amount: Amount,
    },
    /// ERC20 Approval.
    Approval {
        owner: Address,
        spender: Address,
        amount: Amount,
    },
    /// ERC721 Transfer; `None` is the zero address (mint or burn).
    AssetTransfer {
        from: Option<Address>,
        to: Option<Address>,
        asset: AssetId,
    },
    /// ERC721 Approval.
    AssetApproval {
        owner: Address,
        approved: Option<Address>,
        asset: AssetId,
    },
    /// ERC721 ApprovalForAll.
    ApprovalForAll {
        owner: Address,
        operator: Address,
        approved: bool,
    },
    EscrowOpened {
        job: JobId,
        payer: Address,
        amount: Amount,
    },
    EscrowPaid {
        job: JobId,
        to: Address,
        amount: Amount,
        kind: PayoutKind,
    },
    EscrowRefunded {
        job: JobId,
        to: Address,
        amount: Amount,
    },
    PlatformFeeBurned {
        job: JobId,
        amount: Amount,
    },
    Staked {
        account: Address,
        amount: Amount,
    },
    Unstaked {
        account: Address,
        amount: Amount,
    },
    Slashed {
        account: Address,
        amount: Amount,
        reason: String,
    },
    Rewarded {
        to: Address,
        amount: Amount,
    },
    JobRecorded {
        job: JobId,
        runner: NodeId,
        /// What the job trains on and with, as the scheduler admitted it.
        dataset: AssetId,
        model: AssetId,
    },
    JobCheckpointed {
        job: JobId,
        runner: NodeId,
        round: u32,
    },
    JobWorkRecorded {
        job: JobId,
        nodes: Vec<NodeWork>,
    },
    JobTakenOver {
        job: JobId,
        from: NodeId,
        to: NodeId,
    },
    RewardAccrued {
        job: JobId,
        to: Address,
        amount: Amount,
    },
    RewardEpochPaid {
        epoch: u64,
        issued: Amount,
        /// Accrued rewards the issuance cap held back for later epochs.
        still_accrued: Amount,
    },
    ModelPublished {
        asset: AssetId,
        owner: Address,
        price_per_1k_rows: Amount,
        alias: Option<String>,
    },
    ModelUnpublished {
        asset: AssetId,
    },
    InferenceFunded {
        account: Address,
        amount: Amount,
    },
    InferenceWithdrawn {
        account: Address,
        amount: Amount,
    },
    ApiKeyCreated {
        account: Address,
        #[serde(with = "aic_protocol::hex_serde")]
        key_hash: [u8; 32],
    },
    ApiKeyRevoked {
        account: Address,
        #[serde(with = "aic_protocol::hex_serde")]
        key_hash: [u8; 32],
    },
    /// A payer's metered rows of one model in a settled period, and what they cost in all.
    InferenceCharged {
        period: u64,
        payer: Address,
        model: AssetId,
        rows: u64,
        amount: Amount,
    },
    InferencePaid {
        model: AssetId,
        to: Address,
        amount: Amount,
        kind: PayoutKind,
    },
    InferenceFeeBurned {
        period: u64,
        amount: Amount,
    },
    AssetListed {
        asset: AssetId,
        seller: Address,
        price: Amount,
    },
    AssetUnlisted {
        asset: AssetId,
        seller: Address,
    },
    /// A sale: the `Transfer` and `AssetTransfer` events beside it moved the price and the asset.
    AssetSold {
        asset: AssetId,
        seller: Address,
        buyer: Address,
        price: Amount,
    },
    // Appended (not inserted by topic), so the encodings of the variants above stay.
    /// A job went back to an earlier round (`Call::RewindJob`).
    JobRewound {
        job: JobId,
        runner: NodeId,
        from: u32,
        to: u32,
        wrong: NodeId,
    },
}

impl Event {
    /// The asset a mint created, if `events` are a mint's.
    pub fn minted_asset(events: &[Event]) -> Option<AssetId> {
        events.iter().find_map(|event| match event {
            Event::AssetTransfer {
                from: None, asset, ..
            } => Some(*asset),
            _ => None,
        })
    }

    /// Whether the event only moves balances, allowances or asset ownership: nothing an escrow
    /// or a stake holds.
    pub fn leaves_holdings_alone(&self) -> bool {
        matches!(
            self,
            Event::Transfer { .. }
                | Event::Approval { .. }
                | Event::AssetTransfer { .. }
                | Event::AssetApproval { .. }
                | Event::ApprovalForAll { .. }
        )
    }

    /// The accounts whose history this event belongs in.
    fn parties(&self) -> Vec<Address> {
        let mut parties = Vec::new();
        match self {
            Event::Transfer { from, to, .. } | Event::AssetTransfer { from, to, .. } => {
                parties.extend(from.iter().chain(to.iter()).copied())
            }
            Event::Approval { owner, spender, .. } => parties.extend([*owner, *spender]),
            Event::AssetApproval { owner, approved, .. } => {
                parties.extend(std::iter::once(*owner).chain(*approved))
            }
            Event::ApprovalForAll { owner, operator, .. } => parties.extend([*owner, *operator]),
            Event::EscrowOpened { payer, .. } => parties.push(*payer),
            Event::EscrowPaid { to, .. }
            | Event::EscrowRefunded { to, .. }
            | Event::Rewarded { to, .. }
            | Event::RewardAccrued { to, .. } => parties.push(*to),
            Event::PlatformFeeBurned { .. }
            | Event::JobRecorded { .. }
            | Event::JobCheckpointed { .. }
            | Event::JobWorkRecorded { .. }
            | Event::JobRewound { .. }
            | Event::JobTakenOver { .. }
            | Event::RewardEpochPaid { .. }
            | Event::ModelUnpublished { .. }
            | Event::InferenceFeeBurned { .. } => {}
            Event::ModelPublished { owner, .. } => parties.push(*owner),
            Event::InferenceFunded { account, .. }
            | Event::InferenceWithdrawn { account, .. }
            | Event::ApiKeyCreated { account, .. }
            | Event::ApiKeyRevoked { account, .. } => parties.push(*account),
            Event::InferenceCharged { payer, .. } => parties.push(*payer),
            Event::InferencePaid { to, .. } => parties.push(*to),
            Event::Staked { account, .. }
            | Event::Unstaked { account, .. }
            | Event::Slashed { account, .. } => parties.push(*account),
            Event::AssetListed { seller, .. } | Event::AssetUnlisted { seller, .. } => parties.push(*seller),
            Event::AssetSold { seller, buyer, .. } => parties.extend([*seller, *buyer]),
        }
        parties.dedup();
        parties
    }
}

/// One line of an account's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub tx_hash: [u8; 32],
    pub block_height: u64,
    pub event: Event,
}

/// The whole ledger state. Ordered maps keep its encoding, and so its hash, canonical.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LedgerState {
    pub genesis: Genesis,
    pub accounts: BTreeMap<Address, Account>,
    pub allowances: BTreeMap<(Address, Address), Amount>,
    pub assets: BTreeMap<AssetId, Asset>,
    pub asset_counts: BTreeMap<Address, u64>,
    /// Every content hash ever minted, per kind (burning an asset does not free its hash).
    pub minted: BTreeMap<(AssetKind, [u8; 32]), AssetId>,
    /// Settled jobs whose TrainedModel may still be minted, with the payer it goes to.
    pub trained_models_pending: BTreeMap<JobId, Address>,
    pub operators: BTreeSet<(Address, Address)>,
    pub escrows: BTreeMap<JobId, Escrow>,
    /// Running jobs' records, each beside its open escrow; removed when the escrow is released.
    pub jobs: BTreeMap<JobId, JobRecord>,
    /// Every job ever escrowed, kept after it ends: the job history.
    pub job_log: JobLog,
    /// AIC minted into accounts at genesis (the reserve excluded).
    pub genesis_supply: Amount,
    pub burned: Amount,
    /// AIC issued from the reserve so far.
    pub issued: Amount,
    /// Fees paid through escrow (platform fee and usage fees): the issuance curve's input.
    pub cumulative_fees: Amount,
    /// Proof-of-Value rewards earned and not yet issued, by provider.
    pub accrued_rewards: BTreeMap<Address, Amount>,
    /// The last reward epoch paid.
    pub reward_epoch: u64,
    /// Ledger time: the last block's timestamp.
    pub time_ms: u64,
    pub history: BTreeMap<Address, VecDeque<HistoryEntry>>,
    /// TrainedModels offered for inference, and their aliases.
    pub published: BTreeMap<AssetId, Publication>,
    pub aliases: BTreeMap<String, AssetId>,
    /// API keys by the BLAKE3 hash of the key.
    pub api_keys: BTreeMap<[u8; 32], ApiKey>,
    /// Each account's prepaid inference escrow (none kept empty).
    pub inference_escrow: BTreeMap<Address, Amount>,
    /// The last inference period each settler settled.
    pub inference_settled: BTreeMap<Address, u64>,
    /// Assets offered for sale, by asset.
    pub listings: BTreeMap<AssetId, Listing>,
    pub blocks: Vec<BlockHeader>,
    /// Transaction hashes of each sealed block, by height.
    pub block_transactions: Vec<Vec<[u8; 32]>>,
    /// Transactions applied since the last block.
    pub pending: Vec<[u8; 32]>,
    pub applied_transactions: u64,
}

/// The result of one transaction.
pub type TxResult = Result<Vec<Event>, TxError>;

impl LedgerState {
    pub fn from_genesis(genesis: Genesis) -> Self {
        let mut state = LedgerState {
            accounts: BTreeMap::new(),
            allowances: BTreeMap::new(),
            assets: BTreeMap::new(),
            asset_counts: BTreeMap::new(),
            minted: BTreeMap::new(),
            trained_models_pending: BTreeMap::new(),
            operators: BTreeSet::new(),
            escrows: BTreeMap::new(),
            jobs: BTreeMap::new(),
            job_log: JobLog::default(),
            genesis_supply: Amount::ZERO,
            burned: genesis.unsold_fundraiser,
            issued: Amount::ZERO,
            cumulative_fees: Amount::ZERO,
            accrued_rewards: BTreeMap::new(),
            reward_epoch: 0,
            time_ms: genesis.time_ms,
            history: BTreeMap::new(),
            published: BTreeMap::new(),
            aliases: BTreeMap::new(),
            api_keys: BTreeMap::new(),
            inference_escrow: BTreeMap::new(),
            inference_settled: BTreeMap::new(),
            listings: BTreeMap::new(),
            blocks: vec![BlockHeader::genesis(genesis.time_ms)],
            block_transactions: vec![Vec::new()],
            pending: Vec::new(),
            applied_transactions: 0,
            genesis,
        };
        for share in state.genesis.shares() {
            let account = state.accounts.entry(share.holder).or_default();
            account.balance = account
                .balance
                .checked_add(share.amount)
                .expect("genesis fits u128");
            if share.vested {
                let total = account.vesting.map_or(Amount::ZERO, |v| v.total);
                account.vesting = Some(Vesting {
                    total: total.checked_add(share.amount).expect("genesis fits u128"),
                    schedule: state.genesis.vesting,
                });
            }
            state.genesis_supply = state
                .genesis_supply
                .checked_add(share.amount)
                .expect("genesis fits u128");
        }
        // The unsold fundraiser part was minted and burned: it counts in the genesis supply.
        state.genesis_supply = state
            .genesis_supply
            .checked_add(state.genesis.unsold_fundraiser)
            .expect("genesis fits u128");
        state
    }

    pub fn chain_id(&self) -> &str {
        &self.genesis.chain_id
    }

    /// ERC20 totalSupply: everything in accounts, escrow and stakes.
    pub fn total_supply(&self) -> Amount {
        Amount(
            self.genesis_supply
                .0
                .checked_add(self.issued.0)
                .and_then(|minted| minted.checked_sub(self.burned.0))
                .expect("burned never exceeds supply (audited)"),
        )
    }

    pub fn account(&self, address: &Address) -> Account {
        self.accounts.get(address).cloned().unwrap_or_default()
    }

    pub fn balance_of(&self, address: &Address) -> Amount {
        self.accounts.get(address).map_or(Amount::ZERO, |a| a.balance)
    }

    pub fn allowance(&self, owner: &Address, spender: &Address) -> Amount {
        self.allowances
            .get(&(*owner, *spender))
            .copied()
            .unwrap_or(Amount::ZERO)
    }

    pub fn height(&self) -> u64 {
        self.blocks.last().map_or(0, |b| b.height)
    }

    /// What `address` may move now: its balance less what vesting still locks.
    pub fn spendable(&self, address: &Address) -> Amount {
        let account = self.account(address);
        let locked = account
            .vesting
            .map_or(Amount::ZERO, |v| v.locked_at(self.time_ms));
        account.balance.checked_sub(locked).unwrap_or(Amount::ZERO)
    }

    /// The hash of the whole state: equal on every replica at the same log index.
    pub fn state_hash(&self) -> [u8; 32] {
        *blake3::hash(&postcard::to_stdvec(self).expect("state always encodes")).as_bytes()
    }

    /// Applies one signed transaction. On `Err` nothing changed; on `Ok` the sender's nonce moved
    /// on by one, and the events are in the parties' histories.
    pub fn apply_transaction(&mut self, signed: &SignedTransaction) -> TxResult {
        if signed.tx.chain_id == self.genesis.chain_id && !signed.verify() {
            return Err(TxError::BadSignature);
        }
        self.apply_verified(signed, signed.hash())
    }

    /// Applies a transaction whose signature the proposing leader verified (a batch entry's):
    /// every other check is made here, on every replica. `hash` is the transaction's
    /// [`SignedTransaction::hash`].
    pub fn apply_verified(&mut self, signed: &SignedTransaction, hash: [u8; 32]) -> TxResult {
        let tx = &signed.tx;
        if tx.chain_id != self.genesis.chain_id {
            return Err(TxError::WrongChain {
                expected: self.genesis.chain_id.clone(),
                got: tx.chain_id.clone(),
            });
        }
        if tx.call.is_system() && tx.from != self.genesis.system_key {
            return Err(TxError::NotSystem);
        }
        if tx.call.is_settlement() && !self.may_settle_inference(&tx.from) {
            return Err(TxError::NotSettler);
        }
        let expected = self.account(&tx.from).nonce;
        if tx.nonce != expected {
            return Err(TxError::BadNonce {
                expected,
                got: tx.nonce,
            });
        }
        let next_nonce = expected.checked_add(1).ok_or(TxError::Overflow)?;

        let events = self.dispatch(&tx.from, tx.nonce, &tx.call)?;

        self.accounts.entry(tx.from).or_default().nonce = next_nonce;
        self.applied_transactions += 1;
        self.pending.push(hash);
        let height = self.height() + 1;
        let assets = &self.assets;
        self.job_log.note(&events, height, self.time_ms, |id| {
            assets.get(id).map(|asset| asset.provenance.clone())
        });
        for event in &events {
            for party in event.parties() {
                let history = self.history.entry(party).or_default();
                if history.len() == HISTORY_PER_ACCOUNT {
                    history.pop_front();
                }
                history.push_back(HistoryEntry {
                    tx_hash: hash,
                    block_height: height,
                    event: event.clone(),
                });
            }
        }
        Ok(events)
    }

    fn dispatch(&mut self, from: &Address, nonce: u64, call: &Call) -> TxResult {
        match call {
            Call::Transfer { to, amount } => self.transfer(from, to, *amount),
            Call::Approve { spender, amount } => self.approve(from, spender, *amount),
            Call::TransferFrom { owner, to, amount } => self.transfer_from(from, owner, to, *amount),
            Call::Burn { amount } => self.burn(from, *amount),
            Call::MintAsset { kind, metadata } => self.mint_registered(from, nonce, *kind, metadata),
            Call::MintImportedDataset {
                owner,
                metadata,
                attestations,
            } => self.mint_imported_dataset(from, nonce, owner, metadata, attestations),
            Call::MintTrainedModel { job, metadata } => self.mint_trained_model(from, nonce, job, metadata),
            Call::TransferAsset {
                from: owner,
                to,
                asset,
            } => self.transfer_asset(from, owner, to, asset),
            Call::ApproveAsset { approved, asset } => self.approve_asset(from, *approved, asset),
            Call::SetApprovalForAll { operator, approved } => {
                self.set_approval_for_all(from, operator, *approved)
            }
            Call::BurnAsset { asset } => self.burn_asset(from, asset),
            Call::OpenEscrow { job, amount } => self.open_escrow(from, job, *amount),
            Call::Stake { amount } => self.stake(from, *amount),
            Call::Unstake { amount } => self.unstake(from, *amount),
            Call::ReleaseEscrow {
                job,
                payouts,
                platform_fee,
            } => self.release_escrow(job, payouts, *platform_fee),
            Call::RefundEscrow { job } => self.refund_escrow(job),
            Call::Slash {
                account,
                amount,
                reason,
            } => self.slash(account, *amount, reason),
            Call::Reward { to, amount } => self.reward(to, *amount),
            Call::RecordJob {
                job,
                runner,
                dataset,
                model,
                request,
            } => self.record_job(job, *runner, *dataset, *model, request),
            Call::CheckpointJob {
                job,
                runner,
                round,
                tensors,
                progress,
            } => self.checkpoint_job(job, *runner, *round, tensors, progress),
            Call::RewindJob {
                job,
                runner,
                round,
                tensors,
                progress,
                wrong,
            } => self.rewind_job(job, *runner, *round, tensors, progress, *wrong),
            Call::TakeOverJob { job, runner } => self.take_over_job(job, *runner),
            Call::RecordJobWork { job, runner, nodes } => self.record_job_work(job, *runner, nodes),
            Call::AccrueRewards { job, rewards } => self.accrue_rewards(job, rewards),
            Call::PayRewardEpoch { epoch } => self.pay_reward_epoch(*epoch),
            Call::PublishModel {
                asset,
                price_per_1k_rows,
                alias,
            } => self.publish_model(from, asset, *price_per_1k_rows, alias),
            Call::UnpublishModel { asset } => self.unpublish_model(from, asset),
            Call::ListAsset { asset, price } => self.list_asset(from, asset, *price),
            Call::UnlistAsset { asset } => self.unlist_asset(from, asset),
            Call::BuyAsset { asset, max_price } => self.buy_asset(from, asset, *max_price),
            Call::FundInference { amount } => self.fund_inference(from, *amount),
            Call::WithdrawInference { amount } => self.withdraw_inference(from, *amount),
            Call::CreateApiKey { key_hash, label } => self.create_api_key(from, key_hash, label),
            Call::RevokeApiKey { key_hash } => self.revoke_api_key(from, key_hash),
            Call::SettleInference {
                period,
                tariff,
                usage,
            } => self.settle_inference(from, *period, *tariff, usage),
        }
    }

    /// Credits `amount` to `to`, creating the account; fails before changing anything if the
    /// balance would overflow.
    fn credit(&mut self, to: &Address, amount: Amount) -> Result<(), TxError> {
        let balance = self.balance_of(to).checked_add(amount)?;
        self.accounts.entry(*to).or_default().balance = balance;
        Ok(())
    }

    /// Checks that `from` can spend `amount` now.
    fn check_spendable(&self, from: &Address, amount: Amount) -> Result<(), TxError> {
        let balance = self.balance_of(from);
        if balance < amount {
            return Err(TxError::InsufficientBalance {
                available: balance.0,
                needed: amount.0,
            });
        }
        let spendable = self.spendable(from);
        if spendable < amount {
            return Err(TxError::Locked {
                // Spendable is the balance less what vests later, so never above the balance.
                locked: balance.0.saturating_sub(spendable.0),
            });
        }
        Ok(())
    }

    /// Whether `signer` may settle inference: the system key or a settler named in genesis.
    pub fn may_settle_inference(&self, signer: &Address) -> bool {
        *signer == self.genesis.system_key || self.genesis.inference_settlers.contains(signer)
    }

    /// Runs the audit; a violation is fatal for the replica.
    pub fn audit(&self) -> Result<(), InvariantViolation> {
        invariants::audit(self)
    }
}
