//! The durable Raft log: openraft's `RaftLogStorage` on top of the `raft-log` crate.
//!
//! `raft-log` keeps a chunked write-ahead log (`<data_dir>/raft-log/r-*.wal`) whose records each
//! carry a CRC-32. Writes go to an in-memory buffer; `flush(true, callback)` hands them to a
//! background worker thread that writes, fsyncs, then calls the callback. Every method here that
//! openraft treats as durable (append, vote, truncate, purge) is acknowledged only after that
//! fsync, with one flush per call: a batch of entries costs one fsync, not one per entry.
//!
//! Damage found on open:
//! - a torn tail (the last record cut short by a crash, or zero-filled by the file system) is
//!   cut off by `raft-log` itself, so the log reopens at the last complete record — those tail
//!   entries were never acknowledged, because acknowledgement waits for the fsync (damage
//!   inside the very last record can look the same, and is treated the same);
//! - anything else (a checksum mismatch, garbage after a bad record, a record of unknown type,
//!   a gap between chunk files) fails [`LogStore::open`] with an error naming the directory.
//!
//! Each payload starts with its length and the length's bitwise complement, so a damaged length
//! is reported as damage instead of being taken for a torn tail (which would silently drop every
//! later record). Entries read back are checked against the log id they are stored under.
//!
//! Appends of the entries this node proposed as leader are *pipelined*: openraft hears of them at
//! once and the fsync runs in the background, so replication starts without waiting for it. The
//! [`Durability`] watermark then keeps the leader's copy out of every quorum until it is synced;
//! see [`super::durable`] for why that is safe. Every other append (a follower's) is acknowledged
//! after its fsync, as before. On open, every chunk file is synced first: entries a killed
//! process left in the page cache count as durable only once they are on disk.
//!
//! `raft-log` refuses appends that do not follow the last entry. openraft truncates before it
//! overwrites, so in a running node appends always follow; for the cases its conformance suite
//! exercises, an append skips entries at or below the purge point (already in the snapshot) and
//! one that starts inside the log replaces the log from that index.

use std::fmt::Debug;
use std::io::{self, Read};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, CommittedLeaderId, LeaderId, OptionalSend, RaftLogReader, StorageError,
    StorageIOError,
};
use proto::raft::{Entry, LogId, TypeConfig, Vote};
use raft_log::api::raft_log_writer::RaftLogWriter;
use raft_log::codeq::{Decode, Encode};
use raft_log::{RaftLog, Types};
use tokio::sync::oneshot;

use super::RaftStorageError;
use super::durable::Durability;

/// Largest encoded log entry accepted when reading the log back (a damaged length beyond it is
/// damage, not a reason to allocate). The HTTP layer keeps session data far below this.
const MAX_ENTRY_BYTES: u32 = 64 * 1024 * 1024;

