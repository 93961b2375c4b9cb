//! Real-world data, as a data owner meets it: both Palmer penguins files imported with the
//! defaults. Column types, missing counts and encodings are checked against an independent
//! reading of the CSV in this test; the raw file's dates, free text and ids are handled instead
//! of refused; and a softmax model trained on the clean file's shards with the grid's own kernels
//! classifies the held-out penguins' species (scikit-learn's logistic regression on one-hot,
//! imputed, standardised features: 0.988 mean accuracy over 5 stratified folds — issue 19).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use aic_kernels::{Backend, Batch, CpuBackend, Matrix, ModelSpec};
use aic_storage_node::encoding::{FeatureEncoding, MissingPolicy, MISSING_LEVEL};
use aic_storage_node::import::{analyse, import_file, read_shard, ImportOptions};
use aic_storage_node::manifest::{Manifest, ShardEntry};
use aic_storage_node::sealing::DatasetKey;
use aic_storage_node::shard_store::ShardStore;
use arrow_array::Array;

fn data(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../storage-node/data/penguins")
        .join(file)
}

/// The clean file read by hand: column → values (`None` where the file says `NA`).
fn read_by_hand() -> (Vec<String>, BTreeMap<String, Vec<Option<String>>>) {
    let text = std::fs::read_to_string(data("penguins.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    let mut columns: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    for line in lines {
        for (name, value) in header.iter().zip(line.split(',')) {
            let value = (value != "NA").then(|| value.to_string());
            columns.entry(name.clone()).or_default().push(value);
        }
    }
    (header, columns)
}

fn mean_and_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, variance.sqrt())
}

