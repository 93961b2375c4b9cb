//! The ledger state machine against the standards and against bad input: every refusal has its
//! own error and leaves the state unchanged, and the audit holds after every step.

mod common;

use aic_ledger::amount::Amount;
use aic_ledger::state::{CheckpointTensors, Event};
use aic_ledger::tx::{AssetKind, Call, Payout, PayoutKind, Transaction};
use aic_ledger::{Address, Keypair, LedgerState, TxError};
use aic_protocol::tensor::TensorRef;
use aic_protocol::{JobId, NodeId};
use common::{aic, metadata, minted, world};

#[test]
fn genesis_follows_the_whitepaper_split() {
    let w = world();
    let g = &w.state.genesis;
    assert_eq!(w.state.balance_of(&g.holders.fundraiser), aic(3_000_000_000));
    assert_eq!(w.state.balance_of(&g.holders.team), aic(2_500_000_000));
    assert_eq!(w.state.balance_of(&g.holders.advisors), aic(1_000_000_000));
    assert_eq!(w.state.balance_of(&g.holders.company), aic(1_000_000_000));
    assert_eq!(w.state.balance_of(&g.holders.operations), aic(500_000_000));
    assert_eq!(g.reserve(), aic(2_000_000_000));
    assert_eq!(
        w.state.total_supply(),
        aic(8_000_000_000),
        "the reserve is not circulating"
    );
}

#[test]
fn unsold_fundraiser_tokens_are_burned_at_genesis() {
    let mut w = world();
    let mut genesis = w.state.genesis.clone();
    genesis.unsold_fundraiser = aic(1_000_000_000);
    w.state = LedgerState::from_genesis(genesis);
    w.state.audit().unwrap();
    assert_eq!(w.state.balance_of(&w.fundraiser.address()), aic(2_000_000_000));
    assert_eq!(w.state.burned, aic(1_000_000_000));
    assert_eq!(w.state.total_supply(), aic(7_000_000_000));
}

#[test]
fn erc20_transfers_self_transfers_and_zero_amounts() {
    let mut w = world();
    w.fund(w.alice.address(), aic(100));
    let alice = w.alice.clone();
    let events = w
        .send(
            &alice,
            Call::Transfer {
                to: w.bob.address(),
                amount: aic(40),
            },
        )
        .unwrap();
    assert_eq!(
        events,
        vec![Event::Transfer {
            from: Some(alice.address()),
            to: Some(w.bob.address()),
            amount: aic(40)
        }]
    );
    assert_eq!(w.state.balance_of(&alice.address()), aic(60));
    assert_eq!(w.state.balance_of(&w.bob.address()), aic(40));
    // Self-transfer: allowed, emits Transfer, changes nothing.
    w.send(
        &alice,
        Call::Transfer {
            to: alice.address(),
            amount: aic(60),
        },
    )
    .unwrap();
    assert_eq!(w.state.balance_of(&alice.address()), aic(60));
    // Zero amount: allowed.
    w.send(
        &alice,
        Call::Transfer {
            to: w.bob.address(),
            amount: Amount::ZERO,
        },
    )
    .unwrap();
    // Above balance: refused, nothing changes (checked in `send`).
    let err = w
        .send(
            &alice,
            Call::Transfer {
                to: w.bob.address(),
                amount: aic(61),
            },
        )
        .unwrap_err();
    assert!(matches!(err, TxError::InsufficientBalance { .. }));
    assert_eq!(err.code(), 103);
    // Amounts near u128::MAX are refused, not wrapped.
    let err = w
        .send(
            &alice,
            Call::Transfer {
                to: w.bob.address(),
                amount: Amount(u128::MAX),
            },
        )
        .unwrap_err();
    assert!(matches!(err, TxError::InsufficientBalance { .. }));
}

