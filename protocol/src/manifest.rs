//! A dataset's manifest: what the Dataset asset on the ledger records about it — schema,
//! preprocessing, shards and their hashes — so anyone can check what they are paying for.

use serde::{Deserialize, Serialize};

pub use crate::encoding::{Feature, FeatureEncoding, MissingPolicy};
pub use crate::report::ColumnReport;

/// A numeric label to regress on (`--target`): stored standardised, (y − mean) / std, in the
/// shards' label column; a model's prediction p means mean + p·std in the target's units.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub mean: f64,
    pub std: f64,
}

/// A source column the import left out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Excluded {
    pub name: String,
    pub reason: String,
}

/// One stored shard: its id (BLAKE3 of the plaintext Parquet) and size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub id: String,
    pub rows: u64,
    pub bytes: u64,
}

/// A storage node that holds every shard of the dataset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaLocation {
    /// The node's id (hex), from its certificate.
    pub node: String,
    /// Where it serves, `host:port`.
    pub quic_addr: String,
}

/// What a stored object is. Only datasets are stored as shards: a trained model's weights are a
/// tensor object (`tensor.rs`), named by the TrainedModel asset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    #[default]
    Dataset,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub kind: ObjectKind,
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
    /// Where the dataset was placed at import (the first is the node that took the upload).
    #[serde(default)]
    pub replicas: Vec<ReplicaLocation>,
    /// What a job pays the owner each time it uses the dataset, in AIC (decimal text).
    #[serde(default)]
    pub fee: String,
    /// A numeric regression target instead of classes (`label` names its column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// Values read as missing (trimmed, ignoring case).
    #[serde(default)]
    pub null_markers: Vec<String>,
    /// Source columns left out, with the reason.
    #[serde(default)]
    pub excluded: Vec<Excluded>,
    /// Rows left out because a column's policy drops rows with a missing value.
    #[serde(default)]
    pub rows_dropped: u64,
    /// Columns of model input the features encode into (the label not counted).
    #[serde(default)]
    pub input_width: u64,
    /// What the import found in each column (the import report).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub report: Vec<ColumnReport>,
    /// The input columns read as images, channels × height × width (row-major pixels), when the
    /// import was told so (`--image-shape 1x8x8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_shape: Option<[u64; 3]>,
}

/// Most shards one manifest may name.
pub const MAX_SHARDS: usize = 1 << 20;
/// Most replicas one manifest may name.
pub const MAX_REPLICAS: usize = 16;

impl Manifest {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a manifest always encodes")
    }

    /// Parses and checks a manifest that came over the network.
    pub fn from_json(text: &str) -> Result<Manifest, String> {
        let manifest: Manifest = serde_json::from_str(text).map_err(|e| format!("manifest: {e}"))?;
        manifest.check()?;
        Ok(manifest)
    }

    /// Internal consistency: shard ids are ids, rows add up, the counts are bounded.
    pub fn check(&self) -> Result<(), String> {
        let shards = self.train.len() + self.test.len();
        if shards == 0 || shards > MAX_SHARDS {
            return Err(format!("a manifest names 1 to {MAX_SHARDS} shards, not {shards}"));
        }
        if self.replicas.len() > MAX_REPLICAS {
            return Err(format!("at most {MAX_REPLICAS} replicas"));
        }
        let mut rows: u64 = 0;
        for entry in self.shards() {
            entry
                .id
                .parse::<crate::ShardId>()
                .map_err(|_| format!("bad shard id {:?}", entry.id))?;
            rows = rows.checked_add(entry.rows).ok_or("shard row counts overflow")?;
        }
        if rows != self.rows {
            return Err(format!(
                "the shards hold {rows} rows but the manifest says {}",
                self.rows
            ));
        }
        if self.features.is_empty() || (self.classes.is_empty() && self.target.is_none()) {
            return Err("a manifest needs at least one feature, and classes or a target".into());
        }
        let width: u64 = self.features.iter().map(|f| f.width() as u64).sum();
        if self.input_width != 0 && self.input_width != width {
            return Err(format!(
                "the manifest says an input width of {} but its features encode into {width}",
                self.input_width
            ));
        }
        if let Some(shape) = self.image_shape {
            let pixels = shape.iter().try_fold(1u64, |p, d| p.checked_mul(*d));
            if shape.contains(&0) || pixels != Some(width) {
                return Err(format!(
                    "the manifest's image shape {}×{}×{} does not hold its {width} input columns",
                    shape[0], shape[1], shape[2]
                ));
            }
        }
        Ok(())
    }

    /// Columns of model input the features encode into.
    pub fn input_width(&self) -> u64 {
        self.features.iter().map(|f| f.width() as u64).sum()
    }

    /// The names of the model's input columns, in order (the shards' feature columns).
    pub fn input_columns(&self) -> Vec<String> {
        self.features.iter().flat_map(|f| f.column_names()).collect()
    }

    /// Every shard, train first, with whether it is in the held-out test split.
    pub fn shards(&self) -> impl Iterator<Item = &ShardEntry> {
        self.train.iter().chain(&self.test)
    }

    pub fn shard(&self, id: &str) -> Option<(&ShardEntry, bool)> {
        self.train
            .iter()
            .map(|e| (e, false))
            .chain(self.test.iter().map(|e| (e, true)))
            .find(|(e, _)| e.id == id)
    }
}

/// A dataset's id: the first 16 bytes of the BLAKE3 hash of its manifest, in hex.
pub fn dataset_id(manifest: &Manifest) -> String {
    dataset_id_of_hash(&manifest_hash(manifest))
}

/// The BLAKE3 hash of a manifest's JSON: the Dataset (or TrainedModel) asset's content hash.
pub fn manifest_hash(manifest: &Manifest) -> [u8; 32] {
    *blake3::hash(manifest.to_json().as_bytes()).as_bytes()
}

/// The dataset id a Dataset asset's content hash names.
pub fn dataset_id_of_hash(hash: &[u8; 32]) -> String {
    hex::encode(&hash[..16])
}
