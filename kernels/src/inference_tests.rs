//! Raw rows through the predictor: encoded as the import encodes them, answered as the model's
//! loss says, and refused with the row and column named.

use aic_protocol::encoding::{CellError, FeatureEncoding, MissingPolicy, MISSING_LEVEL};
use aic_protocol::manifest::Target;
use aic_protocol::messages::ModelShape;

use super::*;

fn feature(name: &str, encoding: FeatureEncoding, missing: MissingPolicy, fill: Option<&str>) -> Feature {
    Feature {
        name: name.into(),
        encoding,
        missing,
        fill: fill.map(String::from),
    }
}

/// mass (numeric, mean 10, std 2, missing → mean) and island (two categories, a missing level).
fn manifest(classes: &[&str], target: Option<Target>) -> Manifest {
    let json = serde_json::json!({
        "name": "birds", "rows": 0, "label": "species", "classes": classes, "seed": 1,
        "test_fraction": 0.2, "shard_rows": 10, "train": [], "test": [],
        "features": [], "null_markers": ["NA"], "input_width": 5,
    });
    let mut manifest: Manifest = serde_json::from_value(json).unwrap();
    manifest.features = vec![
        feature(
            "mass",
            FeatureEncoding::Numeric { mean: 10.0, std: 2.0 },
            MissingPolicy::Mean,
            Some("10"),
        ),
        feature(
            "island",
            FeatureEncoding::Categorical {
                categories: vec![MISSING_LEVEL.into(), "Biscoe".into(), "Dream".into()],
            },
            MissingPolicy::Level,
            None,
        ),
    ];
    manifest.target = target;
    manifest
}

fn header() -> Vec<String> {
    ["island", "ignored", "mass"].map(String::from).to_vec()
}

fn row(island: Option<&str>, mass: Option<&str>) -> Vec<Option<String>> {
    vec![island.map(String::from), Some("x".into()), mass.map(String::from)]
}

#[test]
fn rows_are_encoded_as_the_import_encodes_them() {
    let shape = ModelShape::SoftmaxRegression {
        features: 5,
        classes: 2,
    };
    let predictor =
        Predictor::new(&TaskModel::Shape(shape), &[0.0; 12], &manifest(&["a", "b"], None)).unwrap();
    assert_eq!(predictor.columns(), ["mass", "island"]);
    let x = predictor
        .encode(
            &header(),
            &[
                row(Some("Dream"), Some("14")),
                row(Some("NA"), None),
                row(Some("Torgersen"), Some("8")),
            ],
        )
        .unwrap();
    // mass standardised, then island one-hot: <missing>, Biscoe, Dream, <unknown>.
    assert_eq!(
        x.data,
        [
            2.0, 0.0, 0.0, 1.0, 0.0, //
            0.0, 1.0, 0.0, 0.0, 0.0, //
            -1.0, 0.0, 0.0, 0.0, 1.0,
        ]
    );
}

#[test]
fn a_classifier_answers_probabilities_and_the_class_name() {
    let shape = ModelShape::SoftmaxRegression {
        features: 5,
        classes: 2,
    };
    // W (5 × 2): class b grows with mass; class a is favoured on Dream. b = (0, 0).
    let mut flat = vec![0.0; 12];
    flat[1] = 1.0; // mass → b
    flat[3 * 2] = 3.0; // Dream → a
    let predictor = Predictor::new(&TaskModel::Shape(shape), &flat, &manifest(&["a", "b"], None)).unwrap();
    let answers = predictor
        .predict(
            &header(),
            &[row(Some("Biscoe"), Some("14")), row(Some("Dream"), Some("10"))],
        )
        .unwrap();
    let Prediction::Class {
        index,
        label,
        probabilities,
    } = &answers[0]
    else {
        panic!("{answers:?}")
    };
    assert_eq!((*index, label.as_str()), (1, "b"));
    // logits (0, 2): p(b) = 1 / (1 + e^-2).
    assert!((probabilities[1] - 1.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-6);
    assert!((probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    assert!(matches!(&answers[1], Prediction::Class { label, .. } if label == "a"));
}

#[test]
fn a_regression_answers_in_the_targets_units() {
    let shape = ModelShape::LinearRegression { features: 5 };
    // y_std = 0.5 · mass_std + 0.25: mass 14 → 1.25 → 4000 + 1.25 · 800.
    let flat = [0.5, 0.0, 0.0, 0.0, 0.0, 0.25];
    let target = Target {
        mean: 4000.0,
        std: 800.0,
    };
    let predictor = Predictor::new(&TaskModel::Shape(shape), &flat, &manifest(&[], Some(target))).unwrap();
    let answers = predictor
        .predict(&header(), &[row(Some("Dream"), Some("14"))])
        .unwrap();
    assert_eq!(answers, [Prediction::Value(5000.0)]);
}

#[test]
fn bad_rows_are_refused_with_the_row_and_column_named() {
    let shape = ModelShape::LinearRegression { features: 5 };
    let predictor = Predictor::new(&TaskModel::Shape(shape), &[0.0; 6], &manifest(&[], None)).unwrap();
    let error = predictor
        .predict(
            &header(),
            &[row(Some("Dream"), Some("14")), row(Some("Dream"), Some("heavy"))],
        )
        .unwrap_err();
    assert!(
        matches!(
            &error,
            KernelError::Input(InputError::Cell { row: 1, column, error: CellError::NotANumber(_) })
                if column == "mass"
        ),
        "{error}"
    );
    let error = predictor
        .predict(&["mass".to_string()], &[vec![Some("1".into())]])
        .unwrap_err();
    assert!(
        matches!(&error, KernelError::Input(InputError::MissingColumn(column)) if column == "island"),
        "{error}"
    );
    let error = predictor.predict(&header(), &[vec![None]]).unwrap_err();
    assert!(
        matches!(
            &error,
            KernelError::Input(InputError::RowWidth {
                row: 0,
                cells: 1,
                header: 3
            })
        ),
        "{error}"
    );
    // Weights that do not fit the model, and a dataset the model does not read.
    assert!(Predictor::new(&TaskModel::Shape(shape), &[0.0; 5], &manifest(&[], None)).is_err());
    let narrow = ModelShape::LinearRegression { features: 4 };
    assert!(Predictor::new(&TaskModel::Shape(narrow), &[0.0; 5], &manifest(&[], None)).is_err());
}
