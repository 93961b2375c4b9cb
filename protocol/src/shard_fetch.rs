//! The compute node's side of `GetShard`: ask with a ticket, read the streamed Arrow IPC
//! batches, and check the end marker so a cut stream is never taken for a whole shard.

use crate::messages::{PeerRequest, PeerResponse};
use crate::rpc::RpcClient;
use crate::ticket::SignedTicket;
use crate::ShardId;
use arrow_array::RecordBatch;
use futures::{StreamExt, TryStreamExt};

/// How many shards a compute node asks for at once. Fetched one at a time, each shard's round
/// trip left both machines idle in turn: the storage node waited while the compute node decoded,
/// and the other way round. With a few in flight the storage node opens, checks and encodes the
/// next shards while this side decodes the last; each is still a whole, checked `GetShard`.
pub const SHARDS_IN_FLIGHT: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Transport(#[from] crate::Error),
    #[error("shard {shard}: {reason}")]
    Invalid { shard: ShardId, reason: String },
}

/// Fetches a whole shard as record batches.
pub async fn fetch_shard(
    client: &RpcClient,
    dataset: &str,
    shard: &ShardId,
    ticket: &SignedTicket,
) -> Result<Vec<RecordBatch>, FetchError> {
    let invalid = |reason: String| FetchError::Invalid {
        shard: *shard,
        reason,
    };
    let mut stream = client
        .call_stream(&PeerRequest::GetShard {
            dataset: dataset.to_string(),
            shard: *shard,
            ticket: ticket.clone(),
        })
        .await?;
    let mut batches = Vec::new();
    while let Some(item) = stream.next().await {
        match item? {
            PeerResponse::ShardBatch { ipc } => batches.extend(decode_ipc(&ipc).map_err(invalid)?),
            PeerResponse::ShardEnd { rows, batches: sent } => {
                let got: u64 = batches.iter().map(|b: &RecordBatch| b.num_rows() as u64).sum();
                if got != rows || batches.len() != sent as usize {
                    return Err(invalid(format!(
                        "the node sent {sent} batches of {rows} rows but {} of {got} arrived",
                        batches.len()
                    )));
                }
                return Ok(batches);
            }
            other => return Err(invalid(format!("unexpected answer {other:?}"))),
        }
    }
    Err(invalid("the stream ended before the shard did".into()))
}

/// Fetches shards of one dataset from one storage node, [`SHARDS_IN_FLIGHT`] at a time, and
/// returns them in the order asked; the first failure ends the fetch.
pub async fn fetch_shards(
    client: &RpcClient,
    dataset: &str,
    shards: &[ShardId],
    ticket: &SignedTicket,
) -> Result<Vec<Vec<RecordBatch>>, FetchError> {
    futures::stream::iter(shards)
        .map(|shard| fetch_shard(client, dataset, shard, ticket))
        .buffered(SHARDS_IN_FLIGHT)
        .try_collect()
        .await
}

/// Decodes one frame's Arrow IPC stream, from a storage node the compute node does not have to
/// trust. Every message's framing is checked first: lengths within the bytes received, the
/// metadata a valid flatbuffer, and each buffer inside its message's body — arrow-ipc 60
/// allocates a body's declared length before reading it, and panics on a buffer past its body
/// (both found by `tests/fuzz_decoders.rs`). A panic the checks miss is still a refusal.
pub fn decode_ipc(ipc: &[u8]) -> Result<Vec<RecordBatch>, String> {
    check_ipc_framing(ipc)?;
    std::panic::catch_unwind(|| {
        let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)
            .map_err(|e| e.to_string())?;
        reader.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())
    })
    .unwrap_or_else(|_| Err("the shard's Arrow IPC is malformed".into()))
}

/// Walks an IPC stream's messages (`[0xFFFFFFFF] length metadata body`, until a zero length or
/// the end) without decoding any array.
fn check_ipc_framing(ipc: &[u8]) -> Result<(), String> {
    let cut = |what: &str| format!("the shard's Arrow IPC is cut short: {what}");
    let mut at = 0usize;
    while at < ipc.len() {
        let rest = &ipc[at..];
        let prefix = if rest.starts_with(&[0xff; 4]) { 4 } else { 0 };
        let length = rest
            .get(prefix..prefix + 4)
            .ok_or_else(|| cut("a message length"))?;
        let length = i32::from_le_bytes(length.try_into().expect("4 bytes"));
        if length == 0 {
            return Ok(());
        }
        let length = usize::try_from(length).map_err(|_| "a negative IPC message length".to_string())?;
        let metadata_start = at + prefix + 4;
        let metadata_end = metadata_start
            .checked_add(length)
            .filter(|end| *end <= ipc.len())
            .ok_or_else(|| cut("a message's metadata"))?;
        let message = arrow_ipc::root_as_message(&ipc[metadata_start..metadata_end])
            .map_err(|e| format!("an IPC message's metadata does not read: {e}"))?;
        let body =
            usize::try_from(message.bodyLength()).map_err(|_| "a negative IPC body length".to_string())?;
        let body_end = metadata_end
            .checked_add(body)
            .filter(|end| *end <= ipc.len())
            .ok_or_else(|| cut("a message's body"))?;
        let batch = message
            .header_as_record_batch()
            .or_else(|| message.header_as_dictionary_batch().and_then(|d| d.data()));
        for buffer in batch.and_then(|b| b.buffers()).into_iter().flatten() {
            let inside = u64::try_from(buffer.offset())
                .ok()
                .zip(u64::try_from(buffer.length()).ok())
                .and_then(|(offset, length)| offset.checked_add(length))
                .is_some_and(|end| end <= body as u64);
            if !inside {
                return Err("an IPC buffer lies outside its message's body".into());
            }
        }
        at = body_end;
    }
    Ok(())
}
