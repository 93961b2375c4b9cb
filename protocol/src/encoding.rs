//! How a raw table cell becomes model input: the one rule every stage applies — import, the
//! shards a job trains on, inference, and the ONNX export — read from the manifest's features.
//!
//! ```text
//!  raw cell ──► missing? (null markers) ──► fill per policy, drop the row, or refuse
//!      │
//!      ├─ numeric     (x − mean) / std                         1 column
//!      ├─ date        days since 1970-01-01, then as numeric   1 column
//!      └─ categorical one-hot over the categories, + "unknown" k + 1 columns
//! ```

use serde::{Deserialize, Serialize};

/// The null markers recognised when an import names none (compared trimmed, ignoring case).
pub const DEFAULT_NULL_MARKERS: [&str; 6] = ["", "NA", "N/A", "NaN", "null", "None"];
/// The category a missing value becomes under [`MissingPolicy::Level`].
pub const MISSING_LEVEL: &str = "<missing>";
/// The name suffix of a one-hot column for values not seen at import.
pub const UNKNOWN_LEVEL: &str = "<unknown>";

/// What a missing value in a column becomes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingPolicy {
    /// The import (and any later row) with a missing value here is refused.
    #[default]
    Refuse,
    /// Rows with a missing value here are left out.
    DropRow,
    /// Numbers and dates: the column's mean.
    Mean,
    /// Numbers and dates: the column's median.
    Median,
    /// Categories: the most frequent one.
    MostFrequent,
    /// Categories: a category of its own, [`MISSING_LEVEL`].
    Level,
}

impl MissingPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            MissingPolicy::Refuse => "refuse",
            MissingPolicy::DropRow => "drop_row",
            MissingPolicy::Mean => "mean",
            MissingPolicy::Median => "median",
            MissingPolicy::MostFrequent => "most_frequent",
            MissingPolicy::Level => "level",
        }
    }

    pub const ALL: [MissingPolicy; 6] = [
        MissingPolicy::Refuse,
        MissingPolicy::DropRow,
        MissingPolicy::Mean,
        MissingPolicy::Median,
        MissingPolicy::MostFrequent,
        MissingPolicy::Level,
    ];
}

impl std::str::FromStr for MissingPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        MissingPolicy::ALL
            .into_iter()
            .find(|p| p.as_str() == s.replace('-', "_"))
            .ok_or_else(|| format!("unknown missing-value policy {s:?} (refuse, drop_row, mean, median, most_frequent, level)"))
    }
}

/// How one feature column is turned into model input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeatureEncoding {
    /// Standardised: (x − mean) / std (std 1 where the column is constant).
    Numeric { mean: f64, std: f64 },
    /// Days since 1970-01-01 (from `YYYY-MM-DD`), standardised.
    Date { mean: f64, std: f64 },
    /// One-hot over `categories` (sorted), then one column for a value not seen at import.
    Categorical { categories: Vec<String> },
}

/// One feature: its source column, encoding, and what its missing values become.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    pub name: String,
    #[serde(flatten)]
    pub encoding: FeatureEncoding,
    #[serde(default)]
    pub missing: MissingPolicy,
    /// The raw value a missing cell becomes (mean, median or most frequent), when the policy
    /// fills one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill: Option<String>,
}

/// Why a cell could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CellError {
    /// Missing under a policy that fills nothing: the row is dropped or refused.
    #[error("missing value")]
    Missing,
    #[error("{0:?} is not a number")]
    NotANumber(String),
    #[error("{0:?} is not a date (YYYY-MM-DD)")]
    NotADate(String),
}

/// `text` without leading and trailing whitespace, as [`str::trim`]; a cell that starts and ends
/// in a visible ASCII character (almost every cell of a data file) is returned as it is, without
/// the Unicode scan (the import calls this for every cell, in both passes).
pub fn trimmed(text: &str) -> &str {
    match (text.as_bytes().first(), text.as_bytes().last()) {
        (Some(first), Some(last)) if first.is_ascii_graphic() && last.is_ascii_graphic() => text,
        _ => text.trim(),
    }
}

/// Whether `raw` is a missing value under `markers` (trimmed, ignoring ASCII case).
pub fn is_missing(raw: Option<&str>, markers: &[String]) -> bool {
    match raw {
        None => true,
        Some(text) => {
            let text = trimmed(text);
            // Trimming only shortens a marker: one shorter than the cell cannot match it.
            markers
                .iter()
                .any(|m| m.len() >= text.len() && trimmed(m).eq_ignore_ascii_case(text))
        }
    }
}

