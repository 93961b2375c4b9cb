//! Model descriptions users write: a layer graph in TOML (or JSON), validated layer by layer with
//! shapes inferred from the input, parameter counts in checked arithmetic, and one canonical
//! form whose BLAKE3 hash is the Model asset's content hash.
//!
//! ```toml
//! name = "digits-cnn"
//! input = { image = [1, 8, 8] }        # or { features = 64 }
//! loss = "softmax_cross_entropy"       # mean_squared_error, binary_cross_entropy
//!
//! [[layer]]
//! kind = "conv2d"                      # name = "…" is optional: kind + position otherwise
//! filters = 16
//! kernel = 3
//! padding = 1
//!
//! [[layer]]
//! kind = "relu"
//! ```
//!
//! Layers: `dense` (units), `conv2d` (filters, kernel, stride = 1, padding = 0), `max_pool2d` and
//! `avg_pool2d` (kernel, stride = kernel), `flatten`, `relu`, `gelu`, `tanh`, `sigmoid`,
//! `dropout` (rate in [0, 1), seeded per task so a re-execution agrees), `layer_norm` (epsilon),
//! and `add` (from = an earlier layer's name, of the same shape: a residual connection).
//! `batch_norm` is refused: its running statistics would have to be reduced across a round's
//! tasks like the weights, and a spot check could not reproduce a batch's statistics from one
//! shard; `layer_norm` normalises each row alone.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::messages::{LrSchedule, ModelShape};

/// The longest description accepted (bytes of TOML or JSON).
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
/// The most layers a description may have.
pub const MAX_LAYERS: usize = 256;
/// The largest size any one dimension (units, filters, a side, a kernel) may have.
pub const MAX_DIMENSION: u64 = 1 << 24;
/// The most parameters a description may declare (what device memory allows is checked when a
/// job is quoted; this only keeps the arithmetic meaningful).
pub const MAX_PARAMETERS: u64 = 1 << 40;

/// A tensor's shape between layers (the batch dimension left out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    Vector(u64),
    Image { channels: u64, height: u64, width: u64 },
}

impl Shape {
    pub fn elements(&self) -> u64 {
        match *self {
            Shape::Vector(n) => n,
            Shape::Image {
                channels,
                height,
                width,
            } => channels.saturating_mul(height).saturating_mul(width),
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Shape::Vector(n) => write!(f, "{n}"),
            Shape::Image {
                channels,
                height,
                width,
            } => write!(f, "{channels}×{height}×{width}"),
        }
    }
}

/// What a layer does, with its sizes (defaults filled in).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Op {
    Dense {
        units: u64,
    },
    Conv2d {
        filters: u64,
        kernel: u64,
        stride: u64,
        padding: u64,
    },
    MaxPool2d {
        kernel: u64,
        stride: u64,
    },
    AvgPool2d {
        kernel: u64,
        stride: u64,
    },
    Flatten,
    Relu,
    Gelu,
    Tanh,
    Sigmoid,
    Dropout {
        rate: f32,
    },
    LayerNorm {
        epsilon: f32,
    },
    Add {
        from: String,
    },
}

impl Op {
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Dense { .. } => "dense",
            Op::Conv2d { .. } => "conv2d",
            Op::MaxPool2d { .. } => "max_pool2d",
            Op::AvgPool2d { .. } => "avg_pool2d",
            Op::Flatten => "flatten",
            Op::Relu => "relu",
            Op::Gelu => "gelu",
            Op::Tanh => "tanh",
            Op::Sigmoid => "sigmoid",
            Op::Dropout { .. } => "dropout",
            Op::LayerNorm { .. } => "layer_norm",
            Op::Add { .. } => "add",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    pub name: String,
    #[serde(flatten)]
    pub op: Op,
}

/// What the model is trained to minimise; it decides what label the dataset must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Classes: the last layer gives one logit per class.
    SoftmaxCrossEntropy,
    /// A numeric target: the last layer gives one value.
    MeanSquaredError,
    /// Two classes: the last layer gives one logit.
    BinaryCrossEntropy,
}

