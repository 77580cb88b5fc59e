//! The replicated session store: openraft's `RaftStateMachine` over an in-memory map of
//! [`SessionRecord`]s, with snapshots persisted under `<data_dir>/snapshot/`.
//!
//! Sessions live in persistent maps (`imbl::OrdMap`) behind a `RwLock`. Building a snapshot
//! clones the map under the read lock — O(1), the tree is shared — and serializes the clone with
//! no lock held, so writes keep flowing while a snapshot is encoded and written.
//!
//! Only snapshots are persisted; after a restart the state machine starts from the last
//! snapshot and openraft re-applies the log from there.

use std::collections::hash_map::DefaultHasher;
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use imbl::{OrdMap, OrdSet};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError,
};
use proto::raft::{
    CommandResponse, Entry, LogId, SessionCommand, SessionId, SessionRecord, SessionSnapshot,
    SnapshotMeta, StoredMembership, TypeConfig,
};
use serde::Serialize;
use serde::ser::SerializeSeq;
use tokio::sync::broadcast;

use super::RaftStorageError;
use super::durable::Durability;

/// Name of the snapshot file inside the snapshot directory.
pub const SNAPSHOT_FILE: &str = "current.snap";
const SNAPSHOT_TEMP_FILE: &str = "current.snap.tmp";

/// How many expiry events a slow subscriber may fall behind before it misses some.
const EXPIRED_EVENTS_CAPACITY: usize = 256;

/// Sessions removed by one applied `Expire` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredEvent {
    /// Index of the log entry that expired them.
    pub log_index: u64,
    /// The sessions removed (never empty).
    pub ids: Vec<SessionId>,
}

/// The session state machine of one node. openraft owns it; the rest of the program reads
/// through a [`SessionReader`].
pub struct SessionStateMachine {
    shared: Arc<Shared>,
    /// Entries are applied only once the local log has them on disk (see `super::durable`).
    durable: Option<Durability>,
}

/// A cheap, cloneable read handle on the applied session state.
#[derive(Clone)]
pub struct SessionReader {
    shared: Arc<Shared>,
}

/// Builds snapshots from a point-in-time copy of the state (see the module docs).
pub struct SessionSnapshotBuilder {
    shared: Arc<Shared>,
}

struct Shared {
    state: RwLock<SessionState>,
    snapshot_dir: PathBuf,
    /// Meta of the snapshot file in `snapshot_dir`, if any. Locked only briefly.
    current_snapshot: Mutex<Option<SnapshotMeta>>,
    /// Held (on blocking threads only) while the snapshot file is written or read, so a
    /// reader never sees the file change under it.
    snapshot_io: Mutex<()>,
    snapshot_seq: AtomicU64,
    expired_tx: broadcast::Sender<ExpiredEvent>,
    /// Session writes applied since the process started (a batch counts each of its commands).
    writes_applied: AtomicU64,
    /// `writes_applied` when the latest snapshot was taken or installed.
    writes_at_snapshot: AtomicU64,
    /// Sessions in the latest snapshot taken, installed or loaded at start.
    sessions_at_snapshot: AtomicU64,
    /// Snapshots taken or installed since the process started.
    snapshot_marks: AtomicU64,
}

/// The applied state: sessions plus what openraft needs to know about the applied log.
#[derive(Clone, Default)]
struct SessionState {
    /// Records behind an `Arc`: while a snapshot holds a copy of the map, a write copies the tree
    /// nodes on its path, and those copies then only bump reference counts instead of duplicating
    /// every record's data (64 records of 1 KiB per leaf, at every write).
    sessions: OrdMap<SessionId, Arc<SessionRecord>>,
    /// `(expires_at_ms, id)` of every session, so the expiry scan reads only expired ones.
    by_expiry: OrdSet<(u64, SessionId)>,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
}

impl SessionState {
    fn from_snapshot(snapshot: SessionSnapshot) -> Self {
        let mut state = SessionState {
            last_applied: snapshot.last_applied,
            last_membership: snapshot.last_membership,
            ..SessionState::default()
        };
        for record in snapshot.sessions {
            state.upsert(record);
        }
        state
    }

