//! Import of the bundled digits data: every shard read back equals the preprocessed input; a
//! flipped byte at rest is refused; bad input is refused before anything is stored.

use std::io::Write;

use aic_protocol::ShardId;
use aic_storage_node::import::{analyse, import_file, is_test_row, read_shard, ColumnType, ImportOptions};
use aic_storage_node::manifest::ShardEntry;
use aic_storage_node::shard_store::ShardStore;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt32Type};
use bytes::Bytes;

fn digits_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits/digits.csv")
}

/// The preprocessing, recomputed independently: standardised features (population std, 1 for a
/// constant column) and the digit as its class, rows in file order.
fn expected_rows() -> Vec<(Vec<f32>, u32)> {
    let text = std::fs::read_to_string(digits_path()).unwrap();
    let rows: Vec<Vec<f64>> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    let n = rows.len() as f64;
    let features = rows[0].len() - 1;
    let mean: Vec<f64> = (0..features)
        .map(|f| rows.iter().map(|r| r[f]).sum::<f64>() / n)
        .collect();
    let std: Vec<f64> = (0..features)
        .map(|f| {
            let s = (rows.iter().map(|r| (r[f] - mean[f]).powi(2)).sum::<f64>() / n).sqrt();
            if s > 0.0 {
                s
            } else {
                1.0
            }
        })
        .collect();
    rows.iter()
        .map(|r| {
            let x = (0..features)
                .map(|f| ((r[f] - mean[f]) / std[f]) as f32)
                .collect();
            (x, r[features] as u32)
        })
        .collect()
}

async fn read_split(
    store: &ShardStore,
    key: &aic_storage_node::sealing::DatasetKey,
    shards: &[ShardEntry],
) -> Vec<(Vec<f32>, u32)> {
    let mut rows = Vec::new();
    for entry in shards {
        let id: ShardId = entry.id.parse().unwrap();
        for batch in read_shard(store, key, &id).await.unwrap() {
            let columns = batch.num_columns();
            let labels = batch.column(columns - 1).as_primitive::<UInt32Type>();
            for r in 0..batch.num_rows() {
                let x = (0..columns - 1)
                    .map(|c| batch.column(c).as_primitive::<Float32Type>().value(r))
                    .collect();
                rows.push((x, labels.value(r)));
            }
        }
        let total: usize = read_shard(store, key, &id)
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(total as u64, entry.rows);
    }
    rows
}

#[tokio::test]
async fn digits_import_round_trips_every_row() {
    let store = ShardStore::memory();
    let mut options = ImportOptions::new("digit");
    options.shard_rows = Some(256);
    let (manifest, key) = import_file(&digits_path(), "digits", &options, &store)
        .await
        .unwrap();
    assert_eq!(manifest.rows, 1797);
    assert_eq!(manifest.features.len(), 64);
    assert_eq!(
        manifest.classes,
        (0..10).map(|d| d.to_string()).collect::<Vec<_>>()
    );
    let test_rows: u64 = manifest.test.iter().map(|s| s.rows).sum();
    let train_rows: u64 = manifest.train.iter().map(|s| s.rows).sum();
    assert_eq!(train_rows + test_rows, 1797);
    assert!(
        (290..=430).contains(&test_rows),
        "about 20 % held out: {test_rows}"
    );
    assert_eq!(
        store.list().await.unwrap().len(),
        manifest.train.len() + manifest.test.len()
    );

    let expected = expected_rows();
    let (expected_train, expected_test): (Vec<_>, Vec<_>) = expected
        .into_iter()
        .enumerate()
        .partition(|(r, _)| !is_test_row(options.seed, *r as u64, options.test_fraction));
    for (got, want) in [
        (read_split(&store, &key, &manifest.train).await, expected_train),
        (read_split(&store, &key, &manifest.test).await, expected_test),
    ] {
        assert_eq!(got.len(), want.len());
        for ((x, label), (row, (wx, wlabel))) in got.iter().zip(&want) {
            assert_eq!(label, wlabel, "row {row}");
            for (a, b) in x.iter().zip(wx) {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "row {row}: {a} vs {b}");
            }
        }
    }

    // The same file and seed give the same shards (content-addressed, deterministic split).
    let again = ShardStore::memory();
    let (manifest_again, _) = import_file(&digits_path(), "digits", &options, &again)
        .await
        .unwrap();
    assert_eq!(
        manifest_again.train.iter().map(|s| &s.id).collect::<Vec<_>>(),
        manifest.train.iter().map(|s| &s.id).collect::<Vec<_>>()
    );

    // A flipped byte at rest is never served.
    let id: ShardId = manifest.train[0].id.parse().unwrap();
    let mut sealed = store.get(&id).await.unwrap().to_vec();
    sealed[40] ^= 0x01;
    store.put(&id, Bytes::from(sealed)).await.unwrap();
    let err = read_shard(&store, &key, &id).await.unwrap_err();
    assert!(err.to_string().contains("fails authentication"), "{err}");
}

