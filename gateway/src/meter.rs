//! Metering and settlement: every served call adds its rows to its payer's line for the model
//! (and to the line of the node that served them); once per period the lines go to the ledger
//! as one `SettleInference`, signed by the gateway's settler key. A settlement whose answer was
//! lost is sent again with the same period number, so the ledger refuses it if it landed
//! (`PeriodSettled`): rows are never charged twice, and never dropped while the ledger is away.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aic_ledger::amount::Amount;
use aic_ledger::api::{LedgerRequest, LedgerResponse};
use aic_ledger::state::{InferenceTariff, InferenceUsage, MAX_USAGE_LINES};
use aic_ledger::tx::{Call, Transaction};
use aic_ledger::{Address, Keypair, TxError};
use aic_protocol::AssetId;
use tokio_util::sync::CancellationToken;

use super::ledger::Ledger;
use super::metrics::GatewayMetrics;

#[derive(Default)]
struct Line {
    rows: u64,
    served: BTreeMap<Address, u64>,
    /// The calls' costs as checked against the escrow.
    cost: Amount,
}

/// Rows served and not yet settled.
#[derive(Default)]
pub struct Meter {
    lines: Mutex<BTreeMap<(Address, AssetId), Line>>,
    /// What each payer owes for rows not yet settled (at most what settlement will take).
    owed: Mutex<BTreeMap<Address, Amount>>,
}

impl Meter {
    /// Reserves `cost` of `payer`'s `escrow` for a call about to run: refused when what the
    /// payer already owes and this call would exceed the escrow. Checked and reserved at once, so
    /// concurrent calls cannot together spend more than the escrow holds.
    pub fn reserve(&self, payer: Address, cost: Amount, escrow: Amount) -> Result<(), Amount> {
        let mut owed = self.owed.lock().expect("meter");
        let held = owed.get(&payer).copied().unwrap_or(Amount::ZERO);
        let total = held.0.saturating_add(cost.0);
        if total > escrow.0 {
            return Err(Amount(escrow.0.saturating_sub(held.0)));
        }
        owed.insert(payer, Amount(total));
        Ok(())
    }

    /// Gives back a reservation whose call was not served.
    pub fn release(&self, payer: Address, cost: Amount) {
        let mut owed = self.owed.lock().expect("meter");
        if let Some(held) = owed.get_mut(&payer) {
            *held = Amount(held.0.saturating_sub(cost.0));
            if held.is_zero() {
                owed.remove(&payer);
            }
        }
    }

    /// Counts a call's rows of `model`, served for `payer` (its reservation `cost`) by the
    /// nodes whose operators are named, each with its rows.
    pub fn record(&self, payer: Address, model: AssetId, served_by: &[(Address, u64)], cost: Amount) {
        let mut lines = self.lines.lock().expect("meter");
        let line = lines.entry((payer, model)).or_default();
        for (node, rows) in served_by {
            line.rows += rows;
            *line.served.entry(*node).or_default() += rows;
        }
        line.cost = Amount(line.cost.0.saturating_add(cost.0));
    }

    /// What `payer` owes for calls not yet settled (reserved or served).
    pub fn owed(&self, payer: &Address) -> Amount {
        self.owed
            .lock()
            .expect("meter")
            .get(payer)
            .copied()
            .unwrap_or(Amount::ZERO)
    }

    /// Takes every line for a settlement (at most the ledger's per-transaction bound; the rest
    /// waits for the next period), with what each line's calls were checked to cost.
    fn take(&self, period: u64) -> Option<InFlight> {
        let mut lines = self.lines.lock().expect("meter");
        let keys: Vec<(Address, AssetId)> = lines.keys().take(MAX_USAGE_LINES).copied().collect();
        let mut usage = Vec::with_capacity(keys.len());
        let mut costs = Vec::with_capacity(keys.len());
        for key in keys {
            let line = lines.remove(&key).expect("listed");
            costs.push(line.cost);
            usage.push(InferenceUsage {
                payer: key.0,
                model: key.1,
                rows: line.rows,
                served: line.served.into_iter().collect(),
            });
        }
        (!usage.is_empty()).then_some(InFlight { period, usage, costs })
    }

