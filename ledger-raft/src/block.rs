//! Blocks: a header sealing the transactions applied since the previous block, linked by hash,
//! with a Merkle root of those transactions and the proposer's signature.

use aic_protocol::{JobId, NodeId};
use serde::{Deserialize, Serialize};

use crate::keys::{verify_strict, Address, Keypair};
use crate::tx::signature_bytes;

/// A signature on a block header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSignature {
    pub signer: Address,
    #[serde(with = "signature_bytes")]
    pub signature: [u8; 64],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHeader {
    pub height: u64,
    pub prev_hash: [u8; 32],
    pub merkle_root: [u8; 32],
    pub timestamp_ms: u64,
    pub proposer: NodeId,
    /// The proposer's public key; `proposer` is its hash.
    pub proposer_key: Address,
    /// The training session this block belongs to (none until jobs exist).
    pub session: Option<JobId>,
    pub difficulty: u64,
    pub tx_count: u32,
    pub signatures: Vec<BlockSignature>,
}

impl BlockHeader {
    /// The first block, derived from genesis alone.
    pub fn genesis(time_ms: u64) -> Self {
        BlockHeader {
            height: 0,
            prev_hash: [0; 32],
            merkle_root: merkle_root(&[]),
            timestamp_ms: time_ms,
            proposer: NodeId::from_public_key(&[0; 32]),
            proposer_key: Address([0; 32]),
            session: None,
            difficulty: 0,
            tx_count: 0,
            signatures: Vec::new(),
        }
    }

    /// What signers sign: the header without its signatures.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let unsigned = BlockHeader {
            signatures: Vec::new(),
            ..self.clone()
        };
        let mut bytes = b"aic-block-v1\0".to_vec();
        bytes.extend(postcard::to_stdvec(&unsigned).expect("a header always encodes"));
        bytes
    }

    /// The block's hash, signatures included; the next block links to it.
    pub fn hash(&self) -> [u8; 32] {
        *blake3::hash(&postcard::to_stdvec(self).expect("a header always encodes")).as_bytes()
    }

    pub fn sign(&mut self, key: &Keypair) {
        let signature = key.sign(&self.signing_bytes());
        self.signatures.push(BlockSignature {
            signer: key.address(),
            signature,
        });
    }

    /// Checks the proposer's identity and that it signed the header.
    /// A lottery block (one with a session): the proposer's signed ticket for the session, its
    /// draw under the block's target, and the block signed by a second key (the co-signer, who
    /// checked the ticket). Other blocks: the proposer's signature over the block.
    pub fn check_signatures(&self) -> Result<(), String> {
        let Some(session) = &self.session else {
            return self.check_proposer_signature();
        };
        if NodeId::from_public_key(&self.proposer_key.0) != self.proposer {
            return Err("proposer id is not the hash of the proposer key".into());
        }
        if crate::lottery::draw(&self.prev_hash, &self.proposer, session) >= self.difficulty {
            return Err("the proposer's ticket does not draw under the block's target".into());
        }
        let ticket = crate::lottery::ticket_message(session, &self.proposer);
        if !self
            .signatures
            .iter()
            .any(|s| s.signer == self.proposer_key && verify_strict(&s.signer, &ticket, &s.signature))
        {
            return Err("the proposer's signed ticket is missing or invalid".into());
        }
        let message = self.signing_bytes();
        if !self
            .signatures
            .iter()
            .any(|s| s.signer != self.proposer_key && verify_strict(&s.signer, &message, &s.signature))
        {
            return Err("a lottery block needs a second node's co-signature".into());
        }
        Ok(())
    }

    pub fn check_proposer_signature(&self) -> Result<(), String> {
        if NodeId::from_public_key(&self.proposer_key.0) != self.proposer {
            return Err("proposer id is not the hash of the proposer key".into());
        }
        let message = self.signing_bytes();
        let signed = self
            .signatures
            .iter()
            .any(|s| s.signer == self.proposer_key && verify_strict(&s.signer, &message, &s.signature));
        if !signed {
            return Err("the proposer's signature is missing or invalid".into());
        }
        Ok(())
    }
}

/// The Merkle root of transaction hashes (BLAKE3, domain-separated leaves and nodes; an odd node
/// is paired with itself). The empty list has its own fixed root.
pub fn merkle_root(leaves: &[[u8; 32]]) -> [u8; 32] {
    if leaves.is_empty() {
        return *blake3::hash(b"aic-merkle-empty").as_bytes();
    }
    let mut level: Vec<[u8; 32]> = leaves
        .iter()
        .map(|leaf| {
            let mut hasher = blake3::Hasher::new();
            hasher.update(&[0]);
            hasher.update(leaf);
            *hasher.finalize().as_bytes()
        })
        .collect();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| {
                let right = pair.get(1).unwrap_or(&pair[0]);
                let mut hasher = blake3::Hasher::new();
                hasher.update(&[1]);
                hasher.update(&pair[0]);
                hasher.update(right);
                *hasher.finalize().as_bytes()
            })
            .collect();
    }
    level[0]
}

