//! The ledger's audit: conservation of value, single ownership of assets, and bookkeeping that
//! must agree with itself. Run after every applied entry in tests and by `aic chain audit`.

use std::collections::BTreeMap;

use super::LedgerState;
use crate::error::InvariantViolation;
use crate::keys::Address;

fn violation(message: impl Into<String>) -> InvariantViolation {
    InvariantViolation(message.into())
}

pub(super) fn audit(state: &LedgerState) -> Result<(), InvariantViolation> {
    // Σ balances + Σ escrow + Σ stakes + burned = genesis + issued
    let mut held: u128 = 0;
    let add = |sum: u128, amount: u128| {
        sum.checked_add(amount)
            .ok_or_else(|| violation("holdings overflow u128"))
    };
    for account in state.accounts.values() {
        held = add(held, account.balance.0)?;
        held = add(held, account.stake.0)?;
    }
    for escrow in state.escrows.values() {
        held = add(held, escrow.remaining.0)?;
    }
    for escrow in state.inference_escrow.values() {
        if escrow.is_zero() {
            return Err(violation("an empty inference escrow was kept"));
        }
        held = add(held, escrow.0)?;
    }
    let left = add(held, state.burned.0)?;
    let right = state
        .genesis_supply
        .0
        .checked_add(state.issued.0)
        .ok_or_else(|| violation("supply overflows u128"))?;
    if left != right {
        return Err(violation(format!(
            "value not conserved: balances+escrow+stakes+burned = {left}, genesis+issued = {right}"
        )));
    }
    if state.issued > state.genesis.reserve() {
        return Err(violation("more issued than the reserve holds"));
    }
    if state.issued > state.burned {
        return Err(violation("more issued than burned"));
    }

    // One owner per asset, and owner counts that match.
    let mut counts: BTreeMap<Address, u64> = BTreeMap::new();
    for (id, asset) in &state.assets {
        *counts.entry(asset.owner).or_insert(0) += 1;
        if asset.approved == Some(asset.owner) {
            return Err(violation("an asset is approved to its own owner"));
        }
        // Each live asset is the one its content hash was minted as.
        if state.minted.get(&(asset.kind, asset.metadata.content_hash)) != Some(id) {
            return Err(violation(format!(
                "asset {id} is not the one minted for its content hash"
            )));
        }
    }
    for (alias, id) in &state.aliases {
        if state.published.get(id).and_then(|p| p.alias.as_ref()) != Some(alias) {
            return Err(violation(format!("alias {alias} does not name its publication")));
        }
    }
    if let Some(id) = state.published.keys().find(|id| !state.assets.contains_key(id)) {
        return Err(violation(format!("published model {id} is not an asset")));
    }
    for (id, listing) in &state.listings {
        if state.assets.get(id).map(|a| a.owner) != Some(listing.seller) {
            return Err(violation(format!(
                "asset {id} is listed by someone who does not own it"
            )));
        }
        if listing.price.is_zero() {
            return Err(violation(format!("asset {id} is listed at no price")));
        }
    }
    if counts != state.asset_counts {
        return Err(violation("asset owner counts do not match the assets"));
    }
    if let Some(job) = state.jobs.keys().find(|job| !state.escrows.contains_key(job)) {
        return Err(violation(format!("job {job} is recorded without an escrow")));
    }
    for escrow in state.escrows.values() {
        if escrow.remaining.is_zero() {
            return Err(violation("an empty escrow was kept"));
        }
    }
    if state.blocks.len() != state.block_transactions.len() {
        return Err(violation("blocks and their transaction lists differ in number"));
    }
    Ok(())
}
