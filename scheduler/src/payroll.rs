//! Coin payroll: what a job's escrow pays whom at the end — pure, checked arithmetic, and never
//! more than the escrow holds.
//!
//! ```text
//!  usage fees      dataset owner and model owner, each their asset's fee, paid first
//!  compute         each provider: verified row-passes × price per million rows
//!  storage         each provider: bytes served × price per GB
//!  platform fee    a percentage of compute + storage, burned (it backs later issuance)
//!  refund          whatever is left returns to the submitter
//! ```
//!
//! If the work costs more than the budget left after fees (retries and spot checks cost extra),
//! compute and storage are paid pro rata so the total is exactly the budget.

use std::collections::BTreeMap;

use aic_ledger::tx::{Payout, PayoutKind};
use aic_ledger::{Address, Amount};

/// Prices the grid charges, set in the scheduler's config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pricing {
    /// Per million rows passed through a gradient or evaluation kernel.
    pub compute_per_million_rows: Amount,
    /// Per 10^9 bytes of shards served.
    pub storage_per_gb: Amount,
    pub platform_fee_percent: u8,
}

/// What a job did, as the rater accepted it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkDone {
    /// Verified row-passes by compute provider.
    pub compute_rows: BTreeMap<Address, u64>,
    /// Bytes served by storage provider.
    pub storage_bytes: BTreeMap<Address, u64>,
    /// Usage fees: (owner, fee, kind) for the dataset and the model.
    pub fees: Vec<(Address, Amount, PayoutKind)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settlement {
    pub payouts: Vec<Payout>,
    pub platform_fee: Amount,
    /// What stays in escrow for the refund.
    pub refund: Amount,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayrollError {
    #[error("the budget ({budget} AIC) does not cover the usage fees ({fees} AIC)")]
    FeesExceedBudget { budget: Amount, fees: Amount },
    #[error("an amount overflowed")]
    Overflow,
}

impl Pricing {
    pub fn compute_cost(&self, rows: u64) -> Option<Amount> {
        self.compute_per_million_rows.mul_div(u128::from(rows), 1_000_000)
    }

    pub fn storage_cost(&self, bytes: u64) -> Option<Amount> {
        self.storage_per_gb.mul_div(u128::from(bytes), 1_000_000_000)
    }

    pub fn platform_fee(&self, paid: Amount) -> Option<Amount> {
        paid.mul_div(u128::from(self.platform_fee_percent), 100)
    }

    /// The most a job may cost: fees, its row-passes (train rows × epochs, doubled for spot
    /// checks at the new-node rate, plus one evaluation), storage for every shard fetched once
    /// per compute node, and the platform fee on top.
    pub fn quote(
        &self,
        fees: Amount,
        train_rows: u64,
        test_rows: u64,
        epochs: u32,
        dataset_bytes: u64,
        compute_nodes: u64,
    ) -> Option<Amount> {
        let rows = train_rows
            .checked_mul(u64::from(epochs))?
            .checked_mul(2)?
            .checked_add(test_rows.checked_mul(2)?)?;
        let bytes = dataset_bytes.checked_mul(compute_nodes.max(1))?;
        let work = self
            .compute_cost(rows)?
            .checked_add(self.storage_cost(bytes)?)
            .ok()?;
        work.checked_add(self.platform_fee(work)?)
            .ok()?
            .checked_add(fees)
            .ok()
    }
}

/// The Proof-of-Value reward a provider earns for `verified_rows` at `rate` per million rows:
/// none when the provider is the job's own submitter (self-dealing earns nothing). The ledger's
/// issuance cap may lower it further.
pub fn pov_reward(
    rate: Amount,
    verified_rows: u64,
    provider: &Address,
    submitter: &Address,
) -> Option<Amount> {
    if provider == submitter {
        return None;
    }
    rate.mul_div(u128::from(verified_rows), 1_000_000)
        .filter(|a| !a.is_zero())
}

fn add(a: Amount, b: Amount) -> Result<Amount, PayrollError> {
    a.checked_add(b).map_err(|_| PayrollError::Overflow)
}

/// Splits `budget` according to `work`.
pub fn settle(budget: Amount, work: &WorkDone, pricing: &Pricing) -> Result<Settlement, PayrollError> {
    let mut payouts = Vec::new();
    let mut fees = Amount::ZERO;
    for (owner, fee, kind) in &work.fees {
        fees = add(fees, *fee)?;
        if !fee.is_zero() {
            payouts.push(Payout {
                to: *owner,
                amount: *fee,
                kind: *kind,
            });
        }
    }
    let left = budget
        .checked_sub(fees)
        .ok_or(PayrollError::FeesExceedBudget { budget, fees })?;

    let mut owed: Vec<(Address, Amount, PayoutKind)> = Vec::new();
    for (to, rows) in &work.compute_rows {
        owed.push((
            *to,
            pricing.compute_cost(*rows).ok_or(PayrollError::Overflow)?,
            PayoutKind::Compute,
        ));
    }
    for (to, bytes) in &work.storage_bytes {
        owed.push((
            *to,
            pricing.storage_cost(*bytes).ok_or(PayrollError::Overflow)?,
            PayoutKind::Storage,
        ));
    }
    let work_total = owed
        .iter()
        .try_fold(Amount::ZERO, |sum, (_, a, _)| add(sum, *a))?;
    let fee_on_work = pricing.platform_fee(work_total).ok_or(PayrollError::Overflow)?;
    let wanted = add(work_total, fee_on_work)?;
    // Pro rata when the work costs more than what is left: every share scaled by left / wanted.
    let scale = |amount: Amount| -> Result<Amount, PayrollError> {
        if wanted <= left {
            Ok(amount)
        } else {
            amount.mul_div(left.0, wanted.0).ok_or(PayrollError::Overflow)
        }
    };
    let mut paid = Amount::ZERO;
    for (to, amount, kind) in owed {
        let amount = scale(amount)?;
        if !amount.is_zero() {
            paid = add(paid, amount)?;
            payouts.push(Payout { to, amount, kind });
        }
    }
    let platform_fee = scale(fee_on_work)?;
    let spent = add(add(fees, paid)?, platform_fee)?;
    let refund = budget.checked_sub(spent).ok_or(PayrollError::Overflow)?;
    Ok(Settlement {
        payouts,
        platform_fee,
        refund,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aic(n: u128) -> Amount {
        Amount::aic(n).unwrap()
    }

    fn pricing() -> Pricing {
        Pricing {
            compute_per_million_rows: aic(10),
            storage_per_gb: aic(2),
            platform_fee_percent: 5,
        }
    }

    fn work() -> WorkDone {
        let (a, b, s, d, m) = (
            Address([1; 32]),
            Address([2; 32]),
            Address([3; 32]),
            Address([4; 32]),
            Address([5; 32]),
        );
        WorkDone {
            compute_rows: [(a, 300_000), (b, 100_000)].into_iter().collect(),
            storage_bytes: [(s, 500_000_000)].into_iter().collect(),
            fees: vec![
                (d, aic(1), PayoutKind::DatasetFee),
                (m, aic(2), PayoutKind::ModelFee),
            ],
        }
    }

    fn total(s: &Settlement) -> Amount {
        s.payouts
            .iter()
            .fold(s.platform_fee.checked_add(s.refund).unwrap(), |t, p| {
                t.checked_add(p.amount).unwrap()
            })
    }

    #[test]
    fn a_budget_that_covers_the_work_pays_each_share_and_refunds_the_rest() {
        let settlement = settle(aic(100), &work(), &pricing()).unwrap();
        let amounts: Vec<String> = settlement.payouts.iter().map(|p| p.amount.to_string()).collect();
        // fees 1 and 2; compute 3 and 1; storage 1; platform 5 % of 5 = 0.25.
        assert_eq!(amounts, vec!["1", "2", "3", "1", "1"]);
        assert_eq!(settlement.platform_fee.to_string(), "0.25");
        assert_eq!(settlement.refund.to_string(), "91.75");
        assert_eq!(
            total(&settlement),
            aic(100),
            "escrow balances to the last base unit"
        );
    }

    #[test]
    fn a_budget_short_of_the_work_pays_pro_rata_to_exactly_the_budget() {
        let budget = Amount::base_units(5_123_456_789_012_345_678);
        let settlement = settle(budget, &work(), &pricing()).unwrap();
        assert!(total(&settlement) == budget);
        assert!(
            settlement.refund.0 < 10,
            "rounding leaves at most dust: {}",
            settlement.refund
        );
        assert_eq!(
            settle(aic(2), &work(), &pricing()),
            Err(PayrollError::FeesExceedBudget {
                budget: aic(2),
                fees: aic(3)
            })
        );
    }

    #[test]
    fn a_submitters_own_node_earns_no_proof_of_value_reward() {
        let (node, submitter) = (Address([1; 32]), Address([2; 32]));
        assert_eq!(
            pov_reward(aic(100), 5_000, &node, &submitter),
            Some(Amount::base_units(500_000_000_000_000_000))
        );
        assert_eq!(pov_reward(aic(100), 5_000, &submitter, &submitter), None);
        assert_eq!(pov_reward(aic(100), 0, &node, &submitter), None);
    }

    #[test]
    fn the_quote_covers_the_settlement_of_the_work_it_quotes() {
        let quote = pricing()
            .quote(aic(3), 200_000, 50_000, 1, 250_000_000, 2)
            .unwrap();
        let settlement = settle(quote, &work(), &pricing()).unwrap();
        assert!(settlement.refund > Amount::ZERO);
    }
}
