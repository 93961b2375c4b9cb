//! The scrubber: re-checks every shard at rest (present, authentic under its dataset's key,
//! content matching its name). Repair from another replica is the node's (see `replication`).

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
