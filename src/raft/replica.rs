//! This node's member of the Raft group, the handle the rest of the node holds: it starts Raft and
//! its background tasks, commits writes (through the write queue, forwarded to the leader as
//! needed), serves linearizable reads, and says how Raft stands ([`RaftStatus`]).
//!
//! Its background jobs live beside it: `bootstrap` (node id, founders' bootstrap, rejoin),
//! `reconcile` (Raft membership against gossip), `housekeeping` (expiry, access times, snapshots).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::raft::AppendEntriesResponse;
use openraft::{Config, Raft, ServerState, SnapshotPolicy};
use proto::raft::{
    CommandResponse, LogId, NodeId, PeerNode, PeerRequest, PeerResponse, SessionCommand, SessionId,
    TypeConfig,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::admission::WriteLimits;
use super::batch::{Attempt, Proposed, Proposer, WriteQueue};
use super::network::Network;
use super::state_machine::SessionReader;
use super::status::{QuorumStatus, RaftStatus};
use super::{RaftStorageError, bootstrap, housekeeping, open_storage, reconcile};
use crate::clock::now_ms;
use crate::config::NodeConfig;
use crate::events::EventLog;
use crate::membership::Membership;
use crate::peer::server::RpcHandler;
use crate::peer::{AddressBook, PeerAt, PeerClient, PeerError};

/// Forwarded writes refused as malformed are logged at most this often.
static REFUSED_WRITE_LOG: crate::logging::LogThrottle =
    crate::logging::LogThrottle::new(Duration::from_secs(10));
/// How long a write or a read waits for a leader before giving up.
const LEADER_WAIT: Duration = Duration::from_secs(8);
/// Timeout of one forwarded request.
const FORWARD_TIMEOUT: Duration = Duration::from_millis(2500);
/// How long the leader tries to confirm a read index with a quorum before saying it cannot (inside
/// the asking follower's [`FORWARD_TIMEOUT`]).
const READ_INDEX_CONFIRM: Duration = Duration::from_secs(2);

/// Why the replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The data dir could not be used.
    #[error("data dir {path}: {reason}")]
    DataDir {
        /// The folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Log or snapshot could not be opened.
    #[error(transparent)]
    Storage(#[from] RaftStorageError),
    /// openraft refused to start.
    #[error("raft: {0}")]
    Raft(String),
}

/// Why a write or a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsensusError {
    /// No leader could be reached in time.
    #[error("no Raft leader reachable within {0:?}")]
    NoLeader(Duration),
    /// The write was sent but its outcome is unknown (the leader failed mid-request).
    #[error("write outcome unknown: {0}")]
    Unknown(String),
    /// The node is shutting down or Raft stopped.
    #[error("raft stopped: {0}")]
    Stopped(String),
    /// This node leads, but a majority of voters did not acknowledge the write in time: it is in the
    /// log and may still be applied if they come back, so its outcome is unknown.
    #[error(
        "not committed within {timeout:?}: {why}; the write may still be applied once a quorum is back"
    )]
    NoQuorum {
        /// How long the commit was waited for.
        timeout: Duration,
        /// What the node knows about its quorum.
        why: String,
    },
    /// The leader refused the write as malformed (nothing was proposed; retrying cannot help).
    #[error("the leader refused the write: {0}")]
    Refused(String),
}

/// This node's Raft member.
pub struct Replica {
    pub(super) raft: Raft<TypeConfig>,
    pub(super) id: NodeId,
    pub(super) reader: SessionReader,
    client: PeerClient,
    /// Where members are now, by Raft id (gossip first, then the Raft membership).
    addresses: AddressBook,
    /// Set once a leader's append (or snapshot) was taken here since this process started: until
    /// then the leader a follower names may only be the one it remembers from before a restart.
    pub(super) heard_leader: AtomicBool,
    pub(super) writes: WriteQueue,
    pub(super) touches: Mutex<HashMap<SessionId, u64>>,
    pub(super) expired_total: AtomicU64,
    created_total: AtomicU64,
    deleted_total: AtomicU64,
    /// What a write must look like, and the session limit this node stamps on creates as leader.
    limits: WriteLimits,
    /// Creates refused because the cluster held `max-active` sessions (counted where the write entered).
    refused_full_total: AtomicU64,
    /// A leader whose last acknowledgement by a quorum is older than this reports no quorum.
    quorum_lease: Duration,
    /// Who is up, to tell which voters are live.
    membership: Arc<Membership>,
}