/// Chunk files are closed at this size, so purged prefixes can be deleted file by file.
const CHUNK_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Read buffer used while replaying chunk files on open.
const REPLAY_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// In-memory cache of recent payloads; older entries are read back from the chunk files.
const PAYLOAD_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// The Raft log of one node, durable under `<data_dir>/raft-log/`.
///
/// Cheap to clone: clones share the same open log (openraft uses a clone as its log reader).
#[derive(Clone)]
pub struct LogStore {
    log: Arc<Mutex<RaftLog<WalTypes>>>,
    dir: Arc<PathBuf>,
    trash: Arc<super::trash::ChunkTrash>,
    durable: Durability,
    /// This node's Raft id, once [`LogStore::pipeline_as`] turned pipelining on.
    me: Arc<OnceLock<u64>>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("dir", &self.dir).finish()
    }
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, replaying it; see the module docs for damage.
    pub fn open(dir: &Path) -> Result<Self, RaftStorageError> {
        std::fs::create_dir_all(dir).map_err(|source| RaftStorageError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut config = raft_log::Config::new(dir.display());
        config.wal.chunk_max_size = Some(CHUNK_MAX_BYTES);
        config.wal.read_buffer_size = Some(REPLAY_BUFFER_BYTES);
        config.wal.truncate_incomplete_record = Some(true);
        // openraft 0.9 waits for each append's fsync before it issues the next one, so there is
        // never a second write to wait for: any batching wait is pure latency. Concurrent client
        // writes are batched before they reach Raft instead (see `super::batch`).
        config.wal.flush_batch_wait = Some(std::time::Duration::ZERO);
        config.log_cache_capacity = Some(PAYLOAD_CACHE_BYTES);
        let open_error = |source| RaftStorageError::OpenLog {
            path: dir.to_path_buf(),
            source,
        };
        sync_chunk_files(dir).map_err(open_error)?;
        let log = RaftLog::<WalTypes>::open(Arc::new(config)).map_err(open_error)?;
        let durable = Durability::new(log.log_state().last().map(|id| id.0));
        Ok(LogStore {
            log: Arc::new(Mutex::new(log)),
            dir: Arc::new(dir.to_path_buf()),
            trash: super::trash::ChunkTrash::open(dir),
            durable,
            me: Arc::new(OnceLock::new()),
        })
    }

    /// The directory holding the chunk files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How far the log is on disk; the network and the state machine wait on it.
    pub fn durability(&self) -> Durability {
        self.durable.clone()
    }

    /// Pipelines the appends of entries that node `id` (this node) proposes as leader: openraft
    /// hears of them before their fsync (see the module docs). Call once, before Raft starts.
    pub fn pipeline_as(&self, id: u64) {
        if self.me.set(id).is_ok() {
            self.durable.start_pipelining();
        }
    }

    /// Forgets that this node led: a committed vote for itself is saved again as a plain vote for
    /// itself in the same term, as a candidate's. Does nothing unless appends are pipelined
    /// ([`LogStore::pipeline_as`]); call on start, before Raft.
    ///
    /// openraft 0.9 resumes as leader, in the same term, a node that restarts with a committed vote
    /// for itself. With pipelined appends its log may have lost, with the machine, entries it had
    /// already sent to followers; going on in the same term it could then propose different entries
    /// under the same log ids, which the followers would take for the ones they hold. Restarting as a
    /// candidate instead makes it win a newer term first, which it can only do with a log as complete
    /// as a majority's. The term is kept: a vote for itself in the next term could outrank the leader
    /// the others elected meanwhile in that term (openraft orders votes of one term by node id) and
    /// force one more election. Returns whether the vote was changed.
    pub async fn step_down_on_restart(&self) -> Result<bool, StorageError<u64>> {
        let Some(&me) = self.me.get() else {
            return Ok(false);
        };
        let mut store = self.clone();
        let Some(vote) = store.read_vote().await? else {
            return Ok(false);
        };
        if !vote.is_committed() || vote.leader_id.node_id != me {
            return Ok(false);
        }
        store.save_vote(&Vote::new(vote.leader_id.term, me)).await?;
        Ok(true)
    }

    /// True when `entries` were proposed by this node as the leader of `vote`, its current vote:
    /// only those appends are pipelined.
    fn proposed_here(&self, vote: Option<&Vote>, entries: &[(WalLogId, WalPayload)]) -> bool {
        let (Some(me), Some(vote)) = (self.me.get(), vote) else {
            return false;
        };
        let leader = vote.leader_id;
        vote.is_committed()
            && leader.node_id == *me
            && entries
                .iter()
                .all(|(id, _)| id.0.leader_id.term == leader.term && id.0.leader_id.node_id == *me)
    }

    /// True when this node has never voted nor held a log entry (a fresh data dir).
    pub fn is_pristine(&self) -> io::Result<bool> {
        let log = self.lock()?;
        let state = log.log_state();
        Ok(state.vote().is_none() && state.last().is_none() && state.purged().is_none())
    }

    fn lock(&self) -> Result<MutexGuard<'_, RaftLog<WalTypes>>, io::Error> {
        // A poisoned lock means a panic inside raft-log while it changed its state: refuse to
        // go on with that state rather than serve what it holds.
        self.log
            .lock()
            .map_err(|_| io::Error::other("raft log lock poisoned by an earlier panic"))
    }

    /// Queues a synced flush of everything `log` holds; once it is on disk the watermark moves
    /// and `then` is told.
    fn sync(&self, log: &mut RaftLog<WalTypes>, then: Then) -> Result<(), io::Error> {
        let done = FlushDone {
            durable: self.durable.clone(),
            upto: log.log_state().last().map(|id| id.0),
            then,
        };
        log.flush(true, Some(done))
    }

    /// Queues a synced flush and waits for the fsync.
    async fn flush_and_wait(&self) -> Result<(), io::Error> {
        let (tx, rx) = oneshot::channel();
        self.sync(&mut *self.lock()?, Then::Notify(tx))?;
        rx.await
            .map_err(|_| io::Error::other("raft log flush worker stopped"))?
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<u64>> {
        let start = match range.start_bound() {
            Bound::Included(&n) => n,
            Bound::Excluded(&n) => n.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&n) => n.saturating_add(1),
            Bound::Excluded(&n) => n,
            Bound::Unbounded => u64::MAX,
        };
        if start >= end {
            return Ok(Vec::new());
        }
        let log = self.lock().map_err(|e| StorageIOError::read_logs(&e))?;
        let mut entries = Vec::new();
        for item in log.read(start, end) {
            let (log_id, payload) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let entry: Entry = proto::decode(&payload.0)
                .map_err(|e| StorageIOError::read_log_entry(log_id.0, &e))?;
            if entry.log_id != log_id.0 {
                return Err(StorageIOError::read_log_entry(
                    log_id.0,
                    AnyError::error(format!(
                        "entry stored under {} claims log id {}",
                        log_id.0, entry.log_id
                    )),
                )
                .into());
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let log = self.lock().map_err(|e| StorageIOError::read_logs(&e))?;
        let state = log.log_state();
        Ok(LogState {
            last_purged_log_id: state.purged().map(|id| id.0),
            last_log_id: state.last().map(|id| id.0),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError<u64>> {
        self.lock()
            .and_then(|mut log| log.save_vote(WalVote(*vote)).map(drop))
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.flush_and_wait()
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError<u64>> {
        let log = self.lock().map_err(|e| StorageIOError::read_vote(&e))?;
        Ok(log.log_state().vote().map(|v| v.0))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError<u64>> {
        // The committed id only lets a restart re-apply sooner. It is not flushed on its own: the
        // record waits in the log's buffer for the next append's flush, which writes and syncs it.
        // Waking the sync thread for it would cost a thread hand-off per write on every node.
        // A refusal is not fatal.
        let Some(committed) = committed else {
            return Ok(());
        };
        let result = self
            .lock()
            .and_then(|mut log| log.commit(WalLogId(committed)).map(drop));
        if let Err(e) = result {
            tracing::warn!(log_dir = %self.dir.display(), %committed, error = %e, "cannot record committed log id");
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<u64>> {
        let log = self.lock().map_err(|e| StorageIOError::read_logs(&e))?;
        Ok(log.log_state().committed().map(|id| id.0))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Encode before taking the lock, so readers wait only for the buffer copy.
        let records: Vec<(WalLogId, WalPayload)> = entries
            .into_iter()
            .map(|entry| (WalLogId(entry.log_id), WalPayload(proto::encode(&entry))))
            .collect();
        if let Some(err) = self.durable.failure() {
            return Err(StorageIOError::write_logs(&err).into());
        }
        let mut log = self.lock().map_err(|e| StorageIOError::write_logs(&e))?;
        let state = log.log_state();
        let pipelined = self.proposed_here(state.vote().map(|v| &v.0), &records);
        let purged_index = state.purged().map(|id| id.0.index);
        let last_index = state.last().map(|id| id.0.index);
        // Entries at or below the purge point are committed and already in the snapshot.
        let mut records = records
            .into_iter()
            .filter(|(id, _)| purged_index.is_none_or(|purged| id.0.index > purged))
            .peekable();
        // openraft truncates before it overwrites; an append that starts inside the log
        // replaces the log from there, as a plain map-backed store would.
        if let Some((first, _)) = records.peek()
            && last_index.is_some_and(|last| first.0.index <= last)
        {
            log.truncate(first.0.index)
                .map_err(|e| StorageIOError::write_logs(&e))?;
        }
        log.append(records)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // One synced flush per call. A follower's append is acknowledged by that flush's
        // callback; the leader's own is acknowledged now, and the watermark follows the flush.
        if pipelined {
            self.sync(&mut log, Then::Nothing)
                .map_err(|e| StorageIOError::write_logs(&e))?;
            drop(log);
            callback.log_io_completed(Ok(()));
        } else {
            self.sync(&mut log, Then::Appended(callback))
                .map_err(|e| StorageIOError::write_logs(&e))?;
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        {
            let mut log = self.lock().map_err(|e| StorageIOError::write_logs(&e))?;
            let last_index = log.log_state().last().map(|id| id.0.index);
            if last_index.is_none_or(|last| log_id.index > last) {
                return Ok(());
            }
            log.truncate(log_id.index)
                .map_err(|e| StorageIOError::write_logs(&e))?;
        }
        self.flush_and_wait()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        // The chunks this purge lets go of are freed by the trash, not by the log's sync worker.
        self.trash.keep_aside();
        self.lock()
            .and_then(|mut log| log.purge(WalLogId(log_id)).map(drop))
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush_and_wait()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.trash
            .clone()
            .collect_later(super::trash::COLLECT_AFTER);
        Ok(())
    }
}

/// The types `raft-log` stores for us.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WalTypes;

impl Types for WalTypes {
    type LogId = WalLogId;
    type LogPayload = WalPayload;
    type Vote = WalVote;
    type Callback = FlushDone;
    type UserData = ();

    fn log_index(log_id: &WalLogId) -> u64 {
        log_id.0.index
    }

    fn payload_size(payload: &WalPayload) -> u64 {
        payload.0.len() as u64
    }
}

/// A log id on disk: term, node id, index; 24 bytes big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct WalLogId(LogId);

impl Encode for WalLogId {
    fn encode<W: io::Write>(&self, mut w: W) -> Result<usize, io::Error> {
        w.write_all(&self.0.leader_id.term.to_be_bytes())?;
        w.write_all(&self.0.leader_id.node_id.to_be_bytes())?;
        w.write_all(&self.0.index.to_be_bytes())?;
        Ok(24)
    }
}

impl Decode for WalLogId {
    fn decode<R: io::Read>(mut r: R) -> Result<Self, io::Error> {
        let term = read_u64(&mut r)?;
        let node_id = read_u64(&mut r)?;
        let index = read_u64(&mut r)?;
        Ok(WalLogId(LogId::new(
            CommittedLeaderId::new(term, node_id),
            index,
        )))
    }
}

/// A vote on disk: term, node id (16 bytes big-endian), then 1 if committed else 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WalVote(Vote);

/// `raft-log` refuses to save (and to replay) a vote smaller than the one it holds. The order here
/// is that of the vote's leader id alone, so that a node may drop its own leadership in a term it
/// keeps (committed → not committed, see [`LogStore::step_down_on_restart`]); any change of term or
/// of the node voted for is ordered as openraft orders it.
impl PartialOrd for WalVote {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.0.leader_id.partial_cmp(&other.0.leader_id)
    }
}

impl Encode for WalVote {
    fn encode<W: io::Write>(&self, mut w: W) -> Result<usize, io::Error> {
        w.write_all(&self.0.leader_id.term.to_be_bytes())?;
        w.write_all(&self.0.leader_id.node_id.to_be_bytes())?;
        w.write_all(&[u8::from(self.0.committed)])?;
        Ok(17)
    }
}

impl Decode for WalVote {
    fn decode<R: io::Read>(mut r: R) -> Result<Self, io::Error> {
        let term = read_u64(&mut r)?;
        let node_id = read_u64(&mut r)?;
        let mut flag = [0u8; 1];
        r.read_exact(&mut flag)?;
        let committed = match flag[0] {
            0 => false,
            1 => true,
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("vote committed flag is {other}, not 0 or 1"),
                ));
            }
        };
        Ok(WalVote(Vote {
            leader_id: LeaderId::new(term, node_id),
            committed,
        }))
    }
}

/// A postcard-encoded [`Entry`] on disk: length (u32 BE), the length's complement (u32 BE),
/// then the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WalPayload(Vec<u8>);

impl Encode for WalPayload {
    fn encode<W: io::Write>(&self, mut w: W) -> Result<usize, io::Error> {
        let len = u32::try_from(self.0.len())
            .ok()
            .filter(|len| *len <= MAX_ENTRY_BYTES)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "log entry of {} bytes exceeds {MAX_ENTRY_BYTES}",
                        self.0.len()
                    ),
                )
            })?;
        w.write_all(&len.to_be_bytes())?;
        w.write_all(&(!len).to_be_bytes())?;
        w.write_all(&self.0)?;
        Ok(8 + self.0.len())
    }
}

impl Decode for WalPayload {
    fn decode<R: io::Read>(mut r: R) -> Result<Self, io::Error> {
        let mut header = [0u8; 8];
        r.read_exact(&mut header)?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let guard = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        // InvalidData (not UnexpectedEof) makes raft-log report damage instead of cutting the
        // log here as if it were a torn tail.
        if guard != !len || len > MAX_ENTRY_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("damaged log entry length {len:#010x} (guard {guard:#010x})"),
            ));
        }
        let mut bytes = Vec::new();
        (&mut r).take(u64::from(len)).read_to_end(&mut bytes)?;
        if bytes.len() != len as usize {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(WalPayload(bytes))
    }
}