#[test]
fn the_clean_file_is_typed_imputed_and_encoded_as_an_independent_reading_says() {
    let (header, columns) = read_by_hand();
    let analysis = analyse(
        &data("penguins.csv"),
        "penguins",
        &ImportOptions::new("species"),
        &|_| {},
    )
    .unwrap();
    assert_eq!(analysis.rows, 344);
    assert_eq!(analysis.classes, ["Adelie", "Chinstrap", "Gentoo"]);
    assert!(analysis.excluded.is_empty(), "{:?}", analysis.excluded);
    let features = analysis.features();
    assert_eq!(
        features.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        header
            .iter()
            .filter(|c| *c != "species")
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    for feature in &features {
        let values = &columns[&feature.name];
        let present: Vec<&String> = values.iter().flatten().collect();
        let line = analysis.report.iter().find(|r| r.name == feature.name).unwrap();
        assert_eq!(
            line.missing as usize,
            values.len() - present.len(),
            "{}",
            feature.name
        );
        let numbers: Option<Vec<f64>> = present.iter().map(|v| v.parse().ok()).collect();
        match (&feature.encoding, numbers) {
            (FeatureEncoding::Numeric { mean, std }, Some(numbers)) => {
                let (want_mean, want_std) = mean_and_std(&numbers);
                assert!(
                    (mean - want_mean).abs() < 1e-9,
                    "{}: {mean} vs {want_mean}",
                    feature.name
                );
                assert!(
                    (std - want_std).abs() < 1e-9,
                    "{}: {std} vs {want_std}",
                    feature.name
                );
                assert_eq!(feature.missing, MissingPolicy::Mean);
                let fill: f64 = feature.fill.as_ref().unwrap().parse().unwrap();
                assert!((fill - want_mean).abs() < 1e-9);
            }
            (FeatureEncoding::Categorical { categories }, None) => {
                // Text: one-hot over what occurs, a level for missing values, nothing made of
                // NA (it was a third sex before).
                let mut want: BTreeSet<String> = present.iter().map(|v| v.to_string()).collect();
                want.insert(MISSING_LEVEL.to_string());
                assert_eq!(
                    categories.iter().cloned().collect::<BTreeSet<_>>(),
                    want,
                    "{}",
                    feature.name
                );
                assert!(!categories.contains(&"NA".to_string()));
                assert_eq!(feature.missing, MissingPolicy::Level);
            }
            (encoding, numbers) => panic!("{}: {encoding:?} for numbers {numbers:?}", feature.name),
        }
    }
    let line = |name: &str| analysis.report.iter().find(|r| r.name == name).unwrap();
    assert_eq!((line("sex").missing, line("bill_length_mm").missing), (11, 2));
    assert_eq!(line("island").kind, "categorical");
    // island 3 + missing + unknown, sex 2 + missing + unknown, five numbers.
    assert_eq!(analysis.input_width(), 5 + 4 + 5);
}

#[test]
fn the_raw_file_imports_with_dates_and_leaves_out_text_and_ids() {
    let analysis = analyse(
        &data("penguins-raw.csv"),
        "penguins-raw",
        &ImportOptions::new("Species"),
        &|_| {},
    )
    .unwrap();
    let kind = |name: &str| {
        let line = analysis.report.iter().find(|r| r.name == name).unwrap();
        (line.role.clone(), line.kind.clone())
    };
    assert_eq!(kind("Date Egg"), ("feature".into(), "date".into()));
    assert_eq!(kind("Comments").0, "excluded");
    assert_eq!(kind("Individual ID").0, "excluded");
    assert_eq!(kind("Island"), ("feature".into(), "categorical".into()));
    assert_eq!(kind("Delta 15 N (o/oo)"), ("feature".into(), "numeric".into()));
    let region = analysis.report.iter().find(|r| r.name == "Region").unwrap();
    assert!(
        region.warnings.iter().any(|w| w.contains("constant")),
        "{region:?}"
    );
    let date = analysis
        .features()
        .into_iter()
        .find(|f| f.name == "Date Egg")
        .unwrap();
    let FeatureEncoding::Date { mean, .. } = date.encoding else {
        panic!("{date:?}")
    };
    // Eggs were laid between November 2007 and December 2009.
    assert!((13_800.0..14_600.0).contains(&mean), "{mean}");
}

/// Every row of the shards as a matrix with its classes (or its target values).
async fn rows(store: &ShardStore, key: &DatasetKey, shards: &[ShardEntry], label: &str) -> Batch {
    let mut x = Vec::new();
    let mut labels = Vec::new();
    let mut targets = Vec::new();
    let mut cols = 0;
    for entry in shards {
        for batch in read_shard(store, key, &entry.id.parse().unwrap()).await.unwrap() {
            let part = aic_kernels::batch::from_record_batch(&batch, label).unwrap();
            cols = part.x.cols;
            x.extend(part.x.data);
            labels.extend(part.labels);
            targets.extend(part.targets);
        }
    }
    Batch {
        x: Matrix::new(x.len() / cols.max(1), cols, x).unwrap(),
        labels,
        targets,
    }
}

#[tokio::test]
async fn a_softmax_model_classifies_held_out_penguins() {
    let store = ShardStore::memory();
    let (manifest, key): (Manifest, DatasetKey) = import_file(
        &data("penguins.csv"),
        "penguins",
        &ImportOptions::new("species"),
        &store,
    )
    .await
    .unwrap();
    let train = rows(&store, &key, &manifest.train, "species").await;
    let test = rows(&store, &key, &manifest.test, "species").await;
    assert_eq!(train.x.cols as u64, manifest.input_width);
    assert!(test.labels.len() >= 50, "a held-out split of about 20 %");
    let model = ModelSpec::SoftmaxRegression {
        features: manifest.input_width as usize,
        classes: manifest.classes.len(),
    };
    let mut backend = CpuBackend::default();
    let mut weights = model.init(7);
    for _ in 0..300 {
        let (_, grads) = backend.train_step(&model, &weights, &train).unwrap();
        for (w, g) in weights.tensors.iter_mut().zip(&grads.tensors) {
            backend.sgd(&mut w.data, &g.data, 0.5).unwrap();
        }
    }
    let (_, accuracy) = backend.evaluate(&model, &weights, &test).unwrap();
    assert!(accuracy >= 0.97, "held-out accuracy {accuracy}");
}

/// What a data owner may get wrong is refused in the first pass, naming the column, the count
/// and an example, before anything is stored.
#[test]
fn contradictory_choices_are_refused_in_the_first_pass() {
    use aic_storage_node::import::ColumnType;
    let refused = |options: ImportOptions| {
        analyse(&data("penguins.csv"), "penguins", &options, &|_| {})
            .unwrap_err()
            .to_string()
    };
    let mut numeric = ImportOptions::new("species");
    numeric.column_types.insert("island".into(), ColumnType::Numeric);
    let err = refused(numeric);
    assert!(
        err.contains("\"island\"")
            && err.contains("344 of 344 values are not numbers")
            && err.contains("Torgersen"),
        "{err}"
    );
    let mut strict = ImportOptions::new("species");
    strict.missing.insert("sex".into(), MissingPolicy::Refuse);
    let err = refused(strict);
    assert!(
        err.contains("\"sex\"") && err.contains("11 missing values") && err.contains("row 4"),
        "{err}"
    );
    let mut mean_of_text = ImportOptions::new("species");
    mean_of_text.missing.insert("sex".into(), MissingPolicy::Mean);
    assert!(refused(mean_of_text).contains("does not apply to a categorical column"));
    let mut no_label = ImportOptions::new("species");
    no_label.exclude.push("species".into());
    assert!(refused(no_label).contains("cannot be excluded"));
    let mut text_target = ImportOptions::new("species");
    text_target.regression = true;
    let err = refused(text_target);
    assert!(
        err.contains("\"species\"") && err.contains("must be numeric") && err.contains("Adelie"),
        "{err}"
    );
    let mut unknown = ImportOptions::new("species");
    unknown.exclude.push("beak".into());
    assert!(refused(unknown).contains("no column \"beak\""));
}

/// A numeric target: its rows keep their value (not a class), rows without one are dropped, and
/// the width and encodings are those of the other columns.
#[tokio::test]
async fn a_numeric_target_is_imported_for_regression() {
    let mut options = ImportOptions::new("body_mass_g");
    options.regression = true;
    let store = ShardStore::memory();
    let (manifest, key) = import_file(&data("penguins.csv"), "penguin mass", &options, &store)
        .await
        .unwrap();
    assert_eq!(
        (manifest.rows, manifest.rows_dropped),
        (342, 2),
        "two penguins were not weighed"
    );
    assert!(manifest.classes.is_empty() && manifest.target.is_some());
    let batch = &read_shard(&store, &key, &manifest.train[0].id.parse().unwrap())
        .await
        .unwrap()[0];
    let masses = batch
        .column_by_name("body_mass_g")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow_array::Float32Array>()
        .unwrap();
    // Standardised: the lightest penguin (2,700 g) is about −1.9 standard deviations.
    let target = manifest.target.as_ref().unwrap();
    assert!((target.mean - 4201.75).abs() < 0.01, "{target:?}");
    assert!(masses.values().iter().all(|m| (-2.5..=2.7).contains(m)));
}

/// The command a data owner runs first: `--dry-run` prints the report and stores nothing (it
/// needs no grid at all).
#[test]
fn a_dry_run_prints_the_report_and_needs_no_grid() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aic"))
        .args(["dataset", "import", "--label", "Species", "--dry-run", "--json"])
        .arg(data("penguins-raw.csv"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["rows"], 344);
    let columns = report["report"].as_array().unwrap();
    assert_eq!(columns.len(), 17);
    let date = columns.iter().find(|c| c["name"] == "Date Egg").unwrap();
    assert_eq!(
        (date["type"].as_str(), date["role"].as_str()),
        (Some("date"), Some("feature"))
    );
    let human = std::process::Command::new(env!("CARGO_BIN_EXE_aic"))
        .args(["dataset", "import", "--label", "Species", "--dry-run"])
        .arg(data("penguins-raw.csv"))
        .output()
        .unwrap();
    let text = String::from_utf8(human.stdout).unwrap();
    assert!(
        text.contains("nothing stored") && text.contains("Comments"),
        "{text}"
    );
}

/// Ridge regression's coefficients (an unpenalised intercept last) by the normal equations,
/// (XᵀX + λI)·β = Xᵀy, solved by Gaussian elimination with partial pivoting — the reference the
/// grid's regression is held to, computed here from the same split.
fn ridge(x: &Matrix, y: &[f32], lambda: f64) -> Vec<f64> {
    let p = x.cols + 1;
    let row = |r: usize| {
        (0..p).map(move |c| {
            if c < x.cols {
                f64::from(x.data[r * x.cols + c])
            } else {
                1.0
            }
        })
    };
    let mut a = vec![vec![0f64; p + 1]; p];
    for (r, target) in y.iter().enumerate().take(x.rows) {
        let values: Vec<f64> = row(r).collect();
        for (line, vi) in a.iter_mut().zip(&values) {
            for (cell, vj) in line.iter_mut().zip(&values) {
                *cell += vi * vj;
            }
            line[p] += vi * f64::from(*target);
        }
    }
    for (i, line) in a.iter_mut().enumerate().take(x.cols) {
        line[i] += lambda;
    }
    for col in 0..p {
        let pivot = (col..p)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap();
        a.swap(col, pivot);
        let pivot_row = a[col].clone();
        for (i, line) in a.iter_mut().enumerate() {
            if i != col && pivot_row[col] != 0.0 {
                let factor = line[col] / pivot_row[col];
                for (cell, pivot_cell) in line.iter_mut().zip(&pivot_row).skip(col) {
                    *cell -= factor * pivot_cell;
                }
            }
        }
    }
    (0..p)
        .map(|i| if a[i][i] == 0.0 { 0.0 } else { a[i][p] / a[i][i] })
        .collect()
}

/// The body mass of held-out penguins regressed from their other columns (categories one-hot,
/// missing values imputed, numbers standardised by the import) by the grid's linear model
/// trained with its kernels, against ridge regression (λ = 1, scikit-learn's default) fitted on
/// the same split: R² within 0.03 (issue 19; scikit-learn's ridge over 5 folds: 0.856).
#[tokio::test]
async fn a_linear_regression_on_body_mass_matches_ridge() {
    let mut options = ImportOptions::new("body_mass_g");
    options.regression = true;
    let store = ShardStore::memory();
    let (manifest, key) = import_file(&data("penguins.csv"), "penguin mass", &options, &store)
        .await
        .unwrap();
    let train = rows(&store, &key, &manifest.train, "body_mass_g").await;
    let test = rows(&store, &key, &manifest.test, "body_mass_g").await;
    assert_eq!(train.x.cols as u64, manifest.input_width);
    let model = ModelSpec::LinearRegression {
        features: manifest.input_width as usize,
    };
    // The shipped description of this model fits the import as it is.
    let spec = include_str!("../../examples/models/penguins-regression.toml");
    let graph = aic_protocol::model_graph::parse(spec).unwrap();
    graph.check_dataset(manifest.input_width, None).unwrap();
    assert_eq!(
        graph.as_shape(),
        Some(aic_protocol::messages::ModelShape::LinearRegression {
            features: manifest.input_width as u32
        })
    );
    let mut backend = CpuBackend::default();
    let mut weights = model.init(3);
    for _ in 0..600 {
        let (_, grads) = backend.train_step(&model, &weights, &train).unwrap();
        for (w, g) in weights.tensors.iter_mut().zip(&grads.tensors) {
            backend.sgd(&mut w.data, &g.data, 0.05).unwrap();
        }
    }
    let (_, r2_grid) = backend.evaluate(&model, &weights, &test).unwrap();

    let beta = ridge(&train.x, &train.targets, 1.0);
    let predictions: Vec<f32> = (0..test.x.rows)
        .map(|r| {
            let features = &test.x.data[r * test.x.cols..(r + 1) * test.x.cols];
            let value: f64 = features
                .iter()
                .zip(&beta)
                .map(|(x, b)| f64::from(*x) * b)
                .sum::<f64>()
                + beta[test.x.cols];
            value as f32
        })
        .collect();
    let r2_ridge = aic_kernels::backend::r_squared(&predictions, &test.targets);
    eprintln!("held-out R²: the grid's linear model {r2_grid:.4}, ridge {r2_ridge:.4}");
    // The devnet test holds a grid job to this same reference (`RIDGE_R2` in cli.rs).
    assert!(
        (r2_ridge - 0.8947).abs() < 0.0005,
        "the reference moved: R² {r2_ridge}"
    );
    assert!(
        (r2_grid - r2_ridge).abs() <= 0.03,
        "the grid's R² {r2_grid} vs ridge's {r2_ridge}"
    );
}
