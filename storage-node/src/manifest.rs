//! A dataset's manifest: what the Dataset asset on the ledger records about it — schema,
//! preprocessing, shards and their hashes — so anyone can check what they are paying for.

use serde::{Deserialize, Serialize};

/// How one feature column was preprocessed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeatureEncoding {
    /// Standardised: (x − mean) / std (std 1 where the column is constant).
    Numeric { mean: f64, std: f64 },
    /// Text categories encoded as their index in `categories` (sorted).
    Categorical { categories: Vec<String> },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    pub name: String,
    #[serde(flatten)]
    pub encoding: FeatureEncoding,
}

/// One stored shard: its id (BLAKE3 of the plaintext Parquet) and size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub id: String,
    pub rows: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub rows: u64,
    pub features: Vec<Feature>,
    pub label: String,
    /// Class index → the label's text in the source file.
    pub classes: Vec<String>,
    pub seed: u64,
    pub test_fraction: f64,
    pub shard_rows: usize,
    pub train: Vec<ShardEntry>,
    pub test: Vec<ShardEntry>,
}

impl Manifest {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a manifest always encodes")
    }
}
