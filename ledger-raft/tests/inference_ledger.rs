//! Inference on the ledger: publishing a TrainedModel, API keys, the prepaid inference escrow and
//! the batched settlement of metered rows — each refusal typed and leaving the state unchanged,
//! the audit holding after every step, and every base unit accounted for.

mod common;

use aic_ledger::amount::Amount;
use aic_ledger::state::{Event, InferenceTariff, InferenceUsage};
use aic_ledger::tx::{Call, PayoutKind};
use aic_ledger::{Address, Keypair, TxError};
use aic_protocol::{AssetId, JobId};
use common::{aic, metadata, minted, world, World};

/// A TrainedModel minted to `owner` through a settled job, as the scheduler does it.
fn trained_model(w: &mut World, owner: &Keypair, name: &str) -> AssetId {
    let system = w.system.clone();
    let job = JobId::random();
    w.fund(owner.address(), aic(10));
    w.send(owner, Call::OpenEscrow { job, amount: aic(1) }).unwrap();
    w.send(
        &system,
        Call::ReleaseEscrow {
            job,
            payouts: Vec::new(),
            platform_fee: aic(1),
        },
    )
    .unwrap();
    minted(
        &w.send(
            &system,
            Call::MintTrainedModel {
                job,
                metadata: metadata(name),
            },
        )
        .unwrap(),
    )
}

fn publish(asset: AssetId, price: Amount, alias: Option<&str>) -> Call {
    Call::PublishModel {
        asset,
        price_per_1k_rows: price,
        alias: alias.map(str::to_string),
    }
}

#[test]
fn only_a_trained_models_owner_publishes_it_and_an_alias_names_one_model() {
    let mut w = world();
    let (alice, bob) = (w.alice.clone(), w.bob.clone());
    let model = trained_model(&mut w, &alice, "digits");
    let other = trained_model(&mut w, &bob, "penguins");
    assert!(matches!(
        w.send(&bob, publish(model, aic(1), None)).unwrap_err(),
        TxError::WrongOwner { .. }
    ));
    // A Model (a description) is not served.
    let description = minted(
        &w.send(
            &alice,
            Call::MintAsset {
                kind: aic_ledger::tx::AssetKind::Model,
                metadata: metadata("a description"),
            },
        )
        .unwrap(),
    );
    assert!(matches!(
        w.send(&alice, publish(description, aic(1), None)).unwrap_err(),
        TxError::Invalid(_)
    ));
    for bad in ["", "Digits", "9lives", "a b", &"x".repeat(65), &model.to_string()] {
        assert!(
            matches!(
                w.send(&alice, publish(model, aic(1), Some(bad))).unwrap_err(),
                TxError::Invalid(_)
            ),
            "alias {bad:?} was accepted"
        );
    }
    w.send(&alice, publish(model, aic(2), Some("digits"))).unwrap();
    let (id, publication) = w.state.resolve_model("digits").unwrap();
    assert_eq!((id, publication.price_per_1k_rows), (model, aic(2)));
    assert_eq!(w.state.resolve_model(&model.to_string()).unwrap().0, model);
    match w.send(&bob, publish(other, aic(1), Some("digits"))).unwrap_err() {
        TxError::AliasTaken { alias, asset } => assert_eq!((alias.as_str(), asset), ("digits", model)),
        other => panic!("expected AliasTaken, got {other:?}"),
    }
    // Publishing again renames: the old alias is free.
    w.send(&alice, publish(model, aic(3), Some("digits-v2"))).unwrap();
    assert!(w.state.resolve_model("digits").is_none());
    w.send(&bob, publish(other, aic(1), Some("digits"))).unwrap();
    // Unpublishing frees the alias and keeps the price for what was served.
    w.send(&alice, Call::UnpublishModel { asset: model }).unwrap();
    assert!(w.state.resolve_model("digits-v2").is_none());
    assert!(!w.state.published[&model].live);
    assert!(matches!(
        w.send(&alice, Call::UnpublishModel { asset: model }).unwrap_err(),
        TxError::NotPublished(_)
    ));
    // Burning a published model forgets it.
    w.send(&bob, Call::BurnAsset { asset: other }).unwrap();
    assert!(w.state.resolve_model("digits").is_none());
    assert!(!w.state.published.contains_key(&other));
}

