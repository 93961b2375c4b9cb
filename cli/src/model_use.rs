//! `aic model export|predict`: what a TrainedModel's owner does with it — take it out as an ONNX
//! file (or its weights as Parquet), or ask it about raw rows on this machine. Both read the
//! weights from a storage node that holds them (the owner's proof), and the preprocessing from
//! the Dataset asset the model was trained on.

use std::path::Path;

use aic_kernels::inference::{Prediction, Predictor, MAX_PREDICT_ROWS};
use aic_ledger::state::Asset;
use aic_ledger::tx::AssetKind;
use aic_ledger::Keypair;
use aic_protocol::manifest::Manifest;
use aic_protocol::messages::TaskModel;
use aic_protocol::rpc::RpcClient;
use aic_protocol::tensor::TensorRef;
use aic_protocol::{AssetId, NodeId};
use anyhow::{bail, Context};
use clap::ValueEnum;
use serde_json::{json, Value};

use crate::job::{fetch_asset, ModelArgs};
use crate::ledger_client::{load_wallet, wallet_path};
use crate::nodes::{self, ClientProfile};
use crate::wallet::print_out;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Onnx,
    Parquet,
}

/// A TrainedModel as its owner reaches it.
struct Owned {
    profile: ClientProfile,
    scheduler: RpcClient,
    key: Keypair,
    me: NodeId,
    asset: Asset,
    tensor: TensorRef,
    model: TaskModel,
    manifest: Value,
    holders: Vec<String>,
}

impl Owned {
    /// The manifest of the Dataset asset the model was trained on: its encodings and classes.
    async fn dataset(&self) -> anyhow::Result<Manifest> {
        let dataset_id: AssetId = self.manifest["dataset_asset"]
            .as_str()
            .context("the asset's manifest names no dataset")?
            .parse()
            .map_err(|e| anyhow::anyhow!("the asset's manifest names a bad dataset: {e}"))?;
        let dataset_asset = fetch_asset(&self.scheduler, &dataset_id, AssetKind::Dataset).await?;
        Manifest::from_json(&dataset_asset.metadata.manifest)
            .map_err(|e| anyhow::anyhow!("dataset {dataset_id}: {e}"))
    }
}

async fn owned(args: &ModelArgs, asset_id: &AssetId, storage: Option<&str>) -> anyhow::Result<Owned> {
    let key = load_wallet(&wallet_path(args.wallet.as_ref()))?;
    let profile = args.client.load()?;
    let me = profile.tls.load()?.me.node_id;
    let scheduler = nodes::connect(&profile).await?;
    let asset = fetch_asset(&scheduler, asset_id, AssetKind::TrainedModel).await?;
    if asset.owner != key.address() {
        bail!(
            "asset {asset_id} belongs to {}, not to this wallet ({}); only the owner may take it out",
            asset.owner,
            key.address()
        );
    }
    let (tensor, model, holders, manifest) = crate::model_export::weights_of(&asset)?;
    let holders = match storage {
        Some(addr) => vec![addr.to_string()],
        None => holders,
    };
    Ok(Owned {
        profile,
        scheduler,
        key,
        me,
        asset,
        tensor,
        model,
        manifest,
        holders,
    })
}

/// The weights from the first holder that serves them whole.
async fn weights(owned: &Owned, asset_id: &AssetId) -> anyhow::Result<Vec<f32>> {
    let bar = crate::dataset::progress_bar(owned.tensor.bytes());
    let mut failures = Vec::new();
    for addr in &owned.holders {
        let attempt = async {
            let storage = crate::dataset::dial_storage(&owned.profile, addr).await?;
            crate::model_export::read_weights(&storage, &owned.key, owned.me, asset_id, &owned.tensor, &bar)
                .await
        };
        match attempt.await {
            Ok(weights) => {
                bar.finish_and_clear();
                return Ok(weights);
            }
            Err(e) => failures.push(format!("{addr}: {e:#}")),
        }
    }
    bar.finish_and_clear();
    Err(crate::model_export::no_holder_served(asset_id, &failures))
}

