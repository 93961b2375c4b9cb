//! The job log: every escrowed job stays on the ledger after it ends, with what it trained,
//! where its money went and the model it produced; pages read newest first, by payer or asset.

mod common;

use aic_ledger::error::TxError;
use aic_ledger::state::{JobLogFilter, JobOutcome, NodeWork, MAX_JOB_LOG_PER_REQUEST};
use aic_ledger::tx::{Call, Payout, PayoutKind};
use aic_protocol::{AssetId, JobId, NodeId};
use common::{aic, metadata, minted, world};

#[test]
fn a_job_is_logged_from_its_escrow_to_its_trained_model_and_stays_after_settling() {
    let mut w = world();
    let (alice, bob, system) = (w.alice.clone(), w.bob.clone(), w.system.clone());
    w.fund(alice.address(), aic(1000));
    let (dataset, model) = (AssetId::from_bytes([7; 16]), AssetId::from_bytes([8; 16]));
    let job = JobId::random();
    let runner = NodeId::from_public_key(b"sched-1");
    w.send(
        &alice,
        Call::OpenEscrow {
            job,
            amount: aic(100),
        },
    )
    .unwrap();
    let (first, entry) = w.state.job_log.get(&job).expect("logged on opening");
    assert_eq!(entry.outcome, JobOutcome::Escrowed);
    assert_eq!(
        (entry.payer, entry.budget, entry.dataset),
        (alice.address(), aic(100), None)
    );

    w.send(
        &system,
        Call::RecordJob {
            job,
            runner,
            dataset,
            model,
            request: b"request".to_vec(),
        },
    )
    .unwrap();
    w.send(
        &system,
        Call::CheckpointJob {
            job,
            runner,
            round: 4,
            tensors: None,
            progress: Vec::new(),
        },
    )
    .unwrap();
    // compute-2 is caught in round 4 with unconfirmed results since round 1: the job goes back.
    let rewound_weights = aic_ledger::state::CheckpointTensors {
        weights: aic_protocol::tensor::TensorRef::of(&[1.0; 4]),
        optimizer_state: None,
        holders: vec![NodeId::from_public_key(b"storage-1")],
    };
    w.send(
        &system,
        Call::RewindJob {
            job,
            runner,
            round: 1,
            tensors: rewound_weights,
            progress: Vec::new(),
            wrong: NodeId::from_public_key(b"compute-2"),
        },
    )
    .unwrap();
    for round in 2..=4 {
        w.send(
            &system,
            Call::CheckpointJob {
                job,
                runner,
                round,
                tensors: None,
                progress: Vec::new(),
            },
        )
        .unwrap();
    }
    // The runner records who did the work before it pays: one node caught by a spot check.
    let worker = |seed: &[u8], rows, verified_rows, checks_passed, checks_failed| NodeWork {
        node: NodeId::from_public_key(seed),
        rows,
        verified_rows,
        checks_passed,
        checks_failed,
        confirmed_wrong: checks_failed > 0,
    };
    let nodes = vec![
        worker(b"compute-1", 600, 200, 2, 0),
        worker(b"compute-2", 300, 0, 0, 1),
    ];
    w.send(
        &system,
        Call::RecordJobWork {
            job,
            runner,
            nodes: nodes.clone(),
        },
    )
    .unwrap();
    let pay = |to: &aic_ledger::Keypair, amount, kind| Payout {
        to: to.address(),
        amount: aic(amount),
        kind,
    };
    w.send(
        &system,
        Call::ReleaseEscrow {
            job,
            payouts: vec![
                pay(&bob, 30, PayoutKind::Compute),
                pay(&bob, 5, PayoutKind::Storage),
                pay(&bob, 2, PayoutKind::DatasetFee),
                pay(&bob, 1, PayoutKind::ModelFee),
            ],
            platform_fee: aic(4),
        },
    )
    .unwrap();
    w.send(&system, Call::RefundEscrow { job }).unwrap();
    let trained = minted(
        &w.send(
            &system,
            Call::MintTrainedModel {
                job,
                metadata: metadata("trained"),
            },
        )
        .unwrap(),
    );

    // The escrow and the running record are gone; the log keeps the whole story.
    assert!(w.state.escrows.is_empty() && w.state.jobs.is_empty());
    let (number, entry) = w.state.job_log.get(&job).expect("kept after settling");
    assert_eq!(number, first);
    assert_eq!(entry.outcome, JobOutcome::Settled);
    assert_eq!((entry.dataset, entry.model), (Some(dataset), Some(model)));
    assert_eq!(entry.rounds, 4);
    assert_eq!(
        (
            entry.compute_paid,
            entry.storage_paid,
            entry.dataset_fee,
            entry.model_fee
        ),
        (aic(30), aic(5), aic(2), aic(1))
    );
    assert_eq!(
        (entry.paid(), entry.burned, entry.refunded),
        (aic(38), aic(4), aic(58))
    );
    assert_eq!(entry.trained_model, Some(trained));
    // Its work record: the nodes as recorded, every payout.
    let work = w.state.job_log.work(&job);
    assert_eq!(work.nodes, nodes);
    assert_eq!(work.payouts.len(), 4);
    assert!(work
        .payouts
        .contains(&(bob.address(), PayoutKind::Compute, aic(30))));
    assert_eq!(work.rewinds, vec![(4, 1, NodeId::from_public_key(b"compute-2"))]);
    assert!(w.state.job_log.work(&JobId::random()).nodes.is_empty());
    // The dataset's usage and the model's both name the job.
    for asset in [dataset, model] {
        let page = w.state.job_log.page(JobLogFilter::Asset(asset), None, 10);
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].1.job, job);
    }
    assert!(w
        .state
        .job_log
        .page(JobLogFilter::Asset(trained), None, 10)
        .is_empty());
}

