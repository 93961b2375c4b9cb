//! A TrainedModel as an ONNX file (opset 17, with ai.onnx.ml 2 for category lookups): the
//! dataset's preprocessing first — each imported column an input of its own, standardised or
//! one-hot encoded exactly as the import encoded it, missing values filled by the column's policy
//! — then the layer graph with the trained weights as initializers, then the answer a caller
//! wants: class probabilities and the class name, or a value in the target's units. The file
//! reads raw values, so any ONNX runtime answers what `aic model predict` answers.
//!
//! ```text
//!  mass (float N×1) ─ IsNaN/Where(fill) ─ Sub(mean) ─ Div(std) ─┐
//!  island (string N×1) ─ LabelEncoder ─ OneHot ─ Reshape ───────┼─ Concat ─ [Reshape N×C×H×W] ─ layers ─ Softmax ─ probabilities
//!  …                                                            ┘                                              └ ArgMax ─ LabelEncoder ─ label
//! ```

pub mod proto;

use aic_protocol::encoding::{parse_date, Feature, FeatureEncoding, MissingPolicy, MISSING_LEVEL};
use aic_protocol::manifest::Manifest;
use aic_protocol::messages::TaskModel;
use aic_protocol::model_graph::{Loss, ModelGraph, Op, Shape};
use anyhow::{bail, Context};
use prost::Message;
use serde_json::json;

use proto::{
    attribute_type, data_type, dimension, AttributeProto, Dimension, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TensorTypeProto, TypeProto,
    ValueInfoProto,
};

/// The standard operator set the file uses (LayerNormalization needs 17).
pub const OPSET: i64 = 17;
/// The ONNX-ML operator set (LabelEncoder with string keys and int64 values).
pub const ML_OPSET: i64 = 2;
/// The IR version that goes with opset 17.
pub const IR_VERSION: i64 = 8;
const ML_DOMAIN: &str = "ai.onnx.ml";

/// Where a trained model came from, for the file's metadata.
pub struct Provenance {
    pub trained_model: String,
    pub dataset_asset: String,
    pub job: String,
}

