//! Raft types of the replicated session store: log entries, state-machine commands and answers,
//! snapshots, the snapshot file on disk, and the peer RPC envelope with its framing.
//!
//! Everything here is postcard-encoded and pinned by a golden file under `tests/golden/`.
//! A change that alters an encoding must bump [`PEER_WIRE_VERSION`] (network) or the snapshot
//! file magic (disk), and regenerate the golden files with `UPDATE_GOLDEN=1`.

use std::fmt;
use std::io::Cursor;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

openraft::declare_raft_types!(
    /// The openraft type configuration of the session store.
    pub TypeConfig:
        D = SessionCommand,
        R = CommandResponse,
        NodeId = u64,
        Node = PeerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft node id. Never reused: a wiped data dir joins as a new id.
pub type NodeId = u64;
/// A Raft log id (leader term and node, index).
pub type LogId = openraft::LogId<NodeId>;
/// A Raft vote (the durable "hard state").
pub type Vote = openraft::Vote<NodeId>;
/// A Raft log entry as stored in the log and sent in `AppendEntries`.
pub type Entry = openraft::Entry<TypeConfig>;
/// A cluster membership together with the log id that introduced it.
pub type StoredMembership = openraft::StoredMembership<NodeId, PeerNode>;
/// What describes a snapshot: last included log id, membership and id.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, PeerNode>;

/// What the cluster knows about a Raft member: its name and addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    /// The node name from the config or `--name`.
    pub name: String,
    /// `ip:port` of gossip (UDP) and peer RPC (TCP).
    pub cluster_addr: String,
    /// `ip:port` of the HTTP listener.
    pub http_addr: String,
}

/// A session id: 128 random bits.
///
/// Text form (cookies, URLs, JSON): exactly 32 lowercase hexadecimal digits. Binary form
/// (postcard): the 16 raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; 16]);

/// Length of a session id's text form.
pub const SESSION_ID_TEXT_LEN: usize = 32;

impl SessionId {
    /// A fresh id from the thread-local CSPRNG (seeded by the operating system).
    pub fn generate() -> Self {
        SessionId(rand::random())
    }

    /// The id with these 16 bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        SessionId(bytes)
    }

    /// The 16 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// Text that is not a session id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a session id is exactly 32 lowercase hex digits (got {len} bytes)")]
pub struct InvalidSessionId {
    /// Length of the rejected text, in bytes.
    pub len: usize,
}

impl FromStr for SessionId {
    type Err = InvalidSessionId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = InvalidSessionId { len: text.len() };
        let digits = text.as_bytes();
        if digits.len() != SESSION_ID_TEXT_LEN {
            return Err(invalid);
        }
        // Only lowercase is accepted so that every id has exactly one spelling (cookie values
        // and routing keys compare as bytes).
        fn nibble(c: u8) -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            }
        }
        let mut bytes = [0u8; 16];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            let (Some(high), Some(low)) = (nibble(pair[0]), nibble(pair[1])) else {
                return Err(invalid);
            };
            *byte = (high << 4) | low;
        }
        Ok(SessionId(bytes))
    }
}

impl Serialize for SessionId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; 16]>::deserialize(deserializer).map(SessionId)
        }
    }
}

/// One HTTP session as held by the replicated state machine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session id.
    pub id: SessionId,
    /// The session data: the JSON text of an object (validated by the HTTP layer).
    pub data: String,
    /// Starts at 1 on create; each successful `Put` adds 1. `Touch` never changes it.
    pub version: u64,
    /// Leader clock at creation, ms since the Unix epoch.
    pub created_ms: u64,
    /// Latest access known to the cluster, ms since the Unix epoch.
    pub last_access_ms: u64,
    /// Idle time after which the session expires, in ms.
    pub ttl_ms: u64,
}

impl SessionRecord {
    /// When the session expires unless accessed again: `last_access_ms + ttl_ms` (saturating).
    pub fn expires_at_ms(&self) -> u64 {
        self.last_access_ms.saturating_add(self.ttl_ms)
    }

    /// Whether the session has expired at `now_ms` (expiry is inclusive).
    pub fn is_expired_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms() <= now_ms
    }
}

