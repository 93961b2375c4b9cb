//! Data that ships inside the binary: the UCI optical handwritten digits set (1,797 rows × 64
//! features, 10 classes; CC BY 4.0 — see `data/digits/README.md`), for the devnet and tests.

/// The digits as CSV: 64 pixel-count columns and the `digit` label.
pub const DIGITS_CSV: &[u8] = include_bytes!("../data/digits/digits.csv");
/// The label column of [`DIGITS_CSV`].
pub const DIGITS_LABEL: &str = "digit";
