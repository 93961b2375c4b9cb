//! The console's line to the grid: one QUIC connection with the user's certificate to a
//! scheduler replica, dialled again when it breaks — to the next replica when the one it used
//! stops answering, so pages go on while the Raft leader is replaced. A read that fails says why,
//! so a page renders what it could and shows the rest as unavailable. A dial is bounded, and a
//! replica that did not answer is not dialled again for a few seconds: pages stay quick while it
//! is down.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aic_ledger::api::{LedgerRequest, LedgerResponse};
use aic_ledger::state::Event;
use aic_ledger::tx::{Call, Transaction};
use aic_ledger::{Keypair, TxError};
use aic_protocol::certs::IdentityFiles;
use aic_protocol::messages::{ClientRequest, ClientResponse, JobRequest, NodeStatus};
use aic_protocol::rpc::RpcClient;
use aic_protocol::transport::{self, TransportTuning};
use aic_protocol::Role;
use tokio::sync::Mutex;

/// How long a dial may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a replica that did not answer is taken as down.
const DOWN_FOR: Duration = Duration::from_secs(10);

/// Why a transaction the console sent did not apply.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The ledger refused it; nothing changed.
    #[error("{0}")]
    Refused(TxError),
    /// The grid could not be asked, or answered oddly; whether it applied is unknown until the
    /// account's nonce is read again.
    #[error("{0}")]
    Unavailable(String),
}

pub struct Grid {
    endpoint: quinn::Endpoint,
    /// Every scheduler replica the console may read through, the preferred first.
    schedulers: Vec<String>,
    /// The connection in use, and which replica it goes to.
    client: Mutex<Option<(usize, RpcClient)>>,
    /// Per replica: the last failed dial, when and why.
    down: std::sync::Mutex<Vec<Option<(Instant, String)>>>,
}

impl Grid {
    pub fn new(identity: &IdentityFiles, schedulers: Vec<String>) -> Result<Self, aic_protocol::Error> {
        let identity = identity.load()?;
        let any: SocketAddr = if schedulers.first().is_some_and(|s| s.starts_with('[')) {
            "[::]:0".parse().expect("an address")
        } else {
            "0.0.0.0:0".parse().expect("an address")
        };
        let tuning = TransportTuning::default();
        let endpoint = transport::endpoint(transport::bind_udp(any, &tuning)?, &identity, &tuning)?;
        let down = vec![None; schedulers.len()];
        Ok(Grid {
            endpoint,
            schedulers,
            client: Mutex::new(None),
            down: std::sync::Mutex::new(down),
        })
    }

    /// A connection to a replica that answers: the one in use, else each in turn from the one
    /// after it.
    async fn client(&self) -> Result<RpcClient, String> {
        let mut held = self.client.lock().await;
        if let Some((_, client)) = held.as_ref().filter(|(_, c)| !c.is_closed()) {
            return Ok(client.clone());
        }
        let start = held.as_ref().map_or(0, |(i, _)| i + 1);
        let mut failures = Vec::new();
        for step in 0..self.schedulers.len() {
            let index = (start + step) % self.schedulers.len();
            let address = &self.schedulers[index];
            if let Some((at, why)) = self.down.lock().expect("down")[index].as_ref() {
                if at.elapsed() < DOWN_FOR {
                    failures.push(why.clone());
                    continue;
                }
            }
            let dialled = tokio::time::timeout(
                DIAL_TIMEOUT,
                RpcClient::connect(&self.endpoint, address, Role::Scheduler),
            )
            .await;
            let failure = match dialled {
                Ok(Ok(client)) => {
                    self.down.lock().expect("down")[index] = None;
                    *held = Some((index, client.clone()));
                    return Ok(client);
                }
                Ok(Err(e)) => format!("the scheduler at {address} does not answer: {e}"),
                Err(_) => format!(
                    "the scheduler at {address} does not answer (no handshake within {} s)",
                    DIAL_TIMEOUT.as_secs()
                ),
            };
            self.down.lock().expect("down")[index] = Some((Instant::now(), failure.clone()));
            failures.push(failure);
        }
        Err(failures.join("; "))
    }

    /// One ledger read; a replica that stopped answering is left for the next.
    pub async fn ledger(&self, request: &LedgerRequest) -> Result<LedgerResponse, String> {
        for attempt in 0..self.schedulers.len().max(1) {
            let client = self.client().await?;
            match aic_ledger::remote::request(&client, request).await {
                Ok(response) => return Ok(response),
                Err(aic_ledger::remote::RemoteError::Transport(e)) if attempt + 1 < self.schedulers.len() => {
                    tracing::debug!(error = %e, "the scheduler replica dropped; trying the next");
                    self.forget().await;
                }
                Err(e) => {
                    if let aic_ledger::remote::RemoteError::Transport(_) = e {
                        self.forget().await;
                    }
                    return Err(e.to_string());
                }
            }
        }
        Err("no scheduler replica answers".into())
    }

