//! Tensor objects a storage node keeps for training jobs (a round's weights and the outer
//! optimizer's state): received chunk by chunk from a scheduler, sealed per chunk at rest under
//! the node's tensor key, kept once the last chunk hashes to the tensor's name, and served back
//! chunk by chunk, so neither side holds more than one chunk of a transfer.
//!
//! Layout in the node's object store: `<prefix>/tensors/<hash hex>/<chunk index>` and, written
//! last, `<prefix>/tensors/<hash hex>/complete` (the value count): a tensor without it is not
//! served. Each sealed chunk is bound to (hash, index), so chunks cannot be swapped or moved.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aic_protocol::messages::PeerResponse;
use aic_protocol::tensor::{check_chunk, TensorError, TensorRef};
use aic_protocol::NodeId;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::sync::Mutex;

use crate::sealing::DatasetKey;

/// Tensors one peer may be sending at once.
pub const MAX_PENDING_PER_PEER: usize = 4;
/// A transfer with no chunk for this long is forgotten (its chunks are overwritten by a retry).
const PENDING_IDLE: Duration = Duration::from_secs(120);

/// Why a tensor could not be stored or served.
#[derive(Debug, thiserror::Error)]
pub enum TensorStoreError {
    #[error(transparent)]
    Refused(#[from] TensorError),
    #[error("tensor {0} is not held here")]
    NotFound(TensorRef),
    #[error("{0} tensors are being sent by this peer already")]
    Busy(usize),
    #[error("chunk {index} of tensor {tensor} is corrupt at rest")]
    Corrupt { tensor: TensorRef, index: u64 },
    #[error("the tensor key at {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("store: {0}")]
    Backend(#[from] object_store::Error),
}

impl TensorStoreError {
    /// A snake_case reason, for metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            TensorStoreError::Refused(e) => e.reason(),
            TensorStoreError::NotFound(_) => "unknown_tensor",
            TensorStoreError::Busy(_) => "tensor_uploads_busy",
            TensorStoreError::Corrupt { .. } => "tensor_corrupt",
            TensorStoreError::Key { .. } | TensorStoreError::Backend(_) => "tensor_store",
        }
    }
}

struct Pending {
    peer: NodeId,
    next: u64,
    hasher: blake3::Hasher,
    touched: Instant,
}

/// Seconds since the Unix epoch, as object stores date their objects.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub struct TensorStore {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    key: DatasetKey,
    pending: Mutex<HashMap<TensorRef, Pending>>,
}

impl TensorStore {
    pub fn new(inner: Arc<dyn ObjectStore>, prefix: Path, key: DatasetKey) -> Self {
        TensorStore {
            inner,
            prefix,
            key,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// The node's tensor key from `path`, created (mode 0600) on first start.
    pub fn load_or_create_key(path: &FsPath) -> Result<DatasetKey, TensorStoreError> {
        let error = |reason: String| TensorStoreError::Key {
            path: path.display().to_string(),
            reason,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let bytes: [u8; 32] = bytes.try_into().map_err(|_| error("not a 32-byte key".into()))?;
                Ok(DatasetKey::from_bytes(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = DatasetKey::generate();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| error(e.to_string()))?;
                }
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| error(e.to_string()))?;
                file.write_all(key.as_bytes()).map_err(|e| error(e.to_string()))?;
                Ok(key)
            }
            Err(e) => Err(error(e.to_string())),
        }
    }

    fn chunk_path(&self, tensor: &TensorRef, index: u64) -> Path {
        Path::from(format!("{}/tensors/{}/{index}", self.prefix, tensor.hex()))
    }

    fn complete_path(&self, tensor: &TensorRef) -> Path {
        Path::from(format!("{}/tensors/{}/complete", self.prefix, tensor.hex()))
    }

    fn bound_name(tensor: &TensorRef, index: u64) -> Vec<u8> {
        let mut name = b"aic-tensor-chunk-v1".to_vec();
        name.extend_from_slice(&tensor.hash);
        name.extend_from_slice(&tensor.elements.to_le_bytes());
        name.extend_from_slice(&index.to_le_bytes());
        name
    }

