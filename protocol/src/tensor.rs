//! Tensors as content-addressed objects: a flat `f32` tensor (weights, a weight update, an
//! optimizer's state) is named by the BLAKE3 hash of its little-endian bytes and its length, and
//! travels as a bounded stream of 1 MiB chunks, in order, checked as it arrives.
//!
//! ```text
//!  runner ──PutTensor(chunk i)──► storage node  (sealed at rest, per chunk)
//!  compute ◄──GetTensor + ticket── storage node (the round's weights)
//!  runner ◄──GetTensor──────────── compute node (the task's update, held until collected)
//! ```
//!
//! The ledger records only a tensor's name ([`TensorRef`]): a checkpoint is a few hundred bytes
//! whatever the model. A reader never holds more than one chunk beyond the tensor it builds,
//! refuses a chunk out of order, of the wrong size, past the end or not finite, and checks the
//! hash before it hands over the last chunk, so a tensor that is not what its name says is never
//! taken whole.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::messages::{PeerRequest, PeerResponse};
use crate::rpc::{ReplyStream, RpcClient};
use crate::ticket::SignedTicket;

/// Bytes of one chunk on the wire (the last chunk of a tensor may be shorter).
pub const TENSOR_CHUNK_BYTES: usize = 1024 * 1024;
/// `f32` values in one chunk.
pub const TENSOR_CHUNK_ELEMENTS: usize = TENSOR_CHUNK_BYTES / 4;
/// A sanity bound on a tensor's declared length (4 TiB of `f32`), far above any device's
/// memory: what really bounds a model is the memory the nodes report.
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 40;

/// A tensor's name: the BLAKE3 hash of its little-endian `f32` bytes, and how many values it
/// holds.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TensorRef {
    pub hash: [u8; 32],
    pub elements: u64,
}

impl TensorRef {
    /// The name of `values`.
    pub fn of(values: &[f32]) -> Self {
        let mut hasher = blake3::Hasher::new();
        for chunk in values.chunks(TENSOR_CHUNK_ELEMENTS) {
            hasher.update(&to_bytes(chunk));
        }
        TensorRef {
            hash: *hasher.finalize().as_bytes(),
            elements: values.len() as u64,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.elements.saturating_mul(4)
    }

    /// How many chunks the tensor travels in.
    pub fn chunks(&self) -> u64 {
        self.elements.div_ceil(TENSOR_CHUNK_ELEMENTS as u64)
    }

    /// Values in chunk `index` (0 past the end).
    pub fn chunk_elements(&self, index: u64) -> usize {
        let start = index.saturating_mul(TENSOR_CHUNK_ELEMENTS as u64);
        self.elements
            .saturating_sub(start)
            .min(TENSOR_CHUNK_ELEMENTS as u64) as usize
    }

    pub fn hex(&self) -> String {
        hex::encode(self.hash)
    }

    /// What a scheduler's ticket names to let one node read this tensor from a storage node.
    pub fn ticket_name(&self) -> String {
        format!("tensor:{}", self.hex())
    }

    /// Whether the declared length is one a peer may be asked to hold.
    pub fn check_declared(&self) -> Result<(), TensorError> {
        if self.elements == 0 || self.elements > MAX_TENSOR_ELEMENTS {
            return Err(TensorError::TooLarge {
                elements: self.elements,
                limit: MAX_TENSOR_ELEMENTS,
            });
        }
        Ok(())
    }
}

impl fmt::Debug for TensorRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TensorRef({}…, {} values)", &self.hex()[..12], self.elements)
    }
}

impl fmt::Display for TensorRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}… ({} values)", &self.hex()[..12], self.elements)
    }
}