/// A write to the session store, proposed through Raft.
///
/// Every time-dependent decision uses the `now_ms` carried here (set by the proposing node),
/// never the applying node's clock, so every replica computes the same result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionCommand {
    /// Create a session (version 1). Fails with `AlreadyExists` if a live session has this id.
    Create {
        /// The new session's id.
        id: SessionId,
        /// JSON text of an object.
        data: String,
        /// Idle time to expiry, ms.
        ttl_ms: u64,
        /// Proposer's clock; becomes `created_ms` and `last_access_ms`.
        now_ms: u64,
    },
    /// Replace a session's data; compare-and-set when `expected_version` is set.
    Put {
        /// The session to update.
        id: SessionId,
        /// New JSON text of an object.
        data: String,
        /// Apply only if the current version equals this.
        expected_version: Option<u64>,
        /// New idle time to expiry, if it changes.
        ttl_ms: Option<u64>,
        /// Proposer's clock; counts as an access.
        now_ms: u64,
    },
    /// Remove a session.
    Delete {
        /// The session to remove.
        id: SessionId,
    },
    /// Coalesced access-time updates; never change a version.
    Touch {
        /// `(session, access time in ms)` pairs.
        touches: Vec<(SessionId, u64)>,
    },
    /// Leader-proposed expiry: remove those of `ids` that are still expired at `now_ms`.
    Expire {
        /// Candidates found expired by the leader.
        ids: Vec<SessionId>,
        /// Leader's clock when it proposed the expiry.
        now_ms: u64,
    },
    /// Restore sessions from a backup: each record is inserted as it was (id, data, version, created,
    /// TTL), with its last access set to `now_ms` so it lives a full TTL after the restore. A live
    /// session with the same id is kept and the record skipped.
    Import {
        /// The sessions to insert.
        records: Vec<SessionRecord>,
        /// Leader's clock.
        now_ms: u64,
    },
    /// Several writes proposed as one log entry (one append, one fsync, one replication round),
    /// applied in order exactly as if each were its own entry; answered by
    /// [`CommandResponse::Batch`] with one response per command. Never nested: a `Batch` inside a
    /// `Batch` is refused when decoded (so no entry can make decoding or applying recurse).
    Batch(#[serde(deserialize_with = "flat_batch")] Vec<SessionCommand>),
    /// A `Create` that the leader stamped with the cluster-wide `<sessions max-active>` in force when
    /// it proposed it: refused with [`CommandResponse::TooManySessions`] when that many sessions are
    /// held already. The limit travels in the entry so every replica decides alike, whatever its own
    /// configuration says. Wire version 3.
    CreateWithin {
        /// The new session's id.
        id: SessionId,
        /// JSON text of an object.
        data: String,
        /// Idle time to expiry, ms.
        ttl_ms: u64,
        /// Proposer's clock; becomes `created_ms` and `last_access_ms`.
        now_ms: u64,
        /// Most sessions the store may hold; this create is refused when it holds that many.
        max_active: u64,
    },
}

thread_local! {
    /// Set while a `Batch`'s commands are being decoded on this thread.
    static DECODING_BATCH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Decodes a batch's elements, refusing a `Batch` (or `CommandResponse::Batch`) among them: the
/// derived decoder would otherwise recurse as deep as the bytes say, and a frame of a few kilobytes
/// nested thousands deep overflows the stack of whichever node decodes or applies it.
fn flat_batch<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            DECODING_BATCH.with(|flag| flag.set(false));
        }
    }
    if DECODING_BATCH.with(|flag| flag.replace(true)) {
        return Err(serde::de::Error::custom(
            "a batch inside a batch (batches are never nested)",
        ));
    }
    let _reset = Reset;
    Vec::<T>::deserialize(deserializer)
}

impl SessionCommand {
    /// Replaces every time in the command with `now_ms`. The leader stamps each write with its own clock
    /// just before proposing it, so a follower whose clock is off never moves a session's expiry.
    pub fn stamp(&mut self, now: u64) {
        match self {
            SessionCommand::Create { now_ms, .. }
            | SessionCommand::CreateWithin { now_ms, .. }
            | SessionCommand::Put { now_ms, .. }
            | SessionCommand::Expire { now_ms, .. }
            | SessionCommand::Import { now_ms, .. } => *now_ms = now,
            SessionCommand::Touch { touches } => {
                for (_, at) in touches.iter_mut() {
                    *at = now;
                }
            }
            SessionCommand::Delete { .. } => {}
            SessionCommand::Batch(commands) => {
                for command in commands {
                    command.stamp(now);
                }
            }
        }
    }

