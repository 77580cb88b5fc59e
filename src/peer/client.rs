//! The dialling side of the peer port: pooled connections to members, checked against the name the
//! member must answer with.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use proto::raft::{
    Hello, NodeId, PEER_WIRE_VERSION, PeerAuth, PeerNode, PeerRequest, PeerResponse,
};
use tokio::net::TcpStream;
use tracing::debug;

use super::{
    MAX_HELLO_BYTES, PeerError, PeerStream, authenticate_as_client, check_hello, fresh_nonce,
    read_frame, write_frame,
};
use crate::crypto::PeerKey;

/// Idle connections kept per peer.
const MAX_IDLE_PER_PEER: usize = 16;

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

    pub(super) async fn connect(&self, addr: SocketAddr) -> Result<PeerStream, PeerError> {
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