    fn upsert(&mut self, record: SessionRecord) {
        let key = (record.expires_at_ms(), record.id);
        if let Some(old) = self.sessions.insert(record.id, Arc::new(record)) {
            let old_key = (old.expires_at_ms(), old.id);
            if old_key != key {
                self.by_expiry.remove(&old_key);
            }
        }
        self.by_expiry.insert(key);
    }

    fn remove(&mut self, id: &SessionId) -> Option<Arc<SessionRecord>> {
        let old = self.sessions.remove(id)?;
        self.by_expiry.remove(&(old.expires_at_ms(), old.id));
        Some(old)
    }

    /// Applies one command. Deterministic: depends only on the state and the command.
    fn apply_command(&mut self, command: SessionCommand) -> CommandResponse {
        match command {
            SessionCommand::Create {
                id,
                data,
                ttl_ms,
                now_ms,
            } => self.create(id, data, ttl_ms, now_ms),
            SessionCommand::CreateWithin {
                id,
                data,
                ttl_ms,
                now_ms,
                max_active,
            } => {
                // Sessions not yet removed by expiry count too: the count is the same on every
                // replica at this index, which a count of live sessions at `now_ms` also is, but
                // this one costs nothing.
                if self.sessions.len() as u64 >= max_active {
                    return CommandResponse::TooManySessions { max_active };
                }
                self.create(id, data, ttl_ms, now_ms)
            }
            SessionCommand::Put {
                id,
                data,
                expected_version,
                ttl_ms,
                now_ms,
            } => {
                let Some(current) = self.sessions.get(&id).filter(|r| !r.is_expired_at(now_ms))
                else {
                    return CommandResponse::NotFound;
                };
                if let Some(expected) = expected_version
                    && expected != current.version
                {
                    return CommandResponse::VersionMismatch {
                        current: current.version,
                    };
                }
                let record = SessionRecord {
                    id,
                    data,
                    version: current.version.saturating_add(1),
                    created_ms: current.created_ms,
                    last_access_ms: current.last_access_ms.max(now_ms),
                    ttl_ms: ttl_ms.unwrap_or(current.ttl_ms),
                };
                self.upsert(record.clone());
                CommandResponse::Updated(record)
            }
            SessionCommand::Delete { id } => match self.remove(&id) {
                Some(_) => CommandResponse::Deleted,
                None => CommandResponse::NotFound,
            },
            SessionCommand::Touch { touches } => {
                let mut count = 0;
                for (id, access_ms) in touches {
                    // Only a later access of a still-live session counts: a touch never
                    // revives a session that had expired before the access.
                    let Some(current) = self.sessions.get(&id) else {
                        continue;
                    };
                    if access_ms <= current.last_access_ms || current.is_expired_at(access_ms) {
                        continue;
                    }
                    let record = SessionRecord {
                        last_access_ms: access_ms,
                        ..SessionRecord::clone(current)
                    };
                    self.upsert(record);
                    count += 1;
                }
                CommandResponse::Touched { count }
            }
            SessionCommand::Expire { ids, now_ms } => {
                let mut removed = Vec::new();
                for id in ids {
                    if self
                        .sessions
                        .get(&id)
                        .is_some_and(|r| r.is_expired_at(now_ms))
                    {
                        self.remove(&id);
                        removed.push(id);
                    }
                }
                CommandResponse::Expired { ids: removed }
            }
            SessionCommand::Import { records, now_ms } => {
                let (mut count, mut skipped) = (0, 0);
                for record in records {
                    if self
                        .sessions
                        .get(&record.id)
                        .is_some_and(|r| !r.is_expired_at(now_ms))
                    {
                        skipped += 1;
                        continue;
                    }
                    self.upsert(SessionRecord {
                        last_access_ms: now_ms,
                        ..record
                    });
                    count += 1;
                }
                CommandResponse::Imported { count, skipped }
            }
            SessionCommand::Batch(commands) => CommandResponse::Batch(
                commands
                    .into_iter()
                    .map(|command| match command {
                        // Not decodable (see `proto::raft`), so only code could build one; it is
                        // refused rather than applied recursively.
                        SessionCommand::Batch(_) => CommandResponse::Refused {
                            reason: "a batch inside a batch".to_owned(),
                        },
                        command => self.apply_command(command),
                    })
                    .collect(),
            ),
        }
    }

