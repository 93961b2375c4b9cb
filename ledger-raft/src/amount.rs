//! AIC amounts: u128 base units with 18 decimals, checked arithmetic only, and the decimal text
//! form people type and read ("12.5").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::TxError;

/// Decimal places of one AIC.
pub const DECIMALS: u32 = 18;
/// Base units in one AIC.
pub const ONE_AIC: u128 = 1_000_000_000_000_000_000;

/// An amount of AIC in base units. Human-readable formats (JSON, TOML) carry it as decimal AIC
/// text, since their numbers cannot hold a u128; binary formats carry the integer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(pub u128);

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_u128(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            u128::deserialize(deserializer).map(Amount)
        }
    }
}

impl Amount {
    pub const ZERO: Amount = Amount(0);

    pub const fn base_units(units: u128) -> Self {
        Amount(units)
    }

    /// Whole AIC; `None` if it does not fit.
    pub fn aic(whole: u128) -> Option<Self> {
        whole.checked_mul(ONE_AIC).map(Amount)
    }

    pub fn checked_add(self, other: Amount) -> Result<Amount, TxError> {
        self.0.checked_add(other.0).map(Amount).ok_or(TxError::Overflow)
    }

    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        self.0.checked_sub(other.0).map(Amount)
    }

    /// `floor(self × numerator / denominator)`, exact: `None` only when the result itself (or
    /// twice the denominator) does not fit in u128. Pro-rata shares multiply two amounts, whose
    /// product overflows u128 long before the share does.
    pub fn mul_div(self, numerator: u128, denominator: u128) -> Option<Amount> {
        if denominator == 0 {
            return None;
        }
        let c = denominator;
        let whole = (self.0 / c).checked_mul(numerator)?;
        // floor(r × numerator / c) for r < c, bit by bit over the numerator, keeping
        // r × (the numerator's leading bits) = quotient × c + remainder with remainder < c.
        let r = self.0 % c;
        let (mut quotient, mut remainder) = (0u128, 0u128);
        for bit in (0..128).rev() {
            quotient = quotient.checked_mul(2)?;
            remainder = remainder.checked_mul(2)?;
            if remainder >= c {
                remainder -= c;
                quotient += 1;
            }
            if (numerator >> bit) & 1 == 1 {
                remainder = remainder.checked_add(r)?;
                if remainder >= c {
                    remainder -= c;
                    quotient += 1;
                }
            }
        }
        whole.checked_add(quotient).map(Amount)
    }

    /// Whole AIC as a float: for dashboards and metrics, never for accounting.
    pub fn as_aic_f64(self) -> f64 {
        self.0 as f64 / ONE_AIC as f64
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Amount {
    /// Decimal AIC with trailing zeros trimmed: `12.5`, `0.000000000000000001`, `3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / ONE_AIC;
        let fraction = self.0 % ONE_AIC;
        if fraction == 0 {
            return write!(f, "{whole}");
        }
        let digits = format!("{fraction:018}");
        write!(f, "{whole}.{}", digits.trim_end_matches('0'))
    }
}

/// Why a decimal amount did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid amount {input:?}: {reason}")]
pub struct AmountParseError {
    pub input: String,
    pub reason: &'static str,
}

impl FromStr for Amount {
    type Err = AmountParseError;

    /// Parses decimal AIC (`"12.5"`), or base units with a `base:` prefix (`"base:1"`).
    fn from_str(s: &str) -> Result<Self, AmountParseError> {
        let error = |reason| AmountParseError {
            input: s.to_string(),
            reason,
        };
        if let Some(units) = s.strip_prefix("base:") {
            return units
                .parse::<u128>()
                .map(Amount)
                .map_err(|_| error("base units must be a whole number that fits u128"));
        }
        let (whole, fraction) = s.split_once('.').unwrap_or((s, ""));
        if whole.is_empty() && fraction.is_empty() {
            return Err(error("empty"));
        }
        if !whole.chars().all(|c| c.is_ascii_digit()) || !fraction.chars().all(|c| c.is_ascii_digit()) {
            return Err(error("only digits and one decimal point are allowed"));
        }
        if fraction.len() > DECIMALS as usize {
            return Err(error("more than 18 decimal places"));
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| error("too large"))?
        };
        let fraction_units: u128 = if fraction.is_empty() {
            0
        } else {
            format!("{fraction:0<18}")
                .parse()
                .map_err(|_| error("bad fraction"))?
        };
        whole
            .checked_mul(ONE_AIC)
            .and_then(|w| w.checked_add(fraction_units))
            .map(Amount)
            .ok_or_else(|| error("too large"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_text_round_trips() {
        for text in ["0", "1", "12.5", "0.000000000000000001", "10000000000"] {
            let amount: Amount = text.parse().unwrap();
            assert_eq!(amount.to_string(), text);
        }
        assert_eq!("1.50".parse::<Amount>().unwrap().to_string(), "1.5");
        assert_eq!("base:7".parse::<Amount>().unwrap(), Amount(7));
    }

    #[test]
    fn bad_text_is_refused() {
        for text in [
            "",
            ".",
            "1.2.3",
            "-1",
            "1e5",
            "0.0000000000000000001",
            "999999999999999999999999",
        ] {
            assert!(text.parse::<Amount>().is_err(), "{text:?}");
        }
    }

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(Amount(u128::MAX).checked_add(Amount(1)), Err(TxError::Overflow));
        assert_eq!(Amount(0).checked_sub(Amount(1)), None);
        assert_eq!(
            Amount(u128::MAX).mul_div(3, 4),
            Some(Amount(u128::MAX / 4 * 3 + 2))
        );
        assert_eq!(Amount(10).mul_div(1, 0), None);
        // Two amounts whose product overflows u128, and their exact share.
        let (forty, ten, fifty) = (40 * ONE_AIC, 10 * ONE_AIC, 50 * ONE_AIC);
        assert_eq!(Amount(forty).mul_div(ten, fifty), Some(Amount(8 * ONE_AIC)));
        assert_eq!(Amount(7).mul_div(3, 2), Some(Amount(10)));
        assert_eq!(
            Amount(1 << 100).mul_div(1 << 100, 1 << 101),
            Some(Amount(1 << 99))
        );
    }
}