/// A finite number, or `None`.
pub fn parse_number(raw: &str) -> Option<f64> {
    trimmed(raw).parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` (or `YYYY/MM/DD`) date, or `None`.
pub fn parse_date(raw: &str) -> Option<i64> {
    let raw = trimmed(raw);
    let mut parts = raw.split(['-', '/']);
    let (year, month, day) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || year.len() != 4 || month.len() != 2 || day.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (year.parse().ok()?, month.parse().ok()?, day.parse().ok()?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in_month = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month[(m - 1) as usize] {
        return None;
    }
    // Days from the civil calendar (proleptic Gregorian), era by era of 400 years.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (m + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + d - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    Some(era * 146_097 + day_of_era - 719_468)
}

/// `YYYY-MM-DD` of a day count since 1970-01-01.
pub fn date_text(days: i64) -> String {
    // The civil calendar from a day count, era by era of 400 years.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

impl Feature {
    /// Columns this feature takes in the model's input.
    pub fn width(&self) -> usize {
        match &self.encoding {
            FeatureEncoding::Numeric { .. } | FeatureEncoding::Date { .. } => 1,
            FeatureEncoding::Categorical { categories } => categories.len() + 1,
        }
    }

    /// The names of this feature's input columns.
    pub fn column_names(&self) -> Vec<String> {
        match &self.encoding {
            FeatureEncoding::Numeric { .. } | FeatureEncoding::Date { .. } => vec![self.name.clone()],
            FeatureEncoding::Categorical { categories } => categories
                .iter()
                .map(|c| format!("{}={c}", self.name))
                .chain(std::iter::once(format!("{}={UNKNOWN_LEVEL}", self.name)))
                .collect(),
        }
    }

    /// Encodes one cell into `out` (exactly [`Self::width`] values). `missing` says whether the
    /// cell is a missing value (see [`is_missing`]).
    pub fn encode_into(&self, raw: &str, missing: bool, out: &mut [f32]) -> Result<(), CellError> {
        let raw = if missing {
            match (self.missing, &self.fill) {
                (MissingPolicy::Level, _) => MISSING_LEVEL,
                (MissingPolicy::Mean | MissingPolicy::Median | MissingPolicy::MostFrequent, Some(fill)) => {
                    fill.as_str()
                }
                _ => return Err(CellError::Missing),
            }
        } else {
            raw
        };
        match &self.encoding {
            FeatureEncoding::Numeric { mean, std } => {
                let value = parse_number(raw).ok_or_else(|| CellError::NotANumber(raw.to_string()))?;
                out[0] = ((value - mean) / std) as f32;
            }
            FeatureEncoding::Date { mean, std } => {
                let days = parse_date(raw).ok_or_else(|| CellError::NotADate(raw.to_string()))?;
                out[0] = ((days as f64 - mean) / std) as f32;
            }
            FeatureEncoding::Categorical { categories } => {
                out.fill(0.0);
                let at = categories
                    .binary_search_by(|c| c.as_str().cmp(trimmed(raw)))
                    .unwrap_or(categories.len());
                out[at] = 1.0;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimmed_cells_are_what_str_trim_gives() {
        for cell in [
            "",
            " ",
            "0.5",
            " 0.5",
            "0.5 ",
            "\t-1e5\n",
            "NA",
            " na ",
            "\u{a0}7\u{2003}",
            "\u{a0}",
            "é",
            " é ",
            "a b",
        ] {
            assert_eq!(trimmed(cell), cell.trim(), "{cell:?}");
        }
        let markers = vec!["NA".to_string(), " null ".to_string()];
        assert!(is_missing(Some(" na"), &markers));
        assert!(is_missing(Some("NULL"), &markers));
        assert!(!is_missing(Some("0.25"), &markers));
        assert!(is_missing(None, &markers));
    }

    #[test]
    fn dates_count_days_from_the_epoch() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("1970-01-02"), Some(1));
        assert_eq!(parse_date("2000-03-01"), Some(11_017));
        assert_eq!(parse_date("2007-11-11"), Some(13_828));
        assert_eq!(parse_date("1969-12-31"), Some(-1));
        assert_eq!(parse_date("2024/02/29"), Some(19_782));
        for bad in ["2023-02-29", "2007-13-01", "07-11-11", "2007-11-11T00:00", "soon"] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn cells_encode_by_their_feature_and_missing_values_by_its_policy() {
        let markers: Vec<String> = DEFAULT_NULL_MARKERS.iter().map(|m| m.to_string()).collect();
        assert!(is_missing(Some(" na "), &markers) && is_missing(None, &markers));
        assert!(!is_missing(Some("0"), &markers));
        let numeric = Feature {
            name: "mass".into(),
            encoding: FeatureEncoding::Numeric { mean: 10.0, std: 2.0 },
            missing: MissingPolicy::Mean,
            fill: Some("10".into()),
        };
        let mut out = [0f32; 1];
        numeric.encode_into("14", false, &mut out).unwrap();
        assert_eq!(out, [2.0]);
        numeric.encode_into("NA", true, &mut out).unwrap();
        assert_eq!(out, [0.0]);
        let sex = Feature {
            name: "sex".into(),
            encoding: FeatureEncoding::Categorical {
                categories: vec![MISSING_LEVEL.into(), "female".into(), "male".into()],
            },
            missing: MissingPolicy::Level,
            fill: None,
        };
        assert_eq!(sex.width(), 4);
        assert_eq!(sex.column_names()[3], "sex=<unknown>");
        let mut out = [9f32; 4];
        sex.encode_into("male", false, &mut out).unwrap();
        assert_eq!(out, [0.0, 0.0, 1.0, 0.0]);
        sex.encode_into("", true, &mut out).unwrap();
        assert_eq!(out, [1.0, 0.0, 0.0, 0.0]);
        sex.encode_into("other", false, &mut out).unwrap();
        assert_eq!(out, [0.0, 0.0, 0.0, 1.0], "an unseen value is unknown");
        let strict = Feature {
            missing: MissingPolicy::Refuse,
            ..numeric
        };
        assert_eq!(strict.encode_into("", true, &mut [0.0]), Err(CellError::Missing));
    }
}
