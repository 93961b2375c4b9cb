//! The `BlockGenerator` actor: on the Raft leader, seals the pending transactions into a block
//! about every block interval — by lottery among the current session's ticket holders when one
//! draws under the target (see [`crate::lottery`]), else signed by this replica. On followers it
//! does nothing; when leadership moves, the new leader's generator takes over from the chain head.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use aic_ledger::raft::replica::LedgerReplica;
use aic_ledger::Keypair;
use tracing::{debug, warn};

use crate::lottery::{self, Outcome, Tickets};
use crate::metrics::SchedulerMetrics;

pub struct BlockGenerator {
    ledger: Arc<LedgerReplica>,
    /// The replica's node key (its certificate's), which signs the blocks it proposes.
    key: Keypair,
    interval: Duration,
    sealing: bool,
    tickets: Tickets,
    endpoint: quinn::Endpoint,
    /// The lottery's current target (a draw under it wins), adjusted every round.
    target: u64,
    metrics: SchedulerMetrics,
}

impl BlockGenerator {
    pub fn new(
        ledger: Arc<LedgerReplica>,
        key: Keypair,
        interval: Duration,
        tickets: Tickets,
        endpoint: quinn::Endpoint,
        metrics: SchedulerMetrics,
    ) -> Self {
        BlockGenerator {
            ledger,
            key,
            interval,
            sealing: false,
            tickets,
            endpoint,
            target: u64::MAX / 4,
            metrics,
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
            let (tickets, endpoint, target) = (
                generator.tickets.clone(),
                generator.endpoint.clone(),
                generator.target,
            );
            let seal = async move {
                let lottery = lottery::run_round(&ledger, &endpoint, &tickets, target).await;
                let sealed = match &lottery {
                    Outcome::Won(height) => Some(Ok(*height)),
                    Outcome::NoWinner | Outcome::Failed(_) => ledger.seal_block(&key).await,
                };
                (lottery, sealed)
            };
            ctx.spawn(seal.into_actor(generator).map(|(lottery, sealed), generator, _| {
                generator.sealing = false;
                let outcome = match &lottery {
                    Outcome::Won(height) => {
                        debug!(height, "lottery block committed");
                        "won"
                    }
                    Outcome::NoWinner => "no_winner",
                    Outcome::Failed(error) => {
                        warn!(%error, "lottery round failed; this replica sealed the block");
                        "failed"
                    }
                };
                generator
                    .metrics
                    .lottery_rounds
                    .with_label_values(&[outcome])
                    .inc();
                if !matches!(lottery, Outcome::Failed(_)) {
                    generator.target = aic_ledger::lottery::adjust(generator.target, outcome == "won");
                }
                match sealed {
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
