//! The import report: what the first pass found in every column, what the import will do with
//! it, and what looks wrong — shown before anything is sent, after the import, and by
//! `aic dataset stat` for a stored dataset (it travels in the manifest).

use serde::{Deserialize, Serialize};

/// One source column, as the import saw and treated it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnReport {
    pub name: String,
    /// `feature`, `label`, `target` or `excluded`.
    pub role: String,
    /// `numeric`, `date`, `categorical`, `text`, `id` or `empty`, as inferred or as told.
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether `--column-type` chose the type.
    #[serde(default)]
    pub type_given: bool,
    pub present: u64,
    pub missing: u64,
    /// Distinct values, when there were few enough to count (up to the tracking limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    /// The most frequent values and their counts (at most five).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<(String, u64)>,
    /// How it enters the model (empty when it does not).
    #[serde(default)]
    pub encoding: String,
    /// What its missing values become.
    #[serde(default)]
    pub policy: String,
    /// Model input columns it takes.
    #[serde(default)]
    pub width: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The report as a table, for people.
pub fn render(columns: &[ColumnReport], rows: u64, dropped: u64, input_width: u64) -> String {
    let mut out = format!(
        "{rows} rows{}; {} columns; model input {input_width} wide\n",
        if dropped > 0 {
            format!(" ({dropped} dropped for missing values)")
        } else {
            String::new()
        },
        columns.len()
    );
    out.push_str(&format!(
        "{:<24} {:<9} {:<11} {:>7} {:>8}  {:<34} {}\n",
        "COLUMN", "ROLE", "TYPE", "MISSING", "DISTINCT", "VALUES", "ENCODING (MISSING →)"
    ));
    for c in columns {
        let values = if !c.top.is_empty() && c.kind != "numeric" && c.kind != "date" {
            c.top
                .iter()
                .take(3)
                .map(|(v, n)| format!("{} ×{n}", shorten(v, 12)))
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            match (&c.min, &c.max, c.mean) {
                (Some(min), Some(max), Some(mean)) => format!("{min} … {max}, mean {mean:.4}"),
                (Some(min), Some(max), None) => format!("{min} … {max}"),
                _ => String::new(),
            }
        };
        let encoding = if c.encoding.is_empty() {
            "—".to_string()
        } else if c.policy.is_empty() {
            c.encoding.clone()
        } else {
            format!("{} ({})", c.encoding, c.policy)
        };
        out.push_str(&format!(
            "{:<24} {:<9} {:<11} {:>7} {:>8}  {:<34} {}\n",
            shorten(&c.name, 24),
            c.role,
            format!("{}{}", c.kind, if c.type_given { "*" } else { "" }),
            c.missing,
            c.distinct.map_or("many".to_string(), |d| d.to_string()),
            shorten(&values, 34),
            encoding
        ));
        for warning in &c.warnings {
            out.push_str(&format!("    ! {}: {warning}\n", c.name));
        }
    }
    out
}

fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let kept: String = text.chars().take(width.saturating_sub(1)).collect();
    format!("{kept}…")
}
