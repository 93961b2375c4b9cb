//! The block lottery on the Raft leader: the ticket holders of the current session (the nodes
//! whose work a spot check confirmed in the latest job, each having signed its ticket once), the
//! draw, and the block: the winner's signed ticket goes in without asking the winner (it learns
//! it won when the block lands), and a second, randomly drawn holder checks and co-signs. Rules
//! are in `aic_ledger::lottery`; this owns the conversation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aic_ledger::block::{BlockHeader, BlockSignature};
use aic_ledger::raft::replica::LedgerReplica;
use aic_ledger::Address;
use aic_protocol::messages::{PeerRequest, PeerResponse};
use aic_protocol::rpc::RpcClient;
use aic_protocol::{JobId, NodeId, Role};

/// The current session's ticket holders, shared by the jobs (which add holders) and the block
/// generator (which draws).
#[derive(Clone, Default)]
pub struct Tickets(Arc<Mutex<Option<Session>>>);

#[derive(Clone, Debug)]
struct Session {
    session: JobId,
    holders: BTreeMap<NodeId, Holder>,
}

/// A ticket holder: where it is reached, its certificate key, its signed ticket.
#[derive(Clone, Debug)]
pub struct Holder {
    pub addr: String,
    pub public_key: [u8; 32],
    pub ticket: [u8; 64],
}

impl Tickets {
    /// Whether `node` holds a ticket in `session` already.
    pub fn holds(&self, session: &JobId, node: &NodeId) -> bool {
        self.0
            .lock()
            .expect("tickets")
            .as_ref()
            .is_some_and(|s| &s.session == session && s.holders.contains_key(node))
    }

    /// Gives `node` a ticket in `session`, checking its signature; a new session replaces the
    /// old one.
    pub fn grant(&self, session: JobId, node: NodeId, holder: Holder) -> Result<(), String> {
        let message = aic_ledger::lottery::ticket_message(&session, &node);
        if NodeId::from_public_key(&holder.public_key) != node
            || !aic_ledger::keys::verify_strict(&Address(holder.public_key), &message, &holder.ticket)
        {
            return Err("the ticket's signature does not verify for this node".into());
        }
        let mut current = self.0.lock().expect("tickets");
        match current.as_mut() {
            Some(s) if s.session == session => {
                s.holders.insert(node, holder);
            }
            _ => {
                *current = Some(Session {
                    session,
                    holders: [(node, holder)].into_iter().collect(),
                });
            }
        }
        Ok(())
    }

    /// Takes `node`'s ticket away (it was found wrong).
    pub fn revoke(&self, node: &NodeId) {
        if let Some(s) = self.0.lock().expect("tickets").as_mut() {
            s.holders.remove(node);
        }
    }

    fn snapshot(&self) -> Option<Session> {
        self.0.lock().expect("tickets").clone()
    }
}

/// How a lottery round ended.
pub enum Outcome {
    /// A lottery block was committed at this height.
    Won(u64),
    /// No ticket drew under the target (or fewer than two holders).
    NoWinner,
    Failed(String),
}

/// One round: draw, collect the two signatures, commit. The caller seals an ordinary block when
/// this does not produce one, so the chain never waits on a node.
pub async fn run_round(
    ledger: &LedgerReplica,
    endpoint: &quinn::Endpoint,
    tickets: &Tickets,
    target: u64,
) -> Outcome {
    let Some(session) = tickets.snapshot() else {
        return Outcome::NoWinner;
    };
    let mut header = ledger.next_block_template();
    let holders: Vec<NodeId> = session.holders.keys().copied().collect();
    let Some((winner, cosigner)) =
        aic_ledger::lottery::elect(&header.prev_hash, &session.session, &holders, target)
    else {
        return Outcome::NoWinner;
    };
    match sign_and_commit(ledger, endpoint, &session, &mut header, target, winner, cosigner).await {
        Ok(height) => Outcome::Won(height),
        Err((node, error)) => {
            // A holder that cannot take part (gone, or refusing) gives up its ticket.
            if let Some(node) = node {
                tickets.revoke(&node);
            }
            Outcome::Failed(error)
        }
    }
}

async fn sign_and_commit(
    ledger: &LedgerReplica,
    endpoint: &quinn::Endpoint,
    session: &Session,
    header: &mut BlockHeader,
    target: u64,
    winner: NodeId,
    cosigner: NodeId,
) -> Result<u64, (Option<NodeId>, String)> {
    let ticket = session
        .holders
        .get(&winner)
        .ok_or((None, "a winner without a ticket".to_string()))?;
    header.session = Some(session.session);
    header.difficulty = target;
    header.proposer = winner;
    header.proposer_key = Address(ticket.public_key);
    header.signatures.push(BlockSignature {
        signer: Address(ticket.public_key),
        signature: ticket.ticket,
    });
    let failed = |e: String| (Some(cosigner), e);
    let holder = session
        .holders
        .get(&cosigner)
        .ok_or_else(|| failed("no such holder".into()))?;
    let connect = RpcClient::connect(endpoint, &holder.addr, Role::Compute);
    let client = tokio::time::timeout(std::time::Duration::from_millis(500), connect)
        .await
        .map_err(|_| failed(format!("{} did not answer", holder.addr)))?
        .map_err(|e| failed(e.to_string()))?;
    if client.peer().node_id != cosigner {
        return Err(failed(format!("{} is another node", holder.addr)));
    }
    let bytes = postcard::to_stdvec(&*header).map_err(|e| failed(e.to_string()))?;
    let signature = match client
        .call(&PeerRequest::SignBlock { header: bytes })
        .await
        .map_err(|e| failed(e.to_string()))?
    {
        PeerResponse::BlockSigned { signature } => signature
            .try_into()
            .map_err(|_| failed("a signature is 64 bytes".into()))?,
        other => return Err(failed(format!("unexpected answer {other:?}"))),
    };
    header.signatures.push(BlockSignature {
        signer: Address(client.peer().public_key),
        signature,
    });
    ledger.commit_block(header.clone()).await.map_err(|e| (None, e))
}