fn csv(contents: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".csv").tempfile().unwrap();
    file.write_all(contents.as_bytes()).unwrap();
    file
}

async fn refused(contents: &str, label: &str) -> String {
    let store = ShardStore::memory();
    let file = csv(contents);
    let err = import_file(file.path(), "bad", &ImportOptions::new(label), &store)
        .await
        .unwrap_err();
    assert!(
        store.list().await.unwrap().is_empty(),
        "nothing stored after: {err}"
    );
    err.to_string()
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_is_stored() {
    let err = refused("a,b,label\n1,2,0\n3,4\n5,6,1\n", "label").await;
    assert!(err.contains("line") && err.contains(".csv"), "{err}");

    let err = refused("a,b,label\n1,2,0\n", "class").await;
    assert!(
        matches!(err, _ if err.contains("no label column \"class\"")),
        "{err}"
    );

    let err = refused("a,b,label\n", "label").await;
    assert!(err.contains("no data rows"), "{err}");

    // A text column of 1,100 distinct values is left out (more distinct values than are
    // tracked); told it is categorical, it is refused for having too many categories.
    let many: String = (0..1100)
        .map(|i| format!("name{i},{},{}\n", i % 7, i % 2))
        .collect();
    let file = csv(&format!("name,x,label\n{many}"));
    let analysis = analyse(file.path(), "ids", &ImportOptions::new("label"), &|_| {}).unwrap();
    assert_eq!(analysis.excluded[0].name, "name");
    assert!(
        analysis.excluded[0].reason.contains("free text"),
        "{:?}",
        analysis.excluded
    );
    let mut told = ImportOptions::new("label");
    told.column_types.insert("name".into(), ColumnType::Categorical);
    let err = analyse(file.path(), "ids", &told, &|_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"name\"") && err.contains("cannot be encoded") && err.contains("distinct values"),
        "{err}"
    );

    let err = refused("a,label\n1,0\n1e999,1\n", "label").await;
    assert!(err.contains("\"a\""), "{err}");
}

#[tokio::test]
async fn text_features_become_one_hot_categories() {
    let store = ShardStore::memory();
    let file = csv("colour,size,label\nred,1.5,yes\nblue,2.5,no\nred,3.5,yes\n");
    let mut options = ImportOptions::new("label");
    options.test_fraction = 0.0;
    let (manifest, key) = import_file(file.path(), "colours", &options, &store)
        .await
        .unwrap();
    assert_eq!(manifest.classes, vec!["no".to_string(), "yes".to_string()]);
    assert_eq!(
        manifest.input_columns(),
        [
            "colour=<missing>",
            "colour=blue",
            "colour=red",
            "colour=<unknown>",
            "size"
        ]
    );
    assert_eq!(manifest.input_width, 5);
    let rows = read_split(&store, &key, &manifest.train).await;
    assert_eq!(
        rows.iter().map(|(x, _)| x[..4].to_vec()).collect::<Vec<_>>(),
        vec![
            vec![0.0, 0.0, 1.0, 0.0],
            vec![0.0, 1.0, 0.0, 0.0],
            vec![0.0, 0.0, 1.0, 0.0]
        ],
        "one column per colour, no order between them"
    );
    assert_eq!(rows.iter().map(|(_, l)| *l).collect::<Vec<_>>(), vec![1, 0, 1]);
}

