//! The gateway's line to the grid's control plane: one QUIC connection to a scheduler replica
//! (the next replica when it breaks), carrying ledger reads, the settlement transactions, the
//! compute node list and the rater's reputations.

use std::collections::HashMap;

use aic_ledger::api::{LedgerRequest, LedgerResponse};
use aic_protocol::messages::{ClientRequest, ClientResponse, NodeStatus};
use aic_protocol::rpc::RpcClient;
use aic_protocol::{NodeId, Role};
use tokio::sync::Mutex;

/// A scheduler connection that redials on failure, trying each replica in turn.
pub struct Ledger {
    outbound: quinn::Endpoint,
    replicas: Vec<String>,
    client: Mutex<Option<RpcClient>>,
}

impl Ledger {
    pub fn new(outbound: quinn::Endpoint, replicas: Vec<String>) -> Self {
        Ledger {
            outbound,
            replicas,
            client: Mutex::new(None),
        }
    }

    async fn client(&self) -> Result<RpcClient, String> {
        let mut held = self.client.lock().await;
        if let Some(client) = held.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let mut failures = Vec::new();
        for addr in &self.replicas {
            match RpcClient::connect(&self.outbound, addr, Role::Scheduler).await {
                Ok(client) => {
                    *held = Some(client.clone());
                    return Ok(client);
                }
                Err(e) => failures.push(format!("{addr}: {e}")),
            }
        }
        Err(format!("no scheduler replica answered ({})", failures.join("; ")))
    }

    /// One ledger request (an election and an unconfirmed read waited out by
    /// [`aic_ledger::remote::request`]); a broken connection is dropped so the next call redials.
    pub async fn request(&self, request: &LedgerRequest) -> Result<LedgerResponse, String> {
        let client = self.client().await?;
        match aic_ledger::remote::request(&client, request).await {
            Ok(response) => Ok(response),
            Err(aic_ledger::remote::RemoteError::Transport(e)) => {
                *self.client.lock().await = None;
                Err(e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Submits a signed transaction: the ledger's verdict (a refusal before consensus is the
    /// same verdict), or why it could not be asked.
    pub async fn submit(
        &self,
        signed: aic_ledger::tx::SignedTransaction,
    ) -> Result<Result<Vec<aic_ledger::state::Event>, aic_ledger::TxError>, String> {
        let client = self.client().await?;
        match aic_ledger::remote::request(&client, &LedgerRequest::Submit(Box::new(signed))).await {
            Ok(LedgerResponse::Submitted { result, .. }) => Ok(result),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(aic_ledger::remote::RemoteError::Ledger(aic_ledger::api::LedgerApiError::Refused(e))) => {
                Ok(Err(e))
            }
            Err(aic_ledger::remote::RemoteError::Transport(e)) => {
                *self.client.lock().await = None;
                Err(e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Tells the scheduler's rater what a verification found about `node`.
    pub async fn report_verdict(
        &self,
        node: aic_protocol::NodeId,
        model: aic_protocol::AssetId,
        matched: bool,
    ) -> Result<(), String> {
        let client = self.client().await?;
        match client
            .call(&ClientRequest::InferenceVerdict { node, model, matched })
            .await
        {
            Ok(ClientResponse::Recorded) => Ok(()),
            Ok(other) => Err(format!("unexpected answer to a verdict: {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The grid's nodes as the scheduler lists them.
    pub async fn nodes(&self) -> Result<Vec<NodeStatus>, String> {
        let client = self.client().await?;
        match client.call(&ClientRequest::ListNodes).await {
            Ok(ClientResponse::Nodes(nodes)) => Ok(nodes),
            Ok(other) => Err(format!("unexpected answer to ListNodes: {other:?}")),
            Err(e) => {
                *self.client.lock().await = None;
                Err(e.to_string())
            }
        }
    }

    /// The scheduler's rater's reputation for each node it has a record of.
    pub async fn reputations(&self) -> Result<HashMap<NodeId, f64>, String> {
        let client = self.client().await?;
        let report = match client.call(&ClientRequest::Ratings).await {
            Ok(ClientResponse::Ratings { report }) => report,
            Ok(other) => return Err(format!("unexpected answer to Ratings: {other:?}")),
            Err(e) => return Err(e.to_string()),
        };
        let report: serde_json::Value =
            serde_json::from_str(&report).map_err(|e| format!("the ratings report: {e}"))?;
        Ok(report["records"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(node, record)| Some((node.parse().ok()?, record["reputation"].as_f64()?)))
            .collect())
    }
}