#[test]
fn erc20_allowances_overwrite_and_are_spent_down() {
    let mut w = world();
    w.fund(w.alice.address(), aic(100));
    let (alice, bob) = (w.alice.clone(), w.bob.clone());
    w.send(
        &alice,
        Call::Approve {
            spender: bob.address(),
            amount: aic(10),
        },
    )
    .unwrap();
    w.send(
        &alice,
        Call::Approve {
            spender: bob.address(),
            amount: aic(30),
        },
    )
    .unwrap();
    assert_eq!(
        w.state.allowance(&alice.address(), &bob.address()),
        aic(30),
        "approve overwrites"
    );
    let carol = Keypair::generate().address();
    let err = w
        .send(
            &bob,
            Call::TransferFrom {
                owner: alice.address(),
                to: carol,
                amount: aic(31),
            },
        )
        .unwrap_err();
    assert!(matches!(err, TxError::InsufficientAllowance { .. }));
    assert_eq!(err.code(), 104);
    w.send(
        &bob,
        Call::TransferFrom {
            owner: alice.address(),
            to: carol,
            amount: aic(20),
        },
    )
    .unwrap();
    assert_eq!(w.state.allowance(&alice.address(), &bob.address()), aic(10));
    assert_eq!(w.state.balance_of(&carol), aic(20));
    // Allowance above balance: the balance limits.
    w.send(
        &alice,
        Call::Approve {
            spender: bob.address(),
            amount: aic(1000),
        },
    )
    .unwrap();
    let err = w
        .send(
            &bob,
            Call::TransferFrom {
                owner: alice.address(),
                to: carol,
                amount: aic(81),
            },
        )
        .unwrap_err();
    assert!(matches!(err, TxError::InsufficientBalance { .. }));
}

