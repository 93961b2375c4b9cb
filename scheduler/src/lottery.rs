//! The block lottery on the Raft leader: the ticket holders of the current session (the nodes
//! whose work a spot check confirmed in the latest job), the draw, and the two signatures a
//! lottery block needs — the winner's and a second, randomly drawn holder's, each of whom checks
//! the ticket before signing. Rules are in `aic_ledger::lottery`; this owns the conversation.

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
    /// Holder → where it is reached.
    holders: BTreeMap<NodeId, String>,
}

impl Tickets {
    /// Gives `node` a ticket in `session`; a new session replaces the old one.
    pub fn grant(&self, session: JobId, node: NodeId, addr: String) {
        let mut current = self.0.lock().expect("tickets");
        match current.as_mut() {
            Some(s) if s.session == session => {
                s.holders.insert(node, addr);
            }
            _ => {
                *current = Some(Session {
                    session,
                    holders: [(node, addr)].into_iter().collect(),
                });
            }
        }
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
    let dial = |node: NodeId| async move {
        let failed = |e: String| (Some(node), e);
        let addr = session
            .holders
            .get(&node)
            .ok_or_else(|| failed("a holder without an address".into()))?;
        let connect = RpcClient::connect(endpoint, addr, Role::Compute);
        let client = tokio::time::timeout(std::time::Duration::from_millis(500), connect)
            .await
            .map_err(|_| failed(format!("{addr} did not answer")))?
            .map_err(|e| failed(e.to_string()))?;
        if client.peer().node_id != node {
            return Err(failed(format!("{addr} is another node")));
        }
        Ok(client)
    };
    let proposer = dial(winner).await?;
    header.session = Some(session.session);
    header.difficulty = target;
    header.proposer = winner;
    header.proposer_key = Address(proposer.peer().public_key);
    let sign = |client: RpcClient, header: BlockHeader, as_cosigner: bool| async move {
        let bytes = postcard::to_stdvec(&header).map_err(|e| e.to_string())?;
        match client
            .call(&PeerRequest::SignBlock {
                header: bytes,
                as_cosigner,
            })
            .await
            .map_err(|e| e.to_string())?
        {
            PeerResponse::BlockSigned { signature } => {
                let signature: [u8; 64] = signature.try_into().map_err(|_| "a signature is 64 bytes")?;
                Ok::<_, String>(BlockSignature {
                    signer: Address(client.peer().public_key),
                    signature,
                })
            }
            other => Err(format!("unexpected answer {other:?}")),
        }
    };
    let signature = sign(proposer, header.clone(), false)
        .await
        .map_err(|e| (Some(winner), e))?;
    header.signatures.push(signature);
    let second = dial(cosigner).await?;
    let signature = sign(second, header.clone(), true)
        .await
        .map_err(|e| (Some(cosigner), e))?;
    header.signatures.push(signature);
    ledger.commit_block(header.clone()).await.map_err(|e| (None, e))
}
