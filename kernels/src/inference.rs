//! Predictions from raw rows: a trained model's weights, its layer graph and the dataset's
//! manifest turn the columns a data owner imported into class probabilities or a value in the
//! target's units — the same encoding the import applied (`aic_protocol::encoding`), the same
//! forward pass training ran. What `aic model predict` answers and the ONNX export must equal.

use aic_protocol::encoding::{is_missing, CellError, Feature};
use aic_protocol::manifest::Manifest;
use aic_protocol::messages::TaskModel;
use aic_protocol::model_graph::{self, Loss, ModelGraph};

use crate::error::{KernelError, Result};
use crate::graph::{sigmoid, GraphModel};
use crate::model::Weights;
use crate::tensor::Matrix;

/// Most rows one call predicts: a caller with more splits them.
pub const MAX_PREDICT_ROWS: usize = 1 << 20;

/// One row's answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Prediction {
    /// A classifier's: the most probable class and every class's probability, in class order.
    Class {
        index: usize,
        label: String,
        probabilities: Vec<f32>,
    },
    /// A regression's, in the target's units (the dataset stores it standardised).
    Value(f64),
}

/// A trained model ready to answer raw rows on this machine: the preprocessing and the weights.
pub struct Predictor {
    preprocessor: Preprocessor,
    served: ServedGraph,
}

/// What travels with a model between raw rows and answers, without its weights: the dataset's
/// encoding of each column on the way in, class names or the target's units on the way out. An
/// inference gateway encodes here and decodes what a compute node's [`ServedGraph`] answers.
#[derive(Clone, Debug)]
pub struct Preprocessor {
    loss: Loss,
    features: Vec<Feature>,
    null_markers: Vec<String>,
    classes: Vec<String>,
    /// The target's (mean, std) when the dataset regresses a standardised number.
    target: Option<(f64, f64)>,
    input_width: usize,
    output_width: usize,
}

/// A model's layer graph with its trained weights: raw numbers in, outputs (logits, or a
/// regression's standardised values) out, on any backend.
#[derive(Clone, Debug)]
pub struct ServedGraph {
    graph: GraphModel,
    weights: Weights,
}

impl ServedGraph {
    /// `flat` is the trained parameters in the order updates travel in.
    pub fn new(model: &TaskModel, flat: &[f32]) -> Result<Self> {
        let graph = GraphModel::new(&graph_of(model)?)?;
        let weights = Weights::from_flat(&graph.shapes(), flat)?;
        graph.check_weights(&weights)?;
        Ok(ServedGraph { graph, weights })
    }

    /// The outputs for encoded rows, the forward pass on `backend` (the whole pass on the device
    /// of a Vulkan backend).
    pub fn outputs(&self, backend: &mut dyn crate::Backend, x: &Matrix) -> Result<Matrix> {
        crate::error::check_finite("features", &x.data)?;
        backend.graph_outputs(&self.graph, &self.weights, x)
    }

    /// The outputs on the host.
    pub fn outputs_on_host(&self, x: &Matrix) -> Result<Matrix> {
        self.graph.predict(&self.weights, x)
    }
}

/// The layer graph a task's model is: a description, or a fixed shape as its graph.
pub fn graph_of(model: &TaskModel) -> Result<ModelGraph> {
    match model {
        TaskModel::Shape(shape) => Ok(ModelGraph::of_shape("model", *shape)),
        TaskModel::Graph(text) => model_graph::parse(text).map_err(|e| KernelError::Shape {
            op: "model description",
            detail: e.to_string(),
        }),
    }
}

/// Why raw rows or a dataset do not fit a trained model.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("the dataset encodes {dataset} input columns; the model reads {model}")]
    Width { dataset: usize, model: u64 },
    #[error("{rows} rows in one call; at most {MAX_PREDICT_ROWS}")]
    TooManyRows { rows: usize },
    #[error("no column {0:?} in the input")]
    MissingColumn(String),
    #[error("row {row} has {cells} cells; the header names {header}")]
    RowWidth { row: usize, cells: usize, header: usize },
    #[error("row {row}, column {column:?}: {error}")]
    Cell {
        row: usize,
        column: String,
        error: CellError,
    },
}

impl Predictor {
    /// `flat` is the trained parameters in the order updates travel in.
    pub fn new(model: &TaskModel, flat: &[f32], dataset: &Manifest) -> Result<Self> {
        Ok(Predictor {
            preprocessor: Preprocessor::new(model, dataset)?,
            served: ServedGraph::new(model, flat)?,
        })
    }

    pub fn preprocessor(&self) -> &Preprocessor {
        &self.preprocessor
    }

    /// The columns a caller sends: the imported features, by name, in the manifest's order.
    pub fn columns(&self) -> Vec<&str> {
        self.preprocessor.columns()
    }

    /// Encodes raw rows as the import did.
    pub fn encode(&self, header: &[String], rows: &[Vec<Option<String>>]) -> Result<Matrix> {
        self.preprocessor.encode(header, rows)
    }

    /// The model's answer for each encoded row.
    pub fn predict_encoded(&self, x: &Matrix) -> Result<Vec<Prediction>> {
        self.preprocessor.answers(&self.served.outputs_on_host(x)?)
    }

