//! Data that ships inside the binary: the UCI optical handwritten digits set (1,797 rows × 64
//! features, 10 classes; CC BY 4.0 — see `data/digits/README.md`) and the Palmer penguins (344
//! rows, a clean and a raw table with missing values, dates, categories and free text; CC0 — see
//! `data/penguins/README.md`), for the devnet, the README and tests.

/// The digits as CSV: 64 pixel-count columns and the `digit` label.
pub const DIGITS_CSV: &[u8] = include_bytes!("../data/digits/digits.csv");
/// The label column of [`DIGITS_CSV`].
pub const DIGITS_LABEL: &str = "digit";

/// The Palmer penguins, simplified: `species`, `island`, measurements, `sex`, `year`; `NA` marks
/// what is missing.
pub const PENGUINS_CSV: &[u8] = include_bytes!("../data/penguins/penguins.csv");
/// The Palmer penguins as collected: ids, dates, isotopes and comments besides the measurements.
pub const PENGUINS_RAW_CSV: &[u8] = include_bytes!("../data/penguins/penguins-raw.csv");
