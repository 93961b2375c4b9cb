//! Shard tickets: a scheduler's signed permission for one compute node to fetch the shards of
//! one dataset (or one tensor, named `tensor:<hash>` by `TensorRef::ticket_name`) for one job,
//! until an expiry. Storage nodes serve a shard only against a ticket
//! that names the requesting node (as its certificate proves it), the dataset asked for, has not
//! expired, and is signed by a scheduler they trust.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::ids::{JobId, NodeId};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardTicket {
    pub job: JobId,
    /// The compute node allowed to fetch.
    pub node: NodeId,
    /// The dataset id, or a tensor's ticket name.
    pub dataset: String,
    /// Milliseconds since the Unix epoch after which the ticket is void.
    pub expires_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTicket {
    pub ticket: ShardTicket,
    /// The issuing scheduler's Ed25519 public key; its hash is the scheduler's node id.
    pub issuer: [u8; 32],
    pub signature: Vec<u8>,
}

/// Why a ticket was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("the ticket expired")]
    Expired,
    #[error("the ticket is for another node")]
    WrongNode,
    #[error("the ticket is for another dataset")]
    WrongDataset,
    #[error("the ticket's issuer is not a trusted scheduler")]
    UntrustedIssuer,
    #[error("the ticket's signature does not verify")]
    BadSignature,
}

impl TicketError {
    /// A snake_case reason, for metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            TicketError::Expired => "ticket_expired",
            TicketError::WrongNode => "ticket_wrong_node",
            TicketError::WrongDataset => "ticket_wrong_dataset",
            TicketError::UntrustedIssuer => "ticket_untrusted",
            TicketError::BadSignature => "ticket_forged",
        }
    }
}

impl ShardTicket {
    fn signing_bytes(&self) -> Vec<u8> {
        let mut bytes = b"aic-shard-ticket-v1\0".to_vec();
        bytes.extend(postcard::to_stdvec(self).expect("a ticket always encodes"));
        bytes
    }

    /// Signs the ticket with a scheduler's key.
    pub fn sign(self, key: &SigningKey) -> SignedTicket {
        let signature = key.sign(&self.signing_bytes()).to_bytes().to_vec();
        SignedTicket {
            issuer: key.verifying_key().to_bytes(),
            ticket: self,
            signature,
        }
    }
}

impl SignedTicket {
    pub fn issuer_id(&self) -> NodeId {
        NodeId::from_public_key(&self.issuer)
    }

    /// Checks the ticket for `requester` fetching from `dataset` at `now_ms`.
    pub fn check(
        &self,
        requester: &NodeId,
        dataset: &str,
        now_ms: u64,
        trusted: impl Fn(&NodeId) -> bool,
    ) -> Result<(), TicketError> {
        if !trusted(&self.issuer_id()) {
            return Err(TicketError::UntrustedIssuer);
        }
        let key = VerifyingKey::from_bytes(&self.issuer).map_err(|_| TicketError::BadSignature)?;
        let signature: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| TicketError::BadSignature)?;
        key.verify_strict(&self.ticket.signing_bytes(), &Signature::from_bytes(&signature))
            .map_err(|_| TicketError::BadSignature)?;
        if self.ticket.node != *requester {
            return Err(TicketError::WrongNode);
        }
        if self.ticket.dataset != dataset {
            return Err(TicketError::WrongDataset);
        }
        if now_ms > self.ticket.expires_ms {
            return Err(TicketError::Expired);
        }
        Ok(())
    }
}