/// The digits data as Parquet with narrower column types (Int32 features, the label as text in
/// small row groups): the import reads it like the CSV and produces the very same shards.
#[tokio::test]
async fn parquet_input_imports_like_the_csv() {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, RecordBatch};
    use arrow_schema::{DataType, Field, Schema};

    let text = std::fs::read_to_string(digits_path()).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let rows: Vec<Vec<i64>> = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    let label = header.len() - 1;
    let mut fields: Vec<Field> = header[..label]
        .iter()
        .map(|name| Field::new(*name, DataType::Int32, false))
        .collect();
    fields.push(Field::new(header[label], DataType::Utf8, false));
    let schema = Arc::new(Schema::new(fields));
    let mut columns: Vec<ArrayRef> = (0..label)
        .map(|c| {
            Arc::new(arrow_array::Int32Array::from_iter_values(
                rows.iter().map(|r| r[c] as i32),
            )) as ArrayRef
        })
        .collect();
    columns.push(Arc::new(arrow_array::StringArray::from_iter_values(
        rows.iter().map(|r| r[label].to_string()),
    )));
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let file = tempfile::Builder::new().suffix(".parquet").tempfile().unwrap();
    let properties = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(300))
        .build();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file.reopen().unwrap(), schema, Some(properties)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    let options = ImportOptions::new("digit");
    let (from_csv, _) = import_file(&digits_path(), "digits", &options, &ShardStore::memory())
        .await
        .unwrap();
    let (from_parquet, _) = import_file(file.path(), "digits", &options, &ShardStore::memory())
        .await
        .unwrap();
    assert_eq!(from_parquet.rows, 1797);
    assert_eq!(from_parquet.classes, from_csv.classes);
    assert_eq!(from_parquet.features, from_csv.features);
    assert_eq!(
        (from_parquet.train, from_parquet.test),
        (from_csv.train, from_csv.test)
    );
}

/// Each bound on an import's memory refuses its input in pass 1, naming what is wrong, before
/// anything is stored (issue 12: a 10 MB line of 5 M columns once took 1.85 GB before failing).
#[tokio::test]
async fn oversized_input_is_refused_in_the_first_pass() {
    use aic_storage_node::import::{MAX_CELL_BYTES, MAX_COLUMNS, MAX_LINE_BYTES};

    // A header of 5 M columns is counted before any parser sees it.
    let wide: String = (0..5_000_000).map(|_| "c,").collect::<String>() + "label\n1,0\n";
    let err = refused(&wide, "label").await;
    assert!(err.contains("header line is longer"), "{err}");
    let columns = MAX_COLUMNS + 1;
    let header: Vec<String> = (0..columns).map(|i| format!("c{i}")).collect();
    let err = refused(&format!("{}\n", header.join(",")), "c0").await;
    assert!(err.contains(&format!("names {columns} columns")), "{err}");

    // A data line over the line limit.
    let long = format!("a,label\n{},0\n", "7".repeat(MAX_LINE_BYTES + 1));
    let err = refused(&long, "label").await;
    assert!(err.contains("longer than"), "{err}");

    // A text cell over the cell limit, and a label over it.
    let cell = format!("a,label\n{},0\nx,1\n", "x".repeat(MAX_CELL_BYTES + 1));
    let err = refused(&cell, "label").await;
    assert!(err.contains("\"a\"") && err.contains("text value of"), "{err}");
    let label = format!("a,label\n1,{}\n2,y\n", "y".repeat(MAX_CELL_BYTES + 1));
    let err = refused(&label, "label").await;
    assert!(
        err.contains("\"label\"") && err.contains("text value of"),
        "{err}"
    );

    // Categories that would not fit the manifest the ledger publishes (told to one-hot a
    // column that would otherwise be left out as free text).
    let rows: String = (0..600)
        .map(|i| format!("{}{i},{}\n", "k".repeat(100), i % 2))
        .collect();
    let file = csv(&format!("kind,label\n{rows}"));
    let mut options = ImportOptions::new("label");
    options
        .column_types
        .insert("kind".into(), ColumnType::Categorical);
    let err = analyse(file.path(), "kinds", &options, &|_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"kind\"") && err.contains("bytes of manifest"),
        "{err}"
    );
}

