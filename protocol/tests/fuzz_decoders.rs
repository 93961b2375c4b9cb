//! Fuzzing every decoder of untrusted bytes the protocol crate owns, on stable Rust with
//! proptest: frames, every message type (requests, answers, errors), dataset manifests, shards
//! (Arrow IPC) and model descriptions. Inputs are random bytes and random edits of valid
//! encodings. No input may panic, and none may make its decoder hold more than
//! [`ALLOCATION_LIMIT`] at once (measured by the counting allocator below).
//!
//! CI runs `AIC_FUZZ_CASES` cases per decoder (default 2,000); `ops/fuzz.sh` runs a long
//! campaign.

use aic_protocol::alloc_probe::{peak_during, PeakAlloc};
use aic_protocol::frame::{decode_frame, Frame, FrameKind, DEFAULT_MAX_FRAME_LEN};
use aic_protocol::messages::{
    ClientRequest, ClientResponse, NodeRequest, NodeResponse, PeerRequest, PeerResponse, ReplicaRequest,
    ReplicaResponse,
};
use proptest::prelude::*;

#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

/// The most any decoder may hold at once for an input of at most 64 KiB: the frame limit, the
/// bound every network-facing decoder promises to keep within.
const ALLOCATION_LIMIT: usize = DEFAULT_MAX_FRAME_LEN as usize;

fn cases() -> u32 {
    std::env::var("AIC_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// One edit of a seed: overwrite, insert or delete a byte at a position, or cut the rest.
#[derive(Clone, Debug)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Set(at, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Insert(at, b)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn mutate(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for edit in edits {
        let len = bytes.len();
        match *edit {
            Edit::Set(at, b) if len > 0 => bytes[at % len] = b,
            Edit::Insert(at, b) => bytes.insert(at % (len + 1), b),
            Edit::Delete(at) if len > 0 => {
                bytes.remove(at % len);
            }
            Edit::Truncate(at) => bytes.truncate(at % (len + 1)),
            _ => {}
        }
    }
    bytes
}

/// Random bytes, or a seed with a few random edits.
fn input(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let count = seeds.len();
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        (0..count, prop::collection::vec(edit(), 1..8)).prop_map(move |(i, edits)| mutate(&seeds[i], &edits)),
    ]
}

/// Decodes `bytes` with `decode`, checking it stays within the allocation limit.
fn within_limit<T>(what: &str, bytes: &[u8], decode: impl FnOnce(&[u8]) -> T) {
    let (_, peak) = peak_during(|| {
        let _ = decode(bytes);
    });
    assert!(
        peak <= ALLOCATION_LIMIT,
        "{what}: {peak} bytes held at once decoding {} input bytes",
        bytes.len()
    );
}

fn message_seeds() -> Vec<Vec<u8>> {
    let job = aic_protocol::JobId::from_bytes([7; 16]);
    let encode = |kind, message: &dyn erased::Encode| message.encode(kind);
    vec![
        encode(FrameKind::ClientRequest, &ClientRequest::ListNodes),
        encode(FrameKind::ClientRequest, &ClientRequest::JobStatus { job }),
        encode(FrameKind::ClientRequest, &ClientRequest::Ledger(vec![1, 2, 3, 4])),
        encode(FrameKind::ClientRequest, &ClientRequest::ListDatasets),
        encode(FrameKind::PeerRequest, &PeerRequest::Ping { nonce: 42 }),
        encode(FrameKind::PeerRequest, &PeerRequest::SignTicket { session: job }),
        encode(FrameKind::ReplicaRequest, &ReplicaRequest::Forward(vec![9; 16])),
        encode(FrameKind::Response, &ReplicaResponse(vec![5; 8])),
    ]
}

