//! Fuzzing the ledger's decoders of untrusted bytes on stable Rust with proptest: ledger
//! requests (transactions included) as clients send them, ledger answers as clients read them,
//! block headers, Raft's messages between replicas and genesis files. Inputs are random bytes
//! and random edits of valid encodings; a decoded transaction also goes through the stateless
//! checks a replica runs before consensus. No input may panic or make its decoder hold more than
//! the frame limit at once.
//!
//! CI runs `AIC_FUZZ_CASES` cases per decoder (default 2,000); `ops/fuzz.sh` runs a long
//! campaign.

use aic_ledger::api::{decode, encode, LedgerRequest, LedgerResult};
use aic_ledger::block::BlockHeader;
use aic_ledger::genesis::Genesis;
use aic_ledger::raft::types::LedgerRaft;
use aic_protocol::alloc_probe::{peak_during, PeakAlloc};
use aic_protocol::frame::DEFAULT_MAX_FRAME_LEN;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use proptest::prelude::*;

#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

const ALLOCATION_LIMIT: usize = DEFAULT_MAX_FRAME_LEN as usize;

fn config() -> ProptestConfig {
    let cases = std::env::var("AIC_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Random bytes, or a seed with a few random edits (overwrite, insert, delete, truncate).
fn input(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let count = seeds.len();
    let edits = prop::collection::vec((0u8..4, any::<usize>(), any::<u8>()), 1..8);
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        (0..count, edits).prop_map(move |(i, edits)| {
            let mut bytes = seeds[i].clone();
            for (op, at, b) in edits {
                let len = bytes.len();
                match op {
                    0 if len > 0 => bytes[at % len] = b,
                    1 => bytes.insert(at % (len + 1), b),
                    2 if len > 0 => {
                        bytes.remove(at % len);
                    }
                    _ => bytes.truncate(at % (len + 1)),
                }
            }
            bytes
        }),
    ]
}

fn within_limit(what: &str, bytes: &[u8], decode: impl FnOnce(&[u8])) {
    let ((), peak) = peak_during(|| decode(bytes));
    assert!(
        peak <= ALLOCATION_LIMIT,
        "{what}: {peak} bytes held at once decoding {} input bytes",
        bytes.len()
    );
}

fn request_seeds() -> Vec<Vec<u8>> {
    LedgerRequest::examples().iter().map(encode).collect()
}

fn genesis() -> Genesis {
    let holder = |b: u8| aic_ledger::Address([b; 32]);
    let holders = aic_ledger::genesis::Holders {
        fundraiser: holder(1),
        advisors: holder(2),
        company: holder(3),
        team: holder(4),
        operations: holder(5),
    };
    Genesis::local("examples", 1_000_000, holders, holder(6))
}

fn genesis_seed() -> Vec<u8> {
    toml::to_string(&genesis()).unwrap().into_bytes()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ledger_requests_decode_or_refuse_and_their_transactions_are_checked(bytes in input(request_seeds())) {
        let state = aic_ledger::state::LedgerState::from_genesis(genesis());
        within_limit("ledger request", &bytes, |b| {
            if let Ok(LedgerRequest::Submit(signed)) = decode::<LedgerRequest>(b) {
                let _ = signed.verify();
                let _ = signed.hash();
                let _ = aic_ledger::authz::check_stateless(&state, &signed);
            }
        });
    }

    #[test]
    fn ledger_answers_and_blocks_decode_or_refuse(bytes in input(request_seeds())) {
        within_limit("ledger answer", &bytes, |b| {
            let _ = decode::<LedgerResult>(b);
            let _ = postcard::from_bytes::<BlockHeader>(b);
        });
    }

    #[test]
    fn raft_messages_decode_or_refuse(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        within_limit("raft message", &bytes, |b| {
            let _ = postcard::from_bytes::<AppendEntriesRequest<LedgerRaft>>(b);
            let _ = postcard::from_bytes::<VoteRequest<u64>>(b);
            let _ = postcard::from_bytes::<InstallSnapshotRequest<LedgerRaft>>(b);
        });
    }

    #[test]
    fn genesis_files_parse_or_refuse(bytes in input(vec![genesis_seed()])) {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        within_limit("genesis", text.as_bytes(), |_| {
            if let Ok(genesis) = toml::from_str::<Genesis>(&text) {
                let _ = genesis.validate();
            }
        });
    }
}