#[test]
fn replays_wrong_chains_and_bad_signatures_are_refused_with_their_own_codes() {
    let mut w = world();
    w.fund(w.alice.address(), aic(10));
    let alice = w.alice.clone();
    let tx = Transaction {
        chain_id: "aic-test".into(),
        from: alice.address(),
        nonce: 0,
        call: Call::Transfer {
            to: w.bob.address(),
            amount: aic(1),
        },
    };
    let signed = tx.clone().sign(&alice);
    w.state.apply_transaction(&signed).unwrap();
    let before = w.state.clone();
    let replay = w.state.apply_transaction(&signed).unwrap_err();
    assert_eq!(replay, TxError::BadNonce { expected: 1, got: 0 });
    assert_eq!(replay.code(), 102);

    let other_chain = Transaction {
        chain_id: "aic-other".into(),
        nonce: 1,
        ..tx.clone()
    }
    .sign(&alice);
    assert_eq!(w.state.apply_transaction(&other_chain).unwrap_err().code(), 101);

    let mut forged = Transaction {
        nonce: 1,
        ..tx.clone()
    }
    .sign(&alice);
    forged.signature[0] ^= 1;
    assert_eq!(
        w.state.apply_transaction(&forged).unwrap_err(),
        TxError::BadSignature
    );

    // A non-canonical signature: S + L (the group order) verifies under lax rules, never here.
    let mut malleable = Transaction {
        nonce: 1,
        ..tx.clone()
    }
    .sign(&alice);
    let order: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for (s_byte, order_byte) in malleable.signature[32..].iter_mut().zip(order) {
        let sum = u16::from(*s_byte) + u16::from(order_byte) + carry;
        *s_byte = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(
        w.state.apply_transaction(&malleable).unwrap_err(),
        TxError::BadSignature
    );

    // Signed by someone else on alice's behalf.
    let impostor = Transaction { nonce: 1, ..tx }.sign(&w.bob);
    assert_eq!(
        w.state.apply_transaction(&impostor).unwrap_err(),
        TxError::BadSignature
    );
    assert_eq!(w.state, before, "no refusal changed anything");
}

#[test]
fn vesting_locks_the_team_share_until_it_vests() {
    let mut w = world();
    let team = w.team.clone();
    let err = w
        .send(
            &team,
            Call::Transfer {
                to: w.alice.address(),
                amount: aic(1),
            },
        )
        .unwrap_err();
    assert!(matches!(err, TxError::Locked { .. }), "{err:?}");
    // Half a year later, about half is spendable.
    w.state.time_ms += 365 * 24 * 3600 * 1000 / 2;
    let spendable = w.state.spendable(&team.address());
    assert!(
        spendable > aic(1_249_000_000) && spendable < aic(1_251_000_000),
        "{spendable}"
    );
    w.send(
        &team,
        Call::Transfer {
            to: w.alice.address(),
            amount: aic(1_000_000_000),
        },
    )
    .unwrap();
}

#[test]
fn erc721_ownership_approvals_and_burns() {
    let mut w = world();
    let (alice, bob) = (w.alice.clone(), w.bob.clone());
    let carol = Keypair::generate();
    let asset = minted(
        &w.send(
            &alice,
            Call::MintAsset {
                kind: AssetKind::Model,
                metadata: metadata("digits"),
            },
        )
        .unwrap(),
    );
    assert_eq!(w.state.owner_of(&asset).unwrap(), alice.address());
    assert_eq!(w.state.asset_balance_of(&alice.address()), 1);

    // Bob may not move it.
    let err = w
        .send(
            &bob,
            Call::TransferAsset {
                from: alice.address(),
                to: bob.address(),
                asset,
            },
        )
        .unwrap_err();
    assert_eq!(err.code(), 108);
    // Approved, he may; the approval is cleared by the transfer.
    w.send(
        &alice,
        Call::ApproveAsset {
            approved: Some(bob.address()),
            asset,
        },
    )
    .unwrap();
    w.send(
        &bob,
        Call::TransferAsset {
            from: alice.address(),
            to: carol.address(),
            asset,
        },
    )
    .unwrap();
    assert_eq!(w.state.owner_of(&asset).unwrap(), carol.address());
    assert_eq!(
        w.state.assets[&asset].approved, None,
        "approval cleared on transfer"
    );
    assert_eq!(w.state.asset_balance_of(&alice.address()), 0);
    // The wrong `from` is refused even for the owner.
    let err = w
        .send(
            &carol,
            Call::TransferAsset {
                from: alice.address(),
                to: bob.address(),
                asset,
            },
        )
        .unwrap_err();
    assert_eq!(err.code(), 109);
    // Operators manage everything of an owner, until revoked.
    w.send(
        &carol,
        Call::SetApprovalForAll {
            operator: bob.address(),
            approved: true,
        },
    )
    .unwrap();
    assert!(w.state.is_approved_for_all(&carol.address(), &bob.address()));
    w.send(
        &bob,
        Call::TransferAsset {
            from: carol.address(),
            to: carol.address(),
            asset,
        },
    )
    .unwrap();
    w.send(
        &carol,
        Call::SetApprovalForAll {
            operator: bob.address(),
            approved: false,
        },
    )
    .unwrap();
    assert_eq!(w.send(&bob, Call::BurnAsset { asset }).unwrap_err().code(), 108);
    // Approval to the owner itself is refused, as ERC721 does.
    assert_eq!(
        w.send(
            &carol,
            Call::ApproveAsset {
                approved: Some(carol.address()),
                asset
            }
        )
        .unwrap_err()
        .code(),
        115
    );
    w.send(&carol, Call::BurnAsset { asset }).unwrap();
    assert_eq!(
        w.state.owner_of(&asset).unwrap_err().code(),
        107,
        "ownerOf a burned token"
    );
    let unknown = aic_protocol::AssetId::random();
    assert_eq!(
        w.send(
            &carol,
            Call::TransferAsset {
                from: carol.address(),
                to: bob.address(),
                asset: unknown
            }
        )
        .unwrap_err()
        .code(),
        107
    );
}

#[test]
fn escrow_pays_out_burns_the_platform_fee_and_refunds_the_rest() {
    let mut w = world();
    w.fund(w.alice.address(), aic(1000));
    let alice = w.alice.clone();
    let system = w.system.clone();
    let job = JobId::random();
    w.send(
        &alice,
        Call::OpenEscrow {
            job,
            amount: aic(100),
        },
    )
    .unwrap();
    assert_eq!(w.state.balance_of(&alice.address()), aic(900));
    assert_eq!(
        w.send(&alice, Call::OpenEscrow { job, amount: aic(1) })
            .unwrap_err()
            .code(),
        112
    );

    // Only the scheduler's key may release.
    let release = Call::ReleaseEscrow {
        job,
        payouts: vec![
            Payout {
                to: w.bob.address(),
                amount: aic(50),
                kind: PayoutKind::Compute,
            },
            Payout {
                to: w.bob.address(),
                amount: aic(5),
                kind: PayoutKind::DatasetFee,
            },
        ],
        platform_fee: aic(10),
    };
    assert_eq!(w.send(&alice, release.clone()).unwrap_err(), TxError::NotSystem);
    let too_much = Call::ReleaseEscrow {
        job,
        payouts: vec![],
        platform_fee: aic(101),
    };
    assert!(matches!(
        w.send(&system, too_much).unwrap_err(),
        TxError::InsufficientBalance { .. }
    ));
    w.send(&system, release).unwrap();
    assert_eq!(w.state.balance_of(&w.bob.address()), aic(55));
    assert_eq!(w.state.burned, aic(10));
    assert_eq!(w.state.cumulative_fees, aic(15));
    w.send(&system, Call::RefundEscrow { job }).unwrap();
    assert_eq!(w.state.balance_of(&alice.address()), aic(935));
    assert!(w.state.escrows.is_empty());
    assert_eq!(
        w.send(&system, Call::RefundEscrow { job }).unwrap_err().code(),
        111
    );
}

#[test]
fn a_job_record_follows_its_runner_checkpoints_forward_and_goes_with_the_payout() {
    let mut w = world();
    w.fund(w.alice.address(), aic(1000));
    let (alice, system) = (w.alice.clone(), w.system.clone());
    let job = JobId::random();
    let (first, second) = (
        NodeId::from_public_key(b"sched-1"),
        NodeId::from_public_key(b"sched-2"),
    );
    let record = Call::RecordJob {
        job,
        runner: first,
        dataset: aic_protocol::AssetId::from_bytes([1; 16]),
        model: aic_protocol::AssetId::from_bytes([2; 16]),
        request: b"request".to_vec(),
    };
    // No escrow, no record; only the system key records.
    assert_eq!(w.send(&system, record.clone()).unwrap_err().code(), 111);
    w.send(
        &alice,
        Call::OpenEscrow {
            job,
            amount: aic(100),
        },
    )
    .unwrap();
    assert_eq!(w.send(&alice, record.clone()).unwrap_err(), TxError::NotSystem);
    w.send(&system, record.clone()).unwrap();
    assert!(w.send(&system, record).is_err(), "recorded once");
    let too_big = Call::RecordJob {
        job: JobId::random(),
        runner: first,
        dataset: aic_protocol::AssetId::from_bytes([1; 16]),
        model: aic_protocol::AssetId::from_bytes([2; 16]),
        request: vec![0; aic_ledger::state::MAX_JOB_REQUEST_BYTES + 1],
    };
    assert!(w.send(&system, too_big).is_err());

    let tensors = |round: u32| CheckpointTensors {
        weights: TensorRef::of(&[round as f32; 8]),
        optimizer_state: None,
        holders: vec![NodeId::from_public_key(b"storage")],
    };
    let checkpoint = |runner: NodeId, round: u32| Call::CheckpointJob {
        job,
        runner,
        round,
        tensors: Some(tensors(round)),
        progress: b"{}".to_vec(),
    };
    w.send(&system, checkpoint(first, 1)).unwrap();
    w.send(&system, checkpoint(first, 2)).unwrap();
    assert!(
        w.send(&system, checkpoint(first, 1)).is_err(),
        "rounds only go forward"
    );
    // Only the runner checkpoints: a typed refusal a runner branches on (it stops, unpaid).
    assert!(matches!(
        w.send(&system, checkpoint(second, 3)).unwrap_err(),
        TxError::NotTheRunner { .. }
    ));
    // A checkpoint names where its tensors are, and an optimizer state shaped like the weights.
    let nowhere = Call::CheckpointJob {
        job,
        runner: first,
        round: 3,
        tensors: Some(CheckpointTensors {
            holders: Vec::new(),
            ..tensors(3)
        }),
        progress: Vec::new(),
    };
    assert!(w.send(&system, nowhere).is_err());
    let misshapen = Call::CheckpointJob {
        job,
        runner: first,
        round: 3,
        tensors: Some(CheckpointTensors {
            optimizer_state: Some(TensorRef::of(&[0.0; 7])),
            ..tensors(3)
        }),
        progress: Vec::new(),
    };
    assert!(w.send(&system, misshapen).is_err());
    let tallies_cap = Call::CheckpointJob {
        job,
        runner: first,
        round: 3,
        tensors: Some(tensors(3)),
        progress: vec![0; aic_ledger::state::MAX_JOB_PROGRESS_BYTES + 1],
    };
    assert!(w.send(&system, tallies_cap).is_err());

    // A takeover: the new runner checkpoints, the old one is refused from then on.
    let events = w
        .send(&system, Call::TakeOverJob { job, runner: second })
        .unwrap();
    assert_eq!(
        events,
        vec![Event::JobTakenOver {
            job,
            from: first,
            to: second
        }]
    );
    assert!(w.send(&system, checkpoint(first, 3)).is_err());
    w.send(&system, checkpoint(second, 3)).unwrap();
    let record = &w.state.jobs[&job];
    assert_eq!(
        (record.runner, record.round, record.checkpoints, record.takeovers),
        (second, 3, 3, 1)
    );
    assert_eq!(record.tensors, Some(tensors(3)));

    // A rewind: only backwards, only by the runner, with tensors held somewhere; then the
    // rounds go forward again from there.
    let wrong = NodeId::from_public_key(b"wrong");
    let rewind = |runner: NodeId, round: u32, tensors: CheckpointTensors| Call::RewindJob {
        job,
        runner,
        round,
        tensors,
        progress: b"{}".to_vec(),
        wrong,
    };
    assert!(
        w.send(&system, rewind(second, 3, tensors(3))).is_err(),
        "not forward"
    );
    assert!(matches!(
        w.send(&system, rewind(first, 1, tensors(1))).unwrap_err(),
        TxError::NotTheRunner { .. }
    ));
    let nowhere = CheckpointTensors {
        holders: Vec::new(),
        ..tensors(1)
    };
    assert!(w.send(&system, rewind(second, 1, nowhere)).is_err());
    assert_eq!(
        w.send(&alice, rewind(second, 1, tensors(1))).unwrap_err(),
        TxError::NotSystem
    );
    assert_eq!(w.state.jobs[&job].round, 3, "nothing refused changed the record");
    let events = w.send(&system, rewind(second, 1, tensors(1))).unwrap();
    assert_eq!(
        events,
        vec![Event::JobRewound {
            job,
            runner: second,
            from: 3,
            to: 1,
            wrong
        }]
    );
    let record = &w.state.jobs[&job];
    assert_eq!((record.round, record.checkpoints), (1, 4));
    assert_eq!(record.tensors, Some(tensors(1)));
    w.send(&system, checkpoint(second, 2)).unwrap();
    w.send(&system, checkpoint(second, 3)).unwrap();

    // Releasing the escrow settles the job: its record goes, and it cannot be resumed.
    w.send(
        &system,
        Call::ReleaseEscrow {
            job,
            payouts: vec![],
            platform_fee: aic(1),
        },
    )
    .unwrap();
    assert!(w.state.jobs.is_empty());
    assert_eq!(
        w.send(&system, checkpoint(second, 4)).unwrap_err(),
        TxError::JobNotRecorded(job.to_string())
    );
}

#[test]
fn rewards_accrue_per_job_and_are_issued_once_per_epoch_within_the_cap() {
    let mut w = world();
    let (alice, bob, system) = (w.alice.clone(), w.bob.clone(), w.system.clone());
    let job = JobId::random();
    let accrue = |a: u128, b: u128| Call::AccrueRewards {
        job,
        rewards: vec![(alice.address(), aic(a)), (bob.address(), aic(b))],
    };
    assert_eq!(w.send(&alice, accrue(1, 1)).unwrap_err(), TxError::NotSystem);
    w.send(&system, accrue(30, 10)).unwrap();
    w.send(&system, accrue(10, 0)).unwrap();
    assert_eq!(w.state.accrued_rewards[&alice.address()], aic(40));
    assert_eq!(
        w.state.balance_of(&alice.address()),
        Amount::ZERO,
        "accrued, not issued"
    );

    // No fee paid yet: the cap allows nothing; the epoch passes and the rewards stay accrued.
    w.send(&system, Call::PayRewardEpoch { epoch: 1 }).unwrap();
    assert_eq!(w.state.issued, Amount::ZERO);
    assert_eq!(w.state.accrued_rewards.len(), 2);
    assert!(
        w.send(&system, Call::PayRewardEpoch { epoch: 1 }).is_err(),
        "an epoch pays once"
    );

    // A fee opens the curve, but only 10 AIC were burned: 10 of the 50 accrued are issued,
    // pro rata, and the rest waits.
    w.fund(alice.address(), aic(1_000_000));
    let fee_job = JobId::random();
    w.send(
        &alice,
        Call::OpenEscrow {
            job: fee_job,
            amount: aic(1_000_000),
        },
    )
    .unwrap();
    w.send(
        &system,
        Call::ReleaseEscrow {
            job: fee_job,
            payouts: vec![],
            platform_fee: aic(10),
        },
    )
    .unwrap();
    w.send(&system, Call::RefundEscrow { job: fee_job }).unwrap();
    let issuable = w.state.issuable();
    assert!(issuable <= w.state.burned && !issuable.is_zero());
    let before = w.state.balance_of(&alice.address());
    let events = w.send(&system, Call::PayRewardEpoch { epoch: 2 }).unwrap();
    let issued = w.state.issued;
    assert_eq!(issued, issuable.min(aic(50)));
    let still: Amount = w
        .state
        .accrued_rewards
        .values()
        .fold(Amount::ZERO, |s, a| s.checked_add(*a).unwrap());
    assert_eq!(
        issued.checked_add(still).unwrap(),
        aic(50),
        "issued + still accrued = accrued"
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::RewardEpochPaid { epoch: 2, .. })));
    // Alice earned 4/5 of the accrual, so 4/5 of what was issued (rounded down).
    let alice_got = w.state.balance_of(&alice.address()).checked_sub(before).unwrap();
    assert_eq!(alice_got, issued.mul_div(4, 5).unwrap());
}