    /// Puts the leader's cluster-wide session limit on every create in the command (each `Create`
    /// becomes a [`SessionCommand::CreateWithin`]; a `CreateWithin` a follower sent gets this limit,
    /// not its own). Done by the leader just before proposing, like [`SessionCommand::stamp`].
    pub fn limit_creates(&mut self, limit: u64) {
        match self {
            SessionCommand::Create {
                id,
                data,
                ttl_ms,
                now_ms,
            } => {
                *self = SessionCommand::CreateWithin {
                    id: *id,
                    data: std::mem::take(data),
                    ttl_ms: *ttl_ms,
                    now_ms: *now_ms,
                    max_active: limit,
                };
            }
            SessionCommand::CreateWithin { max_active, .. } => *max_active = limit,
            SessionCommand::Batch(commands) => {
                for command in commands {
                    command.limit_creates(limit);
                }
            }
            SessionCommand::Put { .. }
            | SessionCommand::Delete { .. }
            | SessionCommand::Touch { .. }
            | SessionCommand::Expire { .. }
            | SessionCommand::Import { .. } => {}
        }
    }

    /// Roughly how many bytes the command takes in a log entry: its session data plus a fixed
    /// allowance per id. Used to bound batches and replication messages, not for accounting.
    pub fn approx_bytes(&self) -> usize {
        const PER_ID: usize = 40;
        match self {
            SessionCommand::Create { data, .. }
            | SessionCommand::CreateWithin { data, .. }
            | SessionCommand::Put { data, .. } => PER_ID + data.len(),
            SessionCommand::Delete { .. } => PER_ID,
            SessionCommand::Touch { touches } => PER_ID * touches.len().max(1),
            SessionCommand::Expire { ids, .. } => PER_ID * ids.len().max(1),
            SessionCommand::Import { records, .. } => records
                .iter()
                .map(|record| PER_ID + record.data.len())
                .sum::<usize>()
                .max(PER_ID),
            SessionCommand::Batch(commands) => commands.iter().map(Self::approx_bytes).sum(),
        }
    }
}

/// What applying a log entry answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// `Create` succeeded.
    Created(SessionRecord),
    /// `Put` succeeded; the record after the update.
    Updated(SessionRecord),
    /// `Delete` removed the session.
    Deleted,
    /// The session does not exist (or has expired).
    NotFound,
    /// `Put` with a stale `expected_version`.
    VersionMismatch {
        /// The version the session has now.
        current: u64,
    },
    /// `Create` with the id of a live session.
    AlreadyExists,
    /// `Touch` applied; how many sessions got a later access time.
    Touched {
        /// Sessions whose `last_access_ms` moved forward.
        count: u64,
    },
    /// `Expire` applied; the sessions actually removed.
    Expired {
        /// Removed session ids, in command order.
        ids: Vec<SessionId>,
    },
    /// The entry was Raft-internal (blank or membership change): nothing to answer.
    Internal,
    /// `Import` applied.
    Imported {
        /// Records inserted.
        count: u64,
        /// Records skipped because a live session had the id.
        skipped: u64,
    },
    /// A `Batch` applied: one response per command, in command order. Never nested.
    Batch(#[serde(deserialize_with = "flat_batch")] Vec<CommandResponse>),
    /// `CreateWithin` refused: the store holds `max_active` sessions already. Wire version 3.
    TooManySessions {
        /// The limit the entry carried.
        max_active: u64,
    },
    /// The command could not be applied (it is malformed: a nested batch built in memory, say); the
    /// state is unchanged, on every replica alike. Wire version 3.
    Refused {
        /// Why, for the log and the caller.
        reason: String,
    },
}

/// The state machine at a log index, as sent in `InstallSnapshot` and stored on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSnapshot {
    /// The last log entry included.
    pub last_applied: Option<LogId>,
    /// The membership in effect at `last_applied`.
    pub last_membership: StoredMembership,
    /// Every session, ordered by id.
    pub sessions: Vec<SessionRecord>,
}

/// The peer RPC protocol version; peers with another version refuse the connection.
///
/// 2: log entries may hold [`SessionCommand::Batch`], which a version-1 node cannot decode.
/// 3: entries may hold [`SessionCommand::CreateWithin`], answers [`CommandResponse::TooManySessions`]
/// and [`CommandResponse::Refused`]; a nested batch no longer decodes.
pub const PEER_WIRE_VERSION: u32 = 3;

/// The first frame each side of a peer connection sends.
///
/// Either side closes the connection if the other's `wire_version` or `cluster_id` differs
/// from its own (after answering `PeerResponse::Error` with the reason, when it is the server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PEER_WIRE_VERSION`] of the sender.
    pub wire_version: u32,
    /// The sender's cluster id (`<cluster id="...">`).
    pub cluster_id: String,
    /// The sender's node name.
    pub from_name: String,
}

