//! Who holds a dataset now: the storage nodes with a whole copy, as the holders themselves
//! record it.
//!
//! A manifest's `replicas` say where the dataset was placed at import; they are part of the
//! hashed manifest, so of the dataset's id and of its asset's content hash, and never change.
//! When a holder is lost for good and its copy is made again on another node, the holders change
//! while the id stays: the new set is kept beside the manifest as a [`HolderSet`], numbered by an
//! epoch that only grows and authenticated by a tag keyed with the dataset's key, so only a node
//! that holds the dataset (and so its key) can make one that another holder accepts.

use serde::{Deserialize, Serialize};

use crate::manifest::{ReplicaLocation, MAX_REPLICAS};
use crate::NodeId;

/// The longest dataset id or address a holder set may carry.
pub const MAX_LOCATION_LEN: usize = 256;
/// Separates holder-set tags from every other use of a dataset key.
const TAG_CONTEXT: &str = "aic holder set v1: the storage nodes holding a dataset";

/// Why a holder set was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HolderSetError {
    #[error("a holder set names 1 to {MAX_REPLICAS} holders, not {0}")]
    Count(usize),
    #[error("holder {0:?} is not a node id")]
    BadNode(String),
    #[error("holder {0} is named twice")]
    Duplicate(String),
    #[error("a dataset id or address longer than {MAX_LOCATION_LEN} bytes")]
    TooLong,
    #[error("the epoch cannot grow past {0}")]
    EpochExhausted(u64),
    #[error("the holder set's tag does not verify under the dataset's key")]
    Forged,
}

/// The storage nodes that hold `dataset` whole as of `epoch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderSet {
    pub dataset: String,
    /// 0 for the import's placement; one more at every change.
    pub epoch: u64,
    pub holders: Vec<ReplicaLocation>,
    /// BLAKE3 keyed with a key derived from the dataset key, over the fields above.
    #[serde(with = "crate::hex_serde")]
    pub tag: [u8; 32],
}

impl HolderSet {
    /// A set made and tagged by a holder of `key`.
    pub fn signed(dataset: &str, epoch: u64, holders: Vec<ReplicaLocation>, key: &[u8; 32]) -> Self {
        let mut set = HolderSet {
            dataset: dataset.to_string(),
            epoch,
            holders,
            tag: [0; 32],
        };
        set.tag = set.expected_tag(key);
        set
    }

    /// The holders at import: the manifest's replicas, epoch 0.
    pub fn at_import(dataset: &str, replicas: &[ReplicaLocation], key: &[u8; 32]) -> Self {
        Self::signed(dataset, 0, replicas.to_vec(), key)
    }

    /// The set after `target` took a copy from `source`: `lost` nodes gone, `source` at its
    /// current address, `target` added, the epoch one higher, tagged again.
    pub fn after_copy(
        &self,
        source: ReplicaLocation,
        target: ReplicaLocation,
        lost: &[NodeId],
        key: &[u8; 32],
    ) -> Result<HolderSet, HolderSetError> {
        let epoch = self
            .epoch
            .checked_add(1)
            .ok_or(HolderSetError::EpochExhausted(self.epoch))?;
        let lost: Vec<String> = lost.iter().map(NodeId::to_string).collect();
        let mut holders: Vec<ReplicaLocation> = self
            .holders
            .iter()
            .filter(|h| !lost.contains(&h.node) && h.node != source.node && h.node != target.node)
            .cloned()
            .collect();
        holders.push(source);
        holders.push(target);
        let next = HolderSet::signed(&self.dataset, epoch, holders, key);
        next.check_shape()?;
        Ok(next)
    }

    /// Bounds and well-formedness, then the tag under `key`.
    pub fn verify(&self, key: &[u8; 32]) -> Result<(), HolderSetError> {
        self.check_shape()?;
        // blake3::Hash compares in constant time.
        if blake3::Hash::from(self.tag) != blake3::Hash::from(self.expected_tag(key)) {
            return Err(HolderSetError::Forged);
        }
        Ok(())
    }

