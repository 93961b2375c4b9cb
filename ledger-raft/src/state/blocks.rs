//! Sealing a block: the leader proposes a signed header over the first `tx_count` pending
//! transactions; every replica checks the link, the Merkle root and the signature before it
//! appends the header and moves ledger time forward.

use super::LedgerState;
use crate::block::{merkle_root, BlockHeader};
use crate::error::TxError;

impl LedgerState {
    /// The header a proposer should sign now for the first `tx_count` pending transactions
    /// (all of them when `None`).
    pub fn next_block_template(&self, timestamp_ms: u64, tx_count: Option<usize>) -> BlockHeader {
        let last = self.blocks.last().expect("genesis block");
        let count = tx_count.unwrap_or(self.pending.len()).min(self.pending.len());
        BlockHeader {
            height: last.height + 1,
            prev_hash: last.hash(),
            merkle_root: merkle_root(&self.pending[..count]),
            timestamp_ms: timestamp_ms.max(last.timestamp_ms),
            proposer: last.proposer,
            proposer_key: last.proposer_key,
            session: None,
            difficulty: 1,
            tx_count: u32::try_from(count).unwrap_or(u32::MAX),
            signatures: Vec::new(),
        }
    }

    pub fn apply_block(&mut self, header: &BlockHeader) -> Result<u64, TxError> {
        let last = self.blocks.last().expect("genesis block");
        let bad = |reason: String| Err(TxError::BadBlock(reason));
        if header.height != last.height + 1 {
            return bad(format!("height {} after {}", header.height, last.height));
        }
        if header.prev_hash != last.hash() {
            return bad("previous hash does not match the chain head".into());
        }
        if header.timestamp_ms < last.timestamp_ms {
            return bad("timestamp goes backwards".into());
        }
        let count = header.tx_count as usize;
        if count > self.pending.len() {
            return bad(format!(
                "seals {count} transactions, {} are pending",
                self.pending.len()
            ));
        }
        if merkle_root(&self.pending[..count]) != header.merkle_root {
            return bad("Merkle root does not match the pending transactions".into());
        }
        if let Err(reason) = header.check_signatures() {
            return bad(reason);
        }
        let sealed: Vec<[u8; 32]> = self.pending.drain(..count).collect();
        self.block_transactions.push(sealed);
        self.blocks.push(header.clone());
        self.time_ms = header.timestamp_ms;
        Ok(header.height)
    }
}
