//! Job escrow (open, release to payees, refund), stake and slash, and Proof-of-Value rewards
//! from the reserve.

use aic_protocol::JobId;

use super::{Escrow, Event, LedgerState, TxResult};
use crate::amount::Amount;
use crate::error::TxError;
use crate::keys::Address;
use crate::tx::{Payout, PayoutKind};

/// Most payouts one release may carry (bounds a transaction's work).
pub const MAX_PAYOUTS: usize = 1024;

impl LedgerState {
    pub(super) fn open_escrow(&mut self, payer: &Address, job: &JobId, amount: Amount) -> TxResult {
        if self.escrows.contains_key(job) {
            return Err(TxError::EscrowExists(job.to_string()));
        }
        if amount.is_zero() {
            return Err(TxError::Invalid("an escrow needs a budget above zero".into()));
        }
        self.check_spendable(payer, amount)?;
        let balance = self
            .balance_of(payer)
            .checked_sub(amount)
            .expect("checked spendable");
        self.accounts.entry(*payer).or_default().balance = balance;
        self.escrows.insert(
            *job,
            Escrow {
                payer: *payer,
                remaining: amount,
            },
        );
        Ok(vec![Event::EscrowOpened {
            job: *job,
            payer: *payer,
            amount,
        }])
    }

    pub(super) fn release_escrow(
        &mut self,
        job: &JobId,
        payouts: &[Payout],
        platform_fee: Amount,
    ) -> TxResult {
        let escrow = self
            .escrows
            .get(job)
            .ok_or_else(|| TxError::UnknownEscrow(job.to_string()))?
            .clone();
        if payouts.len() > MAX_PAYOUTS {
            return Err(TxError::Invalid(format!(
                "at most {MAX_PAYOUTS} payouts per release"
            )));
        }
        // Check every sum and every credit before changing anything.
        let mut total = platform_fee;
        let mut fees = platform_fee;
        let mut credits: std::collections::BTreeMap<Address, Amount> = Default::default();
        for payout in payouts {
            total = total.checked_add(payout.amount)?;
            if matches!(payout.kind, PayoutKind::DatasetFee | PayoutKind::ModelFee) {
                fees = fees.checked_add(payout.amount)?;
            }
            let credit = credits.entry(payout.to).or_insert(Amount::ZERO);
            *credit = credit.checked_add(payout.amount)?;
        }
        let remaining = escrow
            .remaining
            .checked_sub(total)
            .ok_or(TxError::InsufficientBalance {
                available: escrow.remaining.0,
                needed: total.0,
            })?;
        for (to, amount) in &credits {
            self.balance_of(to).checked_add(*amount)?;
        }
        let burned = self.burned.checked_add(platform_fee)?;
        let cumulative_fees = self.cumulative_fees.checked_add(fees)?;

        for (to, amount) in credits {
            self.credit(&to, amount).expect("checked above");
        }
        self.burned = burned;
        self.cumulative_fees = cumulative_fees;
        // The payouts are final: the job can no longer be resumed. Its trained model, if it
        // produced one, may now be minted to its payer (once).
        self.jobs.remove(job);
        self.trained_models_pending.insert(*job, escrow.payer);
        if remaining.is_zero() {
            self.escrows.remove(job);
        } else {
            self.escrows.get_mut(job).expect("exists").remaining = remaining;
        }
        let mut events: Vec<Event> = payouts
            .iter()
            .map(|p| Event::EscrowPaid {
                job: *job,
                to: p.to,
                amount: p.amount,
                kind: p.kind,
            })
            .collect();
        if !platform_fee.is_zero() {
            events.push(Event::PlatformFeeBurned {
                job: *job,
                amount: platform_fee,
            });
        }
        Ok(events)
    }

    pub(super) fn refund_escrow(&mut self, job: &JobId) -> TxResult {
        let escrow = self
            .escrows
            .get(job)
            .ok_or_else(|| TxError::UnknownEscrow(job.to_string()))?
            .clone();
        self.credit(&escrow.payer, escrow.remaining)?;
        self.escrows.remove(job);
        self.jobs.remove(job);
        Ok(vec![Event::EscrowRefunded {
            job: *job,
            to: escrow.payer,
            amount: escrow.remaining,
        }])
    }

    pub(super) fn stake(&mut self, account: &Address, amount: Amount) -> TxResult {
        self.check_spendable(account, amount)?;
        let current = self.account(account);
        let stake = current.stake.checked_add(amount)?;
        let entry = self.accounts.entry(*account).or_default();
        entry.balance = current.balance.checked_sub(amount).expect("checked spendable");
        entry.stake = stake;
        Ok(vec![Event::Staked {
            account: *account,
            amount,
        }])
    }