#[test]
fn stakes_are_slashed_into_the_burn_and_rewards_stay_under_the_curve_and_the_burn() {
    let mut w = world();
    w.fund(w.alice.address(), aic(1000));
    let (alice, system) = (w.alice.clone(), w.system.clone());
    w.send(&alice, Call::Stake { amount: aic(100) }).unwrap();
    assert_eq!(w.state.account(&alice.address()).stake, aic(100));
    w.send(
        &system,
        Call::Slash {
            account: alice.address(),
            amount: aic(30),
            reason: "mismatch".into(),
        },
    )
    .unwrap();
    assert_eq!(w.state.account(&alice.address()).stake, aic(70));
    assert_eq!(w.state.burned, aic(30));
    assert_eq!(
        w.send(
            &system,
            Call::Slash {
                account: alice.address(),
                amount: aic(71),
                reason: "x".into()
            }
        )
        .unwrap_err()
        .code(),
        113
    );
    w.send(&alice, Call::Unstake { amount: aic(70) }).unwrap();

    // No fees paid yet: nothing may be issued, however much was burned.
    assert_eq!(w.state.issuable(), Amount::ZERO);
    assert_eq!(
        w.send(
            &system,
            Call::Reward {
                to: alice.address(),
                amount: Amount(1)
            }
        )
        .unwrap_err()
        .code(),
        114
    );
    // Pay a large fee through escrow: the curve opens, but the burn still bounds issuance.
    let job = JobId::random();
    w.fund(alice.address(), aic(300_000_000));
    w.send(
        &alice,
        Call::OpenEscrow {
            job,
            amount: aic(200_000_000),
        },
    )
    .unwrap();
    w.send(
        &system,
        Call::ReleaseEscrow {
            job,
            payouts: vec![],
            platform_fee: aic(200_000_000),
        },
    )
    .unwrap();
    let issuable = w.state.issuable();
    assert_eq!(
        issuable, w.state.burned,
        "the curve allows more than was burned; the burn binds"
    );
    w.send(
        &system,
        Call::Reward {
            to: w.bob.address(),
            amount: issuable,
        },
    )
    .unwrap();
    assert_eq!(w.state.issued, issuable);
    assert_eq!(
        w.send(
            &system,
            Call::Reward {
                to: w.bob.address(),
                amount: Amount(1)
            }
        )
        .unwrap_err()
        .code(),
        114
    );
}