fn read_u64<R: io::Read>(mut r: R) -> Result<u64, io::Error> {
    let mut bytes = [0u8; 8];
    r.read_exact(&mut bytes)?;
    Ok(u64::from_be_bytes(bytes))
}

/// What a synced flush does when it reaches the disk: moves the watermark to `upto`, the last entry
/// it covers (or marks the watermark failed), then tells `then`.
pub(crate) struct FlushDone {
    durable: Durability,
    upto: Option<LogId>,
    then: Then,
}

/// Who else hears of a synced flush.
pub(crate) enum Then {
    /// openraft, for a follower's `append`.
    Appended(LogFlushed<TypeConfig>),
    /// Nobody: a leader's pipelined `append`, already reported.
    Nothing,
    /// A task of ours waiting for a vote, truncate or purge to be durable.
    Notify(oneshot::Sender<io::Result<()>>),
}

impl raft_log::Callback for FlushDone {
    fn send(self, result: Result<(), io::Error>) {
        match &result {
            Ok(()) => self.durable.synced(self.upto),
            Err(err) => {
                tracing::error!(error = %err, "the raft log could not be synced; this node stops taking log entries");
                self.durable.fail(err.to_string());
            }
        }
        match self.then {
            Then::Appended(callback) => callback.log_io_completed(result),
            Then::Nothing => {}
            // The waiter may have been cancelled; nothing else to tell.
            Then::Notify(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

/// Syncs every file in the log directory, so that what a killed process left in the page cache
/// is on disk before the log is read back and counted as durable.
fn sync_chunk_files(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;

    use openraft::EntryPayload;
    use openraft::storage::RaftLogStorageExt;
    use proto::raft::{SessionCommand, SessionId};

    use super::*;

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(SessionCommand::Create {
                id: SessionId::from_bytes([index as u8; 16]),
                data: format!(r#"{{"n":{index}}}"#),
                ttl_ms: 60_000,
                now_ms: 1_000 + index,
            }),
        }
    }

    /// A log directory laid out as in a node's data dir (`<tmp>/raft-log`), so that the chunk trash
    /// next to it (`<tmp>/raft-log-trash`) is removed with the temp dir too.
    struct LogDir {
        _root: tempfile::TempDir,
        path: PathBuf,
    }

    impl LogDir {
        fn new() -> LogDir {
            let root = tempfile::tempdir().expect("tempdir");
            let path = root.path().join(super::super::LOG_DIR);
            LogDir { _root: root, path }
        }

        fn path(&self) -> &Path {
            &self.path
        }
    }

    async fn write_entries(dir: &Path, indexes: std::ops::RangeInclusive<u64>) {
        let mut store = LogStore::open(dir).expect("open");
        store
            .save_vote(&Vote::new_committed(1, 1))
            .await
            .expect("vote");
        for index in indexes {
            store
                .blocking_append([entry(1, index)])
                .await
                .expect("append");
        }
    }

    async fn read_all(store: &mut LogStore) -> Vec<Entry> {
        store.try_get_log_entries(..).await.expect("read")
    }

    fn chunk_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("list log dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn only_the_leaders_own_appends_are_pipelined() {
        let dir = LogDir::new();
        let store = LogStore::open(dir.path()).expect("open");
        let records = |term: u64, node: u64| {
            let id = LogId::new(CommittedLeaderId::new(term, node), 1);
            vec![(WalLogId(id), WalPayload(Vec::new()))]
        };
        let leading = Vote::new_committed(2, 1);
        assert!(!store.durability().pipelining());
        assert!(
            !store.proposed_here(Some(&leading), &records(2, 1)),
            "not turned on"
        );
        store.pipeline_as(1);
        assert!(store.durability().pipelining());
        assert!(store.proposed_here(Some(&leading), &records(2, 1)));
        // A follower's append: the entries and the vote are another node's.
        let following = Vote::new_committed(2, 3);
        assert!(!store.proposed_here(Some(&following), &records(2, 3)));
        // Our own entries of an earlier term, sent back to us by a later leader.
        let later = Vote::new_committed(3, 2);
        assert!(!store.proposed_here(Some(&later), &records(2, 1)));
        // A candidate's vote, an earlier leadership of ours, no vote at all.
        assert!(!store.proposed_here(Some(&Vote::new(2, 1)), &records(2, 1)));
        let next_term = Vote::new_committed(3, 1);
        assert!(!store.proposed_here(Some(&next_term), &records(2, 1)));
        assert!(!store.proposed_here(None, &records(2, 1)));
    }

    /// Saves `vote`, then checks that stepping down on restart leaves it as it is.
    async fn restart_keeps(store: &mut LogStore, vote: Vote, why: &str) {
        store.save_vote(&vote).await.expect("vote");
        assert!(!store.step_down_on_restart().await.expect(why), "{why}");
        assert_eq!(store.read_vote().await.expect("read"), Some(vote), "{why}");
    }

    #[tokio::test]
    async fn a_restarted_leader_keeps_its_vote_but_not_its_leadership() {
        // Not pipelining: even its own leadership is left as it is.
        let plain = LogDir::new();
        let mut store = LogStore::open(plain.path()).expect("open");
        restart_keeps(&mut store, Vote::new_committed(2, 1), "not pipelining").await;

        let dir = LogDir::new();
        let mut store = LogStore::open(dir.path()).expect("open");
        store.pipeline_as(1);
        assert!(!store.step_down_on_restart().await.expect("no vote"));
        // Another node's leadership, or a vote not committed: left as it is.
        restart_keeps(&mut store, Vote::new_committed(2, 3), "other leader").await;
        restart_keeps(&mut store, Vote::new(3, 1), "candidate").await;
        // Its own leadership: the same term, no longer committed, kept after reopening.
        store
            .save_vote(&Vote::new_committed(3, 1))
            .await
            .expect("vote");
        assert!(store.step_down_on_restart().await.expect("own leadership"));
        drop(store);
        let mut store = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(
            store.read_vote().await.expect("read"),
            Some(Vote::new(3, 1))
        );
    }

    #[tokio::test]
    async fn a_pipelined_append_is_synced_and_counted_durable_after_reopen() {
        let dir = LogDir::new();
        {
            let mut store = LogStore::open(dir.path()).expect("open");
            store.pipeline_as(1);
            store
                .save_vote(&Vote::new_committed(1, 1))
                .await
                .expect("vote");
            let durable = store.durability();
            store
                .blocking_append([entry(1, 1), entry(1, 2)])
                .await
                .expect("append");
            let synced = durable.wait_for(entry(1, 2).log_id);
            tokio::time::timeout(std::time::Duration::from_secs(5), synced)
                .await
                .expect("synced in time")
                .expect("synced");
        }
        let mut store = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(read_all(&mut store).await.len(), 2);
        store.pipeline_as(1);
        let durable = store.durability();
        assert!(durable.is_synced(entry(1, 2).log_id));
        assert!(!durable.is_synced(entry(1, 3).log_id));
    }

    #[tokio::test]
    async fn entries_vote_and_committed_survive_reopen() {
        let dir = LogDir::new();
        write_entries(dir.path(), 1..=20).await;
        {
            let mut store = LogStore::open(dir.path()).expect("reopen");
            assert!(!store.is_pristine().expect("pristine"));
            store
                .save_committed(Some(entry(1, 15).log_id))
                .await
                .expect("commit");
            store.truncate(entry(1, 18).log_id).await.expect("truncate");
            store.purge(entry(1, 3).log_id).await.expect("purge");
        }
        let mut store = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(
            store.read_vote().await.expect("vote"),
            Some(Vote::new_committed(1, 1))
        );
        assert_eq!(
            store.read_committed().await.expect("committed"),
            Some(entry(1, 15).log_id)
        );
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id, Some(entry(1, 17).log_id));
        assert_eq!(state.last_purged_log_id, Some(entry(1, 3).log_id));
        let entries = read_all(&mut store).await;
        let expected: Vec<Entry> = (4..=17).map(|i| entry(1, i)).collect();
        assert_eq!(entries, expected);
        let (from, to) = (10, 5);
        assert!(
            store
                .try_get_log_entries(from..to)
                .await
                .expect("empty")
                .is_empty()
        );
        assert_eq!(
            store.try_get_log_entries(5..=6).await.expect("two").len(),
            2
        );
    }

    #[tokio::test]
    async fn fresh_store_is_pristine() {
        let dir = LogDir::new();
        let store = LogStore::open(dir.path()).expect("open");
        assert!(store.is_pristine().expect("pristine"));
    }

    #[tokio::test]
    async fn second_open_of_the_same_dir_is_refused() {
        let dir = LogDir::new();
        let _first = LogStore::open(dir.path()).expect("open");
        let err = LogStore::open(dir.path()).expect_err("locked");
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }

    #[tokio::test]
    async fn torn_tail_recovers_to_last_complete_entry() {
        let dir = LogDir::new();
        write_entries(dir.path(), 1..=10).await;
        let last_chunk = chunk_files(dir.path()).pop().expect("a chunk file");
        let len = std::fs::metadata(&last_chunk).expect("stat").len();
        let file = OpenOptions::new()
            .write(true)
            .open(&last_chunk)
            .expect("open chunk");
        file.set_len(len - 3).expect("truncate chunk");
        drop(file);

        let mut store = LogStore::open(dir.path()).expect("torn tail is recovered");
        let entries = read_all(&mut store).await;
        let expected: Vec<Entry> = (1..=9).map(|i| entry(1, i)).collect();
        assert_eq!(entries, expected, "exactly the complete entries survive");
        assert_eq!(
            store.get_log_state().await.expect("state").last_log_id,
            Some(entry(1, 9).log_id)
        );
        // The recovered log accepts the next entry in place of the torn one.
        store.blocking_append([entry(2, 10)]).await.expect("append");
        drop(store);
        let mut store = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(read_all(&mut store).await.len(), 10);
    }

    #[tokio::test]
    async fn damage_anywhere_is_an_error_or_exact_prefix() {
        let dir = LogDir::new();
        write_entries(dir.path(), 1..=10).await;
        let chunk = chunk_files(dir.path()).pop().expect("a chunk file");
        let original = std::fs::read(&chunk).expect("read chunk");
        let expected: Vec<Entry> = (1..=10).map(|i| entry(1, i)).collect();
        let last_record_len = {
            let mut bytes = Vec::new();
            WalPayload(proto::encode(&entry(1, 10)))
                .encode(&mut bytes)
                .expect("encode");
            bytes.len() + 4 + 24 + 4 // type, log id, checksum
        };
        let before_last_record = original.len() - last_record_len;

        // Flip each byte in turn (one at a time) and reopen.
        for at in 0..original.len() {
            let mut damaged = original.clone();
            damaged[at] ^= 0x5a;
            std::fs::write(&chunk, &damaged).expect("write damaged chunk");
            match LogStore::open(dir.path()) {
                Err(e) => {
                    let text = e.to_string();
                    assert!(text.contains(&dir.path().display().to_string()), "{text}");
                }
                Ok(mut store) => {
                    // Damage before the last record must be reported, never mistaken for a
                    // torn tail that silently drops acknowledged entries.
                    assert!(
                        at >= before_last_record,
                        "flip at {at} (of {}) was not reported",
                        original.len()
                    );
                    // Whatever is served must be exactly a prefix of what was written.
                    let entries = read_all(&mut store).await;
                    assert!(
                        expected.starts_with(&entries),
                        "flip at {at} served entries that were never written"
                    );
                }
            }
        }
        std::fs::write(&chunk, &original).expect("restore chunk");
        let mut store = LogStore::open(dir.path()).expect("undamaged log opens");
        assert_eq!(read_all(&mut store).await, expected);
    }

    #[test]
    fn damaged_payload_length_is_damage_not_a_torn_tail() {
        let mut bytes = Vec::new();
        WalPayload(vec![1, 2, 3])
            .encode(&mut bytes)
            .expect("encode");
        assert_eq!(
            WalPayload::decode(&bytes[..]).expect("decode"),
            WalPayload(vec![1, 2, 3])
        );
        let mut damaged = bytes.clone();
        damaged[1] ^= 0x10;
        let err = WalPayload::decode(&damaged[..]).expect_err("damaged");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let err = WalPayload::decode(&bytes[..bytes.len() - 1]).expect_err("short");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn vote_and_log_id_codecs_round_trip() {
        for vote in [Vote::new(3, 7), Vote::new_committed(u64::MAX, 0)] {
            let mut bytes = Vec::new();
            WalVote(vote).encode(&mut bytes).expect("encode");
            assert_eq!(WalVote::decode(&bytes[..]).expect("decode").0, vote);
        }
        let id = entry(9, 42).log_id;
        let mut bytes = Vec::new();
        WalLogId(id).encode(&mut bytes).expect("encode");
        assert_eq!(WalLogId::decode(&bytes[..]).expect("decode").0, id);
    }
}