/// What the description says a job of it should use unless `aic job submit` says otherwise.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingDefaults {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<crate::messages::InnerOptimizer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_steps: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<crate::messages::LrSchedule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
}

/// What the input layer sees of the dataset's encoded columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputView {
    Features(u64),
    /// The columns in order, read as channels × height × width (row-major pixels).
    Image([u64; 3]),
}

impl InputView {
    pub fn shape(&self) -> Shape {
        match *self {
            InputView::Features(n) => Shape::Vector(n),
            InputView::Image([channels, height, width]) => Shape::Image {
                channels,
                height,
                width,
            },
        }
    }
}

/// A validated description in its canonical form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelGraph {
    pub name: String,
    pub input: InputView,
    pub layers: Vec<Layer>,
    pub loss: Loss,
    #[serde(default, skip_serializing_if = "is_default")]
    pub training: TrainingDefaults,
}

fn is_default(t: &TrainingDefaults) -> bool {
    *t == TrainingDefaults::default()
}

/// One row of a model's summary: a layer, what it outputs, what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerSummary {
    pub name: String,
    pub kind: &'static str,
    pub output: Shape,
    pub parameters: u64,
}

/// Why a description was refused. Each names the layer (its position and name) where it can.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error("the description is {len} bytes; at most {MAX_SPEC_BYTES} are accepted")]
    TooLarge { len: usize },
    #[error("the description is not valid {format}: {reason}")]
    Syntax { format: &'static str, reason: String },
    #[error("{place}: {problem}")]
    Field { place: String, problem: String },
    #[error("layer {index} ({name}): unknown kind {kind:?}; one of dense, conv2d, max_pool2d, avg_pool2d, flatten, relu, gelu, tanh, sigmoid, dropout, layer_norm, add")]
    UnknownLayer {
        index: usize,
        name: String,
        kind: String,
    },
    #[error("layer {index} ({name}): batch_norm is not supported (its running statistics cannot be reproduced by a spot check of one shard); use layer_norm")]
    BatchNorm { index: usize, name: String },
    #[error("layer {index} ({name}): {what} must be at least {min} and at most {MAX_DIMENSION}, not {got}")]
    Size {
        index: usize,
        name: String,
        what: &'static str,
        min: u64,
        got: u64,
    },
    #[error("layer {index} ({name}, {kind}) takes {expected}; its input is {got}")]
    Chain {
        index: usize,
        name: String,
        kind: &'static str,
        expected: &'static str,
        got: Shape,
    },
    #[error(
        "layer {index} ({name}): a kernel of {kernel} is larger than its input of {side} (with padding)"
    )]
    KernelTooLarge {
        index: usize,
        name: String,
        kernel: u64,
        side: u64,
    },
    #[error("layer {index} ({name}): adds {from:?}, which is {}", match .found { Some(s) => format!("of shape {s}, not {}", .shape), None => "no earlier layer".into() })]
    Add {
        index: usize,
        name: String,
        from: String,
        shape: Shape,
        found: Option<Shape>,
    },
    #[error("layer {index}: the name {name:?} is taken by an earlier layer")]
    DuplicateName { index: usize, name: String },
    #[error("the model would have more than {MAX_PARAMETERS} parameters (at layer {index}, {name})")]
    TooManyParameters { index: usize, name: String },
    #[error("the loss {loss} needs {needs}; the last layer outputs {got}")]
    Loss {
        loss: &'static str,
        needs: &'static str,
        got: Shape,
    },
    #[error("the input {view} has {elements} values; the dataset has {width} encoded columns")]
    InputWidth { view: String, elements: u64, width: u64 },
    #[error("the loss {loss} needs {needs}; the dataset has {has}")]
    LabelKind {
        loss: &'static str,
        needs: String,
        has: String,
    },
}

