//! Inference for gateways: a published model's weights are fetched once from a storage node that
//! holds them (the storage node asks the ledger whether the model is published; no ticket), kept
//! with the model built from them, and each batch of encoded rows runs its forward pass on the
//! device thread — the whole pass on the GPU of a Vulkan node.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use aic_kernels::inference::ServedGraph;
use aic_kernels::Matrix;
use aic_protocol::messages::{InferRequest, PeerResponse, ServedModel};
use aic_protocol::tensor::TensorRef;
use aic_protocol::{ErrorCode, RpcError};

use crate::ComputeNode;

/// Most models a node keeps built at once (their weights live in the tensor cache).
const MAX_SERVED_MODELS: usize = 16;

/// Built models by the weights they were built from.
#[derive(Default)]
pub(crate) struct ServedModels {
    models: HashMap<TensorRef, Arc<ServedGraph>>,
}

impl ComputeNode {
    /// Runs one batch for a gateway.
    pub(crate) async fn infer(&self, request: InferRequest) -> Result<PeerResponse, RpcError> {
        let invalid = |m: String| RpcError::new(ErrorCode::InvalidArgument, m);
        let (rows, width) = (request.rows as usize, request.width as usize);
        if rows == 0 || rows.checked_mul(width) != Some(request.features.len()) {
            return Err(invalid(format!(
                "{} values for {rows} rows of {width}",
                request.features.len()
            )));
        }
        if self.exit_on_inference_rows > 0
            && request.rows >= self.exit_on_inference_rows
            && self.claims_the_exit()
        {
            // Fault injection (drills): die holding the batch, as a killed node would.
            tracing::error!(rows, "fault injection: exiting with an inference batch in flight");
            std::process::exit(137);
        }
        let started = Instant::now();
        let served = self.served(&request.model).await?;
        let x = Matrix::new(rows, width, request.features).map_err(|e| invalid(e.to_string()))?;
        let result = self.executor.infer(served, x).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics.inference_batches.with_label_values(&[outcome]).inc();
        self.metrics.inference_rows.inc_by(rows as u64);
        self.metrics
            .inference_duration
            .observe(started.elapsed().as_secs_f64());
        let mut outputs = result.map_err(invalid)?;
        if self.corrupt_inference_percent > 0 && rand::random_range(0..100u8) < self.corrupt_inference_percent
        {
            // Fault injection (tests and drills): plausible-looking wrong outputs.
            tracing::warn!(model = %request.model.asset, "fault injection: corrupting these outputs");
            outputs.data.iter_mut().for_each(|v| *v = -*v * 3.0 + 0.01);
        }
        Ok(PeerResponse::Inferred {
            rows: outputs.rows as u32,
            width: outputs.cols as u32,
            outputs: outputs.data,
        })
    }

    /// Whether this node is the drill's one to die: no claim file, or this node made it first.
    fn claims_the_exit(&self) -> bool {
        self.exit_claim_file.as_os_str().is_empty()
            || std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&self.exit_claim_file)
                .is_ok()
    }

    /// The model built from its weights: kept from an earlier batch, or fetched and built now.
    async fn served(&self, model: &ServedModel) -> Result<Arc<ServedGraph>, RpcError> {
        if let Some(served) = self
            .served
            .lock()
            .expect("served models")
            .models
            .get(&model.tensor)
        {
            return Ok(served.clone());
        }
        let invalid = |m: String| RpcError::new(ErrorCode::InvalidArgument, m);
        let parameters = aic_kernels::Trainable::of(&model.model)
            .map_err(|e| invalid(format!("the model: {e}")))?
            .parameters() as u64;
        if model.tensor.elements != parameters {
            return Err(invalid(format!(
                "the model has {parameters} parameters, its weights {}",
                model.tensor.elements
            )));
        }
        let weights = self.published_weights(model, parameters).await?;
        let served = Arc::new(
            ServedGraph::new(&model.model, &weights).map_err(|e| invalid(format!("the model: {e}")))?,
        );
        let mut cache = self.served.lock().expect("served models");
        if cache.models.len() >= MAX_SERVED_MODELS {
            // Rebuilding is cheap next to fetching; the weights stay in the tensor cache.
            cache.models.clear();
        }
        cache.models.insert(model.tensor, served.clone());
        Ok(served)
    }

    /// The weights: held already, or fetched from the first holder that serves them whole.
    async fn published_weights(
        &self,
        model: &ServedModel,
        parameters: u64,
    ) -> Result<Arc<Vec<f32>>, RpcError> {
        let (asset, tensor) = (model.asset, model.tensor);
        let what = format!("the weights of model {asset}");
        let (values, _) = self
            .held_or_fetched(tensor, &model.holders, &what, |client| async move {
                aic_protocol::tensor::fetch_published_tensor(&client, asset, tensor, parameters).await
            })
            .await?;
        Ok(values)
    }
}
