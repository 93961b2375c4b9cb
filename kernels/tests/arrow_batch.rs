//! The step API over Arrow: a decoded shard goes straight to the kernels, and what does not fit
//! is refused with the column and row named.

use std::sync::Arc;

use aic_kernels::batch::from_record_batch;
use aic_kernels::{Backend, BackendChoice, CpuBackend, ModelSpec, VulkanBackend};
use arrow_array::{ArrayRef, Float32Array, Float64Array, Int64Array, RecordBatch, StringArray};

fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    RecordBatch::try_from_iter(columns).unwrap()
}

#[test]
fn a_record_batch_becomes_features_and_labels() {
    let rb = batch(vec![
        ("a", Arc::new(Float32Array::from(vec![1.0, 2.0, 3.0])) as ArrayRef),
        ("label", Arc::new(Int64Array::from(vec![0, 1, 1])) as ArrayRef),
        (
            "b",
            Arc::new(Float64Array::from(vec![0.5, -0.5, 0.0])) as ArrayRef,
        ),
    ]);
    let b = from_record_batch(&rb, "label").unwrap();
    assert_eq!((b.x.rows, b.x.cols), (3, 2));
    assert_eq!(b.x.data, vec![1.0, 0.5, 2.0, -0.5, 3.0, 0.0]);
    assert_eq!(b.labels, vec![0, 1, 1]);

    let model = ModelSpec::SoftmaxRegression {
        features: 2,
        classes: 2,
    };
    let (loss, accuracy) = CpuBackend::default()
        .evaluate(&model, &model.init(1), &b)
        .unwrap();
    assert!(loss.is_finite() && (0.0..=1.0).contains(&accuracy));
}

#[test]
fn bad_columns_are_named() {
    let missing = batch(vec![("a", Arc::new(Float32Array::from(vec![1.0])) as ArrayRef)]);
    assert!(from_record_batch(&missing, "label")
        .unwrap_err()
        .to_string()
        .contains("no label column"));

    let text = batch(vec![
        ("name", Arc::new(StringArray::from(vec!["x"])) as ArrayRef),
        ("label", Arc::new(Int64Array::from(vec![0])) as ArrayRef),
    ]);
    let err = from_record_batch(&text, "label").unwrap_err().to_string();
    assert!(err.contains("\"name\"") && err.contains("not a float"), "{err}");

    let nan = batch(vec![
        ("a", Arc::new(Float32Array::from(vec![1.0, f32::NAN])) as ArrayRef),
        ("label", Arc::new(Int64Array::from(vec![0, 0])) as ArrayRef),
    ]);
    let err = from_record_batch(&nan, "label").unwrap_err().to_string();
    assert!(err.contains("\"a\"") && err.contains("index 1"), "{err}");

    let negative = batch(vec![
        ("a", Arc::new(Float32Array::from(vec![1.0])) as ArrayRef),
        ("label", Arc::new(Int64Array::from(vec![-3])) as ArrayRef),
    ]);
    assert!(from_record_batch(&negative, "label")
        .unwrap_err()
        .to_string()
        .contains("label -3 at row 0"));
}

#[test]
fn device_choice_prefers_a_gpu_and_admits_lavapipe_only_when_asked() {
    match VulkanBackend::new(Default::default()) {
        Ok(backend) => assert!(!backend.is_cpu_device(), "a CPU-type device was chosen unasked"),
        Err(aic_kernels::KernelError::OnlyCpuDevice(name)) => {
            // Only lavapipe here: `auto` falls back to the CPU backend and says which it is.
            assert!(!name.is_empty());
            let auto = aic_kernels::open(BackendChoice::Auto).unwrap();
            assert!(auto.describe().starts_with("cpu"), "{}", auto.describe());
        }
        Err(other) => panic!("a Vulkan device must be present for this test: {other}"),
    }
    let explicit = aic_kernels::open(BackendChoice::Vulkan {
        allow_cpu_device: true,
    })
    .unwrap();
    assert!(
        explicit.describe().starts_with("vulkan"),
        "{}",
        explicit.describe()
    );
}

#[test]
fn a_wide_model_takes_a_batch_in_passes_whose_weighted_mean_is_the_whole_batchs() {
    use aic_kernels::step::{passes, rows_per_pass, train_step, ACTIVATION_BUDGET_BYTES};
    // A hidden layer of 2 M units: 8 rows per pass fit the activation budget.
    let wide = ModelSpec::Mlp {
        features: 2,
        hidden: 2_000_000,
        classes: 2,
    };
    assert_eq!(
        rows_per_pass(&wide) as u64,
        ACTIVATION_BUDGET_BYTES / (2_000_000 * 16)
    );
    let rows = 2 * rows_per_pass(&wide) + 3;
    let xs: Vec<f32> = (0..rows).map(|i| i as f32 / rows as f32).collect();
    let labels: Vec<i64> = (0..rows).map(|i| (i % 2) as i64).collect();
    let rb = batch(vec![
        ("a", Arc::new(Float32Array::from(xs.clone())) as ArrayRef),
        ("b", Arc::new(Float32Array::from(xs)) as ArrayRef),
        ("label", Arc::new(Int64Array::from(labels)) as ArrayRef),
    ]);
    let cut: Vec<RecordBatch> = passes(&wide, &rb).collect();
    let sizes: Vec<usize> = cut.iter().map(RecordBatch::num_rows).collect();
    assert_eq!(sizes, [rows_per_pass(&wide), rows_per_pass(&wide), 3]);
    assert_eq!(
        cut[2].column(0).as_ref(),
        rb.column(0).slice(rows - 3, 3).as_ref()
    );

    // A small model is never cut, and the mean of its passes' gradients weighted by rows is the
    // whole batch's gradient (what the compute node relies on when it does cut).
    let small = ModelSpec::SoftmaxRegression {
        features: 2,
        classes: 2,
    };
    assert_eq!(passes(&small, &rb).count(), 1);
    let weights = small.init(3);
    let mut cpu = CpuBackend::default();
    let (_, whole) = train_step(&mut cpu, &small, &weights, &rb, "label").unwrap();
    let mut sum = vec![0.0f64; whole.flat().len()];
    for part in [rb.slice(0, 7), rb.slice(7, rows - 7)] {
        let (_, g) = train_step(&mut cpu, &small, &weights, &part, "label").unwrap();
        for (s, v) in sum.iter_mut().zip(g.flat()) {
            *s += f64::from(v) * part.num_rows() as f64;
        }
    }
    for (s, w) in sum.iter().zip(whole.flat()) {
        assert!((*s / rows as f64 - f64::from(w)).abs() < 1e-5, "{s} vs {w}");
    }
}
