//! The state machine's data: session ids and records, the commands proposed through Raft, what
//! applying them answers, and the snapshot of the whole store.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{LogId, StoredMembership};

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

#[cfg(test)]
mod tests {
    use super::*;

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
