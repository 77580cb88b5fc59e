//! Fuzz tests (proptest; cargo-fuzz needs a nightly toolchain) for every decoder of untrusted bytes:
//! arbitrary and mutated input never panics and never allocates from an unchecked length.
//!
//! The default run is short (256 cases per test); for a longer one:
//! `PROPTEST_CASES=100000 cargo test -p micro-tomcat-proto fuzz_`. A failing case is shrunk and
//! written to `tests/fuzz.proptest-regressions`, which is committed so it is replayed on every run.

use std::path::PathBuf;
use std::str::FromStr;

use micro_tomcat_proto as proto;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use proto::gossip::{LoadReport, NodeStatus};
use proto::raft::{
    CommandResponse, Entry, FRAME_HEADER_BYTES, Hello, MAX_FRAME_BYTES, PeerAuth, PeerNode,
    PeerRequest, PeerResponse, SessionCommand, SessionId, SessionRecord, SessionSnapshot,
    decode_backup_file, decode_frame_len, decode_snapshot_file,
};
/// Every decoder that reads bytes from the network or the disk; only a panic fails. (Postcard
/// accepts over-long varints, so a decoded value need not re-encode to the same bytes: harmless.)
fn decode_everything(bytes: &[u8]) {
    let _ = proto::decode::<proto::hop::HopUp>(bytes);
    let _ = proto::decode::<proto::hop::HopDown>(bytes);
    let _ = proto::decode::<SessionCommand>(bytes);
    let _ = proto::decode::<Vec<CommandResponse>>(bytes);
    let _ = proto::decode::<SessionRecord>(bytes);
    let _ = proto::decode::<PeerNode>(bytes);
    let _ = proto::decode::<Hello>(bytes);
    let _ = proto::decode::<PeerAuth>(bytes);
    let _ = proto::decode::<CommandResponse>(bytes);
    let _ = proto::decode::<SessionSnapshot>(bytes);
    let _ = proto::decode::<PeerRequest>(bytes);
    let _ = proto::decode::<PeerResponse>(bytes);
    let _ = proto::decode::<Entry>(bytes);
    let _ = proto::decode::<Vec<Entry>>(bytes);
    let _ = decode_snapshot_file(bytes);
    let _ = decode_backup_file(bytes);
    let text = String::from_utf8_lossy(bytes);
    let _ = NodeStatus::from_str(&text);
    let _ = LoadReport::from_str(&text);
    let _ = SessionId::from_str(&text);
}

fn golden_samples() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut samples: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .map(|dir| {
            dir.filter_map(|entry| entry.ok())
                .filter_map(|entry| std::fs::read(entry.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    samples.sort();
    samples
}

#[test]
fn fuzz_golden_samples_decode_cleanly() {
    let samples = golden_samples();
    assert!(samples.len() > 10, "golden files missing");
    for sample in &samples {
        decode_everything(sample);
    }
}

/// `depth` batches, each holding the next, around one delete: what an attacker sends to make a
/// recursive decoder (or apply) run out of stack.
fn nested_batch(depth: usize) -> Vec<u8> {
    // postcard: variant index as a varint, then the length of the vector; the innermost command
    // is a `Delete` (variant 2) of a 16-byte id.
    let batch_variant = 6u8;
    let mut bytes = Vec::new();
    for _ in 0..depth {
        bytes.extend_from_slice(&[batch_variant, 1]);
    }
    bytes.push(2);
    bytes.extend_from_slice(&[7; 16]);
    bytes
}

#[test]
fn fuzz_nested_batches_are_refused_when_decoded() {
    // One level decodes: it is what the write queue proposes.
    let flat: SessionCommand = proto::decode(&nested_batch(1)).expect("a flat batch decodes");
    assert!(matches!(flat, SessionCommand::Batch(ref commands) if commands.len() == 1));
    assert_eq!(
        proto::encode(&flat),
        nested_batch(1),
        "the hand-made encoding above is postcard's"
    );
    // Two levels or a hundred thousand: refused, without recursing (a stack overflow would abort
    // this test binary, not fail it).
    for depth in [2, 3, 100, 5_000, 100_000] {
        let bytes = nested_batch(depth);
        // (postcard keeps no custom message: the error says only that serde refused.)
        proto::decode::<SessionCommand>(&bytes).expect_err("nested batch");
        // The same bytes inside a forwarded write and inside a log entry are refused too.
        let mut request = vec![3u8]; // PeerRequest::ClientWrite
        request.extend_from_slice(&bytes);
        assert!(
            proto::decode::<PeerRequest>(&request).is_err(),
            "depth {depth}"
        );
    }
    // Responses are flat too.
    let mut response = Vec::new();
    for _ in 0..50_000 {
        response.extend_from_slice(&[10u8, 1]); // CommandResponse::Batch of one
    }
    response.push(3); // NotFound
    assert!(proto::decode::<CommandResponse>(&response).is_err());
    // A refused decode leaves nothing behind: the next flat batch on this thread still decodes.
    proto::decode::<SessionCommand>(&nested_batch(1)).expect("flat batch after a refusal");
}

proptest! {
    // Integration tests have no lib.rs for proptest's default path: keep regressions beside this file.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    /// Arbitrary bytes through every decoder.
    #[test]
    fn fuzz_decoders_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        decode_everything(&bytes);
    }

    /// Golden files with bytes changed, inserted and cut: close to valid, so decoders go deep.
    #[test]
    fn fuzz_decoders_mutated_golden_files(
        pick in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        insert in proptest::option::of((any::<prop::sample::Index>(), proptest::collection::vec(any::<u8>(), 1..8))),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let samples = golden_samples();
        prop_assume!(!samples.is_empty());
        let mut bytes = pick.get(&samples).clone();
        prop_assume!(!bytes.is_empty());
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Some((at, extra)) = insert {
            let i = at.index(bytes.len() + 1);
            bytes.splice(i..i, extra);
        }
        if let Some(cut) = cut {
            let len = cut.index(bytes.len() + 1);
            bytes.truncate(len);
        }
        decode_everything(&bytes);
    }

    /// Nested batches of any depth, with junk after them, never decode and never overflow.
    #[test]
    fn fuzz_nested_batches_any_depth(depth in 2usize..20_000, tail in proptest::collection::vec(any::<u8>(), 0..32)) {
        let mut bytes = nested_batch(depth);
        bytes.extend_from_slice(&tail);
        prop_assert!(proto::decode::<SessionCommand>(&bytes).is_err());
        decode_everything(&bytes);
    }

    /// Frame headers: any four bytes give a length within the limit, or an error.
    #[test]
    fn fuzz_frame_len(header in any::<[u8; FRAME_HEADER_BYTES]>()) {
        let announced = u32::from_be_bytes(header) as usize;
        match decode_frame_len(header) {
            Ok(len) => prop_assert!(len == announced && len <= MAX_FRAME_BYTES),
            Err(_) => prop_assert!(announced > MAX_FRAME_BYTES),
        }
    }
}
