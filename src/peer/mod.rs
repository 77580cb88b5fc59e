//! The peer port: TCP on the node's `--cluster` address, carrying Raft messages, forwarded writes and
//! read-index requests (answered by `raft`), and hop channels (served by `proxy::hop`).
//!
//! Every connection starts with a [`Hello`] each way; a peer of another cluster or wire version is refused
//! with a log line. Then each request frame gets exactly one response frame, in order. Frames are a
//! big-endian `u32` length and a postcard body (`proto::raft`); oversize lengths are refused before
//! anything is allocated, and bodies are read as they arrive, never pre-allocated from the header.
//!
//! With a cluster key, the hellos are followed by a [`PeerAuth`] exchange: a random nonce each way,
//! then an HMAC-SHA256 proof of the key from the connecting side and, once it checked out, from the
//! accepting side. A peer without the key (or with another) is refused with a log line naming its
//! address. Every later frame is sealed with ChaCha20-Poly1305 under per-connection, per-direction keys
//! derived from the handshake, with a frame counter as nonce and the length header as associated
//! data: peer traffic is then confidential, and a frame that is forged, altered, replayed or
//! reordered ends the connection. Before the handshake completes a stranger gets no more than
//! [`MAX_HELLO_BYTES`] per frame and [`HELLO_TIMEOUT`] in all.
//!
//! This module holds what both ends share (frames, hellos, the keyed handshake, [`PeerStream`],
//! [`PeerError`]); [`client`] dials and pools, [`server`] accepts and dispatches, [`traffic`] counts.

pub mod client;
pub mod server;
#[cfg(test)]
pub(crate) mod tests;
pub mod traffic;

use std::net::SocketAddr;
use std::time::Duration;

use proto::raft::{
    FRAME_HEADER_BYTES, Hello, PEER_AUTH_MAGIC, PEER_WIRE_VERSION, PeerAuth, PeerAuthStep,
    decode_frame_body, decode_frame_len, encode_frame,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::crypto::{
    FrameCipher, PEER_NONCE_BYTES, PeerKey, PeerRole, PeerTranscript, TAG_BYTES, random_bytes,
};
use crate::logging::escape_for_log;

pub use client::{AddressBook, PeerAt, PeerClient};
pub use traffic::{PEER_TRAFFIC, PeerTraffic};

/// Largest `Hello` (or handshake step) accepted: a stranger gets no more than this per frame before
/// it has introduced (and, with a key, authenticated) itself.
pub const MAX_HELLO_BYTES: usize = 4096;
/// Time a new connection gets to complete the handshake.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Most peer connections served at once: members hold a few each (pooled RPC connections and one hop
/// channel), so this is room for hundreds of members.
pub const MAX_PEER_CONNECTIONS: usize = 4096;

/// What can go wrong talking to a peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No TCP connection could be made.
    #[error("cannot connect to peer {addr}: {source}")]
    Connect {
        /// Peer address.
        addr: SocketAddr,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The connection broke mid-exchange.
    #[error("peer {addr}: {source}")]
    Io {
        /// Peer address.
        addr: SocketAddr,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("peer {addr} did not answer within {timeout:?}")]
    Timeout {
        /// Peer address.
        addr: SocketAddr,
        /// The deadline.
        timeout: Duration,
    },
    /// The bytes were not a valid frame or message.
    #[error("peer {addr} sent an invalid frame: {reason}")]
    Protocol {
        /// Peer address.
        addr: SocketAddr,
        /// What was wrong.
        reason: String,
    },
    /// The peer is of another cluster or speaks another wire version.
    #[error("peer {addr} refused: {reason}")]
    Handshake {
        /// Peer address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// With a cluster key: the peer did not prove it holds the same key.
    #[error("peer {addr} refused: {reason}")]
    Unauthenticated {
        /// Peer address.
        addr: SocketAddr,
        /// Why (never the key).
        reason: String,
    },
    /// Another node answers at the address (the one wanted moved away or was replaced there).
    #[error(
        "{found} answers at {addr}, not {expected}: {expected} moved or its address was reused"
    )]
    WrongPeer {
        /// Peer address.
        addr: SocketAddr,
        /// The node the call was meant for.
        expected: String,
        /// The node that answered.
        found: String,
    },
}

impl PeerError {
    /// Whether the peer could not be reached at all (nothing was sent).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            PeerError::Connect { .. } | PeerError::WrongPeer { .. }
        )
    }
}

/// A peer connection: the TCP stream and, after a keyed handshake, its two frame ciphers.
pub struct PeerStream {
    stream: TcpStream,
    /// `(sending, receiving)`.
    ciphers: Option<(FrameCipher, FrameCipher)>,
    /// The name the other side gave in its hello (empty on the accepting side).
    peer_name: String,
}

