//! Tensors a compute node holds, bounded in bytes: the weights it fetched (a round's tasks and
//! a spot check on the same node read them once) and the updates its tasks produced, which the
//! runner collects after the round. Least recently used goes first; an update evicted before it
//! was collected costs a re-run of its task, never a wrong result.

use std::collections::HashMap;
use std::sync::Arc;

use aic_protocol::tensor::TensorRef;

struct Entry {
    values: Arc<Vec<f32>>,
    last_used: u64,
}

pub struct TensorCache {
    capacity_bytes: u64,
    held_bytes: u64,
    clock: u64,
    entries: HashMap<TensorRef, Entry>,
}

impl TensorCache {
    pub fn new(capacity_bytes: u64) -> Self {
        TensorCache {
            capacity_bytes,
            held_bytes: 0,
            clock: 0,
            entries: HashMap::new(),
        }
    }

    pub fn get(&mut self, tensor: &TensorRef) -> Option<Arc<Vec<f32>>> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(tensor).map(|entry| {
            entry.last_used = clock;
            entry.values.clone()
        })
    }

    /// Keeps a tensor (named by `tensor`, which the caller computed or checked), evicting the
    /// least recently used to make room; one larger than the whole cache is not kept.
    pub fn insert(&mut self, tensor: TensorRef, values: Arc<Vec<f32>>) {
        let bytes = tensor.bytes();
        if bytes > self.capacity_bytes || self.entries.contains_key(&tensor) {
            return;
        }
        while self.held_bytes + bytes > self.capacity_bytes {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some(old) = self.entries.remove(&oldest) {
                self.held_bytes -= old.values.len() as u64 * 4;
            }
        }
        self.clock += 1;
        self.held_bytes += bytes;
        self.entries.insert(
            tensor,
            Entry {
                values,
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

    #[test]
    fn the_least_recently_used_tensor_goes_first() {
        let a = Arc::new(vec![1.0f32; 10]);
        let b = Arc::new(vec![2.0f32; 10]);
        let c = Arc::new(vec![3.0f32; 10]);
        let (ra, rb, rc) = (TensorRef::of(&a), TensorRef::of(&b), TensorRef::of(&c));
        let mut cache = TensorCache::new(80);
        cache.insert(ra, a);
        cache.insert(rb, b);
        assert!(cache.get(&ra).is_some());
        cache.insert(rc, c);
        assert!(cache.get(&rb).is_none(), "b was least recently used");
        assert!(cache.get(&ra).is_some() && cache.get(&rc).is_some());
        assert_eq!(cache.held_bytes(), 80);
        cache.insert(TensorRef::of(&[0.0; 30]), Arc::new(vec![0.0; 30]));
        assert_eq!(cache.held_bytes(), 80, "larger than the cache: not kept");
    }
}
