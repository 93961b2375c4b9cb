//! Settlement: what the engine's settle order does on the ledger — the escrow paid out for the
//! work and refunded, confirmed cheaters slashed, Proof-of-Value rewards accrued, and the
//! trained model minted (naming its weights tensor) — and the block-lottery tickets of nodes
//! whose work a spot check confirmed.

use std::sync::Arc;

use aic_ledger::api::{LedgerRequest, LedgerResponse};
use aic_ledger::tx::{AssetMetadata, Call, PayoutKind};
use aic_ledger::{Address, Amount};
use aic_protocol::messages::{PeerRequest, PeerResponse};
use aic_protocol::rpc::RpcClient;
use aic_protocol::{NodeId, Role};
use serde_json::{json, Value};
use tracing::warn;

use super::dispatch::DIAL_TIMEOUT;
use super::engine::SettleOrder;
use super::report::push;
use super::runner::Effects;
use crate::coin_payroll::{Accrue, Release};
use crate::payroll;
use crate::rater::Penalty;

impl super::JobContext {
    /// Slashes `account`'s stake by the configured amount, or what is left of it, for `reason`.
    /// Answers the amount slashed (zero for an account with no stake).
    pub async fn slash_stake(&self, account: Address, reason: String) -> Result<Amount, String> {
        let system = self.system.clone().ok_or("no system key")?;
        let stake = match self.ledger.execute(LedgerRequest::Account(account)).await {
            Ok(LedgerResponse::Account(view)) => view.account.stake,
            Ok(other) => return Err(format!("unexpected answer to an account read: {other:?}")),
            Err(e) => return Err(e.to_string()),
        };
        let amount = stake.min(self.slash);
        if amount.is_zero() {
            return Ok(Amount::ZERO);
        }
        system
            .submit(
                &self.ledger,
                Call::Slash {
                    account,
                    amount,
                    reason,
                },
            )
            .await?;
        Ok(amount)
    }
}

impl Effects {
    /// Carries out a settle order, writing what happened into `report`. Answers the report and
    /// whether settlement succeeded (a failure is in the report as `settlement_error`).
    pub async fn settle(self: Arc<Self>, order: SettleOrder, mut report: Value) -> (Value, bool) {
        match self.settle_into(order, &mut report).await {
            Ok(()) => (report, true),
            Err(error) => {
                warn!(job = %self.plan.request.job, %error, "settling the job failed");
                report["settlement_error"] = json!(error);
                (report, false)
            }
        }
    }

    async fn settle_into(&self, order: SettleOrder, report: &mut Value) -> Result<(), String> {
        let system = self.ctx.system.clone().ok_or("no system key")?;
        let payroll = self.ctx.payroll.clone().ok_or("no system key")?;
        let job = self.plan.request.job;
        // Who did the work, on the ledger before the escrow (and the job's record) goes: the
        // trained model's card reads it from the job log. It pays nobody, so a refusal is
        // logged and settling goes on.
        let mut nodes = order.nodes;
        if nodes.len() > aic_ledger::state::MAX_PAYOUTS {
            nodes.sort_by_key(|n| std::cmp::Reverse(n.rows));
            nodes.truncate(aic_ledger::state::MAX_PAYOUTS);
            nodes.sort_by_key(|n| n.node);
        }
        let record = Call::RecordJobWork {
            job,
            runner: self.ctx.me,
            nodes,
        };
        if let Err(error) = system.submit(&self.ctx.ledger, record).await {
            warn!(%job, %error, "the job's work record was refused");
        }
        let settlement = payroll
            .send(Release {
                job,
                budget: self.plan.budget,
                work: order.work,
            })
            .await
            .map_err(|e| e.to_string())??;
        let nodes = self.nodes();
        let role_of = |to: &Address, kind: PayoutKind| -> String {
            let who = nodes
                .iter()
                .find(|n| n.payout_address.parse::<Address>().ok().as_ref() == Some(to))
                .map(|n| n.name.clone());
            match kind {
                PayoutKind::Compute => format!("compute ({})", who.unwrap_or_default()),
                PayoutKind::Storage => format!("storage ({})", who.unwrap_or_default()),
                PayoutKind::DatasetFee => "dataset owner".into(),
                PayoutKind::ModelFee => "model owner".into(),
            }
        };
        let payments: Vec<Value> = settlement
            .payouts
            .iter()
            .map(|p| json!({"to": p.to.to_string(), "role": role_of(&p.to, p.kind), "amount": p.amount.to_string()}))
            .collect();
        report["payments"] = json!(payments);
        report["platform_fee_burned"] = json!(settlement.platform_fee.to_string());
        report["refund"] = json!(settlement.refund.to_string());

        // Slash each node confirmed wrong in this job, as far as its stake allows.
        let mut slashed = json!([]);
        for (node, account) in &order.slash {
            match self
                .ctx
                .slash_stake(*account, format!("job {job}: confirmed wrong result"))
                .await
            {
                Ok(amount) if amount.is_zero() => {}
                Ok(amount) => push(
                    &mut slashed,
                    json!({"node": self.name(node), "slashed": amount.to_string()}),
                ),
                Err(error) => warn!(node = %self.name(node), %error, "slash refused"),
            }
        }
        let (_, penalties) = self
            .ctx
            .rater
            .send(crate::rater::Records)
            .await
            .map_err(|e| e.to_string())?;
        let mine: Vec<&Penalty> = penalties.iter().filter(|p| p.job == job.to_string()).collect();
        report["penalties"] = json!({"records": mine, "slashed": slashed});

        self.reward(&order.verified, report).await;

        if let Some(trained) = order.trained.filter(|_| order.completed) {
            // The asset names the weights tensor the last checkpoint stored: its content hash is
            // the tensor's, its manifest says where the tensor is held.
            let holders: Vec<Value> = trained
                .holders
                .iter()
                .map(|id| json!({"node": id.to_string(), "quic_addr": self.address_of(id).unwrap_or_default()}))
                .collect();
            let manifest = json!({
                "model": self.plan.model_json(),
                "dataset_asset": self.plan.request.dataset_asset.to_string(),
                "model_asset": self.plan.request.model_asset.to_string(),
                "job": job.to_string(),
                "accuracy": report["accuracy"],
                "r2": report["r2"],
                "weights": {
                    "tensor": trained.weights.hex(),
                    "elements": trained.weights.elements,
                    "holders": holders,
                },
            });
            let call = Call::MintTrainedModel {
                job,
                metadata: AssetMetadata {
                    name: format!("trained on {}", self.plan.manifest.name),
                    content_hash: trained.weights.hash,
                    manifest: manifest.to_string(),
                    usage_fee: Amount::ZERO,
                },
            };
            match system.try_submit(&self.ctx.ledger, call).await {
                Ok(events) => {
                    if let Some(asset) = aic_ledger::state::Event::minted_asset(&events) {
                        report["trained_model"] = json!(asset.to_string());
                        report["trained_model_weights"] = json!(trained.weights.hex());
                    }
                }
                // The same weights are an asset already (content is minted once): a seeded job
                // run again trains bit for bit what the first did. The job is settled all the
                // same; the report names the asset that holds these weights.
                Err(super::signer::Refusal::Ledger(aic_ledger::TxError::AlreadyMinted {
                    kind: aic_ledger::tx::AssetKind::TrainedModel,
                    asset,
                })) => {
                    report["trained_model_identical_to"] = json!(asset.to_string());
                    report["trained_model_weights"] = json!(trained.weights.hex());
                }
                Err(super::signer::Refusal::Ledger(e)) => return Err(e.to_string()),
                Err(super::signer::Refusal::Other(e)) => return Err(e),
            }
        }
        Ok(())
    }