    /// Encodes and predicts raw rows.
    pub fn predict(&self, header: &[String], rows: &[Vec<Option<String>>]) -> Result<Vec<Prediction>> {
        self.predict_encoded(&self.encode(header, rows)?)
    }
}

impl Preprocessor {
    /// The model's encoding of `dataset`'s columns: refused when the dataset's encoded width is
    /// not what the model's input takes.
    pub fn new(model: &TaskModel, dataset: &Manifest) -> Result<Self> {
        let description = graph_of(model)?;
        let input_width: usize = dataset.features.iter().map(Feature::width).sum();
        if input_width as u64 != description.input.shape().elements() {
            return Err(InputError::Width {
                dataset: input_width,
                model: description.input.shape().elements(),
            }
            .into());
        }
        let output_width = GraphModel::new(&description)?.output_width();
        Ok(Preprocessor {
            loss: description.loss,
            features: dataset.features.clone(),
            null_markers: dataset.null_markers.clone(),
            classes: dataset.classes.clone(),
            target: dataset.target.as_ref().map(|t| (t.mean, t.std)),
            input_width,
            output_width,
        })
    }

    /// Values per encoded row: what the model's input takes.
    pub fn input_width(&self) -> usize {
        self.input_width
    }

    /// Values per output row (logits, or 1).
    pub fn output_width(&self) -> usize {
        self.output_width
    }

    pub fn loss(&self) -> Loss {
        self.loss
    }

    /// Class names, in output order (empty for a regression).
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Each column's name and kind, as the manifest describes it.
    pub fn features(&self) -> &[Feature] {
        &self.features
    }

    /// The columns a caller sends: the imported features, by name, in the manifest's order.
    pub fn columns(&self) -> Vec<&str> {
        self.features.iter().map(|f| f.name.as_str()).collect()
    }

    /// Encodes raw rows (`header` names each cell's column; `None` is a missing cell) as the
    /// import did: every feature's column must be present, others are ignored.
    pub fn encode(&self, header: &[String], rows: &[Vec<Option<String>>]) -> Result<Matrix> {
        if rows.len() > MAX_PREDICT_ROWS {
            return Err(InputError::TooManyRows { rows: rows.len() }.into());
        }
        let positions = self
            .features
            .iter()
            .map(|f| {
                header
                    .iter()
                    .position(|h| h == &f.name)
                    .ok_or_else(|| InputError::MissingColumn(f.name.clone()).into())
            })
            .collect::<Result<Vec<usize>>>()?;
        let mut x = Matrix::zeros(rows.len(), self.input_width);
        for (r, row) in rows.iter().enumerate() {
            if row.len() != header.len() {
                return Err(InputError::RowWidth {
                    row: r,
                    cells: row.len(),
                    header: header.len(),
                }
                .into());
            }
            let out = &mut x.data[r * self.input_width..(r + 1) * self.input_width];
            let mut offset = 0;
            for (feature, &at) in self.features.iter().zip(&positions) {
                let raw = row[at].as_deref();
                let missing = is_missing(raw, &self.null_markers);
                let width = feature.width();
                feature
                    .encode_into(raw.unwrap_or(""), missing, &mut out[offset..offset + width])
                    .map_err(|error| InputError::Cell {
                        row: r,
                        column: feature.name.clone(),
                        error,
                    })?;
                offset += width;
            }
        }
        Ok(x)
    }

    /// The answer for each row of a model's outputs.
    pub fn answers(&self, outputs: &Matrix) -> Result<Vec<Prediction>> {
        if outputs.cols != self.output_width {
            return Err(KernelError::Shape {
                op: "answers",
                detail: format!(
                    "outputs of {} values a row; the model gives {}",
                    outputs.cols, self.output_width
                ),
            });
        }
        let mut answers = Vec::with_capacity(outputs.rows);
        for row in outputs.data.chunks(outputs.cols.max(1)) {
            answers.push(match self.loss {
                Loss::SoftmaxCrossEntropy => self.class(softmax(row)),
                Loss::BinaryCrossEntropy => {
                    let p = sigmoid(row[0]);
                    self.class(vec![1.0 - p, p])
                }
                Loss::MeanSquaredError => Prediction::Value(match self.target {
                    Some((mean, std)) => mean + row[0] as f64 * std,
                    None => row[0] as f64,
                }),
            });
        }
        Ok(answers)
    }

    fn class(&self, probabilities: Vec<f32>) -> Prediction {
        // The first of equal maxima, as ONNX ArgMax picks.
        let index = probabilities
            .iter()
            .enumerate()
            .fold(0, |best, (i, p)| if *p > probabilities[best] { i } else { best });
        Prediction::Class {
            index,
            label: self
                .classes
                .get(index)
                .cloned()
                .unwrap_or_else(|| index.to_string()),
            probabilities,
        }
    }
}

/// Probabilities from logits, shifted by the maximum so no exponent overflows.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|z| (z - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

#[cfg(test)]
#[path = "inference_tests.rs"]
mod tests;