/// Little-endian bytes of `values`.
pub fn to_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Why a tensor transfer was refused. Every variant is typed so a runner branches on it (re-run
/// the task elsewhere) without reading text.
#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    #[error(transparent)]
    Transport(#[from] crate::Error),
    #[error("a tensor of {elements} values is refused (at most {limit})")]
    TooLarge { elements: u64, limit: u64 },
    #[error("a tensor of {elements} values where {expected} belong (the wrong shape)")]
    WrongLength { elements: u64, expected: u64 },
    #[error("chunk {got} arrived where chunk {expected} belongs")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("chunk {index} holds {got} bytes; it must hold {expected}")]
    WrongChunkSize { index: u64, got: usize, expected: usize },
    #[error("the stream ended after {got} of {expected} chunks")]
    Truncated { got: u64, expected: u64 },
    #[error("the stream goes on past the tensor's {expected} chunks")]
    TooLong { expected: u64 },
    #[error("the bytes do not hash to the tensor's name")]
    WrongHash,
    #[error("value {index} is not finite")]
    NotFinite { index: u64 },
    #[error("unexpected answer: {0}")]
    Unexpected(&'static str),
}

/// Every reason a tensor is refused for, as metric labels (the [`TensorError`] reasons and a
/// tensor asked for that is not held).
pub const REFUSAL_REASONS: [&str; 11] = [
    "transport",
    "too_large",
    "wrong_length",
    "out_of_order",
    "wrong_chunk_size",
    "truncated",
    "too_long",
    "wrong_hash",
    "not_finite",
    "unexpected",
    "unknown_tensor",
];

impl TensorError {
    /// A snake_case reason, for metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            TensorError::Transport(_) => "transport",
            TensorError::TooLarge { .. } => "too_large",
            TensorError::WrongLength { .. } => "wrong_length",
            TensorError::OutOfOrder { .. } => "out_of_order",
            TensorError::WrongChunkSize { .. } => "wrong_chunk_size",
            TensorError::Truncated { .. } => "truncated",
            TensorError::TooLong { .. } => "too_long",
            TensorError::WrongHash => "wrong_hash",
            TensorError::NotFinite { .. } => "not_finite",
            TensorError::Unexpected(_) => "unexpected",
        }
    }
}

/// Checks one arriving chunk against the tensor it belongs to and decodes it: the index that
/// comes next, the exact size, finite values. Shared by every reader and by storage nodes
/// receiving a `PutTensor`.
pub fn check_chunk(
    tensor: &TensorRef,
    expected: u64,
    index: u64,
    bytes: &[u8],
) -> Result<Vec<f32>, TensorError> {
    if index >= tensor.chunks() {
        return Err(TensorError::TooLong {
            expected: tensor.chunks(),
        });
    }
    if index != expected {
        return Err(TensorError::OutOfOrder { expected, got: index });
    }
    let want = tensor.chunk_elements(index) * 4;
    if bytes.len() != want {
        return Err(TensorError::WrongChunkSize {
            index,
            got: bytes.len(),
            expected: want,
        });
    }
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some(at) = values.iter().position(|v| !v.is_finite()) {
        return Err(TensorError::NotFinite {
            index: index * TENSOR_CHUNK_ELEMENTS as u64 + at as u64,
        });
    }
    Ok(values)
}

/// Reads a tensor chunk by chunk from a node, checking each as it comes.
pub struct TensorReader {
    stream: ReplyStream<PeerResponse>,
    tensor: TensorRef,
    next: u64,
    hasher: blake3::Hasher,
}

impl TensorReader {
    /// Asks `client` for `tensor` (with a ticket when the server is a storage node and the
    /// reader a compute node). `limit` is the most values the caller will take: a longer tensor
    /// is refused before anything is read.
    pub async fn open(
        client: &RpcClient,
        tensor: TensorRef,
        ticket: Option<SignedTicket>,
        limit: u64,
    ) -> Result<Self, TensorError> {
        Self::open_with(client, tensor, PeerRequest::GetTensor { tensor, ticket }, limit).await
    }

    /// Asks `client` for `tensor` with `request` (a `GetTensor` or a `GetPublishedTensor`).
    async fn open_with(
        client: &RpcClient,
        tensor: TensorRef,
        request: PeerRequest,
        limit: u64,
    ) -> Result<Self, TensorError> {
        tensor.check_declared()?;
        if tensor.elements > limit {
            return Err(TensorError::TooLarge {
                elements: tensor.elements,
                limit,
            });
        }
        let stream = client.call_stream(&request).await?;
        Ok(TensorReader {
            stream,
            tensor,
            next: 0,
            hasher: blake3::Hasher::new(),
        })
    }