impl Loss {
    fn name(self) -> &'static str {
        match self {
            Loss::SoftmaxCrossEntropy => "softmax_cross_entropy",
            Loss::MeanSquaredError => "mean_squared_error",
            Loss::BinaryCrossEntropy => "binary_cross_entropy",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// Reads a description from TOML, or from JSON when it starts with `{`, and validates it.
pub fn parse(text: &str) -> Result<ModelGraph, SpecError> {
    if text.len() > MAX_SPEC_BYTES {
        return Err(SpecError::TooLarge { len: text.len() });
    }
    let value: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| SpecError::Syntax {
            format: "JSON",
            reason: e.to_string(),
        })?
    } else {
        toml::from_str(text).map_err(|e| SpecError::Syntax {
            format: "TOML",
            reason: e.message().to_string(),
        })?
    };
    let graph = from_value(&value)?;
    graph.summary()?;
    Ok(graph)
}

fn field_error(place: &str, problem: impl Into<String>) -> SpecError {
    SpecError::Field {
        place: place.to_string(),
        problem: problem.into(),
    }
}

/// Takes the fields of a table one by one, so what is left over can be named.
struct Fields {
    place: String,
    map: Map<String, Value>,
}

impl Fields {
    fn of(place: String, value: &Value) -> Result<Self, SpecError> {
        let map = value
            .as_object()
            .ok_or_else(|| field_error(&place, "must be a table"))?
            .clone();
        Ok(Fields { place, map })
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key)
    }

    fn string(&mut self, key: &str) -> Result<Option<String>, SpecError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(field_error(
                &self.place,
                format!("{key} must be text, not {other}"),
            )),
        }
    }

    fn integer(&mut self, key: &str) -> Result<Option<u64>, SpecError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) => Ok(Some(v)),
                None => Err(field_error(
                    &self.place,
                    format!("{key} must be a whole number of at least 0, not {n}"),
                )),
            },
            Some(other) => Err(field_error(
                &self.place,
                format!("{key} must be a number, not {other}"),
            )),
        }
    }

    fn required(&mut self, key: &str) -> Result<u64, SpecError> {
        self.integer(key)?
            .ok_or_else(|| field_error(&self.place, format!("needs {key}")))
    }

    fn float(&mut self, key: &str) -> Result<Option<f32>, SpecError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_f64()
                .filter(|v| v.is_finite())
                .map(|v| Some(v as f32))
                .ok_or_else(|| field_error(&self.place, format!("{key} must be a finite number"))),
            Some(other) => Err(field_error(
                &self.place,
                format!("{key} must be a number, not {other}"),
            )),
        }
    }

    /// Refuses any field not taken.
    fn done(self) -> Result<(), SpecError> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(key) => Err(field_error(&self.place, format!("unknown field {key:?}"))),
        }
    }
}

fn from_value(value: &Value) -> Result<ModelGraph, SpecError> {
    let mut top = Fields::of("the description".into(), value)?;
    let name = top
        .string("name")?
        .filter(|n| !n.trim().is_empty() && n.len() <= 128)
        .ok_or_else(|| field_error("the description", "needs a name of 1 to 128 characters"))?;
    let input = parse_input(top.take("input"))?;
    let loss = match top.string("loss")?.as_deref() {
        Some("softmax_cross_entropy") => Loss::SoftmaxCrossEntropy,
        Some("mean_squared_error") => Loss::MeanSquaredError,
        Some("binary_cross_entropy") => Loss::BinaryCrossEntropy,
        Some(other) => {
            return Err(field_error(
                "loss",
                format!("unknown loss {other:?}; one of softmax_cross_entropy, mean_squared_error, binary_cross_entropy"),
            ))
        }
        None => return Err(field_error("the description", "needs a loss")),
    };
    let raw_layers = match top.take("layer").or_else(|| top.take("layers")) {
        Some(Value::Array(layers)) => layers,
        Some(_) => return Err(field_error("layer", "must be a list of tables ([[layer]])")),
        None => return Err(field_error("the description", "needs at least one [[layer]]")),
    };
    if raw_layers.is_empty() || raw_layers.len() > MAX_LAYERS {
        return Err(field_error(
            "the description",
            format!("needs 1 to {MAX_LAYERS} layers, not {}", raw_layers.len()),
        ));
    }
    let mut layers = Vec::with_capacity(raw_layers.len());
    for (index, raw) in raw_layers.iter().enumerate() {
        layers.push(parse_layer(index + 1, raw)?);
    }
    let training = match top.take("training") {
        None => TrainingDefaults::default(),
        Some(value) => parse_training(&value)?,
    };
    top.done()?;
    Ok(ModelGraph {
        name,
        input,
        layers,
        loss,
        training,
    })
}