/// First bytes of every [`PeerAuth`] frame. No `Hello`, `PeerRequest` or `PeerResponse` starts with
/// them, so a peer that expects one of those (it has no cluster key) fails to decode instead of
/// misreading a handshake step as a request.
pub const PEER_AUTH_MAGIC: [u8; 4] = *b"MTA1";
/// Bytes of a handshake nonce and of a handshake proof.
pub const PEER_AUTH_BYTES: usize = 32;

/// With a cluster key, the handshake frames after the [`Hello`] exchange.
///
/// Both sides send a random [`PeerAuthStep::Nonce`]; then the connecting side, and once that checked
/// out the accepting side, send a [`PeerAuthStep::Proof`]: HMAC-SHA256 under the cluster key over the
/// wire version, cluster id, both names and both nonces. Every frame after that is encrypted with
/// keys derived from the same transcript. Without a key no `PeerAuth` frame is sent, so the wire is
/// exactly what it was before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAuth {
    /// Always [`PEER_AUTH_MAGIC`].
    pub magic: [u8; 4],
    /// The handshake step.
    pub step: PeerAuthStep,
}

/// One step of the keyed peer handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerAuthStep {
    /// The sender's random nonce.
    Nonce([u8; PEER_AUTH_BYTES]),
    /// The sender's proof that it holds the cluster key.
    Proof([u8; PEER_AUTH_BYTES]),
}

impl PeerAuth {
    /// A nonce step.
    pub fn nonce(nonce: [u8; PEER_AUTH_BYTES]) -> PeerAuth {
        PeerAuth {
            magic: PEER_AUTH_MAGIC,
            step: PeerAuthStep::Nonce(nonce),
        }
    }

    /// A proof step.
    pub fn proof(proof: [u8; PEER_AUTH_BYTES]) -> PeerAuth {
        PeerAuth {
            magic: PEER_AUTH_MAGIC,
            step: PeerAuthStep::Proof(proof),
        }
    }
}

/// A peer RPC request (after the [`Hello`] exchange).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // reason: the envelope is encoded at once, never stored in bulk
pub enum PeerRequest {
    /// Raft log replication / heartbeat.
    AppendEntries(openraft::raft::AppendEntriesRequest<TypeConfig>),
    /// Raft election.
    Vote(openraft::raft::VoteRequest<NodeId>),
    /// One chunk of a snapshot.
    InstallSnapshot(openraft::raft::InstallSnapshotRequest<TypeConfig>),
    /// A session write forwarded to the node believed to be the leader.
    ClientWrite(SessionCommand),
    /// A follower asks the leader up to which index it must apply before serving a
    /// linearizable read.
    ReadIndex,
    /// Turn this connection into a hop channel (see [`crate::hop`]); answered by
    /// [`PeerResponse::HopOpened`], after which both sides speak hop frames only. A node that does
    /// not know this request drops the connection, and the asking node proxies over HTTP instead.
    OpenHop,
}

/// A peer RPC response, one per request, in order.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    /// Answer to `AppendEntries`.
    AppendEntries(openraft::raft::AppendEntriesResponse<NodeId>),
    /// Answer to `Vote`.
    Vote(openraft::raft::VoteResponse<NodeId>),
    /// Answer to `InstallSnapshot`.
    InstallSnapshot(openraft::raft::InstallSnapshotResponse<NodeId>),
    /// A forwarded write was committed and applied.
    ClientWrite {
        /// Where the write landed; wait for this index before reading elsewhere.
        log_id: LogId,
        /// What the state machine answered.
        response: CommandResponse,
    },
    /// The receiver is not the leader; retry there.
    ForwardToLeader {
        /// The leader the receiver knows of, if any.
        leader_id: Option<NodeId>,
        /// Its addresses, if known.
        leader_node: Option<PeerNode>,
    },
    /// The request failed; the text says why.
    Error(String),
    /// Answer to `ReadIndex`: the leader's read index, confirmed by a quorum.
    ReadIndex {
        /// Apply up to this log index before reading (`None`: nothing committed yet).
        index: Option<u64>,
    },
    /// Answer to `OpenHop`: from the next frame on, this connection is a hop channel.
    HopOpened,
    /// A forwarded write was not proposed: it is not what a client could have written (data that
    /// is not a JSON object, above the leader's `max-bytes`, a nested batch...). Retrying cannot
    /// help. Wire version 3.
    WriteRefused(String),
}

