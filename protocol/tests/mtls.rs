//! Security at the transport seam: every refusal the foundation promises, checked by the error
//! the caller sees and by the metric the server counts, and the connection surviving bad frames.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aic_protocol::certs::{CertificateAuthority, Identity, PeerIdentity, Validity};
use aic_protocol::frame::{Frame, FrameKind, HEADER_LEN, PROTOCOL_VERSION};
use aic_protocol::messages::{ClientRequest, ClientResponse, PeerRequest, PeerResponse};
use aic_protocol::metrics::TransportMetrics;
use aic_protocol::rpc::{self, RpcClient, RpcHandler};
use aic_protocol::transport::{self, TransportTuning};
use aic_protocol::{Error, ErrorCode, Role, RpcError};
use prometheus::core::Collector;
use tokio_util::sync::CancellationToken;

/// Answers pings and node listings, counting how often any handler ran.
struct CountingHandler {
    calls: AtomicUsize,
}

impl RpcHandler for CountingHandler {
    async fn client(
        &self,
        _peer: &PeerIdentity,
        _request: ClientRequest,
    ) -> Result<ClientResponse, RpcError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(ClientResponse::Nodes(Vec::new()))
    }

    async fn peer(&self, _peer: &PeerIdentity, request: PeerRequest) -> Result<PeerResponse, RpcError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        aic_protocol::node_agent::answer_peer(request)
    }
}

