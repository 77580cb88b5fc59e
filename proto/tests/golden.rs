//! Golden files: one fixed sample per message type, encoded and committed under `tests/golden/`.
//!
//! Each test decodes the committed bytes and compares them with the sample, and checks that
//! encoding the sample gives exactly the committed bytes: an incompatible encoding change fails
//! here instead of in a rolling upgrade. After an intended change (with a bumped wire version or
//! snapshot magic), regenerate with `UPDATE_GOLDEN=1 cargo test -p micro-tomcat-proto --test golden`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::PathBuf;

use micro_tomcat_proto as proto;
use openraft::{CommittedLeaderId, EntryPayload, Membership};
use proptest::prelude::*;
use proto::hop::{HopDown, HopHeader, HopRequest, HopUp};
use proto::raft::{
    CommandResponse, Entry, Hello, LogId, PEER_WIRE_VERSION, PeerAuth, PeerNode, PeerRequest,
    PeerResponse, SessionCommand, SessionId, SessionRecord, SessionSnapshot, StoredMembership,
    decode_snapshot_file, encode_snapshot_file,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.bin"))
}

fn updating() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1")
}

/// The committed bytes for `name`, after writing `fresh` there when updating.
fn committed_bytes(name: &str, fresh: &[u8]) -> Vec<u8> {
    let path = golden_path(name);
    if updating() {
        std::fs::write(&path, fresh).expect("write golden file");
    }
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "missing golden file {} ({e}); run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    })
}

/// Checks a type with `PartialEq`: decoded equals the sample, encoding is byte-identical.
fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(name: &str, sample: &T) {
    let fresh = proto::encode(sample);
    let committed = committed_bytes(name, &fresh);
    let decoded: T = proto::decode(&committed)
        .unwrap_or_else(|e| panic!("{name}: committed golden file no longer decodes: {e}"));
    assert_eq!(
        &decoded, sample,
        "{name}: decoded value differs from the sample"
    );
    assert_eq!(
        fresh, committed,
        "{name}: encoding changed; bump the wire version and run UPDATE_GOLDEN=1"
    );
}

/// Checks a type without `PartialEq` (openraft messages): compares the `Debug` text instead.
fn check_debug<T: Serialize + DeserializeOwned + Debug>(name: &str, sample: &T) {
    let fresh = proto::encode(sample);
    let committed = committed_bytes(name, &fresh);
    let decoded: T = proto::decode(&committed)
        .unwrap_or_else(|e| panic!("{name}: committed golden file no longer decodes: {e}"));
    assert_eq!(format!("{decoded:?}"), format!("{sample:?}"), "{name}");
    assert_eq!(
        fresh, committed,
        "{name}: encoding changed; bump the wire version and run UPDATE_GOLDEN=1"
    );
}

fn id(byte: u8) -> SessionId {
    SessionId::from_bytes([byte; 16])
}