    fn create(&mut self, id: SessionId, data: String, ttl_ms: u64, now_ms: u64) -> CommandResponse {
        // An expired session that the leader has not removed yet does not block its id.
        if self
            .sessions
            .get(&id)
            .is_some_and(|r| !r.is_expired_at(now_ms))
        {
            return CommandResponse::AlreadyExists;
        }
        let record = SessionRecord {
            id,
            data,
            version: 1,
            created_ms: now_ms,
            last_access_ms: now_ms,
            ttl_ms,
        };
        self.upsert(record.clone());
        CommandResponse::Created(record)
    }
}

/// Why an applied entry (or a command in its batch) was refused, if it was.
fn refusal(response: &CommandResponse) -> Option<&str> {
    match response {
        CommandResponse::Refused { reason } => Some(reason),
        CommandResponse::Batch(responses) => responses.iter().find_map(|response| match response {
            CommandResponse::Refused { reason } => Some(reason.as_str()),
            _ => None,
        }),
        _ => None,
    }
}

/// The session ids an applied entry expired, including those expired inside a batch.
fn expired_ids(response: &CommandResponse, into: &mut Vec<SessionId>) {
    match response {
        CommandResponse::Expired { ids } => into.extend_from_slice(ids),
        CommandResponse::Batch(responses) => {
            for response in responses {
                expired_ids(response, into);
            }
        }
        _ => {}
    }
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, SessionState> {
        // Nothing panics while holding the lock; if something did, the state it guards was
        // changed by whole records only, so it is still consistent.
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, SessionState> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn current_snapshot(&self) -> std::sync::MutexGuard<'_, Option<SnapshotMeta>> {
        self.current_snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn snapshot_path(&self) -> PathBuf {
        self.snapshot_dir.join(SNAPSHOT_FILE)
    }

    /// Writes a snapshot file durably (temp file, fsync, rename, fsync of the directory); `write`
    /// fills the temp file and returns the size of the snapshot data. With `only_if_newer`, keeps
    /// an existing snapshot that covers more of the log (and returns `None`).
    /// Blocking: call from a blocking thread.
    fn persist_snapshot(
        &self,
        meta: &SnapshotMeta,
        only_if_newer: bool,
        write: impl FnOnce(&mut std::fs::File) -> Result<u64, io::Error>,
    ) -> Result<Option<u64>, io::Error> {
        let _io = self
            .snapshot_io
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if only_if_newer
            && let Some(existing) = self.current_snapshot().as_ref()
            && existing.last_log_id > meta.last_log_id
        {
            return Ok(None);
        }
        let temp = self.snapshot_dir.join(SNAPSHOT_TEMP_FILE);
        let mut file = std::fs::File::create(&temp)?;
        let size = write(&mut file)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, self.snapshot_path())?;
        std::fs::File::open(&self.snapshot_dir)?.sync_all()?;
        *self.current_snapshot() = Some(meta.clone());
        Ok(Some(size))
    }

    /// The current snapshot's meta and data, read from its file. Blocking: call from a
    /// blocking thread.
    fn load_current_snapshot(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, String> {
        let _io = self
            .snapshot_io
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(meta) = self.current_snapshot().clone() else {
            return Ok(None);
        };
        let path = self.snapshot_path();
        let mut bytes =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let (snapshot_id, data) = proto::raft::decode_snapshot_file(&bytes)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if snapshot_id != meta.snapshot_id {
            return Err(format!(
                "{} holds snapshot {snapshot_id}, expected {}",
                path.display(),
                meta.snapshot_id
            ));
        }
        let header_len = bytes.len() - data.len();
        bytes.drain(..header_len);
        Ok(Some((meta, bytes)))
    }
}

impl SessionStateMachine {
    /// Opens the state machine, loading the snapshot in `snapshot_dir` if there is one.
    pub fn open(snapshot_dir: &Path) -> Result<Self, RaftStorageError> {
        std::fs::create_dir_all(snapshot_dir).map_err(|source| RaftStorageError::CreateDir {
            path: snapshot_dir.to_path_buf(),
            source,
        })?;
        // A temp file is a snapshot write that did not finish; the previous file still stands.
        let temp = snapshot_dir.join(SNAPSHOT_TEMP_FILE);
        if temp.exists() {
            std::fs::remove_file(&temp).map_err(|source| RaftStorageError::ReadSnapshot {
                path: temp.clone(),
                source,
            })?;
        }
        let path = snapshot_dir.join(SNAPSHOT_FILE);
        let (state, meta) = match std::fs::read(&path) {
            Ok(bytes) => {
                let corrupt = |reason: String| RaftStorageError::CorruptSnapshot {
                    path: path.clone(),
                    reason,
                };
                let (snapshot_id, data) = proto::raft::decode_snapshot_file(&bytes)
                    .map_err(|e| corrupt(e.to_string()))?;
                let snapshot: SessionSnapshot =
                    proto::decode(data).map_err(|e| corrupt(e.to_string()))?;
                let meta = SnapshotMeta {
                    last_log_id: snapshot.last_applied,
                    last_membership: snapshot.last_membership.clone(),
                    snapshot_id,
                };
                tracing::info!(
                    path = %path.display(),
                    sessions = snapshot.sessions.len(),
                    last_applied = ?snapshot.last_applied,
                    "loaded session snapshot"
                );
                (SessionState::from_snapshot(snapshot), Some(meta))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (SessionState::default(), None),
            Err(source) => return Err(RaftStorageError::ReadSnapshot { path, source }),
        };
        let (expired_tx, _) = broadcast::channel(EXPIRED_EVENTS_CAPACITY);
        let sessions_at_snapshot = state.sessions.len() as u64;
        Ok(SessionStateMachine {
            shared: Arc::new(Shared {
                state: RwLock::new(state),
                snapshot_dir: snapshot_dir.to_path_buf(),
                current_snapshot: Mutex::new(meta),
                snapshot_io: Mutex::new(()),
                snapshot_seq: AtomicU64::new(0),
                expired_tx,
                writes_applied: AtomicU64::new(0),
                writes_at_snapshot: AtomicU64::new(0),
                sessions_at_snapshot: AtomicU64::new(sessions_at_snapshot),
                snapshot_marks: AtomicU64::new(0),
            }),
            durable: None,
        })
    }

    /// Applies entries only once `durable` says the local log has them on disk.
    pub fn apply_when_synced(mut self, durable: Durability) -> Self {
        self.durable = Some(durable);
        self
    }

    /// A read handle for the rest of the program.
    pub fn reader(&self) -> SessionReader {
        SessionReader {
            shared: self.shared.clone(),
        }
    }
}

impl SessionReader {
    /// The session with this id, if present (it may be expired but not yet removed).
    pub fn get(&self, id: &SessionId) -> Option<SessionRecord> {
        self.shared
            .read()
            .sessions
            .get(id)
            .map(|record| SessionRecord::clone(record))
    }

    /// The session with this id if present and not expired at `now_ms`.
    pub fn get_live(&self, id: &SessionId, now_ms: u64) -> Option<SessionRecord> {
        self.get(id).filter(|r| !r.is_expired_at(now_ms))
    }

    /// Every session and the applied index they are consistent with, from one instant. The map is
    /// cloned under the read lock (O(1), the tree is shared) and walked without it.
    pub fn export(&self) -> (Option<u64>, Vec<SessionRecord>) {
        let (index, sessions) = {
            let state = self.shared.read();
            (
                state.last_applied.map(|log_id| log_id.index),
                state.sessions.clone(),
            )
        };
        (
            index,
            sessions
                .values()
                .map(|record| SessionRecord::clone(record))
                .collect(),
        )
    }

    /// Number of sessions held (including expired ones not yet removed).
    pub fn len(&self) -> usize {
        self.shared.read().sessions.len()
    }

    /// True when no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `limit` ids of sessions expired at `now_ms`, soonest-expired first (for the
    /// leader's expiry proposer).
    pub fn expired_at(&self, now_ms: u64, limit: usize) -> Vec<SessionId> {
        self.shared
            .read()
            .by_expiry
            .iter()
            .take_while(|(expires_at, _)| *expires_at <= now_ms)
            .take(limit)
            .map(|(_, id)| *id)
            .collect()
    }

    /// Order-independent hash of every record: equal on two nodes (of the same build) that
    /// applied the same log.
    pub fn digest(&self) -> u64 {
        // Clone under the lock (O(1)), hash outside it.
        let sessions = self.shared.read().sessions.clone();
        sessions.values().fold(0u64, |sum, record| {
            let mut hasher = DefaultHasher::new();
            record.hash(&mut hasher);
            sum.wrapping_add(hasher.finish())
        })
    }

    /// Index of the last applied log entry (`None` before the first).
    pub fn last_applied_index(&self) -> Option<u64> {
        self.shared.read().last_applied.map(|id| id.index)
    }

    /// Session writes applied since the latest snapshot was taken or installed (a batch counts
    /// each of its commands); what the snapshot policy looks at.
    pub fn writes_since_snapshot(&self) -> u64 {
        let applied = self.shared.writes_applied.load(Ordering::Relaxed);
        applied.saturating_sub(self.shared.writes_at_snapshot.load(Ordering::Relaxed))
    }

    /// Sessions held by the latest snapshot taken or installed (or loaded at start): what the
    /// snapshot policy scales with.
    pub fn sessions_at_snapshot(&self) -> u64 {
        self.shared.sessions_at_snapshot.load(Ordering::Relaxed)
    }

    /// Changes each time a snapshot is taken or installed.
    pub fn snapshot_mark(&self) -> u64 {
        self.shared.snapshot_marks.load(Ordering::Relaxed)
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId> {
        self.shared.read().last_applied
    }

    /// The membership in effect at the last applied entry.
    pub fn last_membership(&self) -> StoredMembership {
        self.shared.read().last_membership.clone()
    }

    /// Receives every applied `Expire` that removed at least one session.
    pub fn subscribe_expired(&self) -> broadcast::Receiver<ExpiredEvent> {
        self.shared.expired_tx.subscribe()
    }
}

/// Serializes exactly like [`SessionSnapshot`] but borrows the sessions from the map, so a
/// snapshot is encoded without first copying every record into a `Vec`.
#[derive(Serialize)]
struct SnapshotView<'a> {
    last_applied: &'a Option<LogId>,
    last_membership: &'a StoredMembership,
    sessions: SessionsSeq<'a>,
}

struct SessionsSeq<'a>(&'a OrdMap<SessionId, Arc<SessionRecord>>);

impl Serialize for SessionsSeq<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for record in self.0.values() {
            seq.serialize_element(record)?;
        }
        seq.end()
    }
}

