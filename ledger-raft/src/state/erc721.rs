//! ERC721 semantics for Dataset, Model and TrainedModel assets: mint, transferFrom, approve,
//! setApprovalForAll, burn. An approval is cleared whenever the asset moves.

use aic_protocol::AssetId;

use super::{Asset, Event, LedgerState, TxResult};
use crate::error::TxError;
use crate::keys::Address;
use crate::tx::{AssetKind, AssetMetadata};

/// Largest manifest a token may carry; bigger manifests belong in storage, named by hash.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;
const MAX_NAME_BYTES: usize = 256;

impl LedgerState {
    pub fn owner_of(&self, asset: &AssetId) -> Result<Address, TxError> {
        self.asset(asset).map(|a| a.owner)
    }

    pub fn asset_balance_of(&self, owner: &Address) -> u64 {
        self.asset_counts.get(owner).copied().unwrap_or(0)
    }

    pub fn is_approved_for_all(&self, owner: &Address, operator: &Address) -> bool {
        self.operators.contains(&(*owner, *operator))
    }

    /// The id a mint gets: derived from the minter and its nonce, so replicas agree.
    pub fn asset_id_for(minter: &Address, nonce: u64) -> AssetId {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"aic-asset");
        hasher.update(&minter.0);
        hasher.update(&nonce.to_le_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        AssetId::from_bytes(id)
    }

    fn asset(&self, asset_id: &AssetId) -> Result<&Asset, TxError> {
        self.assets
            .get(asset_id)
            .ok_or_else(|| TxError::UnknownAsset(asset_id.to_string()))
    }

    /// The asset, if `caller` owns it, is approved for it, or operates for its owner.
    fn managed_asset(&self, caller: &Address, asset_id: &AssetId) -> Result<&Asset, TxError> {
        let asset = self.asset(asset_id)?;
        if !self.may_manage(caller, asset) {
            return Err(TxError::NotOwnerOrApproved(asset_id.to_string()));
        }
        Ok(asset)
    }

    fn may_manage(&self, caller: &Address, asset: &Asset) -> bool {
        asset.owner == *caller
            || asset.approved == Some(*caller)
            || self.is_approved_for_all(&asset.owner, caller)
    }

    fn bump_count(&mut self, owner: &Address, up: bool) {
        let count = self.asset_counts.entry(*owner).or_insert(0);
        if up {
            *count += 1;
        } else {
            *count -= 1;
            if *count == 0 {
                self.asset_counts.remove(owner);
            }
        }
    }

    pub(super) fn mint_asset(
        &mut self,
        minter: &Address,
        owner: &Address,
        nonce: u64,
        kind: AssetKind,
        metadata: &AssetMetadata,
    ) -> TxResult {
        if metadata.manifest.len() > MAX_MANIFEST_BYTES || metadata.name.len() > MAX_NAME_BYTES {
            return Err(TxError::Invalid(format!(
                "name at most {MAX_NAME_BYTES} bytes and manifest at most {MAX_MANIFEST_BYTES} bytes"
            )));
        }
        let asset_id = Self::asset_id_for(minter, nonce);
        if self.assets.contains_key(&asset_id) {
            return Err(TxError::Invalid(format!("asset {asset_id} already exists")));
        }
        self.assets.insert(
            asset_id,
            Asset {
                kind,
                owner: *owner,
                approved: None,
                metadata: metadata.clone(),
            },
        );
        self.bump_count(owner, true);
        Ok(vec![Event::AssetTransfer {
            from: None,
            to: Some(*owner),
            asset: asset_id,
        }])
    }

    pub(super) fn transfer_asset(
        &mut self,
        caller: &Address,
        from: &Address,
        to: &Address,
        asset_id: &AssetId,
    ) -> TxResult {
        let asset = self.managed_asset(caller, asset_id)?;
        if asset.owner != *from {
            return Err(TxError::WrongOwner {
                asset: asset_id.to_string(),
                owner: asset.owner.to_string(),
                claimed: from.to_string(),
            });
        }
        let asset = self.assets.get_mut(asset_id).expect("checked above");
        asset.owner = *to;
        asset.approved = None;
        self.bump_count(from, false);
        self.bump_count(to, true);
        Ok(vec![Event::AssetTransfer {
            from: Some(*from),
            to: Some(*to),
            asset: *asset_id,
        }])
    }

    pub(super) fn approve_asset(
        &mut self,
        caller: &Address,
        approved: Option<Address>,
        asset_id: &AssetId,
    ) -> TxResult {
        let asset = self.asset(asset_id)?;
        let owner = asset.owner;
        if owner != *caller && !self.is_approved_for_all(&owner, caller) {
            return Err(TxError::NotOwnerOrApproved(asset_id.to_string()));
        }
        if approved == Some(owner) {
            return Err(TxError::Invalid("approval to the current owner".into()));
        }
        self.assets.get_mut(asset_id).expect("checked above").approved = approved;
        Ok(vec![Event::AssetApproval {
            owner,
            approved,
            asset: *asset_id,
        }])
    }

    pub(super) fn set_approval_for_all(
        &mut self,
        owner: &Address,
        operator: &Address,
        approved: bool,
    ) -> TxResult {
        if owner == operator {
            return Err(TxError::Invalid("an owner cannot be its own operator".into()));
        }
        if approved {
            self.operators.insert((*owner, *operator));
        } else {
            self.operators.remove(&(*owner, *operator));
        }
        Ok(vec![Event::ApprovalForAll {
            owner: *owner,
            operator: *operator,
            approved,
        }])
    }

    pub(super) fn burn_asset(&mut self, caller: &Address, asset_id: &AssetId) -> TxResult {
        let asset = self.managed_asset(caller, asset_id)?;
        let owner = asset.owner;
        self.assets.remove(asset_id);
        self.bump_count(&owner, false);
        Ok(vec![Event::AssetTransfer {
            from: Some(owner),
            to: None,
            asset: *asset_id,
        }])
    }
}
