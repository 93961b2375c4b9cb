//! The `CoinPayroll` actor: pays a finished job from its escrow through ledger transactions —
//! the payouts the pure [`crate::payroll::settle`] decides, the burned platform fee, the refund
//! of what is left — and accrues the job's Proof-of-Value rewards for the next reward epoch.

use std::sync::Arc;

use actix::prelude::*;
use aic_ledger::raft::replica::LedgerReplica;
use aic_ledger::tx::{Call, PayoutKind};
use aic_ledger::{Address, Amount};
use aic_protocol::JobId;

use crate::job::SystemSigner;
use crate::metrics::SchedulerMetrics;
use crate::payroll::{self, Pricing, Settlement, WorkDone};

pub struct CoinPayroll {
    ledger: Arc<LedgerReplica>,
    system: Arc<SystemSigner>,
    pricing: Pricing,
    metrics: SchedulerMetrics,
}

impl CoinPayroll {
    pub fn new(
        ledger: Arc<LedgerReplica>,
        system: Arc<SystemSigner>,
        pricing: Pricing,
        metrics: SchedulerMetrics,
    ) -> Self {
        CoinPayroll {
            ledger,
            system,
            pricing,
            metrics,
        }
    }
}

impl Actor for CoinPayroll {
    type Context = Context<Self>;
}

/// Releases `job`'s escrow for `work` (fees first, then compute and storage, pro rata if the
/// budget is short; the platform fee burned) and refunds the rest. Answers the settlement.
#[derive(Message)]
#[rtype(result = "Result<Settlement, String>")]
pub struct Release {
    pub job: JobId,
    pub budget: Amount,
    pub work: WorkDone,
}

/// Accrues `job`'s Proof-of-Value rewards; the leader issues them at the next reward epoch.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Accrue {
    pub job: JobId,
    pub rewards: Vec<(Address, Amount)>,
}

impl Handler<Release> for CoinPayroll {
    type Result = ResponseFuture<Result<Settlement, String>>;

    fn handle(&mut self, message: Release, _: &mut Self::Context) -> Self::Result {
        let (ledger, system, metrics) = (self.ledger.clone(), self.system.clone(), self.metrics.clone());
        let settlement = payroll::settle(message.budget, &message.work, &self.pricing);
        Box::pin(async move {
            let settlement = settlement.map_err(|e| e.to_string())?;
            let job = message.job;
            system
                .submit(
                    &ledger,
                    Call::ReleaseEscrow {
                        job,
                        payouts: settlement.payouts.clone(),
                        platform_fee: settlement.platform_fee,
                    },
                )
                .await?;
            for payout in &settlement.payouts {
                let role = match payout.kind {
                    PayoutKind::Compute => "compute",
                    PayoutKind::Storage => "storage",
                    PayoutKind::DatasetFee => "dataset_fee",
                    PayoutKind::ModelFee => "model_fee",
                };
                metrics
                    .payments
                    .with_label_values(&[role])
                    .inc_by(payout.amount.as_aic_f64());
            }
            metrics
                .payments
                .with_label_values(&["platform_fee"])
                .inc_by(settlement.platform_fee.as_aic_f64());
            if !settlement.refund.is_zero() {
                system.submit(&ledger, Call::RefundEscrow { job }).await?;
                metrics
                    .payments
                    .with_label_values(&["refund"])
                    .inc_by(settlement.refund.as_aic_f64());
            }
            Ok(settlement)
        })
    }
}

impl Handler<Accrue> for CoinPayroll {
    type Result = ResponseFuture<Result<(), String>>;

    fn handle(&mut self, message: Accrue, _: &mut Self::Context) -> Self::Result {
        let (ledger, system) = (self.ledger.clone(), self.system.clone());
        Box::pin(async move {
            if message.rewards.is_empty() {
                return Ok(());
            }
            system
                .submit(
                    &ledger,
                    Call::AccrueRewards {
                        job: message.job,
                        rewards: message.rewards,
                    },
                )
                .await
                .map(|_| ())
        })
    }
}
