//! Trained models served as an API: publication (the owner's price per 1,000 rows and an alias),
//! API keys bound to accounts (only their BLAKE3 hashes are kept), each account's prepaid
//! inference escrow, and the batched settlement of metered usage that a gateway signs once per
//! period — the model owner's fee at the published price, compute by rows served, a burned
//! platform fee. Integer arithmetic only.
//!
//! ```text
//!  FundInference ──► inference_escrow[payer] ──SettleInference(period, usage)──► owner fee
//!                                                                           ├─► compute nodes
//!                                                                           └─► burned
//! ```

use std::collections::BTreeMap;

use aic_protocol::AssetId;
use serde::{Deserialize, Serialize};

use super::{Event, LedgerState, TxResult};
use crate::amount::Amount;
use crate::error::TxError;
use crate::keys::Address;
use crate::tx::{AssetKind, PayoutKind};

/// Longest model alias, in bytes.
pub const MAX_ALIAS_BYTES: usize = 64;
/// Longest API key label, in bytes.
pub const MAX_KEY_LABEL_BYTES: usize = 64;
/// Most API keys (live or revoked) one account may register.
pub const MAX_KEYS_PER_ACCOUNT: usize = 64;
/// Most usage lines one settlement may carry (bounds a transaction's work).
pub const MAX_USAGE_LINES: usize = 4096;
/// Most compute nodes one usage line may pay.
pub const MAX_SERVERS_PER_LINE: usize = 64;

/// A TrainedModel offered for inference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    /// What a caller pays the model's owner per 1,000 rows.
    pub price_per_1k_rows: Amount,
    pub alias: Option<String>,
    /// Unpublished models keep their price for the settlement of calls already served.
    pub live: bool,
}

/// An API key's record; the key itself is never on the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub account: Address,
    pub label: String,
    pub revoked: bool,
}

/// What the gateway charges besides the owner's price, per 1,000 rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferenceTariff {
    /// Paid to the compute nodes' operators, by rows each served.
    pub compute_per_1k_rows: Amount,
    /// Burned.
    pub platform_per_1k_rows: Amount,
}

/// One payer's metered use of one model in a period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferenceUsage {
    pub payer: Address,
    pub model: AssetId,
    pub rows: u64,
    /// The rows each compute node's operator account served; they sum to `rows`.
    pub served: Vec<(Address, u64)>,
}

/// `rows` at `per_1k` per 1,000 rows, rounded down.
fn per_rows(per_1k: Amount, rows: u64) -> Result<Amount, TxError> {
    per_1k.mul_div(u128::from(rows), 1000).ok_or(TxError::Overflow)
}

/// An alias is lower-case ASCII letters, digits, '-', '_' and '.', starting with a letter (so it
/// never reads as an asset id).
fn check_alias(alias: &str) -> Result<(), TxError> {
    let well_formed = !alias.is_empty()
        && alias.len() <= MAX_ALIAS_BYTES
        && alias.starts_with(|c: char| c.is_ascii_lowercase())
        && alias
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if well_formed && alias.parse::<AssetId>().is_err() {
        Ok(())
    } else {
        Err(TxError::Invalid(format!(
            "alias {alias:?}: 1 to {MAX_ALIAS_BYTES} lower-case letters, digits, '-', '_' or '.', starting with a letter"
        )))
    }
}

impl LedgerState {
    pub(super) fn publish_model(
        &mut self,
        from: &Address,
        asset_id: &AssetId,
        price_per_1k_rows: Amount,
        alias: &Option<String>,
    ) -> TxResult {
        let asset = self
            .assets
            .get(asset_id)
            .ok_or_else(|| TxError::UnknownAsset(asset_id.to_string()))?;
        if asset.kind != AssetKind::TrainedModel {
            return Err(TxError::Invalid(format!(
                "asset {asset_id} is a {:?}: only a TrainedModel is served",
                asset.kind
            )));
        }
        if asset.owner != *from {
            return Err(TxError::WrongOwner {
                asset: asset_id.to_string(),
                owner: asset.owner.to_string(),
                claimed: from.to_string(),
            });
        }
        if let Some(alias) = alias {
            check_alias(alias)?;
            if let Some(other) = self.aliases.get(alias).filter(|other| *other != asset_id) {
                return Err(TxError::AliasTaken {
                    alias: alias.clone(),
                    asset: *other,
                });
            }
        }
        let previous = self.published.get(asset_id).and_then(|p| p.alias.clone());
        if let Some(previous) = previous {
            self.aliases.remove(&previous);
        }
        if let Some(alias) = alias {
            self.aliases.insert(alias.clone(), *asset_id);
        }
        self.published.insert(
            *asset_id,
            Publication {
                price_per_1k_rows,
                alias: alias.clone(),
                live: true,
            },
        );
        Ok(vec![Event::ModelPublished {
            asset: *asset_id,
            owner: *from,
            price_per_1k_rows,
            alias: alias.clone(),
        }])
    }

