//! Exported files checked by an independent runtime: the onnx package's full checker and
//! onnxruntime (`ops/onnx-predict.py`) answer raw rows as the grid's predictor does, to 1e-4, for
//! a graph with every layer kind and for each loss; and the builder refuses what does not fit.

use std::path::Path;
use std::process::Command;

use aic_kernels::inference::{Prediction, Predictor};
use aic_protocol::encoding::{Feature, FeatureEncoding, MissingPolicy, MISSING_LEVEL};
use aic_protocol::manifest::{Manifest, Target};
use aic_protocol::messages::TaskModel;

use super::*;

/// 12 numbers (two fill missing values with their mean), a date and a three-level category: 16
/// input columns, readable as a 1×4×4 image.
fn manifest(classes: &[&str], target: Option<Target>) -> Manifest {
    let json = json!({
        "name": "mixed", "rows": 0, "label": "y", "classes": classes, "seed": 1,
        "test_fraction": 0.2, "shard_rows": 10, "train": [], "test": [],
        "features": [], "null_markers": ["", "NA"], "input_width": 16,
    });
    let mut manifest: Manifest = serde_json::from_value(json).unwrap();
    for i in 0..12 {
        manifest.features.push(Feature {
            name: format!("n{i}"),
            encoding: FeatureEncoding::Numeric {
                mean: i as f64 - 3.0,
                std: 1.5 + i as f64 / 4.0,
            },
            missing: if i < 2 {
                MissingPolicy::Mean
            } else {
                MissingPolicy::Refuse
            },
            fill: (i < 2).then(|| format!("{}", i as f64 - 2.5)),
        });
    }
    manifest.features.push(Feature {
        name: "laid".into(),
        encoding: FeatureEncoding::Date {
            mean: 13_800.0,
            std: 40.0,
        },
        missing: MissingPolicy::Median,
        fill: Some("2007-11-20".into()),
    });
    manifest.features.push(Feature {
        name: "island".into(),
        encoding: FeatureEncoding::Categorical {
            categories: vec![MISSING_LEVEL.into(), "Biscoe".into()],
        },
        missing: MissingPolicy::Level,
        fill: None,
    });
    manifest.target = target;
    manifest
}

/// Every layer kind on the 1×4×4 view.
const EVERY_LAYER: &str = r#"
name = "every-layer"
input = { image = [1, 4, 4] }
loss = "LOSS"

[[layer]]
name = "c1"
kind = "conv2d"
filters = 3
kernel = 3
padding = 1

[[layer]]
kind = "gelu"

[[layer]]
name = "c2"
kind = "conv2d"
filters = 3
kernel = 3
padding = 1

[[layer]]
kind = "add"
from = "c1"

[[layer]]
kind = "layer_norm"

[[layer]]
kind = "max_pool2d"
kernel = 2

[[layer]]
kind = "avg_pool2d"
kernel = 2
stride = 1

[[layer]]
kind = "flatten"

[[layer]]
kind = "dense"
units = 8

[[layer]]
kind = "tanh"

[[layer]]
kind = "dropout"
rate = 0.2

[[layer]]
kind = "dense"
units = 6

[[layer]]
kind = "relu"

[[layer]]
kind = "dense"
units = 5

[[layer]]
kind = "sigmoid"

[[layer]]
kind = "layer_norm"

[[layer]]
kind = "dense"
units = OUTPUTS
"#;

/// Seeded weights with every value (biases, γ and β too) away from its initial constant.
fn weights_for(model: &TaskModel) -> Vec<f32> {
    let trainable = aic_kernels::Trainable::of(model).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    trainable
        .init(7)
        .flat()
        .into_iter()
        .map(|w| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            w + ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.4
        })
        .collect()
}

/// Rows as a data owner has them: dates as text, missing values as `NA` or empty, a category
/// the import never saw.
fn raw_rows(count: usize) -> (Vec<String>, Vec<Vec<Option<String>>>) {
    let mut header: Vec<String> = (0..12).map(|i| format!("n{i}")).collect();
    header.extend(["laid".to_string(), "island".to_string()]);
    let islands = ["Biscoe", "Dream", "NA", "", "Biscoe"];
    let rows = (0..count)
        .map(|r| {
            let mut row: Vec<Option<String>> = (0..12)
                .map(|i| {
                    let missing = i < 2 && (r + i) % 4 == 0;
                    Some(if missing {
                        "NA".into()
                    } else {
                        format!("{:.3}", ((r * 7 + i * 3) % 11) as f64 * 0.6 - 2.0 + i as f64)
                    })
                })
                .collect();
            row.push(Some(if r % 5 == 3 {
                "NA".into()
            } else {
                format!("2007-11-{:02}", 1 + (r * 3) % 28)
            }));
            row.push(Some(islands[r % islands.len()].to_string()));
            row
        })
        .collect();
    (header, rows)
}

/// The same rows as the file reads them: dates as days since 1970-01-01.
fn onnx_csv(header: &[String], rows: &[Vec<Option<String>>]) -> String {
    let mut text = header.join(",") + "\n";
    for row in rows {
        let cells: Vec<String> = header
            .iter()
            .zip(row)
            .map(|(name, cell)| {
                let cell = cell.clone().unwrap_or_default();
                match (name.as_str(), parse_date(&cell)) {
                    ("laid", Some(days)) => days.to_string(),
                    _ => cell,
                }
            })
            .collect();
        text += &(cells.join(",") + "\n");
    }
    text
}

