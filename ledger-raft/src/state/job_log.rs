//! The job log: every job the ledger ever escrowed, kept after the job ends — who paid, for
//! which dataset and model, how far it got, where the money went and the model it produced. A
//! user's job history and a dataset's usage are read from it, so they outlive the scheduler that
//! ran the job. It is written only from the events of applied transactions, so every replica
//! keeps the same log.

use std::collections::{BTreeMap, BTreeSet};

use aic_protocol::{AssetId, JobId, NodeId};
use serde::{Deserialize, Serialize};

use super::{Event, Provenance};
use crate::amount::Amount;
use crate::keys::Address;
use crate::tx::PayoutKind;

/// Most entries one `JobLog` answer carries.
pub const MAX_JOB_LOG_PER_REQUEST: u32 = 500;

/// Where a job stands, as the ledger knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobOutcome {
    /// The escrow is open; no scheduler has recorded the job yet.
    Escrowed,
    /// A scheduler recorded it and is running it.
    Running,
    /// Its work was paid for out of the escrow.
    Settled,
    /// Its escrow went back to the payer with no work paid.
    Refunded,
}

impl JobOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Escrowed => "escrowed",
            JobOutcome::Running => "running",
            JobOutcome::Settled => "settled",
            JobOutcome::Refunded => "refunded",
        }
    }
}

/// One job, as the ledger saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    pub job: JobId,
    pub payer: Address,
    /// The block the escrow opened in, and the ledger time then.
    pub opened_height: u64,
    pub opened_ms: u64,
    pub budget: Amount,
    /// What the scheduler recorded the job to train (none before it is recorded).
    pub dataset: Option<AssetId>,
    pub model: Option<AssetId>,
    /// Rounds at the latest checkpoint.
    pub rounds: u32,
    /// Replicas that took the job over from one that stopped.
    pub takeovers: u32,
    pub compute_paid: Amount,
    pub storage_paid: Amount,
    pub dataset_fee: Amount,
    pub model_fee: Amount,
    /// The platform fee, burned.
    pub burned: Amount,
    pub refunded: Amount,
    pub outcome: JobOutcome,
    pub trained_model: Option<AssetId>,
}

impl JobSummary {
    /// Everything paid out of the escrow to providers (fees and work).
    pub fn paid(&self) -> Amount {
        [self.storage_paid, self.dataset_fee, self.model_fee]
            .into_iter()
            .fold(self.compute_paid, |sum, part| {
                sum.checked_add(part).unwrap_or(sum)
            })
    }
}

/// One compute node's part in a job, as the runner recorded it when the job settled: the rows
/// it was credited, how many of them a spot check confirmed, and the spot checks of its results
/// that agreed or caught it (a node caught is confirmed wrong: cut from the job, unpaid, slashed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeWork {
    pub node: NodeId,
    pub rows: u64,
    pub verified_rows: u64,
    pub checks_passed: u32,
    pub checks_failed: u32,
    pub confirmed_wrong: bool,
}

/// Who did a job's work and where its money went, kept beside its summary (and outside the
/// pages, which stay small): each node's record, every payout and Proof-of-Value reward.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobWork {
    pub nodes: Vec<NodeWork>,
    /// Paid out of the escrow: to whom, for what, how much (one release, at most its payouts).
    pub payouts: Vec<(Address, PayoutKind, Amount)>,
    /// Proof-of-Value rewards accrued for verified rows.
    pub rewards: Vec<(Address, Amount)>,
    /// Each rewind: rounds done before it, the round it went back to, the node found wrong.
    pub rewinds: Vec<(u32, u32, NodeId)>,
}

/// Which jobs a `JobLog` request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobLogFilter {
    All,
    /// Jobs one account paid for.
    Payer(Address),
    /// Jobs that trained on a dataset or with a model.
    Asset(AssetId),
}

/// The log, with its indexes. Entries are numbered in the order their escrows opened.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLog {
    entries: BTreeMap<u64, JobSummary>,
    by_job: BTreeMap<JobId, u64>,
    by_payer: BTreeSet<(Address, u64)>,
    by_asset: BTreeSet<(AssetId, u64)>,
    /// Each entry's work record, by entry number (absent until something is recorded).
    work: BTreeMap<u64, JobWork>,
}

/// The newest entry numbers an index holds for `key`, numbered below `before`.
fn newest_of<K: Ord + Copy>(index: &BTreeSet<(K, u64)>, key: K, before: u64, limit: usize) -> Vec<u64> {
    index
        .range((key, 0)..(key, before))
        .rev()
        .take(limit)
        .map(|(_, n)| *n)
        .collect()
}

fn add(sum: &mut Amount, amount: Amount) {
    // Payouts never exceed the escrow they come from, so the sum cannot overflow; should it,
    // the log keeps the largest value rather than stop the ledger.
    *sum = sum.checked_add(amount).unwrap_or(Amount(u128::MAX));
}

