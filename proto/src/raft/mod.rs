//! Raft types of the replicated session store, one file per format:
//!
//! - [`session`]: what the state machine holds and applies (session records, commands, answers,
//!   snapshots): the payload of log entries, on the wire and on disk;
//! - [`peer`]: the peer port's frames: hello, the keyed handshake, requests and responses;
//! - [`snapshot_file`]: a snapshot as stored in the data dir;
//! - [`backup_file`]: a backup as written by `micro-tomcat backup`.
//!
//! Everything here is postcard-encoded and pinned by a golden file under `tests/golden/`.
//! A change that alters an encoding must bump [`PEER_WIRE_VERSION`] (network) or the file's
//! magic (disk), and regenerate the golden files with `UPDATE_GOLDEN=1`. Every item is re-exported
//! here, so users write `proto::raft::SessionCommand` whichever file holds it.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub mod backup_file;
pub mod peer;
pub mod session;
pub mod snapshot_file;

pub use backup_file::*;
pub use peer::*;
pub use session::*;
pub use snapshot_file::*;

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