/// Runs `work` on a thread of its own at a lower CPU priority (nice 10), and waits for it.
///
/// Serializing the whole store takes a core for a while (about half a second per 100 MB here); at
/// normal priority it competes with request handling and shows up as a latency spike on every
/// write of the moment. At nice 10 the scheduler prefers the request threads, and the snapshot uses
/// what they leave.
async fn in_background<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("snapshot".to_string())
        .spawn(move || {
            lower_this_threads_priority();
            let _ = tx.send(work());
        })
        .map_err(|e| format!("cannot start the snapshot thread: {e}"))?;
    rx.await
        .map_err(|_| "the snapshot thread failed".to_string())
}

/// Makes the calling thread nice 10 (on Linux, priority is per thread); where that fails, the work
/// simply runs at normal priority.
pub(super) fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority takes plain integers and changes only the calling thread's nice value.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

/// A snapshot file is written and synced this many bytes at a time.
const SNAPSHOT_SYNC_EVERY_BYTES: usize = 1024 * 1024;

/// Writes `state` as a snapshot file into `file`, encoding it piece by piece and syncing each
/// piece: one sync of a 100 MB file would queue the Raft log's own small syncs behind it on the
/// same disk and stall every write for the duration, and the whole snapshot is never held in
/// memory as one buffer.
fn write_snapshot(
    file: &mut std::fs::File,
    meta: &SnapshotMeta,
    state: &SessionState,
) -> Result<u64, io::Error> {
    let view = SnapshotView {
        last_applied: &state.last_applied,
        last_membership: &state.last_membership,
        sessions: SessionsSeq(&state.sessions),
    };
    proto::raft::write_snapshot_file(
        file,
        &meta.snapshot_id,
        &view,
        SNAPSHOT_SYNC_EVERY_BYTES,
        |file| file.sync_data(),
    )
}

