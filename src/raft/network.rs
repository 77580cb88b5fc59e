//! Peer RPC: Raft messages and forwarded writes over TCP on the node's `--cluster` port.
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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use proto::raft::{
    FRAME_HEADER_BYTES, Hello, NodeId, PEER_AUTH_MAGIC, PEER_WIRE_VERSION, PeerAuth, PeerAuthStep,
    PeerNode, PeerRequest, PeerResponse, TypeConfig, decode_frame_body, decode_frame_len,
    encode_frame,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::durable::Durability;
use crate::security::{
    FrameCipher, LogThrottle, PEER_NONCE_BYTES, PeerKey, PeerRole, PeerTranscript, TAG_BYTES,
    escape_for_log, random_bytes,
};

/// Largest `Hello` (or handshake step) accepted: a stranger gets no more than this per frame before
/// it has introduced (and, with a key, authenticated) itself.
pub const MAX_HELLO_BYTES: usize = 4096;
/// Time a new connection gets to complete the handshake.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Peers refused for not holding the cluster key are logged at most this often (with the number held
/// back): a misconfigured node retries several times a second.
static REFUSED_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(10));
/// Connections dropped for another reason (a bad hello, an undecodable frame) are logged at most this often.
static DROPPED_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(10));
/// Failed accepts (out of file descriptors, say) are logged at most this often.
static ACCEPT_FAILED_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(10));
/// Most peer connections served at once: members hold a few each (pooled RPC connections and one hop
/// channel), so this is room for hundreds of members.
pub const MAX_PEER_CONNECTIONS: usize = 4096;
/// Shortest deadline given to a Raft RPC.
const MIN_RPC_TIMEOUT: Duration = Duration::from_millis(500);
/// Idle connections kept per peer.
const MAX_IDLE_PER_PEER: usize = 16;

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

/// Peer RPC traffic of this process (both directions, Raft and forwarded writes, hellos included).
///
/// Process-wide rather than per node: a process runs one node, and counting in the frame functions
/// keeps every call site as it is.
#[derive(Debug, Default)]
pub struct PeerTraffic {
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
}

/// The counters of this process.
pub static PEER_TRAFFIC: PeerTraffic = PeerTraffic {
    bytes_sent: AtomicU64::new(0),
    bytes_received: AtomicU64::new(0),
    frames_sent: AtomicU64::new(0),
    frames_received: AtomicU64::new(0),
};

impl PeerTraffic {
    /// Counts frames sent outside this module (hop channels).
    pub(crate) fn record_sent(&self, bytes: usize, frames: u64) {
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
        self.frames_sent.fetch_add(frames, Ordering::Relaxed);
    }

    /// Counts frames received outside this module (hop channels).
    pub(crate) fn record_received(&self, bytes: usize, frames: u64) {
        self.bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.frames_received.fetch_add(frames, Ordering::Relaxed);
    }

    /// `(bytes sent, bytes received, frames sent, frames received)` since start.
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.bytes_sent.load(Ordering::Relaxed),
            self.bytes_received.load(Ordering::Relaxed),
            self.frames_sent.load(Ordering::Relaxed),
            self.frames_received.load(Ordering::Relaxed),
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
    PEER_TRAFFIC
        .bytes_sent
        .fetch_add(frame.len() as u64, Ordering::Relaxed);
    PEER_TRAFFIC.frames_sent.fetch_add(1, Ordering::Relaxed);
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
    PEER_TRAFFIC
        .bytes_received
        .fetch_add((FRAME_HEADER_BYTES + len) as u64, Ordering::Relaxed);
    PEER_TRAFFIC.frames_received.fetch_add(1, Ordering::Relaxed);
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

/// Whether resending `request` after an unknown outcome is harmless.
fn request_is_idempotent(request: &PeerRequest) -> bool {
    !matches!(request, PeerRequest::ClientWrite(_))
}

/// Pooled client connections to peers.
#[derive(Clone)]
pub struct PeerClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    hello: Hello,
    key: Option<PeerKey>,
    idle: Mutex<HashMap<SocketAddr, Vec<PeerStream>>>,
}

