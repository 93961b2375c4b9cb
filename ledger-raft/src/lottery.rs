//! The block lottery (whitepaper: Proof of Value elects the block proposer): a node that did
//! verified work in a session holds a ticket; its draw is the hash of (previous block hash, node
//! id, session id); a draw under the block's target wins. The winner's signed ticket goes into
//! the block; a second ticket holder, drawn the same way, checks it and co-signs the block. The rules here are what every replica and
//! `aic chain verify` check on a lottery block.

use aic_protocol::{JobId, NodeId};

/// What a ticket holder signs once per session: its ticket. A lottery block carries the winner's
/// ticket signature, so the winner takes no part in sealing and learns it won when the block
/// lands.
pub fn ticket_message(session: &JobId, node: &NodeId) -> Vec<u8> {
    let mut message = b"aic-lottery-ticket-v1".to_vec();
    message.extend_from_slice(session.as_bytes());
    message.extend_from_slice(node.as_bytes());
    message
}

/// A ticket's draw for the block after `prev_hash`: uniform over u64.
pub fn draw(prev_hash: &[u8; 32], node: &NodeId, session: &JobId) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"aic-lottery-v1");
    hasher.update(prev_hash);
    hasher.update(node.as_bytes());
    hasher.update(session.as_bytes());
    u64::from_le_bytes(hasher.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The co-signer's draw: the holder (other than the winner) with the lowest one co-signs.
pub fn cosigner_draw(prev_hash: &[u8; 32], node: &NodeId, session: &JobId) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"aic-lottery-cosign-v1");
    hasher.update(prev_hash);
    hasher.update(node.as_bytes());
    hasher.update(session.as_bytes());
    u64::from_le_bytes(hasher.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The winner among `holders` for a block with `target`: the lowest draw, if it is under the
/// target, with the co-signer drawn from the others. `None` when no draw is under the target or
/// there is no second holder to co-sign.
pub fn elect(
    prev_hash: &[u8; 32],
    session: &JobId,
    holders: &[NodeId],
    target: u64,
) -> Option<(NodeId, NodeId)> {
    let winner = holders
        .iter()
        .map(|n| (draw(prev_hash, n, session), *n))
        .min()
        .filter(|(d, _)| *d < target)?
        .1;
    let cosigner = holders
        .iter()
        .filter(|n| **n != winner)
        .map(|n| (cosigner_draw(prev_hash, n, session), *n))
        .min()?
        .1;
    Some((winner, cosigner))
}

/// The next target: halve the miss chance after a round with no winner, tighten slowly after
/// a win, so that about one round in two yields a lottery block whatever the number of tickets.
pub fn adjust(target: u64, won: bool) -> u64 {
    if won {
        target - target / 8
    } else {
        target.saturating_mul(2).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_draw_under_the_target_wins_and_someone_else_cosigns() {
        let prev = [7u8; 32];
        let session = JobId::from_bytes([1; 16]);
        let holders: Vec<NodeId> = (0..5u8).map(|i| NodeId::from_public_key(&[i; 32])).collect();
        let (winner, cosigner) = elect(&prev, &session, &holders, u64::MAX).unwrap();
        assert_ne!(winner, cosigner);
        let best = holders.iter().map(|n| draw(&prev, n, &session)).min().unwrap();
        assert_eq!(draw(&prev, &winner, &session), best);
        assert!(
            elect(&prev, &session, &holders, best).is_none(),
            "the target is exclusive"
        );
        assert!(
            elect(&prev, &session, &holders[..1], u64::MAX).is_none(),
            "no one to co-sign"
        );
        // Another previous block draws again.
        let other = elect(&[8u8; 32], &session, &holders, u64::MAX).unwrap();
        assert!(holders.contains(&other.0));
    }

    #[test]
    fn the_target_loosens_after_a_miss_and_tightens_after_a_win() {
        assert_eq!(adjust(100, false), 200);
        assert_eq!(adjust(u64::MAX, false), u64::MAX);
        assert_eq!(adjust(800, true), 700);
        assert_eq!(adjust(0, false), 1);
    }
}