/// Writes received snapshot `data` into `file`, synced piece by piece (see [`write_snapshot`]).
fn write_received_snapshot(
    file: &mut std::fs::File,
    meta: &SnapshotMeta,
    data: &[u8],
) -> Result<u64, io::Error> {
    proto::raft::write_snapshot_file_bytes(
        file,
        &meta.snapshot_id,
        data,
        SNAPSHOT_SYNC_EVERY_BYTES,
        |file| file.sync_data(),
    )
}

fn snapshot_error(meta: Option<&SnapshotMeta>, reason: impl ToString) -> StorageError<u64> {
    StorageIOError::write_snapshot(meta.map(|m| m.signature()), AnyError::error(reason)).into()
}

impl RaftSnapshotBuilder<TypeConfig> for SessionSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        // Point-in-time copy: O(1) for the persistent maps; the lock is released at once.
        let state = {
            let state = self.shared.read();
            // Read under the lock, which `apply` holds while it counts.
            let writes = self.shared.writes_applied.load(Ordering::Relaxed);
            self.shared
                .writes_at_snapshot
                .store(writes, Ordering::Relaxed);
            self.shared
                .sessions_at_snapshot
                .store(state.sessions.len() as u64, Ordering::Relaxed);
            self.shared.snapshot_marks.fetch_add(1, Ordering::Relaxed);
            state.clone()
        };
        let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match state.last_applied {
            Some(id) => format!(
                "{}-{}-{}-{seq}",
                id.leader_id.term, id.leader_id.node_id, id.index
            ),
            None => format!("empty-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.last_membership.clone(),
            snapshot_id,
        };
        let shared = self.shared.clone();
        let task_meta = meta.clone();
        let written = in_background(move || {
            shared.persist_snapshot(&task_meta, true, |file| {
                write_snapshot(file, &task_meta, &state)
            })
        })
        .await
        .map_err(|e| snapshot_error(Some(&meta), e))?
        .map_err(|e| {
            snapshot_error(
                Some(&meta),
                format!(
                    "cannot write {}: {e}",
                    self.shared.snapshot_path().display()
                ),
            )
        })?;
        match written {
            Some(bytes) => {
                tracing::info!(snapshot_id = %meta.snapshot_id, bytes, "built session snapshot")
            }
            None => {
                tracing::info!(snapshot_id = %meta.snapshot_id, "kept a newer snapshot already on disk")
            }
        }
        // openraft 0.9 keeps only the meta of a snapshot it asked for (followers are sent the file,
        // through `get_current_snapshot`), so the data is not read back into memory here.
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
    }
}

