//! The marketplace on the ledger: list, buy, withdraw — a sale moves the price and the asset
//! together or neither, a listing ends when the asset moves, a buyer never pays more than it
//! agreed to; every refusal typed and leaving the state unchanged, the audit holding throughout.

mod common;

use aic_ledger::state::Event;
use aic_ledger::tx::{AssetKind, Call};
use aic_ledger::TxError;
use aic_protocol::AssetId;
use common::{aic, metadata, minted, world, World};

fn model_of(w: &mut World, owner: &aic_ledger::Keypair, name: &str) -> AssetId {
    minted(
        &w.send(
            owner,
            Call::MintAsset {
                kind: AssetKind::Model,
                metadata: metadata(name),
            },
        )
        .unwrap(),
    )
}

#[test]
fn a_sale_pays_the_seller_and_hands_over_the_asset_in_one_transaction() {
    let mut w = world();
    let (alice, bob) = (w.alice.clone(), w.bob.clone());
    let model = model_of(&mut w, &alice, "cnn");
    w.fund(bob.address(), aic(100));
    let listed = w
        .send(
            &alice,
            Call::ListAsset {
                asset: model,
                price: aic(30),
            },
        )
        .unwrap();
    assert_eq!(
        listed,
        vec![Event::AssetListed {
            asset: model,
            seller: alice.address(),
            price: aic(30)
        }]
    );
    assert_eq!(w.state.listings[&model].price, aic(30));
    let seller_before = w.state.balance_of(&alice.address());

    let events = w
        .send(
            &bob,
            Call::BuyAsset {
                asset: model,
                max_price: aic(30),
            },
        )
        .unwrap();
    assert!(events.contains(&Event::AssetSold {
        asset: model,
        seller: alice.address(),
        buyer: bob.address(),
        price: aic(30)
    }));
    assert_eq!(w.state.owner_of(&model).unwrap(), bob.address());
    assert_eq!(w.state.balance_of(&bob.address()), aic(70));
    assert_eq!(
        w.state.balance_of(&alice.address()),
        seller_before.checked_add(aic(30)).unwrap()
    );
    assert!(w.state.listings.is_empty(), "a sold asset is no longer listed");
    // Both parties see the sale in their history.
    for party in [alice.address(), bob.address()] {
        assert!(
            w.state.history[&party]
                .iter()
                .any(|h| matches!(h.event, Event::AssetSold { .. })),
            "{party}"
        );
    }
    // Sold once: a second buy finds no listing.
    let carol = aic_ledger::Keypair::generate();
    w.fund(carol.address(), aic(100));
    assert!(matches!(
        w.send(
            &carol,
            Call::BuyAsset {
                asset: model,
                max_price: aic(30)
            }
        ),
        Err(TxError::NotListed(_))
    ));
}

#[test]
fn refused_purchases_move_nothing() {
    let mut w = world();
    let (alice, bob) = (w.alice.clone(), w.bob.clone());
    let model = model_of(&mut w, &alice, "mlp");
    w.fund(bob.address(), aic(10));
    // Only the owner lists, at a price above zero.
    assert!(matches!(
        w.send(
            &bob,
            Call::ListAsset {
                asset: model,
                price: aic(5)
            }
        ),
        Err(TxError::NotOwnerOrApproved(_))
    ));
    assert!(matches!(
        w.send(
            &alice,
            Call::ListAsset {
                asset: model,
                price: aic(0)
            }
        ),
        Err(TxError::Invalid(_))
    ));
    assert!(matches!(
        w.send(
            &bob,
            Call::BuyAsset {
                asset: model,
                max_price: aic(5)
            }
        ),
        Err(TxError::NotListed(_))
    ));
    w.send(
        &alice,
        Call::ListAsset {
            asset: model,
            price: aic(5),
        },
    )
    .unwrap();
    // The seller raised the price after the buyer looked: refused, not charged.
    w.send(
        &alice,
        Call::ListAsset {
            asset: model,
            price: aic(50),
        },
    )
    .unwrap();
    assert!(matches!(
        w.send(
            &bob,
            Call::BuyAsset {
                asset: model,
                max_price: aic(5)
            }
        ),
        Err(TxError::PriceAboveLimit { .. })
    ));
    // Agreeing to the price does not make up for funds the buyer lacks (the world's sender
    // checks a refusal changes nothing).
    assert!(matches!(
        w.send(
            &bob,
            Call::BuyAsset {
                asset: model,
                max_price: aic(50)
            }
        ),
        Err(TxError::InsufficientBalance { .. })
    ));
    assert!(matches!(
        w.send(
            &alice,
            Call::BuyAsset {
                asset: model,
                max_price: aic(50)
            }
        ),
        Err(TxError::Invalid(_))
    ));
    assert_eq!(w.state.owner_of(&model).unwrap(), alice.address());
}

#[test]
fn a_listing_ends_when_withdrawn_or_when_the_asset_moves() {
    let mut w = world();
    let (alice, bob) = (w.alice.clone(), w.bob.clone());
    let model = model_of(&mut w, &alice, "gru");
    w.fund(bob.address(), aic(100));
    w.send(
        &alice,
        Call::ListAsset {
            asset: model,
            price: aic(5),
        },
    )
    .unwrap();
    assert!(matches!(
        w.send(&bob, Call::UnlistAsset { asset: model }),
        Err(TxError::NotOwnerOrApproved(_))
    ));
    w.send(&alice, Call::UnlistAsset { asset: model }).unwrap();
    assert!(matches!(
        w.send(
            &bob,
            Call::BuyAsset {
                asset: model,
                max_price: aic(5)
            }
        ),
        Err(TxError::NotListed(_))
    ));

    // Listed, then given away: the old owner's listing does not sell the new owner's asset.
    w.send(
        &alice,
        Call::ListAsset {
            asset: model,
            price: aic(5),
        },
    )
    .unwrap();
    let carol = aic_ledger::Keypair::generate();
    w.send(
        &alice,
        Call::TransferAsset {
            from: alice.address(),
            to: carol.address(),
            asset: model,
        },
    )
    .unwrap();
    assert!(matches!(
        w.send(
            &bob,
            Call::BuyAsset {
                asset: model,
                max_price: aic(5)
            }
        ),
        Err(TxError::NotListed(_))
    ));
    assert_eq!(w.state.owner_of(&model).unwrap(), carol.address());
}