    pub fn tensor(&self) -> &TensorRef {
        &self.tensor
    }

    /// Every chunk, checked, as one vector.
    async fn read_all(mut self) -> Result<Vec<f32>, TensorError> {
        let mut values = Vec::with_capacity(self.tensor.elements as usize);
        while let Some(chunk) = self.next_chunk().await? {
            values.extend_from_slice(&chunk);
        }
        Ok(values)
    }

    /// The next chunk's values; `None` once the whole tensor arrived and hashed to its name.
    /// The last chunk is handed over only after the hash is checked.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<f32>>, TensorError> {
        let chunks = self.tensor.chunks();
        if self.next > chunks {
            return Ok(None);
        }
        if self.next == chunks {
            // Every chunk arrived: the stream must end with the marker.
            self.next += 1;
            return match self.stream.next().await {
                Some(Ok(PeerResponse::TensorEnd { chunks: sent })) if sent == chunks => Ok(None),
                Some(Ok(PeerResponse::TensorEnd { .. })) => Err(TensorError::Truncated {
                    got: chunks,
                    expected: chunks,
                }),
                Some(Ok(PeerResponse::TensorChunk { .. })) => Err(TensorError::TooLong { expected: chunks }),
                Some(Ok(_)) => Err(TensorError::Unexpected("an answer that is not a tensor chunk")),
                Some(Err(e)) => Err(e.into()),
                None => Err(TensorError::Truncated {
                    got: chunks,
                    expected: chunks,
                }),
            };
        }
        let (index, bytes) = match self.stream.next().await {
            Some(Ok(PeerResponse::TensorChunk { index, bytes })) => (index, bytes),
            Some(Ok(PeerResponse::TensorEnd { .. })) | None => {
                return Err(TensorError::Truncated {
                    got: self.next,
                    expected: chunks,
                })
            }
            Some(Ok(_)) => return Err(TensorError::Unexpected("an answer that is not a tensor chunk")),
            Some(Err(e)) => return Err(e.into()),
        };
        let values = check_chunk(&self.tensor, self.next, index, &bytes)?;
        self.hasher.update(&bytes);
        self.next += 1;
        if self.next == chunks && *self.hasher.finalize().as_bytes() != self.tensor.hash {
            return Err(TensorError::WrongHash);
        }
        Ok(Some(values))
    }
}

/// Fetches a whole tensor (at most `limit` values), checked against its name.
pub async fn fetch_tensor(
    client: &RpcClient,
    tensor: TensorRef,
    ticket: Option<SignedTicket>,
    limit: u64,
) -> Result<Vec<f32>, TensorError> {
    TensorReader::open(client, tensor, ticket, limit)
        .await?
        .read_all()
        .await
}

/// Fetches the weights of a published TrainedModel (at most `limit` values), checked against
/// their name.
pub async fn fetch_published_tensor(
    client: &RpcClient,
    asset: crate::AssetId,
    tensor: TensorRef,
    limit: u64,
) -> Result<Vec<f32>, TensorError> {
    let request = PeerRequest::GetPublishedTensor { asset, tensor };
    TensorReader::open_with(client, tensor, request, limit)
        .await?
        .read_all()
        .await
}

/// Stores `values` on a storage node, chunk by chunk in order; answers its name.
pub async fn put_tensor(client: &RpcClient, values: &[f32]) -> Result<TensorRef, TensorError> {
    put_named_tensor(client, TensorRef::of(values), values).await
}