impl PeerClient {
    /// A client that introduces itself as `name` of `cluster_id`, and with a `key` authenticates.
    pub fn new(cluster_id: &str, name: &str, key: Option<PeerKey>) -> PeerClient {
        PeerClient {
            inner: Arc::new(ClientInner {
                hello: Hello {
                    wire_version: PEER_WIRE_VERSION,
                    cluster_id: cluster_id.to_string(),
                    from_name: name.to_string(),
                },
                key,
                idle: Mutex::new(HashMap::new()),
            }),
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<PeerStream, PeerError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| PeerError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        let mut stream = PeerStream::new(stream);
        let ours = &self.inner.hello;
        write_frame(&mut stream, addr, ours).await?;
        let client_nonce = match &self.inner.key {
            Some(_) => {
                let nonce = fresh_nonce(addr)?;
                write_frame(&mut stream, addr, &PeerAuth::nonce(nonce)).await?;
                Some(nonce)
            }
            None => None,
        };
        let theirs: Hello = read_frame(&mut stream, addr, MAX_HELLO_BYTES).await?;
        check_hello(&theirs, &ours.cluster_id, addr)?;
        if let (Some(key), Some(nonce)) = (&self.inner.key, client_nonce) {
            authenticate_as_client(&mut stream, addr, key, ours, &theirs, nonce).await?;
        }
        stream.peer_name = theirs.from_name;
        Ok(stream)
    }

    /// Opens a connection to `addr` and turns it into a hop channel (see [`crate::proxy::hop`]).
    pub(crate) async fn open_hop(&self, addr: SocketAddr) -> Result<PeerStream, PeerError> {
        let mut stream = self.connect(addr).await?;
        write_frame(&mut stream, addr, &PeerRequest::OpenHop).await?;
        match read_frame(&mut stream, addr, MAX_HELLO_BYTES).await? {
            PeerResponse::HopOpened => Ok(stream),
            other => Err(PeerError::Protocol {
                addr,
                reason: format!("asked for a hop channel, got {other:?}"),
            }),
        }
    }

    /// A pooled connection to `peer`. Pooled connections to another node at its address (one that
    /// took the address over) are all dropped instead.
    fn take_idle(&self, peer: &PeerAt) -> Option<PeerStream> {
        let mut idle = self
            .inner
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let streams = idle.get_mut(&peer.addr)?;
        if streams.last()?.peer_name != peer.name {
            idle.remove(&peer.addr);
            return None;
        }
        streams.pop()
    }

    fn put_idle(&self, addr: SocketAddr, stream: PeerStream) {
        let mut idle = self
            .inner
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let streams = idle.entry(addr).or_default();
        if streams.len() < MAX_IDLE_PER_PEER {
            streams.push(stream);
        }
    }

    /// Drops every idle connection to `addr` (the peer went down or changed).
    pub fn forget(&self, addr: SocketAddr) {
        let mut idle = self
            .inner
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        idle.remove(&addr);
    }

    /// Sends one request to `peer` and waits for its response. A node answering at the address under
    /// another name is not used ([`PeerError::WrongPeer`], nothing sent).
    pub async fn call(
        &self,
        peer: &PeerAt,
        request: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, PeerError> {
        let addr = peer.addr;
        let exchange = async {
            if let Some(mut stream) = self.take_idle(peer) {
                match self.exchange(&mut stream, addr, request).await {
                    Ok(response) => {
                        self.put_idle(addr, stream);
                        return Ok(response);
                    }
                    // The peer may have closed a pooled connection meanwhile. Raft messages are safe to
                    // resend; a forwarded write is resent only if it never left this node.
                    Err((err, sent)) if sent && !request_is_idempotent(request) => return Err(err),
                    Err((err, _)) => {
                        debug!(peer = %addr, error = %err, "pooled connection failed; reconnecting")
                    }
                }
            }
            let mut stream = self.connect(addr).await?;
            if stream.peer_name != peer.name {
                return Err(PeerError::WrongPeer {
                    addr,
                    expected: peer.name.clone(),
                    found: std::mem::take(&mut stream.peer_name),
                });
            }
            let response = self
                .exchange(&mut stream, addr, request)
                .await
                .map_err(|(err, _)| err)?;
            self.put_idle(addr, stream);
            Ok(response)
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| PeerError::Timeout { addr, timeout })?
    }

    async fn exchange(
        &self,
        stream: &mut PeerStream,
        addr: SocketAddr,
        request: &PeerRequest,
    ) -> Result<PeerResponse, (PeerError, bool)> {
        write_frame(stream, addr, request)
            .await
            .map_err(|err| (err, false))?;
        read_frame(stream, addr, proto::raft::MAX_FRAME_BYTES)
            .await
            .map_err(|err| (err, true))
    }
}

/// What a peer request is answered by (the Raft node).
pub trait PeerHandler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, request: PeerRequest) -> impl Future<Output = PeerResponse> + Send;

