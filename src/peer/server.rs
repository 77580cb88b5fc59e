//! The accepting side of the peer port: one listener for every kind of peer traffic.
//!
//! Each connection is capped ([`MAX_PEER_CONNECTIONS`]), introduced and (with a key) authenticated,
//! then dispatched: Raft RPCs, forwarded writes and read-index requests go to a [`RpcHandler`] (the
//! Raft member), and `OpenHop` turns the connection over to a [`HopHandler`] (the hop server of
//! `proxy::hop`). The node wires the two in; this module knows neither.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use proto::raft::{Hello, PeerRequest, PeerResponse};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::{
    HELLO_TIMEOUT, MAX_PEER_CONNECTIONS, PeerError, PeerStream, accept_handshake, read_frame,
    write_frame,
};
use crate::crypto::PeerKey;
use crate::logging::{LogThrottle, escape_for_log};

/// Peers refused for not holding the cluster key are logged at most this often (with the number held
/// back): a misconfigured node retries several times a second.
static REFUSED_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(10));
/// Connections dropped for another reason (a bad hello, an undecodable frame) are logged at most this often.
static DROPPED_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(10));
/// Failed accepts (out of file descriptors, say) are logged at most this often.
static ACCEPT_FAILED_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(10));

/// What answers request frames: Raft messages, forwarded writes, read-index requests (the Raft member).
pub trait RpcHandler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, request: PeerRequest) -> impl Future<Output = PeerResponse> + Send;
}

/// What serves a connection once the peer asked for a hop channel on it (`proxy::hop`).
pub trait HopHandler: Send + Sync + 'static {
    /// Serves the channel on `stream` (from `addr`) until it ends.
    fn serve_hop(
        self: Arc<Self>,
        stream: PeerStream,
        addr: SocketAddr,
    ) -> BoxFuture<'static, Result<(), PeerError>>;
}

/// Where the listener sends each kind of request.
pub struct Dispatch<R> {
    rpc: Arc<R>,
    hop: Option<Arc<dyn HopHandler>>,
}

impl<R> Clone for Dispatch<R> {
    fn clone(&self) -> Self {
        Dispatch {
            rpc: self.rpc.clone(),
            hop: self.hop.clone(),
        }
    }
}

impl<R: RpcHandler> Dispatch<R> {
    /// Requests go to `rpc`; hop channels are refused until [`Dispatch::hop`] names a server.
    pub fn new(rpc: Arc<R>) -> Dispatch<R> {
        Dispatch { rpc, hop: None }
    }

    /// Hop channels are served by `hop`.
    pub fn hop(mut self, hop: Arc<dyn HopHandler>) -> Dispatch<R> {
        self.hop = Some(hop);
        self
    }
}

/// Accepts peer connections until `shutdown`; with a `key`, only from peers that prove they hold it.
pub async fn serve<R: RpcHandler>(
    listener: TcpListener,
    dispatch: Dispatch<R>,
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
        let dispatch = dispatch.clone();
        let hello = hello.clone();
        let key = key.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let _slot = slot;
            tokio::select! {
                _ = shutdown.cancelled() => {}
                result = serve_connection(stream, addr, dispatch, hello, key) => {
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

async fn serve_connection<R: RpcHandler>(
    stream: TcpStream,
    addr: SocketAddr,
    dispatch: Dispatch<R>,
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
            let Some(server) = dispatch.hop.clone() else {
                let refusal = PeerResponse::Error("this node serves no hop channels".to_string());
                write_frame(&mut stream, addr, &refusal).await?;
                continue;
            };
            write_frame(&mut stream, addr, &PeerResponse::HopOpened).await?;
            return server.serve_hop(stream, addr).await;
        }
        let response = dispatch.rpc.handle(request).await;
        write_frame(&mut stream, addr, &response).await?;
    }
}