pub async fn export(
    args: &ModelArgs,
    asset_id: &AssetId,
    format: ExportFormat,
    out: &Path,
    storage: Option<&str>,
) -> anyhow::Result<()> {
    let owned = owned(args, asset_id, storage).await?;
    if format == ExportFormat::Parquet {
        return crate::dataset::export_trained_model(
            args.json,
            storage,
            &owned.profile,
            &owned.key,
            owned.me,
            asset_id,
            &owned.asset,
            out,
        )
        .await;
    }
    let dataset = owned.dataset().await?;
    let weights = weights(&owned, asset_id).await?;
    let provenance = crate::onnx::Provenance {
        trained_model: asset_id.to_string(),
        dataset_asset: owned.manifest["dataset_asset"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        job: owned.manifest["job"].as_str().unwrap_or_default().to_string(),
    };
    let proto = crate::onnx::build(&owned.model, &weights, &dataset, &provenance)?;
    let bytes = crate::onnx::encode(&proto);
    // Written whole or not at all: a reader never meets half a file.
    let partial = out.with_extension("onnx.partial");
    std::fs::write(&partial, &bytes).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, out).with_context(|| format!("renaming to {}", out.display()))?;
    let inputs: Vec<Value> = proto
        .graph
        .as_ref()
        .map(|g| g.input.iter().map(|i| json!(i.name)).collect())
        .unwrap_or_default();
    let outputs: Vec<Value> = proto
        .graph
        .as_ref()
        .map(|g| g.output.iter().map(|o| json!(o.name)).collect())
        .unwrap_or_default();
    let value = json!({
        "asset": asset_id.to_string(),
        "format": "onnx",
        "file": out.display().to_string(),
        "bytes": bytes.len(),
        "opset": crate::onnx::OPSET,
        "parameters": weights.len(),
        "inputs": inputs,
        "outputs": outputs,
        "classes": dataset.classes,
    });
    print_out(args.json, value, || {
        format!(
            "wrote {} ({} bytes, opset {}, {} parameters)\n  inputs:  {} (the dataset's raw columns)\n  outputs: {}",
            out.display(),
            bytes.len(),
            crate::onnx::OPSET,
            weights.len(),
            inputs.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "),
            outputs.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "),
        )
    });
    Ok(())
}

pub async fn predict(
    args: &ModelArgs,
    asset_id: &AssetId,
    input: &Path,
    limit: usize,
    storage: Option<&str>,
) -> anyhow::Result<()> {
    if limit > MAX_PREDICT_ROWS {
        bail!("--limit {limit}: at most {MAX_PREDICT_ROWS} rows are predicted at once");
    }
    let (header, rows) = aic_storage_node::import::read_text_rows(input, limit)
        .map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
    let owned = owned(args, asset_id, storage).await?;
    let dataset = owned.dataset().await?;
    let weights = weights(&owned, asset_id).await?;
    let predictor = Predictor::new(&owned.model, &weights, &dataset).map_err(|e| anyhow::anyhow!("{e}"))?;
    let answers = predictor
        .predict(&header, &rows)
        .map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
    let classes = &dataset.classes;
    let values: Vec<Value> = answers
        .iter()
        .map(|answer| match answer {
            Prediction::Class {
                label, probabilities, ..
            } => json!({"label": label, "probabilities": probabilities}),
            Prediction::Value(value) => json!({"prediction": value}),
        })
        .collect();
    print_out(args.json, Value::Array(values), || {
        let mut text = String::new();
        for (row, answer) in answers.iter().enumerate() {
            match answer {
                Prediction::Class {
                    label, probabilities, ..
                } => {
                    let shown: Vec<String> = probabilities
                        .iter()
                        .enumerate()
                        .map(|(i, p)| format!("{} {p:.3}", classes.get(i).map(String::as_str).unwrap_or("?")))
                        .collect();
                    text += &format!("{:>6}  {label:<16} {}\n", row + 1, shown.join("  "));
                }
                Prediction::Value(value) => {
                    text += &format!("{:>6}  {value:.4}\n", row + 1);
                }
            }
        }
        text.trim_end().to_string()
    });
    Ok(())
}
