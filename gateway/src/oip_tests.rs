//! A request's tensors as raw rows, and answers as output tensors: every bad tensor refused with
//! its own error before any work.

use aic_protocol::encoding::{Feature, FeatureEncoding, MissingPolicy};
use aic_protocol::manifest::Manifest;
use aic_protocol::messages::{ModelShape, TaskModel};
use serde_json::json;

use super::*;

/// mass (a number) and island (two categories): a 2-class softmax over 1 + 3 encoded columns.
fn preprocessor() -> Preprocessor {
    let mut manifest: Manifest = serde_json::from_value(json!({
        "name": "birds", "rows": 0, "label": "species", "classes": ["Adelie", "Gentoo"], "seed": 1,
        "test_fraction": 0.2, "shard_rows": 10, "train": [], "test": [],
        "features": [], "null_markers": ["NA"], "input_width": 4,
    }))
    .unwrap();
    manifest.features = vec![
        Feature {
            name: "mass".into(),
            encoding: FeatureEncoding::Numeric { mean: 10.0, std: 2.0 },
            missing: MissingPolicy::Refuse,
            fill: None,
        },
        Feature {
            name: "island".into(),
            encoding: FeatureEncoding::Categorical {
                categories: vec!["Biscoe".into(), "Dream".into()],
            },
            missing: MissingPolicy::Refuse,
            fill: None,
        },
    ];
    let model = TaskModel::Shape(ModelShape::SoftmaxRegression {
        features: 4,
        classes: 2,
    });
    Preprocessor::new(&model, &manifest).unwrap()
}

fn input(value: serde_json::Value) -> Vec<InputTensor> {
    serde_json::from_value(value).unwrap()
}

#[test]
fn one_tensor_per_column_becomes_rows_in_the_models_column_order() {
    let pre = preprocessor();
    let inputs = input(json!([
        {"name": "island", "shape": [2], "datatype": "BYTES", "data": ["Dream", "Biscoe"]},
        {"name": "mass", "shape": [2, 1], "datatype": "FP32", "data": [[12.5], [8]]},
    ]));
    let (header, rows) = rows_of(&inputs, &pre, 10).unwrap();
    assert_eq!(header, ["mass", "island"]);
    assert_eq!(rows[0], [Some("12.5".to_string()), Some("Dream".to_string())]);
    assert_eq!(rows[1], [Some("8".to_string()), Some("Biscoe".to_string())]);
    let x = pre.encode(&header, &rows).unwrap();
    assert_eq!(x.data[..4], [1.25, 0.0, 1.0, 0.0]);
}

#[test]
fn bad_tensors_are_refused_each_with_its_own_error() {
    let pre = preprocessor();
    let refuse = |value: serde_json::Value| rows_of(&input(value), &pre, 3).unwrap_err();
    let mass =
        |data: serde_json::Value| json!({"name": "mass", "shape": [1], "datatype": "FP64", "data": data});
    let island = json!({"name": "island", "shape": [1], "datatype": "BYTES", "data": ["Dream"]});
    assert!(matches!(refuse(json!([mass(json!([1]))])), TensorError::MissingInput(name) if name == "island"));
    assert!(matches!(
        refuse(json!([mass(json!([1])), island, {"name": "beak", "shape": [1], "datatype": "FP32", "data": [1]}])),
        TensorError::UnknownInput(name) if name == "beak"
    ));
    assert!(matches!(
        refuse(json!([{"name": "mass", "shape": [1], "datatype": "BYTES", "data": ["1"]}, island])),
        TensorError::Datatype { .. }
    ));
    assert!(matches!(
        refuse(json!([mass(json!(["heavy"])), island])),
        TensorError::Element { index: 0, .. }
    ));
    assert!(matches!(
        refuse(json!([mass(json!([null])), island])),
        TensorError::Element { .. }
    ));
    assert!(matches!(
        refuse(json!([mass(json!([1, 2])), island])),
        TensorError::Shape { .. }
    ));
    assert!(matches!(
        refuse(json!([{"name": "mass", "shape": [2], "datatype": "FP64", "data": [1, 2]}, island])),
        TensorError::Rows { first: 2, other: 1 }
    ));
    assert!(matches!(
        refuse(json!([{"name": "mass", "shape": [2, 2], "datatype": "FP64", "data": [1, 2, 3, 4]}, island])),
        TensorError::Shape { .. }
    ));
    let four = json!([1, 2, 3, 4]);
    assert!(matches!(
        refuse(json!([
            {"name": "mass", "shape": [4], "datatype": "FP64", "data": four},
            {"name": "island", "shape": [4], "datatype": "BYTES", "data": ["a", "b", "c", "d"]}
        ])),
        TensorError::TooManyRows { rows: 4, max: 3 }
    ));
    assert!(matches!(
        refuse(
            json!([{"name": "mass", "shape": [0], "datatype": "FP64", "data": []}, {"name": "island", "shape": [0], "datatype": "BYTES", "data": []}])
        ),
        TensorError::NoRows
    ));
    // A text column cannot travel in one numeric matrix.
    assert!(matches!(
        refuse(json!([{"name": "input-0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}])),
        TensorError::MissingInput(_)
    ));
    // An unknown output is refused before any work.
    let outputs: Vec<RequestedOutput> = serde_json::from_value(json!([{"name": "logits"}])).unwrap();
    assert_eq!(
        check_requested(&pre, Some(&outputs)),
        Err(TensorError::UnknownOutput("logits".into()))
    );
}

#[test]
fn answers_become_labels_and_probabilities_or_only_what_was_asked() {
    let pre = preprocessor();
    let outputs = aic_kernels::Matrix::new(2, 2, vec![2.0, 0.0, -1.0, 1.0]).unwrap();
    let answers = pre.answers(&outputs).unwrap();
    let all = outputs_of(&answers, &pre, None).unwrap();
    assert_eq!(all[0].name, "label");
    assert_eq!(all[0].data, json!(["Adelie", "Gentoo"]));
    assert_eq!(all[1].shape, [2, 2]);
    let asked: Vec<RequestedOutput> = serde_json::from_value(json!([{"name": "label"}])).unwrap();
    let only = outputs_of(&answers, &pre, Some(&asked)).unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].datatype, "BYTES");
}