fn parse_input(value: Option<Value>) -> Result<InputView, SpecError> {
    let value = value.ok_or_else(|| field_error("the description", "needs an input"))?;
    let mut fields = Fields::of("input".into(), &value)?;
    let features = fields.integer("features")?;
    let image = fields.take("image");
    fields.done()?;
    match (features, image) {
        (Some(n), None) if (1..=MAX_DIMENSION).contains(&n) => Ok(InputView::Features(n)),
        (Some(n), None) => Err(field_error(
            "input",
            format!("features must be 1 to {MAX_DIMENSION}, not {n}"),
        )),
        (None, Some(Value::Array(dims))) => {
            let dims: Vec<u64> = dims.iter().filter_map(Value::as_u64).collect();
            match dims[..] {
                [c, h, w] if [c, h, w].iter().all(|d| (1..=MAX_DIMENSION).contains(d)) => {
                    Ok(InputView::Image([c, h, w]))
                }
                _ => Err(field_error(
                    "input",
                    "image must be [channels, height, width], each 1 or more",
                )),
            }
        }
        _ => Err(field_error(
            "input",
            "needs exactly one of features = N or image = [channels, height, width]",
        )),
    }
}

fn parse_layer(index: usize, raw: &Value) -> Result<Layer, SpecError> {
    let mut fields = Fields::of(format!("layer {index}"), raw)?;
    let kind = fields
        .string("kind")?
        .ok_or_else(|| field_error(&format!("layer {index}"), "needs a kind"))?;
    let name = fields.string("name")?.unwrap_or_else(|| format!("{kind}{index}"));
    if name.is_empty() || name.len() > 64 {
        return Err(field_error(
            &format!("layer {index}"),
            "a name must be 1 to 64 characters",
        ));
    }
    fields.place = format!("layer {index} ({name})");
    let size =
        |fields: &mut Fields, what: &'static str, min: u64, value: Option<u64>| -> Result<u64, SpecError> {
            let got = match value {
                Some(v) => v,
                None => fields.required(what)?,
            };
            if got < min || got > MAX_DIMENSION {
                return Err(SpecError::Size {
                    index,
                    name: name.clone(),
                    what,
                    min,
                    got,
                });
            }
            Ok(got)
        };
    let op = match kind.as_str() {
        "dense" => Op::Dense {
            units: size(&mut fields, "units", 1, None)?,
        },
        "conv2d" => {
            let filters = size(&mut fields, "filters", 1, None)?;
            let kernel = size(&mut fields, "kernel", 1, None)?;
            let stride = fields.integer("stride")?.unwrap_or(1);
            let stride = size(&mut fields, "stride", 1, Some(stride))?;
            let padding = fields.integer("padding")?.unwrap_or(0);
            let padding = size(&mut fields, "padding", 0, Some(padding))?;
            Op::Conv2d {
                filters,
                kernel,
                stride,
                padding,
            }
        }
        "max_pool2d" | "avg_pool2d" => {
            let kernel = size(&mut fields, "kernel", 1, None)?;
            let stride = fields.integer("stride")?.unwrap_or(kernel);
            let stride = size(&mut fields, "stride", 1, Some(stride))?;
            if kind == "max_pool2d" {
                Op::MaxPool2d { kernel, stride }
            } else {
                Op::AvgPool2d { kernel, stride }
            }
        }
        "flatten" => Op::Flatten,
        "relu" => Op::Relu,
        "gelu" => Op::Gelu,
        "tanh" => Op::Tanh,
        "sigmoid" => Op::Sigmoid,
        "dropout" => {
            let rate = fields.float("rate")?.unwrap_or(0.5);
            if !(0.0..1.0).contains(&rate) {
                return Err(field_error(
                    &fields.place,
                    format!("rate must be in [0, 1), not {rate}"),
                ));
            }
            Op::Dropout { rate }
        }
        "layer_norm" => {
            let epsilon = fields.float("epsilon")?.unwrap_or(1e-5);
            if !(epsilon > 0.0 && epsilon < 1.0) {
                return Err(field_error(
                    &fields.place,
                    format!("epsilon must be in (0, 1), not {epsilon}"),
                ));
            }
            Op::LayerNorm { epsilon }
        }
        "add" => Op::Add {
            from: fields
                .string("from")?
                .ok_or_else(|| field_error(&fields.place, "needs from = \"an earlier layer's name\""))?,
        },
        "batch_norm" => return Err(SpecError::BatchNorm { index, name }),
        _ => return Err(SpecError::UnknownLayer { index, name, kind }),
    };
    fields.done()?;
    Ok(Layer { name, op })
}