/// [`put_tensor`] for values whose name the caller computed already (hashing a large tensor
/// belongs on a blocking thread).
pub async fn put_named_tensor(
    client: &RpcClient,
    tensor: TensorRef,
    values: &[f32],
) -> Result<TensorRef, TensorError> {
    tensor.check_declared()?;
    for (index, chunk) in values.chunks(TENSOR_CHUNK_ELEMENTS).enumerate() {
        let answer = client
            .call(&PeerRequest::PutTensor {
                tensor,
                index: index as u64,
                bytes: to_bytes(chunk),
            })
            .await?;
        match answer {
            // Whole: this was the last chunk, or the node held the tensor already.
            PeerResponse::TensorStored { complete: true } => return Ok(tensor),
            PeerResponse::TensorStored { complete: false } => {}
            _ => return Err(TensorError::Unexpected("an answer that is not a stored chunk")),
        }
    }
    Err(TensorError::Unexpected(
        "the node did not keep the tensor after its last chunk",
    ))
}

/// The answer frames for serving one tensor from memory: its chunks in order, then the end
/// marker.
pub fn chunk_frames(values: std::sync::Arc<Vec<f32>>) -> impl Iterator<Item = PeerResponse> {
    let chunks = values.len().div_ceil(TENSOR_CHUNK_ELEMENTS) as u64;
    (0..chunks)
        .map(move |index| {
            let start = index as usize * TENSOR_CHUNK_ELEMENTS;
            let end = (start + TENSOR_CHUNK_ELEMENTS).min(values.len());
            PeerResponse::TensorChunk {
                index,
                bytes: to_bytes(&values[start..end]),
            }
        })
        .chain(std::iter::once(PeerResponse::TensorEnd { chunks }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_counts_chunks_and_their_sizes() {
        let values: Vec<f32> = (0..TENSOR_CHUNK_ELEMENTS + 3).map(|i| i as f32).collect();
        let tensor = TensorRef::of(&values);
        assert_eq!(tensor.chunks(), 2);
        assert_eq!(tensor.chunk_elements(0), TENSOR_CHUNK_ELEMENTS);
        assert_eq!(tensor.chunk_elements(1), 3);
        assert_eq!(tensor.chunk_elements(2), 0);
        assert_ne!(TensorRef::of(&values[1..]).hash, tensor.hash);
        // The hash is of the bytes, chunked or not.
        assert_eq!(tensor.hash, *blake3::hash(&to_bytes(&values)).as_bytes());
    }

    #[test]
    fn a_chunk_is_refused_out_of_order_oversized_or_not_finite() {
        let values = vec![1.0f32; TENSOR_CHUNK_ELEMENTS + 1];
        let tensor = TensorRef::of(&values);
        let first = to_bytes(&values[..TENSOR_CHUNK_ELEMENTS]);
        assert!(matches!(
            check_chunk(&tensor, 0, 1, &[0; 4]),
            Err(TensorError::OutOfOrder { expected: 0, got: 1 })
        ));
        assert!(matches!(
            check_chunk(&tensor, 0, 0, &first[..8]),
            Err(TensorError::WrongChunkSize { .. })
        ));
        assert!(matches!(
            check_chunk(&tensor, 2, 2, &[0; 4]),
            Err(TensorError::TooLong { .. })
        ));
        let nan = to_bytes(&[f32::NAN]);
        assert!(matches!(
            check_chunk(&tensor, 1, 1, &nan),
            Err(TensorError::NotFinite { index }) if index == TENSOR_CHUNK_ELEMENTS as u64
        ));
        assert_eq!(
            check_chunk(&tensor, 0, 0, &first).unwrap().len(),
            TENSOR_CHUNK_ELEMENTS
        );
        assert!(TensorRef {
            hash: [0; 32],
            elements: 0
        }
        .check_declared()
        .is_err());
    }

    #[test]
    fn served_frames_end_with_the_chunk_count() {
        let values = std::sync::Arc::new(vec![2.0f32; TENSOR_CHUNK_ELEMENTS * 2]);
        let frames: Vec<PeerResponse> = chunk_frames(values).collect();
        assert_eq!(frames.len(), 3);
        assert!(matches!(frames[2], PeerResponse::TensorEnd { chunks: 2 }));
    }
}
