//! Minting what the storage nodes attest: a storage node that completed an import asks this
//! replica to mint the Dataset asset; every signature must come from a storage node this
//! replica knows (registered with its certificate), the asking node among them, and the
//! ledger checks each signature again when it applies the system call.

use std::collections::BTreeSet;

use aic_ledger::tx::{AssetMetadata, Attestation, Call};
use aic_ledger::{Address, Amount, TxError};
use aic_protocol::certs::PeerIdentity;
use aic_protocol::messages::{DatasetMint, NodeResponse, NodeStatus};
use aic_protocol::{ErrorCode, NodeId, Role, RpcError};

use crate::job::{JobContext, Refusal};
use crate::registry::ListNodes;

fn refuse(code: ErrorCode, message: impl Into<String>) -> RpcError {
    RpcError::new(code, message.into())
}

/// Checks a mint request against the registered storage nodes and turns it into the ledger's
/// system call. Pure: the caller supplies the node table.
pub fn check_mint(caller: &PeerIdentity, mint: &DatasetMint, nodes: &[NodeStatus]) -> Result<Call, RpcError> {
    let storage: BTreeSet<NodeId> = nodes
        .iter()
        .filter(|n| n.role == Role::Storage)
        .map(|n| n.node_id)
        .collect();
    let mut attestations = Vec::with_capacity(mint.attestations.len());
    let mut attesters = BTreeSet::new();
    for attestation in &mint.attestations {
        let node = NodeId::from_public_key(&attestation.node_key);
        if !storage.contains(&node) {
            return Err(refuse(
                ErrorCode::PermissionDenied,
                format!("attester {} is not a storage node registered here", node.short()),
            ));
        }
        let signature: [u8; 64] = attestation
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| refuse(ErrorCode::InvalidArgument, "an attestation signature is 64 bytes"))?;
        attesters.insert(node);
        attestations.push(Attestation {
            node_key: Address(attestation.node_key),
            signature,
        });
    }
    if !attesters.contains(&caller.node_id) {
        return Err(refuse(
            ErrorCode::PermissionDenied,
            "the storage node asking must be among the import's attesters",
        ));
    }
    let usage_fee: Amount = mint
        .fee
        .parse()
        .map_err(|e| refuse(ErrorCode::InvalidArgument, format!("fee {:?}: {e}", mint.fee)))?;
    Ok(Call::MintImportedDataset {
        owner: Address(mint.owner),
        metadata: AssetMetadata {
            name: mint.name.clone(),
            content_hash: mint.content_hash,
            manifest: mint.published_manifest.clone(),
            usage_fee,
        },
        attestations,
    })
}

/// Mints the Dataset asset of an attested import; answers the asset.
pub async fn mint_attested_dataset(
    jobs: &JobContext,
    caller: &PeerIdentity,
    mint: DatasetMint,
) -> Result<NodeResponse, RpcError> {
    let Some(system) = jobs.system.as_ref() else {
        return Err(refuse(
            ErrorCode::Unavailable,
            "this scheduler replica holds no system key and cannot mint",
        ));
    };
    let nodes = jobs
        .registry
        .send(ListNodes)
        .await
        .map_err(|e| refuse(ErrorCode::Unavailable, format!("registry unavailable: {e}")))?;
    let call = check_mint(caller, &mint, &nodes)?;
    match system.try_submit(&jobs.ledger, call).await {
        Ok(events) => {
            let asset = aic_ledger::state::Event::minted_asset(&events)
                .ok_or_else(|| refuse(ErrorCode::Internal, "the mint reported no asset"))?;
            tracing::info!(%asset, attesters = mint.attestations.len(), "Dataset asset minted for an attested import");
            Ok(NodeResponse::DatasetMinted { asset })
        }
        Err(Refusal::Ledger(refusal @ TxError::AlreadyMinted { .. })) => {
            Err(refuse(ErrorCode::AlreadyExists, refusal.to_string()))
        }
        Err(Refusal::Ledger(refusal)) => Err(refuse(ErrorCode::InvalidArgument, refusal.to_string())),
        Err(Refusal::Other(error)) => Err(refuse(ErrorCode::Unavailable, error)),
    }
}

#[cfg(test)]
mod tests {
    use aic_ledger::Keypair;
    use aic_protocol::messages::{Capacity, ImportAttestation, NodeState};

    use super::*;

    fn storage_node(key: &Keypair) -> NodeStatus {
        NodeStatus {
            node_id: NodeId::from_public_key(&key.address().0),
            name: "s".into(),
            role: Role::Storage,
            version: String::new(),
            quic_addr: String::new(),
            metrics_addr: String::new(),
            state: NodeState::Up,
            last_heartbeat_ms_ago: None,
            times_marked_down: 0,
            capacity: Capacity::default(),
            rtts: Vec::new(),
            holdings: Vec::new(),
            payout_address: String::new(),
        }
    }

    fn caller(key: &Keypair, role: Role) -> PeerIdentity {
        PeerIdentity {
            role,
            node_id: NodeId::from_public_key(&key.address().0),
            name: "caller".into(),
            public_key: key.address().0,
        }
    }

    fn mint(owner: [u8; 32], by: &[&Keypair]) -> DatasetMint {
        let content_hash = [9; 32];
        DatasetMint {
            owner,
            name: "digits".into(),
            content_hash,
            published_manifest: "{}".into(),
            fee: "1".into(),
            attestations: by
                .iter()
                .map(|k| ImportAttestation {
                    node_key: k.address().0,
                    signature: k
                        .sign(&ImportAttestation::message(&content_hash, &owner))
                        .to_vec(),
                })
                .collect(),
        }
    }

    #[test]
    fn only_registered_storage_nodes_with_the_caller_among_them_may_attest() {
        let (a, b, stranger) = (Keypair::generate(), Keypair::generate(), Keypair::generate());
        let nodes = vec![storage_node(&a), storage_node(&b)];
        let owner = [3; 32];
        let call = check_mint(&caller(&a, Role::Storage), &mint(owner, &[&a, &b]), &nodes).unwrap();
        assert!(
            matches!(call, Call::MintImportedDataset { attestations, owner: o, .. } if attestations.len() == 2 && o == Address(owner))
        );
        let err = check_mint(&caller(&a, Role::Storage), &mint(owner, &[&a, &stranger]), &nodes).unwrap_err();
        assert_eq!(err.code, ErrorCode::PermissionDenied);
        let err = check_mint(&caller(&a, Role::Storage), &mint(owner, &[&b]), &nodes).unwrap_err();
        assert_eq!(err.code, ErrorCode::PermissionDenied);
        let mut bad_fee = mint(owner, &[&a]);
        bad_fee.fee = "lots".into();
        let err = check_mint(&caller(&a, Role::Storage), &bad_fee, &nodes).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
    }
}
