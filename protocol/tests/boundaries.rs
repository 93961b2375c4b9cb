//! The transport's boundaries as an attacker meets them: raw request frames over a real QUIC
//! connection, one certificate of each role, against the authorization table; and request
//! frames that are announced and never finished, which must be cut off at their deadline with
//! their bytes freed (issue 12: 32 stalled 4 MiB frames once pinned 122 MiB for good).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use aic_protocol::authz;
use aic_protocol::certs::{CertificateAuthority, Identity, PeerIdentity, Validity};
use aic_protocol::frame::{
    read_frame, Frame, FrameHeader, FrameKind, DEFAULT_MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use aic_protocol::messages::*;
use aic_protocol::metrics::TransportMetrics;
use aic_protocol::rpc::{self, Reply, RpcClient, RpcHandler, ServeLimits};
use aic_protocol::tensor::TensorRef;
use aic_protocol::ticket::{ShardTicket, SignedTicket};
use aic_protocol::transport::{self, TransportTuning};
use aic_protocol::{AssetId, ErrorCode, JobId, NodeId, Role, RpcError, ShardId, TaskId};
use tokio_util::sync::CancellationToken;

/// Every handler answers the same recognisable error: a request that gets it was let through.
struct Reached;

fn reached<T>() -> Result<T, RpcError> {
    Err(RpcError::new(ErrorCode::Internal, "handler reached"))
}

impl RpcHandler for Reached {
    async fn node(&self, _: &PeerIdentity, _: NodeRequest) -> Result<NodeResponse, RpcError> {
        reached()
    }
    async fn client_reply(
        &self,
        _: &PeerIdentity,
        _: ClientRequest,
    ) -> Result<Reply<ClientResponse>, RpcError> {
        reached()
    }
    async fn peer_reply(&self, _: &PeerIdentity, _: PeerRequest) -> Result<Reply<PeerResponse>, RpcError> {
        reached()
    }
    async fn replica(&self, _: &PeerIdentity, _: ReplicaRequest) -> Result<ReplicaResponse, RpcError> {
        reached()
    }
}

fn endpoint(ca: &CertificateAuthority, role: Role) -> quinn::Endpoint {
    let identity = Identity::from_issued(
        ca,
        &ca.issue(role, role.as_str(), &[], Validity::default()).unwrap(),
    )
    .unwrap();
    let tuning = TransportTuning::default();
    transport::endpoint(
        transport::bind_udp("127.0.0.1:0".parse().unwrap(), &tuning).unwrap(),
        &identity,
        &tuning,
    )
    .unwrap()
}

/// A server (scheduler certificate) with the given limits; answers its address and metrics.
fn serve(
    ca: &CertificateAuthority,
    limits: ServeLimits,
    shutdown: &CancellationToken,
) -> (String, TransportMetrics) {
    aic_protocol::install_crypto_provider();
    let server = endpoint(ca, Role::Scheduler);
    let addr = server.local_addr().unwrap().to_string();
    let metrics = TransportMetrics::register(&prometheus::Registry::new(), "scheduler").unwrap();
    tokio::spawn(rpc::serve_with_limits(
        server,
        Arc::new(Reached),
        metrics.clone(),
        limits,
        shutdown.clone(),
    ));
    (addr, metrics)
}

/// One request of every kind of every conversation, as raw frames.
fn every_request() -> Vec<(FrameKind, &'static str, Frame)> {
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let node = NodeId::from_public_key(b"node");
    let ticket: SignedTicket = ShardTicket {
        job: JobId::random(),
        node,
        dataset: "d".into(),
        expires_ms: 1,
    }
    .sign(&key);
    let job = JobRequest {
        job: JobId::random(),
        dataset_asset: AssetId::random(),
        model_asset: AssetId::random(),
        epochs: 1,
        learning_rate_milli: 100,
        local_steps: 1,
        inner_optimizer: Default::default(),
        outer_optimizer: Default::default(),
        outer_learning_rate_milli: 1000,
        weight_decay_micro: 0,
        schedule: Default::default(),
        batch_size: 0,
        seed: None,
        evaluate_every_rounds: 0,
        verification: Default::default(),
    };
    let registration = Registration {
        role: Role::Compute,
        name: "n".into(),
        version: "v".into(),
        quic_addr: "127.0.0.1:1".into(),
        metrics_addr: "127.0.0.1:2".into(),
        capacity: Capacity::default(),
        payout_address: String::new(),
    };
    let mint = DatasetMint {
        owner: [1; 32],
        name: "d".into(),
        content_hash: [2; 32],
        published_manifest: "{}".into(),
        fee: "0".into(),
        attestations: Vec::new(),
    };
    let task = TaskSpec {
        job: JobId::random(),
        task: TaskId::random(),
        round: 0,
        kind: TaskKind::Gradient,
        model: TaskModel::Shape(ModelShape::SoftmaxRegression {
            features: 1,
            classes: 2,
        }),
        weights: WeightsSource {
            tensor: TensorRef::of(&[0.0; 4]),
            storage: Vec::new(),
            ticket: ticket.clone(),
        },
        training: LocalTraining {
            steps: 1,
            optimizer: Default::default(),
            learning_rate: 0.1,
            weight_decay: 0.0,
            batch_size: 0,
        },
        label: "l".into(),
        shards: Vec::new(),
        seed: 0,
    };
    let shard = ShardId::of_content(b"s");
    let nodes: Vec<NodeRequest> = vec![
        NodeRequest::Register(registration),
        NodeRequest::Heartbeat(Heartbeat {
            sequence: 1,
            rtts: Vec::new(),
            holdings: Vec::new(),
        }),
        NodeRequest::AttestImport(Box::new(mint)),
    ];
    let clients: Vec<ClientRequest> = vec![
        ClientRequest::ListNodes,
        ClientRequest::Ledger(vec![1, 2, 3]),
        ClientRequest::ListDatasets,
        ClientRequest::Preview {
            dataset: "d".into(),
            rows: 1,
        },
        ClientRequest::Stat { dataset: "d".into() },
        ClientRequest::BeginImport,
        ClientRequest::UploadShard {
            upload: 1,
            shard,
            offset: 0,
            total: 1,
            bytes: vec![0],
        },
        ClientRequest::CommitImport {
            upload: 1,
            manifest: "{}".into(),
            owner: [0; 32],
        },
        ClientRequest::DropDataset { dataset: "d".into() },
        ClientRequest::Export {
            dataset: "d".into(),
            shard,
            proof: OwnerProof {
                asset: AssetId::random(),
                owner: [0; 32],
                expires_ms: 0,
                signature: Vec::new(),
            },
        },
        ClientRequest::QuoteJob(job.clone()),
        ClientRequest::SubmitJob(job),
        ClientRequest::JobStatus { job: JobId::random() },
        ClientRequest::CancelJob { job: JobId::random() },
        ClientRequest::Ratings,
        ClientRequest::AbortImport { upload: 1 },
        ClientRequest::InferenceVerdict {
            node,
            model: AssetId::random(),
            matched: true,
        },
        ClientRequest::ExportTensor {
            tensor: TensorRef::of(&[1.0]),
            proof: OwnerProof {
                asset: AssetId::random(),
                owner: [0; 32],
                expires_ms: 0,
                signature: Vec::new(),
            },
        },
    ];
    let peers: Vec<PeerRequest> = vec![
        PeerRequest::Ping { nonce: 1 },
        PeerRequest::GetShard {
            dataset: "d".into(),
            shard,
            ticket,
        },
        PeerRequest::Replicate {
            manifest: "{}".into(),
            key: vec![0; 32],
            importer: node,
            source: "127.0.0.1:1".into(),
            owner: [0; 32],
        },
        PeerRequest::FetchSealed {
            dataset: "d".into(),
            shard,
        },
        PeerRequest::DropReplica { dataset: "d".into() },
        PeerRequest::RunTask(Box::new(task)),
        PeerRequest::SignTicket {
            session: JobId::random(),
        },
        PeerRequest::SignBlock { header: vec![1] },
        PeerRequest::GetTensor {
            tensor: TensorRef::of(&[1.0]),
            ticket: None,
        },
        PeerRequest::PutTensor {
            tensor: TensorRef::of(&[1.0]),
            index: 0,
            bytes: vec![0; 4],
        },
        PeerRequest::DropTensor {
            tensor: TensorRef::of(&[1.0]),
        },
        PeerRequest::Infer(Box::new(aic_protocol::messages::InferRequest {
            model: aic_protocol::messages::ServedModel {
                asset: AssetId::random(),
                tensor: TensorRef::of(&[1.0]),
                model: aic_protocol::messages::TaskModel::Graph("{}".into()),
                holders: Vec::new(),
            },
            rows: 1,
            width: 1,
            features: vec![0.0],
        })),
        PeerRequest::GetPublishedTensor {
            asset: AssetId::random(),
            tensor: TensorRef::of(&[1.0]),
        },
        PeerRequest::ReReplicate {
            dataset: "d".into(),
            target: node,
            target_addr: "127.0.0.1:1".into(),
            lost: vec![node],
        },
        PeerRequest::TakeReplica {
            manifest: "{}".into(),
            key: [0; 32],
            holders: aic_protocol::holders::HolderSet::signed("d", 1, Vec::new(), &[0; 32]),
        },
        PeerRequest::UpdateHolders {
            holders: aic_protocol::holders::HolderSet::signed("d", 1, Vec::new(), &[0; 32]),
        },
        PeerRequest::EscrowKey {
            dataset: "d".into(),
            sealed: aic_protocol::messages::SealedKey {
                ephemeral: [0; 32],
                nonce: [0; 12],
                ciphertext: vec![0; 48],
            },
            holders: vec![node],
        },
        PeerRequest::RecoverKey { dataset: "d".into() },
        PeerRequest::ListTensors,
    ];
    let replicas: Vec<ReplicaRequest> = vec![
        ReplicaRequest::AppendEntries(vec![1]),
        ReplicaRequest::Vote(vec![1]),
        ReplicaRequest::InstallSnapshot(vec![1]),
        ReplicaRequest::Forward(vec![1]),
    ];
    let mut all = Vec::new();
    fn push<R: Request>(all: &mut Vec<(FrameKind, &'static str, Frame)>, requests: Vec<R>) {
        for request in requests {
            all.push((
                R::KIND,
                request.rpc_name(),
                Frame::encode(R::KIND, &request).unwrap(),
            ));
        }
    }
    push(&mut all, nodes);
    push(&mut all, clients);
    push(&mut all, peers);
    push(&mut all, replicas);
    all
}

fn answer_code(answer: &Frame) -> (ErrorCode, String) {
    assert_eq!(
        answer.kind,
        FrameKind::Error,
        "every request here is answered by an error"
    );
    let error: RpcError = answer.decode().unwrap();
    (error.code, error.message)
}

/// Walks every cell of the authorization table — every request of every conversation, sent
/// with a certificate of every role — and checks the allowed ones reach the handler and the
/// refused ones never do. The samples and the table must name the same requests, so a request
/// added without a row (or a row without a request) fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_and_role_is_allowed_or_refused_as_the_table_says() {
    let ca = CertificateAuthority::generate("authz").unwrap();
    let shutdown = CancellationToken::new();
    let (addr, _) = serve(&ca, ServeLimits::default(), &shutdown);
    let requests = every_request();
    let sampled: BTreeSet<(u8, &str)> = requests.iter().map(|(k, rpc, _)| (*k as u8, *rpc)).collect();
    let tabled: BTreeSet<(u8, &str)> = authz::TABLE.iter().map(|r| (r.kind as u8, r.rpc)).collect();
    assert_eq!(sampled, tabled, "the authorization table and the requests differ");
    let mut cells = 0;
    for role in Role::ALL {
        let client = RpcClient::connect(&endpoint(&ca, role), &addr, Role::Scheduler)
            .await
            .unwrap();
        for (kind, rpc, frame) in &requests {
            let answer = client.exchange_raw(&frame.to_bytes().unwrap()).await.unwrap();
            let (code, message) = answer_code(&answer);
            if authz::allows(*kind, rpc, role) {
                assert_eq!(
                    (code, message.as_str()),
                    (ErrorCode::Internal, "handler reached"),
                    "{role} may send {rpc}"
                );
            } else {
                assert_eq!(
                    code,
                    ErrorCode::PermissionDenied,
                    "{role} may not send {rpc}: {message}"
                );
                assert!(message.contains(rpc), "{message}");
            }
            cells += 1;
        }
    }
    assert_eq!(cells, Role::ALL.len() * authz::TABLE.len());
    // What the attacks of issue 12 needed is refused: a compute or storage node's certificate
    // may not forward ledger writes or speak Raft; only storage nodes may ask for a mint.
    for role in [Role::Compute, Role::Storage, Role::Client, Role::Operator] {
        assert!(!authz::allows(FrameKind::ReplicaRequest, "forward", role));
        assert!(!authz::allows(
            FrameKind::ReplicaRequest,
            "raft_append_entries",
            role
        ));
    }
    assert!(!authz::allows(
        FrameKind::NodeRequest,
        "attest_import",
        Role::Compute
    ));
    assert!(!authz::allows(
        FrameKind::ClientRequest,
        "list_nodes",
        Role::Compute
    ));
    // Only storage nodes hand each other a dataset key (and have the receiver pull) or change
    // who holds a dataset; only a scheduler replica asks a holder to copy a dataset elsewhere.
    for rpc in ["take_replica", "update_holders", "re_replicate"] {
        for role in [Role::Compute, Role::Client, Role::Operator, Role::Gateway] {
            assert!(!authz::allows(FrameKind::PeerRequest, rpc, role), "{role} {rpc}");
        }
    }
    assert_eq!(
        authz::allowed_roles(FrameKind::PeerRequest, "take_replica"),
        &[Role::Storage]
    );
    assert_eq!(
        authz::allowed_roles(FrameKind::PeerRequest, "re_replicate"),
        &[Role::Scheduler]
    );
    shutdown.cancel();
}

/// 32 request frames on one connection, each announcing 4 MiB and stalling after 1 KiB: each is
/// cut off with `DeadlineExceeded` (none is left pinning memory), each is counted, and the same
/// connection then serves a whole request, so the connection's request budget was given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_partial_frames_are_cut_off_and_their_budget_returned() {
    let ca = CertificateAuthority::generate("stall").unwrap();
    let shutdown = CancellationToken::new();
    let limits = ServeLimits {
        request_deadline: Duration::from_millis(300),
        request_bytes_per_connection: 2 * DEFAULT_MAX_FRAME_LEN,
    };
    let (addr, metrics) = serve(&ca, limits, &shutdown);
    let client = RpcClient::connect(&endpoint(&ca, Role::Client), &addr, Role::Scheduler)
        .await
        .unwrap();
    let header = FrameHeader {
        len: DEFAULT_MAX_FRAME_LEN,
        version: PROTOCOL_VERSION,
        kind: FrameKind::ClientRequest,
    };
    let mut stalled = Vec::new();
    for _ in 0..32 {
        let (mut send, recv) = client.connection().open_bi().await.unwrap();
        send.write_all(&header.to_bytes()).await.unwrap();
        send.write_all(&[0u8; 1024]).await.unwrap();
        // Neither finished nor reset: the sender just stops, as a stalled attacker does.
        stalled.push((send, recv));
    }
    for (_send, recv) in &mut stalled {
        let answer = read_frame(recv, DEFAULT_MAX_FRAME_LEN).await.unwrap().unwrap();
        let (code, message) = answer_code(&answer);
        assert_eq!(code, ErrorCode::DeadlineExceeded, "{message}");
    }
    let counted = metrics.frames_rejected.with_label_values(&["deadline"]).get();
    assert_eq!(counted, 32);
    // A header announcing more than the whole budget is refused at once, without waiting.
    let small = ServeLimits {
        request_deadline: Duration::from_secs(600),
        request_bytes_per_connection: 1024,
    };
    let (small_addr, _) = serve(&ca, small, &shutdown);
    let small_client = RpcClient::connect(&endpoint(&ca, Role::Client), &small_addr, Role::Scheduler)
        .await
        .unwrap();
    let answer = small_client
        .exchange_raw(&FrameHeader { len: 4096, ..header }.to_bytes())
        .await
        .unwrap();
    assert_eq!(answer_code(&answer).0, ErrorCode::ResourceExhausted);
    // The first connection's budget is whole again: a full request is read and answered.
    let whole = Frame::encode(FrameKind::ClientRequest, &ClientRequest::ListNodes).unwrap();
    let answer = client.exchange_raw(&whole.to_bytes().unwrap()).await.unwrap();
    assert_eq!(
        answer_code(&answer),
        (ErrorCode::Internal, "handler reached".to_string())
    );
    shutdown.cancel();
}
