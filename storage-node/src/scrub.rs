//! The scrubber: re-checks every shard at rest (present, authentic under its dataset's key,
//! content matching its name) and repairs a corrupt or lost replica from a healthy copy on
//! another store, checking the copy before it is written.

use std::collections::BTreeSet;

use aic_protocol::ShardId;

use crate::catalog::Catalog;
use crate::shard_store::{ShardStore, StoreError};

/// What one scrub found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    pub healthy: Vec<ShardId>,
    /// Present but failing authentication or the content hash.
    pub corrupt: Vec<ShardId>,
    /// Expected by a manifest but not in the store.
    pub missing: Vec<ShardId>,
    /// In the store but in no manifest (left alone: it may belong to an import under way).
    pub unknown: Vec<ShardId>,
}

impl ScrubReport {
    pub fn damaged(&self) -> impl Iterator<Item = &ShardId> {
        self.corrupt.iter().chain(&self.missing)
    }
}

pub async fn scrub(store: &ShardStore, catalog: &Catalog) -> Result<ScrubReport, StoreError> {
    let expected = catalog.expected_shards();
    let held: BTreeSet<ShardId> = store.list().await?.into_iter().map(|s| s.shard).collect();
    let mut report = ScrubReport::default();
    for (shard, dataset) in &expected {
        if !held.contains(shard) {
            report.missing.push(*shard);
            continue;
        }
        let (_, key) = catalog
            .get(dataset)
            .expect("expected shards come from the catalog");
        let sealed = store.get(shard).await?;
        match key.open(shard, &sealed) {
            Ok(_) => report.healthy.push(*shard),
            Err(_) => report.corrupt.push(*shard),
        }
    }
    report.unknown = held.into_iter().filter(|s| !expected.contains_key(s)).collect();
    Ok(report)
}

/// Why a shard could not be repaired.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("shard {0} is in no dataset of the catalog")]
    Unknown(ShardId),
    #[error("the replica of shard {0} is damaged too")]
    NoHealthyCopy(ShardId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Re-creates each damaged shard of `report` in `store` from `replica`.
pub async fn repair(
    store: &ShardStore,
    replica: &ShardStore,
    catalog: &Catalog,
    report: &ScrubReport,
) -> Result<usize, RepairError> {
    let expected = catalog.expected_shards();
    let mut repaired = 0;
    for shard in report.damaged() {
        let dataset = expected.get(shard).ok_or(RepairError::Unknown(*shard))?;
        let (_, key) = catalog
            .get(dataset)
            .expect("expected shards come from the catalog");
        let copy = match replica.get(shard).await {
            Ok(copy) => copy,
            Err(StoreError::NotFound(_)) => return Err(RepairError::NoHealthyCopy(*shard)),
            Err(e) => return Err(e.into()),
        };
        if key.open(shard, &copy).is_err() {
            return Err(RepairError::NoHealthyCopy(*shard));
        }
        store.put(shard, copy).await?;
        repaired += 1;
    }
    Ok(repaired)
}
