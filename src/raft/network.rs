//! Peer RPC: Raft messages and forwarded writes over TCP on the node's `--cluster` port.
//!
//! Every connection starts with a [`Hello`] each way; a peer of another cluster or wire version is refused
//! with a log line. Then each request frame gets exactly one response frame, in order. Frames are a
//! big-endian `u32` length and a postcard body (`proto::raft`); oversize lengths are refused before
//! anything is allocated, and bodies are read as they arrive, never pre-allocated from the header.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use proto::raft::{
    FRAME_HEADER_BYTES, Hello, NodeId, PEER_WIRE_VERSION, PeerNode, PeerRequest, PeerResponse,
    TypeConfig, decode_frame_body, decode_frame_len, encode_frame,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Largest `Hello` accepted: a stranger gets no more than this before it has introduced itself.
const MAX_HELLO_BYTES: usize = 4096;
/// Time a new connection gets to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
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
}

impl PeerError {
    /// Whether the peer could not be reached at all (nothing was sent).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, PeerError::Connect { .. })
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

async fn write_frame<T: Serialize>(
    stream: &mut TcpStream,
    addr: SocketAddr,
    message: &T,
) -> Result<(), PeerError> {
    let frame = encode_frame(message).map_err(|err| PeerError::Protocol {
        addr,
        reason: err.to_string(),
    })?;
    stream
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
    stream: &mut TcpStream,
    addr: SocketAddr,
    limit: usize,
) -> Result<T, PeerError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|source| PeerError::Io { addr, source })?;
    let len = decode_frame_len(header).map_err(|err| PeerError::Protocol {
        addr,
        reason: err.to_string(),
    })?;
    if len > limit {
        return Err(PeerError::Protocol {
            addr,
            reason: format!("frame of {len} bytes exceeds {limit} bytes at this point"),
        });
    }
    // Grow with the bytes that really arrive, so a lying header cannot make us allocate.
    let mut body = Vec::with_capacity(len.min(64 * 1024));
    let read = (&mut *stream)
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
    decode_frame_body(&body).map_err(|err| PeerError::Protocol {
        addr,
        reason: err.to_string(),
    })
}

fn check_hello(hello: &Hello, cluster_id: &str, addr: SocketAddr) -> Result<(), PeerError> {
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
                "{} belongs to cluster {:?}, this node to {cluster_id:?}",
                hello.from_name, hello.cluster_id
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
    idle: Mutex<HashMap<SocketAddr, Vec<TcpStream>>>,
}

impl PeerClient {
    /// A client that introduces itself as `name` of `cluster_id`.
    pub fn new(cluster_id: &str, name: &str) -> PeerClient {
        PeerClient {
            inner: Arc::new(ClientInner {
                hello: Hello {
                    wire_version: PEER_WIRE_VERSION,
                    cluster_id: cluster_id.to_string(),
                    from_name: name.to_string(),
                },
                idle: Mutex::new(HashMap::new()),
            }),
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, PeerError> {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|source| PeerError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        write_frame(&mut stream, addr, &self.inner.hello).await?;
        let theirs: Hello = read_frame(&mut stream, addr, MAX_HELLO_BYTES).await?;
        check_hello(&theirs, &self.inner.hello.cluster_id, addr)?;
        Ok(stream)
    }

    fn take_idle(&self, addr: SocketAddr) -> Option<TcpStream> {
        let mut idle = self
            .inner
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        idle.get_mut(&addr).and_then(Vec::pop)
    }

    fn put_idle(&self, addr: SocketAddr, stream: TcpStream) {
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

    /// Sends one request and waits for its response.
    pub async fn call(
        &self,
        addr: SocketAddr,
        request: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, PeerError> {
        let exchange = async {
            if let Some(mut stream) = self.take_idle(addr) {
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
        stream: &mut TcpStream,
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
}

/// Accepts peer connections until `shutdown`.
pub async fn serve<H: PeerHandler>(
    listener: TcpListener,
    handler: Arc<H>,
    hello: Hello,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(error = %err, "peer accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        let hello = hello.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                result = serve_connection(stream, addr, handler, hello) => {
                    if let Err(err) = result {
                        match err {
                            PeerError::Io { .. } => debug!(peer = %addr, error = %err, "peer connection closed"),
                            _ => warn!(peer = %addr, error = %err, "dropped peer connection"),
                        }
                    }
                }
            }
        });
    }
}

async fn serve_connection<H: PeerHandler>(
    mut stream: TcpStream,
    addr: SocketAddr,
    handler: Arc<H>,
    hello: Hello,
) -> Result<(), PeerError> {
    let _ = stream.set_nodelay(true);
    let theirs: Hello = tokio::time::timeout(
        HELLO_TIMEOUT,
        read_frame(&mut stream, addr, MAX_HELLO_BYTES),
    )
    .await
    .map_err(|_| PeerError::Timeout {
        addr,
        timeout: HELLO_TIMEOUT,
    })??;
    check_hello(&theirs, &hello.cluster_id, addr)?;
    write_frame(&mut stream, addr, &hello).await?;
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
        let response = handler.handle(request).await;
        write_frame(&mut stream, addr, &response).await?;
    }
}

/// openraft's view of the network: one [`PeerConnection`] per target.
#[derive(Clone)]
pub struct Network {
    client: PeerClient,
}

impl Network {
    /// Raft traffic through `client`.
    pub fn new(client: PeerClient) -> Network {
        Network { client }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> PeerConnection {
        PeerConnection {
            target,
            addr: node.cluster_addr.parse().ok(),
            client: self.client.clone(),
        }
    }
}

/// Raft RPCs to one peer.
pub struct PeerConnection {
    target: NodeId,
    addr: Option<SocketAddr>,
    client: PeerClient,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, PeerNode, RaftError<NodeId, E>>>;

impl PeerConnection {
    async fn rpc<E: std::error::Error>(
        &self,
        request: PeerRequest,
        option: &RPCOption,
    ) -> Result<PeerResponse, RPCError<NodeId, PeerNode, RaftError<NodeId, E>>> {
        let Some(addr) = self.addr else {
            let err =
                std::io::Error::other(format!("node {} has no valid cluster address", self.target));
            return Err(RPCError::Unreachable(Unreachable::new(&err)));
        };
        match self.client.call(addr, &request, option.hard_ttl()).await {
            Ok(PeerResponse::Error(text)) => Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other(text),
            ))),
            Ok(response) => Ok(response),
            Err(err) if err.is_unreachable() => Err(RPCError::Unreachable(Unreachable::new(&err))),
            Err(err) => Err(RPCError::Network(NetworkError::new(&err))),
        }
    }
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
        match self.rpc(PeerRequest::AppendEntries(rpc), &option).await? {
            PeerResponse::AppendEntries(response) => Ok(response),
            other => Err(unexpected(other)),
        }
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
