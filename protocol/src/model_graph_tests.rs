//! Tests of model descriptions: the shipped examples, shape inference and parameter counts,
//! the canonical form, and every kind of bad description refused with the layer named.

use super::*;

const DIGITS_CNN: &str = include_str!("../../examples/models/digits-cnn.toml");
const DEEP_MLP: &str = include_str!("../../examples/models/deep-mlp.toml");
const PENGUINS: &str = include_str!("../../examples/models/penguins-regression.toml");

fn spec(layers: &str) -> String {
    format!("name = \"t\"\ninput = {{ image = [1, 8, 8] }}\nloss = \"softmax_cross_entropy\"\n{layers}")
}

fn refused(text: &str) -> SpecError {
    parse(text).expect_err("the description is refused")
}

#[test]
fn the_digits_cnn_infers_its_shapes_and_counts_its_parameters() {
    let graph = parse(DIGITS_CNN).unwrap();
    let rows = graph.summary().unwrap();
    let outputs: Vec<String> = rows.iter().map(|r| r.output.to_string()).collect();
    assert_eq!(
        outputs,
        ["32×8×8", "32×8×8", "32×8×8", "32×8×8", "32×8×8", "32×4×4", "512", "10"]
    );
    let parameters: Vec<u64> = rows.iter().map(|r| r.parameters).collect();
    // conv1: 32·1·3·3 + 32; conv2: 32·32·3·3 + 32; logits: 512·10 + 10.
    assert_eq!(parameters, [320, 0, 9248, 0, 0, 0, 0, 5130]);
    assert_eq!(graph.parameters().unwrap(), 14698);
    assert_eq!(
        graph.training.optimizer,
        Some(crate::messages::InnerOptimizer::AdamW)
    );
    assert_eq!(
        (
            graph.training.epochs,
            graph.training.local_steps,
            graph.training.batch_size
        ),
        (Some(60), Some(16), Some(32))
    );
    graph.check_dataset(64, Some(10)).unwrap();
    assert_eq!(graph.as_shape(), None, "a CNN is not one of the fixed shapes");
}

#[test]
fn the_deep_mlp_and_the_penguins_regression_validate() {
    let deep = parse(DEEP_MLP).unwrap();
    // 64·128 + 128, layer norm 2·128, 128·64 + 64, 64·10 + 10.
    assert_eq!(deep.parameters().unwrap(), 8320 + 256 + 8256 + 650);
    deep.check_dataset(64, Some(10)).unwrap();
    let penguins = parse(PENGUINS).unwrap();
    assert_eq!(penguins.loss, Loss::MeanSquaredError);
    let InputView::Features(width) = penguins.input else {
        panic!()
    };
    penguins.check_dataset(width, None).unwrap();
    assert_eq!(
        penguins.as_shape(),
        Some(ModelShape::LinearRegression {
            features: width as u32
        })
    );
}

#[test]
fn the_summary_table_names_every_layer_and_the_total() {
    let table = parse(DIGITS_CNN).unwrap().render_summary().unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("digits-cnn: input 1×8×8, loss softmax_cross_entropy"));
    assert_eq!(lines.len(), 2 + 8 + 1);
    // 32 filters of 1×3×3 and their biases.
    assert!(lines[2].starts_with("conv1") && lines[2].trim_end().ends_with("320"));
    assert!(lines[10].starts_with("total") && lines[10].trim_end().ends_with("14698"));
}