    /// Whether `node` (hex id) is a holder.
    pub fn names(&self, node: &str) -> bool {
        self.location_of(node).is_some()
    }

    pub fn location_of(&self, node: &str) -> Option<&ReplicaLocation> {
        self.holders.iter().find(|h| h.node == node)
    }

    fn check_shape(&self) -> Result<(), HolderSetError> {
        if self.holders.is_empty() || self.holders.len() > MAX_REPLICAS {
            return Err(HolderSetError::Count(self.holders.len()));
        }
        if self.dataset.len() > MAX_LOCATION_LEN {
            return Err(HolderSetError::TooLong);
        }
        for (i, holder) in self.holders.iter().enumerate() {
            if holder.quic_addr.len() > MAX_LOCATION_LEN || holder.node.len() > MAX_LOCATION_LEN {
                return Err(HolderSetError::TooLong);
            }
            if holder.node.parse::<NodeId>().is_err() {
                return Err(HolderSetError::BadNode(holder.node.clone()));
            }
            if self.holders[..i].iter().any(|h| h.node == holder.node) {
                return Err(HolderSetError::Duplicate(holder.node.clone()));
            }
        }
        Ok(())
    }

    fn expected_tag(&self, key: &[u8; 32]) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(&blake3::derive_key(TAG_CONTEXT, key));
        // Every variable-length field with its length first, so no two sets encode alike.
        let mut field = |bytes: &[u8]| {
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        field(self.dataset.as_bytes());
        field(&self.epoch.to_le_bytes());
        field(&(self.holders.len() as u64).to_le_bytes());
        for holder in &self.holders {
            field(holder.node.as_bytes());
            field(holder.quic_addr.as_bytes());
        }
        *hasher.finalize().as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(name: &str, port: u16) -> ReplicaLocation {
        ReplicaLocation {
            node: NodeId::from_public_key(name.as_bytes()).to_string(),
            quic_addr: format!("127.0.0.1:{port}"),
        }
    }

    #[test]
    fn a_holder_set_verifies_only_under_its_key_and_unchanged() {
        let key = [7u8; 32];
        let set = HolderSet::at_import("d", &[at("a", 1), at("b", 2)], &key);
        assert_eq!(set.verify(&key), Ok(()));
        assert_eq!(set.verify(&[8u8; 32]), Err(HolderSetError::Forged));
        let mut moved = set.clone();
        moved.holders[1].quic_addr = "10.0.0.1:2".into();
        assert_eq!(moved.verify(&key), Err(HolderSetError::Forged));
        let mut older = set.clone();
        older.epoch = 5;
        assert_eq!(older.verify(&key), Err(HolderSetError::Forged));
        let mut twice = HolderSet::signed("d", 1, vec![at("a", 1), at("a", 3)], &key);
        assert!(matches!(twice.verify(&key), Err(HolderSetError::Duplicate(_))));
        twice.holders.clear();
        assert_eq!(twice.verify(&key), Err(HolderSetError::Count(0)));
    }

    #[test]
    fn a_copy_drops_the_lost_keeps_the_rest_and_adds_the_target() {
        let key = [7u8; 32];
        let (a, b, c, d) = (at("a", 1), at("b", 2), at("c", 3), at("d", 4));
        let set = HolderSet::at_import("d", &[a.clone(), b.clone(), c.clone()], &key);
        let lost: NodeId = b.node.parse().unwrap();
        let mut a_moved = a.clone();
        a_moved.quic_addr = "127.0.0.1:9".into();
        let next = set.after_copy(a_moved.clone(), d.clone(), &[lost], &key).unwrap();
        assert_eq!(next.epoch, 1);
        assert_eq!(next.holders, vec![c, a_moved, d]);
        assert_eq!(next.verify(&key), Ok(()));
        let mut last = next.clone();
        last.epoch = u64::MAX;
        assert_eq!(
            last.after_copy(a, b, &[], &key),
            Err(HolderSetError::EpochExhausted(u64::MAX))
        );
    }
}