fn parse_training(value: &Value) -> Result<TrainingDefaults, SpecError> {
    let mut fields = Fields::of("training".into(), value)?;
    let optimizer = match fields.string("optimizer")?.as_deref() {
        None => None,
        Some("sgd") => Some(crate::messages::InnerOptimizer::Sgd),
        Some("momentum") => Some(crate::messages::InnerOptimizer::Momentum),
        Some("adam") => Some(crate::messages::InnerOptimizer::Adam),
        Some("adamw") => Some(crate::messages::InnerOptimizer::AdamW),
        Some(other) => {
            return Err(field_error(
                "training",
                format!("unknown optimizer {other:?}; one of sgd, momentum, adam, adamw"),
            ))
        }
    };
    let learning_rate = fields.float("learning_rate")?;
    if let Some(rate) = learning_rate.filter(|r| !(*r > 0.0 && *r <= 100.0)) {
        return Err(field_error(
            "training",
            format!("learning_rate must be in (0, 100], not {rate}"),
        ));
    }
    let epochs = fields.integer("epochs")?;
    if let Some(epochs) = epochs.filter(|e| !(1..=1000).contains(e)) {
        return Err(field_error(
            "training",
            format!("epochs must be 1 to 1000, not {epochs}"),
        ));
    }
    let local_steps = fields.integer("local_steps")?;
    let max_steps = u64::from(crate::messages::MAX_LOCAL_STEPS);
    if let Some(steps) = local_steps.filter(|s| !(1..=max_steps).contains(s)) {
        return Err(field_error(
            "training",
            format!("local_steps must be 1 to {max_steps}, not {steps}"),
        ));
    }
    let weight_decay = fields.float("weight_decay")?;
    if let Some(decay) = weight_decay.filter(|d| !(0.0..=1.0).contains(d)) {
        return Err(field_error(
            "training",
            format!("weight_decay must be in [0, 1], not {decay}"),
        ));
    }
    let schedule = parse_schedule(&mut fields)?;
    let batch_size = fields.integer("batch_size")?;
    if let Some(size) = batch_size.filter(|s| !(1..=u64::from(crate::messages::MAX_BATCH_SIZE)).contains(s)) {
        return Err(field_error(
            "training",
            format!(
                "batch_size must be 1 to {}, not {size}",
                crate::messages::MAX_BATCH_SIZE
            ),
        ));
    }
    fields.done()?;
    Ok(TrainingDefaults {
        optimizer,
        learning_rate,
        epochs: epochs.map(|e| e as u32),
        local_steps: local_steps.map(|s| s as u32),
        weight_decay,
        schedule,
        batch_size: batch_size.map(|s| s as u32),
    })
}