impl PeerStream {
    /// A connection that has not been through the handshake: frames are plain.
    pub fn new(stream: TcpStream) -> PeerStream {
        PeerStream {
            stream,
            ciphers: None,
            peer_name: String::new(),
        }
    }

    /// The socket, its peer's address and, after a keyed handshake, the `(sending, receiving)`
    /// ciphers, for a connection that goes on with another framing (a hop channel).
    pub(crate) fn into_parts(self) -> (TcpStream, Option<(FrameCipher, FrameCipher)>) {
        (self.stream, self.ciphers)
    }
}

async fn write_frame<T: Serialize>(
    stream: &mut PeerStream,
    addr: SocketAddr,
    message: &T,
) -> Result<(), PeerError> {
    let mut frame = encode_frame(message).map_err(|err| PeerError::Protocol {
        addr,
        reason: err.to_string(),
    })?;
    if let Some((sending, _)) = &mut stream.ciphers {
        // The header announces the sealed length and is authenticated with the body.
        let sealed_len = frame.len() - FRAME_HEADER_BYTES + TAG_BYTES;
        let header = u32::try_from(sealed_len)
            .map_err(|_| PeerError::Protocol {
                addr,
                reason: format!("frame of {sealed_len} bytes is too large"),
            })?
            .to_be_bytes();
        frame[..FRAME_HEADER_BYTES].copy_from_slice(&header);
        sending
            .seal(&header, &mut frame, FRAME_HEADER_BYTES)
            .map_err(|err| PeerError::Protocol {
                addr,
                reason: err.to_string(),
            })?;
    }
    stream
        .stream
        .write_all(&frame)
        .await
        .map_err(|source| PeerError::Io { addr, source })?;
    PEER_TRAFFIC.record_sent(frame.len(), 1);
    Ok(())
}

async fn read_frame<T: DeserializeOwned>(
    stream: &mut PeerStream,
    addr: SocketAddr,
    limit: usize,
) -> Result<T, PeerError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    stream
        .stream
        .read_exact(&mut header)
        .await
        .map_err(|source| PeerError::Io { addr, source })?;
    let (len, limit) = if stream.ciphers.is_some() {
        // A sealed body is the plain body and its tag.
        (u32::from_be_bytes(header) as usize, limit + TAG_BYTES)
    } else {
        let len = decode_frame_len(header).map_err(|err| PeerError::Protocol {
            addr,
            reason: err.to_string(),
        })?;
        (len, limit)
    };
    if len > limit {
        return Err(PeerError::Protocol {
            addr,
            reason: format!("frame of {len} bytes exceeds {limit} bytes at this point"),
        });
    }
    // Grow with the bytes that really arrive, so a lying header cannot make us allocate.
    let mut body = Vec::with_capacity(len.min(64 * 1024));
    let read = (&mut stream.stream)
        .take(len as u64)
        .read_to_end(&mut body)
        .await
        .map_err(|source| PeerError::Io { addr, source })?;
    if read != len {
        return Err(PeerError::Io {
            addr,
            source: std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("frame cut short: {read} of {len} bytes"),
            ),
        });
    }
    PEER_TRAFFIC.record_received(FRAME_HEADER_BYTES + len, 1);
    if let Some((_, receiving)) = &mut stream.ciphers {
        receiving
            .open(&header, &mut body)
            .map_err(|err| PeerError::Protocol {
                addr,
                reason: err.to_string(),
            })?;
    }
    decode_frame_body(&body).map_err(|err| PeerError::Protocol {
        addr,
        reason: err.to_string(),
    })
}

/// Reads one handshake step of the expected kind; anything else means the peer does not hold the key.
async fn read_auth_step(
    stream: &mut PeerStream,
    addr: SocketAddr,
    peer_name: &str,
    want_proof: bool,
) -> Result<[u8; PEER_NONCE_BYTES], PeerError> {
    let refused = |why: &str| PeerError::Unauthenticated {
        addr,
        reason: format!(
            "{peer_name} did not authenticate ({why}); does it have the cluster key              (MICRO_TOMCAT_GOSSIP_KEY or <security gossip-key-file>)?"
        ),
    };
    let auth: PeerAuth = match read_frame(stream, addr, MAX_HELLO_BYTES).await {
        Ok(auth) => auth,
        Err(PeerError::Protocol { .. }) => return Err(refused("it sent no handshake step")),
        Err(err) => return Err(err),
    };
    if auth.magic != PEER_AUTH_MAGIC {
        return Err(refused("it sent no handshake step"));
    }
    match (auth.step, want_proof) {
        (PeerAuthStep::Nonce(nonce), false) => Ok(nonce),
        (PeerAuthStep::Proof(proof), true) => Ok(proof),
        _ => Err(refused("handshake steps out of order")),
    }
}