/// Checks a chain of headers from genesis: heights, hash links, signatures, and (given each
/// block's transaction hashes) Merkle roots.
pub fn verify_chain(headers: &[BlockHeader], transactions: &[Vec<[u8; 32]>]) -> Result<(), String> {
    let Some(first) = headers.first() else {
        return Err("the chain is empty".into());
    };
    if first.height != 0 || first.prev_hash != [0; 32] {
        return Err("the first block is not a genesis block".into());
    }
    for (i, pair) in headers.windows(2).enumerate() {
        let (prev, block) = (&pair[0], &pair[1]);
        if block.height != prev.height + 1 {
            return Err(format!("block {} follows height {}", block.height, prev.height));
        }
        if block.prev_hash != prev.hash() {
            return Err(format!(
                "block {} does not link to block {}",
                block.height, prev.height
            ));
        }
        if block.timestamp_ms < prev.timestamp_ms {
            return Err(format!("block {} is older than its parent", block.height));
        }
        block
            .check_signatures()
            .map_err(|e| format!("block {}: {e}", block.height))?;
        if let Some(txs) = transactions.get(i + 1) {
            if merkle_root(txs) != block.merkle_root || txs.len() != block.tx_count as usize {
                return Err(format!(
                    "block {}: Merkle root does not match its transactions",
                    block.height
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merkle_roots_depend_on_every_leaf_and_their_order() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let c = [3u8; 32];
        assert_ne!(merkle_root(&[a, b]), merkle_root(&[b, a]));
        assert_ne!(merkle_root(&[a, b, c]), merkle_root(&[a, b]));
        assert_ne!(merkle_root(&[a]), a, "a leaf is hashed, not used as is");
        assert_ne!(merkle_root(&[]), merkle_root(&[[0; 32]]));
    }

    fn child_of(prev: &BlockHeader, key: &Keypair, txs: &[[u8; 32]]) -> BlockHeader {
        let mut block = BlockHeader {
            height: prev.height + 1,
            prev_hash: prev.hash(),
            merkle_root: merkle_root(txs),
            timestamp_ms: prev.timestamp_ms + 2000,
            proposer: NodeId::from_public_key(&key.address().0),
            proposer_key: key.address(),
            session: None,
            difficulty: 1,
            tx_count: txs.len() as u32,
            signatures: Vec::new(),
        };
        block.sign(key);
        block
    }

    #[test]
    fn a_lottery_block_needs_a_winning_ticket_and_a_cosignature() {
        let (winner, cosigner) = (Keypair::generate(), Keypair::generate());
        let genesis = BlockHeader::genesis(1_000);
        let session = JobId::from_bytes([9; 16]);
        let winner_id = NodeId::from_public_key(&winner.address().0);
        let draw = crate::lottery::draw(&genesis.hash(), &winner_id, &session);
        let block = |difficulty: u64, cosign: bool| {
            let mut block = child_of(&genesis, &winner, &[]);
            block.session = Some(session);
            block.difficulty = difficulty;
            // The winner signed only its ticket, before anyone knew it would win.
            block.signatures = vec![BlockSignature {
                signer: winner.address(),
                signature: winner.sign(&crate::lottery::ticket_message(&session, &winner_id)),
            }];
            if cosign {
                block.sign(&cosigner);
            }
            block
        };
        let txs = vec![vec![], vec![]];
        verify_chain(&[genesis.clone(), block(draw.saturating_add(1), true)], &txs).unwrap();
        let uncosigned = verify_chain(&[genesis.clone(), block(draw.saturating_add(1), false)], &txs);
        assert!(uncosigned.unwrap_err().contains("co-signature"));
        let losing = verify_chain(&[genesis.clone(), block(draw, true)], &txs);
        assert!(losing.unwrap_err().contains("does not draw under"));
        let mut unticketed = block(draw.saturating_add(1), true);
        unticketed.signatures.remove(0);
        unticketed.sign(&winner);
        let refused = verify_chain(&[genesis.clone(), unticketed], &txs).unwrap_err();
        assert!(refused.contains("signed ticket"), "{refused}");
    }

    #[test]
    fn a_chain_verifies_and_any_tampering_is_found() {
        let key = Keypair::generate();
        let genesis = BlockHeader::genesis(1_000);
        let b1 = child_of(&genesis, &key, &[[7; 32]]);
        let b2 = child_of(&b1, &key, &[]);
        let txs = vec![vec![], vec![[7; 32]], vec![]];
        verify_chain(&[genesis.clone(), b1.clone(), b2.clone()], &txs).unwrap();

        let mut forged = b1.clone();
        forged.timestamp_ms += 1;
        assert!(verify_chain(&[genesis.clone(), forged, b2.clone()], &txs).is_err());
        let other_txs = vec![vec![], vec![[8; 32]], vec![]];
        assert!(verify_chain(&[genesis.clone(), b1.clone(), b2.clone()], &other_txs).is_err());
        let mut unsigned = b2.clone();
        unsigned.signatures.clear();
        assert!(verify_chain(&[genesis, b1, unsigned], &txs).is_err());
    }
}