/// Values whose statistics overflow f64 are refused in pass 1 with the column named, not after
/// the upload as an unparseable manifest (issue 12: "manifest: invalid type: null").
#[tokio::test]
async fn statistics_that_would_overflow_are_refused_with_the_column_named() {
    let err = refused("size,label\n1.7e308,0\n-1.7e308,1\n1,0\n", "label").await;
    assert!(err.contains("\"size\"") && err.contains("overflow"), "{err}");
}

#[tokio::test]
async fn an_image_shape_is_recorded_when_it_holds_every_column_and_refused_otherwise() {
    let store = ShardStore::memory();
    let mut options = ImportOptions::new("digit");
    options.image_shape = Some([1, 8, 8]);
    let (manifest, _) = import_file(&digits_path(), "digits as images", &options, &store)
        .await
        .unwrap();
    assert_eq!(manifest.image_shape, Some([1, 8, 8]));
    manifest.check().unwrap();
    let reread = aic_storage_node::manifest::Manifest::from_json(&manifest.to_json()).unwrap();
    assert_eq!(reread.image_shape, Some([1, 8, 8]));

    // 1×8×9 holds 72 values, not the file's 64 columns: refused before anything is stored.
    let store = ShardStore::memory();
    options.image_shape = Some([1, 8, 9]);
    let err = import_file(&digits_path(), "digits", &options, &store)
        .await
        .unwrap_err();
    assert!(
        matches!(err, aic_storage_node::import::ImportError::Input { .. }),
        "{err}"
    );
    assert!(store.list().await.unwrap().is_empty());

    // A manifest whose image shape does not hold its columns is refused when read.
    let mut forged = manifest.clone();
    forged.image_shape = Some([2, 8, 8]);
    assert!(aic_storage_node::manifest::Manifest::from_json(&forged.to_json()).is_err());
}

#[test]
fn an_image_view_of_a_category_is_refused() {
    use aic_storage_node::import::check_image_shape;
    let csv = b"colour,size,label\nred,1,0\nblue,2,1\nred,3,0\nblue,4,1\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.csv");
    std::fs::write(&path, csv).unwrap();
    let analysis = analyse(&path, "mixed", &ImportOptions::new("label"), &|_| {}).unwrap();
    let features = analysis.features();
    let width: usize = features.iter().map(|f| f.width()).sum();
    let err = check_image_shape([1, 1, width as u64], &features).unwrap_err();
    assert!(err.starts_with("column \"colour\" is a category"), "{err}");
}

