//! openraft's network: Raft RPCs to members over the peer port ([`crate::peer::client`]).
//!
//! Each call finds where the member is now ([`AddressBook`]), keeps openraft's deadlines from being
//! shorter than a loaded machine needs, cuts appends to a byte budget, holds a follower's match until
//! the leader's own copy is synced, and logs a dead peer once per 10 s instead of on every retry.

use std::collections::HashMap;
use std::net::SocketAddr;
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
use proto::raft::{NodeId, PeerNode, PeerRequest, PeerResponse, TypeConfig};
use tracing::{info, warn};

use super::durable::Durability;
use crate::logging::{LogThrottle, escape_for_log};
use crate::peer::{AddressBook, PeerClient};

/// Shortest deadline given to a Raft RPC.
const MIN_RPC_TIMEOUT: Duration = Duration::from_millis(500);

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
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use crate::peer::server::RpcHandler;
    use crate::peer::tests::{server_with, the_server};
    use crate::peer::{PeerAt, PeerError};

    /// Answers read-index requests with 7 and appends with success.
    struct Answer;

    impl RpcHandler for Answer {
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

    /// A peer server named "server" on a free port answering with [`Answer`].
    async fn server(
        key: Option<crate::crypto::PeerKey>,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> SocketAddr {
        server_with(Answer, key, tasks, shutdown).await
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
}
