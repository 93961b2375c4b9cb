//! The system signer: payroll, slashing, minting and checkpoints go on the ledger as system
//! transactions, one at a time so nonces follow, with the ledger's refusals kept typed.

use aic_ledger::api::{LedgerRequest, LedgerResponse};
use aic_ledger::raft::replica::LedgerReplica;
use aic_ledger::tx::{Call, Transaction};
use aic_ledger::{Address, Keypair};
use tokio::sync::Mutex;

/// Tries a system transaction gets when other replicas' system transactions take its nonce.
const NONCE_ATTEMPTS: usize = 3;

/// Why a system transaction did not apply.
#[derive(Debug)]
pub enum Refusal {
    Ledger(aic_ledger::TxError),
    Other(String),
}

/// Signs system transactions (payroll, slashing, minting) one at a time, so nonces follow.
pub struct SystemSigner {
    key: Keypair,
    lock: Mutex<()>,
}

impl SystemSigner {
    pub fn new(key: Keypair) -> Self {
        SystemSigner {
            key,
            lock: Mutex::new(()),
        }
    }

    pub fn address(&self) -> Address {
        self.key.address()
    }

    /// Submits `call` as the system account; a refusal is an error.
    pub async fn submit(
        &self,
        ledger: &LedgerReplica,
        call: Call,
    ) -> Result<Vec<aic_ledger::state::Event>, String> {
        self.try_submit(ledger, call).await.map_err(|e| match e {
            Refusal::Ledger(e) => e.to_string(),
            Refusal::Other(e) => e,
        })
    }

    /// Like [`Self::submit`], with the ledger's refusal kept typed.
    pub async fn try_submit(
        &self,
        ledger: &LedgerReplica,
        call: Call,
    ) -> Result<Vec<aic_ledger::state::Event>, Refusal> {
        let _one_at_a_time = self.lock.lock().await;
        // Another replica signing with the same key may take the nonce first: read it again.
        for _ in 1..NONCE_ATTEMPTS {
            match self.submit_once(ledger, call.clone()).await {
                Err(Refusal::Ledger(aic_ledger::TxError::BadNonce { .. })) => continue,
                other => return other,
            }
        }
        self.submit_once(ledger, call).await
    }

    async fn submit_once(
        &self,
        ledger: &LedgerReplica,
        call: Call,
    ) -> Result<Vec<aic_ledger::state::Event>, Refusal> {
        let status = match ledger.execute(LedgerRequest::Status).await {
            Ok(LedgerResponse::Status(status)) => status,
            other => return Err(Refusal::Other(format!("ledger status: {other:?}"))),
        };
        let nonce = match ledger.execute(LedgerRequest::Account(self.key.address())).await {
            Ok(LedgerResponse::Account(view)) => view.account.nonce,
            other => return Err(Refusal::Other(format!("system account: {other:?}"))),
        };
        let signed = Transaction {
            chain_id: status.chain_id,
            from: self.key.address(),
            nonce,
            call,
        }
        .sign(&self.key);
        match ledger.execute(LedgerRequest::Submit(Box::new(signed))).await {
            Ok(LedgerResponse::Submitted {
                result: Ok(events), ..
            }) => Ok(events),
            Ok(LedgerResponse::Submitted {
                result: Err(refusal), ..
            }) => Err(Refusal::Ledger(refusal)),
            // Refused before consensus (a nonce another replica took, say): the same refusal.
            Err(aic_ledger::api::LedgerApiError::Refused(refusal)) => Err(Refusal::Ledger(refusal)),
            other => Err(Refusal::Other(format!("unexpected ledger answer {other:?}"))),
        }
    }
}
