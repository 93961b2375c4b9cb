//! How much AIC may have been issued from the reserve, as a function of cumulative fees paid.
//!
//! The whitepaper ties additional issuance to the logistic function f(x) = 1 / (1 + e^(−x)).
//! We scale and shift it by two genesis parameters — `midpoint` (fees, in AIC, at which half the
//! reserve may be out) and `scale` (AIC of fees per unit of x) — and normalise it so nothing may
//! be issued before any fee is paid and the whole reserve R only in the limit:
//!
//! ```text
//!            f((F − midpoint) / scale) − f(−midpoint / scale)
//!   cap(F) = R · ─────────────────────────────────────────────
//!                         1 − f(−midpoint / scale)
//! ```
//!
//! with F the cumulative fees paid. A reward is accepted only while
//! `issued + reward ≤ min(cap(F), burned)`: issuance never exceeds what has been burned.
//!
//! The curve is evaluated in f64 and floored to whole AIC before scaling to base units, so every
//! replica running the same build computes the same cap (`exp` is deterministic for a given
//! binary); the flooring keeps the last-bit noise of `exp` from mattering between builds except
//! exactly at a whole-AIC boundary.

use serde::{Deserialize, Serialize};

use crate::amount::{Amount, ONE_AIC};

/// The curve's genesis parameters, in whole AIC.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IssuanceCurve {
    pub midpoint_fees_aic: f64,
    pub scale_fees_aic: f64,
}

impl Default for IssuanceCurve {
    fn default() -> Self {
        IssuanceCurve {
            midpoint_fees_aic: 100_000_000.0,
            scale_fees_aic: 25_000_000.0,
        }
    }
}

fn logistic(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl IssuanceCurve {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.midpoint_fees_aic.is_finite() && self.midpoint_fees_aic >= 0.0) {
            return Err("issuance.midpoint_fees_aic must be a finite number ≥ 0".into());
        }
        if !(self.scale_fees_aic.is_finite() && self.scale_fees_aic > 0.0) {
            return Err("issuance.scale_fees_aic must be a finite number > 0".into());
        }
        Ok(())
    }

    /// The cumulative issuance allowed after `fees` have been paid, out of a `reserve`.
    pub fn cap(&self, reserve: Amount, fees: Amount) -> Amount {
        if fees.is_zero() {
            return Amount::ZERO;
        }
        let fees_aic = fees.0 as f64 / ONE_AIC as f64;
        let base = logistic(-self.midpoint_fees_aic / self.scale_fees_aic);
        let share =
            (logistic((fees_aic - self.midpoint_fees_aic) / self.scale_fees_aic) - base) / (1.0 - base);
        let share = share.clamp(0.0, 1.0);
        let reserve_aic = reserve.0 / ONE_AIC;
        let allowed_aic = ((reserve_aic as f64) * share).floor() as u128;
        Amount(allowed_aic.min(reserve_aic).saturating_mul(ONE_AIC)).min(reserve)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_starts_at_zero_rises_monotonically_and_never_passes_the_reserve() {
        let curve = IssuanceCurve::default();
        let reserve = Amount::aic(2_000_000_000).unwrap();
        assert_eq!(curve.cap(reserve, Amount::ZERO), Amount::ZERO);
        let mut last = Amount::ZERO;
        for fees_aic in [
            1u128,
            1_000,
            1_000_000,
            50_000_000,
            100_000_000,
            200_000_000,
            10_000_000_000,
        ] {
            let cap = curve.cap(reserve, Amount::aic(fees_aic).unwrap());
            assert!(cap >= last, "monotone at {fees_aic}");
            assert!(cap <= reserve);
            last = cap;
        }
        let half = curve.cap(reserve, Amount::aic(100_000_000).unwrap());
        assert!(
            half.0 > reserve.0 / 3 && half.0 < reserve.0 / 2 + reserve.0 / 10,
            "{half}"
        );
        assert!(
            last.0 > reserve.0 / 100 * 99,
            "approaches the whole reserve: {last}"
        );
    }
}