impl Replica {
    /// Opens the store in the node's data dir, starts Raft, and spawns bootstrap, reconciliation,
    /// expiry and access-time tasks. The node serves the peer port with the replica as its
    /// [`RpcHandler`].
    pub async fn start(
        config: &NodeConfig,
        membership: Arc<Membership>,
        events: EventLog,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Arc<Replica>, ReplicaError> {
        let data_dir = &config.data_dir;
        std::fs::create_dir_all(data_dir).map_err(|io| ReplicaError::DataDir {
            path: data_dir.clone(),
            reason: format!("cannot create: {io}"),
        })?;
        let (log_store, state_machine) = open_storage(data_dir)?;
        let reader = state_machine.reader();
        let pristine = log_store
            .is_pristine()
            .map_err(|err| ReplicaError::Raft(err.to_string()))?
            && reader.last_applied().is_none();
        let id = bootstrap::node_id(data_dir, pristine)?;
        log_store.pipeline_as(id);
        let stepped_down = log_store
            .step_down_on_restart()
            .await
            .map_err(|err| ReplicaError::Raft(err.to_string()))?;
        if stepped_down {
            info!(
                raft_id = id,
                "this node led before it stopped; it stands for election again instead of resuming as leader"
            );
        }
        let raft_config = &config.cluster.raft;
        let election_ms = raft_config.election_timeout.as_millis() as u64;
        let openraft_config = Config {
            cluster_name: config.cluster.cluster_id.clone(),
            heartbeat_interval: raft_config.heartbeat.as_millis() as u64,
            election_timeout_min: election_ms,
            // openraft 0.9 makes a follower that saw a leader wait a lease of `election_timeout_max`
            // plus a random timeout before it stands: a narrow range keeps failover near
            // 2.2 × `election-timeout-ms` instead of 2.5–3 ×.
            election_timeout_max: election_ms + election_ms / 5,
            // Snapshots are triggered by writes applied (see `take_snapshots`): an entry can hold a
            // whole batch, and `take_snapshots` waits longer for a large store. Counting entries too
            // is a backstop, far enough out that it does not fire first.
            snapshot_policy: SnapshotPolicy::LogsSinceLast(
                raft_config
                    .snapshot_every
                    .saturating_mul(housekeeping::SNAPSHOT_BACKSTOP_FACTOR),
            ),
            max_in_snapshot_log_to_keep: housekeeping::LOG_KEPT_BEHIND_SNAPSHOT
                .min(raft_config.snapshot_every / 10),
            max_payload_entries: 1_000,
            // A restarted node stands for election only once the leader had its chance to reach it
            // (see `stand_after_rejoin_quiet`).
            enable_elect: pristine,
            ..Default::default()
        }
        .validate()
        .map_err(|err| ReplicaError::Raft(err.to_string()))?;
        let peer_key = config
            .secrets
            .gossip_key
            .as_ref()
            .map(crate::crypto::PeerKey::new);
        let client = PeerClient::new(&config.cluster.cluster_id, &config.me.name, peer_key);
        let addresses = {
            let membership = membership.clone();
            AddressBook::new(move |id| reconcile::gossiped_address(&membership.view(), id))
        };
        let raft = Raft::new(
            id,
            Arc::new(openraft_config),
            Network::new(client.clone(), log_store.durability(), addresses.clone()),
            log_store,
            state_machine,
        )
        .await
        .map_err(|err| ReplicaError::Raft(err.to_string()))?;
        let (writes, write_queue) = super::batch::queue();
        let replica = Arc::new(Replica {
            raft,
            id,
            reader,
            client,
            addresses,
            heard_leader: AtomicBool::new(false),
            writes,
            touches: Mutex::new(HashMap::new()),
            expired_total: AtomicU64::new(0),
            created_total: AtomicU64::new(0),
            deleted_total: AtomicU64::new(0),
            limits: WriteLimits::new(
                config.cluster.sessions.max_bytes,
                config.cluster.sessions.max_active,
            ),
            refused_full_total: AtomicU64::new(0),
            // Heartbeats go out every `heartbeat-ms`; five election timeouts (and at least 2 s)
            // without a quorum's answer is well past any hiccup of a loaded machine.
            quorum_lease: (5 * config.cluster.raft.election_timeout).max(Duration::from_secs(2)),
            membership: membership.clone(),
        });
        info!(node = %config.me.name, raft_id = id, pristine, "raft store opened in {}", data_dir.display());

        membership.set_raft(id, pristine).await;
        tasks.spawn(super::batch::run(
            replica.clone(),
            write_queue,
            shutdown.clone(),
            tasks.clone(),
        ));

        tasks.spawn(bootstrap::bootstrap(
            replica.clone(),
            membership.clone(),
            config.clone(),
            pristine,
            shutdown.clone(),
        ));
        tasks.spawn(reconcile::watch_raft(
            replica.clone(),
            membership.clone(),
            events,
            shutdown.clone(),
        ));
        tasks.spawn(reconcile::reconcile(
            replica.clone(),
            membership,
            config.cluster.raft.voters,
            config.cluster.raft.remove_after,
            shutdown.clone(),
        ));
        tasks.spawn(housekeeping::expire_sessions(
            replica.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(housekeeping::take_snapshots(
            replica.clone(),
            config.cluster.raft.snapshot_every,
            shutdown.clone(),
        ));
        if !pristine {
            // Two of the leader's tries (each a retry wait and a call of one heartbeat), so that one
            // that fails while this node is still starting does not end the quiet early.
            let quiet = 2 * (bootstrap::REJOIN_RETRY + raft_config.heartbeat)
                + raft_config.election_timeout;
            tasks.spawn(bootstrap::stand_after_rejoin_quiet(
                replica.clone(),
                quiet,
                shutdown.clone(),
            ));
        }
        tasks.spawn(housekeeping::flush_touches(replica.clone(), shutdown));
        Ok(replica)
    }

    /// This node's Raft id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Read access to the applied sessions.
    pub fn reader(&self) -> &SessionReader {
        &self.reader
    }

    /// Sessions this node expired while leader.
    pub fn expired_total(&self) -> u64 {
        self.expired_total.load(Ordering::Relaxed)
    }

    /// Sessions created through this node (counted where the write entered, so once per session).
    pub fn created_total(&self) -> u64 {
        self.created_total.load(Ordering::Relaxed)
    }

    /// Sessions deleted through this node.
    pub fn deleted_total(&self) -> u64 {
        self.deleted_total.load(Ordering::Relaxed)
    }

    /// Why this node has no quorum, when it has none (see [`QuorumStatus::problem`]).
    pub fn quorum_problem(&self) -> Option<String> {
        self.quorum().problem()
    }

    /// The voters and the quorum as this node sees them now (see [`QuorumStatus`]).
    pub fn quorum(&self) -> QuorumStatus {
        self.status().quorum
    }

    /// Raft as this node sees it now, in our own terms (see [`RaftStatus`]).
    pub fn status(&self) -> RaftStatus {
        let view = self.membership.view();
        // Read in place: nothing below waits, so the watch is not held across an await.
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        RaftStatus::of(self.id, &metrics, &view, self.quorum_lease)
    }

    /// Session creates refused through this node because the cluster was full (`max-active`).
    pub fn refused_full_total(&self) -> u64 {
        self.refused_full_total.load(Ordering::Relaxed)
    }

    /// The write limits; the reloader changes `max-active` through them.
    pub fn limits(&self) -> &WriteLimits {
        &self.limits
    }

    fn count_write(&self, response: &CommandResponse) {
        match response {
            CommandResponse::Created(_) => {
                self.created_total.fetch_add(1, Ordering::Relaxed);
            }
            CommandResponse::TooManySessions { .. } => {
                self.refused_full_total.fetch_add(1, Ordering::Relaxed);
            }
            CommandResponse::Deleted => {
                self.deleted_total.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Current Raft metrics (openraft's own: for `raft` only; the rest reads [`Replica::status`]).
    pub(super) fn metrics(&self) -> openraft::RaftMetrics<NodeId, PeerNode> {
        self.raft.metrics().borrow().clone()
    }

    /// Whether this node is the Raft leader now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Whether a leader is known and this node applied everything committed as far as it knows.
    pub fn readiness(&self) -> Result<(), String> {
        let status = self.status();
        // Raft stops for good on a storage error (a full disk, say): this node can serve nothing.
        if let Some(fatal) = &status.stopped {
            return Err(format!("raft stopped: {fatal}"));
        }
        let Some(leader) = status.leader else {
            return Err("no Raft leader yet".to_string());
        };
        if leader != self.id && status.applied_index.is_none() {
            return Err("nothing applied from the leader yet".to_string());
        }
        // A restarted follower names the leader it remembers from disk, which may be gone.
        if leader != self.id && !self.heard_leader.load(Ordering::Relaxed) {
            return Err("no word from the Raft leader since this node started".to_string());
        }
        Ok(())
    }

    /// Notes that a session was read or used; flushed as one `Touch` entry per second.
    pub fn touch(&self, id: SessionId) {
        let mut touches = self.touches.lock().unwrap_or_else(PoisonError::into_inner);
        touches.insert(id, now_ms());
    }

    /// Commits a command through the leader (forwarding if needed). A read after it, on any node, sees
    /// it: reads wait for the leader's commit index first (see [`Replica::linearizable_barrier`]).
    /// Writes made at the same time share one log entry (see [`super::batch`]).
    pub async fn write(
        &self,
        command: SessionCommand,
    ) -> Result<(LogId, CommandResponse), ConsensusError> {
        let deadline = Instant::now() + LEADER_WAIT;
        // Set once an attempt may have been applied without our hearing the answer (the leader died,
        // froze or was cut off mid-request). Later attempts then read a "conflict" that is only our
        // own earlier success as that success (see `reconcile`).
        let mut uncertain: Option<String> = None;
        loop {
            // Each attempt is bounded by itself (the commit, a forwarded call); this bounds the wait
            // in the queue too, a second past the deadline so that their reasons come first.
            let remaining =
                deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
            let Ok(attempt) =
                tokio::time::timeout(remaining, self.writes.attempt(self, command.clone())).await
            else {
                return Err(match self.quorum_problem() {
                    Some(why) => ConsensusError::NoQuorum {
                        timeout: LEADER_WAIT,
                        why,
                    },
                    None => ConsensusError::Unknown(format!(
                        "no answer within {LEADER_WAIT:?}; the write may still be applied"
                    )),
                });
            };
            match attempt {
                Attempt::Done(log_id, response) => {
                    let response = self.reconcile(&command, response, &uncertain).await;
                    self.count_write(&response);
                    return Ok((log_id, response));
                }
                Attempt::Retry { uncertain: reason } => {
                    if reason.is_some() {
                        uncertain = reason;
                    }
                }
                Attempt::Failed(err) => return Err(err),
            }
            if Instant::now() >= deadline {
                return Err(match uncertain {
                    Some(reason) => ConsensusError::Unknown(reason),
                    None => ConsensusError::NoLeader(LEADER_WAIT),
                });
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    /// After an attempt of unknown outcome, a retry that finds the session exactly as this command
    /// would have left it reports the earlier success instead of the conflict it caused.
    async fn reconcile(
        &self,
        command: &SessionCommand,
        response: CommandResponse,
        uncertain: &Option<String>,
    ) -> CommandResponse {
        if uncertain.is_none() {
            return response;
        }
        let conflict = matches!(
            response,
            CommandResponse::AlreadyExists
                | CommandResponse::VersionMismatch { .. }
                | CommandResponse::NotFound
        );
        if !conflict || self.linearizable_barrier().await.is_err() {
            return response;
        }
        match (command, response) {
            (SessionCommand::Create { id, data, .. }, CommandResponse::AlreadyExists) => {
                match self.reader.get(id) {
                    Some(record) if record.data == *data && record.version == 1 => {
                        CommandResponse::Created(record)
                    }
                    _ => CommandResponse::AlreadyExists,
                }
            }
            (
                SessionCommand::Put {
                    id,
                    data,
                    expected_version: Some(expected),
                    ..
                },
                CommandResponse::VersionMismatch { current },
            ) => match self.reader.get(id) {
                Some(record) if record.data == *data && record.version == expected + 1 => {
                    CommandResponse::Updated(record)
                }
                _ => CommandResponse::VersionMismatch { current },
            },
            (SessionCommand::Delete { .. }, CommandResponse::NotFound) => CommandResponse::Deleted,
            (_, response) => response,
        }
    }

    /// Waits until a read here observes every write acknowledged before the call (read index through
    /// the leader).
    pub async fn linearizable_barrier(&self) -> Result<(), ConsensusError> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let Ok(confirmed) =
                tokio::time::timeout(remaining, self.raft.ensure_linearizable()).await
            else {
                return Err(self.no_leader_or_quorum());
            };
            let forward = match confirmed {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                    Some(forward)
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => None,
                Err(RaftError::Fatal(fatal)) => {
                    return Err(ConsensusError::Stopped(fatal.to_string()));
                }
            };
            if let Some(leader) = forward.as_ref().and_then(|f| self.leader_addr(f)) {
                match self
                    .client
                    .call(&leader, &PeerRequest::ReadIndex, FORWARD_TIMEOUT)
                    .await
                {
                    Ok(PeerResponse::ReadIndex { index }) => {
                        if let Some(index) = index {
                            self.wait_applied(index).await;
                        }
                        return Ok(());
                    }
                    Ok(_) => {}
                    Err(err) => {
                        debug!(error = %err, "read index from leader failed; retrying");
                        self.client.forget(leader.addr);
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(self.no_leader_or_quorum());
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    /// The error for a read or write that found no usable leader in time: no quorum when this node
    /// knows it has none (a leader cut off from its majority), else no leader.
    fn no_leader_or_quorum(&self) -> ConsensusError {
        match self.quorum_problem() {
            Some(why) if self.is_leader() => ConsensusError::NoQuorum {
                timeout: LEADER_WAIT,
                why,
            },
            _ => ConsensusError::NoLeader(LEADER_WAIT),
        }
    }

    async fn wait_applied(&self, index: u64) {
        let _ = self
            .raft
            .wait(Some(LEADER_WAIT))
            .applied_index_at_least(Some(index), "read your writes")
            .await;
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        if let Err(err) = self.raft.shutdown().await {
            warn!(error = %err, "raft did not stop cleanly");
        }
    }
}

impl Replica {
    /// Where the leader a refusal names can be reached: where it gossips from, else its address in the
    /// Raft membership.
    fn leader_addr(&self, forward: &ForwardToLeader<NodeId, PeerNode>) -> Option<PeerAt> {
        let id = forward.leader_id?;
        self.addresses.resolve(id, forward.leader_node.as_ref())
    }

    /// Proposes a forwarded write here and answers in peer-RPC terms.
    async fn answer_write(&self, command: SessionCommand) -> PeerResponse {
        match self.raft.client_write(command).await {
            Ok(response) => PeerResponse::ClientWrite {
                log_id: response.log_id,
                response: response.data,
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                PeerResponse::ForwardToLeader {
                    leader_id: forward.leader_id,
                    leader_node: forward.leader_node,
                }
            }
            // The core stopped (this node is shutting down): the write was not taken; the caller
            // retries on whoever leads next.
            Err(RaftError::Fatal(_)) => PeerResponse::ForwardToLeader {
                leader_id: None,
                leader_node: None,
            },
            Err(err) => PeerResponse::Error(err.to_string()),
        }
    }
}

/// The write queue's way into Raft (see [`super::batch`]).
impl Proposer for Replica {
    fn leader_elsewhere(&self) -> Option<PeerAt> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader.filter(|leader| *leader != self.id)?;
        let recorded = metrics.membership_config.membership().get_node(&leader);
        self.addresses.resolve(leader, recorded)
    }

    fn max_active(&self) -> u64 {
        self.limits.max_active()
    }

    fn quorum_problem(&self) -> Option<String> {
        Replica::quorum_problem(self)
    }

    async fn propose(&self, command: SessionCommand) -> Proposed {
        match self.raft.client_write(command).await {
            Ok(written) => Proposed::Applied(written.log_id, written.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Proposed::NotLeader,
            Err(RaftError::APIError(other)) => Proposed::Refused(other.to_string()),
            Err(RaftError::Fatal(fatal)) => Proposed::Stopped(fatal.to_string()),
        }
    }

    async fn forward(
        &self,
        leader: &PeerAt,
        command: SessionCommand,
    ) -> Result<PeerResponse, PeerError> {
        self.client
            .call(leader, &PeerRequest::ClientWrite(command), FORWARD_TIMEOUT)
            .await
    }

    fn forget(&self, leader: &PeerAt) {
        self.client.forget(leader.addr);
    }
}

impl RpcHandler for Replica {
    async fn handle(&self, request: PeerRequest) -> PeerResponse {
        match request {
            PeerRequest::AppendEntries(rpc) => match self.raft.append_entries(rpc).await {
                Ok(response) => {
                    if matches!(
                        response,
                        AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_)
                    ) {
                        self.heard_leader.store(true, Ordering::Relaxed);
                    }
                    PeerResponse::AppendEntries(response)
                }
                Err(err) => PeerResponse::Error(err.to_string()),
            },
            PeerRequest::Vote(rpc) => match self.raft.vote(rpc).await {
                Ok(response) => PeerResponse::Vote(response),
                Err(err) => PeerResponse::Error(err.to_string()),
            },
            PeerRequest::InstallSnapshot(rpc) => match self.raft.install_snapshot(rpc).await {
                Ok(response) => {
                    self.heard_leader.store(true, Ordering::Relaxed);
                    PeerResponse::InstallSnapshot(response)
                }
                Err(err) => PeerResponse::Error(err.to_string()),
            },
            PeerRequest::ClientWrite(mut command) => {
                if let Err(problem) = self.limits.check_forwarded(&command) {
                    // Answered as an error (the caller gives up, nothing was proposed) and logged
                    // through the throttle: anyone who reaches the peer port can send these.
                    if let Some(held_back) = REFUSED_WRITE_LOG.allow() {
                        warn!(
                            held_back,
                            "refused a forwarded write: {}",
                            crate::logging::escape_for_log(&problem)
                        );
                    }
                    return PeerResponse::WriteRefused(problem);
                }
                command.stamp(now_ms());
                command.limit_creates(self.limits.max_active());
                self.answer_write(command).await
            }
            // The index is confirmed by a quorum's heartbeat answers first: a leader cut off from its
            // majority (which may have elected another) must not hand out an index it cannot vouch
            // for. Bounded, so the asking follower tries again instead of waiting.
            PeerRequest::ReadIndex => {
                match tokio::time::timeout(READ_INDEX_CONFIRM, self.raft.ensure_linearizable())
                    .await
                {
                    Err(_) => PeerResponse::Error(
                        self.quorum_problem()
                            .unwrap_or_else(|| "read index not confirmed in time".to_owned()),
                    ),
                    Ok(Ok(read_log_id)) => PeerResponse::ReadIndex {
                        index: read_log_id.map(|log_id| log_id.index),
                    },
                    Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)))) => {
                        PeerResponse::ForwardToLeader {
                            leader_id: forward.leader_id,
                            leader_node: forward.leader_node,
                        }
                    }
                    Ok(Err(err)) => PeerResponse::Error(err.to_string()),
                }
            }
            // The connection loop turns the connection into a hop channel before this is reached.
            PeerRequest::OpenHop => {
                PeerResponse::Error("a hop channel is opened on a fresh connection".to_string())
            }
        }
    }
}
