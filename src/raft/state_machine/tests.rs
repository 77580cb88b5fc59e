use std::collections::{BTreeMap, BTreeSet};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, Membership, RaftLogReader};
use proto::raft::PeerNode;

use super::*;
use crate::raft::open_storage;

const T0: u64 = 1_764_000_000_000;

fn sid(n: u8) -> SessionId {
    SessionId::from_bytes([n; 16])
}

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn normal(index: u64, command: SessionCommand) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(command),
    }
}

fn create(id: u8, ttl_ms: u64, now_ms: u64) -> SessionCommand {
    SessionCommand::Create {
        id: sid(id),
        data: format!(r#"{{"id":{id}}}"#),
        ttl_ms,
        now_ms,
    }
}

fn put(id: u8, data: &str, expected_version: Option<u64>, now_ms: u64) -> SessionCommand {
    SessionCommand::Put {
        id: sid(id),
        data: data.to_string(),
        expected_version,
        ttl_ms: None,
        now_ms,
    }
}

/// A state machine in a fresh temp dir, with the applied index counter.
struct Harness {
    _dir: tempfile::TempDir,
    sm: SessionStateMachine,
    next_index: u64,
}

impl Harness {
    /// The state machine's current snapshot, which must exist (`what` says why).
    async fn current_snapshot(&mut self, what: &str) -> Snapshot<TypeConfig> {
        self.sm
            .get_current_snapshot()
            .await
            .expect("current")
            .expect(what)
    }

    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let sm = SessionStateMachine::open(dir.path()).expect("open");
        Harness {
            _dir: dir,
            sm,
            next_index: 1,
        }
    }

    async fn run(&mut self, command: SessionCommand) -> CommandResponse {
        let entry = normal(self.next_index, command);
        self.next_index += 1;
        let mut responses = self.sm.apply([entry]).await.expect("apply");
        responses.pop().expect("one response")
    }
}

