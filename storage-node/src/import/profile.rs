//! The first pass over an import: what each column holds (missing values, numbers, dates,
//! distinct values), and from that — with the importer's choices — each column's type, encoding
//! and missing-value policy, its line in the import report, and every refusal, naming the column,
//! the count and an example value.

use std::collections::HashMap;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef};

use super::spill::NumberColumn;
use super::{ColumnType, ImportError, ImportOptions, MAX_CATEGORIES, MAX_CELL_BYTES};
use crate::encoding::{
    is_missing, parse_date, parse_number, trimmed, Feature, FeatureEncoding, MissingPolicy, MISSING_LEVEL,
};
use crate::report::ColumnReport;

/// Text columns with more distinct values than this are taken for free text unless the
/// importer says they are categorical.
pub const AUTO_CATEGORY_LIMIT: usize = 64;
/// Text values longer than this on average make a column free text…
const FREE_TEXT_MEAN_CHARS: u64 = 30;
/// …as do values of this many words on average.
const FREE_TEXT_MEAN_WORDS: u64 = 4;
/// A column whose every value differs is an id when it has more rows than this.
const ID_MIN_ROWS: u64 = 20;
/// Bytes of distinct values tracked across all columns, an equal share each (a column past its
/// share stops counting).
const DISTINCT_BUDGET_BYTES: usize = 64 * 1024 * 1024;
/// Most values kept to compute one column's median.
pub const MAX_MEDIAN_VALUES: usize = 4_000_000;

/// Running mean and variance (Welford), with the range.
#[derive(Clone, Copy, Debug, Default)]
struct Moments {
    count: u64,
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
    overflowed: bool,
}

impl Moments {
    fn add(&mut self, value: f64) {
        if self.count == 0 {
            (self.min, self.max) = (value, value);
        }
        self.count += 1;
        let delta = value - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (value - self.mean);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if !self.mean.is_finite() || !self.m2.is_finite() {
            self.overflowed = true;
        }
    }

    /// Population standard deviation; 1 for a constant column (no scaling).
    fn std(&self) -> f64 {
        let std = if self.count > 1 {
            (self.m2 / self.count as f64).sqrt()
        } else {
            0.0
        };
        if std > 0.0 {
            std
        } else {
            1.0
        }
    }
}

/// What pass 1 learns about one column.
#[derive(Debug, Default)]
pub(super) struct ColumnProfile {
    pub name: String,
    present: u64,
    missing: u64,
    first_missing_row: Option<u64>,
    numbers: Moments,
    integers: u64,
    first_non_number: Option<(u64, String)>,
    median_values: Option<Vec<f64>>,
    dates: Moments,
    first_non_date: Option<(u64, String)>,
    /// Counts by value: looked up for every value of the file, so hashed (sorted where shown).
    distinct: HashMap<String, u64, foldhash::fast::RandomState>,
    distinct_overflow: bool,
    /// Bytes of distinct values this column may still track: its share of
    /// [`DISTINCT_BUDGET_BYTES`].
    distinct_budget: usize,
    text_chars: u64,
    text_words: u64,
}

impl ColumnProfile {
    /// A column's profile, one of `columns` profiled: each tracks distinct values within an
    /// equal share of the budget, so no column's values crowd out another's.
    pub fn new(name: &str, keep_values_for_median: bool, columns: usize) -> Self {
        ColumnProfile {
            name: name.to_string(),
            median_values: keep_values_for_median.then(Vec::new),
            distinct_budget: DISTINCT_BUDGET_BYTES / columns.max(1),
            ..Default::default()
        }
    }