/// What onnxruntime answers, one JSON value per row.
fn onnxruntime_answers(dir: &Path, bytes: &[u8], csv: &str) -> Vec<serde_json::Value> {
    let (model, rows) = (dir.join("model.onnx"), dir.join("rows.csv"));
    std::fs::write(&model, bytes).unwrap();
    std::fs::write(&rows, csv).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../ops/onnx-predict.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&model)
        .arg(&rows)
        .output()
        .expect("python3 runs (ops/install-test-deps.sh installs onnx and onnxruntime)");
    assert!(
        out.status.success(),
        "the onnx checker or onnxruntime refused the file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn provenance() -> Provenance {
    Provenance {
        trained_model: "asset".into(),
        dataset_asset: "dataset".into(),
        job: "job".into(),
    }
}

fn check_against_onnxruntime(description: &str, dataset: &Manifest) {
    let model = TaskModel::Graph(description.to_string());
    let weights = weights_for(&model);
    let proto = build(&model, &weights, dataset, &provenance()).unwrap();
    let (header, rows) = raw_rows(23);
    let grid = Predictor::new(&model, &weights, dataset)
        .unwrap()
        .predict(&header, &rows)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let answers = onnxruntime_answers(dir.path(), &encode(&proto), &onnx_csv(&header, &rows));
    assert_eq!(answers.len(), grid.len());
    // The rows must tell the model something: answers that never vary would compare nothing.
    let distinct: std::collections::BTreeSet<String> = answers.iter().map(|a| a.to_string()).collect();
    assert!(
        distinct.len() > grid.len() / 2,
        "answers barely vary: {answers:?}"
    );
    for (r, (ours, theirs)) in grid.iter().zip(&answers).enumerate() {
        match ours {
            Prediction::Class {
                label, probabilities, ..
            } => {
                let got: Vec<f64> = theirs["probabilities"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_f64().unwrap())
                    .collect();
                assert_eq!(got.len(), probabilities.len(), "row {r}");
                for (a, b) in probabilities.iter().zip(&got) {
                    assert!(
                        (*a as f64 - b).abs() <= 1e-4,
                        "row {r}: {probabilities:?} vs {got:?}"
                    );
                }
                assert_eq!(theirs["label"], label.as_str(), "row {r}");
            }
            Prediction::Value(value) => {
                let got = theirs["prediction"].as_f64().unwrap();
                // 1e-4 relative to the target's scale (a mass in grams is in the thousands).
                assert!(
                    (value - got).abs() <= 1e-4 * value.abs().max(1.0),
                    "row {r}: {value} vs {got}"
                );
            }
        }
    }
}

#[test]
fn a_classifier_with_every_layer_kind_answers_as_the_grid_does_in_onnxruntime() {
    let description = EVERY_LAYER
        .replace("LOSS", "softmax_cross_entropy")
        .replace("OUTPUTS", "3");
    check_against_onnxruntime(&description, &manifest(&["Adelie", "Chinstrap", "Gentoo"], None));
}

#[test]
fn a_regression_answers_in_the_targets_units_in_onnxruntime() {
    let description = EVERY_LAYER
        .replace("LOSS", "mean_squared_error")
        .replace("OUTPUTS", "1");
    let target = Target {
        mean: 4201.75,
        std: 801.95,
    };
    check_against_onnxruntime(&description, &manifest(&[], Some(target)));
}

#[test]
fn a_binary_classifier_answers_both_probabilities_in_onnxruntime() {
    let description = EVERY_LAYER
        .replace("LOSS", "binary_cross_entropy")
        .replace("OUTPUTS", "1");
    check_against_onnxruntime(&description, &manifest(&["no", "yes"], None));
}

#[test]
fn the_fixed_shapes_export_as_their_graphs() {
    use aic_protocol::messages::ModelShape;
    let dataset = manifest(&["a", "b", "c", "d"], None);
    let model = TaskModel::Shape(ModelShape::Mlp {
        features: 16,
        hidden: 7,
        classes: 4,
    });
    let weights = weights_for(&model);
    let proto = build(&model, &weights, &dataset, &provenance()).unwrap();
    let decoded = ModelProto::decode(encode(&proto).as_slice()).unwrap();
    assert_eq!(decoded, proto, "the bytes decode to what was built");
    let graph = decoded.graph.unwrap();
    assert_eq!(graph.input.len(), 14, "one input per imported column");
    assert_eq!(
        graph.output.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
        ["probabilities", "label"]
    );
    let classes = decoded
        .metadata_props
        .iter()
        .find(|p| p.key == "classes")
        .unwrap();
    assert_eq!(classes.value, r#"["a","b","c","d"]"#);
}

#[test]
fn weights_or_a_dataset_that_do_not_fit_are_refused() {
    use aic_protocol::messages::ModelShape;
    let dataset = manifest(&["a", "b"], None);
    let model = TaskModel::Shape(ModelShape::SoftmaxRegression {
        features: 16,
        classes: 2,
    });
    let error = build(&model, &[0.0; 33], &dataset, &provenance()).unwrap_err();
    assert!(error.to_string().contains("34 parameters"), "{error}");
    let narrow = TaskModel::Shape(ModelShape::SoftmaxRegression {
        features: 15,
        classes: 2,
    });
    let error = build(&narrow, &[0.0; 32], &dataset, &provenance()).unwrap_err();
    assert!(error.to_string().contains("16 input columns"), "{error}");
}