impl JobLog {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, job: &JobId) -> Option<(u64, &JobSummary)> {
        let number = *self.by_job.get(job)?;
        Some((number, self.entries.get(&number)?))
    }

    /// Newest first, numbered below `before`, at most `limit` (capped).
    pub fn page(&self, filter: JobLogFilter, before: Option<u64>, limit: u32) -> Vec<(u64, JobSummary)> {
        let before = before.unwrap_or(u64::MAX);
        let limit = limit.min(MAX_JOB_LOG_PER_REQUEST) as usize;
        let numbers: Vec<u64> = match filter {
            JobLogFilter::All => self
                .entries
                .range(..before)
                .rev()
                .take(limit)
                .map(|(n, _)| *n)
                .collect(),
            JobLogFilter::Payer(payer) => newest_of(&self.by_payer, payer, before, limit),
            JobLogFilter::Asset(asset) => newest_of(&self.by_asset, asset, before, limit),
        };
        numbers
            .into_iter()
            .filter_map(|n| Some((n, self.entries.get(&n)?.clone())))
            .collect()
    }

    /// A job's work record: empty before it settles.
    pub fn work(&self, job: &JobId) -> JobWork {
        self.by_job
            .get(job)
            .and_then(|number| self.work.get(number))
            .cloned()
            .unwrap_or_default()
    }

    fn work_of(&mut self, job: &JobId) -> Option<&mut JobWork> {
        let number = *self.by_job.get(job)?;
        Some(self.work.entry(number).or_default())
    }

    fn entry(&mut self, job: &JobId) -> Option<&mut JobSummary> {
        let number = self.by_job.get(job)?;
        self.entries.get_mut(number)
    }

    /// Folds one applied transaction's events into the log. `provenance` names how a freshly
    /// minted asset came to be (a TrainedModel names its job).
    pub(super) fn note(
        &mut self,
        events: &[Event],
        height: u64,
        time_ms: u64,
        provenance: impl Fn(&AssetId) -> Option<Provenance>,
    ) {
        for event in events {
            match event {
                Event::EscrowOpened { job, payer, amount } => {
                    let number = self.entries.last_key_value().map_or(0, |(n, _)| n + 1);
                    self.by_job.insert(*job, number);
                    self.by_payer.insert((*payer, number));
                    self.entries.insert(
                        number,
                        JobSummary {
                            job: *job,
                            payer: *payer,
                            opened_height: height,
                            opened_ms: time_ms,
                            budget: *amount,
                            dataset: None,
                            model: None,
                            rounds: 0,
                            takeovers: 0,
                            compute_paid: Amount::ZERO,
                            storage_paid: Amount::ZERO,
                            dataset_fee: Amount::ZERO,
                            model_fee: Amount::ZERO,
                            burned: Amount::ZERO,
                            refunded: Amount::ZERO,
                            outcome: JobOutcome::Escrowed,
                            trained_model: None,
                        },
                    );
                }
                Event::JobRecorded {
                    job, dataset, model, ..
                } => {
                    let Some(number) = self.by_job.get(job).copied() else {
                        continue;
                    };
                    self.by_asset.insert((*dataset, number));
                    self.by_asset.insert((*model, number));
                    if let Some(entry) = self.entries.get_mut(&number) {
                        entry.dataset = Some(*dataset);
                        entry.model = Some(*model);
                        entry.outcome = JobOutcome::Running;
                    }
                }
                Event::JobCheckpointed { job, round, .. } => {
                    if let Some(entry) = self.entry(job) {
                        entry.rounds = entry.rounds.max(*round);
                    }
                }
                Event::JobRewound {
                    job, from, to, wrong, ..
                } => {
                    if let Some(work) = self.work_of(job) {
                        work.rewinds.push((*from, *to, *wrong));
                    }
                }
                Event::JobTakenOver { job, .. } => {
                    if let Some(entry) = self.entry(job) {
                        entry.takeovers = entry.takeovers.saturating_add(1);
                    }
                }
                Event::JobWorkRecorded { job, nodes } => {
                    if let Some(work) = self.work_of(job) {
                        // A replica that took the job over records it again: the last record
                        // is the whole job's.
                        work.nodes = nodes.clone();
                    }
                }
                Event::RewardAccrued { job, to, amount } => {
                    if let Some(work) = self.work_of(job) {
                        work.rewards.push((*to, *amount));
                    }
                }
                Event::EscrowPaid {
                    job,
                    to,
                    amount,
                    kind,
                } => {
                    if let Some(work) = self.work_of(job) {
                        work.payouts.push((*to, *kind, *amount));
                    }
                    if let Some(entry) = self.entry(job) {
                        let sum = match kind {
                            PayoutKind::Compute => &mut entry.compute_paid,
                            PayoutKind::Storage => &mut entry.storage_paid,
                            PayoutKind::DatasetFee => &mut entry.dataset_fee,
                            PayoutKind::ModelFee => &mut entry.model_fee,
                        };
                        add(sum, *amount);
                        entry.outcome = JobOutcome::Settled;
                    }
                }
                Event::PlatformFeeBurned { job, amount } => {
                    if let Some(entry) = self.entry(job) {
                        add(&mut entry.burned, *amount);
                        entry.outcome = JobOutcome::Settled;
                    }
                }
                Event::EscrowRefunded { job, amount, .. } => {
                    if let Some(entry) = self.entry(job) {
                        add(&mut entry.refunded, *amount);
                        if entry.outcome != JobOutcome::Settled {
                            entry.outcome = JobOutcome::Refunded;
                        }
                    }
                }
                Event::AssetTransfer {
                    from: None,
                    to: Some(_),
                    asset,
                } => {
                    if let Some(Provenance::Trained { job }) = provenance(asset) {
                        if let Some(entry) = self.entry(&job) {
                            entry.trained_model = Some(*asset);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}