    /// Takes one batch's values of this column; rows are numbered from `first_row` (1-based
    /// data rows). With `numbers`, records the values as numbers while every present one is.
    pub fn add(
        &mut self,
        column: &ArrayRef,
        markers: &[String],
        first_row: u64,
        file: &str,
        mut numbers: Option<&mut NumberColumn>,
    ) -> Result<(), ImportError> {
        let text = column.as_string::<i32>();
        for r in 0..text.len() {
            let row = first_row + r as u64;
            let raw = (!text.is_null(r)).then(|| text.value(r));
            if is_missing(raw, markers) {
                self.missing += 1;
                self.first_missing_row.get_or_insert(row);
                if let Some(numbers) = numbers.as_deref_mut() {
                    numbers.push_missing();
                }
                continue;
            }
            let value = trimmed(raw.expect("present"));
            if value.len() > MAX_CELL_BYTES {
                return Err(ImportError::Unencodable {
                    file: file.to_string(),
                    column: self.name.clone(),
                    reason: format!(
                        "row {row}: a text value of {} bytes (at most {MAX_CELL_BYTES})",
                        value.len()
                    ),
                });
            }
            // Parsed once: a number that is not finite is refused, a finite one counted.
            let parsed = value.parse::<f64>().ok();
            if parsed.is_some_and(|v| !v.is_finite()) {
                return Err(ImportError::Unencodable {
                    file: file.to_string(),
                    column: self.name.clone(),
                    reason: format!("row {row}: {value:?} is not a finite number"),
                });
            }
            self.present += 1;
            match parsed {
                // A number is ASCII, one word, and never a date (a date has two dashes or
                // slashes between its digits): no scan of it is needed.
                Some(_) => {
                    self.text_chars += value.len() as u64;
                    self.text_words += 1;
                }
                None => {
                    self.text_chars += value.chars().count() as u64;
                    self.text_words += value.split_whitespace().count() as u64;
                }
            }
            if let Some(numbers) = numbers.as_deref_mut() {
                match parsed {
                    Some(number) => numbers.push(number),
                    None => numbers.not_a_number(),
                }
            }
            match parsed {
                Some(number) => {
                    self.numbers.add(number);
                    if number.fract() == 0.0 {
                        self.integers += 1;
                    }
                    if let Some(values) = self.median_values.as_mut() {
                        if values.len() == MAX_MEDIAN_VALUES {
                            return Err(ImportError::Unencodable {
                                file: file.to_string(),
                                column: self.name.clone(),
                                reason: format!(
                                    "a median is kept for at most {MAX_MEDIAN_VALUES} values; use the mean"
                                ),
                            });
                        }
                        values.push(number);
                    }
                }
                None => {
                    self.first_non_number
                        .get_or_insert_with(|| (row, value.to_string()));
                }
            }
            match parsed.is_none().then(|| parse_date(value)).flatten() {
                Some(days) => self.dates.add(days as f64),
                None => {
                    self.first_non_date
                        .get_or_insert_with(|| (row, value.to_string()));
                }
            }
            if let Some(count) = self.distinct.get_mut(value) {
                *count += 1;
            } else if !self.distinct_overflow {
                if self.distinct.len() > MAX_CATEGORIES || self.distinct_budget < value.len() {
                    self.distinct_overflow = true;
                } else {
                    self.distinct_budget -= value.len();
                    self.distinct.insert(value.to_string(), 1);
                }
            }
        }
        Ok(())
    }

    /// The distinct values in text order.
    fn values_in_order(&self) -> Vec<String> {
        let mut values: Vec<String> = self.distinct.keys().cloned().collect();
        values.sort_unstable();
        values
    }

    fn distinct(&self) -> Option<u64> {
        (!self.distinct_overflow).then_some(self.distinct.len() as u64)
    }

    /// The most frequent values, most frequent first (ties in text order).
    fn top(&self, n: usize) -> Vec<(String, u64)> {
        let mut counted: Vec<(String, u64)> = self.distinct.iter().map(|(v, c)| (v.clone(), *c)).collect();
        counted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        counted.truncate(n);
        counted
    }

    fn all_unique(&self) -> bool {
        !self.distinct_overflow && self.distinct.len() as u64 == self.present && self.present > ID_MIN_ROWS
    }