#[test]
fn sums_that_would_overflow_are_refused_with_the_overflow_code() {
    let mut w = world();
    w.fund(w.alice.address(), aic(10));
    let (alice, system) = (w.alice.clone(), w.system.clone());
    let job = JobId::random();
    w.send(&alice, Call::OpenEscrow { job, amount: aic(10) }).unwrap();
    let half = Amount(u128::MAX / 2 + 1);
    let payouts = vec![
        Payout {
            to: w.bob.address(),
            amount: half,
            kind: PayoutKind::Compute,
        },
        Payout {
            to: w.bob.address(),
            amount: half,
            kind: PayoutKind::Compute,
        },
    ];
    let err = w
        .send(
            &system,
            Call::ReleaseEscrow {
                job,
                payouts,
                platform_fee: Amount::ZERO,
            },
        )
        .unwrap_err();
    assert_eq!(err, TxError::Overflow);
    assert_eq!(err.code(), 106);
}

/// A storage replica's attestation of `content` for `owner`, signed with its node key.
fn attest(replica: &Keypair, content: &[u8; 32], owner: &Address) -> aic_ledger::tx::Attestation {
    let message = aic_protocol::messages::ImportAttestation::message(content, &owner.0);
    aic_ledger::tx::Attestation {
        node_key: replica.address(),
        signature: replica.sign(&message),
    }
}