#[test]
fn the_canonical_form_is_the_same_for_the_same_model_however_it_is_written() {
    let toml = parse(DEEP_MLP).unwrap();
    // The same model in JSON, fields in another order, defaults spelled out.
    let json = r#"{
        "loss": "softmax_cross_entropy",
        "name": "digits-deep-mlp",
        "training": {"epochs": 40, "learning_rate": 0.001, "optimizer": "adam"},
        "input": {"features": 64},
        "layer": [
            {"units": 128, "kind": "dense", "name": "dense1"},
            {"kind": "gelu"},
            {"kind": "layer_norm", "epsilon": 1e-5},
            {"kind": "dense", "units": 64},
            {"kind": "tanh"},
            {"kind": "dense", "units": 10, "name": "logits"}
        ]
    }"#;
    let from_json = parse(json).unwrap();
    assert_eq!(from_json, toml);
    assert_eq!(from_json.canonical_bytes(), toml.canonical_bytes());
    assert_eq!(from_json.content_hash(), toml.content_hash());
    // The canonical bytes read back as the same graph (what a scheduler does with the manifest).
    let canonical = String::from_utf8(toml.canonical_bytes()).unwrap();
    assert_eq!(parse(&canonical).unwrap(), toml);
    // A different model has a different hash.
    let other = parse(&DEEP_MLP.replace("units = 128", "units = 129")).unwrap();
    assert_ne!(other.content_hash(), toml.content_hash());
}

#[test]
fn the_fixed_shapes_are_ordinary_graphs() {
    for shape in [
        ModelShape::SoftmaxRegression {
            features: 64,
            classes: 10,
        },
        ModelShape::Mlp {
            features: 64,
            hidden: 32,
            classes: 10,
        },
        ModelShape::LinearRegression { features: 9 },
    ] {
        let graph = ModelGraph::of_shape("fixed", shape);
        assert_eq!(graph.parameters().unwrap(), shape.parameters());
        assert_eq!(graph.as_shape(), Some(shape));
        let canonical = String::from_utf8(graph.canonical_bytes()).unwrap();
        assert_eq!(parse(&canonical).unwrap(), graph);
    }
}

#[test]
fn an_unknown_layer_is_named_with_its_position() {
    let err = refused(&spec("[[layer]]\nkind = \"convolution\"\nfilters = 3\n"));
    assert_eq!(
        err,
        SpecError::UnknownLayer {
            index: 1,
            name: "convolution1".into(),
            kind: "convolution".into()
        }
    );
    assert!(matches!(
        refused(&spec("[[layer]]\nkind = \"batch_norm\"\nname = \"bn\"\n")),
        SpecError::BatchNorm { index: 1, .. }
    ));
}