    /// Serves hop channels, if this node does (see [`crate::proxy::hop`]).
    fn hop_server(&self) -> Option<Arc<crate::proxy::hop::HopServer>> {
        None
    }
}

/// Accepts peer connections until `shutdown`; with a `key`, only from peers that prove they hold it.
pub async fn serve<H: PeerHandler>(
    listener: TcpListener,
    handler: Arc<H>,
    hello: Hello,
    key: Option<PeerKey>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_PEER_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                if let Some(held_back) = ACCEPT_FAILED_LOG.allow() {
                    warn!(error = %err, held_back, "peer accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Past the cap a connection is closed at once: held connections (a stranger's, without a
        // cluster key) can then cost this node no more than this many descriptors.
        let Ok(slot) = connections.clone().try_acquire_owned() else {
            if let Some(held_back) = DROPPED_LOG.allow() {
                warn!(peer = %addr, held_back, "refused peer connection: {MAX_PEER_CONNECTIONS} peer connections are open");
            }
            drop(stream);
            continue;
        };
        let handler = handler.clone();
        let hello = hello.clone();
        let key = key.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let _slot = slot;
            tokio::select! {
                _ = shutdown.cancelled() => {}
                result = serve_connection(stream, addr, handler, hello, key) => {
                    if let Err(err) = result {
                        // Anyone who reaches the port can cause these, as often as they like: one
                        // line per 10 s (with the count held back), the peer's text escaped.
                        let error = escape_for_log(&err.to_string());
                        match err {
                            PeerError::Io { .. } => debug!(peer = %addr, %error, "peer connection closed"),
                            PeerError::Unauthenticated { .. } => {
                                if let Some(held_back) = REFUSED_LOG.allow() {
                                    warn!(peer = %addr, %error, held_back, "refused peer connection");
                                }
                            }
                            _ => {
                                if let Some(held_back) = DROPPED_LOG.allow() {
                                    warn!(peer = %addr, %error, held_back, "dropped peer connection");
                                }
                            }
                        }
                    }
                }
            }
        });
    }
}

async fn serve_connection<H: PeerHandler>(
    stream: TcpStream,
    addr: SocketAddr,
    handler: Arc<H>,
    hello: Hello,
    key: Option<PeerKey>,
) -> Result<(), PeerError> {
    let _ = stream.set_nodelay(true);
    let mut stream = PeerStream::new(stream);
    tokio::time::timeout(
        HELLO_TIMEOUT,
        accept_handshake(&mut stream, addr, &hello, key.as_ref()),
    )
    .await
    .map_err(|_| PeerError::Timeout {
        addr,
        timeout: HELLO_TIMEOUT,
    })??;
    loop {
        let request: PeerRequest =
            match read_frame(&mut stream, addr, proto::raft::MAX_FRAME_BYTES).await {
                Ok(request) => request,
                Err(PeerError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    return Ok(());
                }
                Err(err) => return Err(err),
            };
        if let PeerRequest::OpenHop = request {
            let Some(server) = handler.hop_server() else {
                let refusal = PeerResponse::Error("this node serves no hop channels".to_string());
                write_frame(&mut stream, addr, &refusal).await?;
                continue;
            };
            write_frame(&mut stream, addr, &PeerResponse::HopOpened).await?;
            return server.serve_channel(stream, addr).await;
        }
        let response = handler.handle(request).await;
        write_frame(&mut stream, addr, &response).await?;
    }
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

/// A member to call: where it is, and the node name it must answer with there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAt {
    /// Its cluster (peer RPC) address.
    pub addr: SocketAddr,
    /// Its node name; a node of another name at `addr` is not talked to.
    pub name: String,
}