#[test]
fn datasets_and_trained_models_cannot_be_minted_by_a_user() {
    let mut w = world();
    let alice = w.alice.clone();
    for kind in [AssetKind::Dataset, AssetKind::TrainedModel] {
        let err = w
            .send(
                &alice,
                Call::MintAsset {
                    kind,
                    metadata: metadata("copied"),
                },
            )
            .unwrap_err();
        assert_eq!(err, TxError::NeedsProvenance(kind));
        assert_eq!(err.code(), 118);
    }
    // A user may not send the system's mints either.
    let err = w
        .send(
            &alice,
            Call::MintImportedDataset {
                owner: alice.address(),
                metadata: metadata("copied"),
                attestations: vec![attest(&Keypair::generate(), &[1; 32], &alice.address())],
            },
        )
        .unwrap_err();
    assert_eq!(err, TxError::NotSystem);
}

#[test]
fn an_imported_dataset_needs_every_replica_signature_and_is_minted_once() {
    let mut w = world();
    let (system, alice, bob) = (w.system.clone(), w.alice.clone(), w.bob.clone());
    let (r1, r2) = (Keypair::generate(), Keypair::generate());
    let data = metadata("digits");
    let hash = data.content_hash;
    // A signature over another owner does not verify for alice.
    let forged = w
        .send(
            &system,
            Call::MintImportedDataset {
                owner: alice.address(),
                metadata: data.clone(),
                attestations: vec![
                    attest(&r1, &hash, &alice.address()),
                    attest(&r2, &hash, &bob.address()),
                ],
            },
        )
        .unwrap_err();
    assert!(matches!(forged, TxError::BadAttestation(_)), "{forged:?}");
    let none = w
        .send(
            &system,
            Call::MintImportedDataset {
                owner: alice.address(),
                metadata: data.clone(),
                attestations: Vec::new(),
            },
        )
        .unwrap_err();
    assert!(matches!(none, TxError::BadAttestation(_)));
    let twice = w
        .send(
            &system,
            Call::MintImportedDataset {
                owner: alice.address(),
                metadata: data.clone(),
                attestations: vec![
                    attest(&r1, &hash, &alice.address()),
                    attest(&r1, &hash, &alice.address()),
                ],
            },
        )
        .unwrap_err();
    assert!(matches!(twice, TxError::BadAttestation(_)));

    let asset = minted(
        &w.send(
            &system,
            Call::MintImportedDataset {
                owner: alice.address(),
                metadata: data.clone(),
                attestations: vec![
                    attest(&r1, &hash, &alice.address()),
                    attest(&r2, &hash, &alice.address()),
                ],
            },
        )
        .unwrap(),
    );
    let held = &w.state.assets[&asset];
    assert_eq!(held.owner, alice.address());
    assert_eq!(
        held.provenance,
        aic_ledger::state::Provenance::Imported {
            attesters: vec![
                NodeId::from_public_key(&r1.address().0),
                NodeId::from_public_key(&r2.address().0)
            ]
        }
    );
    // The same content again, even attested for bob, is refused: one genuine asset.
    let again = w
        .send(
            &system,
            Call::MintImportedDataset {
                owner: bob.address(),
                metadata: data.clone(),
                attestations: vec![attest(&r1, &hash, &bob.address())],
            },
        )
        .unwrap_err();
    assert_eq!(
        again,
        TxError::AlreadyMinted {
            kind: AssetKind::Dataset,
            asset
        }
    );
    // Burning it does not free its hash.
    w.send(&alice, Call::BurnAsset { asset }).unwrap();
    let after_burn = w
        .send(
            &system,
            Call::MintImportedDataset {
                owner: bob.address(),
                metadata: data,
                attestations: vec![attest(&r1, &hash, &bob.address())],
            },
        )
        .unwrap_err();
    assert!(matches!(after_burn, TxError::AlreadyMinted { .. }));
}