    /// The type the values suggest.
    fn inferred(&self) -> Inferred {
        if self.present == 0 {
            return Inferred::Excluded("empty", "every value is missing".into());
        }
        if self.numbers.count == self.present {
            if self.integers == self.present && self.all_unique() {
                return Inferred::Excluded("id", "an id: one distinct integer per row".into());
            }
            return Inferred::Type(ColumnType::Numeric);
        }
        if self.dates.count == self.present {
            return Inferred::Type(ColumnType::Date);
        }
        if self.all_unique() {
            return Inferred::Excluded("id", "an id: one distinct value per row".into());
        }
        let many = self.distinct_overflow || self.distinct.len() > AUTO_CATEGORY_LIMIT;
        let wordy = self.text_chars / self.present.max(1) > FREE_TEXT_MEAN_CHARS
            || self.text_words / self.present.max(1) >= FREE_TEXT_MEAN_WORDS;
        if many || wordy {
            let distinct = self.distinct().map_or("many".to_string(), |d| d.to_string());
            return Inferred::Excluded(
                "text",
                format!(
                    "free text ({distinct} distinct); --column-type {}=categorical to one-hot it",
                    self.name
                ),
            );
        }
        Inferred::Type(ColumnType::Categorical)
    }

    /// A line of the report, without encoding (filled in by the caller).
    fn report(&self, role: &str, kind: &str, type_given: bool) -> ColumnReport {
        let numeric = kind == "numeric" || (self.numbers.count == self.present && self.present > 0);
        let (min, max, mean) = if kind == "date" {
            (
                Some(date_text(self.dates.min.round() as i64)),
                Some(date_text(self.dates.max.round() as i64)),
                None,
            )
        } else if numeric && self.numbers.count > 0 {
            (
                Some(number_text(self.numbers.min)),
                Some(number_text(self.numbers.max)),
                Some(self.numbers.mean),
            )
        } else {
            (None, None, None)
        };
        ColumnReport {
            name: self.name.clone(),
            role: role.to_string(),
            kind: kind.to_string(),
            type_given,
            present: self.present,
            missing: self.missing,
            distinct: self.distinct(),
            min,
            max,
            mean,
            top: if numeric { Vec::new() } else { self.top(5) },
            encoding: String::new(),
            policy: String::new(),
            width: 0,
            warnings: Vec::new(),
        }
    }
}