/// The ONNX model of a trained `model` with `weights` (flat, in the order updates travel),
/// reading the raw columns of `dataset`.
pub fn build(
    model: &TaskModel,
    weights: &[f32],
    dataset: &Manifest,
    provenance: &Provenance,
) -> anyhow::Result<ModelProto> {
    let graph = aic_kernels::inference::graph_of(model).map_err(|e| anyhow::anyhow!("the model: {e}"))?;
    let planned =
        aic_kernels::graph::GraphModel::new(&graph).map_err(|e| anyhow::anyhow!("the model: {e}"))?;
    let shapes = planned.shapes();
    let needed: usize = shapes.iter().map(|(r, c)| r * c).sum();
    if weights.len() != needed {
        bail!(
            "the model has {needed} parameters; the weights hold {}",
            weights.len()
        );
    }
    let input_width: u64 = dataset.features.iter().map(|f| f.width() as u64).sum();
    if input_width != graph.input.shape().elements() {
        bail!(
            "the dataset encodes {input_width} input columns; the model reads {}",
            graph.input.shape().elements()
        );
    }

    let mut b = Builder::default();
    let mut inputs = Vec::new();
    let mut encoded = Vec::new();
    for feature in &dataset.features {
        let (input, column) = b.encode_feature(feature, &dataset.null_markers)?;
        inputs.push(input);
        encoded.push(column);
    }
    let features = if encoded.len() == 1 {
        encoded.pop().expect("one column")
    } else {
        let refs: Vec<&str> = encoded.iter().map(String::as_str).collect();
        b.node("Concat", &refs, vec![attr_int("axis", 1)])
    };
    let x = b.layers(&graph, features, &shapes, weights)?;

    let mut outputs = Vec::new();
    let classes: Vec<String> = dataset.classes.clone();
    match graph.loss {
        Loss::SoftmaxCrossEntropy | Loss::BinaryCrossEntropy => {
            let probabilities = if graph.loss == Loss::SoftmaxCrossEntropy {
                b.node("Softmax", &[&x], vec![attr_int("axis", 1)])
            } else {
                let p = b.node("Sigmoid", &[&x], vec![]);
                let one = b.constant_f32("one", &[], &[1.0]);
                let q = b.node("Sub", &[&one, &p], vec![]);
                b.node("Concat", &[&q, &p], vec![attr_int("axis", 1)])
            };
            let k = match graph.loss {
                Loss::BinaryCrossEntropy => 2,
                _ => shapes.last().map(|(_, c)| *c).unwrap_or(1),
            };
            let probabilities = b.named("Identity", &[&probabilities], vec![], "probabilities");
            let index = b.node(
                "ArgMax",
                &[&probabilities],
                vec![attr_int("axis", 1), attr_int("keepdims", 0)],
            );
            let names: Vec<String> = (0..k)
                .map(|i| classes.get(i).cloned().unwrap_or_else(|| i.to_string()))
                .collect();
            let label = b.named_in(
                ML_DOMAIN,
                "LabelEncoder",
                &[&index],
                vec![
                    attr_ints("keys_int64s", &(0..k as i64).collect::<Vec<_>>()),
                    attr_strings("values_strings", &names),
                    attr_string("default_string", ""),
                ],
                "label",
            );
            outputs.push(value_info(
                &probabilities,
                data_type::FLOAT,
                &[None, Some(k as i64)],
            ));
            outputs.push(value_info(&label, data_type::STRING, &[None]));
        }
        Loss::MeanSquaredError => {
            let value = match &dataset.target {
                Some(target) => {
                    let std = b.constant_f32("target_std", &[], &[target.std as f32]);
                    let mean = b.constant_f32("target_mean", &[], &[target.mean as f32]);
                    let scaled = b.node("Mul", &[&x, &std], vec![]);
                    b.named("Add", &[&scaled, &mean], vec![], "prediction")
                }
                None => b.named("Identity", &[&x], vec![], "prediction"),
            };
            outputs.push(value_info(&value, data_type::FLOAT, &[None, Some(1)]));
        }
    }

    let described: Vec<_> = dataset
        .features
        .iter()
        .map(|f| {
            let (kind, meaning) = match &f.encoding {
                FeatureEncoding::Numeric { .. } => ("float", "the raw number; NaN is a missing value"),
                FeatureEncoding::Date { .. } => ("float", "days since 1970-01-01; NaN is a missing value"),
                FeatureEncoding::Categorical { .. } => ("string", "the raw category, trimmed; an unseen one is <unknown>"),
            };
            json!({"name": f.name, "type": kind, "shape": ["N", 1], "meaning": meaning, "missing": f.missing.as_str()})
        })
        .collect();
    let metadata = [
        ("aic.trained_model", provenance.trained_model.clone()),
        ("aic.dataset_asset", provenance.dataset_asset.clone()),
        ("aic.job", provenance.job.clone()),
        ("aic.dataset", dataset.name.clone()),
        ("classes", serde_json::to_string(&classes)?),
        ("inputs", serde_json::to_string(&described)?),
        (
            "target",
            dataset
                .target
                .as_ref()
                .map(|_| dataset.label.clone())
                .unwrap_or_default(),
        ),
    ];
    let graph_proto = GraphProto {
        node: b.nodes,
        name: graph.name.clone(),
        initializer: b.initializers,
        doc_string: format!("{} trained on {}", graph.name, dataset.name),
        input: inputs,
        output: outputs,
    };
    Ok(ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![
            OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            },
            OperatorSetIdProto {
                domain: ML_DOMAIN.into(),
                version: ML_OPSET,
            },
        ],
        producer_name: "aic".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: "io.aic".into(),
        model_version: 1,
        doc_string: format!(
            "{} trained on the dataset {:?} by job {}: one input per imported column (see the \
             \"inputs\" metadata), preprocessing included",
            graph.name, dataset.name, provenance.job
        ),
        graph: Some(graph_proto),
        metadata_props: metadata
            .into_iter()
            .map(|(key, value)| StringStringEntryProto {
                key: key.into(),
                value,
            })
            .collect(),
    })
}