    pub(super) fn unpublish_model(&mut self, from: &Address, asset_id: &AssetId) -> TxResult {
        let asset = self
            .assets
            .get(asset_id)
            .ok_or_else(|| TxError::UnknownAsset(asset_id.to_string()))?;
        if asset.owner != *from {
            return Err(TxError::WrongOwner {
                asset: asset_id.to_string(),
                owner: asset.owner.to_string(),
                claimed: from.to_string(),
            });
        }
        let publication = self
            .published
            .get_mut(asset_id)
            .filter(|p| p.live)
            .ok_or_else(|| TxError::NotPublished(asset_id.to_string()))?;
        publication.live = false;
        if let Some(alias) = publication.alias.take() {
            self.aliases.remove(&alias);
        }
        Ok(vec![Event::ModelUnpublished { asset: *asset_id }])
    }

    /// Forgets a burned asset's publication and alias.
    pub(super) fn forget_publication(&mut self, asset_id: &AssetId) {
        if let Some(publication) = self.published.remove(asset_id) {
            if let Some(alias) = publication.alias {
                self.aliases.remove(&alias);
            }
        }
    }

    pub(super) fn fund_inference(&mut self, from: &Address, amount: Amount) -> TxResult {
        if amount.is_zero() {
            return Err(TxError::Invalid("funding needs an amount above zero".into()));
        }
        self.check_spendable(from, amount)?;
        let escrow = self.inference_escrow_of(from).checked_add(amount)?;
        let balance = self
            .balance_of(from)
            .checked_sub(amount)
            .expect("checked spendable");
        self.accounts.entry(*from).or_default().balance = balance;
        self.inference_escrow.insert(*from, escrow);
        Ok(vec![Event::InferenceFunded {
            account: *from,
            amount,
        }])
    }

    pub(super) fn withdraw_inference(&mut self, from: &Address, amount: Amount) -> TxResult {
        let held = self.inference_escrow_of(from);
        let left = held.checked_sub(amount).ok_or(TxError::InsufficientBalance {
            available: held.0,
            needed: amount.0,
        })?;
        let balance = self.balance_of(from).checked_add(amount)?;
        self.accounts.entry(*from).or_default().balance = balance;
        self.set_inference_escrow(from, left);
        Ok(vec![Event::InferenceWithdrawn {
            account: *from,
            amount,
        }])
    }

    pub(super) fn create_api_key(&mut self, from: &Address, key_hash: &[u8; 32], label: &str) -> TxResult {
        if label.len() > MAX_KEY_LABEL_BYTES || label.chars().any(char::is_control) {
            return Err(TxError::Invalid(format!(
                "a key label is at most {MAX_KEY_LABEL_BYTES} bytes of printable text"
            )));
        }
        if self.api_keys.contains_key(key_hash) {
            return Err(TxError::Invalid("this key is already registered".into()));
        }
        let held = self.api_keys.values().filter(|k| k.account == *from).count();
        if held >= MAX_KEYS_PER_ACCOUNT {
            return Err(TxError::Invalid(format!(
                "an account registers at most {MAX_KEYS_PER_ACCOUNT} keys"
            )));
        }
        self.api_keys.insert(
            *key_hash,
            ApiKey {
                account: *from,
                label: label.to_string(),
                revoked: false,
            },
        );
        Ok(vec![Event::ApiKeyCreated {
            account: *from,
            key_hash: *key_hash,
        }])
    }

    pub(super) fn revoke_api_key(&mut self, from: &Address, key_hash: &[u8; 32]) -> TxResult {
        let key = self
            .api_keys
            .get_mut(key_hash)
            .filter(|k| k.account == *from && !k.revoked)
            .ok_or_else(|| TxError::Invalid("no live key of this account has that hash".into()))?;
        key.revoked = true;
        Ok(vec![Event::ApiKeyRevoked {
            account: *from,
            key_hash: *key_hash,
        }])
    }