/// `schedule = "constant" | "step" | "cosine"`, with `step_every` and `step_factor` for a step
/// schedule and `warmup_rounds` for a cosine one.
fn parse_schedule(fields: &mut Fields) -> Result<Option<LrSchedule>, SpecError> {
    let kind = match fields.take("schedule") {
        None => None,
        Some(Value::String(kind)) => Some(kind),
        // The canonical form writes a schedule as serde does: {"step": {…}}, {"cosine": {…}}.
        Some(object @ Value::Object(_)) => {
            let schedule: LrSchedule = serde_json::from_value(object)
                .map_err(|e| field_error("training", format!("schedule: {e}")))?;
            return match schedule {
                LrSchedule::Step {
                    every_rounds,
                    factor_milli,
                } if every_rounds == 0 || factor_milli == 0 || factor_milli > 1000 => Err(field_error(
                    "training",
                    "a step schedule decays every 1 or more rounds by a factor in (0, 1]",
                )),
                schedule => Ok(Some(schedule)),
            };
        }
        Some(other) => {
            return Err(field_error(
                "training",
                format!("schedule must be text, not {other}"),
            ))
        }
    };
    let every = fields.integer("step_every")?;
    let factor = fields.float("step_factor")?;
    let warmup = fields.integer("warmup_rounds")?;
    let schedule = match kind.as_deref() {
        None if every.is_none() && factor.is_none() && warmup.is_none() => return Ok(None),
        None => {
            return Err(field_error(
                "training",
                "step_every, step_factor and warmup_rounds need a schedule",
            ))
        }
        Some("constant") => LrSchedule::Constant,
        Some("step") => {
            let every_rounds = every
                .filter(|e| (1..=u64::from(u32::MAX)).contains(e))
                .ok_or_else(|| {
                    field_error("training", "a step schedule needs step_every = 1 or more rounds")
                })? as u32;
            let factor = factor.unwrap_or(0.5);
            if !(factor > 0.0 && factor <= 1.0) {
                return Err(field_error(
                    "training",
                    format!("step_factor must be in (0, 1], not {factor}"),
                ));
            }
            LrSchedule::Step {
                every_rounds,
                factor_milli: (factor * 1000.0).round().max(1.0) as u32,
            }
        }
        Some("cosine") => LrSchedule::Cosine {
            warmup_rounds: u32::try_from(warmup.unwrap_or(0))
                .map_err(|_| field_error("training", "warmup_rounds is too large"))?,
        },
        Some(other) => {
            return Err(field_error(
                "training",
                format!("unknown schedule {other:?}; one of constant, step, cosine"),
            ))
        }
    };
    Ok(Some(schedule))
}

// ---------------------------------------------------------------------------------------------
// Shapes, parameters, the canonical form