#[test]
fn a_job_refunded_before_any_work_reads_as_refunded_and_a_refused_escrow_is_not_logged() {
    let mut w = world();
    let (alice, system) = (w.alice.clone(), w.system.clone());
    w.fund(alice.address(), aic(10));
    let job = JobId::random();
    w.send(&alice, Call::OpenEscrow { job, amount: aic(10) }).unwrap();
    w.send(&system, Call::RefundEscrow { job }).unwrap();
    let (_, entry) = w.state.job_log.get(&job).unwrap();
    assert_eq!((entry.outcome, entry.refunded), (JobOutcome::Refunded, aic(10)));

    // More than the wallet holds: refused, and the log is unchanged (the world checks the
    // whole state is).
    let refused = JobId::random();
    assert!(w
        .send(
            &alice,
            Call::OpenEscrow {
                job: refused,
                amount: aic(11)
            }
        )
        .is_err());
    assert!(w.state.job_log.get(&refused).is_none());
    assert_eq!(w.state.job_log.len(), 1);
}

#[test]
fn pages_run_newest_first_from_a_cursor_per_payer_and_are_capped() {
    let mut w = world();
    let (alice, bob) = (w.alice.clone(), w.bob.clone());
    w.fund(alice.address(), aic(10_000));
    w.fund(bob.address(), aic(10_000));
    let mut jobs = Vec::new();
    for i in 0..(MAX_JOB_LOG_PER_REQUEST as usize + 20) {
        let payer = if i % 2 == 0 { &alice } else { &bob };
        let job = JobId::random();
        w.send(payer, Call::OpenEscrow { job, amount: aic(1) }).unwrap();
        jobs.push(job);
    }
    let all = w.state.job_log.page(JobLogFilter::All, None, u32::MAX);
    assert_eq!(all.len(), MAX_JOB_LOG_PER_REQUEST as usize, "capped");
    assert_eq!(all[0].1.job, *jobs.last().unwrap(), "newest first");
    let numbers: Vec<u64> = all.iter().map(|(n, _)| *n).collect();
    assert!(numbers.windows(2).all(|w| w[0] == w[1] + 1));
    // The next page starts below the last number seen and ends at the first job.
    let rest = w
        .state
        .job_log
        .page(JobLogFilter::All, Some(*numbers.last().unwrap()), u32::MAX);
    assert_eq!(rest.len(), 20);
    assert_eq!(rest.last().unwrap().1.job, jobs[0]);

    let bobs = w.state.job_log.page(JobLogFilter::Payer(bob.address()), None, 5);
    assert_eq!(bobs.len(), 5);
    assert!(bobs.iter().all(|(_, s)| s.payer == bob.address()));
    let expected: Vec<JobId> = jobs.iter().skip(1).step_by(2).rev().take(5).copied().collect();
    assert_eq!(bobs.iter().map(|(_, s)| s.job).collect::<Vec<_>>(), expected);
    let older = w
        .state
        .job_log
        .page(JobLogFilter::Payer(bob.address()), Some(bobs[4].0), 1);
    assert_eq!(older[0].1.job, jobs[jobs.len() - 11]);
}

#[test]
fn a_work_record_comes_only_from_the_runner_of_a_recorded_job_and_names_each_node_once() {
    let mut w = world();
    let (alice, system) = (w.alice.clone(), w.system.clone());
    w.fund(alice.address(), aic(1000));
    let job = JobId::random();
    let runner = NodeId::from_public_key(b"sched-1");
    let node = |seed: &[u8], rows, verified_rows| NodeWork {
        node: NodeId::from_public_key(seed),
        rows,
        verified_rows,
        checks_passed: 1,
        checks_failed: 0,
        confirmed_wrong: false,
    };
    let record = |runner, nodes| Call::RecordJobWork { job, runner, nodes };
    // Before the job is recorded: refused.
    assert!(matches!(
        w.send(&system, record(runner, vec![node(b"a", 1, 1)])),
        Err(TxError::JobNotRecorded(_))
    ));
    w.send(&alice, Call::OpenEscrow { job, amount: aic(10) }).unwrap();
    w.send(
        &system,
        Call::RecordJob {
            job,
            runner,
            dataset: AssetId::from_bytes([1; 16]),
            model: AssetId::from_bytes([2; 16]),
            request: b"request".to_vec(),
        },
    )
    .unwrap();
    let refusals = [
        (
            record(NodeId::from_public_key(b"sched-2"), vec![node(b"a", 1, 1)]),
            "another replica",
        ),
        (
            record(runner, vec![node(b"a", 1, 1), node(b"a", 2, 0)]),
            "a node twice",
        ),
        (
            record(runner, vec![node(b"a", 1, 2)]),
            "more verified rows than rows",
        ),
        (
            record(
                runner,
                (0..1025u32).map(|i| node(&i.to_le_bytes(), 1, 0)).collect(),
            ),
            "past the release's payouts",
        ),
    ];
    for (call, why) in refusals {
        let refused = w.send(&system, call);
        assert!(
            matches!(refused, Err(TxError::NotTheRunner { .. } | TxError::Invalid(_))),
            "{why}: {refused:?}"
        );
        assert!(
            w.state.job_log.work(&job).nodes.is_empty(),
            "{why}: nothing recorded"
        );
    }
    // A user cannot write it at all: it is a system call.
    assert!(w.send(&alice, record(runner, vec![node(b"a", 1, 1)])).is_err());
    w.send(&system, record(runner, vec![node(b"a", 1, 1)])).unwrap();
    assert_eq!(w.state.job_log.work(&job).nodes.len(), 1);
}
