//! The storage node's part in key escrow (see [`crate::escrow`]): keeping other nodes' sealed
//! keys and handing one back to a holder its depositor named, and escrowing this node's own
//! dataset keys with [`ESCROW_COPIES`] other storage nodes the scheduler lists.

use aic_protocol::certs::PeerIdentity;
use aic_protocol::messages::{
    ClientRequest, ClientResponse, NodeState, PeerRequest, PeerResponse, SealedKey,
};
use aic_protocol::{ErrorCode, NodeId, Role, RpcError};

use crate::escrow::{self, Deposit, Deposits, EscrowedWith, ESCROW_COPIES};
use crate::node::StorageNode;

/// How often the node looks for dataset keys not yet escrowed enough.
pub const ESCROW_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

impl StorageNode {
    /// Keeps `peer`'s key of `dataset`, sealed to this node: it must open with this node's key.
    pub async fn keep_escrow(
        &self,
        peer: &PeerIdentity,
        dataset: String,
        sealed: SealedKey,
        holders: Vec<NodeId>,
    ) -> Result<PeerResponse, RpcError> {
        Deposits::check(&dataset, &sealed, &holders)
            .map_err(|e| self.refuse("bad_escrow", ErrorCode::InvalidArgument, e))?;
        escrow::open(&self.node_key.secret_bytes(), &dataset, &sealed)
            .map_err(|e| self.refuse("bad_escrow", ErrorCode::InvalidArgument, e.to_string()))?;
        let deposit = Deposit {
            dataset,
            depositor: peer.node_id,
            sealed,
            holders,
        };
        self.deposits
            .keep(&deposit)
            .map_err(|e| RpcError::new(ErrorCode::Internal, format!("keeping an escrowed key: {e}")))?;
        Ok(PeerResponse::Escrowed)
    }

    /// The key of `dataset` escrowed here for `peer`, re-sealed to `peer`'s node key.
    pub async fn recover_escrow(&self, peer: &PeerIdentity, dataset: &str) -> Result<PeerResponse, RpcError> {
        let deposits = self.deposits.for_holder(dataset, &peer.node_id);
        let key = deposits
            .iter()
            .find_map(|d| escrow::open(&self.node_key.secret_bytes(), dataset, &d.sealed).ok())
            .ok_or_else(|| {
                self.refuse(
                    "no_escrow",
                    ErrorCode::NotFound,
                    format!("no key of {dataset} is escrowed here for {}", peer.node_id),
                )
            })?;
        let sealed = escrow::seal(&peer.public_key, dataset, &key)
            .map_err(|e| RpcError::new(ErrorCode::Internal, e.to_string()))?;
        Ok(PeerResponse::RecoveredKey { sealed })
    }

    /// Escrows every dataset key this node holds that is escrowed with fewer than
    /// [`ESCROW_COPIES`] other storage nodes; answers how many escrows it made.
    pub async fn escrow_keys(&self) -> usize {
        let pending: Vec<(String, [u8; 32], Vec<NodeId>, EscrowedWith)> = {
            let catalog = self.catalog.read().await;
            catalog
                .ids()
                .filter_map(|id| {
                    let escrowed = catalog.escrowed_with(id);
                    if escrowed.nodes.len() >= ESCROW_COPIES {
                        return None;
                    }
                    let (_, key) = catalog.get(id)?;
                    let mut holders: Vec<NodeId> = catalog
                        .holders(id)?
                        .holders
                        .iter()
                        .filter_map(|h| h.node.parse().ok())
                        .collect();
                    holders.push(self.me);
                    holders.sort();
                    holders.dedup();
                    Some((id.clone(), *key.as_bytes(), holders, escrowed))
                })
                .collect()
        };
        if pending.is_empty() {
            return 0;
        }
        let storage_nodes = match self.storage_nodes().await {
            Ok(nodes) => nodes,
            Err(error) => {
                tracing::debug!(%error, "no node list for key escrow yet");
                return 0;
            }
        };
        let mut made = 0;
        for (dataset, key, holders, mut escrowed) in pending {
            for (node, addr) in &storage_nodes {
                if escrowed.nodes.len() >= ESCROW_COPIES {
                    break;
                }
                if *node == self.me || escrowed.nodes.iter().any(|(n, _)| n == node) {
                    continue;
                }
                match self.escrow_with(addr, &dataset, &key, &holders).await {
                    Ok(()) => {
                        escrowed.nodes.push((*node, addr.clone()));
                        made += 1;
                    }
                    Err(error) => {
                        tracing::warn!(%dataset, escrow = %addr, %error, "could not escrow a dataset key")
                    }
                }
            }
            if let Err(error) = self.catalog.write().await.set_escrowed_with(&dataset, &escrowed) {
                tracing::warn!(%dataset, %error, "could not record where a key is escrowed");
            }
        }
        made
    }

    async fn escrow_with(
        &self,
        addr: &str,
        dataset: &str,
        key: &[u8; 32],
        holders: &[NodeId],
    ) -> Result<(), RpcError> {
        let client = self.dial_storage(addr).await?;
        let sealed = escrow::seal(&client.peer().public_key, dataset, key)
            .map_err(|e| RpcError::new(ErrorCode::Internal, e.to_string()))?;
        match client
            .call(&PeerRequest::EscrowKey {
                dataset: dataset.to_string(),
                sealed,
                holders: holders.to_vec(),
            })
            .await
            .map_err(|e| RpcError::new(ErrorCode::Unavailable, e.to_string()))?
        {
            PeerResponse::Escrowed => Ok(()),
            other => Err(RpcError::new(
                ErrorCode::Internal,
                format!("unexpected answer to an escrow: {other:?}"),
            )),
        }
    }

    /// The storage nodes up, as the scheduler lists them.
    async fn storage_nodes(&self) -> Result<Vec<(NodeId, String)>, RpcError> {
        let client = self.dial_scheduler().await?;
        match client
            .call(&ClientRequest::ListNodes)
            .await
            .map_err(|e| RpcError::new(ErrorCode::Unavailable, e.to_string()))?
        {
            ClientResponse::Nodes(nodes) => Ok(nodes
                .into_iter()
                .filter(|n| n.role == Role::Storage && n.state == NodeState::Up)
                .map(|n| (n.node_id, n.quic_addr))
                .collect()),
            other => Err(RpcError::new(
                ErrorCode::Internal,
                format!("unexpected answer to a node list: {other:?}"),
            )),
        }
    }
}