/// Largest frame body accepted or sent (64 MiB); snapshots are sent in smaller chunks.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// Size of a frame header: the body length as a big-endian `u32`.
pub const FRAME_HEADER_BYTES: usize = 4;

/// A frame that cannot be sent or accepted.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The body is larger than [`MAX_FRAME_BYTES`].
    #[error("frame body of {len} bytes exceeds the limit of {MAX_FRAME_BYTES} bytes")]
    TooLarge {
        /// The announced or produced body length.
        len: usize,
    },
    /// The message could not be serialized.
    #[error("cannot encode frame: {0}")]
    Encode(#[source] postcard::Error),
}

/// Encodes `message` as one frame: `u32` big-endian body length, then the postcard body.
pub fn encode_frame<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let buf =
        postcard::to_extend(message, vec![0u8; FRAME_HEADER_BYTES]).map_err(FrameError::Encode)?;
    let len = buf.len() - FRAME_HEADER_BYTES;
    let header = u32::try_from(len)
        .ok()
        .filter(|_| len <= MAX_FRAME_BYTES)
        .ok_or(FrameError::TooLarge { len })?;
    let mut buf = buf;
    buf[..FRAME_HEADER_BYTES].copy_from_slice(&header.to_be_bytes());
    Ok(buf)
}

/// Appends `message` to `buf` as one frame (as [`encode_frame`] makes it), so that many frames can
/// be written with one system call.
pub fn encode_frame_into<T: Serialize>(
    message: &T,
    mut buf: Vec<u8>,
) -> Result<Vec<u8>, FrameError> {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    let mut buf = postcard::to_extend(message, buf).map_err(FrameError::Encode)?;
    let len = buf.len() - start - FRAME_HEADER_BYTES;
    let header = u32::try_from(len)
        .ok()
        .filter(|_| len <= MAX_FRAME_BYTES)
        .ok_or(FrameError::TooLarge { len })?;
    buf[start..start + FRAME_HEADER_BYTES].copy_from_slice(&header.to_be_bytes());
    Ok(buf)
}

/// The body length announced by a frame header; rejects oversize frames before anything is
/// allocated for the body.
pub fn decode_frame_len(header: [u8; FRAME_HEADER_BYTES]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge { len });
    }
    Ok(len)
}

/// Decodes a frame body (the bytes after the header) as `T`.
pub fn decode_frame_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, crate::DecodeError> {
    crate::decode(body)
}

/// The first bytes of a snapshot file; a format change takes a new magic.
pub const SNAPSHOT_FILE_MAGIC: [u8; 8] = *b"MTSNAP01";

/// Bytes that are not a snapshot file of this version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotFileError {
    /// Shorter than its header or its declared id.
    #[error("snapshot file is truncated ({len} bytes)")]
    Truncated {
        /// Length of the file.
        len: usize,
    },
    /// Not a snapshot file, or one written by an incompatible version.
    #[error("snapshot file does not start with {:?}", String::from_utf8_lossy(&SNAPSHOT_FILE_MAGIC))]
    BadMagic,
    /// The checksum does not match: the file is damaged.
    #[error("snapshot file checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum {
        /// CRC-32 stored in the header.
        stored: u32,
        /// CRC-32 of the bytes read.
        computed: u32,
    },
    /// The snapshot id is not UTF-8.
    #[error("snapshot id is not UTF-8")]
    BadId,
}

/// Encodes a snapshot file: magic (8 bytes), CRC-32 of the rest (u32 BE), snapshot id length
/// (u16 BE), snapshot id (UTF-8), then the snapshot data (an encoded [`SessionSnapshot`]).
pub fn encode_snapshot_file(snapshot_id: &str, data: &[u8]) -> Vec<u8> {
    let mut out = snapshot_file_header(snapshot_id, data);
    out.extend_from_slice(data);
    out
}

/// The bytes of a snapshot file that come before `data` (see [`encode_snapshot_file`]), with the
/// checksum already covering `data`: writing this header and then `data` gives the same file
/// without holding a second copy of a large snapshot.
pub fn snapshot_file_header(snapshot_id: &str, data: &[u8]) -> Vec<u8> {
    let (mut out, mut crc) = snapshot_file_prefix(snapshot_id);
    crc.update(data);
    out[8..12].copy_from_slice(&crc.finalize().to_be_bytes());
    out
}