    /// The account's stake after taking `amount` from it.
    fn stake_less(account: &super::Account, amount: Amount) -> Result<Amount, TxError> {
        account
            .stake
            .checked_sub(amount)
            .ok_or(TxError::InsufficientStake {
                available: account.stake.0,
                needed: amount.0,
            })
    }

    pub(super) fn unstake(&mut self, account: &Address, amount: Amount) -> TxResult {
        let current = self.account(account);
        let stake = Self::stake_less(&current, amount)?;
        let balance = current.balance.checked_add(amount)?;
        let entry = self.accounts.entry(*account).or_default();
        entry.stake = stake;
        entry.balance = balance;
        Ok(vec![Event::Unstaked {
            account: *account,
            amount,
        }])
    }

    pub(super) fn slash(&mut self, account: &Address, amount: Amount, reason: &str) -> TxResult {
        if reason.is_empty() || reason.len() > 256 {
            return Err(TxError::Invalid(
                "a slash needs a reason of 1 to 256 bytes".into(),
            ));
        }
        let current = self.account(account);
        let stake = Self::stake_less(&current, amount)?;
        let burned = self.burned.checked_add(amount)?;
        self.accounts.entry(*account).or_default().stake = stake;
        self.burned = burned;
        Ok(vec![Event::Slashed {
            account: *account,
            amount,
            reason: reason.to_string(),
        }])
    }

    /// What may still be issued now: the curve's cap and the amount burned bound it, and so
    /// does the reserve.
    pub fn issuable(&self) -> Amount {
        let cap = self
            .genesis
            .issuance
            .cap(self.genesis.reserve(), self.cumulative_fees);
        cap.min(self.burned)
            .checked_sub(self.issued)
            .unwrap_or(Amount::ZERO)
    }

    pub(super) fn accrue_rewards(&mut self, job: &JobId, rewards: &[(Address, Amount)]) -> TxResult {
        if rewards.len() > MAX_PAYOUTS {
            return Err(TxError::Invalid(format!("at most {MAX_PAYOUTS} rewards per job")));
        }
        let mut accrued = self.accrued_rewards.clone();
        for (to, amount) in rewards {
            let entry = accrued.entry(*to).or_insert(Amount::ZERO);
            *entry = entry.checked_add(*amount)?;
        }
        accrued.retain(|_, amount| !amount.is_zero());
        self.accrued_rewards = accrued;
        Ok(rewards
            .iter()
            .map(|(to, amount)| Event::RewardAccrued {
                job: *job,
                to: *to,
                amount: *amount,
            })
            .collect())
    }

    /// Issues every accrued reward, scaled down pro rata when the issuance cap allows less than
    /// their sum; what is held back stays accrued for later epochs.
    pub(super) fn pay_reward_epoch(&mut self, epoch: u64) -> TxResult {
        if epoch <= self.reward_epoch {
            return Err(TxError::Invalid(format!(
                "reward epoch {epoch} is not after the last one paid ({})",
                self.reward_epoch
            )));
        }
        let mut total = Amount::ZERO;
        for amount in self.accrued_rewards.values() {
            total = total.checked_add(*amount)?;
        }
        let allowed = self.issuable().min(total);
        let mut issued_now = Amount::ZERO;
        let mut payments = Vec::new();
        for (to, amount) in &self.accrued_rewards {
            let share = if allowed == total {
                *amount
            } else {
                amount.mul_div(allowed.0, total.0).ok_or(TxError::Overflow)?
            };
            if share.is_zero() {
                continue;
            }
            self.balance_of(to).checked_add(share)?;
            issued_now = issued_now.checked_add(share)?;
            payments.push((*to, share));
        }
        let issued = self.issued.checked_add(issued_now)?;
        let still_accrued = total.checked_sub(issued_now).ok_or(TxError::Overflow)?;
        let mut events = Vec::new();
        for (to, share) in payments {
            self.credit(&to, share).expect("checked above");
            let left = self.accrued_rewards[&to]
                .checked_sub(share)
                .expect("a share never exceeds its accrual");
            if left.is_zero() {
                self.accrued_rewards.remove(&to);
            } else {
                self.accrued_rewards.insert(to, left);
            }
            events.push(Event::Rewarded { to, amount: share });
        }
        self.issued = issued;
        self.reward_epoch = epoch;
        events.push(Event::RewardEpochPaid {
            epoch,
            issued: issued_now,
            still_accrued,
        });
        Ok(events)
    }

    pub(super) fn reward(&mut self, to: &Address, amount: Amount) -> TxResult {
        let allowed = self.issuable();
        if amount > allowed {
            return Err(TxError::IssuanceCap {
                requested: amount.0,
                allowed: allowed.0,
            });
        }
        let issued = self.issued.checked_add(amount)?;
        self.credit(to, amount)?;
        self.issued = issued;
        Ok(vec![Event::Rewarded { to: *to, amount }])
    }
}