enum Inferred {
    Type(ColumnType),
    /// Left out: the report's type, and why.
    Excluded(&'static str, String),
}

/// What pass 1 decided for one column.
pub(super) enum Decision {
    Feature(Feature, ColumnReport),
    Excluded(String, ColumnReport),
}

fn number_text(value: f64) -> String {
    format!("{value}")
}

pub use aic_protocol::encoding::date_text;

/// Decides a feature column: its type (as told or inferred), encoding and missing policy.
pub(super) fn decide(
    profile: &ColumnProfile,
    options: &ImportOptions,
    file: &str,
) -> Result<Decision, ImportError> {
    let refuse = |reason: String| ImportError::Unencodable {
        file: file.to_string(),
        column: profile.name.clone(),
        reason,
    };
    let given = options.column_types.get(&profile.name).copied();
    let kind = match given {
        Some(kind) => kind,
        None => match profile.inferred() {
            Inferred::Type(kind) => kind,
            Inferred::Excluded(kind, why) => {
                let mut report = profile.report("excluded", kind, false);
                report.warnings.push(format!("left out: {why}"));
                return Ok(Decision::Excluded(why, report));
            }
        },
    };
    let mut report = profile.report("feature", kind.as_str(), given.is_some());
    let not_all = |what: &str, count: u64, example: &Option<(u64, String)>| {
        let (row, value) = example.clone().unwrap_or_default();
        refuse(format!(
            "{} of {} values are not {what}, e.g. {value:?} (row {row})",
            profile.present - count,
            profile.present
        ))
    };
    let encoding = match kind {
        ColumnType::Text => {
            let why = "free text, as told (--column-type text)".to_string();
            report.role = "excluded".into();
            report.warnings.push(format!("left out: {why}"));
            return Ok(Decision::Excluded(why, report));
        }
        ColumnType::Numeric => {
            if profile.numbers.count < profile.present {
                return Err(not_all(
                    "numbers",
                    profile.numbers.count,
                    &profile.first_non_number,
                ));
            }
            if profile.numbers.overflowed {
                return Err(refuse(format!(
                    "values up to {} make the column's mean or variance overflow; rescale the column",
                    profile.numbers.max.abs().max(profile.numbers.min.abs())
                )));
            }
            FeatureEncoding::Numeric {
                mean: profile.numbers.mean,
                std: profile.numbers.std(),
            }
        }
        ColumnType::Date => {
            if profile.dates.count < profile.present {
                return Err(not_all(
                    "dates (YYYY-MM-DD)",
                    profile.dates.count,
                    &profile.first_non_date,
                ));
            }
            FeatureEncoding::Date {
                mean: profile.dates.mean,
                std: profile.dates.std(),
            }
        }
        ColumnType::Categorical => {
            if profile.distinct_overflow || profile.distinct.len() > MAX_CATEGORIES {
                let example = profile.distinct.keys().min().cloned().unwrap_or_default();
                return Err(refuse(format!(
                    "more than {MAX_CATEGORIES} distinct values (e.g. {example:?}): too many categories to one-hot"
                )));
            }
            FeatureEncoding::Categorical {
                categories: profile.values_in_order(),
            }
        }
    };
    let numeric_like = matches!(kind, ColumnType::Numeric | ColumnType::Date);
    let policy = match options.missing.get(&profile.name) {
        Some(&policy) => policy,
        None if numeric_like => MissingPolicy::Mean,
        None => MissingPolicy::Level,
    };
    let fits = match policy {
        MissingPolicy::Mean | MissingPolicy::Median => numeric_like,
        MissingPolicy::MostFrequent | MissingPolicy::Level => !numeric_like,
        MissingPolicy::Refuse | MissingPolicy::DropRow => true,
    };
    if !fits {
        return Err(refuse(format!(
            "the missing-value policy {} does not apply to a {} column",
            policy.as_str(),
            kind.as_str()
        )));
    }
    if policy == MissingPolicy::Refuse && profile.missing > 0 {
        return Err(refuse(format!(
            "{} missing values (the policy is refuse), the first in row {}",
            profile.missing,
            profile.first_missing_row.unwrap_or(0)
        )));
    }
    let fill = match policy {
        MissingPolicy::Mean if kind == ColumnType::Date => Some(date_text(profile.dates.mean.round() as i64)),
        MissingPolicy::Mean => Some(number_text(profile.numbers.mean)),
        MissingPolicy::Median => {
            let mut values = profile.median_values.clone().unwrap_or_default();
            if kind == ColumnType::Date {
                return Err(refuse("the median of dates is not supported; use mean".into()));
            }
            values.sort_by(f64::total_cmp);
            let n = values.len();
            let median = match n {
                0 => 0.0,
                _ if n % 2 == 1 => values[n / 2],
                _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
            };
            Some(number_text(median))
        }
        MissingPolicy::MostFrequent => profile.top(1).into_iter().next().map(|(v, _)| v),
        MissingPolicy::Level | MissingPolicy::Refuse | MissingPolicy::DropRow => None,
    };
    let encoding = match encoding {
        FeatureEncoding::Categorical { mut categories } if policy == MissingPolicy::Level => {
            // The missing level is always a column, so a missing value later (at inference)
            // encodes the same way as at import.
            categories.push(MISSING_LEVEL.to_string());
            categories.sort();
            FeatureEncoding::Categorical { categories }
        }
        other => other,
    };
    let feature = Feature {
        name: profile.name.clone(),
        encoding,
        missing: policy,
        fill,
    };
    report.width = feature.width() as u64;
    report.encoding = match &feature.encoding {
        FeatureEncoding::Numeric { .. } => "standardised".into(),
        FeatureEncoding::Date { .. } => "days since 1970-01-01, standardised".into(),
        FeatureEncoding::Categorical { categories } => {
            let values = categories.iter().filter(|c| *c != MISSING_LEVEL).count();
            if policy == MissingPolicy::Level {
                format!("one-hot: {values} values + missing + unknown")
            } else {
                format!("one-hot: {values} values + unknown")
            }
        }
    };
    report.policy = if profile.missing == 0 && policy != MissingPolicy::Refuse {
        format!("{} if missing", policy.as_str())
    } else {
        match &feature.fill {
            Some(fill) => {
                let shown = parse_number(fill).map_or(fill.clone(), |v| format!("{v:.4}"));
                format!("{} missing → {} {shown}", profile.missing, policy.as_str())
            }
            None => format!("{} missing → {}", profile.missing, policy.as_str()),
        }
    };
    if profile.present > 0 && profile.distinct() == Some(1) {
        report
            .warnings
            .push("constant: one value in every row, it tells the model nothing".into());
    }
    if kind == ColumnType::Categorical && profile.numbers.count * 100 >= profile.present * 95 {
        let (row, value) = profile.first_non_number.clone().unwrap_or_default();
        report.warnings.push(format!(
            "{} of {} values are numbers: is {value:?} (row {row}) a typo? --column-type {}=numeric would refuse it",
            profile.numbers.count, profile.present, profile.name
        ));
    }
    Ok(Decision::Feature(feature, report))
}

/// The label's classes, or a regression target's statistics, with the label's report line.
pub(super) fn decide_label(
    profile: &ColumnProfile,
    options: &ImportOptions,
    file: &str,
) -> Result<(Vec<String>, Option<crate::manifest::Target>, ColumnReport), ImportError> {
    let refuse = |reason: String| ImportError::Unencodable {
        file: file.to_string(),
        column: profile.name.clone(),
        reason,
    };
    let policy = options.label_missing();
    if profile.missing > 0 && policy == MissingPolicy::Refuse {
        return Err(refuse(format!(
            "{} missing label values, the first in row {}",
            profile.missing,
            profile.first_missing_row.unwrap_or(0)
        )));
    }
    if profile.present == 0 {
        return Err(refuse("every label value is missing".into()));
    }
    let policy_text = if profile.missing > 0 {
        format!("{} missing → {}", profile.missing, policy.as_str())
    } else {
        String::new()
    };
    if options.regression {
        if profile.numbers.count < profile.present {
            let (row, value) = profile.first_non_number.clone().unwrap_or_default();
            return Err(refuse(format!(
                "a regression target must be numeric: {} of {} values are not numbers, e.g. {value:?} (row {row})",
                profile.present - profile.numbers.count,
                profile.present
            )));
        }
        if profile.numbers.overflowed {
            return Err(refuse("its values make the mean or variance overflow".into()));
        }
        let mut report = profile.report("target", "numeric", false);
        report.encoding = "regression target, standardised".into();
        report.policy = policy_text;
        let target = crate::manifest::Target {
            mean: profile.numbers.mean,
            std: profile.numbers.std(),
        };
        return Ok((Vec::new(), Some(target), report));
    }
    if profile.distinct_overflow || profile.distinct.len() > MAX_CATEGORIES {
        return Err(refuse(format!(
            "more than {MAX_CATEGORIES} classes: a label names classes (--target for a number)"
        )));
    }
    let values = profile.values_in_order();
    let classes = order_classes(values.clone());
    let mut report = profile.report("label", "categorical", false);
    report.encoding = format!("class index, {} classes", classes.len());
    report.policy = policy_text;
    for class in &values {
        if profile.distinct[class] == 1 {
            report.warnings.push(format!(
                "class {class:?} has a single row: it cannot be learned or tested"
            ));
        }
    }
    if classes.len() < 2 {
        report
            .warnings
            .push("a single class: nothing to tell apart".into());
    }
    Ok((classes, None, report))
}

/// Classes in numeric order when every label is a number, else in text order.
fn order_classes(mut classes: Vec<String>) -> Vec<String> {
    if classes.iter().all(|c| parse_number(c).is_some()) {
        classes.sort_by(|a, b| {
            parse_number(a)
                .unwrap_or_default()
                .total_cmp(&parse_number(b).unwrap_or_default())
        });
    }
    classes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_counts_turn_back_into_dates() {
        for text in [
            "1970-01-01",
            "2007-11-11",
            "2000-02-29",
            "1969-12-31",
            "2024-12-31",
        ] {
            assert_eq!(date_text(parse_date(text).unwrap()), text);
        }
    }
}