/// The header with a zero checksum, and the checksum state after the header's own covered bytes.
fn snapshot_file_prefix(snapshot_id: &str) -> (Vec<u8>, crc32fast::Hasher) {
    // Snapshot ids are generated by us and short; cut an absurd one rather than fail.
    let mut id_len = snapshot_id.len().min(u16::MAX as usize);
    while !snapshot_id.is_char_boundary(id_len) {
        id_len -= 1;
    }
    let id = &snapshot_id.as_bytes()[..id_len];
    let mut out = Vec::with_capacity(8 + 4 + 2 + id.len());
    out.extend_from_slice(&SNAPSHOT_FILE_MAGIC);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(id_len as u16).to_be_bytes());
    out.extend_from_slice(id);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[12..]);
    (out, crc)
}

/// Writes a snapshot file, byte for byte what [`encode_snapshot_file`] makes of the encoded
/// `snapshot`, encoding it straight into `out` a `piece` of bytes at a time (the last one may be
/// shorter): a large snapshot is never held in memory whole. `after_piece` runs after each piece is
/// written (to sync it, say).
/// The checksum is written last, over the header's placeholder. Returns the size of the data.
pub fn write_snapshot_file<T: Serialize, W: std::io::Write + std::io::Seek>(
    out: &mut W,
    snapshot_id: &str,
    snapshot: &T,
    piece: usize,
    after_piece: impl FnMut(&mut W) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    write_snapshot_file_with(out, snapshot_id, piece, after_piece, |pieces| {
        postcard::to_io(snapshot, pieces)
            .map(drop)
            .map_err(std::io::Error::other)
    })
}

/// [`write_snapshot_file`] for snapshot data already encoded (a snapshot received from the leader).
pub fn write_snapshot_file_bytes<W: std::io::Write + std::io::Seek>(
    out: &mut W,
    snapshot_id: &str,
    data: &[u8],
    piece: usize,
    after_piece: impl FnMut(&mut W) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    write_snapshot_file_with(out, snapshot_id, piece, after_piece, |pieces| {
        std::io::Write::write_all(pieces, data)
    })
}

/// Writes the header, lets `fill` write the data through [`Pieces`], then the checksum.
fn write_snapshot_file_with<W: std::io::Write + std::io::Seek, F>(
    out: &mut W,
    snapshot_id: &str,
    piece: usize,
    after_piece: F,
    fill: impl FnOnce(&mut Pieces<'_, W, F>) -> std::io::Result<()>,
) -> std::io::Result<u64>
where
    F: FnMut(&mut W) -> std::io::Result<()>,
{
    let (header, crc) = snapshot_file_prefix(snapshot_id);
    out.write_all(&header)?;
    let mut pieces = Pieces {
        out,
        buf: Vec::with_capacity(piece),
        piece: piece.max(1),
        crc,
        after_piece,
        total: 0,
    };
    fill(&mut pieces)?;
    pieces.write_piece()?;
    let (out, checksum, total) = (pieces.out, pieces.crc.finalize(), pieces.total);
    out.seek(std::io::SeekFrom::Start(8))?;
    out.write_all(&checksum.to_be_bytes())?;
    out.seek(std::io::SeekFrom::End(0))?;
    Ok(total)
}

/// Collects encoded bytes and passes them on a piece at a time, checksummed.
struct Pieces<'a, W, F> {
    out: &'a mut W,
    buf: Vec<u8>,
    piece: usize,
    crc: crc32fast::Hasher,
    after_piece: F,
    total: u64,
}

