//! Decoded shards kept between rounds, bounded in bytes: later rounds of a job read the same
//! shards, and fetching them again would cost the network what the cache costs in memory.

use std::collections::HashMap;
use std::sync::Arc;

use aic_protocol::ShardId;
use arrow_array::RecordBatch;

struct Entry {
    batches: Arc<Vec<RecordBatch>>,
    bytes: u64,
    last_used: u64,
}

/// A least-recently-used cache of decoded shards.
pub struct ShardCache {
    capacity_bytes: u64,
    held_bytes: u64,
    clock: u64,
    entries: HashMap<(String, ShardId), Entry>,
}

impl ShardCache {
    pub fn new(capacity_bytes: u64) -> Self {
        ShardCache {
            capacity_bytes,
            held_bytes: 0,
            clock: 0,
            entries: HashMap::new(),
        }
    }

    pub fn get(&mut self, dataset: &str, shard: &ShardId) -> Option<Arc<Vec<RecordBatch>>> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(&(dataset.to_string(), *shard)).map(|entry| {
            entry.last_used = clock;
            entry.batches.clone()
        })
    }

    /// Keeps a shard, evicting the least recently used ones to make room; a shard larger than
    /// the whole cache is not kept.
    pub fn insert(&mut self, dataset: &str, shard: ShardId, batches: Arc<Vec<RecordBatch>>) {
        let bytes: u64 = batches.iter().map(|b| b.get_array_memory_size() as u64).sum();
        if bytes > self.capacity_bytes {
            return;
        }
        self.clock += 1;
        let key = (dataset.to_string(), shard);
        if let Some(old) = self.entries.remove(&key) {
            self.held_bytes -= old.bytes;
        }
        while self.held_bytes + bytes > self.capacity_bytes {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
                .expect("held bytes imply an entry");
            let evicted = self.entries.remove(&oldest).expect("just found");
            self.held_bytes -= evicted.bytes;
        }
        self.held_bytes += bytes;
        self.entries.insert(
            key,
            Entry {
                batches,
                bytes,
                last_used: self.clock,
            },
        );
    }

    pub fn held_bytes(&self) -> u64 {
        self.held_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Float32Array, RecordBatch};
    use std::sync::Arc;

    fn shard(rows: usize) -> Arc<Vec<RecordBatch>> {
        let column = Arc::new(Float32Array::from(vec![1.0f32; rows])) as arrow_array::ArrayRef;
        Arc::new(vec![RecordBatch::try_from_iter([("x", column)]).unwrap()])
    }

    #[test]
    fn the_least_recently_used_shard_is_evicted_first_and_bytes_stay_bounded() {
        let one = shard(1000);
        let size: u64 = one.iter().map(|b| b.get_array_memory_size() as u64).sum();
        let mut cache = ShardCache::new(size * 2);
        let (a, b, c) = (
            ShardId::of_content(b"a"),
            ShardId::of_content(b"b"),
            ShardId::of_content(b"c"),
        );
        cache.insert("d", a, one.clone());
        cache.insert("d", b, one.clone());
        assert!(cache.get("d", &a).is_some(), "a is now the most recent");
        cache.insert("d", c, one.clone());
        assert!(cache.get("d", &b).is_none(), "b was the least recently used");
        assert!(cache.get("d", &a).is_some() && cache.get("d", &c).is_some());
        assert!(cache.held_bytes() <= size * 2);
        assert!(cache.get("other", &a).is_none(), "keyed by dataset too");
        cache.insert("d", ShardId::of_content(b"huge"), shard(100_000));
        assert!(
            cache.held_bytes() <= size * 2,
            "a shard larger than the cache is not kept"
        );
    }
}