    /// Whether the whole tensor is held.
    pub async fn holds(&self, tensor: &TensorRef) -> Result<bool, TensorStoreError> {
        match self.inner.get(&self.complete_path(tensor)).await {
            Ok(result) => {
                let bytes = result.bytes().await?;
                Ok(bytes.as_ref() == tensor.elements.to_string().as_bytes())
            }
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes chunk `index` of `tensor` from `peer`; answers whether the tensor is now whole. A
    /// tensor already held answers at once, so the sender stops.
    pub async fn put_chunk(
        &self,
        peer: NodeId,
        tensor: TensorRef,
        index: u64,
        bytes: &[u8],
    ) -> Result<bool, TensorStoreError> {
        tensor.check_declared()?;
        if index == 0 && self.holds(&tensor).await? {
            return Ok(true);
        }
        let mut pending = self.pending.lock().await;
        pending.retain(|_, p| p.touched.elapsed() < PENDING_IDLE);
        if index == 0 {
            let mine = pending.values().filter(|p| p.peer == peer).count();
            if mine >= MAX_PENDING_PER_PEER && !pending.contains_key(&tensor) {
                return Err(TensorStoreError::Busy(mine));
            }
            pending.insert(
                tensor,
                Pending {
                    peer,
                    next: 0,
                    hasher: blake3::Hasher::new(),
                    touched: Instant::now(),
                },
            );
        }
        let Some(transfer) = pending.get_mut(&tensor).filter(|p| p.peer == peer) else {
            return Err(TensorError::OutOfOrder {
                expected: 0,
                got: index,
            }
            .into());
        };
        if let Err(refusal) = check_chunk(&tensor, transfer.next, index, bytes) {
            pending.remove(&tensor);
            return Err(refusal.into());
        }
        // Sealing a chunk is CPU work: off the runtime's threads, so heartbeats keep going.
        let (key, name, plain) = (self.key.clone(), Self::bound_name(&tensor, index), bytes.to_vec());
        let sealed = tokio::task::spawn_blocking(move || key.seal_bound(&name, &plain))
            .await
            .map_err(|e| TensorStoreError::Key {
                path: "tensor key".into(),
                reason: e.to_string(),
            })?
            .map_err(|e| TensorStoreError::Key {
                path: "tensor key".into(),
                reason: e.to_string(),
            })?;
        self.inner
            .put(&self.chunk_path(&tensor, index), PutPayload::from(sealed))
            .await?;
        transfer.hasher.update(bytes);
        transfer.next += 1;
        transfer.touched = Instant::now();
        if transfer.next < tensor.chunks() {
            return Ok(false);
        }
        let hashed = *transfer.hasher.finalize().as_bytes();
        pending.remove(&tensor);
        drop(pending);
        if hashed != tensor.hash {
            self.delete(&tensor).await?;
            return Err(TensorError::WrongHash.into());
        }
        self.inner
            .put(
                &self.complete_path(&tensor),
                PutPayload::from(Bytes::from(tensor.elements.to_string())),
            )
            .await?;
        Ok(true)
    }

    /// Every whole tensor kept (its completion marker written), with how many seconds ago it
    /// was completed; at most `limit`, and whether there were more.
    pub async fn list_complete(
        &self,
        limit: usize,
    ) -> Result<(Vec<(TensorRef, u64)>, bool), TensorStoreError> {
        let root = Path::from(format!("{}/tensors", self.prefix));
        let mut listing = self.inner.list(Some(&root));
        let now = unix_now();
        let mut tensors = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            let mut parts: Vec<_> = meta.location.parts().collect();
            if parts.last().is_none_or(|p| p.as_ref() != "complete") {
                continue;
            }
            parts.pop();
            let Some(hex_hash) = parts.last().map(|p| p.as_ref().to_string()) else {
                continue;
            };
            let mut hash = [0u8; 32];
            if hex::decode_to_slice(&hex_hash, &mut hash).is_err() {
                continue;
            }
            if tensors.len() == limit {
                return Ok((tensors, true));
            }
            let elements: u64 = match self.inner.get(&meta.location).await {
                Ok(result) => match std::str::from_utf8(&result.bytes().await?)
                    .ok()
                    .and_then(|t| t.parse().ok())
                {
                    Some(elements) => elements,
                    None => continue,
                },
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let age = now.saturating_sub(meta.last_modified.timestamp().max(0) as u64);
            tensors.push((TensorRef { hash, elements }, age));
        }
        Ok((tensors, false))
    }

    /// Forgets a tensor (its marker first, so it is never served half-deleted).
    pub async fn delete(&self, tensor: &TensorRef) -> Result<(), TensorStoreError> {
        for path in std::iter::once(self.complete_path(tensor))
            .chain((0..tensor.chunks()).map(|i| self.chunk_path(tensor, i)))
        {
            match self.inner.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The answer frames serving `tensor`: each chunk opened as it is sent, then the end marker.
    /// A chunk that does not open ends the stream with an error (the reader notices the cut).
    pub async fn serve(
        self: &Arc<Self>,
        tensor: TensorRef,
    ) -> Result<BoxStream<'static, Result<PeerResponse, TensorStoreError>>, TensorStoreError> {
        if !self.holds(&tensor).await? {
            return Err(TensorStoreError::NotFound(tensor));
        }
        let store = self.clone();
        let chunks = tensor.chunks();
        let frames = stream::iter(0..chunks)
            .then(move |index| {
                let store = store.clone();
                async move { store.open_chunk(&tensor, index).await }
            })
            .chain(stream::once(
                async move { Ok(PeerResponse::TensorEnd { chunks }) },
            ));
        Ok(frames.boxed())
    }

    async fn open_chunk(&self, tensor: &TensorRef, index: u64) -> Result<PeerResponse, TensorStoreError> {
        let sealed = self
            .inner
            .get(&self.chunk_path(tensor, index))
            .await?
            .bytes()
            .await?;
        let (key, name) = (self.key.clone(), Self::bound_name(tensor, index));
        let corrupt = || TensorStoreError::Corrupt {
            tensor: *tensor,
            index,
        };
        let bytes = tokio::task::spawn_blocking(move || key.open_bound(&name, &sealed))
            .await
            .map_err(|_| corrupt())?
            .map_err(|_| corrupt())?;
        if bytes.len() != tensor.chunk_elements(index) * 4 {
            return Err(TensorStoreError::Corrupt {
                tensor: *tensor,
                index,
            });
        }
        Ok(PeerResponse::TensorChunk { index, bytes })
    }
}

#[cfg(test)]
mod tests {
    use aic_protocol::tensor::{to_bytes, TENSOR_CHUNK_ELEMENTS};
    use object_store::memory::InMemory;

    use super::*;

    fn store() -> Arc<TensorStore> {
        Arc::new(TensorStore::new(
            Arc::new(InMemory::new()),
            Path::from("aic"),
            DatasetKey::generate(),
        ))
    }

    async fn served(store: &Arc<TensorStore>, tensor: TensorRef) -> Vec<f32> {
        let mut frames = store.serve(tensor).await.unwrap();
        let mut values = Vec::new();
        while let Some(frame) = frames.next().await {
            match frame.unwrap() {
                PeerResponse::TensorChunk { bytes, .. } => values.extend(
                    bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap())),
                ),
                PeerResponse::TensorEnd { chunks } => assert_eq!(chunks, tensor.chunks()),
                other => panic!("{other:?}"),
            }
        }
        values
    }

    #[tokio::test]
    async fn a_tensor_is_kept_once_whole_and_served_back_unchanged() {
        let store = store();
        let peer = NodeId::from_public_key(b"scheduler");
        let values: Vec<f32> = (0..TENSOR_CHUNK_ELEMENTS * 2 + 5)
            .map(|i| i as f32 * 0.5)
            .collect();
        let tensor = TensorRef::of(&values);
        let chunks: Vec<&[f32]> = values.chunks(TENSOR_CHUNK_ELEMENTS).collect();
        assert!(!store
            .put_chunk(peer, tensor, 0, &to_bytes(chunks[0]))
            .await
            .unwrap());
        assert!(
            matches!(store.serve(tensor).await, Err(TensorStoreError::NotFound(_))),
            "half a tensor is never served"
        );
        assert!(!store
            .put_chunk(peer, tensor, 1, &to_bytes(chunks[1]))
            .await
            .unwrap());
        assert!(store
            .put_chunk(peer, tensor, 2, &to_bytes(chunks[2]))
            .await
            .unwrap());
        assert_eq!(served(&store, tensor).await, values);
        // Sending it again stops at the first chunk.
        assert!(store
            .put_chunk(peer, tensor, 0, &to_bytes(chunks[0]))
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn only_whole_tensors_are_listed_and_a_deleted_one_is_gone_from_the_list() {
        let store = store();
        let peer = NodeId::from_public_key(b"scheduler");
        let small = vec![1.0f32; 10];
        let whole = TensorRef::of(&small);
        assert!(store.put_chunk(peer, whole, 0, &to_bytes(&small)).await.unwrap());
        let large: Vec<f32> = (0..TENSOR_CHUNK_ELEMENTS + 1).map(|i| i as f32).collect();
        let half = TensorRef::of(&large);
        assert!(!store
            .put_chunk(peer, half, 0, &to_bytes(&large[..TENSOR_CHUNK_ELEMENTS]))
            .await
            .unwrap());
        let (listed, more) = store.list_complete(10).await.unwrap();
        assert!(!more);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, whole);
        assert!(listed[0].1 < 60, "just completed: {listed:?}");
        let (none, more) = store.list_complete(0).await.unwrap();
        assert!(none.is_empty() && more, "a full answer says there were more");
        store.delete(&whole).await.unwrap();
        assert!(store.list_complete(10).await.unwrap().0.is_empty());
    }

    #[tokio::test]
    async fn a_tensor_that_is_not_what_its_name_says_is_refused_and_forgotten() {
        let store = store();
        let peer = NodeId::from_public_key(b"scheduler");
        let values = vec![1.0f32; 10];
        let claimed = TensorRef::of(&[2.0f32; 10]);
        let refused = store.put_chunk(peer, claimed, 0, &to_bytes(&values)).await;
        assert!(matches!(
            refused,
            Err(TensorStoreError::Refused(TensorError::WrongHash))
        ));
        assert!(!store.holds(&claimed).await.unwrap());
        // Out of order, and from a peer that did not start the transfer.
        let big = vec![1.0f32; TENSOR_CHUNK_ELEMENTS + 1];
        let tensor = TensorRef::of(&big);
        assert!(matches!(
            store
                .put_chunk(peer, tensor, 1, &to_bytes(&big[TENSOR_CHUNK_ELEMENTS..]))
                .await,
            Err(TensorStoreError::Refused(TensorError::OutOfOrder { .. }))
        ));
        store
            .put_chunk(peer, tensor, 0, &to_bytes(&big[..TENSOR_CHUNK_ELEMENTS]))
            .await
            .unwrap();
        let other = NodeId::from_public_key(b"other");
        assert!(store
            .put_chunk(other, tensor, 1, &to_bytes(&big[TENSOR_CHUNK_ELEMENTS..]))
            .await
            .is_err());
        let nan = to_bytes(&[f32::NAN]);
        assert!(matches!(
            store.put_chunk(peer, tensor, 1, &nan).await,
            Err(TensorStoreError::Refused(TensorError::NotFinite { .. }))
        ));
    }

    #[tokio::test]
    async fn a_chunk_damaged_at_rest_is_never_served() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let store = Arc::new(TensorStore::new(
            inner.clone(),
            Path::from("aic"),
            DatasetKey::generate(),
        ));
        let values = vec![3.0f32; 100];
        let tensor = TensorRef::of(&values);
        store
            .put_chunk(NodeId::from_public_key(b"s"), tensor, 0, &to_bytes(&values))
            .await
            .unwrap();
        let path = store.chunk_path(&tensor, 0);
        let mut sealed = inner.get(&path).await.unwrap().bytes().await.unwrap().to_vec();
        sealed[20] ^= 1;
        inner.put(&path, PutPayload::from(sealed)).await.unwrap();
        let mut frames = store.serve(tensor).await.unwrap();
        assert!(matches!(
            frames.next().await,
            Some(Err(TensorStoreError::Corrupt { index: 0, .. }))
        ));
    }
}