    /// Settles one period of a gateway's metered usage. Each line pays the model's owner at its
    /// published price, each compute node's operator by the rows it served, and burns the
    /// platform fee, from the payer's inference escrow. A payer whose escrow fell short (it
    /// withdrew after being served) pays what it holds: the owner first, then compute, then the
    /// platform, so a settlement never blocks.
    pub(super) fn settle_inference(
        &mut self,
        settler: &Address,
        period: u64,
        tariff: InferenceTariff,
        usage: &[InferenceUsage],
    ) -> TxResult {
        if usage.len() > MAX_USAGE_LINES {
            return Err(TxError::Invalid(format!(
                "at most {MAX_USAGE_LINES} usage lines per settlement"
            )));
        }
        if let Some(&last) = self.inference_settled.get(settler) {
            if period <= last {
                return Err(TxError::PeriodSettled { period, last });
            }
        }
        // Work on copies; commit only when every line has been checked.
        let mut escrows: BTreeMap<Address, Amount> = BTreeMap::new();
        let mut credits: BTreeMap<Address, Amount> = BTreeMap::new();
        let mut burned = Amount::ZERO;
        let mut fees = Amount::ZERO;
        let mut events = Vec::new();
        for line in usage {
            let served: u64 = line
                .served
                .iter()
                .try_fold(0u64, |sum, (_, rows)| sum.checked_add(*rows))
                .ok_or(TxError::Overflow)?;
            if served != line.rows || line.served.len() > MAX_SERVERS_PER_LINE || line.rows == 0 {
                return Err(TxError::Invalid(format!(
                    "usage of model {}: {} rows, {served} served by {} nodes (at most {MAX_SERVERS_PER_LINE}, summing to the rows)",
                    line.model,
                    line.rows,
                    line.served.len()
                )));
            }
            let asset = self
                .assets
                .get(&line.model)
                .ok_or_else(|| TxError::UnknownAsset(line.model.to_string()))?;
            let publication = self
                .published
                .get(&line.model)
                .ok_or_else(|| TxError::NotPublished(line.model.to_string()))?;
            let owner = asset.owner;
            let mut available = match escrows.get(&line.payer) {
                Some(left) => *left,
                None => self.inference_escrow_of(&line.payer),
            };
            let mut take = |wanted: Amount| {
                let paid = wanted.min(available);
                available = available.checked_sub(paid).expect("at most what is available");
                paid
            };
            let owner_fee = take(per_rows(publication.price_per_1k_rows, line.rows)?);
            let mut paid = owner_fee;
            add_credit(&mut credits, owner, owner_fee)?;
            if !owner_fee.is_zero() {
                events.push(Event::InferencePaid {
                    model: line.model,
                    to: owner,
                    amount: owner_fee,
                    kind: PayoutKind::ModelFee,
                });
            }
            for (node, rows) in &line.served {
                let compute = take(per_rows(tariff.compute_per_1k_rows, *rows)?);
                paid = paid.checked_add(compute)?;
                add_credit(&mut credits, *node, compute)?;
                if !compute.is_zero() {
                    events.push(Event::InferencePaid {
                        model: line.model,
                        to: *node,
                        amount: compute,
                        kind: PayoutKind::Compute,
                    });
                }
            }
            let platform_fee = take(per_rows(tariff.platform_per_1k_rows, line.rows)?);
            paid = paid.checked_add(platform_fee)?;
            burned = burned.checked_add(platform_fee)?;
            fees = fees.checked_add(owner_fee)?.checked_add(platform_fee)?;
            escrows.insert(line.payer, available);
            events.push(Event::InferenceCharged {
                period,
                payer: line.payer,
                model: line.model,
                rows: line.rows,
                amount: paid,
            });
        }
        for (to, amount) in &credits {
            self.balance_of(to).checked_add(*amount)?;
        }
        let total_burned = self.burned.checked_add(burned)?;
        let cumulative_fees = self.cumulative_fees.checked_add(fees)?;

        for (to, amount) in credits {
            self.credit(&to, amount).expect("checked above");
        }
        for (payer, left) in escrows {
            self.set_inference_escrow(&payer, left);
        }
        self.burned = total_burned;
        self.cumulative_fees = cumulative_fees;
        self.inference_settled.insert(*settler, period);
        if !burned.is_zero() {
            events.push(Event::InferenceFeeBurned {
                period,
                amount: burned,
            });
        }
        Ok(events)
    }

    /// An account's prepaid inference escrow.
    pub fn inference_escrow_of(&self, account: &Address) -> Amount {
        self.inference_escrow
            .get(account)
            .copied()
            .unwrap_or(Amount::ZERO)
    }

    /// Empty escrows are not kept, so the state's encoding stays canonical.
    fn set_inference_escrow(&mut self, account: &Address, amount: Amount) {
        if amount.is_zero() {
            self.inference_escrow.remove(account);
        } else {
            self.inference_escrow.insert(*account, amount);
        }
    }

    /// A published model by its alias or its asset id, with the publication.
    pub fn resolve_model(&self, name: &str) -> Option<(AssetId, &Publication)> {
        let id = match self.aliases.get(name) {
            Some(id) => *id,
            None => name.parse().ok()?,
        };
        self.published.get(&id).map(|p| (id, p))
    }
}

fn add_credit(credits: &mut BTreeMap<Address, Amount>, to: Address, amount: Amount) -> Result<(), TxError> {
    if amount.is_zero() {
        return Ok(());
    }
    let credit = credits.entry(to).or_insert(Amount::ZERO);
    *credit = credit.checked_add(amount)?;
    Ok(())
}
