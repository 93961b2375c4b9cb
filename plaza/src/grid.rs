//! The console's line to the grid: one QUIC connection with the user's certificate to the
//! scheduler, dialled again when it breaks. A read that fails says why, so a page renders what it
//! could and shows the rest as unavailable. A dial is bounded, and a scheduler that did not
//! answer is not dialled again for a few seconds: pages stay quick while it is down.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aic_ledger::api::{LedgerRequest, LedgerResponse};
use aic_protocol::certs::IdentityFiles;
use aic_protocol::messages::{ClientRequest, ClientResponse, NodeStatus};
use aic_protocol::rpc::RpcClient;
use aic_protocol::transport::{self, TransportTuning};
use aic_protocol::Role;
use tokio::sync::Mutex;

/// How long a dial may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a scheduler that did not answer is taken as down.
const DOWN_FOR: Duration = Duration::from_secs(10);

pub struct Grid {
    endpoint: quinn::Endpoint,
    scheduler: String,
    client: Mutex<Option<RpcClient>>,
    /// The last failed dial: when, and why.
    down: std::sync::Mutex<Option<(Instant, String)>>,
}

impl Grid {
    pub fn new(identity: &IdentityFiles, scheduler: String) -> Result<Self, aic_protocol::Error> {
        let identity = identity.load()?;
        let any: SocketAddr = if scheduler.starts_with('[') {
            "[::]:0".parse().expect("an address")
        } else {
            "0.0.0.0:0".parse().expect("an address")
        };
        let tuning = TransportTuning::default();
        let endpoint = transport::endpoint(transport::bind_udp(any, &tuning)?, &identity, &tuning)?;
        Ok(Grid {
            endpoint,
            scheduler,
            client: Mutex::new(None),
            down: std::sync::Mutex::new(None),
        })
    }

    async fn client(&self) -> Result<RpcClient, String> {
        let mut held = self.client.lock().await;
        if let Some(client) = held.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        if let Some((at, why)) = self.down.lock().expect("down").as_ref() {
            if at.elapsed() < DOWN_FOR {
                return Err(why.clone());
            }
        }
        let dialled = tokio::time::timeout(
            DIAL_TIMEOUT,
            RpcClient::connect(&self.endpoint, &self.scheduler, Role::Scheduler),
        )
        .await;
        let failure = match dialled {
            Ok(Ok(client)) => {
                *self.down.lock().expect("down") = None;
                *held = Some(client.clone());
                return Ok(client);
            }
            Ok(Err(e)) => format!("the scheduler at {} does not answer: {e}", self.scheduler),
            Err(_) => format!(
                "the scheduler at {} does not answer (no handshake within {} s)",
                self.scheduler,
                DIAL_TIMEOUT.as_secs()
            ),
        };
        *self.down.lock().expect("down") = Some((Instant::now(), failure.clone()));
        Err(failure)
    }

    /// One ledger read.
    pub async fn ledger(&self, request: &LedgerRequest) -> Result<LedgerResponse, String> {
        let client = self.client().await?;
        aic_ledger::remote::request(&client, request).await.map_err(|e| {
            if let aic_ledger::remote::RemoteError::Transport(_) = e {
                self.forget();
            }
            e.to_string()
        })
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

    async fn call(&self, request: &ClientRequest) -> Result<ClientResponse, String> {
        let client = self.client().await?;
        client.call(request).await.map_err(|e| {
            self.forget();
            e.to_string()
        })
    }

    fn forget(&self) {
        if let Ok(mut held) = self.client.try_lock() {
            *held = None;
        }
    }
}
