//! ERC721 semantics for Dataset, Model and TrainedModel assets: mint, transferFrom, approve,
//! setApprovalForAll, burn. An approval is cleared whenever the asset moves.
//!
//! Every asset carries a provenance the ledger enforces at mint: a Model is registered by its
//! author; a Dataset only comes from an import its storage replicas attest (system call, each
//! replica's signature checked here); a TrainedModel only from the settled job that produced it,
//! to that job's payer. A content hash is minted at most once per kind, so the one genuine asset
//! is the one its fees go to.

use std::collections::BTreeSet;

use aic_protocol::messages::ImportAttestation;
use aic_protocol::{AssetId, JobId, NodeId};

use super::{Asset, Event, LedgerState, Provenance, TxResult};
use crate::error::TxError;
use crate::keys::{verify_strict, Address};
use crate::tx::{AssetKind, AssetMetadata, Attestation};

/// Most replicas one import attestation may name.
pub const MAX_ATTESTATIONS: usize = 16;

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

    /// A user's own registration: only Model assets may be minted this way.
    pub(super) fn mint_registered(
        &mut self,
        minter: &Address,
        nonce: u64,
        kind: AssetKind,
        metadata: &AssetMetadata,
    ) -> TxResult {
        if kind != AssetKind::Model {
            return Err(TxError::NeedsProvenance(kind));
        }
        self.mint_asset(minter, minter, nonce, kind, metadata, Provenance::Registered)
    }

    /// A Dataset asset for an import every listed replica signed (system call).
    pub(super) fn mint_imported_dataset(
        &mut self,
        minter: &Address,
        nonce: u64,
        owner: &Address,
        metadata: &AssetMetadata,
        attestations: &[Attestation],
    ) -> TxResult {
        if attestations.is_empty() || attestations.len() > MAX_ATTESTATIONS {
            return Err(TxError::BadAttestation(format!(
                "an import is attested by 1 to {MAX_ATTESTATIONS} replicas, not {}",
                attestations.len()
            )));
        }
        let message = ImportAttestation::message(&metadata.content_hash, &owner.0);
        let mut attesters = Vec::with_capacity(attestations.len());
        let mut seen = BTreeSet::new();
        for attestation in attestations {
            if !seen.insert(attestation.node_key) {
                return Err(TxError::BadAttestation("a replica attests twice".into()));
            }
            if !verify_strict(&attestation.node_key, &message, &attestation.signature) {
                return Err(TxError::BadAttestation(format!(
                    "the signature of replica {} does not verify for this content and owner",
                    NodeId::from_public_key(&attestation.node_key.0).short()
                )));
            }
            attesters.push(NodeId::from_public_key(&attestation.node_key.0));
        }
        self.mint_asset(
            minter,
            owner,
            nonce,
            AssetKind::Dataset,
            metadata,
            Provenance::Imported { attesters },
        )
    }

    /// The TrainedModel of a settled job, to its payer, once (system call).
    pub(super) fn mint_trained_model(
        &mut self,
        minter: &Address,
        nonce: u64,
        job: &JobId,
        metadata: &AssetMetadata,
    ) -> TxResult {
        let owner = *self
            .trained_models_pending
            .get(job)
            .ok_or_else(|| TxError::NoTrainedModelPending(job.to_string()))?;
        let events = self.mint_asset(
            minter,
            &owner,
            nonce,
            AssetKind::TrainedModel,
            metadata,
            Provenance::Trained { job: *job },
        )?;
        self.trained_models_pending.remove(job);
        Ok(events)
    }

    fn mint_asset(
        &mut self,
        minter: &Address,
        owner: &Address,
        nonce: u64,
        kind: AssetKind,
        metadata: &AssetMetadata,
        provenance: Provenance,
    ) -> TxResult {
        if metadata.manifest.len() > MAX_MANIFEST_BYTES || metadata.name.len() > MAX_NAME_BYTES {
            return Err(TxError::Invalid(format!(
                "name at most {MAX_NAME_BYTES} bytes and manifest at most {MAX_MANIFEST_BYTES} bytes"
            )));
        }
        if let Some(asset) = self.minted.get(&(kind, metadata.content_hash)) {
            return Err(TxError::AlreadyMinted { kind, asset: *asset });
        }
        let asset_id = Self::asset_id_for(minter, nonce);
        if self.assets.contains_key(&asset_id) {
            return Err(TxError::Invalid(format!("asset {asset_id} already exists")));
        }
        self.minted.insert((kind, metadata.content_hash), asset_id);
        self.assets.insert(
            asset_id,
            Asset {
                kind,
                owner: *owner,
                approved: None,
                metadata: metadata.clone(),
                provenance,
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
        self.end_listing(asset_id);
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
        self.forget_publication(asset_id);
        self.end_listing(asset_id);
        self.bump_count(&owner, false);
        Ok(vec![Event::AssetTransfer {
            from: Some(owner),
            to: None,
            asset: *asset_id,
        }])
    }
}