/// Pass 2 from pass 1's spill writes the very shards that parsing the file again writes: the
/// numbers, filled and dropped missing values, dates, categories and the split all agree; and
/// where a feature needs text that was kept as numbers, pass 2 parses the file again.
#[tokio::test]
async fn a_spilled_import_writes_the_shards_a_reparsed_one_does() {
    use aic_storage_node::encoding::MissingPolicy;

    let mut mixed = String::from("x,y,when,colour,code,label\n");
    for row in 0..300u32 {
        let x = if row % 17 == 3 {
            "NA".to_string()
        } else {
            format!("{}.{}", row % 23, row % 7)
        };
        let y = if row % 41 == 5 {
            String::new()
        } else {
            format!("-{}e-2", row % 13)
        };
        let when = format!("2024-{:02}-{:02}", 1 + row % 12, 1 + row % 28);
        let colour = ["red", "blue", " green "][(row % 3) as usize];
        // Numbers in the early batches, a word late: a category whose early batches were
        // all numbers.
        let code = if row == 250 {
            "x".to_string()
        } else {
            (row % 4).to_string()
        };
        mixed.push_str(&format!("{x},{y},{when},{colour},{code},{}\n", row % 3));
    }
    let file = csv(&mixed);
    let mut options = ImportOptions::new("label");
    options.batch_rows = 16;
    options.shard_rows = Some(40);
    options.missing.insert("x".into(), MissingPolicy::Mean);
    options.missing.insert("y".into(), MissingPolicy::DropRow);

    for excluded in [vec!["code".to_string()], vec![]] {
        let options = ImportOptions {
            exclude: excluded.clone(),
            ..options.clone()
        };
        let spilled = analyse(file.path(), "mixed", &options, &|_| {}).unwrap();
        // With the mixed column a feature, its early batches' text is gone from the spill.
        assert_eq!(spilled.spilled(), !excluded.is_empty(), "excluding {excluded:?}");
        let reparsed = analyse(
            file.path(),
            "mixed",
            &ImportOptions {
                spill: false,
                ..options.clone()
            },
            &|_| {},
        )
        .unwrap();
        assert!(!reparsed.spilled());
        let mut shards = Vec::new();
        for analysis in [&spilled, &reparsed] {
            let store = ShardStore::memory();
            let key = aic_storage_node::sealing::DatasetKey::generate();
            let mut sink = aic_storage_node::import::SealingSink {
                store: &store,
                key: &key,
            };
            let manifest = aic_storage_node::import::encode(analysis, &mut sink, &|_| {})
                .await
                .unwrap();
            assert!(manifest.rows_dropped > 0 && manifest.rows > 200, "{manifest:?}");
            shards.push((manifest.train, manifest.test));
        }
        assert_eq!(shards[0], shards[1], "excluding {excluded:?}");
    }
}

/// Pass 1's spill sits beside the input readable by its owner only, and is gone once the
/// import is done with it: nothing of the data is left behind in the input's directory.
#[tokio::test]
async fn the_spill_is_owner_only_and_removed_with_the_analysis() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("digits.csv");
    std::fs::copy(digits_path(), &input).unwrap();
    let spills = || -> Vec<std::fs::Metadata> {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap())
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".spill"))
            .map(|entry| entry.metadata().unwrap())
            .collect()
    };
    let analysis = analyse(&input, "digits", &ImportOptions::new("digit"), &|_| {}).unwrap();
    assert!(analysis.spilled());
    let kept = spills();
    assert!(!kept.is_empty(), "pass 1 spilled beside its input");
    for spill in &kept {
        assert_eq!(spill.permissions().mode() & 0o777, 0o600);
        assert!(spill.len() > 0);
    }
    let store = ShardStore::memory();
    let key = aic_storage_node::sealing::DatasetKey::generate();
    let mut sink = aic_storage_node::import::SealingSink {
        store: &store,
        key: &key,
    };
    aic_storage_node::import::encode(&analysis, &mut sink, &|_| {})
        .await
        .unwrap();
    drop(analysis);
    assert!(spills().is_empty(), "the spill outlived its import");
    // A refused file leaves no spill either.
    std::fs::write(&input, "a,label\n1,0\ninf,1\n").unwrap();
    analyse(&input, "bad", &ImportOptions::new("label"), &|_| {}).unwrap_err();
    assert!(spills().is_empty(), "a refused import left its spill");
}
