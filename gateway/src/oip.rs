//! The Open Inference Protocol v2 ("KServe v2") REST bodies: tensors as `name`, `shape`,
//! `datatype` and flat row-major `data`, and the conversion between a request's tensors and the
//! raw rows a model's preprocessing encodes — one input tensor per imported column (numbers as
//! FP32/FP64/INT*, categories and dates as BYTES), or, for all-numeric models, one 2-D tensor
//! whose columns are the model's inputs in metadata order.

use aic_kernels::inference::{Prediction, Preprocessor};
use aic_protocol::encoding::FeatureEncoding;
use aic_protocol::model_graph::Loss;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// An inference request body.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferRequestBody {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Option<Value>,
    pub inputs: Vec<InputTensor>,
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Option<Value>,
    pub data: Value,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<Value>,
}

#[derive(Clone, Debug, Serialize)]
pub struct OutputTensor {
    pub name: String,
    pub shape: Vec<u64>,
    pub datatype: &'static str,
    pub data: Value,
}

/// Why a request's tensors are not the model's inputs: each a 400 naming the problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    #[error("input {0:?} is not one of the model's inputs (see GET /v2/models/{{name}})")]
    UnknownInput(String),
    #[error("input {0:?} is missing")]
    MissingInput(String),
    #[error("input {name:?}: datatype {datatype} (this input takes {wants})")]
    Datatype {
        name: String,
        datatype: String,
        wants: &'static str,
    },
    #[error("input {name:?}: shape {shape:?} ({why})")]
    Shape {
        name: String,
        shape: Vec<i64>,
        why: String,
    },
    #[error("input {name:?}: element {index}: {why}")]
    Element { name: String, index: usize, why: String },
    #[error("the inputs disagree on the number of rows ({first} and {other})")]
    Rows { first: usize, other: usize },
    #[error("{rows} rows in one request; at most {max}")]
    TooManyRows { rows: usize, max: usize },
    #[error("no rows")]
    NoRows,
    #[error("output {0:?} is not one of the model's outputs")]
    UnknownOutput(String),
}

const NUMERIC_TYPES: &[&str] = &[
    "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
];

/// Whether a column takes numbers (else text: BYTES).
fn is_numeric(encoding: &FeatureEncoding) -> bool {
    matches!(encoding, FeatureEncoding::Numeric { .. })
}

/// The model's inputs as metadata lists them.
pub fn input_metadata(pre: &Preprocessor) -> Vec<Value> {
    pre.features()
        .iter()
        .map(|f| {
            let (datatype, meaning) = match &f.encoding {
                FeatureEncoding::Numeric { .. } => {
                    ("FP64", "a number, standardised by the import's mean and std")
                }
                FeatureEncoding::Date { .. } => ("BYTES", "a date YYYY-MM-DD"),
                FeatureEncoding::Categorical { .. } => (
                    "BYTES",
                    "a category, one-hot over the import's categories (unseen: <unknown>)",
                ),
            };
            json!({"name": f.name, "datatype": datatype, "shape": [-1], "parameters": {"meaning": meaning}})
        })
        .collect()
}

/// The model's outputs as metadata lists them.
pub fn output_metadata(pre: &Preprocessor) -> Vec<Value> {
    match pre.loss() {
        Loss::MeanSquaredError => vec![json!({"name": "prediction", "datatype": "FP64", "shape": [-1]})],
        _ => vec![
            json!({"name": "label", "datatype": "BYTES", "shape": [-1]}),
            json!({"name": "probabilities", "datatype": "FP32", "shape": [-1, pre.output_width().max(2)]}),
        ],
    }
}

/// One cell of a JSON `data` array as the raw text the importer reads.
fn cell(name: &str, index: usize, value: &Value, numeric: bool) -> Result<String, TensorError> {
    let element = |why: &str| TensorError::Element {
        name: name.to_string(),
        index,
        why: why.to_string(),
    };
    match value {
        Value::Number(n) if numeric => {
            let v = n.as_f64().ok_or_else(|| element("not a number"))?;
            if !v.is_finite() {
                return Err(element("not a finite number"));
            }
            Ok(n.to_string())
        }
        // JSON has no NaN; a string "NaN" in a numeric tensor is refused too.
        Value::String(s) if !numeric => Ok(s.clone()),
        Value::Null => Err(element(
            "null is not a value (send the dataset's missing-value marker as BYTES, or leave the row out)",
        )),
        _ if numeric => Err(element("a number was expected")),
        _ => Err(element("a string was expected")),
    }
}