fn fresh_nonce(addr: SocketAddr) -> Result<[u8; PEER_NONCE_BYTES], PeerError> {
    random_bytes().map_err(|err| PeerError::Handshake {
        addr,
        reason: err.to_string(),
    })
}

/// The connecting side of the keyed handshake, after the hellos; installs the frame ciphers.
async fn authenticate_as_client(
    stream: &mut PeerStream,
    addr: SocketAddr,
    key: &PeerKey,
    ours: &Hello,
    theirs: &Hello,
    client_nonce: [u8; PEER_NONCE_BYTES],
) -> Result<(), PeerError> {
    let server_nonce = read_auth_step(stream, addr, &theirs.from_name, false).await?;
    let transcript = PeerTranscript {
        wire_version: PEER_WIRE_VERSION,
        cluster_id: &ours.cluster_id,
        client_name: &ours.from_name,
        server_name: &theirs.from_name,
        client_nonce,
        server_nonce,
    };
    let proof = key.proof(PeerRole::Client, &transcript);
    write_frame(stream, addr, &PeerAuth::proof(proof)).await?;
    // A server that rejects our proof closes without proving itself.
    let theirs_proof = match read_auth_step(stream, addr, &theirs.from_name, true).await {
        Err(PeerError::Io { .. }) => {
            return Err(PeerError::Unauthenticated {
                addr,
                reason: format!(
                    "{} closed the connection after our proof: it has another cluster key",
                    theirs.from_name
                ),
            });
        }
        other => other?,
    };
    if !key.verify(PeerRole::Server, &transcript, &theirs_proof) {
        return Err(PeerError::Unauthenticated {
            addr,
            reason: format!(
                "{} did not prove it holds the cluster key (it has another one)",
                theirs.from_name
            ),
        });
    }
    stream.ciphers = Some(key.frame_ciphers(PeerRole::Client, &transcript));
    Ok(())
}

/// The accepting side of the keyed handshake, after the hellos; installs the frame ciphers.
async fn authenticate_as_server(
    stream: &mut PeerStream,
    addr: SocketAddr,
    key: &PeerKey,
    ours: &Hello,
    theirs: &Hello,
) -> Result<(), PeerError> {
    let server_nonce = fresh_nonce(addr)?;
    write_frame(stream, addr, &PeerAuth::nonce(server_nonce)).await?;
    let client_nonce = read_auth_step(stream, addr, &theirs.from_name, false).await?;
    let transcript = PeerTranscript {
        wire_version: PEER_WIRE_VERSION,
        cluster_id: &ours.cluster_id,
        client_name: &theirs.from_name,
        server_name: &ours.from_name,
        client_nonce,
        server_nonce,
    };
    let proof = read_auth_step(stream, addr, &theirs.from_name, true).await?;
    if !key.verify(PeerRole::Client, &transcript, &proof) {
        return Err(PeerError::Unauthenticated {
            addr,
            reason: format!(
                "{} did not prove it holds the cluster key (it has another one)",
                theirs.from_name
            ),
        });
    }
    let ours_proof = key.proof(PeerRole::Server, &transcript);
    write_frame(stream, addr, &PeerAuth::proof(ours_proof)).await?;
    stream.ciphers = Some(key.frame_ciphers(PeerRole::Server, &transcript));
    Ok(())
}

fn check_hello(hello: &Hello, cluster_id: &str, addr: SocketAddr) -> Result<(), PeerError> {
    // Checked first: the name goes into every later message about this peer.
    if !crate::config::is_node_name(&hello.from_name) {
        return Err(PeerError::Handshake {
            addr,
            reason: format!(
                "the peer's hello names \"{}\", which is no node name",
                escape_for_log(&hello.from_name)
            ),
        });
    }
    if hello.wire_version != PEER_WIRE_VERSION {
        return Err(PeerError::Handshake {
            addr,
            reason: format!(
                "{} speaks peer wire version {}, this node speaks {PEER_WIRE_VERSION}",
                hello.from_name, hello.wire_version
            ),
        });
    }
    if hello.cluster_id != cluster_id {
        return Err(PeerError::Handshake {
            addr,
            reason: format!(
                "{} belongs to cluster \"{}\", this node to {cluster_id:?}",
                hello.from_name,
                escape_for_log(&hello.cluster_id)
            ),
        });
    }
    Ok(())
}

/// The accepting side's handshake: hellos, then with a key the proof exchange.
pub async fn accept_handshake(
    stream: &mut PeerStream,
    addr: SocketAddr,
    hello: &Hello,
    key: Option<&PeerKey>,
) -> Result<(), PeerError> {
    let theirs: Hello = read_frame(stream, addr, MAX_HELLO_BYTES).await?;
    check_hello(&theirs, &hello.cluster_id, addr)?;
    write_frame(stream, addr, hello).await?;
    if let Some(key) = key {
        authenticate_as_server(stream, addr, key, hello, &theirs).await?;
    }
    Ok(())
}
