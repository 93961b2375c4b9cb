//! How results of different backends are compared: the rule the rater uses to decide whether two
//! executions of the same task agree.
//!
//! On one device and backend results are bitwise reproducible (fixed reduction orders, no
//! atomics). Across backends the order of additions and the `exp`/`log` implementations differ,
//! so values agree within `|a − b| ≤ ATOL + RTOL · max(|a|, |b|)`.

/// Relative tolerance across backends.
pub const RTOL: f32 = 1e-4;
/// Absolute tolerance across backends (for values near zero).
pub const ATOL: f32 = 1e-5;

/// The first element where two results disagree beyond the tolerance.
#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    pub index: usize,
    pub left: f32,
    pub right: f32,
}

/// Compares two results element by element with the documented tolerance. Lengths must match;
/// NaN never agrees with anything.
pub fn agree(left: &[f32], right: &[f32]) -> Result<(), Mismatch> {
    agree_within(left, right, RTOL, ATOL)
}

pub fn agree_within(left: &[f32], right: &[f32], rtol: f32, atol: f32) -> Result<(), Mismatch> {
    if left.len() != right.len() {
        return Err(Mismatch {
            index: left.len().min(right.len()),
            left: f32::NAN,
            right: f32::NAN,
        });
    }
    for (index, (&l, &r)) in left.iter().zip(right).enumerate() {
        let close = (l - r).abs() <= atol + rtol * l.abs().max(r.abs());
        if !close {
            return Err(Mismatch {
                index,
                left: l,
                right: r,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_is_relative_for_large_values_and_absolute_near_zero() {
        assert!(agree(&[1000.0], &[1000.05]).is_ok());
        assert!(agree(&[1000.0], &[1000.5]).is_err());
        assert!(agree(&[0.0], &[5e-6]).is_ok());
        assert!(agree(&[0.0], &[5e-5]).is_err());
        assert!(agree(&[f32::NAN], &[f32::NAN]).is_err());
        assert!(agree(&[1.0, 2.0], &[1.0]).is_err());
    }
}