impl PeerAt {
    /// Where `node` says it is, when its cluster address parses.
    pub fn of(node: &PeerNode) -> Option<PeerAt> {
        Some(PeerAt {
            addr: node.cluster_addr.parse().ok()?,
            name: node.name.clone(),
        })
    }
}

/// Where a Raft member can be reached now. A node restarted at another address keeps its Raft id, so
/// its peers look it up by id in gossip first (see `reconcile::gossiped_address`) and fall back to the
/// node recorded in the Raft membership, which the leader updates later. Either way the call is
/// checked against the name that source gives: an address that another node took over (an IP
/// reused while the member is down) is never mistaken for the member.
#[derive(Clone)]
pub struct AddressBook {
    gossiped: Arc<dyn Fn(NodeId) -> Option<PeerAt> + Send + Sync>,
}

impl AddressBook {
    /// A book that asks `gossiped` where a member is by Raft id (`None` when gossip cannot say).
    pub fn new(gossiped: impl Fn(NodeId) -> Option<PeerAt> + Send + Sync + 'static) -> Self {
        AddressBook {
            gossiped: Arc::new(gossiped),
        }
    }

    /// Where member `id` is: where it gossips from, else where its `recorded` node is.
    pub fn resolve(&self, id: NodeId, recorded: Option<&PeerNode>) -> Option<PeerAt> {
        (self.gossiped)(id).or_else(|| recorded.and_then(PeerAt::of))
    }
}

/// openraft's view of the network: one [`PeerConnection`] per target.
#[derive(Clone)]
pub struct Network {
    client: PeerClient,
    durable: Durability,
    addresses: AddressBook,
    failures: Arc<PeerFailures>,
}

/// Failed Raft calls by peer, so that a dead voter costs one log line per 10 s by name (with the
/// count held back), and its return one line, instead of openraft's four lines per retry.
#[derive(Default)]
struct PeerFailures {
    by_peer: Mutex<HashMap<NodeId, PeerFailure>>,
}

struct PeerFailure {
    /// Failed calls since the peer last answered.
    failed: u64,
    /// Lets the first failure through, then one line per [`PEER_FAILURE_LOG_EVERY`].
    log: LogThrottle,
}

/// How often a peer that keeps failing is logged.
const PEER_FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

impl PeerFailures {
    fn failed(&self, target: NodeId, name: &str, addr: SocketAddr, error: &str) {
        let mut by_peer = self.by_peer.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = by_peer.entry(target).or_insert_with(|| PeerFailure {
            failed: 0,
            log: LogThrottle::new(PEER_FAILURE_LOG_EVERY),
        });
        entry.failed += 1;
        if let Some(held_back) = entry.log.allow() {
            warn!(
                peer = %name,
                %addr,
                failed = entry.failed,
                held_back,
                "raft: cannot reach {name}: {}",
                escape_for_log(error)
            );
        }
    }

    /// The peer answered: its first failure was logged, so its return is too.
    fn answered(&self, target: NodeId, name: &str) {
        let mut by_peer = self.by_peer.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = by_peer.remove(&target) {
            info!(peer = %name, failed = entry.failed, "raft: {name} answers again");
        }
    }
}