#[test]
fn keys_are_bound_by_hash_to_one_account_and_revoked_by_it_alone() {
    let mut w = world();
    let (alice, bob) = (w.alice.clone(), w.bob.clone());
    let hash = *blake3::hash(b"aic_k_secret").as_bytes();
    w.send(
        &alice,
        Call::CreateApiKey {
            key_hash: hash,
            label: "laptop".into(),
        },
    )
    .unwrap();
    assert_eq!(w.state.api_keys[&hash].account, alice.address());
    // The same key cannot be bound twice, by anyone.
    assert!(matches!(
        w.send(
            &bob,
            Call::CreateApiKey {
                key_hash: hash,
                label: String::new()
            }
        )
        .unwrap_err(),
        TxError::Invalid(_)
    ));
    assert!(matches!(
        w.send(
            &alice,
            Call::CreateApiKey {
                key_hash: [1; 32],
                label: "bad\nlabel".into()
            }
        )
        .unwrap_err(),
        TxError::Invalid(_)
    ));
    assert!(matches!(
        w.send(&bob, Call::RevokeApiKey { key_hash: hash }).unwrap_err(),
        TxError::Invalid(_)
    ));
    w.send(&alice, Call::RevokeApiKey { key_hash: hash }).unwrap();
    assert!(w.state.api_keys[&hash].revoked);
    assert!(matches!(
        w.send(&alice, Call::RevokeApiKey { key_hash: hash }).unwrap_err(),
        TxError::Invalid(_)
    ));
    for i in 1..aic_ledger::state::MAX_KEYS_PER_ACCOUNT as u8 {
        w.send(
            &alice,
            Call::CreateApiKey {
                key_hash: [i; 32],
                label: String::new(),
            },
        )
        .unwrap();
    }
    assert!(matches!(
        w.send(
            &alice,
            Call::CreateApiKey {
                key_hash: [255; 32],
                label: String::new()
            }
        )
        .unwrap_err(),
        TxError::Invalid(_)
    ));
}

#[test]
fn the_inference_escrow_is_funded_and_withdrawn_from_the_balance() {
    let mut w = world();
    let alice = w.alice.clone();
    w.fund(alice.address(), aic(10));
    assert!(matches!(
        w.send(&alice, Call::FundInference { amount: aic(11) })
            .unwrap_err(),
        TxError::InsufficientBalance { .. }
    ));
    assert!(matches!(
        w.send(&alice, Call::FundInference { amount: Amount::ZERO })
            .unwrap_err(),
        TxError::Invalid(_)
    ));
    w.send(&alice, Call::FundInference { amount: aic(4) }).unwrap();
    assert_eq!(w.state.inference_escrow_of(&alice.address()), aic(4));
    assert_eq!(w.state.balance_of(&alice.address()), aic(6));
    assert!(matches!(
        w.send(&alice, Call::WithdrawInference { amount: aic(5) })
            .unwrap_err(),
        TxError::InsufficientBalance { .. }
    ));
    w.send(&alice, Call::WithdrawInference { amount: aic(4) })
        .unwrap();
    assert_eq!(w.state.balance_of(&alice.address()), aic(10));
    assert!(w.state.inference_escrow.is_empty(), "an empty escrow is not kept");
}

/// Base units of `rows` at `per_1k` AIC per 1,000 rows.
fn cost(per_1k: u128, rows: u128) -> u128 {
    aic(per_1k).0 * rows / 1000
}