struct Server {
    addr: String,
    metrics: TransportMetrics,
    handler: Arc<CountingHandler>,
    ca: CertificateAuthority,
    shutdown: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn start_server() -> Server {
    aic_protocol::install_crypto_provider();
    let ca = CertificateAuthority::generate("test").unwrap();
    let identity = Identity::from_issued(
        &ca,
        &ca.issue(Role::Scheduler, "scheduler", &[], Validity::default())
            .unwrap(),
    )
    .unwrap();
    let tuning = TransportTuning::default();
    let socket = transport::bind_udp(loopback(), &tuning).unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    let endpoint = transport::endpoint(socket, &identity, &tuning).unwrap();
    let metrics = TransportMetrics::register(&prometheus::Registry::new(), "scheduler").unwrap();
    let handler = Arc::new(CountingHandler {
        calls: AtomicUsize::new(0),
    });
    let shutdown = CancellationToken::new();
    tokio::spawn(rpc::serve(
        endpoint,
        handler.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    Server {
        addr,
        metrics,
        handler,
        ca,
        shutdown,
    }
}

fn client_endpoint(identity: &Identity) -> quinn::Endpoint {
    let tuning = TransportTuning::default();
    transport::endpoint(
        transport::bind_udp(loopback(), &tuning).unwrap(),
        identity,
        &tuning,
    )
    .unwrap()
}

async fn client_of(
    server: &Server,
    ca: &CertificateAuthority,
    role: Role,
    validity: Validity,
) -> Result<RpcClient, Error> {
    let identity = Identity::from_issued(ca, &ca.issue(role, "caller", &[], validity).unwrap()).unwrap();
    RpcClient::connect(&client_endpoint(&identity), &server.addr, Role::Scheduler).await
}

/// The value of a counter vector's series with the given label value, once it is non-zero.
async fn wait_for_count(counter: &prometheus::IntCounterVec, label: &str) -> u64 {
    for _ in 0..200 {
        let value = counter.with_label_values(&[label]).get();
        if value > 0 {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let seen: Vec<String> = counter
        .collect()
        .iter()
        .flat_map(|family| family.get_metric().iter().map(|m| format!("{:?}", m.get_label())))
        .collect();
    panic!("no {label:?} count within 5 s; series seen: {seen:?}");
}

/// With TLS 1.3 a client's handshake can complete before the server rejects its certificate,
/// so the refusal shows on the first exchange. Either way the request must fail.
async fn request_fails(result: Result<RpcClient, Error>) {
    match result {
        Err(_) => {}
        Ok(client) => {
            let outcome = client.call(&ClientRequest::ListNodes).await;
            assert!(outcome.is_err(), "a rejected client got an answer: {outcome:?}");
        }
    }
}

#[tokio::test]
async fn a_client_with_a_valid_certificate_is_served() {
    let server = start_server();
    let client = client_of(&server, &server.ca, Role::Client, Validity::default())
        .await
        .unwrap();
    assert_eq!(client.peer().role, Role::Scheduler);
    let answer = client.call(&ClientRequest::ListNodes).await.unwrap();
    assert_eq!(answer, ClientResponse::Nodes(Vec::new()));
    assert_eq!(
        server.metrics.rpcs.with_label_values(&["list_nodes", "ok"]).get(),
        1
    );
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_in_the_handshake() {
    let server = start_server();
    // A client that presents no certificate at all (a plain TLS client of our CA).
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(server.ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let mut tls =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    tls.alpn_protocols = vec![aic_protocol::tls::ALPN.to_vec()];
    let mut endpoint = quinn::Endpoint::client(loopback()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    )));
    let outcome = async {
        let connection = endpoint
            .connect(server.addr.parse().unwrap(), "127.0.0.1")
            .unwrap()
            .await?;
        let (mut send, mut recv) = connection.open_bi().await?;
        let frame = Frame::encode(FrameKind::ClientRequest, &ClientRequest::ListNodes).unwrap();
        send.write_all(&frame.to_bytes().unwrap()).await?;
        send.finish()?;
        Ok::<_, Box<dyn std::error::Error>>(aic_protocol::frame::read_frame(&mut recv, 1 << 20).await?)
    }
    .await;
    assert!(
        !matches!(outcome, Ok(Some(_))),
        "an anonymous client got an answer"
    );
    assert_eq!(
        wait_for_count(&server.metrics.handshakes_rejected, "no_certificate").await,
        1
    );
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 0);
}

use rustls::pki_types::pem::PemObject;

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let server = start_server();
    let stranger_ca = CertificateAuthority::generate("elsewhere").unwrap();
    // The stranger trusts our CA for the server, but presents a certificate of its own CA.
    let stranger = stranger_ca
        .issue(Role::Client, "mallory", &[], Validity::default())
        .unwrap();
    let identity = Identity::from_pem(server.ca.cert_pem(), &stranger.cert_pem, &stranger.key_pem).unwrap();
    request_fails(RpcClient::connect(&client_endpoint(&identity), &server.addr, Role::Scheduler).await).await;
    assert_eq!(
        wait_for_count(&server.metrics.handshakes_rejected, "unknown_ca").await,
        1
    );
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let server = start_server();
    let now = time::OffsetDateTime::now_utc();
    let expired = Validity::Between(now - time::Duration::days(10), now - time::Duration::days(1));
    request_fails(client_of(&server, &server.ca, Role::Client, expired).await).await;
    assert_eq!(
        wait_for_count(&server.metrics.handshakes_rejected, "expired").await,
        1
    );
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_role_that_may_not_call_an_rpc_is_refused_before_the_handler() {
    let server = start_server();
    let compute = client_of(&server, &server.ca, Role::Compute, Validity::default())
        .await
        .unwrap();
    let err = compute.call(&ClientRequest::ListNodes).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Rpc(RpcError {
                code: ErrorCode::PermissionDenied,
                ..
            })
        ),
        "{err}"
    );
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 0);
    assert_eq!(
        server
            .metrics
            .rpcs
            .with_label_values(&["list_nodes", "permission_denied"])
            .get(),
        1
    );
    // The same caller may still make the calls its role allows.
    assert_eq!(
        compute.call(&PeerRequest::Ping { nonce: 9 }).await.unwrap(),
        PeerResponse::Pong { nonce: 9 }
    );
    // A client may not pose as a node.
    let client = client_of(&server, &server.ca, Role::Client, Validity::default())
        .await
        .unwrap();
    let err = client.call(&PeerRequest::Ping { nonce: 1 }).await.unwrap_err();
    assert!(matches!(
        err,
        Error::Rpc(RpcError {
            code: ErrorCode::PermissionDenied,
            ..
        })
    ));
}

fn header(len: u32, version: u16, kind: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.push(kind);
    out
}

async fn expect_error_answer(client: &RpcClient, bytes: &[u8], code: ErrorCode) {
    let answer = client.exchange_raw(bytes).await.unwrap();
    assert_eq!(answer.kind, FrameKind::Error);
    assert_eq!(answer.decode::<RpcError>().unwrap().code, code);
}

#[tokio::test]
async fn bad_frames_get_error_answers_and_the_connection_keeps_serving() {
    let server = start_server();
    let client = client_of(&server, &server.ca, Role::Compute, Validity::default())
        .await
        .unwrap();

    // A length field of 2^32-1, followed by a little data: refused from the header alone.
    let mut huge = header(u32::MAX, PROTOCOL_VERSION, FrameKind::PeerRequest as u8);
    huge.extend_from_slice(&[0u8; 1024]);
    expect_error_answer(&client, &huge, ErrorCode::FrameTooLarge).await;
    expect_error_answer(
        &client,
        &header(0, PROTOCOL_VERSION + 7, FrameKind::PeerRequest as u8),
        ErrorCode::UnsupportedVersion,
    )
    .await;
    expect_error_answer(
        &client,
        &header(0, PROTOCOL_VERSION, 0x55),
        ErrorCode::MalformedFrame,
    )
    .await;
    let mut garbage = header(4, PROTOCOL_VERSION, FrameKind::PeerRequest as u8);
    garbage.extend_from_slice(&[0xff; 4]);
    expect_error_answer(&client, &garbage, ErrorCode::MalformedFrame).await;
    let mut truncated = header(100, PROTOCOL_VERSION, FrameKind::PeerRequest as u8);
    truncated.extend_from_slice(&[1, 2, 3]);
    expect_error_answer(&client, &truncated, ErrorCode::MalformedFrame).await;
    let response_as_request = Frame::encode(FrameKind::Response, &PeerResponse::Pong { nonce: 1 })
        .unwrap()
        .to_bytes()
        .unwrap();
    expect_error_answer(&client, &response_as_request, ErrorCode::MalformedFrame).await;

    for reason in [
        "too_large",
        "unsupported_version",
        "unknown_kind",
        "malformed",
        "truncated",
        "not_a_request",
    ] {
        assert_eq!(
            server.metrics.frames_rejected.with_label_values(&[reason]).get(),
            1,
            "reason {reason}"
        );
    }
    assert_eq!(
        server.handler.calls.load(Ordering::SeqCst),
        0,
        "no bad frame reached a handler"
    );
    // Same connection, still serving.
    assert_eq!(
        client.call(&PeerRequest::Ping { nonce: 3 }).await.unwrap(),
        PeerResponse::Pong { nonce: 3 }
    );
    assert_eq!(server.metrics.connections_accepted.get(), 1);
}

#[tokio::test]
async fn a_client_refuses_a_server_of_the_wrong_role() {
    let server = start_server();
    let identity = Identity::from_issued(
        &server.ca,
        &server
            .ca
            .issue(Role::Client, "c", &[], Validity::default())
            .unwrap(),
    )
    .unwrap();
    let err = RpcClient::connect(&client_endpoint(&identity), &server.addr, Role::Storage)
        .await
        .err()
        .expect("a scheduler is not a storage node");
    assert!(matches!(
        err,
        Error::WrongPeerRole {
            got: Role::Scheduler,
            expected: Role::Storage
        }
    ));
}