    /// Accrues the job's Proof-of-Value rewards on the ledger: each verified provider's rows at
    /// the configured rate, none to the submitter's own node (no self-dealing). The block
    /// generator issues them at the next reward epoch, within the issuance cap.
    async fn reward(&self, verified: &[(NodeId, Address, u64)], report: &mut Value) {
        let mut lines = Vec::new();
        let mut accrued = Vec::new();
        for (node, to, rows) in verified {
            match payroll::pov_reward(self.ctx.reward_per_million_rows, *rows, to, &self.plan.payer) {
                Some(amount) => {
                    lines.push(json!({"node": self.name(node), "to": to.to_string(), "verified_rows": rows, "amount": amount.to_string(), "paid": "at the next reward epoch"}));
                    accrued.push((*to, amount));
                }
                None if *to == self.plan.payer => {
                    lines.push(json!({"node": self.name(node), "amount": "0", "why": "the submitter's own node earns no reward"}));
                }
                None => {}
            }
        }
        let accrue = Accrue {
            job: self.plan.request.job,
            rewards: accrued,
        };
        let outcome = match &self.ctx.payroll {
            Some(payroll) => payroll
                .send(accrue)
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r),
            None => Err("no system key".into()),
        };
        if let Err(error) = outcome {
            warn!(%error, "rewards not accrued");
            report["rewards_error"] = json!(error);
        }
        report["rewards"] = json!(lines);
    }

    /// A node whose work was confirmed holds a lottery ticket for this job's session: it signs
    /// the ticket once; the block lottery draws it without asking again.
    pub async fn grant_ticket(self: Arc<Self>, node: NodeId) {
        let session = self.plan.request.job;
        if self.ctx.tickets.holds(&session, &node) {
            return;
        }
        let Some(status) = self.node(&node) else { return };
        let cached = self.clients.lock().expect("clients").get(&node).cloned();
        let client = match cached {
            Some(client) => client,
            None => match tokio::time::timeout(
                DIAL_TIMEOUT,
                RpcClient::connect(&self.ctx.endpoint, &status.quic_addr, Role::Compute),
            )
            .await
            {
                Ok(Ok(client)) => client,
                _ => return,
            },
        };
        let signed = client.call(&PeerRequest::SignTicket { session }).await;
        let Ok(PeerResponse::TicketSigned { signature }) = signed else {
            warn!(node = %self.name(&node), "no ticket signature; the node holds no ticket");
            return;
        };
        let Ok(ticket) = <[u8; 64]>::try_from(signature) else {
            return;
        };
        // A node banned while it signed holds no ticket.
        if self.banned.lock().expect("banned").contains(&node) {
            return;
        }
        let holder = crate::lottery::Holder {
            addr: status.quic_addr.clone(),
            public_key: client.peer().public_key,
            ticket,
        };
        if let Err(error) = self.ctx.tickets.grant(session, node, holder) {
            warn!(node = %self.name(&node), %error, "ticket refused");
        }
    }
}