impl<W: std::io::Write, F: FnMut(&mut W) -> std::io::Result<()>> Pieces<'_, W, F> {
    fn write_piece(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.crc.update(&self.buf);
        self.out.write_all(&self.buf)?;
        (self.after_piece)(self.out)?;
        self.total += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

impl<W: std::io::Write, F: FnMut(&mut W) -> std::io::Result<()>> std::io::Write
    for Pieces<'_, W, F>
{
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        // A long run of bytes (received snapshot data, a large session) is cut into pieces too.
        let mut rest = bytes;
        while !rest.is_empty() {
            let take = (self.piece - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() >= self.piece {
                self.write_piece()?;
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Decodes a snapshot file into its snapshot id and data, verifying magic and checksum.
pub fn decode_snapshot_file(bytes: &[u8]) -> Result<(String, &[u8]), SnapshotFileError> {
    let truncated = SnapshotFileError::Truncated { len: bytes.len() };
    if bytes.len() < 14 {
        return Err(if bytes.len() >= 8 && bytes[..8] != SNAPSHOT_FILE_MAGIC {
            SnapshotFileError::BadMagic
        } else {
            truncated
        });
    }
    if bytes[..8] != SNAPSHOT_FILE_MAGIC {
        return Err(SnapshotFileError::BadMagic);
    }
    let stored = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let computed = crc32fast::hash(&bytes[12..]);
    if stored != computed {
        return Err(SnapshotFileError::Checksum { stored, computed });
    }
    let id_len = u16::from_be_bytes([bytes[12], bytes[13]]) as usize;
    let rest = &bytes[14..];
    if rest.len() < id_len {
        return Err(truncated);
    }
    let (id, data) = rest.split_at(id_len);
    let id = std::str::from_utf8(id).map_err(|_| SnapshotFileError::BadId)?;
    Ok((id.to_string(), data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_file_written_in_pieces_equals_the_one_encoded_whole() {
        let snapshot = SessionSnapshot {
            last_applied: None,
            last_membership: StoredMembership::default(),
            sessions: (0..50u8)
                .map(|i| SessionRecord {
                    id: SessionId::from_bytes([i; 16]),
                    data: "x".repeat(usize::from(i) * 7),
                    version: 1,
                    created_ms: 1,
                    last_access_ms: 2,
                    ttl_ms: 3,
                })
                .collect(),
        };
        let whole = encode_snapshot_file("1-2-3-0", &crate::encode(&snapshot));
        for piece in [1, 7, 100, 1 << 20] {
            let mut out = std::io::Cursor::new(Vec::new());
            let mut pieces = 0;
            let written = write_snapshot_file(&mut out, "1-2-3-0", &snapshot, piece, |_| {
                pieces += 1;
                Ok(())
            })
            .expect("write");
            let file = out.into_inner();
            assert_eq!(file, whole, "piece size {piece}");
            assert_eq!(written as usize, crate::encode(&snapshot).len());
            assert_eq!(
                pieces,
                (written as usize).div_ceil(piece),
                "piece size {piece}"
            );
            // Encoded data written as bytes gives the same file, in the same pieces.
            let mut out = std::io::Cursor::new(Vec::new());
            let encoded = crate::encode(&snapshot);
            let mut byte_pieces = 0;
            write_snapshot_file_bytes(&mut out, "1-2-3-0", &encoded, piece, |_| {
                byte_pieces += 1;
                Ok(())
            })
            .expect("write bytes");
            assert_eq!(out.into_inner(), whole, "bytes, piece size {piece}");
            assert_eq!(byte_pieces, pieces);
            let (id, data) = decode_snapshot_file(&file).expect("decodes");
            assert_eq!(
                (id.as_str(), data),
                ("1-2-3-0", &crate::encode(&snapshot)[..])
            );
        }
    }

    #[test]
    fn session_id_text_round_trip() {
        for _ in 0..100 {
            let id = SessionId::generate();
            let text = id.to_string();
            assert_eq!(text.len(), SESSION_ID_TEXT_LEN);
            assert_eq!(text.parse::<SessionId>(), Ok(id));
        }
    }

    #[test]
    fn session_id_rejects_other_text() {
        let good = "00112233445566778899aabbccddeeff";
        assert!(good.parse::<SessionId>().is_ok());
        for bad in [
            "",
            "00112233445566778899aabbccddeef",
            "00112233445566778899aabbccddeeff0",
            "00112233445566778899AABBCCDDEEFF",
            "0011223344556677889-aabbccddeeff",
            "00112233445566778899aabbccddeeg0",
            "é0112233445566778899aabbccddeef",
            " 0112233445566778899aabbccddeeff",
        ] {
            assert!(bad.parse::<SessionId>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn session_id_is_16_bytes_in_postcard() {
        let id = SessionId::from_bytes([7; 16]);
        let bytes = crate::encode(&id);
        assert_eq!(bytes, vec![7; 16]);
        assert_eq!(crate::decode::<SessionId>(&bytes).ok(), Some(id));
    }

    #[test]
    fn expiry_is_inclusive_and_saturating() {
        let record = SessionRecord {
            id: SessionId::from_bytes([1; 16]),
            data: "{}".into(),
            version: 1,
            created_ms: 0,
            last_access_ms: 100,
            ttl_ms: 50,
        };
        assert_eq!(record.expires_at_ms(), 150);
        assert!(!record.is_expired_at(149));
        assert!(record.is_expired_at(150));
        let forever = SessionRecord {
            ttl_ms: u64::MAX,
            ..record
        };
        assert_eq!(forever.expires_at_ms(), u64::MAX);
    }

    #[test]
    fn frame_round_trip_and_limits() {
        let hello = Hello {
            wire_version: PEER_WIRE_VERSION,
            cluster_id: "demo".into(),
            from_name: "node-1".into(),
        };
        let frame = encode_frame(&hello).expect("small frame");
        let len = decode_frame_len([frame[0], frame[1], frame[2], frame[3]]).expect("length");
        assert_eq!(len, frame.len() - FRAME_HEADER_BYTES);
        let decoded: Hello = decode_frame_body(&frame[FRAME_HEADER_BYTES..]).expect("body");
        assert_eq!(decoded, hello);

        let too_big = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes();
        assert!(matches!(
            decode_frame_len(too_big),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(decode_frame_len(u32::MAX.to_be_bytes()).is_err());

        let huge = SessionCommand::Put {
            id: SessionId::from_bytes([0; 16]),
            data: "x".repeat(MAX_FRAME_BYTES),
            expected_version: None,
            ttl_ms: None,
            now_ms: 0,
        };
        assert!(matches!(
            encode_frame(&PeerRequest::ClientWrite(huge)),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn snapshot_file_round_trip_and_damage() {
        let file = encode_snapshot_file("1-2-3", b"payload");
        assert_eq!(
            decode_snapshot_file(&file),
            Ok(("1-2-3".to_string(), &b"payload"[..]))
        );
        for cut in 0..file.len() {
            assert!(decode_snapshot_file(&file[..cut]).is_err(), "cut at {cut}");
        }
        for at in 0..file.len() {
            let mut damaged = file.clone();
            damaged[at] ^= 0x40;
            assert!(decode_snapshot_file(&damaged).is_err(), "flip at {at}");
        }
    }
}

#[cfg(test)]
mod stamp_tests {
    use super::*;

    #[test]
    fn stamp_replaces_every_time_but_nothing_else() {
        let id = SessionId::from_bytes([7; 16]);
        let mut create = SessionCommand::Create {
            id,
            data: "{}".into(),
            ttl_ms: 5,
            now_ms: 1,
        };
        create.stamp(99);
        assert!(matches!(
            create,
            SessionCommand::Create {
                now_ms: 99,
                ttl_ms: 5,
                ..
            }
        ));
        let mut touch = SessionCommand::Touch {
            touches: vec![(id, 1), (id, 3_000_000_000_000)],
        };
        touch.stamp(42);
        assert!(
            matches!(&touch, SessionCommand::Touch { touches } if touches.iter().all(|t| t.1 == 42))
        );
        let mut delete = SessionCommand::Delete { id };
        delete.stamp(42);
        assert!(matches!(delete, SessionCommand::Delete { .. }));
    }
}

/// The first bytes of a backup file; a format change takes a new magic.
pub const BACKUP_FILE_MAGIC: [u8; 8] = *b"MTBACK01";

/// A backup: every session and the configuration, as of one applied log index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// `id` of `<cluster>` where it was taken.
    pub cluster_id: String,
    /// The node that wrote it.
    pub node: String,
    /// Applied log index the sessions are consistent with.
    pub log_index: u64,
    /// Wall-clock time it was taken, ms since the Unix epoch.
    pub created_ms: u64,
    /// The node's config file, verbatim (empty when it runs without one).
    pub config_xml: String,
    /// Every session.
    pub sessions: Vec<SessionRecord>,
}

/// A backup file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum BackupFileError {
    /// Not a backup file (or a version we do not know).
    #[error("not a micro-tomcat backup (expected it to start with {:?})", String::from_utf8_lossy(&BACKUP_FILE_MAGIC))]
    BadMagic,
    /// The body does not decode.
    #[error("damaged backup: {0}")]
    Body(#[from] crate::DecodeError),
}

/// Encodes a backup file: the magic, then the postcard-encoded [`Backup`].
pub fn encode_backup_file(backup: &Backup) -> Vec<u8> {
    let mut bytes = BACKUP_FILE_MAGIC.to_vec();
    bytes.extend(crate::encode(backup));
    bytes
}

/// Decodes a backup file; never panics on damaged input.
pub fn decode_backup_file(bytes: &[u8]) -> Result<Backup, BackupFileError> {
    let body = bytes
        .strip_prefix(&BACKUP_FILE_MAGIC[..])
        .ok_or(BackupFileError::BadMagic)?;
    Ok(crate::decode(body)?)
}
