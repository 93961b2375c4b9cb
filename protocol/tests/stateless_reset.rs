//! A server that crashes and comes back at its address resets its previous run's connections
//! with a stateless reset its peers accept (the reset key is derived from its identity), so a
//! client learns at its next packet that its connection is dead, instead of waiting for its calls
//! to time out. A forger without the key cannot: a server restarted under another identity's key
//! leaves the old connection to die of its idle timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aic_protocol::certs::{CertificateAuthority, Identity, PeerIdentity, Validity};
use aic_protocol::fault_net::{FaultPlan, FaultySocket};
use aic_protocol::messages::{ClientRequest, ClientResponse, PeerRequest, PeerResponse};
use aic_protocol::metrics::TransportMetrics;
use aic_protocol::rpc::{self, RpcClient, RpcHandler};
use aic_protocol::transport::{self, TransportTuning};
use aic_protocol::{Role, RpcError};
use tokio_util::sync::CancellationToken;

struct Answering;

impl RpcHandler for Answering {
    async fn client(
        &self,
        _peer: &PeerIdentity,
        _request: ClientRequest,
    ) -> Result<ClientResponse, RpcError> {
        Ok(ClientResponse::Nodes(Vec::new()))
    }

    async fn peer(&self, _peer: &PeerIdentity, request: PeerRequest) -> Result<PeerResponse, RpcError> {
        aic_protocol::node_agent::answer_peer(request)
    }
}

fn tuning() -> TransportTuning {
    TransportTuning {
        // Short, so the case without a valid reset ends soon.
        idle_timeout: Duration::from_secs(2),
        keep_alive: Duration::from_millis(500),
        ..TransportTuning::default()
    }
}

fn identity(ca: &CertificateAuthority, role: Role, name: &str) -> Identity {
    Identity::from_issued(ca, &ca.issue(role, name, &[], Validity::default()).unwrap()).unwrap()
}

/// Serves on `socket` until the token is cancelled.
fn serve(endpoint: quinn::Endpoint) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let metrics = TransportMetrics::register(&prometheus::Registry::new(), "scheduler").unwrap();
    tokio::spawn(rpc::serve(
        endpoint,
        Arc::new(Answering),
        metrics,
        shutdown.clone(),
    ));
    shutdown
}

/// A server "crashes": whatever it would still send (a close frame) is lost on the way, and its
/// socket is gone. Then it starts again at the same address as `restarted_as`. Answers how the
/// client's old connection ended.
async fn crash_and_restart(
    restarted_as: impl Fn(&CertificateAuthority, &Identity) -> Identity,
) -> quinn::ConnectionError {
    aic_protocol::install_crypto_provider();
    let ca = CertificateAuthority::generate("reset-test").unwrap();
    let server = identity(&ca, Role::Scheduler, "scheduler-1");
    let plan = FaultPlan::new(7);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = socket.local_addr().unwrap();
    let endpoint = transport::endpoint_on(
        FaultySocket::wrap(socket, plan.clone()).unwrap(),
        &server,
        &tuning(),
    )
    .unwrap();
    let shutdown = serve(endpoint.clone());

    let client_identity = identity(&ca, Role::Client, "client");
    let client_endpoint = transport::endpoint(
        transport::bind_udp("127.0.0.1:0".parse().unwrap(), &tuning()).unwrap(),
        &client_identity,
        &tuning(),
    )
    .unwrap();
    let client = RpcClient::connect(&client_endpoint, &addr.to_string(), Role::Scheduler)
        .await
        .expect("connects");
    client.call(&ClientRequest::ListNodes).await.expect("served");

    // The crash: nothing more reaches the client from this run.
    plan.cut_between(addr, client_endpoint.local_addr().unwrap());
    shutdown.cancel();
    endpoint.close(0u32.into(), b"crashed");
    drop(endpoint);
    // Its socket closes once quinn's driver has stopped; the restart binds the same port.
    let mut tries = 0;
    let socket = loop {
        match transport::bind_udp(addr, &tuning()) {
            Ok(socket) => break socket,
            Err(_) if tries < 500 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("rebinding {addr}: {error}"),
        }
    };
    let restarted = transport::endpoint(socket, &restarted_as(&ca, &server), &tuning()).unwrap();
    let _serving = serve(restarted);

    // The client's next call goes out on its old connection.
    let call = client.call(&ClientRequest::ListNodes).await;
    assert!(call.is_err(), "the old connection serves nothing: {call:?}");
    client.connection().closed().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_resets_its_previous_runs_connections() {
    let ended = crash_and_restart(|_, same| same.clone()).await;
    assert!(
        matches!(ended, quinn::ConnectionError::Reset),
        "reset by the restarted server: {ended:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_under_another_key_is_ignored() {
    let ended = crash_and_restart(|ca, _| identity(ca, Role::Scheduler, "impostor")).await;
    assert!(
        matches!(ended, quinn::ConnectionError::TimedOut),
        "without the key the old connection only times out: {ended:?}"
    );
}