impl ModelGraph {
    /// Every layer's output shape and parameters, inferred from the input; refuses a layer that
    /// does not take what the one before it gives, and a loss the last layer cannot feed.
    pub fn summary(&self) -> Result<Vec<LayerSummary>, SpecError> {
        let mut shape = self.input.shape();
        let mut rows = Vec::with_capacity(self.layers.len());
        let mut by_name: HashMap<&str, Shape> = HashMap::new();
        let mut total: u64 = 0;
        for (i, layer) in self.layers.iter().enumerate() {
            let index = i + 1;
            let name = layer.name.clone();
            if by_name.contains_key(layer.name.as_str()) {
                return Err(SpecError::DuplicateName { index, name });
            }
            let chain = |expected: &'static str, got: Shape| SpecError::Chain {
                index,
                name: name.clone(),
                kind: layer.op.kind(),
                expected,
                got,
            };
            let overflow = || SpecError::TooManyParameters {
                index,
                name: name.clone(),
            };
            let (output, parameters) = match &layer.op {
                Op::Dense { units } => {
                    let Shape::Vector(inputs) = shape else {
                        return Err(chain("a vector (add a flatten layer)", shape));
                    };
                    let weights = inputs.checked_mul(*units).ok_or_else(overflow)?;
                    (
                        Shape::Vector(*units),
                        weights.checked_add(*units).ok_or_else(overflow)?,
                    )
                }
                Op::Conv2d {
                    filters,
                    kernel,
                    stride,
                    padding,
                } => {
                    let Shape::Image {
                        channels,
                        height,
                        width,
                    } = shape
                    else {
                        return Err(chain("an image (channels × height × width)", shape));
                    };
                    let out = |side: u64| -> Result<u64, SpecError> {
                        let padded = side + 2 * padding;
                        if *kernel > padded {
                            return Err(SpecError::KernelTooLarge {
                                index,
                                name: name.clone(),
                                kernel: *kernel,
                                side: padded,
                            });
                        }
                        Ok((padded - kernel) / stride + 1)
                    };
                    let (h, w) = (out(height)?, out(width)?);
                    let per_filter = channels
                        .checked_mul(*kernel)
                        .and_then(|v| v.checked_mul(*kernel))
                        .ok_or_else(overflow)?;
                    let weights = per_filter.checked_mul(*filters).ok_or_else(overflow)?;
                    (
                        Shape::Image {
                            channels: *filters,
                            height: h,
                            width: w,
                        },
                        weights.checked_add(*filters).ok_or_else(overflow)?,
                    )
                }
                Op::MaxPool2d { kernel, stride } | Op::AvgPool2d { kernel, stride } => {
                    let Shape::Image {
                        channels,
                        height,
                        width,
                    } = shape
                    else {
                        return Err(chain("an image (channels × height × width)", shape));
                    };
                    let side = height.min(width);
                    if *kernel > side {
                        return Err(SpecError::KernelTooLarge {
                            index,
                            name: name.clone(),
                            kernel: *kernel,
                            side,
                        });
                    }
                    (
                        Shape::Image {
                            channels,
                            height: (height - kernel) / stride + 1,
                            width: (width - kernel) / stride + 1,
                        },
                        0,
                    )
                }
                Op::Flatten => (Shape::Vector(shape.elements()), 0),
                Op::Relu | Op::Gelu | Op::Tanh | Op::Sigmoid | Op::Dropout { .. } => (shape, 0),
                // A scale and a shift per value of a row.
                Op::LayerNorm { .. } => (shape, shape.elements().checked_mul(2).ok_or_else(overflow)?),
                Op::Add { from } => match by_name.get(from.as_str()) {
                    Some(found) if *found == shape => (shape, 0),
                    found => {
                        return Err(SpecError::Add {
                            index,
                            name,
                            from: from.clone(),
                            shape,
                            found: found.copied(),
                        })
                    }
                },
            };
            total = total.checked_add(parameters).ok_or_else(overflow)?;
            if total > MAX_PARAMETERS {
                return Err(overflow());
            }
            by_name.insert(layer.name.as_str(), output);
            rows.push(LayerSummary {
                name: layer.name.clone(),
                kind: layer.op.kind(),
                output,
                parameters,
            });
            shape = output;
        }
        let fits = match (self.loss, shape) {
            (Loss::SoftmaxCrossEntropy, Shape::Vector(n)) => n >= 2,
            (Loss::MeanSquaredError | Loss::BinaryCrossEntropy, Shape::Vector(n)) => n == 1,
            _ => false,
        };
        if !fits {
            let needs = match self.loss {
                Loss::SoftmaxCrossEntropy => "a vector of one logit per class (2 or more)",
                Loss::MeanSquaredError => "a vector of one value",
                Loss::BinaryCrossEntropy => "a vector of one logit",
            };
            return Err(SpecError::Loss {
                loss: self.loss.name(),
                needs,
                got: shape,
            });
        }
        Ok(rows)
    }

    /// Weights and biases in all.
    pub fn parameters(&self) -> Result<u64, SpecError> {
        Ok(self.summary()?.iter().map(|r| r.parameters).sum())
    }

    /// The canonical bytes: compact JSON with every default filled in and every layer named.
    /// Two descriptions that mean the same model have the same bytes.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a model graph serialises")
    }

    /// The Model asset's content hash.
    pub fn content_hash(&self) -> [u8; 32] {
        *blake3::hash(&self.canonical_bytes()).as_bytes()
    }

    /// Checks the description against a dataset: its encoded width (`input_width`), and either
    /// its class count (`Some`) or a numeric target (`None`).
    pub fn check_dataset(&self, input_width: u64, classes: Option<usize>) -> Result<(), SpecError> {
        let shape = self.input.shape();
        if shape.elements() != input_width {
            return Err(SpecError::InputWidth {
                view: shape.to_string(),
                elements: shape.elements(),
                width: input_width,
            });
        }
        let outputs = match self.summary()?.last().map(|r| r.output) {
            Some(Shape::Vector(n)) => n,
            _ => 0,
        };
        let has = match classes {
            Some(k) => format!("{k} classes"),
            None => "a numeric target".to_string(),
        };
        let ok = match (self.loss, classes) {
            (Loss::SoftmaxCrossEntropy, Some(k)) => k as u64 == outputs,
            (Loss::BinaryCrossEntropy, Some(k)) => k == 2,
            (Loss::MeanSquaredError, None) => true,
            _ => false,
        };
        if ok {
            return Ok(());
        }
        let needs = match self.loss {
            Loss::SoftmaxCrossEntropy => format!("{outputs} classes"),
            Loss::BinaryCrossEntropy => "2 classes".to_string(),
            Loss::MeanSquaredError => "a numeric target".to_string(),
        };
        Err(SpecError::LabelKind {
            loss: self.loss.name(),
            needs,
            has,
        })
    }

    /// The fixed shape the grid's kernels train today, when the graph is one of them: one dense
    /// layer (softmax or linear regression), or dense → relu → dense.
    pub fn as_shape(&self) -> Option<ModelShape> {
        let InputView::Features(features) = self.input else {
            return None;
        };
        let features = u32::try_from(features).ok()?;
        let ops: Vec<&Op> = self.layers.iter().map(|l| &l.op).collect();
        let units = |n: u64| u32::try_from(n).ok();
        match (self.loss, ops.as_slice()) {
            (Loss::SoftmaxCrossEntropy, [Op::Dense { units: classes }]) => {
                Some(ModelShape::SoftmaxRegression {
                    features,
                    classes: units(*classes)?,
                })
            }
            (
                Loss::SoftmaxCrossEntropy,
                [Op::Dense { units: hidden }, Op::Relu, Op::Dense { units: classes }],
            ) => Some(ModelShape::Mlp {
                features,
                hidden: units(*hidden)?,
                classes: units(*classes)?,
            }),
            (Loss::MeanSquaredError, [Op::Dense { units: 1 }]) => {
                Some(ModelShape::LinearRegression { features })
            }
            _ => None,
        }
    }

    /// The graph of one of the fixed shapes.
    pub fn of_shape(name: &str, shape: ModelShape) -> Self {
        let dense = |units: u32, index: usize| Layer {
            name: format!("dense{index}"),
            op: Op::Dense {
                units: u64::from(units),
            },
        };
        let (layers, loss) = match shape {
            ModelShape::SoftmaxRegression { classes, .. } => {
                (vec![dense(classes, 1)], Loss::SoftmaxCrossEntropy)
            }
            ModelShape::Mlp { hidden, classes, .. } => (
                vec![
                    dense(hidden, 1),
                    Layer {
                        name: "relu2".into(),
                        op: Op::Relu,
                    },
                    dense(classes, 3),
                ],
                Loss::SoftmaxCrossEntropy,
            ),
            ModelShape::LinearRegression { .. } => (vec![dense(1, 1)], Loss::MeanSquaredError),
        };
        ModelGraph {
            name: name.to_string(),
            input: InputView::Features(u64::from(shape.features())),
            layers,
            loss,
            training: TrainingDefaults::default(),
        }
    }

    /// The layers as a summary table: name, kind, output shape, parameters, and the total.
    pub fn render_summary(&self) -> Result<String, SpecError> {
        let rows = self.summary()?;
        let mut out = format!(
            "{}: input {}, loss {}\n{:<20} {:<12} {:>16} {:>14}\n",
            self.name,
            self.input.shape(),
            self.loss.name(),
            "layer",
            "kind",
            "output",
            "parameters"
        );
        for row in &rows {
            out.push_str(&format!(
                "{:<20} {:<12} {:>16} {:>14}\n",
                row.name,
                row.kind,
                row.output.to_string(),
                row.parameters
            ));
        }
        let total: u64 = rows.iter().map(|r| r.parameters).sum();
        out.push_str(&format!("{:<20} {:<12} {:>16} {:>14}\n", "total", "", "", total));
        Ok(out)
    }
}

/// The graph a Model asset's manifest describes: a description's canonical JSON, or (for assets
/// minted before descriptions existed) a fixed shape's JSON.
pub fn of_manifest(manifest: &str) -> Result<ModelGraph, SpecError> {
    if let Ok(shape) = serde_json::from_str::<ModelShape>(manifest) {
        return Ok(ModelGraph::of_shape("model", shape));
    }
    parse(manifest)
}

#[cfg(test)]
#[path = "model_graph_tests.rs"]
mod tests;