/// The file's bytes.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Nodes and initializers as they are added, each output named uniquely.
#[derive(Default)]
struct Builder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    next: usize,
}

impl Builder {
    fn fresh(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("{hint}_{}", self.next)
    }

    fn named_in(
        &mut self,
        domain: &str,
        op: &str,
        inputs: &[&str],
        attribute: Vec<AttributeProto>,
        output: &str,
    ) -> String {
        let name = self.fresh(op);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name,
            op_type: op.into(),
            domain: domain.into(),
            attribute,
        });
        output.to_string()
    }

    fn named(&mut self, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>, output: &str) -> String {
        self.named_in("", op, inputs, attribute, output)
    }

    /// A standard op with one fresh output.
    fn node(&mut self, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> String {
        let output = self.fresh(&op.to_lowercase());
        self.named(op, inputs, attribute, &output)
    }

    fn constant_f32(&mut self, hint: &str, dims: &[i64], values: &[f32]) -> String {
        let name = self.fresh(hint);
        self.initializers.push(TensorProto {
            dims: dims.to_vec(),
            data_type: data_type::FLOAT,
            name: name.clone(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    fn constant_i64(&mut self, hint: &str, values: &[i64]) -> String {
        let name = self.fresh(hint);
        self.initializers.push(TensorProto {
            dims: vec![values.len() as i64],
            data_type: data_type::INT64,
            name: name.clone(),
            int64_data: values.to_vec(),
            ..Default::default()
        });
        name
    }

    /// One imported column: its input, and the float N×width tensor it encodes into.
    fn encode_feature(
        &mut self,
        feature: &Feature,
        null_markers: &[String],
    ) -> anyhow::Result<(ValueInfoProto, String)> {
        let name = feature.name.clone();
        match &feature.encoding {
            FeatureEncoding::Numeric { mean, std } | FeatureEncoding::Date { mean, std } => {
                let input = value_info(&name, data_type::FLOAT, &[None, Some(1)]);
                let mut x = name.clone();
                if let (MissingPolicy::Mean | MissingPolicy::Median, Some(fill)) =
                    (feature.missing, &feature.fill)
                {
                    let fill = match feature.encoding {
                        FeatureEncoding::Date { .. } => parse_date(fill).map(|d| d as f64),
                        _ => aic_protocol::encoding::parse_number(fill),
                    }
                    .with_context(|| format!("column {name:?}: its fill value {fill:?} does not parse"))?;
                    let missing = self.node("IsNaN", &[&x], vec![]);
                    let fill = self.constant_f32("fill", &[], &[fill as f32]);
                    x = self.node("Where", &[&missing, &fill, &x], vec![]);
                }
                let mean = self.constant_f32("mean", &[], &[*mean as f32]);
                let std = self.constant_f32("std", &[], &[*std as f32]);
                let centred = self.node("Sub", &[&x, &mean], vec![]);
                Ok((input, self.node("Div", &[&centred, &std], vec![])))
            }
            FeatureEncoding::Categorical { categories } => {
                let input = value_info(&name, data_type::STRING, &[None, Some(1)]);
                let unknown = categories.len() as i64;
                // A missing value becomes what the policy says: its own level, the most
                // frequent category, or (refused at import) the unknown column.
                let missing_index = match (feature.missing, &feature.fill) {
                    (MissingPolicy::Level, _) => categories.iter().position(|c| c == MISSING_LEVEL),
                    (MissingPolicy::MostFrequent, Some(fill)) => categories.iter().position(|c| c == fill),
                    _ => None,
                }
                .map(|i| i as i64)
                .unwrap_or(unknown);
                let mut keys: Vec<String> = categories.clone();
                let mut values: Vec<i64> = (0..unknown).collect();
                for marker in null_markers {
                    let marker = marker.trim().to_string();
                    if !keys.contains(&marker) {
                        keys.push(marker);
                        values.push(missing_index);
                    }
                }
                let index = self.named_in(
                    ML_DOMAIN,
                    "LabelEncoder",
                    &[&name],
                    vec![
                        attr_strings("keys_strings", &keys),
                        attr_ints("values_int64s", &values),
                        attr_int("default_int64", unknown),
                    ],
                    &format!("{name}_code"),
                );
                let depth = self.constant_i64("depth", &[unknown + 1]);
                let off_on = self.constant_f32("off_on", &[2], &[0.0, 1.0]);
                let hot = self.node("OneHot", &[&index, &depth, &off_on], vec![attr_int("axis", -1)]);
                let shape = self.constant_i64("shape", &[-1, unknown + 1]);
                Ok((input, self.node("Reshape", &[&hot, &shape], vec![])))
            }
        }
    }

    /// The layers of `graph` on `x` (N × input width), with the trained weights; the logits.
    fn layers(
        &mut self,
        graph: &ModelGraph,
        mut x: String,
        shapes: &[(usize, usize)],
        weights: &[f32],
    ) -> anyhow::Result<String> {
        let mut image = false;
        if let Shape::Image {
            channels,
            height,
            width,
        } = graph.input.shape()
        {
            let shape = self.constant_i64("image_shape", &[-1, channels as i64, height as i64, width as i64]);
            x = self.node("Reshape", &[&x, &shape], vec![]);
            image = true;
        }
        let summary = graph.summary().map_err(|e| anyhow::anyhow!("the model: {e}"))?;
        let mut tensors = Tensors {
            shapes,
            weights,
            next: 0,
            offset: 0,
        };
        let mut outputs: Vec<String> = Vec::with_capacity(graph.layers.len());
        let mut input_shape = graph.input.shape();
        for (layer, row) in graph.layers.iter().zip(&summary) {
            x = match &layer.op {
                Op::Dense { units } => {
                    if image {
                        x = self.node("Flatten", &[&x], vec![attr_int("axis", 1)]);
                        image = false;
                    }
                    let (rows, cols, w) = tensors.take();
                    let w = self.constant_f32(&format!("{}_W", layer.name), &[rows as i64, cols as i64], w);
                    let (_, _, bias) = tensors.take();
                    let bias = self.constant_f32(&format!("{}_b", layer.name), &[*units as i64], bias);
                    self.node("Gemm", &[&x, &w, &bias], vec![])
                }
                Op::Conv2d {
                    filters,
                    kernel,
                    stride,
                    padding,
                } => {
                    let Shape::Image { channels, .. } = input_shape else {
                        bail!("layer {:?}: a convolution needs an image input", layer.name);
                    };
                    let k = *kernel as i64;
                    let (_, _, w) = tensors.take();
                    let w = self.constant_f32(
                        &format!("{}_W", layer.name),
                        &[*filters as i64, channels as i64, k, k],
                        w,
                    );
                    let (_, _, bias) = tensors.take();
                    let bias = self.constant_f32(&format!("{}_b", layer.name), &[*filters as i64], bias);
                    let p = *padding as i64;
                    self.node(
                        "Conv",
                        &[&x, &w, &bias],
                        vec![
                            attr_ints("kernel_shape", &[k, k]),
                            attr_ints("strides", &[*stride as i64, *stride as i64]),
                            attr_ints("pads", &[p, p, p, p]),
                        ],
                    )
                }
                Op::MaxPool2d { kernel, stride } | Op::AvgPool2d { kernel, stride } => {
                    let op = if matches!(layer.op, Op::MaxPool2d { .. }) {
                        "MaxPool"
                    } else {
                        "AveragePool"
                    };
                    self.node(
                        op,
                        &[&x],
                        vec![
                            attr_ints("kernel_shape", &[*kernel as i64, *kernel as i64]),
                            attr_ints("strides", &[*stride as i64, *stride as i64]),
                        ],
                    )
                }
                Op::Flatten => {
                    if image {
                        image = false;
                        self.node("Flatten", &[&x], vec![attr_int("axis", 1)])
                    } else {
                        x.clone()
                    }
                }
                Op::Relu => self.node("Relu", &[&x], vec![]),
                Op::Tanh => self.node("Tanh", &[&x], vec![]),
                Op::Sigmoid => self.node("Sigmoid", &[&x], vec![]),
                Op::Gelu => self.gelu(&x),
                // Inference keeps every value: dropout only acts in training.
                Op::Dropout { .. } => x.clone(),
                Op::LayerNorm { epsilon } => {
                    // The grid normalises each row over all its values: axis 1 covers C×H×W too.
                    let dims: Vec<i64> = match row.output {
                        Shape::Vector(n) => vec![n as i64],
                        Shape::Image {
                            channels,
                            height,
                            width,
                        } => vec![channels as i64, height as i64, width as i64],
                    };
                    let (_, _, gamma) = tensors.take();
                    let gamma = self.constant_f32(&format!("{}_gamma", layer.name), &dims, gamma);
                    let (_, _, beta) = tensors.take();
                    let beta = self.constant_f32(&format!("{}_beta", layer.name), &dims, beta);
                    self.node(
                        "LayerNormalization",
                        &[&x, &gamma, &beta],
                        vec![attr_int("axis", 1), attr_float("epsilon", *epsilon)],
                    )
                }
                Op::Add { from } => {
                    let at = graph
                        .layers
                        .iter()
                        .position(|l| &l.name == from)
                        .with_context(|| format!("layer {:?} adds an unknown layer {from:?}", layer.name))?;
                    let other = outputs[at].clone();
                    self.node("Add", &[&x, &other], vec![])
                }
            };
            outputs.push(x.clone());
            input_shape = row.output;
        }
        if image {
            x = self.node("Flatten", &[&x], vec![attr_int("axis", 1)]);
        }
        Ok(x)
    }

    /// GELU as the grid computes it (the tanh approximation), from standard ops:
    /// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
    fn gelu(&mut self, x: &str) -> String {
        let cube_factor = self.constant_f32("gelu_a", &[], &[0.044715]);
        let scale = self.constant_f32("gelu_c", &[], &[0.797_884_6]);
        let half = self.constant_f32("half", &[], &[0.5]);
        let one = self.constant_f32("one", &[], &[1.0]);
        let square = self.node("Mul", &[x, x], vec![]);
        let cube = self.node("Mul", &[&square, x], vec![]);
        let scaled_cube = self.node("Mul", &[&cube, &cube_factor], vec![]);
        let sum = self.node("Add", &[x, &scaled_cube], vec![]);
        let inner = self.node("Mul", &[&sum, &scale], vec![]);
        let t = self.node("Tanh", &[&inner], vec![]);
        let one_plus = self.node("Add", &[&t, &one], vec![]);
        let half_x = self.node("Mul", &[x, &half], vec![]);
        self.node("Mul", &[&half_x, &one_plus], vec![])
    }
}

/// The trained parameter tensors, taken in order.
struct Tensors<'a> {
    shapes: &'a [(usize, usize)],
    weights: &'a [f32],
    next: usize,
    offset: usize,
}

impl<'a> Tensors<'a> {
    fn take(&mut self) -> (usize, usize, &'a [f32]) {
        let (rows, cols) = self.shapes[self.next];
        let values = &self.weights[self.offset..self.offset + rows * cols];
        self.next += 1;
        self.offset += rows * cols;
        (rows, cols, values)
    }
}

fn value_info(name: &str, elem_type: i32, dims: &[Option<i64>]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(match d {
                                Some(size) => dimension::Value::DimValue(*size),
                                None => dimension::Value::DimParam("N".into()),
                            }),
                        })
                        .collect(),
                }),
            }),
        }),
        doc_string: String::new(),
    }
}

fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INT,
        i,
        ..Default::default()
    }
}

fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::FLOAT,
        f,
        ..Default::default()
    }
}

fn attr_string(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::STRING,
        s: s.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INTS,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

fn attr_strings(name: &str, strings: &[String]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::STRINGS,
        strings: strings.iter().map(|s| s.as_bytes().to_vec()).collect(),
        ..Default::default()
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