    /// Forgets what a settlement's payers owed (the ledger holds it now).
    fn settled(&self, batch: &InFlight) {
        for (line, cost) in batch.usage.iter().zip(&batch.costs) {
            self.release(line.payer, *cost);
        }
    }
}

/// A settlement on its way: the same period and lines until the ledger has answered.
struct InFlight {
    period: u64,
    usage: Vec<InferenceUsage>,
    costs: Vec<Amount>,
}

/// Settles once per `period` until shutdown, then once more.
pub async fn settle_loop(
    meter: Arc<Meter>,
    ledger: Arc<Ledger>,
    key: Keypair,
    tariff: InferenceTariff,
    period: Duration,
    metrics: GatewayMetrics,
    shutdown: CancellationToken,
) {
    let mut in_flight: Option<InFlight> = None;
    loop {
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tokio::time::sleep(period) => false,
        };
        if in_flight.is_none() {
            // Periods only go forward on the ledger: the time in milliseconds does.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            in_flight = meter.take(now);
        }
        if let Some(batch) = in_flight.take() {
            match settle(&ledger, &key, tariff, &batch).await {
                Outcome::Settled => {
                    metrics.settlements.with_label_values(&["settled"]).inc();
                    meter.settled(&batch);
                }
                Outcome::AlreadySettled => {
                    metrics.settlements.with_label_values(&["already_settled"]).inc();
                    meter.settled(&batch);
                }
                Outcome::Refused(e) => {
                    // A refusal would repeat: the lines are dropped, loudly.
                    tracing::error!(error = %e, period = batch.period, lines = batch.usage.len(), "settlement refused");
                    metrics.settlements.with_label_values(&["refused"]).inc();
                    meter.settled(&batch);
                }
                Outcome::Unreachable(e) => {
                    tracing::warn!(error = %e, period = batch.period, "settlement not answered; sending it again");
                    metrics.settlements.with_label_values(&["retried"]).inc();
                    in_flight = Some(batch);
                }
            }
        }
        if stopping {
            return;
        }
    }
}

enum Outcome {
    Settled,
    AlreadySettled,
    Refused(TxError),
    Unreachable(String),
}

async fn settle(ledger: &Ledger, key: &Keypair, tariff: InferenceTariff, batch: &InFlight) -> Outcome {
    let status = match ledger.request(&LedgerRequest::Status).await {
        Ok(LedgerResponse::Status(status)) => status,
        Ok(other) => return Outcome::Unreachable(format!("status: {other:?}")),
        Err(e) => return Outcome::Unreachable(e),
    };
    let nonce = match ledger.request(&LedgerRequest::Account(key.address())).await {
        Ok(LedgerResponse::Account(view)) => view.account.nonce,
        Ok(other) => return Outcome::Unreachable(format!("account: {other:?}")),
        Err(e) => return Outcome::Unreachable(e),
    };
    let signed = Transaction {
        chain_id: status.chain_id,
        from: key.address(),
        nonce,
        call: Call::SettleInference {
            period: batch.period,
            tariff,
            usage: batch.usage.clone(),
        },
    }
    .sign(key);
    match ledger.submit(signed).await {
        Ok(Ok(_)) => Outcome::Settled,
        Ok(Err(TxError::PeriodSettled { .. })) => Outcome::AlreadySettled,
        // Another transaction of this key took the nonce: send it again next period.
        Ok(Err(TxError::BadNonce { .. })) => Outcome::Unreachable("the nonce was taken".into()),
        Ok(Err(e)) => Outcome::Refused(e),
        Err(e) => Outcome::Unreachable(e),
    }
}
