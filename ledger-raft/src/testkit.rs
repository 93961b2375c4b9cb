//! Ledger clusters on loopback QUIC for tests and benchmarks: each replica gets a scheduler
//! certificate from one CA, its own endpoint and data directory, and a minimal server that
//! routes replica traffic and client ledger requests to it (the scheduler does the same).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aic_protocol::certs::{CertificateAuthority, Identity, PeerIdentity, Validity};
use aic_protocol::messages::{ClientRequest, ClientResponse, ReplicaRequest, ReplicaResponse};
use aic_protocol::metrics::TransportMetrics;
use aic_protocol::rpc::{self, RpcClient, RpcHandler};
use aic_protocol::transport::{self, TransportTuning};
use aic_protocol::{Role, RpcError};
use tokio_util::sync::CancellationToken;

use crate::api::{decode, encode, LedgerApiError, LedgerRequest, LedgerResponse, LedgerResult};
use crate::genesis::{Genesis, Holders};
use crate::keys::Keypair;
use crate::metrics::LedgerMetrics;
use crate::raft::replica::{LedgerReplica, ReplicaSettings};
use crate::raft::types::ReplicaId;

/// Routes a replica's RPCs, as the scheduler's API does.
pub struct ReplicaServer(pub Arc<LedgerReplica>);

impl RpcHandler for ReplicaServer {
    async fn client(&self, peer: &PeerIdentity, request: ClientRequest) -> Result<ClientResponse, RpcError> {
        match request {
            ClientRequest::Ledger(payload) => Ok(ClientResponse::Ledger(
                self.0.handle_client(&payload, peer.role).await,
            )),
            _ => Ok(ClientResponse::Nodes(Vec::new())),
        }
    }

    async fn replica(
        &self,
        _peer: &PeerIdentity,
        request: ReplicaRequest,
    ) -> Result<ReplicaResponse, RpcError> {
        self.0.handle_replica(request).await
    }
}

/// The genesis holders' keys, so tests can spend the genesis shares.
pub struct GenesisKeys {
    pub fundraiser: Keypair,
    pub operations: Keypair,
    pub system: Keypair,
}

pub fn test_genesis(chain_id: &str) -> (Genesis, GenesisKeys) {
    let keys = GenesisKeys {
        fundraiser: Keypair::generate(),
        operations: Keypair::generate(),
        system: Keypair::generate(),
    };
    let holders = Holders {
        fundraiser: keys.fundraiser.address(),
        advisors: Keypair::generate().address(),
        company: Keypair::generate().address(),
        team: Keypair::generate().address(),
        operations: keys.operations.address(),
    };
    (Genesis::local(chain_id, 0, holders, keys.system.address()), keys)
}

pub struct RunningReplica {
    pub replica: Arc<LedgerReplica>,
    pub addr: String,
    shutdown: CancellationToken,
    endpoint: quinn::Endpoint,
}

impl RunningReplica {
    /// Stops the replica as a crash would look to its peers: server and Raft gone at once.
    pub async fn kill(self) {
        self.shutdown.cancel();
        // Every connection dies with the process, clients' included, and with them the socket.
        self.endpoint.close(0u32.into(), b"killed");
        self.replica.shutdown().await;
    }
}

/// A loopback cluster of up to N replicas sharing one genesis and CA.
pub struct TestCluster {
    pub ca: CertificateAuthority,
    pub genesis: Genesis,
    pub keys: GenesisKeys,
    pub base: PathBuf,
    /// Each replica's identity, kept so a stopped replica can be restarted as itself.
    identities: Vec<Identity>,
    pub replicas: Vec<Option<RunningReplica>>,
    /// Where each replica listens once started: a restart binds the same address, which the
    /// membership names.
    addrs: Vec<Option<std::net::SocketAddr>>,
    /// A killed replica's address, bound again as soon as it is free and held until the replica
    /// restarts on it, so no other socket of this machine (a client's ephemeral port) takes it
    /// in between.
    reserved: Vec<Option<std::net::UdpSocket>>,
    pub settings: Box<dyn Fn(PathBuf, Genesis) -> ReplicaSettings + Send + Sync>,
    /// When set, the replicas talk to each other through this fault-injecting network
    /// (clients connect around it).
    pub faults: Option<Arc<aic_protocol::fault_net::FaultPlan>>,
}

impl TestCluster {
    pub fn new(base: &Path, size: usize) -> Self {
        aic_protocol::install_crypto_provider();
        let ca = CertificateAuthority::generate("ledger-test").expect("a CA");
        let (genesis, keys) = test_genesis("aic-test");
        let identities = (0..size)
            .map(|i| {
                let issued = ca
                    .issue(
                        Role::Scheduler,
                        &format!("scheduler-{}", i + 1),
                        &[],
                        Validity::default(),
                    )
                    .expect("a certificate");
                Identity::from_issued(&ca, &issued).expect("an identity")
            })
            .collect();
        TestCluster {
            ca,
            genesis,
            keys,
            base: base.to_path_buf(),
            identities,
            replicas: (0..size).map(|_| None).collect(),
            addrs: vec![None; size],
            reserved: (0..size).map(|_| None).collect(),
            faults: None,
            settings: Box::new(|dir, genesis| {
                let mut settings = ReplicaSettings::new(dir, genesis);
                settings.audit_every_entry = true;
                settings
            }),
        }
    }