impl Network {
    /// Raft traffic through `client`, to the addresses in `addresses` first; a follower's append is
    /// reported once the local log is `durable` up to what the follower matched.
    pub fn new(client: PeerClient, durable: Durability, addresses: AddressBook) -> Network {
        Network {
            failures: Arc::new(PeerFailures::default()),
            client,
            durable,
            addresses,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> PeerConnection {
        PeerConnection {
            target,
            node: node.clone(),
            client: self.client.clone(),
            durable: self.durable.clone(),
            addresses: self.addresses.clone(),
            failures: self.failures.clone(),
        }
    }
}

/// Raft RPCs to one peer.
pub struct PeerConnection {
    target: NodeId,
    /// The target as the Raft membership records it.
    node: PeerNode,
    client: PeerClient,
    durable: Durability,
    addresses: AddressBook,
    failures: Arc<PeerFailures>,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, PeerNode, RaftError<NodeId, E>>>;

impl PeerConnection {
    async fn rpc<E: std::error::Error>(
        &self,
        request: PeerRequest,
        option: &RPCOption,
    ) -> Result<PeerResponse, RPCError<NodeId, PeerNode, RaftError<NodeId, E>>> {
        let Some(peer) = self.addresses.resolve(self.target, Some(&self.node)) else {
            let err =
                std::io::Error::other(format!("node {} has no valid cluster address", self.target));
            return Err(RPCError::Unreachable(Unreachable::new(&err)));
        };
        // openraft's deadline is one heartbeat interval, too short for a batch of large entries on a
        // busy machine: a timeout makes it back off for 500 ms, worse than a late answer.
        let timeout = option.hard_ttl().max(MIN_RPC_TIMEOUT);
        let answer = self.client.call(&peer, &request, timeout).await;
        match &answer {
            Ok(_) => self.failures.answered(self.target, &peer.name),
            Err(err) => self
                .failures
                .failed(self.target, &peer.name, peer.addr, &err.to_string()),
        }
        match answer {
            Ok(PeerResponse::Error(text)) => Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other(text),
            ))),
            Ok(response) => Ok(response),
            Err(err) if err.is_unreachable() => Err(RPCError::Unreachable(Unreachable::new(&err))),
            Err(err) => Err(RPCError::Network(NetworkError::new(&err))),
        }
    }
}

/// Entries of one `AppendEntries` are kept below this many (approximate) bytes, well inside
/// [`proto::raft::MAX_FRAME_BYTES`]: a follower that fell behind is sent the log in pieces instead of
/// one frame it would refuse.
const APPEND_BUDGET_BYTES: usize = 16 * 1024 * 1024;

/// `None` when `entries` fit in `budget` bytes (or there is only one, which must go alone);
/// otherwise how many of the first entries do (at least one).
fn entries_that_fit(entries: &[proto::raft::Entry], budget: usize) -> Option<u64> {
    if entries.len() <= 1 {
        return None;
    }
    let mut total = 0usize;
    for (n, entry) in entries.iter().enumerate() {
        if let openraft::EntryPayload::Normal(command) = &entry.payload {
            total = total.saturating_add(command.approx_bytes());
        }
        if total > budget {
            return Some(n.max(1) as u64);
        }
    }
    None
}

