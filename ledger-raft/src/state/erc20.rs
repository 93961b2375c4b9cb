//! ERC20 semantics: transfer, approve, transferFrom, burn.

use super::{Event, LedgerState, TxResult};
use crate::amount::Amount;
use crate::error::TxError;
use crate::keys::Address;

/// An allowance of this size is unlimited and is not spent down (the common ERC20 convention).
const UNLIMITED: Amount = Amount(u128::MAX);

impl LedgerState {
    /// Moves `amount` from `from` to `to`; checks both sides before touching either.
    fn move_balance(&mut self, from: &Address, to: &Address, amount: Amount) -> Result<(), TxError> {
        self.check_spendable(from, amount)?;
        if from == to {
            return Ok(());
        }
        let new_to = self.balance_of(to).checked_add(amount)?;
        let new_from = self
            .balance_of(from)
            .checked_sub(amount)
            .expect("checked spendable");
        self.accounts.entry(*from).or_default().balance = new_from;
        self.accounts.entry(*to).or_default().balance = new_to;
        Ok(())
    }

    pub(super) fn transfer(&mut self, from: &Address, to: &Address, amount: Amount) -> TxResult {
        self.move_balance(from, to, amount)?;
        Ok(vec![Event::Transfer {
            from: Some(*from),
            to: Some(*to),
            amount,
        }])
    }

    /// Sets (overwrites) the allowance of `spender` over `owner`'s balance.
    pub(super) fn approve(&mut self, owner: &Address, spender: &Address, amount: Amount) -> TxResult {
        if amount.is_zero() {
            self.allowances.remove(&(*owner, *spender));
        } else {
            self.allowances.insert((*owner, *spender), amount);
        }
        Ok(vec![Event::Approval {
            owner: *owner,
            spender: *spender,
            amount,
        }])
    }

    pub(super) fn transfer_from(
        &mut self,
        spender: &Address,
        owner: &Address,
        to: &Address,
        amount: Amount,
    ) -> TxResult {
        let allowance = self.allowance(owner, spender);
        if allowance < amount {
            return Err(TxError::InsufficientAllowance {
                available: allowance.0,
                needed: amount.0,
            });
        }
        self.move_balance(owner, to, amount)?;
        if allowance != UNLIMITED {
            let left = allowance.checked_sub(amount).expect("checked above");
            if left.is_zero() {
                self.allowances.remove(&(*owner, *spender));
            } else {
                self.allowances.insert((*owner, *spender), left);
            }
        }
        Ok(vec![Event::Transfer {
            from: Some(*owner),
            to: Some(*to),
            amount,
        }])
    }

    pub(super) fn burn(&mut self, from: &Address, amount: Amount) -> TxResult {
        self.check_spendable(from, amount)?;
        let burned = self.burned.checked_add(amount)?;
        let balance = self
            .balance_of(from)
            .checked_sub(amount)
            .expect("checked spendable");
        self.accounts.entry(*from).or_default().balance = balance;
        self.burned = burned;
        Ok(vec![Event::Transfer {
            from: Some(*from),
            to: None,
            amount,
        }])
    }
}