    /// Starts (or restarts, on its old data and at its old address) replica `i`.
    pub async fn start(&mut self, i: usize) -> Arc<LedgerReplica> {
        self.try_start(i).await.expect("a replica")
    }

    /// [`Self::start`], answering the replica's refusal to start rather than panicking.
    pub async fn try_start(
        &mut self,
        i: usize,
    ) -> Result<Arc<LedgerReplica>, crate::raft::replica::ReplicaError> {
        // A short idle timeout: a killed replica's last connections, and with them its socket,
        // are gone within seconds, so a restart at its address need not wait half a minute.
        let tuning = TransportTuning {
            idle_timeout: std::time::Duration::from_secs(1),
            keep_alive: std::time::Duration::from_millis(250),
            ..TransportTuning::default()
        };
        let at = self.addrs[i].unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        let socket = match self.reserved[i].take() {
            Some(socket) => socket,
            None => bind_when_free(at, &tuning)
                .await
                .unwrap_or_else(|error| panic!("a socket: {error}")),
        };
        self.addrs[i] = Some(socket.local_addr().unwrap());
        let addr = socket.local_addr().unwrap().to_string();
        let endpoint = match &self.faults {
            Some(plan) => transport::endpoint_on(
                aic_protocol::fault_net::FaultySocket::wrap(socket, plan.clone()).expect("a socket"),
                &self.identities[i],
                &tuning,
            ),
            None => transport::endpoint(socket, &self.identities[i], &tuning),
        }
        .expect("an endpoint");
        let settings = (self.settings)(self.base.join(format!("replica-{}", i + 1)), self.genesis.clone());
        let replica = LedgerReplica::start(
            settings,
            self.identities[i].me.node_id,
            addr.clone(),
            endpoint.clone(),
            LedgerMetrics::unregistered(),
        )
        .await?;
        let shutdown = CancellationToken::new();
        let metrics = TransportMetrics::register(&prometheus::Registry::new(), "scheduler").unwrap();
        tokio::spawn(rpc::serve(
            endpoint.clone(),
            Arc::new(ReplicaServer(replica.clone())),
            metrics,
            shutdown.clone(),
        ));
        self.replicas[i] = Some(RunningReplica {
            replica: replica.clone(),
            addr,
            shutdown,
            endpoint,
        });
        Ok(replica)
    }

    /// Where replica `i` listens (once it has started).
    pub fn addr(&self, i: usize) -> std::net::SocketAddr {
        self.addrs[i].expect("started once")
    }

    pub fn replica(&self, i: usize) -> &Arc<LedgerReplica> {
        &self.replicas[i].as_ref().expect("replica running").replica
    }

    /// Starts every replica, bootstraps the first and makes the others voters.
    pub async fn start_all(&mut self) {
        for i in 0..self.replicas.len() {
            self.start(i).await;
        }
        let first = self.replica(0).clone();
        assert_eq!(
            first.bootstrap().await.expect("bootstrap"),
            crate::raft::replica::Bootstrap::Started
        );
        wait_for(|| first.is_leader()).await;
        let mut voters = vec![first.id];
        for i in 1..self.replicas.len() {
            let replica = self.replica(i).clone();
            first
                .execute(LedgerRequest::AddLearner {
                    id: replica.id,
                    addr: replica.me.clone(),
                })
                .await
                .expect("add learner");
            voters.push(replica.id);
        }
        first
            .execute(LedgerRequest::ChangeMembership { voters })
            .await
            .expect("change membership");
    }

    pub async fn kill(&mut self, i: usize) {
        if let Some(running) = self.replicas[i].take() {
            running.kill().await;
        }
        // Hold the address for the restart.
        if let Some(at) = self.addrs[i] {
            self.reserved[i] = bind_when_free(at, &TransportTuning::default()).await.ok();
        }
    }

    pub fn leader_index(&self) -> Option<usize> {
        (0..self.replicas.len()).find(|&i| self.replicas[i].as_ref().is_some_and(|r| r.replica.is_leader()))
    }

    /// A client connection to replica `i`, with a client certificate of the cluster CA.
    pub async fn client(&self, i: usize) -> LedgerClient {
        self.client_as(i, Role::Client).await
    }

    /// A connection to replica `i` with a fresh certificate of `role` from the cluster CA.
    pub async fn client_as(&self, i: usize, role: Role) -> LedgerClient {
        let endpoint = self.client_endpoint(role);
        let addr = &self.replicas[i].as_ref().expect("running").addr;
        LedgerClient(
            RpcClient::connect(&endpoint, addr, Role::Scheduler)
                .await
                .expect("connect"),
        )
    }