impl RaftStateMachine<TypeConfig> for SessionStateMachine {
    type SnapshotBuilder = SessionSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), StorageError<u64>> {
        let state = self.shared.read();
        Ok((state.last_applied, state.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let (Some(durable), Some(last)) = (&self.durable, entries.last()) {
            durable
                .wait_for(last.log_id)
                .await
                .map_err(|e| StorageIOError::write_state_machine(&e))?;
        }
        let mut responses = Vec::with_capacity(entries.len());
        let mut events = Vec::new();
        {
            let mut state = self.shared.write();
            for entry in entries {
                state.last_applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => CommandResponse::Internal,
                    EntryPayload::Normal(command) => {
                        let writes = match &command {
                            SessionCommand::Batch(commands) => commands.len() as u64,
                            _ => 1,
                        };
                        self.shared
                            .writes_applied
                            .fetch_add(writes, Ordering::Relaxed);
                        state.apply_command(command)
                    }
                    EntryPayload::Membership(membership) => {
                        state.last_membership =
                            StoredMembership::new(Some(entry.log_id), membership);
                        CommandResponse::Internal
                    }
                };
                if let Some(reason) = refusal(&response) {
                    // Every replica refuses the same entry alike and moves on: logged once per node
                    // per entry, never a loop (the entry is applied, not retried, at a restart).
                    tracing::warn!(
                        index = entry.log_id.index,
                        "log entry not applied: {reason}"
                    );
                }
                let mut ids = Vec::new();
                expired_ids(&response, &mut ids);
                if !ids.is_empty() {
                    events.push(ExpiredEvent {
                        log_index: entry.log_id.index,
                        ids,
                    });
                }
                responses.push(response);
            }
        }
        for event in events {
            // No subscriber is fine: nobody counts expiries then.
            let _ = self.shared.expired_tx.send(event);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SessionSnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let shared = self.shared.clone();
        let task_meta = meta.clone();
        // Decoding, writing and indexing a large snapshot is blocking work.
        let new_state = tokio::task::spawn_blocking(move || {
            let decoded: SessionSnapshot =
                proto::decode(&data).map_err(|e| format!("undecodable snapshot data: {e}"))?;
            if decoded.last_applied != task_meta.last_log_id
                || decoded.last_membership != task_meta.last_membership
            {
                return Err(format!(
                    "snapshot data ends at {:?} but its meta says {:?}",
                    decoded.last_applied, task_meta.last_log_id
                ));
            }
            // Durable first: a crash after this restarts from the installed snapshot.
            shared
                .persist_snapshot(&task_meta, false, |file| {
                    write_received_snapshot(file, &task_meta, &data)
                })
                .map_err(|e| format!("cannot write {}: {e}", shared.snapshot_path().display()))?;
            Ok(SessionState::from_snapshot(decoded))
        })
        .await
        .map_err(|e| format!("snapshot task failed: {e}"))
        .and_then(|result| result)
        .map_err(|reason| snapshot_error(Some(meta), reason))?;
        self.shared
            .sessions_at_snapshot
            .store(new_state.sessions.len() as u64, Ordering::Relaxed);
        *self.shared.write() = new_state;
        let writes = self.shared.writes_applied.load(Ordering::Relaxed);
        self.shared
            .writes_at_snapshot
            .store(writes, Ordering::Relaxed);
        self.shared.snapshot_marks.fetch_add(1, Ordering::Relaxed);
        tracing::info!(snapshot_id = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "installed session snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let shared = self.shared.clone();
        let loaded = tokio::task::spawn_blocking(move || shared.load_current_snapshot())
            .await
            .map_err(|e| format!("snapshot task failed: {e}"))
            .and_then(|result| result)
            .map_err(|reason| {
                StorageError::from(StorageIOError::read_snapshot(None, AnyError::error(reason)))
            })?;
        Ok(loaded.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

impl Debug for SessionStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStateMachine")
            .field("snapshot_dir", &self.shared.snapshot_dir)
            .finish_non_exhaustive()
    }
}

impl Debug for SessionReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionReader").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
