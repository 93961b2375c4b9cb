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
        self.check_with(requester, dataset, now_ms, trusted, |ticket| {
            ticket.verify_signature()
        })
    }

    /// [`Self::check`], verifying the signature only if `verified` has not seen this ticket
    /// verify before. Everything else — trust, node, dataset, expiry — is checked at every use.
    pub fn check_remembered(
        &self,
        requester: &NodeId,
        dataset: &str,
        now_ms: u64,
        trusted: impl Fn(&NodeId) -> bool,
        verified: &VerifiedTickets,
    ) -> Result<(), TicketError> {
        self.check_with(requester, dataset, now_ms, trusted, |ticket| {
            verified.verify(ticket)
        })
    }

    fn check_with(
        &self,
        requester: &NodeId,
        dataset: &str,
        now_ms: u64,
        trusted: impl Fn(&NodeId) -> bool,
        verify: impl FnOnce(&Self) -> Result<(), TicketError>,
    ) -> Result<(), TicketError> {
        if !trusted(&self.issuer_id()) {
            return Err(TicketError::UntrustedIssuer);
        }
        verify(self)?;
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

    fn verify_signature(&self) -> Result<(), TicketError> {
        let key = VerifyingKey::from_bytes(&self.issuer).map_err(|_| TicketError::BadSignature)?;
        let signature: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| TicketError::BadSignature)?;
        key.verify_strict(&self.ticket.signing_bytes(), &Signature::from_bytes(&signature))
            .map_err(|_| TicketError::BadSignature)
    }

    /// What names this signed ticket exactly: its signed bytes, issuer key and signature.
    fn digest(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.ticket.signing_bytes());
        hasher.update(&self.issuer);
        hasher.update(&self.signature);
        *hasher.finalize().as_bytes()
    }
}

/// Most tickets a [`VerifiedTickets`] remembers; when full it forgets them all and starts over.
pub const MAX_VERIFIED_TICKETS: usize = 4096;

/// Tickets whose signatures this process has verified. A compute node fetches all the shards of
/// a task with one ticket; remembered, the ticket costs one Ed25519 verification instead of one
/// per shard. What is remembered is only that these exact bytes, under this issuer key, carry a
/// valid signature — a fact that cannot change — so trust (which can be withdrawn) and the rest
/// are still checked at every use.
#[derive(Default)]
pub struct VerifiedTickets {
    seen: std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
}

impl VerifiedTickets {
    fn verify(&self, ticket: &SignedTicket) -> Result<(), TicketError> {
        let digest = ticket.digest();
        if self.seen.lock().expect("verified tickets").contains(&digest) {
            return Ok(());
        }
        ticket.verify_signature()?;
        let mut seen = self.seen.lock().expect("verified tickets");
        if seen.len() >= MAX_VERIFIED_TICKETS {
            seen.clear();
        }
        seen.insert(digest);
        Ok(())
    }

    /// How many tickets are remembered.
    pub fn len(&self) -> usize {
        self.seen.lock().expect("verified tickets").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::JobId;

    fn scheduler() -> SigningKey {
        SigningKey::from_bytes(&[9u8; 32])
    }

    fn ticket(node: NodeId) -> SignedTicket {
        ShardTicket {
            job: JobId::random(),
            node,
            dataset: "ds".into(),
            expires_ms: 1_000,
        }
        .sign(&scheduler())
    }

    #[test]
    fn a_remembered_ticket_is_still_checked_for_trust_node_dataset_and_expiry() {
        let node = NodeId::from_public_key(&[1u8; 32]);
        let issuer = NodeId::from_public_key(&scheduler().verifying_key().to_bytes());
        let verified = VerifiedTickets::default();
        let good = ticket(node);
        let trusted = |id: &NodeId| *id == issuer;
        assert_eq!(good.check_remembered(&node, "ds", 10, trusted, &verified), Ok(()));
        assert_eq!(verified.len(), 1);
        assert_eq!(good.check_remembered(&node, "ds", 10, trusted, &verified), Ok(()));
        assert_eq!(verified.len(), 1, "a verified ticket is remembered once");
        let other = NodeId::from_public_key(&[2u8; 32]);
        for (requester, dataset, now, trusts, refusal) in [
            (node, "ds", 10, false, TicketError::UntrustedIssuer),
            (other, "ds", 10, true, TicketError::WrongNode),
            (node, "other", 10, true, TicketError::WrongDataset),
            (node, "ds", 1_001, true, TicketError::Expired),
        ] {
            let answer =
                good.check_remembered(&requester, dataset, now, |id| trusts && trusted(id), &verified);
            assert_eq!(answer, Err(refusal));
        }
    }

    #[test]
    fn a_ticket_altered_after_a_good_one_was_remembered_is_refused() {
        let node = NodeId::from_public_key(&[1u8; 32]);
        let verified = VerifiedTickets::default();
        let good = ticket(node);
        assert_eq!(
            good.check_remembered(&node, "ds", 10, |_| true, &verified),
            Ok(())
        );
        let mut longer = good.clone();
        longer.ticket.expires_ms = u64::MAX;
        assert_eq!(
            longer.check_remembered(&node, "ds", 10_000, |_| true, &verified),
            Err(TicketError::BadSignature)
        );
        let mut forged = good.clone();
        forged.signature[5] ^= 1;
        assert_eq!(
            forged.check_remembered(&node, "ds", 10, |_| true, &verified),
            Err(TicketError::BadSignature)
        );
        assert_eq!(verified.len(), 1, "a refused ticket is not remembered");
    }
}
