//! The peer port's frames: the [`Hello`] exchange, the keyed handshake ([`PeerAuth`]), requests and
//! responses, and the length-prefixed framing they travel in.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{CommandResponse, LogId, NodeId, PeerNode, SessionCommand, TypeConfig};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::SessionId;

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
}