fn unexpected<E: std::error::Error>(
    response: PeerResponse,
) -> RPCError<NodeId, PeerNode, RaftError<NodeId, E>> {
    let err = std::io::Error::other(format!("unexpected peer response: {response:?}"));
    RPCError::Network(NetworkError::new(&err))
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        if let Some(fit) = entries_that_fit(&rpc.entries, APPEND_BUDGET_BYTES) {
            // openraft resends at once with at most `fit` entries.
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fit),
            ));
        }
        let sent_upto = rpc
            .entries
            .last()
            .map(|entry| entry.log_id)
            .or(rpc.prev_log_id);
        let response = match self.rpc(PeerRequest::AppendEntries(rpc), &option).await? {
            PeerResponse::AppendEntries(response) => response,
            other => return Err(unexpected(other)),
        };
        let matched = match &response {
            AppendEntriesResponse::Success => sent_upto,
            AppendEntriesResponse::PartialSuccess(matched) => *matched,
            AppendEntriesResponse::Conflict | AppendEntriesResponse::HigherVote(_) => None,
        };
        // The leader's own copy of what the follower matched may still be on its way to disk
        // (pipelined append): openraft would count it in the quorum, so it hears of the match
        // only once it is synced. See `super::durable`.
        if let Some(matched) = matched
            && !self.durable.is_synced(matched)
        {
            let wait = self.durable.wait_for(matched);
            match tokio::time::timeout(option.hard_ttl(), wait).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return Err(RPCError::Network(NetworkError::new(&err))),
                Err(_) => {
                    let err = std::io::Error::other(format!(
                        "the local log was not synced up to {matched} within {:?}",
                        option.hard_ttl()
                    ));
                    return Err(RPCError::Network(NetworkError::new(&err)));
                }
            }
        }
        Ok(response)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        match self.rpc(PeerRequest::InstallSnapshot(rpc), &option).await? {
            PeerResponse::InstallSnapshot(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        match self.rpc(PeerRequest::Vote(rpc), &option).await? {
            PeerResponse::Vote(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_entries_are_cut_to_the_byte_budget() {
        use openraft::{CommittedLeaderId, EntryPayload};
        use proto::raft::{Entry, LogId, SessionCommand, SessionId};
        let entry = |index: u64, bytes: usize| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(SessionCommand::Create {
                id: SessionId::from_bytes([index as u8; 16]),
                data: "x".repeat(bytes),
                ttl_ms: 1,
                now_ms: 1,
            }),
        };
        let small: Vec<Entry> = (1..=10).map(|i| entry(i, 100)).collect();
        assert_eq!(entries_that_fit(&small, 10_000), None);
        let large: Vec<Entry> = (1..=10).map(|i| entry(i, 3_000)).collect();
        assert_eq!(entries_that_fit(&large, 10_000), Some(3));
        // One entry larger than the budget still goes, alone.
        assert_eq!(entries_that_fit(&large[..1], 10), None);
        assert_eq!(entries_that_fit(&large[..2], 10), Some(1));
    }
    use crate::security::ClusterKey;

    struct Answer;

    impl PeerHandler for Answer {
        async fn handle(&self, request: PeerRequest) -> PeerResponse {
            match request {
                PeerRequest::ReadIndex => PeerResponse::ReadIndex { index: Some(7) },
                PeerRequest::AppendEntries(_) => {
                    PeerResponse::AppendEntries(AppendEntriesResponse::Success)
                }
                _ => PeerResponse::Error("unexpected".to_string()),
            }
        }
    }

    fn key(byte: u8) -> Option<PeerKey> {
        Some(PeerKey::new(&ClusterKey::from_bytes([byte; 32])))
    }

    /// A peer server on a free port with `key`; returns its address.
    async fn server(
        key: Option<PeerKey>,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hello = Hello {
            wire_version: PEER_WIRE_VERSION,
            cluster_id: "demo".to_string(),
            from_name: "server".to_string(),
        };
        tasks.spawn(serve(
            listener,
            Arc::new(Answer),
            hello,
            key,
            shutdown.clone(),
            tasks.clone(),
        ));
        addr
    }

    /// The test server as a member to call.
    fn the_server(addr: SocketAddr) -> PeerAt {
        PeerAt {
            addr,
            name: "server".to_string(),
        }
    }

    async fn read_index(client: &PeerClient, addr: SocketAddr) -> Result<PeerResponse, PeerError> {
        client
            .call(
                &the_server(addr),
                &PeerRequest::ReadIndex,
                Duration::from_secs(5),
            )
            .await
    }

    /// An append to a follower named `name` at `addr` of entries 1..=`last` of term 1, by node 1.
    async fn append_to(
        addr: SocketAddr,
        name: &str,
        durable: &Durability,
        last: u64,
    ) -> tokio::task::JoinHandle<RpcResult<AppendEntriesResponse<NodeId>>> {
        use openraft::{CommittedLeaderId, EntryPayload, Vote};
        use proto::raft::{Entry, LogId};
        let client = PeerClient::new("demo", "leader", None);
        let mut network = Network::new(client, durable.clone(), AddressBook::new(|_| None));
        let node = PeerNode {
            name: name.to_string(),
            cluster_addr: addr.to_string(),
            http_addr: "127.0.0.1:1".to_string(),
        };
        let mut connection = network.new_client(2, &node).await;
        let rpc = AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: (1..=last)
                .map(|index| Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                    payload: EntryPayload::Blank,
                })
                .collect(),
            leader_commit: None,
        };
        tokio::spawn(async move {
            let option = RPCOption::new(Duration::from_secs(5));
            connection.append_entries(rpc, option).await
        })
    }

    #[tokio::test]
    async fn a_node_answering_under_another_name_is_not_taken_for_the_member() {
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        // "server" took over the address where the membership still has "node-3".
        let addr = server(None, &tasks, &shutdown).await;
        let client = PeerClient::new("demo", "leader", None);
        let node_3 = PeerAt {
            addr,
            name: "node-3".to_string(),
        };
        let ask = |peer: PeerAt| {
            let client = client.clone();
            async move {
                client
                    .call(&peer, &PeerRequest::ReadIndex, Duration::from_secs(5))
                    .await
            }
        };
        let err = ask(node_3.clone()).await.expect_err("another node answers");
        assert!(err.is_unreachable(), "nothing was sent: {err}");
        assert!(
            matches!(&err, PeerError::WrongPeer { expected, found, .. } if expected == "node-3" && found == "server"),
            "{err}"
        );

        // A pooled connection to "server" is not reused for "node-3" either.
        let answer = ask(the_server(addr))
            .await
            .expect("the right name is answered");
        assert!(matches!(answer, PeerResponse::ReadIndex { .. }));
        let err = ask(node_3)
            .await
            .expect_err("pooled stream to another node");
        assert!(matches!(err, PeerError::WrongPeer { .. }), "{err}");

        // Raft traffic meant for node-3 counts it unreachable: the node there never acknowledges
        // entries in node-3's place.
        let durable = Durability::new(None);
        let append = append_to(addr, "node-3", &durable, 1).await;
        let result = tokio::time::timeout(Duration::from_secs(5), append).await;
        let err = result
            .expect("answered")
            .expect("joined")
            .expect_err("wrong node");
        assert!(matches!(err, RPCError::Unreachable(_)), "{err}");

        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
    }

    #[tokio::test]
    async fn a_follower_match_is_reported_once_the_leaders_own_copy_is_synced() {
        use openraft::CommittedLeaderId;
        use proto::raft::LogId;
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let addr = server(None, &tasks, &shutdown).await;
        let id = |index| LogId::new(CommittedLeaderId::new(1, 1), index);

        // Not pipelining: the follower's answer goes straight to openraft.
        let durable = Durability::new(None);
        let plain = append_to(addr, "server", &durable, 3).await;
        let response = tokio::time::timeout(Duration::from_secs(5), plain).await;
        let response = response.expect("answered").expect("joined").expect("rpc");
        assert!(matches!(response, AppendEntriesResponse::Success));

        // Pipelining: held until the leader's log is synced up to the follower's match.
        durable.start_pipelining();
        let held = append_to(addr, "server", &durable, 3).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !held.is_finished(),
            "answered before the leader's copy was synced"
        );
        durable.synced(Some(id(2)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!held.is_finished(), "index 2 synced does not cover index 3");
        durable.synced(Some(id(3)));
        let response = tokio::time::timeout(Duration::from_secs(5), held).await;
        let response = response.expect("answered").expect("joined").expect("rpc");
        assert!(matches!(response, AppendEntriesResponse::Success));

        // A failed sync turns the follower's success into an error: nothing counts.
        let failing = append_to(addr, "server", &durable, 4).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        durable.fail("disk gone".to_string());
        let result = tokio::time::timeout(Duration::from_secs(5), failing).await;
        let err = result
            .expect("answered")
            .expect("joined")
            .expect_err("sync failed");
        assert!(err.to_string().contains("disk gone"), "{err}");

        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
    }

    #[tokio::test]
    async fn only_peers_with_the_same_key_get_in() {
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let keyed = server(key(1), &tasks, &shutdown).await;
        let open = server(None, &tasks, &shutdown).await;

        let right = PeerClient::new("demo", "right", key(1));
        for _ in 0..3 {
            // Pooled after the first call: the ciphers keep counting on the same connection.
            let answer = read_index(&right, keyed).await.expect("same key");
            assert!(matches!(answer, PeerResponse::ReadIndex { index: Some(7) }));
        }

        let wrong = PeerClient::new("demo", "wrong", key(2));
        let err = read_index(&wrong, keyed).await.expect_err("another key");
        assert!(
            matches!(err, PeerError::Unauthenticated { .. }),
            "{err}: the client sees the server fail to prove the key"
        );
        assert!(err.to_string().contains(&keyed.to_string()), "{err}");

        let keyless = PeerClient::new("demo", "keyless", None);
        assert!(read_index(&keyless, keyed).await.is_err());

        // A keyed client does not talk to a server without the key either.
        assert!(read_index(&right, open).await.is_err());
        // Without keys on either side, nothing changed.
        assert!(read_index(&keyless, open).await.is_ok());

        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
    }

    /// Lets `client` try a call against a server holding key 1; returns the server's refusal.
    async fn refusal_by_keyed_server(client: PeerClient) -> PeerError {
        let key = key(1).expect("key");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hello = Hello {
            wire_version: PEER_WIRE_VERSION,
            cluster_id: "demo".to_string(),
            from_name: "server".to_string(),
        };
        let accept = tokio::spawn(async move {
            let (stream, peer) = listener.accept().await.expect("accept");
            let mut stream = PeerStream::new(stream);
            accept_handshake(&mut stream, peer, &hello, Some(&key)).await
        });
        assert!(read_index(&client, addr).await.is_err());
        accept.await.expect("join").expect_err("refused")
    }

    #[tokio::test]
    async fn server_refuses_a_client_without_the_key() {
        let err = refusal_by_keyed_server(PeerClient::new("demo", "keyless", None)).await;
        let text = err.to_string();
        assert!(matches!(err, PeerError::Unauthenticated { .. }), "{text}");
        assert!(
            text.contains("keyless") && text.contains("cluster key"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn server_refuses_a_client_with_another_key() {
        let err = refusal_by_keyed_server(PeerClient::new("demo", "wrong", key(9))).await;
        let text = err.to_string();
        assert!(matches!(err, PeerError::Unauthenticated { .. }), "{text}");
        assert!(text.contains("another one"), "{text}");
    }

    #[tokio::test]
    async fn a_tampered_frame_ends_the_connection() {
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let addr = server(key(1), &tasks, &shutdown).await;
        let client = PeerClient::new("demo", "client", key(1));
        let mut stream = client.connect(addr).await.expect("handshake");

        let mut frame = encode_frame(&PeerRequest::ReadIndex).expect("frame");
        let sealed_len = (frame.len() - FRAME_HEADER_BYTES + TAG_BYTES) as u32;
        let header = sealed_len.to_be_bytes();
        frame[..FRAME_HEADER_BYTES].copy_from_slice(&header);
        let (sending, _) = stream.ciphers.as_mut().expect("ciphers");
        sending
            .seal(&header, &mut frame, FRAME_HEADER_BYTES)
            .expect("seal");
        let last = frame.len() - 1;
        frame[last] ^= 1;
        stream.stream.write_all(&frame).await.expect("write");
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.stream.read(&mut buf))
            .await
            .expect("server reacts");
        assert!(matches!(read, Ok(0) | Err(_)), "connection closed");

        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
    }
}