fn log_id(term: u64, node: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

fn peer(n: u64) -> PeerNode {
    PeerNode {
        name: format!("node-{n}"),
        cluster_addr: format!("127.0.0.1:700{n}"),
        http_addr: format!("127.0.0.1:808{n}"),
    }
}

fn record() -> SessionRecord {
    SessionRecord {
        id: id(0xab),
        data: r#"{"count":3,"user":"ada"}"#.to_string(),
        version: 4,
        created_ms: 1_764_000_000_123,
        last_access_ms: 1_764_000_060_456,
        ttl_ms: 1_800_000,
    }
}

fn membership() -> StoredMembership {
    let nodes: BTreeMap<u64, PeerNode> = (1..=3).map(|n| (n, peer(n))).collect();
    let voters: BTreeSet<u64> = [1, 2, 3].into();
    StoredMembership::new(Some(log_id(1, 1, 2)), Membership::new(vec![voters], nodes))
}

fn create() -> SessionCommand {
    SessionCommand::Create {
        id: id(1),
        data: r#"{"a":1}"#.to_string(),
        ttl_ms: 60_000,
        now_ms: 1_764_000_000_000,
    }
}

#[test]
fn peer_node() {
    check("peer_node", &peer(1));
}

#[test]
fn session_record() {
    check("session_record", &record());
}

#[test]
fn command_create() {
    check("command_create", &create());
}

#[test]
fn command_put() {
    check(
        "command_put",
        &SessionCommand::Put {
            id: id(2),
            data: r#"{"b":[1,2]}"#.to_string(),
            expected_version: Some(7),
            ttl_ms: Some(120_000),
            now_ms: 1_764_000_000_500,
        },
    );
    check(
        "command_put_unconditional",
        &SessionCommand::Put {
            id: id(2),
            data: "{}".to_string(),
            expected_version: None,
            ttl_ms: None,
            now_ms: 1_764_000_000_501,
        },
    );
}

#[test]
fn command_delete() {
    check("command_delete", &SessionCommand::Delete { id: id(3) });
}

#[test]
fn command_touch() {
    check(
        "command_touch",
        &SessionCommand::Touch {
            touches: vec![(id(4), 1_764_000_001_000), (id(5), 1_764_000_001_001)],
        },
    );
}

#[test]
fn command_expire() {
    check(
        "command_expire",
        &SessionCommand::Expire {
            ids: vec![id(6), id(7)],
            now_ms: 1_764_000_002_000,
        },
    );
}

#[test]
fn command_batch() {
    check(
        "command_batch",
        &SessionCommand::Batch(vec![create(), SessionCommand::Delete { id: id(3) }]),
    );
    check(
        "command_response_batch",
        &CommandResponse::Batch(vec![
            CommandResponse::Created(record()),
            CommandResponse::NotFound,
        ]),
    );
}

#[test]
fn command_create_within_and_refusals() {
    check(
        "command_create_within",
        &SessionCommand::CreateWithin {
            id: id(9),
            data: r#"{"a":1}"#.to_string(),
            ttl_ms: 60_000,
            now_ms: 1_764_000_003_000,
            max_active: 1_000_000,
        },
    );
    check(
        "command_response_too_many_sessions",
        &CommandResponse::TooManySessions {
            max_active: 1_000_000,
        },
    );
    check(
        "command_response_refused",
        &CommandResponse::Refused {
            reason: "a batch inside a batch".to_string(),
        },
    );
    check_debug(
        "peer_response_write_refused",
        &PeerResponse::WriteRefused("session data must be a JSON object".to_string()),
    );
}

#[test]
fn command_responses() {
    check(
        "command_responses",
        &vec![
            CommandResponse::Created(record()),
            CommandResponse::Updated(record()),
            CommandResponse::Deleted,
            CommandResponse::NotFound,
            CommandResponse::VersionMismatch { current: 9 },
            CommandResponse::AlreadyExists,
            CommandResponse::Touched { count: 2 },
            CommandResponse::Expired {
                ids: vec![id(6), id(7)],
            },
            CommandResponse::Internal,
        ],
    );
}

#[test]
fn session_snapshot() {
    let mut second = record();
    second.id = id(0xcd);
    second.version = 1;
    check(
        "session_snapshot",
        &SessionSnapshot {
            last_applied: Some(log_id(2, 3, 41)),
            last_membership: membership(),
            sessions: vec![record(), second],
        },
    );
}

#[test]
fn snapshot_file() {
    let data = proto::encode(&SessionSnapshot {
        last_applied: Some(log_id(2, 3, 41)),
        last_membership: membership(),
        sessions: vec![record()],
    });
    let fresh = encode_snapshot_file("2-3-41-1", &data);
    let committed = committed_bytes("snapshot_file", &fresh);
    let (snapshot_id, body) = decode_snapshot_file(&committed).expect("golden snapshot file");
    assert_eq!(snapshot_id, "2-3-41-1");
    assert_eq!(body, &data[..]);
    assert_eq!(
        fresh, committed,
        "snapshot file format changed; bump the magic"
    );
}

#[test]
fn log_entries() {
    let normal = Entry {
        log_id: log_id(2, 1, 10),
        payload: EntryPayload::Normal(create()),
    };
    check("entry_normal", &normal);
    let change = Entry {
        log_id: log_id(1, 1, 2),
        payload: EntryPayload::Membership(membership().membership().clone()),
    };
    check("entry_membership", &change);
    check(
        "entry_blank",
        &Entry {
            log_id: log_id(3, 2, 11),
            payload: EntryPayload::Blank,
        },
    );
}

#[test]
fn hello() {
    check(
        "hello",
        &Hello {
            wire_version: PEER_WIRE_VERSION,
            cluster_id: "demo".to_string(),
            from_name: "node-1".to_string(),
        },
    );
}

#[test]
fn peer_auth() {
    check("peer_auth_nonce", &PeerAuth::nonce([0x5a; 32]));
    check("peer_auth_proof", &PeerAuth::proof([0xa5; 32]));
}

#[test]
fn peer_request_client_write() {
    check_debug(
        "peer_request_client_write",
        &PeerRequest::ClientWrite(create()),
    );
}

#[test]
fn peer_response_client_write() {
    check_debug(
        "peer_response_client_write",
        &PeerResponse::ClientWrite {
            log_id: log_id(2, 1, 10),
            response: CommandResponse::Created(record()),
        },
    );
}

#[test]
fn peer_read_index() {
    check_debug("peer_request_read_index", &PeerRequest::ReadIndex);
    check_debug(
        "peer_response_read_index",
        &PeerResponse::ReadIndex { index: Some(42) },
    );
}

#[test]
fn hop_channel() {
    check_debug("peer_request_open_hop", &PeerRequest::OpenHop);
    check_debug("peer_response_hop_opened", &PeerResponse::HopOpened);
    let header = |name: &str, value: &[u8]| HopHeader {
        name: name.to_string(),
        value: value.to_vec(),
    };
    check(
        "hop_up_request",
        &HopUp::Request(HopRequest {
            stream: 7,
            method: "POST".to_string(),
            target: "/app/counter?x=1".to_string(),
            headers: vec![
                header("cookie", b"MTSESSIONID=abc"),
                header("x-raw", &[0xff, b'a']),
            ],
            body: b"{\"n\":1}".to_vec(),
        }),
    );
    check("hop_up_cancel", &HopUp::Cancel { stream: 7 });
    check(
        "hop_up_credit",
        &HopUp::Credit {
            stream: 7,
            bytes: 65_536,
        },
    );
    check(
        "hop_down_head",
        &HopDown::Head {
            stream: 7,
            status: 200,
            headers: vec![header("x-served-by", b"node-2")],
            body: b"hello".to_vec(),
            end: false,
        },
    );
    check(
        "hop_down_data",
        &HopDown::Data {
            stream: 7,
            chunk: b" world".to_vec(),
            end: true,
        },
    );
    check(
        "hop_down_reset",
        &HopDown::Reset {
            stream: 7,
            reason: "response body failed".to_string(),
        },
    );
    check(
        "hop_down_refused",
        &HopDown::Refused {
            stream: 8,
            reason: "the member is shutting down".to_string(),
        },
    );
}

/// Decodes `bytes` as every message type; only a panic fails.
fn decode_everything(bytes: &[u8]) {
    let _ = proto::decode::<HopUp>(bytes);
    let _ = proto::decode::<HopDown>(bytes);
    let _ = proto::decode::<SessionCommand>(bytes);
    let _ = proto::decode::<CommandResponse>(bytes);
    let _ = proto::decode::<Vec<CommandResponse>>(bytes);
    let _ = proto::decode::<SessionRecord>(bytes);
    let _ = proto::decode::<SessionSnapshot>(bytes);
    let _ = proto::decode::<PeerNode>(bytes);
    let _ = proto::decode::<Hello>(bytes);
    let _ = proto::decode::<PeerAuth>(bytes);
    let _ = proto::decode::<PeerRequest>(bytes);
    let _ = proto::decode::<PeerResponse>(bytes);
    let _ = proto::decode::<Entry>(bytes);
    let _ = decode_snapshot_file(bytes);
}

fn golden_samples() -> Vec<Vec<u8>> {
    std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden"))
        .map(|dir| {
            dir.filter_map(|entry| entry.ok())
                .filter_map(|entry| std::fs::read(entry.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes);
    }

    #[test]
    fn damaged_golden_files_never_panic(
        pick in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let samples = golden_samples();
        prop_assume!(!samples.is_empty());
        let mut bytes = pick.get(&samples).clone();
        prop_assume!(!bytes.is_empty());
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        decode_everything(&bytes);
        let len = cut.index(bytes.len());
        decode_everything(&bytes[..len]);
    }
}

#[test]
fn command_import() {
    check(
        "command_import",
        &SessionCommand::Import {
            records: vec![record()],
            now_ms: 1_764_000_100_000,
        },
    );
}

#[test]
fn command_response_imported() {
    check(
        "command_response_imported",
        &CommandResponse::Imported {
            count: 41,
            skipped: 1,
        },
    );
}

#[test]
fn backup_file() {
    let backup = proto::raft::Backup {
        cluster_id: "demo".to_string(),
        node: "node-2".to_string(),
        log_index: 1234,
        created_ms: 1_764_000_200_000,
        config_xml: "<cluster id=\"demo\"/>".to_string(),
        sessions: vec![record()],
    };
    let bytes = proto::raft::encode_backup_file(&backup);
    let path = golden_path("backup_file");
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, &bytes).expect("write golden");
    }
    let stored = std::fs::read(&path).expect("golden backup file; run with UPDATE_GOLDEN=1");
    assert_eq!(
        stored, bytes,
        "backup file encoding changed; bump BACKUP_FILE_MAGIC"
    );
    assert_eq!(
        proto::raft::decode_backup_file(&stored).expect("decodes"),
        backup
    );
    assert!(proto::raft::decode_backup_file(b"MTSNAP01garbage").is_err());
    assert!(proto::raft::decode_backup_file(&stored[..stored.len() - 3]).is_err());
}