#[test]
fn a_shape_that_does_not_chain_is_refused_naming_the_layer_and_the_shapes() {
    // A dense layer straight on an image.
    let err = refused(&spec(
        "[[layer]]\nkind = \"dense\"\nunits = 10\nname = \"head\"\n",
    ));
    let SpecError::Chain { index, name, got, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        (*index, name.as_str(), got.to_string()),
        (1, "head", "1×8×8".to_string())
    );
    // A convolution on a vector.
    let err = refused(
        "name = \"t\"\ninput = { features = 64 }\nloss = \"softmax_cross_entropy\"\n\
         [[layer]]\nkind = \"conv2d\"\nfilters = 4\nkernel = 3\n[[layer]]\nkind = \"dense\"\nunits = 2\n",
    );
    assert!(
        matches!(
            err,
            SpecError::Chain {
                index: 1,
                kind: "conv2d",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn zero_sizes_and_kernels_larger_than_their_input_are_refused() {
    let err = refused(&spec("[[layer]]\nkind = \"conv2d\"\nfilters = 0\nkernel = 3\n"));
    assert!(
        matches!(
            err,
            SpecError::Size {
                what: "filters",
                got: 0,
                ..
            }
        ),
        "{err:?}"
    );
    let err = refused(&spec(
        "[[layer]]\nkind = \"flatten\"\n[[layer]]\nkind = \"dense\"\nunits = -3\n",
    ));
    assert!(matches!(err, SpecError::Field { .. }), "{err:?}");
    let err = refused(&spec("[[layer]]\nkind = \"conv2d\"\nfilters = 2\nkernel = 9\n"));
    assert_eq!(
        err,
        SpecError::KernelTooLarge {
            index: 1,
            name: "conv2d1".into(),
            kernel: 9,
            side: 8
        }
    );
    let err = refused(&spec("[[layer]]\nkind = \"max_pool2d\"\nkernel = 16\n"));
    assert!(
        matches!(
            err,
            SpecError::KernelTooLarge {
                kernel: 16,
                side: 8,
                ..
            }
        ),
        "{err:?}"
    );
    let err = refused(&spec(
        "[[layer]]\nkind = \"conv2d\"\nfilters = 2\nkernel = 3\nstride = 0\n",
    ));
    assert!(matches!(err, SpecError::Size { what: "stride", .. }), "{err:?}");
}

#[test]
fn a_parameter_count_that_overflows_is_refused() {
    let err = refused(
        "name = \"t\"\ninput = { features = 16777216 }\nloss = \"softmax_cross_entropy\"\n\
         [[layer]]\nkind = \"dense\"\nunits = 16777216\n[[layer]]\nkind = \"dense\"\nunits = 16777216\n",
    );
    assert!(
        matches!(err, SpecError::TooManyParameters { index: 1, .. }),
        "{err:?}"
    );
}

#[test]
fn a_loss_the_last_layer_or_the_dataset_cannot_feed_is_refused() {
    let err = refused(
        "name = \"t\"\ninput = { features = 4 }\nloss = \"mean_squared_error\"\n[[layer]]\nkind = \"dense\"\nunits = 3\n",
    );
    assert!(
        matches!(
            err,
            SpecError::Loss {
                loss: "mean_squared_error",
                ..
            }
        ),
        "{err:?}"
    );
    // One logit cannot be a softmax over classes.
    let err = refused(&spec(
        "[[layer]]\nkind = \"flatten\"\n[[layer]]\nkind = \"dense\"\nunits = 1\n",
    ));
    assert!(
        matches!(
            err,
            SpecError::Loss {
                loss: "softmax_cross_entropy",
                ..
            }
        ),
        "{err:?}"
    );
    let graph = parse(DIGITS_CNN).unwrap();
    assert!(matches!(
        graph.check_dataset(64, Some(3)),
        Err(SpecError::LabelKind { .. })
    ));
    assert!(matches!(
        graph.check_dataset(64, None),
        Err(SpecError::LabelKind { .. })
    ));
    assert_eq!(
        graph.check_dataset(65, Some(10)),
        Err(SpecError::InputWidth {
            view: "1×8×8".into(),
            elements: 64,
            width: 65
        })
    );
}

#[test]
fn residual_adds_need_an_earlier_layer_of_the_same_shape() {
    let err = refused(&spec(
        "[[layer]]\nkind = \"conv2d\"\nfilters = 2\nkernel = 3\nname = \"a\"\n\
         [[layer]]\nkind = \"max_pool2d\"\nkernel = 2\n[[layer]]\nkind = \"add\"\nfrom = \"a\"\n",
    ));
    let SpecError::Add { index, found, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        (*index, found.map(|s| s.to_string())),
        (3, Some("2×6×6".to_string()))
    );
    let err = refused(&spec("[[layer]]\nkind = \"add\"\nfrom = \"later\"\n"));
    assert!(matches!(err, SpecError::Add { found: None, .. }), "{err:?}");
    let err = refused(&spec(
        "[[layer]]\nkind = \"relu\"\nname = \"x\"\n[[layer]]\nkind = \"relu\"\nname = \"x\"\n",
    ));
    assert!(
        matches!(err, SpecError::DuplicateName { index: 2, .. }),
        "{err:?}"
    );
}

#[test]
fn unknown_fields_bad_syntax_and_oversized_descriptions_are_refused() {
    let err = refused(&spec("[[layer]]\nkind = \"conv2d\"\nfilter = 2\nkernel = 3\n"));
    assert!(matches!(err, SpecError::Field { .. }), "{err:?}");
    let err = refused(&spec(
        "[[layer]]\nkind = \"conv2d\"\nfilters = 2\nkernel = 3\ncolour = 1\n",
    ));
    let SpecError::Field { place, problem } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        (place.as_str(), problem.as_str()),
        ("layer 1 (conv2d1)", "unknown field \"colour\"")
    );
    assert!(matches!(
        refused("name = [unclosed"),
        SpecError::Syntax { format: "TOML", .. }
    ));
    assert!(matches!(
        refused("{\"name\": 1,"),
        SpecError::Syntax { format: "JSON", .. }
    ));
    let huge = format!("name = \"t\"\n# {}\n", "x".repeat(MAX_SPEC_BYTES));
    assert!(matches!(refused(&huge), SpecError::TooLarge { .. }));
    let err = refused(&spec("[[layer]]\nkind = \"dropout\"\nrate = 1.0\n"));
    assert!(matches!(err, SpecError::Field { .. }), "{err:?}");
    let err = refused("name = \"t\"\ninput = { features = 4, image = [1, 2, 2] }\nloss = \"mean_squared_error\"\n[[layer]]\nkind = \"dense\"\nunits = 1\n");
    assert!(matches!(err, SpecError::Field { .. }), "{err:?}");
}

#[test]
fn training_defaults_name_the_optimizers_and_schedules_and_survive_the_canonical_form() {
    use crate::messages::{InnerOptimizer, LrSchedule};
    let with = |training: &str| {
        format!(
            "{}\n[training]\n{training}\n",
            DEEP_MLP.split("[training]").next().unwrap()
        )
    };
    let graph = parse(&with(
        "optimizer = \"adamw\"\nweight_decay = 0.01\nschedule = \"step\"\nstep_every = 4\nstep_factor = 0.5",
    ))
    .unwrap();
    assert_eq!(graph.training.optimizer, Some(InnerOptimizer::AdamW));
    assert_eq!(graph.training.weight_decay, Some(0.01));
    assert_eq!(
        graph.training.schedule,
        Some(LrSchedule::Step {
            every_rounds: 4,
            factor_milli: 500
        })
    );
    let canonical = String::from_utf8(graph.canonical_bytes()).unwrap();
    assert_eq!(parse(&canonical).unwrap(), graph);
    let cosine = parse(&with(
        "optimizer = \"momentum\"\nschedule = \"cosine\"\nwarmup_rounds = 2",
    ))
    .unwrap();
    assert_eq!(
        cosine.training.schedule,
        Some(LrSchedule::Cosine { warmup_rounds: 2 })
    );
    assert_eq!(
        parse(&String::from_utf8(cosine.canonical_bytes()).unwrap()).unwrap(),
        cosine
    );
    for bad in [
        "schedule = \"linear\"",
        "schedule = \"step\"",
        "schedule = \"step\"\nstep_every = 2\nstep_factor = 1.5",
        "warmup_rounds = 2",
        "weight_decay = 2.0",
        "optimizer = \"lion\"",
        "batch_size = 0",
        "batch_size = 2000000",
    ] {
        assert!(matches!(parse(&with(bad)), Err(SpecError::Field { .. })), "{bad}");
    }
}

#[test]
fn schedules_give_each_round_its_rate() {
    use crate::messages::LrSchedule;
    assert_eq!(LrSchedule::Constant.rate(0.1, 7, 10), 0.1);
    let step = LrSchedule::Step {
        every_rounds: 3,
        factor_milli: 500,
    };
    let rates: Vec<f32> = (0..7).map(|r| step.rate(1.0, r, 7)).collect();
    assert_eq!(rates, [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]);
    let cosine = LrSchedule::Cosine { warmup_rounds: 2 };
    assert_eq!(cosine.rate(1.0, 0, 10), 0.5);
    assert_eq!(cosine.rate(1.0, 1, 10), 1.0);
    assert!((cosine.rate(1.0, 2, 10) - 1.0).abs() < 1e-6);
    assert!((cosine.rate(1.0, 6, 10) - 0.5).abs() < 1e-6, "halfway down");
    assert!(cosine.rate(1.0, 9, 10) < 0.05 && cosine.rate(1.0, 9, 10) > 0.0);
    // The evaluation (round 10 of 10) keeps the last round's rate: a task's rate is positive.
    assert_eq!(cosine.rate(1.0, 10, 10), cosine.rate(1.0, 9, 10));
    let steep = LrSchedule::Step {
        every_rounds: 1,
        factor_milli: 1,
    };
    assert!(steep.rate(0.5, 40, 50) > 0.0, "never zero, however many decays");
}