/// Raw rows as the importer reads them: the column names, and each row's cells.
pub type RawRows = (Vec<String>, Vec<Vec<Option<String>>>);

/// The tensor's flat data, however nested (the protocol allows both flat and nested arrays).
fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        other => out.push(other),
    }
}

/// Raw rows (header = the model's columns) from the request's tensors.
pub fn rows_of(inputs: &[InputTensor], pre: &Preprocessor, max_rows: usize) -> Result<RawRows, TensorError> {
    let features = pre.features();
    let header: Vec<String> = features.iter().map(|f| f.name.clone()).collect();
    // One 2-D tensor holding every column (numeric models only).
    if let [only] = inputs {
        if only.shape.len() == 2 && features.len() > 1 && !header.contains(&only.name) {
            return matrix_rows(only, pre, header, max_rows);
        }
    }
    let mut columns: Vec<Option<Vec<String>>> = vec![None; features.len()];
    let mut rows: Option<usize> = None;
    for input in inputs {
        let at = header
            .iter()
            .position(|h| h == &input.name)
            .ok_or_else(|| TensorError::UnknownInput(input.name.clone()))?;
        if columns[at].is_some() {
            return Err(TensorError::Shape {
                name: input.name.clone(),
                shape: input.shape.clone(),
                why: "sent twice".into(),
            });
        }
        let numeric = is_numeric(&features[at].encoding);
        check_datatype(input, numeric)?;
        let n = column_rows(input)?;
        match rows {
            Some(first) if first != n => return Err(TensorError::Rows { first, other: n }),
            _ => rows = Some(n),
        }
        if n > max_rows {
            return Err(TensorError::TooManyRows {
                rows: n,
                max: max_rows,
            });
        }
        let mut flat = Vec::with_capacity(n);
        flatten(&input.data, &mut flat);
        if flat.len() != n {
            return Err(TensorError::Shape {
                name: input.name.clone(),
                shape: input.shape.clone(),
                why: format!("{} values in data", flat.len()),
            });
        }
        columns[at] = Some(
            flat.iter()
                .enumerate()
                .map(|(i, v)| cell(&input.name, i, v, numeric))
                .collect::<Result<_, _>>()?,
        );
    }
    if let Some(missing) = columns.iter().position(Option::is_none) {
        return Err(TensorError::MissingInput(header[missing].clone()));
    }
    let n = rows.ok_or(TensorError::NoRows)?;
    if n == 0 {
        return Err(TensorError::NoRows);
    }
    let columns: Vec<Vec<String>> = columns.into_iter().map(|c| c.expect("checked")).collect();
    let table = (0..n)
        .map(|r| columns.iter().map(|c| Some(c[r].clone())).collect())
        .collect();
    Ok((header, table))
}

fn check_datatype(input: &InputTensor, numeric: bool) -> Result<(), TensorError> {
    let fits = if numeric {
        NUMERIC_TYPES.contains(&input.datatype.as_str())
    } else {
        input.datatype == "BYTES"
    };
    if fits {
        Ok(())
    } else {
        Err(TensorError::Datatype {
            name: input.name.clone(),
            datatype: input.datatype.clone(),
            wants: if numeric {
                "FP32, FP64 or an integer type"
            } else {
                "BYTES"
            },
        })
    }
}

/// Rows of a column tensor: shape [N] or [N, 1].
fn column_rows(input: &InputTensor) -> Result<usize, TensorError> {
    match input.shape.as_slice() {
        [n] | [n, 1] if *n >= 0 => Ok(*n as usize),
        _ => Err(TensorError::Shape {
            name: input.name.clone(),
            shape: input.shape.clone(),
            why: "a column is [N] or [N, 1]".into(),
        }),
    }
}

