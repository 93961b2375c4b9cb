//! Tensor objects on a storage node as an attacker meets them, over real QUIC with each role's
//! certificate: only a scheduler stores a tensor, and a tensor that is not what its name says,
//! arrives out of order or carries a NaN is refused, counted and never served; a compute node
//! reads one only with a trusted scheduler's ticket naming that tensor; a client never does.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use aic_protocol::messages::{PeerRequest, PeerResponse};
use aic_protocol::rpc::RpcClient;
use aic_protocol::tensor::{
    fetch_tensor, put_tensor, to_bytes, TensorError, TensorRef, TENSOR_CHUNK_ELEMENTS,
};
use aic_protocol::ticket::{ShardTicket, SignedTicket};
use aic_protocol::{Error, ErrorCode, JobId, NodeId, Role, RpcError};
use ed25519_dalek::SigningKey;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn refused(error: TensorError) -> (ErrorCode, String) {
    match error {
        TensorError::Transport(Error::Rpc(RpcError { code, message })) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn call_refused(result: Result<PeerResponse, Error>) -> (ErrorCode, String) {
    match result {
        Err(Error::Rpc(RpcError { code, message })) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn ticket(node: NodeId, tensor: &TensorRef, key: &SigningKey) -> SignedTicket {
    ShardTicket {
        job: JobId::random(),
        node,
        dataset: tensor.ticket_name(),
        expires_ms: now_ms() + 60_000,
    }
    .sign(key)
}

async fn put_chunk(
    client: &RpcClient,
    tensor: TensorRef,
    index: u64,
    values: &[f32],
) -> Result<PeerResponse, Error> {
    client
        .call(&PeerRequest::PutTensor {
            tensor,
            index,
            bytes: to_bytes(values),
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensors_are_stored_by_schedulers_only_and_read_against_a_ticket_naming_them() {
    aic_protocol::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = aic_protocol::certs::CertificateAuthority::generate("tensors").unwrap();
    ca.save(dir.path()).unwrap();
    let scheduler_key = SigningKey::from_bytes(&[7u8; 32]);
    let scheduler_id = NodeId::from_public_key(&scheduler_key.verifying_key().to_bytes());
    let (node, _, stop) = common::start_storage(
        &ca,
        dir.path(),
        "storage",
        "127.0.0.1:9",
        vec![scheduler_id.to_string()],
        3600,
    );
    let addr = node.quic_addr.to_string();
    let (scheduler, _) = common::connect(&ca, Role::Scheduler, "scheduler", &addr).await;
    let (compute, compute_id) = common::connect(&ca, Role::Compute, "compute", &addr).await;
    let (client, _) = common::connect(&ca, Role::Client, "client", &addr).await;

    // A scheduler stores a tensor of two chunks; sending it again stops at the first chunk.
    let values: Vec<f32> = (0..TENSOR_CHUNK_ELEMENTS + 1000)
        .map(|i| (i % 97) as f32 * 0.01)
        .collect();
    let tensor = put_tensor(&scheduler, &values).await.unwrap();
    assert_eq!(tensor, TensorRef::of(&values));
    assert_eq!(put_tensor(&scheduler, &values).await.unwrap(), tensor);

    // No other role stores one.
    for caller in [&compute, &client] {
        let (code, _) = call_refused(put_chunk(caller, tensor, 0, &values[..10]).await);
        assert_eq!(code, ErrorCode::PermissionDenied);
    }
    // A client never reads one; a compute node needs a trusted ticket naming this tensor.
    let (code, _) = refused(
        fetch_tensor(&client, tensor, None, tensor.elements)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ErrorCode::PermissionDenied);
    let (code, _) = refused(
        fetch_tensor(&compute, tensor, None, tensor.elements)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ErrorCode::PermissionDenied);
    let other = TensorRef::of(&[1.0, 2.0]);
    let wrong_tensor = ticket(compute_id, &other, &scheduler_key);
    let (code, _) = refused(
        fetch_tensor(&compute, tensor, Some(wrong_tensor), tensor.elements)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ErrorCode::PermissionDenied);
    let untrusted = ticket(compute_id, &tensor, &SigningKey::from_bytes(&[8u8; 32]));
    let (code, _) = refused(
        fetch_tensor(&compute, tensor, Some(untrusted), tensor.elements)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ErrorCode::PermissionDenied);
    let valid = ticket(compute_id, &tensor, &scheduler_key);
    assert_eq!(
        fetch_tensor(&compute, tensor, Some(valid.clone()), tensor.elements)
            .await
            .unwrap(),
        values
    );
    // A reader refuses a tensor longer than it will take before asking for a byte.
    assert!(matches!(
        fetch_tensor(&compute, tensor, Some(valid), 10).await,
        Err(TensorError::TooLarge { .. })
    ));
    assert_eq!(
        fetch_tensor(&scheduler, tensor, None, tensor.elements)
            .await
            .unwrap(),
        values
    );

    // What a scheduler sends must be what it names: a wrong hash, a chunk out of order, a NaN.
    let claimed = TensorRef::of(&[5.0f32; 100]);
    let (code, _) = call_refused(put_chunk(&scheduler, claimed, 0, &[6.0f32; 100]).await);
    assert_eq!(code, ErrorCode::InvalidArgument);
    let (code, _) = refused(fetch_tensor(&scheduler, claimed, None, 100).await.unwrap_err());
    assert_eq!(code, ErrorCode::NotFound, "a refused tensor is never served");
    let big = vec![1.5f32; TENSOR_CHUNK_ELEMENTS + 1];
    let big_ref = TensorRef::of(&big);
    let (code, _) = call_refused(put_chunk(&scheduler, big_ref, 1, &big[TENSOR_CHUNK_ELEMENTS..]).await);
    assert_eq!(code, ErrorCode::InvalidArgument);
    let (code, _) = call_refused(put_chunk(&scheduler, claimed, 0, &[f32::NAN; 100]).await);
    assert_eq!(code, ErrorCode::InvalidArgument);

    // Only a scheduler forgets a tensor (a superseded round's weights); then it is gone.
    let (code, _) = call_refused(compute.call(&PeerRequest::DropTensor { tensor }).await);
    assert_eq!(code, ErrorCode::PermissionDenied);
    assert!(matches!(
        scheduler.call(&PeerRequest::DropTensor { tensor }).await,
        Ok(PeerResponse::Dropped)
    ));
    let (code, _) = refused(
        fetch_tensor(&scheduler, tensor, None, tensor.elements)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ErrorCode::NotFound);

    let metrics = aic_protocol::metrics_http::scrape(node.metrics_addr)
        .await
        .unwrap();
    for reason in [
        "wrong_hash",
        "out_of_order",
        "not_finite",
        "ticket_missing",
        "ticket_wrong_dataset",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("aic_storage_requests_rejected_total")
                    && l.contains(&format!("reason=\"{reason}\""))),
            "{reason} counted:\n{metrics}"
        );
    }
    stop.cancel();
    node.stopped().await;
}
