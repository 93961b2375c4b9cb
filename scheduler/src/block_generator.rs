//! The `BlockGenerator` actor: on the Raft leader, seals the pending transactions into a signed
//! block about every block interval. On followers it does nothing; when leadership moves, the
//! new leader's generator takes over from the ledger's chain head.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use aic_ledger::raft::replica::LedgerReplica;
use aic_ledger::Keypair;
use tracing::{debug, warn};

pub struct BlockGenerator {
    ledger: Arc<LedgerReplica>,
    /// The replica's node key (its certificate's), which signs the blocks it proposes.
    key: Keypair,
    interval: Duration,
    sealing: bool,
}

impl BlockGenerator {
    pub fn new(ledger: Arc<LedgerReplica>, key: Keypair, interval: Duration) -> Self {
        BlockGenerator {
            ledger,
            key,
            interval,
            sealing: false,
        }
    }
}

/// Stops the actor (service shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopGenerator;

impl Actor for BlockGenerator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.interval, |generator, ctx| {
            // One block at a time: a slow commit delays the next block rather than racing it.
            if generator.sealing || !generator.ledger.is_leader() {
                return;
            }
            generator.sealing = true;
            let ledger = generator.ledger.clone();
            let key = generator.key.clone();
            let seal = async move { ledger.seal_block(&key).await };
            ctx.spawn(seal.into_actor(generator).map(|outcome, generator, _| {
                generator.sealing = false;
                match outcome {
                    Some(Ok(height)) => debug!(height, "block sealed"),
                    Some(Err(error)) => warn!(%error, "block not sealed"),
                    None => {}
                }
            }));
        });
    }
}

impl Handler<StopGenerator> for BlockGenerator {
    type Result = ();

    fn handle(&mut self, _: StopGenerator, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