#[tokio::test]
async fn create_put_delete() {
    let mut h = Harness::new();
    let reader = h.sm.reader();
    let CommandResponse::Created(record) = h.run(create(1, 1_000, T0)).await else {
        panic!("create failed");
    };
    assert_eq!(record.version, 1);
    assert_eq!(record.created_ms, T0);
    assert_eq!(record.last_access_ms, T0);
    assert_eq!(reader.get(&sid(1)), Some(record));
    assert_eq!(
        h.run(create(1, 1_000, T0 + 1)).await,
        CommandResponse::AlreadyExists
    );

    let CommandResponse::Updated(updated) = h.run(put(1, r#"{"x":1}"#, None, T0 + 10)).await else {
        panic!("put failed");
    };
    assert_eq!(updated.version, 2);
    assert_eq!(updated.data, r#"{"x":1}"#);
    assert_eq!(updated.last_access_ms, T0 + 10);
    assert_eq!(updated.created_ms, T0);

    assert_eq!(
        h.run(put(2, "{}", None, T0)).await,
        CommandResponse::NotFound
    );
    assert_eq!(
        h.run(SessionCommand::Delete { id: sid(1) }).await,
        CommandResponse::Deleted
    );
    assert_eq!(
        h.run(SessionCommand::Delete { id: sid(1) }).await,
        CommandResponse::NotFound
    );
    assert!(reader.is_empty());
    assert_eq!(reader.last_applied_index(), Some(6));
}

#[tokio::test]
async fn compare_and_set_succeeds_once_per_version() {
    let mut h = Harness::new();
    h.run(create(1, 60_000, T0)).await;
    // Two writers read version 1 and race; exactly one wins.
    let first = h.run(put(1, r#"{"w":"a"}"#, Some(1), T0 + 1)).await;
    let second = h.run(put(1, r#"{"w":"b"}"#, Some(1), T0 + 2)).await;
    assert!(matches!(first, CommandResponse::Updated(ref r) if r.version == 2));
    assert_eq!(second, CommandResponse::VersionMismatch { current: 2 });
    assert_eq!(
        h.sm.reader().get(&sid(1)).map(|r| r.data),
        Some(r#"{"w":"a"}"#.into())
    );
    // The loser retries with the version it was told.
    let retry = h.run(put(1, r#"{"w":"b"}"#, Some(2), T0 + 3)).await;
    assert!(matches!(retry, CommandResponse::Updated(ref r) if r.version == 3));
    // A stale expected version never applies, even after later writes.
    assert_eq!(
        h.run(put(1, "{}", Some(1), T0 + 4)).await,
        CommandResponse::VersionMismatch { current: 3 }
    );
}

#[tokio::test]
async fn expired_sessions_are_gone_for_put_and_create() {
    let mut h = Harness::new();
    h.run(create(1, 100, T0)).await;
    assert_eq!(
        h.run(put(1, "{}", None, T0 + 100)).await,
        CommandResponse::NotFound
    );
    // The id of an expired (not yet removed) session can be created again.
    let CommandResponse::Created(record) = h.run(create(1, 100, T0 + 200)).await else {
        panic!("re-create failed");
    };
    assert_eq!(record.version, 1);
    assert_eq!(
        h.sm.reader().expired_at(T0 + 299, 10),
        Vec::<SessionId>::new()
    );
    assert_eq!(h.sm.reader().expired_at(T0 + 300, 10), vec![sid(1)]);
}

#[tokio::test]
async fn touch_moves_access_forward_only_and_keeps_version() {
    let mut h = Harness::new();
    h.run(create(1, 1_000, T0)).await;
    h.run(create(2, 1_000, T0)).await;
    let response = h
        .run(SessionCommand::Touch {
            touches: vec![
                (sid(1), T0 + 500),
                (sid(2), T0 - 1),     // older than the last access: ignored
                (sid(3), T0 + 500),   // unknown: ignored
                (sid(2), T0 + 1_000), // at expiry: too late to revive
            ],
        })
        .await;
    assert_eq!(response, CommandResponse::Touched { count: 1 });
    let reader = h.sm.reader();
    let one = reader.get(&sid(1)).expect("session 1");
    assert_eq!((one.last_access_ms, one.version), (T0 + 500, 1));
    assert_eq!(reader.get(&sid(2)).map(|r| r.last_access_ms), Some(T0));
    // The expiry index follows the touch.
    assert_eq!(reader.expired_at(T0 + 1_000, 10), vec![sid(2)]);
    assert_eq!(reader.expired_at(T0 + 1_500, 10), vec![sid(2), sid(1)]);
    assert_eq!(reader.expired_at(T0 + 1_500, 1), vec![sid(2)]);
    assert_eq!(reader.get_live(&sid(2), T0 + 1_000), None);
    assert!(reader.get_live(&sid(1), T0 + 1_000).is_some());
}

#[tokio::test]
async fn expire_uses_the_command_clock_and_is_deterministic() {
    let commands = vec![
        create(1, 100, T0),
        create(2, 100, T0),
        create(3, 1_000, T0),
        // The leader saw 1 and 2 expired at T0+150, but 2 was touched before the entry applied.
        SessionCommand::Touch {
            touches: vec![(sid(2), T0 + 90)],
        },
        SessionCommand::Expire {
            ids: vec![sid(1), sid(2), sid(3), sid(9)],
            now_ms: T0 + 150,
        },
    ];
    let mut a = Harness::new();
    let mut b = Harness::new();
    let mut receiver = a.sm.reader().subscribe_expired();
    let mut responses = Vec::new();
    for command in commands {
        let ra = a.run(command.clone()).await;
        let rb = b.run(command).await;
        assert_eq!(ra, rb, "replicas answered differently");
        responses.push(ra);
    }
    assert_eq!(
        responses.last(),
        Some(&CommandResponse::Expired { ids: vec![sid(1)] })
    );
    assert_eq!(a.sm.reader().digest(), b.sm.reader().digest());
    assert_eq!(a.sm.reader().len(), 2);
    let event = receiver.try_recv().expect("expiry event");
    assert_eq!(
        event,
        ExpiredEvent {
            log_index: 5,
            ids: vec![sid(1)]
        }
    );
    // Expiring again at the same clock removes nothing and sends no event.
    let again = a
        .run(SessionCommand::Expire {
            ids: vec![sid(2)],
            now_ms: T0 + 150,
        })
        .await;
    assert_eq!(again, CommandResponse::Expired { ids: vec![] });
    assert!(receiver.try_recv().is_err());
}

/// One `Batch` entry answers and changes exactly what its commands do as separate entries, and an
/// expiry inside a batch raises the expiry event at the batch's index.
#[tokio::test]
async fn a_batch_is_the_same_as_its_commands_one_by_one() {
    let commands = vec![
        create(1, 100, T0),
        create(1, 100, T0),
        put(1, r#"{"n":2}"#, Some(1), T0 + 1),
        put(1, r#"{"n":3}"#, Some(1), T0 + 2),
        create(2, 50, T0),
        SessionCommand::Delete { id: sid(3) },
        SessionCommand::Expire {
            ids: vec![sid(2)],
            now_ms: T0 + 60,
        },
    ];
    let mut one_by_one = Harness::new();
    let mut separate = Vec::new();
    for command in commands.clone() {
        separate.push(one_by_one.run(command).await);
    }
    let mut batched = Harness::new();
    let mut receiver = batched.sm.reader().subscribe_expired();
    let answer = batched.run(SessionCommand::Batch(commands)).await;
    assert_eq!(answer, CommandResponse::Batch(separate.clone()));
    assert!(matches!(separate[1], CommandResponse::AlreadyExists));
    assert!(matches!(
        separate[3],
        CommandResponse::VersionMismatch { current: 2 }
    ));
    assert_eq!(
        one_by_one.sm.reader().digest(),
        batched.sm.reader().digest()
    );
    assert_eq!(
        receiver
            .try_recv()
            .expect("expiry event from inside the batch"),
        ExpiredEvent {
            log_index: 1,
            ids: vec![sid(2)]
        }
    );
}

#[tokio::test]
async fn digest_ignores_order_but_not_content() {
    let mut a = Harness::new();
    let mut b = Harness::new();
    a.run(create(1, 100, T0)).await;
    a.run(create(2, 100, T0)).await;
    b.run(create(2, 100, T0)).await;
    b.run(create(1, 100, T0)).await;
    assert_eq!(a.sm.reader().digest(), b.sm.reader().digest());
    b.run(put(1, "{}", None, T0)).await;
    assert_ne!(a.sm.reader().digest(), b.sm.reader().digest());
}

#[tokio::test]
async fn creates_beyond_max_active_are_refused_and_nested_batches_are_not_applied() {
    let mut h = Harness::new();
    let within = |id: u8, max_active: u64| SessionCommand::CreateWithin {
        id: sid(id),
        data: "{}".into(),
        ttl_ms: 60_000,
        now_ms: T0,
        max_active,
    };
    assert!(matches!(
        h.run(within(1, 2)).await,
        CommandResponse::Created(_)
    ));
    assert!(matches!(
        h.run(within(2, 2)).await,
        CommandResponse::Created(_)
    ));
    assert_eq!(
        h.run(within(3, 2)).await,
        CommandResponse::TooManySessions { max_active: 2 }
    );
    // A higher limit (a reload on the leader) lets the next one in; a delete makes room.
    assert!(matches!(
        h.run(within(3, 3)).await,
        CommandResponse::Created(_)
    ));
    assert_eq!(
        h.run(SessionCommand::Delete { id: sid(1) }).await,
        CommandResponse::Deleted
    );
    assert!(matches!(
        h.run(within(4, 3)).await,
        CommandResponse::Created(_)
    ));
    assert_eq!(h.sm.reader().len(), 3);

    let nested = SessionCommand::Batch(vec![
        SessionCommand::Delete { id: sid(2) },
        SessionCommand::Batch(vec![SessionCommand::Delete { id: sid(3) }]),
    ]);
    let CommandResponse::Batch(responses) = h.run(nested).await else {
        panic!("a batch answers a batch");
    };
    assert_eq!(responses[0], CommandResponse::Deleted);
    assert!(matches!(responses[1], CommandResponse::Refused { .. }));
    // The inner batch did nothing: session 3 is still there.
    assert!(h.sm.reader().get(&sid(3)).is_some());
}

/// Pseudo-random commands (fixed seed) over a few ids: replicas agree, nothing panics and the
/// expiry index always matches the sessions.
#[tokio::test]
async fn random_commands_keep_replicas_and_index_consistent() {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut a = Harness::new();
    let mut b = Harness::new();
    for step in 0..2_000u64 {
        let id = (next() % 8) as u8;
        let now = T0 + step * 10;
        let command = match next() % 9 {
            0 => create(id, next() % 500, now),
            // Adversarial: batches built in memory with batches inside (not decodable, so only
            // code could make one), and creates under a cluster limit.
            6 => SessionCommand::Batch(vec![
                create(id, 100, now),
                SessionCommand::Batch(vec![SessionCommand::Batch(vec![create(id ^ 2, 100, now)])]),
                SessionCommand::Delete { id: sid(id ^ 3) },
            ]),
            7 => SessionCommand::CreateWithin {
                id: sid(id),
                data: "{}".into(),
                ttl_ms: next() % 500,
                now_ms: now,
                max_active: next() % 6,
            },
            8 => SessionCommand::Batch(vec![]),
            1 => put(id, "{}", (next() % 3 == 0).then(|| next() % 4), now),
            2 => SessionCommand::Delete { id: sid(id) },
            3 => SessionCommand::Touch {
                touches: vec![
                    (sid(id), now),
                    (sid(id ^ 1), now.saturating_sub(next() % 100)),
                ],
            },
            4 => SessionCommand::Expire {
                ids: a.sm.reader().expired_at(now, 3),
                now_ms: now,
            },
            _ => SessionCommand::Put {
                id: sid(id),
                data: "{}".into(),
                expected_version: None,
                ttl_ms: Some(u64::MAX),
                now_ms: u64::MAX,
            },
        };
        assert_eq!(a.run(command.clone()).await, b.run(command).await);
        let state = a.sm.shared.read();
        let expected: OrdSet<(u64, SessionId)> = state
            .sessions
            .values()
            .map(|r| (r.expires_at_ms(), r.id))
            .collect();
        assert_eq!(
            state.by_expiry, expected,
            "expiry index diverged at step {step}"
        );
    }
    assert_eq!(a.sm.reader().digest(), b.sm.reader().digest());
}

fn membership() -> Membership<u64, PeerNode> {
    let nodes: BTreeMap<u64, PeerNode> = (1..=3)
        .map(|n| {
            (
                n,
                PeerNode {
                    name: format!("node-{n}"),
                    ..PeerNode::default()
                },
            )
        })
        .collect();
    Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes)
}

#[tokio::test]
async fn snapshot_round_trip_between_nodes() {
    let mut leader = Harness::new();
    leader
        .sm
        .apply([Entry {
            log_id: log_id(1),
            payload: EntryPayload::Membership(membership()),
        }])
        .await
        .expect("membership");
    leader.next_index = 2;
    for id in 0..50 {
        leader.run(create(id, 10_000 + u64::from(id), T0)).await;
    }
    let snapshot = leader
        .sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(51)));
    assert_eq!(snapshot.meta.last_membership.log_id(), &Some(log_id(1)));

    // openraft keeps only the meta of a built snapshot; the data is in the file, which is what
    // followers are sent.
    assert!(snapshot.snapshot.get_ref().is_empty());
    let current = leader.current_snapshot("a snapshot").await;
    assert_eq!(current.meta, snapshot.meta);

    // The streamed encoding is exactly a `SessionSnapshot`, sessions ordered by id.
    let decoded: SessionSnapshot =
        proto::decode(current.snapshot.get_ref()).expect("snapshot data decodes");
    assert_eq!(decoded.sessions.len(), 50);
    assert!(decoded.sessions.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(decoded.last_applied, Some(log_id(51)));

    // Writes after the snapshot do not leak into it.
    leader.run(create(200, 10, T0)).await;
    let later = leader.current_snapshot("a snapshot").await;
    assert_eq!(later.meta, snapshot.meta);
    assert_eq!(later.snapshot.get_ref(), current.snapshot.get_ref());

    let mut follower = Harness::new();
    follower.run(create(99, 1, T0)).await; // replaced by the snapshot
    let mut receiving = follower.sm.begin_receiving_snapshot().await.expect("begin");
    receiving
        .get_mut()
        .extend_from_slice(current.snapshot.get_ref());
    follower
        .sm
        .install_snapshot(&current.meta, receiving)
        .await
        .expect("install");
    let (applied, installed_membership) = follower.sm.applied_state().await.expect("state");
    assert_eq!(applied, Some(log_id(51)));
    assert_eq!(installed_membership.membership(), &membership());
    assert_eq!(follower.sm.reader().get(&sid(99)), None);
    assert_eq!(follower.sm.reader().len(), 50);
    assert_eq!(
        follower.sm.reader().expired_at(T0 + 10_001, 100),
        vec![sid(0), sid(1)]
    );
    let follower_current = follower
        .current_snapshot("installed snapshot is current")
        .await;
    assert_eq!(follower_current.meta, current.meta);

    // Damaged snapshot data is refused, and the state is left alone.
    let digest = follower.sm.reader().digest();
    let mut bad = follower.sm.begin_receiving_snapshot().await.expect("begin");
    bad.get_mut()
        .extend_from_slice(&current.snapshot.get_ref()[..10]);
    assert!(
        follower
            .sm
            .install_snapshot(&current.meta, bad)
            .await
            .is_err()
    );
    assert_eq!(follower.sm.reader().digest(), digest);
}

#[tokio::test]
async fn restart_from_snapshot_and_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let commands: Vec<SessionCommand> = (1..=10u8)
        .map(|i| match i % 3 {
            0 => put(i - 1, r#"{"p":1}"#, Some(1), T0 + u64::from(i)),
            _ => create(i, 60_000, T0 + u64::from(i)),
        })
        .collect();
    let entries: Vec<Entry> = commands
        .into_iter()
        .enumerate()
        .map(|(i, c)| normal(i as u64 + 1, c))
        .collect();

    let (digest_before, len_before) = {
        let (mut log, mut sm) = open_storage(dir.path()).expect("open");
        log.blocking_append(entries.clone()).await.expect("append");
        sm.apply(entries[..6].to_vec()).await.expect("apply 1..=6");
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("snapshot at 6");
        sm.apply(entries[6..].to_vec()).await.expect("apply 7..=10");
        log.save_committed(Some(log_id(10)))
            .await
            .expect("committed");
        (sm.reader().digest(), sm.reader().len())
    };

    let (mut log, mut sm) = open_storage(dir.path()).expect("reopen");
    let (applied, _) = sm.applied_state().await.expect("state");
    assert_eq!(applied, Some(log_id(6)), "restarts from the snapshot");
    // What openraft does at start: re-apply the committed log after the snapshot.
    let committed = log
        .read_committed()
        .await
        .expect("committed")
        .expect("some");
    let replay = log
        .try_get_log_entries(7..=committed.index)
        .await
        .expect("read log");
    assert_eq!(replay, entries[6..].to_vec());
    sm.apply(replay).await.expect("replay");
    assert_eq!(sm.reader().digest(), digest_before);
    assert_eq!(sm.reader().len(), len_before);
    assert_eq!(sm.reader().last_applied_index(), Some(10));
}

/// With the leader's appends pipelined, an entry is applied only once the local log has it on
/// disk: nothing is answered or read before that.
#[tokio::test]
async fn entries_are_applied_only_once_synced() {
    use crate::raft::durable::Durability;
    let dir = tempfile::tempdir().expect("tempdir");
    let durable = Durability::new(Some(log_id(1)));
    durable.start_pipelining();
    let mut sm = SessionStateMachine::open(dir.path())
        .expect("open")
        .apply_when_synced(durable.clone());
    let reader = sm.reader();
    // Already on disk: applied at once.
    sm.apply([normal(1, create(1, 60_000, T0))])
        .await
        .expect("apply");
    assert!(reader.get(&sid(1)).is_some());

    let applying = tokio::spawn(async move {
        sm.apply([normal(2, create(2, 60_000, T0))])
            .await
            .map(|_| ())
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!applying.is_finished(), "applied before it was synced");
    assert!(reader.get(&sid(2)).is_none());
    durable.synced(Some(log_id(2)));
    tokio::time::timeout(std::time::Duration::from_secs(5), applying)
        .await
        .expect("applied once synced")
        .expect("joined")
        .expect("apply");
    assert!(reader.get(&sid(2)).is_some());
}

/// The committed golden files of session commands (`proto/tests/golden/command_*.bin`).
fn golden_commands() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/tests/golden");
    let mut files: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|entry| {
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with("command_") && !name.starts_with("command_response")
                })
                .filter_map(|entry| std::fs::read(entry.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

proptest::proptest! {
    /// Golden commands with bytes changed, inserted and cut: whatever still decodes is applied to two
    /// replicas, which never panic and always answer and end alike (the state machine's promise for
    /// any entry a leader could have committed).
    #[test]
    fn fuzz_mutated_commands_apply_alike_on_every_replica(
        pick in proptest::prelude::any::<proptest::sample::Index>(),
        flips in proptest::collection::vec(
            (proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()),
            0..6,
        ),
        insert in proptest::option::of((
            proptest::prelude::any::<proptest::sample::Index>(),
            proptest::collection::vec(proptest::prelude::any::<u8>(), 1..8),
        )),
    ) {
        let samples = golden_commands();
        proptest::prop_assume!(!samples.is_empty());
        let mut bytes = pick.get(&samples).clone();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Some((at, extra)) = insert {
            let i = at.index(bytes.len() + 1);
            bytes.splice(i..i, extra);
        }
        let Ok(command) = proto::decode::<SessionCommand>(&bytes) else {
            return Ok(());
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let (first, second) = runtime.block_on(async {
            let mut a = Harness::new();
            let mut b = Harness::new();
            // Something to act on: the ids the golden files use are 1..=9 repeated.
            for n in 1..=9 {
                let seed = SessionCommand::Create {
                    id: SessionId::from_bytes([n; 16]),
                    data: "{}".into(),
                    ttl_ms: 60_000,
                    now_ms: T0,
                };
                a.run(seed.clone()).await;
                b.run(seed).await;
            }
            let answers = (a.run(command.clone()).await, b.run(command).await);
            assert_eq!(a.sm.reader().digest(), b.sm.reader().digest());
            answers
        });
        proptest::prop_assert_eq!(first, second);
    }
}