    /// Signs `call` with `key` at the account's next nonce and submits it.
    pub async fn submit(&self, key: &Keypair, call: Call) -> Result<Vec<Event>, SubmitError> {
        let unavailable = SubmitError::Unavailable;
        let chain_id = match self.ledger(&LedgerRequest::Status).await.map_err(unavailable)? {
            LedgerResponse::Status(status) => status.chain_id,
            other => return Err(SubmitError::Unavailable(format!("unexpected answer: {other:?}"))),
        };
        let nonce = match self
            .ledger(&LedgerRequest::Account(key.address()))
            .await
            .map_err(unavailable)?
        {
            LedgerResponse::Account(view) => view.account.nonce,
            other => return Err(SubmitError::Unavailable(format!("unexpected answer: {other:?}"))),
        };
        let signed = Transaction {
            chain_id,
            from: key.address(),
            nonce,
            call,
        }
        .sign(key);
        // A write goes to one replica once: whether a lost answer applied is for the nonce to say.
        let client = self.client().await.map_err(unavailable)?;
        match aic_ledger::remote::request(&client, &LedgerRequest::Submit(Box::new(signed))).await {
            Ok(LedgerResponse::Submitted {
                result: Ok(events), ..
            }) => Ok(events),
            Ok(LedgerResponse::Submitted {
                result: Err(refusal), ..
            }) => Err(SubmitError::Refused(refusal)),
            Ok(other) => Err(SubmitError::Unavailable(format!("unexpected answer: {other:?}"))),
            Err(e) => {
                if let aic_ledger::remote::RemoteError::Transport(_) = e {
                    self.forget().await;
                }
                Err(SubmitError::Unavailable(e.to_string()))
            }
        }
    }

    /// The grid's nodes as the scheduler lists them.
    pub async fn nodes(&self) -> Result<Vec<NodeStatus>, String> {
        match self.call(&ClientRequest::ListNodes).await? {
            ClientResponse::Nodes(nodes) => Ok(nodes),
            other => Err(format!("unexpected answer: {other:?}")),
        }
    }

    /// The rater's report: each node's record and the penalties, as JSON.
    pub async fn ratings(&self) -> Result<serde_json::Value, String> {
        match self.call(&ClientRequest::Ratings).await? {
            ClientResponse::Ratings { report } => serde_json::from_str(&report).map_err(|e| e.to_string()),
            other => Err(format!("unexpected answer: {other:?}")),
        }
    }

    /// What a job would cost at most, and how that was reckoned.
    pub async fn quote(&self, request: &JobRequest) -> Result<(String, String), String> {
        match self.call(&ClientRequest::QuoteJob(request.clone())).await? {
            ClientResponse::JobQuote { amount, detail } => Ok((amount, detail)),
            other => Err(format!("unexpected answer: {other:?}")),
        }
    }

    /// Starts a job whose escrow is open.
    pub async fn start_job(&self, request: &JobRequest) -> Result<(), String> {
        self.call(&ClientRequest::SubmitJob(request.clone()))
            .await
            .map(drop)
    }

    /// A job's state and report (JSON), from the replica that runs or ran it; `None` when the
    /// replica asked does not know the job.
    pub async fn job(&self, job: aic_protocol::JobId) -> Result<Option<(String, serde_json::Value)>, String> {
        let client = self.client().await?;
        match client.call(&ClientRequest::JobStatus { job }).await {
            Ok(ClientResponse::Job { state, report }) => Ok(Some((
                state,
                serde_json::from_str(&report).map_err(|e| e.to_string())?,
            ))),
            Ok(other) => Err(format!("unexpected answer: {other:?}")),
            Err(aic_protocol::Error::Rpc(e)) if e.code == aic_protocol::error::ErrorCode::NotFound => {
                Ok(None)
            }
            Err(e) => {
                self.forget().await;
                Err(e.to_string())
            }
        }
    }

    /// A connection to a storage node, for a conversation of several requests (an upload).
    pub async fn dial_storage(&self, address: &str) -> Result<RpcClient, String> {
        tokio::time::timeout(
            DIAL_TIMEOUT,
            RpcClient::connect(&self.endpoint, address, Role::Storage),
        )
        .await
        .map_err(|_| format!("the storage node at {address} does not answer"))?
        .map_err(|e| format!("the storage node at {address} does not answer: {e}"))
    }

    /// Asks a storage node (dialled for this one request) a question of its own.
    pub async fn storage(&self, address: &str, request: &ClientRequest) -> Result<ClientResponse, String> {
        let client = self.dial_storage(address).await?;
        let answer = client.call(request).await.map_err(|e| e.to_string());
        hang_up(&client);
        answer
    }

    async fn call(&self, request: &ClientRequest) -> Result<ClientResponse, String> {
        let client = self.client().await?;
        client.call(request).await.map_err(|e| {
            if !matches!(e, aic_protocol::Error::Rpc(_)) {
                self.forget_now();
            }
            e.to_string()
        })
    }

    async fn forget(&self) {
        if let Some((_, client)) = self.client.lock().await.as_ref() {
            hang_up(client);
        }
    }

    fn forget_now(&self) {
        if let Ok(held) = self.client.try_lock() {
            if let Some((_, client)) = held.as_ref() {
                hang_up(client);
            }
        }
    }
}

/// Closes a connection, so the next request dials again.
fn hang_up(client: &RpcClient) {
    client.connection().close(0u32.into(), b"done");
}
