//! The marketplace: an owner lists an asset (Dataset, Model or TrainedModel) at a fixed price in
//! AIC; a buyer buys it in one transaction — the price to the seller and the asset to the buyer,
//! or neither; the seller can withdraw the listing. A listing goes with the asset: a transfer or
//! a burn ends it, so a buyer never pays someone who no longer owns what is sold. A buyer names
//! the most it will pay, so a price raised after it looked is refused, not charged.

use aic_protocol::AssetId;
use serde::{Deserialize, Serialize};

use super::{Event, LedgerState, TxResult};
use crate::amount::Amount;
use crate::error::TxError;
use crate::keys::Address;

/// An asset offered for sale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// The owner when it was listed (and still: a transfer ends the listing).
    pub seller: Address,
    pub price: Amount,
}

impl LedgerState {
    pub(super) fn list_asset(&mut self, caller: &Address, asset: &AssetId, price: Amount) -> TxResult {
        let owner = self.owner_of(asset)?;
        if owner != *caller {
            return Err(TxError::NotOwnerOrApproved(asset.to_string()));
        }
        if price.is_zero() {
            return Err(TxError::Invalid("a listing needs a price above zero".into()));
        }
        self.listings.insert(*asset, Listing { seller: owner, price });
        Ok(vec![Event::AssetListed {
            asset: *asset,
            seller: owner,
            price,
        }])
    }

    pub(super) fn unlist_asset(&mut self, caller: &Address, asset: &AssetId) -> TxResult {
        let listing = self.listing(asset)?;
        if listing.seller != *caller {
            return Err(TxError::NotOwnerOrApproved(asset.to_string()));
        }
        self.listings.remove(asset);
        Ok(vec![Event::AssetUnlisted {
            asset: *asset,
            seller: listing.seller,
        }])
    }

    /// The price from the buyer to the seller and the asset from the seller to the buyer, both
    /// checked before either moves.
    pub(super) fn buy_asset(&mut self, buyer: &Address, asset: &AssetId, max_price: Amount) -> TxResult {
        let listing = self.listing(asset)?;
        if listing.seller == *buyer {
            return Err(TxError::Invalid("the seller cannot buy its own listing".into()));
        }
        if listing.price > max_price {
            return Err(TxError::PriceAboveLimit {
                price: listing.price,
                limit: max_price,
            });
        }
        self.check_spendable(buyer, listing.price)?;
        self.balance_of(&listing.seller).checked_add(listing.price)?;
        // Nothing below can fail: the balance and the listing are checked.
        let mut events = self.transfer(buyer, &listing.seller, listing.price)?;
        events.extend(self.transfer_asset(&listing.seller, &listing.seller, buyer, asset)?);
        events.push(Event::AssetSold {
            asset: *asset,
            seller: listing.seller,
            buyer: *buyer,
            price: listing.price,
        });
        Ok(events)
    }

    fn listing(&self, asset: &AssetId) -> Result<Listing, TxError> {
        self.listings
            .get(asset)
            .copied()
            .ok_or_else(|| TxError::NotListed(asset.to_string()))
    }

    /// An asset that moved or burned is no longer for sale by its former owner.
    pub(super) fn end_listing(&mut self, asset: &AssetId) {
        self.listings.remove(asset);
    }
}