    /// A client endpoint on loopback with a fresh certificate of `role` from the cluster CA.
    pub fn client_endpoint(&self, role: Role) -> quinn::Endpoint {
        let issued = self
            .ca
            .issue(role, role.as_str(), &[], Validity::default())
            .unwrap();
        let identity = Identity::from_issued(&self.ca, &issued).unwrap();
        let tuning = TransportTuning::default();
        transport::endpoint(
            transport::bind_udp("127.0.0.1:0".parse().unwrap(), &tuning).unwrap(),
            &identity,
            &tuning,
        )
        .unwrap()
    }

    /// Waits until the replicas at `indices` have applied as much as the most advanced of them
    /// (nothing may be written meanwhile), then checks they hold the same state and answers
    /// its hash.
    pub async fn same_state_everywhere(&self, indices: &[usize]) -> [u8; 32] {
        let target = indices
            .iter()
            .map(|&i| self.replica(i).status().applied_index)
            .max()
            .expect("some replicas");
        for &i in indices {
            let replica = self.replica(i).clone();
            wait_for(|| replica.status().applied_index >= target).await;
        }
        let states: Vec<([u8; 32], u64)> = indices
            .iter()
            .map(|&i| {
                let s = self.replica(i).status();
                (s.state_hash, s.applied_index)
            })
            .collect();
        assert!(
            states.windows(2).all(|w| w[0] == w[1]),
            "replicas differ: {states:?}"
        );
        states[0].0
    }

    /// A transfer of `amount` from the genesis fundraiser to `to`, signed at `nonce`.
    pub fn fundraiser_transfer(
        &self,
        nonce: u64,
        to: crate::keys::Address,
        amount: crate::amount::Amount,
    ) -> crate::tx::SignedTransaction {
        crate::tx::Transaction {
            chain_id: self.genesis.chain_id.clone(),
            from: self.keys.fundraiser.address(),
            nonce,
            call: crate::tx::Call::Transfer { to, amount },
        }
        .sign(&self.keys.fundraiser)
    }

    /// Replica ids by index, for membership checks.
    /// The fundraiser pays `aic` AIC to a new account through `client`; the transfer must apply.
    pub async fn fundraiser_pays(&self, client: &LedgerClient, aic: u128) {
        let fundraiser = self.keys.fundraiser.address();
        let nonce = client.nonce(fundraiser).await.expect("a nonce");
        let amount = crate::amount::Amount::aic(aic).expect("an amount");
        let signed = self.fundraiser_transfer(nonce, crate::keys::Keypair::generate().address(), amount);
        match client
            .request(&LedgerRequest::Submit(Box::new(signed)))
            .await
            .expect("an answer")
        {
            crate::api::LedgerResponse::Submitted { result, .. } => {
                result.expect("applied");
            }
            other => panic!("{other:?}"),
        }
    }

    pub fn ids(&self) -> BTreeMap<usize, ReplicaId> {
        (0..self.replicas.len())
            .filter_map(|i| self.replicas[i].as_ref().map(|r| (i, r.replica.id)))
            .collect()
    }
}

/// A typed ledger client over an RPC connection.
#[derive(Clone)]
pub struct LedgerClient(pub RpcClient);

impl LedgerClient {
    pub async fn request(&self, request: &LedgerRequest) -> LedgerResult {
        match self.0.call(&ClientRequest::Ledger(encode(request))).await {
            Ok(ClientResponse::Ledger(bytes)) => decode::<LedgerResult>(&bytes)?,
            Ok(other) => Err(LedgerApiError::BadRequest(format!("unexpected answer {other:?}"))),
            Err(e) => Err(LedgerApiError::LeaderUnreachable(e.to_string())),
        }
    }

    pub async fn nonce(&self, address: crate::keys::Address) -> Result<u64, LedgerApiError> {
        match self.request(&LedgerRequest::Account(address)).await? {
            LedgerResponse::Account(view) => Ok(view.account.nonce),
            other => Err(LedgerApiError::BadRequest(format!("unexpected answer {other:?}"))),
        }
    }
}

/// Waits (bounded: 20 s) until `condition` holds.
/// Binds `at` once a killed replica's socket there has closed, which happens when the last of
/// its tasks has stopped (bounded: 10 s).
async fn bind_when_free(
    at: std::net::SocketAddr,
    tuning: &TransportTuning,
) -> Result<std::net::UdpSocket, aic_protocol::Error> {
    let mut tries = 0;
    loop {
        match transport::bind_udp(at, tuning) {
            Err(aic_protocol::Error::Bind { cause, .. })
                if cause.kind() == std::io::ErrorKind::AddrInUse && tries < 500 =>
            {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            bound => return bound,
        }
    }
}

pub async fn wait_for(condition: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(20));
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met within 20 s"
        );
        poll.tick().await;
    }
}