/// A single [N, columns] tensor of numbers, columns in the model's input order.
fn matrix_rows(
    input: &InputTensor,
    pre: &Preprocessor,
    header: Vec<String>,
    max_rows: usize,
) -> Result<RawRows, TensorError> {
    let features = pre.features();
    if let Some(text) = features.iter().find(|f| !is_numeric(&f.encoding)) {
        return Err(TensorError::MissingInput(format!(
            "{} (a model with text columns takes one tensor per column)",
            text.name
        )));
    }
    check_datatype(input, true)?;
    let (n, width) = match input.shape.as_slice() {
        [n, w] if *n >= 0 && *w as usize == features.len() => (*n as usize, *w as usize),
        _ => {
            return Err(TensorError::Shape {
                name: input.name.clone(),
                shape: input.shape.clone(),
                why: format!("one tensor of every input is [N, {}]", features.len()),
            })
        }
    };
    if n == 0 {
        return Err(TensorError::NoRows);
    }
    if n > max_rows {
        return Err(TensorError::TooManyRows {
            rows: n,
            max: max_rows,
        });
    }
    let mut flat = Vec::with_capacity(n * width);
    flatten(&input.data, &mut flat);
    if flat.len() != n * width {
        return Err(TensorError::Shape {
            name: input.name.clone(),
            shape: input.shape.clone(),
            why: format!("{} values in data", flat.len()),
        });
    }
    let rows = flat
        .chunks(width)
        .enumerate()
        .map(|(r, row)| {
            row.iter()
                .enumerate()
                .map(|(c, v)| cell(&input.name, r * width + c, v, true).map(Some))
                .collect()
        })
        .collect::<Result<_, _>>()?;
    Ok((header, rows))
}

/// Output names the model gives.
fn output_names(pre: &Preprocessor) -> &'static [&'static str] {
    match pre.loss() {
        Loss::MeanSquaredError => &["prediction"],
        _ => &["label", "probabilities"],
    }
}

/// Refuses a request for outputs the model does not give, before any work.
pub fn check_requested(pre: &Preprocessor, requested: Option<&[RequestedOutput]>) -> Result<(), TensorError> {
    for r in requested.unwrap_or_default() {
        if !output_names(pre).contains(&r.name.as_str()) {
            return Err(TensorError::UnknownOutput(r.name.clone()));
        }
    }
    Ok(())
}

/// The response's output tensors, the ones asked for (all when none are named).
pub fn outputs_of(
    answers: &[Prediction],
    pre: &Preprocessor,
    requested: Option<&[RequestedOutput]>,
) -> Result<Vec<OutputTensor>, TensorError> {
    let n = answers.len() as u64;
    let mut all = Vec::new();
    match pre.loss() {
        Loss::MeanSquaredError => {
            let values: Vec<f64> = answers
                .iter()
                .map(|a| match a {
                    Prediction::Value(v) => *v,
                    Prediction::Class { index, .. } => *index as f64,
                })
                .collect();
            all.push(OutputTensor {
                name: "prediction".into(),
                shape: vec![n],
                datatype: "FP64",
                data: json!(values),
            });
        }
        _ => {
            let mut labels = Vec::with_capacity(answers.len());
            let mut probabilities = Vec::new();
            let mut width = 0;
            for answer in answers {
                if let Prediction::Class {
                    label,
                    probabilities: p,
                    ..
                } = answer
                {
                    labels.push(label.clone());
                    width = p.len();
                    probabilities.extend_from_slice(p);
                }
            }
            all.push(OutputTensor {
                name: "label".into(),
                shape: vec![n],
                datatype: "BYTES",
                data: json!(labels),
            });
            all.push(OutputTensor {
                name: "probabilities".into(),
                shape: vec![n, width as u64],
                datatype: "FP32",
                data: json!(probabilities),
            });
        }
    }
    match requested {
        None => Ok(all),
        Some(requested) => requested
            .iter()
            .map(|r| {
                all.iter()
                    .find(|o| o.name == r.name)
                    .cloned()
                    .ok_or_else(|| TensorError::UnknownOutput(r.name.clone()))
            })
            .collect(),
    }
}

#[cfg(test)]
#[path = "oip_tests.rs"]
mod tests;