#[test]
fn a_period_pays_the_owner_the_nodes_and_the_burn_to_the_base_unit_once() {
    let mut w = world();
    let (system, alice, bob) = (w.system.clone(), w.alice.clone(), w.bob.clone());
    let model = trained_model(&mut w, &alice, "digits");
    w.send(&alice, publish(model, aic(2), Some("digits"))).unwrap();
    w.fund(bob.address(), aic(100));
    w.send(&bob, Call::FundInference { amount: aic(50) }).unwrap();
    let (node_a, node_b) = (Address([0xa; 32]), Address([0xb; 32]));
    let tariff = InferenceTariff {
        compute_per_1k_rows: aic(1),
        platform_per_1k_rows: Amount(aic(1).0 / 2),
    };
    let usage = vec![InferenceUsage {
        payer: bob.address(),
        model,
        rows: 1_500,
        served: vec![(node_a, 1_000), (node_b, 500)],
    }];
    let settle = |period, usage: Vec<InferenceUsage>| Call::SettleInference {
        period,
        tariff,
        usage,
    };
    // A user cannot settle, nor can a key genesis does not name.
    assert!(matches!(
        w.send(&bob, settle(1, usage.clone())).unwrap_err(),
        TxError::NotSettler
    ));
    let (owner_before, burned_before, supply_before) = (
        w.state.balance_of(&alice.address()).0,
        w.state.burned.0,
        w.state.total_supply().0,
    );
    let events = w.send(&system, settle(1, usage.clone())).unwrap();
    let owner_fee = cost(2, 1_500);
    let (compute_a, compute_b) = (cost(1, 1_000), cost(1, 500));
    let platform = aic(1).0 / 2 * 1_500 / 1000;
    assert_eq!(w.state.balance_of(&alice.address()).0 - owner_before, owner_fee);
    assert_eq!(w.state.balance_of(&node_a).0, compute_a);
    assert_eq!(w.state.balance_of(&node_b).0, compute_b);
    assert_eq!(w.state.burned.0 - burned_before, platform);
    let charged = owner_fee + compute_a + compute_b + platform;
    assert_eq!(w.state.inference_escrow_of(&bob.address()).0, aic(50).0 - charged);
    assert_eq!(w.state.total_supply().0, supply_before - platform);
    assert!(events.iter().any(|e| matches!(
        e,
        Event::InferenceCharged { rows: 1_500, amount, .. } if amount.0 == charged
    )));
    assert!(events.iter().any(|e| matches!(
        e,
        Event::InferencePaid { kind: PayoutKind::ModelFee, amount, .. } if amount.0 == owner_fee
    )));
    // The same period again (a retried submission) is refused whole: nothing is charged twice.
    match w.send(&system, settle(1, usage.clone())).unwrap_err() {
        TxError::PeriodSettled { period: 1, last: 1 } => {}
        other => panic!("expected PeriodSettled, got {other:?}"),
    }
    // Rows that do not add up, or a model that was never published, are refused.
    let mut uneven = usage.clone();
    uneven[0].served[1].1 = 499;
    assert!(matches!(
        w.send(&system, settle(2, uneven)).unwrap_err(),
        TxError::Invalid(_)
    ));
    let unpublished = trained_model(&mut w, &alice, "other");
    let mut wrong = usage.clone();
    wrong[0].model = unpublished;
    assert!(matches!(
        w.send(&system, settle(2, wrong)).unwrap_err(),
        TxError::NotPublished(_)
    ));
}

#[test]
fn a_payer_that_withdrew_pays_what_it_holds_owner_first() {
    let mut w = world();
    let (system, alice, bob) = (w.system.clone(), w.alice.clone(), w.bob.clone());
    let model = trained_model(&mut w, &alice, "digits");
    w.send(&alice, publish(model, aic(2), None)).unwrap();
    w.fund(bob.address(), aic(100));
    w.send(&bob, Call::FundInference { amount: aic(3) }).unwrap();
    let owner_before = w.state.balance_of(&alice.address());
    let node = Address([0xc; 32]);
    let tariff = InferenceTariff {
        compute_per_1k_rows: aic(2),
        platform_per_1k_rows: aic(1),
    };
    // 1,000 rows cost 2 (owner) + 2 (compute) + 1 (platform) = 5 AIC; 3 are held.
    w.send(
        &system,
        Call::SettleInference {
            period: 7,
            tariff,
            usage: vec![InferenceUsage {
                payer: bob.address(),
                model,
                rows: 1_000,
                served: vec![(node, 1_000)],
            }],
        },
    )
    .unwrap();
    assert_eq!(w.state.balance_of(&alice.address()).0 - owner_before.0, aic(2).0);
    assert_eq!(w.state.balance_of(&node), aic(1));
    assert_eq!(w.state.inference_escrow_of(&bob.address()), Amount::ZERO);
}
