//! The compute node's side of `GetShard`: ask with a ticket, read the streamed Arrow IPC
//! batches, and check the end marker so a cut stream is never taken for a whole shard.

use crate::messages::{PeerRequest, PeerResponse};
use crate::rpc::RpcClient;
use crate::ticket::SignedTicket;
use crate::ShardId;
use arrow_array::RecordBatch;

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

/// Decodes one frame's Arrow IPC stream.
pub fn decode_ipc(ipc: &[u8]) -> Result<Vec<RecordBatch>, String> {
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)
        .map_err(|e| e.to_string())?;
    reader.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())
}