#[test]
fn a_trained_model_comes_only_from_a_settled_job_and_goes_to_its_payer() {
    let mut w = world();
    let (system, alice) = (w.system.clone(), w.alice.clone());
    w.fund(alice.address(), aic(100));
    let job = JobId::random();
    let mint = |job| Call::MintTrainedModel {
        job,
        metadata: metadata("trained"),
    };
    // Before the job is settled there is nothing to mint.
    w.send(&alice, Call::OpenEscrow { job, amount: aic(10) }).unwrap();
    assert!(matches!(
        w.send(&system, mint(job)).unwrap_err(),
        TxError::NoTrainedModelPending(_)
    ));
    w.send(
        &system,
        Call::ReleaseEscrow {
            job,
            payouts: Vec::new(),
            platform_fee: aic(1),
        },
    )
    .unwrap();
    let asset = minted(&w.send(&system, mint(job)).unwrap());
    let held = &w.state.assets[&asset];
    assert_eq!(held.owner, alice.address());
    assert_eq!(held.kind, AssetKind::TrainedModel);
    assert_eq!(held.provenance, aic_ledger::state::Provenance::Trained { job });
    // Once only.
    assert!(matches!(
        w.send(&system, mint(job)).unwrap_err(),
        TxError::NoTrainedModelPending(_)
    ));
}
