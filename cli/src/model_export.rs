//! Exporting a trained model's weights to the TrainedModel asset's owner: the asset names its
//! weights tensor (content hash) and the storage nodes holding it; the owner proves its key to
//! one of them, reads the tensor chunk by chunk (each checked in order, the whole against its
//! name before the file is kept), and gets `weights.parquet` — one row per parameter, (tensor,
//! index, value), one row group per chunk — and `model.json`, the asset's manifest.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aic_ledger::state::Asset;
use aic_ledger::Keypair;
use aic_protocol::messages::{ClientRequest, ClientResponse, ModelShape, OwnerProof, TaskModel};
use aic_protocol::rpc::RpcClient;
use aic_protocol::tensor::{check_chunk, TensorRef};
use aic_protocol::{AssetId, NodeId};
use anyhow::{bail, Context};
use arrow_array::{ArrayRef, Float32Array, RecordBatch, UInt32Array};
use parquet::arrow::ArrowWriter;
use serde_json::{json, Value};

/// What the export wrote.
pub struct Exported {
    pub path: std::path::PathBuf,
    pub parameters: u64,
}

/// The weights tensor a TrainedModel asset names, and the storage nodes (QUIC addresses) its
/// manifest says hold it.
pub fn weights_of(asset: &Asset) -> anyhow::Result<(TensorRef, TaskModel, Vec<String>, Value)> {
    let manifest: Value =
        serde_json::from_str(&asset.metadata.manifest).context("the asset's manifest is not JSON")?;
    let elements = manifest["weights"]["elements"]
        .as_u64()
        .context("the asset's manifest names no weights tensor")?;
    // A fixed shape as itself, a layer graph under "graph".
    let model = match serde_json::from_value::<ModelShape>(manifest["model"].clone()) {
        Ok(shape) => TaskModel::Shape(shape),
        Err(_) if manifest["model"]["graph"].is_object() => {
            TaskModel::Graph(manifest["model"]["graph"].to_string())
        }
        Err(_) => bail!("the asset's manifest names no model"),
    };
    let holders = manifest["weights"]["holders"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(|h| h["quic_addr"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let tensor = TensorRef {
        hash: asset.metadata.content_hash,
        elements,
    };
    Ok((tensor, model, holders, manifest))
}

/// Reads the weights from `storage` and writes them under `out`.
pub async fn export_weights(
    storage: &RpcClient,
    key: &Keypair,
    me: NodeId,
    asset_id: &AssetId,
    asset: &Asset,
    out: &Path,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Exported> {
    let (tensor, model, _, manifest) = weights_of(asset)?;
    let shapes = aic_kernels::Trainable::of(&model)
        .map_err(|e| anyhow::anyhow!("the asset's model: {e}"))?
        .shapes();
    let parameters: usize = shapes.iter().map(|(r, c)| r * c).sum();
    if parameters as u64 != tensor.elements {
        bail!(
            "the asset names {} weights but its model has {parameters} parameters",
            tensor.elements
        );
    }
    // Which tensor of the model each flat position belongs to, and its index inside it.
    let mut starts = Vec::new();
    let mut offset = 0u64;
    for (rows, cols) in &shapes {
        starts.push(offset);
        offset += (rows * cols) as u64;
    }
    let locate = |flat: u64| -> (u32, u32) {
        let t = starts.partition_point(|s| *s <= flat) - 1;
        (t as u32, (flat - starts[t]) as u32)
    };

    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join("weights.parquet");
    let partial = out.join("weights.parquet.partial");
    let file = std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let schema = Arc::new(arrow_schema_of());
    let mut writer = ArrowWriter::try_new(file, schema.clone(), None)?;
    let outcome = stream_weights(storage, key, me, asset_id, &tensor, bar, |start, values| {
        let (ids, indices): (Vec<u32>, Vec<u32>) = (start..start + values.len() as u64).map(&locate).unzip();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(UInt32Array::from(ids)) as ArrayRef,
                Arc::new(UInt32Array::from(indices)) as ArrayRef,
                Arc::new(Float32Array::from(values)) as ArrayRef,
            ],
        )?;
        writer.write(&batch)?;
        writer.flush()?;
        Ok(())
    })
    .await;
    if let Err(error) = outcome {
        let _ = std::fs::remove_file(&partial);
        return Err(error);
    }
    writer.close()?;
    std::fs::rename(&partial, &path).with_context(|| format!("renaming to {}", path.display()))?;
    std::fs::write(
        out.join("model.json"),
        serde_json::to_string_pretty(&json!({"asset": asset_id.to_string(), "manifest": manifest}))?,
    )?;
    Ok(Exported {
        path,
        parameters: tensor.elements,
    })
}

/// The trained weights in memory, in the order updates travel (what an ONNX file or a local
/// prediction needs whole).
pub async fn read_weights(
    storage: &RpcClient,
    key: &Keypair,
    me: NodeId,
    asset_id: &AssetId,
    tensor: &TensorRef,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Vec<f32>> {
    let capacity = usize::try_from(tensor.elements).context("the weights do not fit in memory")?;
    let mut weights = Vec::with_capacity(capacity);
    stream_weights(storage, key, me, asset_id, tensor, bar, |start, values| {
        if start != weights.len() as u64 {
            bail!("chunk at {start} after {} values", weights.len());
        }
        weights.extend_from_slice(&values);
        Ok(())
    })
    .await?;
    Ok(weights)
}

/// Why no storage node gave the weights: each one tried and its failure, or that the asset
/// names none.
pub fn no_holder_served(asset_id: &AssetId, failures: &[String]) -> anyhow::Error {
    anyhow::anyhow!(
        "no storage node could serve the weights of {asset_id}: {}",
        if failures.is_empty() {
            "the asset names none".to_string()
        } else {
            failures.join("; ")
        }
    )
}

/// Asks `storage` for the weights tensor as the asset's owner and hands each chunk's values to
/// `sink` (with the flat index of its first value), in order; fails unless every chunk came and
/// the whole hashes to the tensor's name.
async fn stream_weights(
    storage: &RpcClient,
    key: &Keypair,
    me: NodeId,
    asset_id: &AssetId,
    tensor: &TensorRef,
    bar: &indicatif::ProgressBar,
    mut sink: impl FnMut(u64, Vec<f32>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let expires_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64
        + Duration::from_secs(600).as_millis() as u64;
    let signature = key.sign(&OwnerProof::message(
        asset_id,
        &tensor.ticket_name(),
        &me,
        expires_ms,
    ));
    let request = ClientRequest::ExportTensor {
        tensor: *tensor,
        proof: OwnerProof {
            asset: *asset_id,
            owner: key.address().0,
            expires_ms,
            signature: signature.to_vec(),
        },
    };
    let mut stream = storage.call_stream(&request).await?;
    let mut hasher = blake3::Hasher::new();
    let mut next = 0u64;
    loop {
        match stream.next().await {
            Some(Ok(ClientResponse::TensorChunk { index, bytes })) => {
                let values = check_chunk(tensor, next, index, &bytes)?;
                hasher.update(&bytes);
                sink(next * aic_protocol::tensor::TENSOR_CHUNK_ELEMENTS as u64, values)?;
                bar.inc(bytes.len() as u64);
                next += 1;
            }
            Some(Ok(ClientResponse::TensorEnd { chunks })) if chunks == next && next == tensor.chunks() => {
                break
            }
            Some(Ok(ClientResponse::TensorEnd { chunks })) => {
                bail!("the stream ended after {chunks} of {} chunks", tensor.chunks())
            }
            Some(Ok(other)) => bail!("unexpected answer {other:?}"),
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the stream ended after {next} of {} chunks", tensor.chunks()),
        }
    }
    if *hasher.finalize().as_bytes() != tensor.hash {
        bail!("the exported weights do not hash to the asset's content hash");
    }
    Ok(())
}

fn arrow_schema_of() -> arrow_schema::Schema {
    use arrow_schema::{DataType, Field, Schema};
    Schema::new(vec![
        Field::new("tensor", DataType::UInt32, false),
        Field::new("index", DataType::UInt32, false),
        Field::new("value", DataType::Float32, false),
    ])
}