/// Encoding behind one trait object, so seeds of different message types sit in one list.
mod erased {
    pub trait Encode {
        fn encode(&self, kind: super::FrameKind) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Encode for T {
        fn encode(&self, kind: super::FrameKind) -> Vec<u8> {
            super::Frame::encode(kind, self).unwrap().to_bytes().unwrap()
        }
    }
}

/// Every message type decoded from one payload, as the RPC layer would for each frame kind.
fn decode_every_message(payload: &[u8]) {
    let frame = Frame {
        kind: FrameKind::Response,
        payload: payload.to_vec(),
    };
    let _ = frame.decode::<ClientRequest>();
    let _ = frame.decode::<ClientResponse>();
    let _ = frame.decode::<NodeRequest>();
    let _ = frame.decode::<NodeResponse>();
    let _ = frame.decode::<PeerRequest>();
    let _ = frame.decode::<PeerResponse>();
    let _ = frame.decode::<ReplicaRequest>();
    let _ = frame.decode::<ReplicaResponse>();
    let _ = frame.decode::<aic_protocol::RpcError>();
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn frames_and_messages_decode_or_refuse(bytes in input(message_seeds())) {
        within_limit("frame", &bytes, |b| {
            if let Ok(Some((frame, used))) = decode_frame(b, DEFAULT_MAX_FRAME_LEN) {
                assert!(used <= b.len());
                decode_every_message(&frame.payload);
            }
        });
        // The same bytes as a bare payload: every type's decoder sees them.
        within_limit("message", &bytes, decode_every_message);
    }

    #[test]
    fn manifests_decode_or_refuse(bytes in input(vec![MANIFEST.as_bytes().to_vec()])) {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        within_limit("manifest", text.as_bytes(), |_| aic_protocol::manifest::Manifest::from_json(&text));
    }

    #[test]
    fn shards_decode_or_refuse(bytes in input(vec![shard_ipc()])) {
        within_limit("shard (Arrow IPC)", &bytes, aic_protocol::shard_fetch::decode_ipc);
    }

    #[test]
    fn model_descriptions_parse_or_refuse(bytes in input(model_seeds())) {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        within_limit("model description", text.as_bytes(), |_| aic_protocol::model_graph::parse(&text));
    }
}

const MANIFEST: &str = r#"{"name":"digits","rows":200,"features":[],"label":"label","classes":["0","1"],"seed":7,"test_fraction":0.2,"shard_rows":100,"train":[{"id":"1111111111111111111111111111111111111111111111111111111111111111","rows":100,"bytes":1000}],"test":[{"id":"2222222222222222222222222222222222222222222222222222222222222222","rows":100,"bytes":1000}],"fee":"0.5"}"#;

fn model_seeds() -> Vec<Vec<u8>> {
    [
        include_str!("../../examples/models/digits-cnn.toml"),
        include_str!("../../examples/models/digits-mlp.toml"),
        include_str!("../../examples/models/deep-mlp.toml"),
        include_str!("../../examples/models/penguins-regression.toml"),
    ]
    .iter()
    .map(|t| t.as_bytes().to_vec())
    .collect()
}

/// A small shard as storage nodes serve it: one Arrow IPC stream of two columns.
fn shard_ipc() -> Vec<u8> {
    use arrow_array::{Float32Array, Int64Array, RecordBatch};
    use std::sync::Arc;
    let batch = RecordBatch::try_from_iter([
        ("x", Arc::new(Float32Array::from(vec![0.5f32, 1.5, -2.0])) as _),
        ("label", Arc::new(Int64Array::from(vec![0i64, 1, 1])) as _),
    ])
    .unwrap();
    let mut out = Vec::new();
    let mut writer = arrow_ipc::writer::StreamWriter::try_new(&mut out, &batch.schema()).unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
    drop(writer);
    out
}

/// The probe itself: it sees what a decoder would hold, or the limit above checks nothing.
#[test]
fn the_allocation_probe_sees_a_large_buffer_and_its_release() {
    let (len, peak) = peak_during(|| vec![0u8; 10 << 20].len());
    assert_eq!(len, 10 << 20);
    assert!(peak >= 10 << 20, "{peak}");
    let (_, small) = peak_during(|| 1 + 1);
    assert!(small < 1024, "{small}");
    // A decoder over its limit would be caught.
    let over = std::panic::catch_unwind(|| {
        within_limit("a greedy decoder", &[], |_| vec![0u8; ALLOCATION_LIMIT + 1].len())
    });
    assert!(over.is_err());
}
