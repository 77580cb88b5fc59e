//! This node's member of the Raft group: bootstrap, membership reconciliation, writes forwarded to the
//! leader, linearizable reads, leader-decided expiry and coalesced access times.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::raft::AppendEntriesResponse;
use openraft::{ChangeMembers, Config, Raft, ServerState, SnapshotPolicy};
use proto::raft::{
    CommandResponse, Hello, LogId, NodeId, PEER_WIRE_VERSION, PeerNode, PeerRequest, PeerResponse,
    SessionCommand, SessionId, TypeConfig,
};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::admission::WriteLimits;
use super::batch::{Attempt, Proposed, Proposer, WriteQueue};
use super::network::{AddressBook, Network, PeerAt, PeerClient, PeerError, PeerHandler};
use super::state_machine::SessionReader;
use super::status::{QuorumStatus, RaftStatus};
use super::{RaftStorageError, open_storage};
use crate::config::NodeConfig;
use crate::events::{EventKind, EventLog, now_ms};
use crate::membership::{MemberInfo, MemberState, Membership, MembershipView};

/// File in the data dir holding this node's Raft id.
const NODE_ID_FILE: &str = "node-id";
/// Forwarded writes refused as malformed are logged at most this often.
static REFUSED_WRITE_LOG: crate::security::LogThrottle =
    crate::security::LogThrottle::new(Duration::from_secs(10));
/// How long a write or a read waits for a leader before giving up.
const LEADER_WAIT: Duration = Duration::from_secs(8);
/// Timeout of one forwarded request.
const FORWARD_TIMEOUT: Duration = Duration::from_millis(2500);
/// How long the leader tries to confirm a read index with a quorum before saying it cannot (inside
/// the asking follower's [`FORWARD_TIMEOUT`]).
const READ_INDEX_CONFIRM: Duration = Duration::from_secs(2);
/// At most this many entries are kept in the log behind a snapshot, so briefly absent followers
/// catch up from the log (fewer with a small `snapshot-every`: a tenth of it).
const LOG_KEPT_BEHIND_SNAPSHOT: u64 = 1_000;
/// How often the snapshot policy (`<raft snapshot-every>`, counted in writes) is checked.
const SNAPSHOT_CHECK_EVERY: Duration = Duration::from_millis(250);
/// How often the leader looks for expired sessions, and how many it expires per entry.
const EXPIRY_EVERY: Duration = Duration::from_millis(500);
const EXPIRY_BATCH: usize = 1_000;
/// How often access times are flushed as one `Touch` entry.
const TOUCH_EVERY: Duration = Duration::from_secs(1);

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
    raft: Raft<TypeConfig>,
    id: NodeId,
    reader: SessionReader,
    client: PeerClient,
    /// Where members are now, by Raft id (gossip first, then the Raft membership).
    addresses: AddressBook,
    /// Set once a leader's append (or snapshot) was taken here since this process started: until
    /// then the leader a follower names may only be the one it remembers from before a restart.
    heard_leader: AtomicBool,
    writes: WriteQueue,
    touches: Mutex<HashMap<SessionId, u64>>,
    expired_total: AtomicU64,
    created_total: AtomicU64,
    deleted_total: AtomicU64,
    /// Serves the hop channels other members open to the peer port.
    hop: Arc<crate::proxy::hop::HopServer>,
    /// What a write must look like, and the session limit this node stamps on creates as leader.
    limits: WriteLimits,
    /// Creates refused because the cluster held `max-active` sessions (counted where the write entered).
    refused_full_total: AtomicU64,
    /// A leader whose last acknowledgement by a quorum is older than this reports no quorum.
    quorum_lease: Duration,
    /// Who is up, to tell which voters are live.
    membership: Arc<Membership>,
}

/// Reads or creates the node id. A fresh data dir gets a fresh random id: ids are never reused.
fn node_id(data_dir: &Path, pristine: bool) -> Result<NodeId, ReplicaError> {
    let path = data_dir.join(NODE_ID_FILE);
    let err = |reason: String| ReplicaError::DataDir {
        path: data_dir.to_path_buf(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<NodeId>().map_err(|_| {
            err(format!(
                "{NODE_ID_FILE} holds {:?}, not a node id",
                text.trim()
            ))
        }),
        Err(io) if io.kind() == std::io::ErrorKind::NotFound => {
            if !pristine {
                return Err(err(format!(
                    "{NODE_ID_FILE} is missing but the Raft log is not empty; refusing to guess this node's identity"
                )));
            }
            let id = loop {
                let id: u64 = rand_u64();
                if id != 0 {
                    break id;
                }
            };
            let temp = data_dir.join(format!("{NODE_ID_FILE}.tmp"));
            let write = || -> std::io::Result<()> {
                use std::io::Write;
                let mut file = std::fs::File::create(&temp)?;
                file.write_all(format!("{id}\n").as_bytes())?;
                file.sync_all()?;
                std::fs::rename(&temp, &path)?;
                std::fs::File::open(data_dir)?.sync_all()
            };
            write().map_err(|io| err(format!("cannot write {NODE_ID_FILE}: {io}")))?;
            Ok(id)
        }
        Err(io) => Err(err(format!("cannot read {NODE_ID_FILE}: {io}"))),
    }
}

fn rand_u64() -> u64 {
    let bytes = *SessionId::generate().as_bytes();
    let mut half = [0u8; 8];
    half.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(half)
}

/// How long openraft 0.9's leader waits before it tries a follower again after a failed call (its
/// default `RaftNetwork::backoff`).
const REJOIN_RETRY: Duration = Duration::from_millis(500);

/// Lets a restarted node stand for election only after the leader had time to reach it: until it hears
/// from a leader, or for `quiet` (two of the leader's retries and one election timeout).
///
/// Without this, a node back from a crash stands as soon as its election timer runs out, which can be
/// before the leader's next try (the leader backs off after failing to reach it while it was down).
/// It would then ask for votes in a term that may already have a leader, and openraft 0.9, with no
/// pre-vote, lets a candidate of a higher id outrank that leader in its own term: every restart of an
/// old leader would unseat the new one for another election. A cluster restarted as a whole elects
/// its leader `quiet` after the nodes start instead of one election timeout after.
async fn stand_after_rejoin_quiet(
    replica: Arc<Replica>,
    quiet: Duration,
    shutdown: CancellationToken,
) {
    let deadline = Instant::now() + quiet;
    loop {
        // Read each time: right after start the metrics may not show the stored membership yet, and
        // an empty one must not pass for a single voter.
        let voters = {
            let metrics = replica.raft.metrics();
            let metrics = metrics.borrow();
            metrics.membership_config.membership().voter_ids().count()
        };
        // The only voter elects itself at once; nobody else can reach it for that.
        if voters == 1 || replica.heard_leader.load(Ordering::Relaxed) {
            break;
        }
        if Instant::now() >= deadline {
            info!(
                waited_ms = quiet.as_millis() as u64,
                "no leader reached this node since it started; it may stand for election now"
            );
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    replica.raft.runtime_config().elect(true);
}

fn peer_node(name: &str, cluster: SocketAddr, http: SocketAddr) -> PeerNode {
    PeerNode {
        name: name.to_string(),
        cluster_addr: cluster.to_string(),
        http_addr: http.to_string(),
    }
}

impl Replica {
    /// Opens the store in the node's data dir, starts Raft, serves peers on `peer_listener`, and
    /// spawns bootstrap, reconciliation, expiry and access-time tasks.
    pub async fn start(
        config: &NodeConfig,
        membership: Arc<Membership>,
        events: EventLog,
        peer_listener: TcpListener,
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
        let id = node_id(data_dir, pristine)?;
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
                    .saturating_mul(SNAPSHOT_BACKSTOP_FACTOR),
            ),
            max_in_snapshot_log_to_keep: LOG_KEPT_BEHIND_SNAPSHOT
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
            .map(crate::security::PeerKey::new);
        let client = PeerClient::new(
            &config.cluster.cluster_id,
            &config.me.name,
            peer_key.clone(),
        );
        let addresses = {
            let membership = membership.clone();
            AddressBook::new(move |id| gossiped_address(&membership.view(), id))
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
            hop: crate::proxy::hop::HopServer::new(),
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

        let hello = Hello {
            wire_version: PEER_WIRE_VERSION,
            cluster_id: config.cluster.cluster_id.clone(),
            from_name: config.me.name.clone(),
        };
        if peer_key.is_none() {
            warn!(
                node = %config.me.name,
                "no cluster key: the peer port {} takes Raft traffic and session writes from anyone \
                 who can reach it; set MICRO_TOMCAT_GOSSIP_KEY or <security gossip-key-file> \
                 (make one with `openssl rand -base64 32`) unless the network is trusted",
                config.me.cluster
            );
        }
        tasks.spawn(super::network::serve(
            peer_listener,
            replica.clone(),
            hello,
            peer_key,
            shutdown.clone(),
            tasks.clone(),
        ));
        membership.set_raft(id, pristine).await;
        tasks.spawn(super::batch::run(
            replica.clone(),
            write_queue,
            shutdown.clone(),
            tasks.clone(),
        ));

        tasks.spawn(bootstrap(
            replica.clone(),
            membership.clone(),
            config.clone(),
            pristine,
            shutdown.clone(),
        ));
        tasks.spawn(watch_raft(
            replica.clone(),
            membership.clone(),
            events,
            shutdown.clone(),
        ));
        tasks.spawn(reconcile(
            replica.clone(),
            membership,
            config.cluster.raft.voters,
            config.cluster.raft.remove_after,
            shutdown.clone(),
        ));
        tasks.spawn(expire_sessions(replica.clone(), shutdown.clone()));
        tasks.spawn(take_snapshots(
            replica.clone(),
            config.cluster.raft.snapshot_every,
            shutdown.clone(),
        ));
        if !pristine {
            // Two of the leader's tries (each a retry wait and a call of one heartbeat), so that one
            // that fails while this node is still starting does not end the quiet early.
            let quiet = 2 * (REJOIN_RETRY + raft_config.heartbeat) + raft_config.election_timeout;
            tasks.spawn(stand_after_rejoin_quiet(
                replica.clone(),
                quiet,
                shutdown.clone(),
            ));
        }
        tasks.spawn(flush_touches(replica.clone(), shutdown));
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
    fn metrics(&self) -> openraft::RaftMetrics<NodeId, PeerNode> {
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

    /// The server of hop channels opened to this node (the node gives it its application).
    pub fn hop_server(&self) -> &Arc<crate::proxy::hop::HopServer> {
        &self.hop
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

impl PeerHandler for Replica {
    fn hop_server(&self) -> Option<Arc<crate::proxy::hop::HopServer>> {
        Some(self.hop.clone())
    }

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
                            crate::security::escape_for_log(&problem)
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

/// Founders with empty stores initialize the group once every founder is seen empty, all with the
/// identical founder set. Never from a partial view: a founder that never appears blocks bootstrap.
async fn bootstrap(
    replica: Arc<Replica>,
    membership: Arc<Membership>,
    config: NodeConfig,
    pristine: bool,
    shutdown: CancellationToken,
) {
    if !pristine {
        return;
    }
    let alone = config.cluster.nodes.is_empty() && config.seeds.is_empty();
    if alone {
        let members = BTreeMap::from([(
            replica.id,
            peer_node(&config.me.name, config.me.cluster, config.me.http),
        )]);
        if let Err(err) = replica.raft.initialize(members).await {
            warn!(error = %err, "cannot initialize a cluster of one");
        } else {
            info!("initialized Raft as a cluster of one");
        }
        return;
    }
    if !config.founder {
        // Joiners wait for the leader to add them as learners.
        return;
    }
    let mut changes = membership.changes();
    loop {
        if replica.raft.is_initialized().await.unwrap_or(true) {
            return;
        }
        let view = membership.view();
        let mut founders = BTreeMap::new();
        let mut someone_initialized = false;
        for founder in &config.cluster.nodes {
            let Some(member) = view.member(&founder.name) else {
                break;
            };
            if member.raft_pristine == Some(false) {
                someone_initialized = true;
            }
            if member.state != MemberState::Up || member.raft_pristine != Some(true) {
                continue;
            }
            if let (Some(id), Some(http)) = (member.raft_id, member.http_addr) {
                founders.insert(id, peer_node(&member.name, member.cluster_addr, http));
            }
        }
        if someone_initialized {
            info!(
                "another founder already initialized Raft; waiting to be contacted by the leader"
            );
            return;
        }
        if founders.len() == config.cluster.nodes.len() {
            // One founder initializes (the one with the smallest id); the others are contacted by it.
            // If every founder initialized, each would campaign at once, and two could lead term 1.
            if founders.keys().next() != Some(&replica.id) {
                let first = founders.values().next().map(|node| node.name.clone());
                info!(initializer = ?first, "every founder is pristine; waiting for the first to initialize Raft");
                return;
            }
            let names: Vec<&str> = founders.values().map(|node| node.name.as_str()).collect();
            match replica.raft.initialize(founders.clone()).await {
                Ok(()) => info!(founders = ?names, "initialized Raft with every founder"),
                Err(err) => debug!(error = %err, "initialize refused (already initialized)"),
            }
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Publishes `raft=member` once the store holds state, and records leader changes as events.
async fn watch_raft(
    replica: Arc<Replica>,
    membership: Arc<Membership>,
    events: EventLog,
    shutdown: CancellationToken,
) {
    let mut metrics = replica.raft.metrics();
    let mut published_member = false;
    let mut leader: Option<NodeId> = None;
    loop {
        let (current_leader, term, has_state, leader_name) = {
            let m = metrics.borrow_and_update();
            let has_state = m.last_log_index.is_some() || m.last_applied.is_some();
            let leader_name = m
                .current_leader
                .and_then(|id| m.membership_config.membership().get_node(&id))
                .map(|node| node.name.clone());
            (m.current_leader, m.current_term, has_state, leader_name)
        };
        if has_state && !published_member {
            membership.set_raft(replica.id, false).await;
            published_member = true;
        }
        if current_leader != leader {
            leader = current_leader;
            if let Some(id) = current_leader {
                let name = leader_name.unwrap_or_else(|| format!("raft-{id}"));
                let event = events.record(EventKind::LeaderChanged, &name, format!("term {term}"));
                info!(leader = %name, term, seq = event.seq, "raft leader is now {name} (term {term})");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
    }
}

/// The leader keeps Raft membership in line with gossip: adds live members as learners, promotes them
/// while there are fewer voters than configured, and removes voters down for longer than a grace period
/// while a quorum remains without them.
async fn reconcile(
    replica: Arc<Replica>,
    membership: Arc<Membership>,
    wanted_voters: usize,
    remove_after: Duration,
    shutdown: CancellationToken,
) {
    let mut changes = membership.changes();
    let mut absent_since: HashMap<NodeId, Instant> = HashMap::new();
    let mut warned_shared: HashSet<NodeId> = HashSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let metrics = replica.metrics();
        if metrics.state != ServerState::Leader {
            absent_since.clear();
            continue;
        }
        let config = metrics.membership_config.membership().clone();
        // Log lines name members; the raft id goes along as a field.
        let name_of = |id: &NodeId| {
            config
                .get_node(id)
                .map(|node| node.name.clone())
                .unwrap_or_else(|| format!("raft-{id}"))
        };
        let voters: BTreeSet<NodeId> = config.voter_ids().collect();
        let learners: BTreeSet<NodeId> = config.learner_ids().collect();
        let view = membership.view();
        let now = Instant::now();

        // 1. Every live member with a Raft id becomes at least a learner.
        for member in view.members.iter().filter(|m| m.state == MemberState::Up) {
            let (Some(id), Some(http)) = (member.raft_id, member.http_addr) else {
                continue;
            };
            if voters.contains(&id) || learners.contains(&id) {
                continue;
            }
            info!(node = %member.name, raft_id = id, "adding {} as a Raft learner", member.name);
            let node = peer_node(&member.name, member.cluster_addr, http);
            if let Err(err) = replica.raft.add_learner(id, node, false).await {
                warn!(node = %member.name, error = %err, "cannot add learner");
            }
        }

        // 1b. A member that came back at other addresses (a restart with new `--cluster` or `--http`,
        // same data dir and so the same Raft id) is reached at the addresses it now gossips. Only when
        // exactly one live member claims the id: two claimants (a copied data dir) are left alone,
        // since sending one node's Raft traffic to another would count the wrong node's answers.
        let Moves { moved, shared } = moved_members(&config, &view);
        for (id, names) in shared {
            if warned_shared.insert(id) {
                warn!(raft_id = id, claimants = ?names, "several live members claim one Raft id (a copied data dir?); its addresses in the Raft membership are left as they are");
            }
        }
        if !moved.is_empty() {
            for (id, node) in &moved {
                let old = config.get_node(id);
                info!(
                    node = %node.name,
                    raft_id = id,
                    cluster = %node.cluster_addr,
                    http = %node.http_addr,
                    old_cluster = old.map(|n| n.cluster_addr.as_str()).unwrap_or(""),
                    old_http = old.map(|n| n.http_addr.as_str()).unwrap_or(""),
                    "{} is at new addresses; updating the Raft membership",
                    node.name
                );
            }
            if let Err(err) = replica
                .raft
                .change_membership(ChangeMembers::SetNodes(moved), false)
                .await
            {
                warn!(error = %err, "cannot update the addresses of moved members");
            }
            continue;
        }

        // 2. Track how long each Raft member has been gone from gossip.
        let live = |id: &NodeId| {
            id == &replica.id
                || view
                    .by_raft_id(*id)
                    .is_some_and(|m| matches!(m.state, MemberState::Up | MemberState::Draining))
        };
        for id in voters.iter().chain(learners.iter()) {
            if live(id) {
                absent_since.remove(id);
            } else {
                absent_since.entry(*id).or_insert(now);
            }
        }
        absent_since.retain(|id, _| voters.contains(id) || learners.contains(id));

        // 3. Promote caught-up live learners while voters are missing.
        if voters.len() < wanted_voters {
            let last = metrics.last_log_index.unwrap_or(0);
            let matched = |id: &NodeId| {
                metrics
                    .replication
                    .as_ref()
                    .and_then(|replication| replication.get(id).cloned().flatten())
                    .map(|log_id| log_id.index)
            };
            if let Some(id) = learners
                .iter()
                .find(|id| live(id) && matched(id).is_some_and(|m| m + 100 >= last))
            {
                info!(
                    peer = %name_of(id),
                    raft_id = id,
                    voters = voters.len(),
                    wanted_voters,
                    "promoting learner {} to voter",
                    name_of(id)
                );
                if let Err(err) = replica
                    .raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([*id])), true)
                    .await
                {
                    warn!(peer = %name_of(id), raft_id = id, error = %err, "cannot promote learner {}", name_of(id));
                }
                continue;
            }
        }

        // 4. Remove members gone for longer than the grace period; voters only while a quorum remains.
        let gone: Vec<NodeId> = absent_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= remove_after)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if learners.contains(&id) {
                info!(peer = %name_of(&id), raft_id = id, "removing learner {} gone for {remove_after:?}", name_of(&id));
                let _ = replica
                    .raft
                    .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                    .await;
                continue;
            }
            let remaining: Vec<&NodeId> = voters.iter().filter(|voter| **voter != id).collect();
            let live_remaining = remaining.iter().filter(|voter| live(voter)).count();
            if remaining.is_empty() || live_remaining < remaining.len() / 2 + 1 {
                continue;
            }
            info!(peer = %name_of(&id), raft_id = id, "removing voter {} gone for {remove_after:?}", name_of(&id));
            match replica
                .raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
            {
                Ok(_) => {
                    absent_since.remove(&id);
                }
                Err(err) => {
                    warn!(peer = %name_of(&id), raft_id = id, error = %err, "cannot remove voter {}", name_of(&id))
                }
            }
            break;
        }
    }
}

/// The live members (up or draining) that gossip Raft id `id`: one, normally.
fn claimants(view: &MembershipView, id: NodeId) -> impl Iterator<Item = &MemberInfo> {
    view.members
        .iter()
        .filter(|m| matches!(m.state, MemberState::Up | MemberState::Draining))
        .filter(move |m| m.raft_id == Some(id))
}

/// Where the one live member claiming Raft id `id` is, by gossip: its cluster address and name;
/// `None` when no live member or several claim it (then the Raft membership's node is used). Sending
/// one node's Raft traffic to another would count the wrong node's answers, so two claimants (a
/// copied data dir) are never guessed between. Called for every peer RPC, so it collects nothing.
pub(super) fn gossiped_address(view: &MembershipView, id: NodeId) -> Option<PeerAt> {
    let mut claimants = claimants(view, id);
    match (claimants.next(), claimants.next()) {
        (Some(member), None) => Some(PeerAt {
            addr: member.cluster_addr,
            name: member.name.clone(),
        }),
        _ => None,
    }
}

/// What gossip says about where the Raft members are.
#[derive(Debug, Default, PartialEq)]
struct Moves {
    /// Members (voters and learners) whose node info differs from what the one live member claiming
    /// their Raft id gossips, with that info.
    moved: BTreeMap<NodeId, PeerNode>,
    /// Ids that more than one live member claims, with their names: left alone.
    shared: Vec<(NodeId, Vec<String>)>,
}

/// Compares the Raft membership's node info with gossip (see [`Moves`]).
fn moved_members(config: &openraft::Membership<NodeId, PeerNode>, view: &MembershipView) -> Moves {
    let mut moved = BTreeMap::new();
    let mut shared = Vec::new();
    for (id, current) in config.nodes() {
        let claimants: Vec<&MemberInfo> = claimants(view, *id).collect();
        let member = match claimants.as_slice() {
            [] => continue,
            [member] => member,
            several => {
                shared.push((*id, several.iter().map(|m| m.name.clone()).collect()));
                continue;
            }
        };
        let Some(http) = member.http_addr else {
            continue;
        };
        let gossiped = peer_node(&member.name, member.cluster_addr, http);
        if *current != gossiped {
            moved.insert(*id, gossiped);
        }
    }
    Moves { moved, shared }
}

/// Only the leader decides expiry, with its clock, as a log entry: every node removes the same
/// sessions at the same index, and the expiry is counted once, here.
async fn expire_sessions(replica: Arc<Replica>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EXPIRY_EVERY) => {}
        }
        if !replica.is_leader() {
            continue;
        }
        let now = now_ms();
        let ids = replica.reader.expired_at(now, EXPIRY_BATCH);
        if ids.is_empty() {
            continue;
        }
        // One attempt through the write queue, not retried: should leadership move meanwhile, the
        // next leader decides expiry with its own clock.
        match replica
            .writes
            .attempt(&*replica, SessionCommand::Expire { ids, now_ms: now })
            .await
        {
            Attempt::Done(log_id, CommandResponse::Expired { ids }) => {
                if !ids.is_empty() {
                    replica
                        .expired_total
                        .fetch_add(ids.len() as u64, Ordering::Relaxed);
                    info!(count = ids.len(), index = log_id.index, "expired sessions");
                }
            }
            Attempt::Done(..) => {}
            Attempt::Retry { uncertain } => {
                let error = uncertain.unwrap_or_else(|| "this node no longer leads".to_owned());
                debug!(%error, "expiry proposal failed");
            }
            Attempt::Failed(err) => debug!(error = %err, "expiry proposal failed"),
        }
    }
}

/// Flushes coalesced access times as one `Touch` entry per interval.
async fn flush_touches(replica: Arc<Replica>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(TOUCH_EVERY) => {}
        }
        let touches: Vec<(SessionId, u64)> = {
            let mut pending = replica
                .touches
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            pending.drain().collect()
        };
        if touches.is_empty() {
            continue;
        }
        if let Err(err) = replica.write(SessionCommand::Touch { touches }).await {
            debug!(error = %err, "access-time flush failed; sessions keep their older access time");
        }
    }
}

/// openraft's own entry-count trigger is this many times `<raft snapshot-every>`.
const SNAPSHOT_BACKSTOP_FACTOR: u64 = 10;

/// Writes after which a node whose latest snapshot held `sessions` sessions takes its next one:
/// `every`, or as many writes as that snapshot held sessions when that is more, times
/// `1 + spread`. A snapshot costs in proportion to the sessions it holds (at most the previous
/// snapshot's plus the writes since), so waiting for as many writes as the last one held keeps the
/// share of time spent on snapshots bounded however large the store grows; the log since the last
/// snapshot is then at most about as large as that snapshot.
fn snapshot_due_after(every: u64, sessions: u64, spread: f64) -> u64 {
    let base = every.max(sessions) as f64;
    (base * (1.0 + spread)) as u64
}

/// Every node compacts its own log: once [`snapshot_due_after`] session writes were applied since
/// the latest snapshot, it builds a new one (openraft then purges the log behind it).
async fn take_snapshots(replica: Arc<Replica>, every: u64, shutdown: CancellationToken) {
    // Every node applies the same writes, so without a spread all of them would serialize their
    // whole store at the same moment; each waits up to a quarter more, by its own id.
    let spread = (replica.id % 1001) as f64 / 4000.0;
    let mut tick = tokio::time::interval(SNAPSHOT_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let pending = replica.reader.writes_since_snapshot();
        if pending < snapshot_due_after(every, replica.reader.sessions_at_snapshot(), spread) {
            continue;
        }
        // Tests watch for this line to act while the snapshot is being built.
        info!(
            writes = pending,
            "snapshot due: building a session snapshot"
        );
        let mark = replica.reader.snapshot_mark();
        if let Err(err) = replica.raft.trigger().snapshot().await {
            warn!(error = %err, "cannot trigger a snapshot");
            return;
        }
        // The builder moves the mark when it copies the state; until then, do not ask again.
        let asked_at = Instant::now();
        while replica.reader.snapshot_mark() == mark && asked_at.elapsed() < Duration::from_secs(30)
        {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::SocketAddr;

    use super::{moved_members, peer_node, snapshot_due_after};
    use crate::membership::{MemberInfo, MemberState, MembershipView};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn member(name: &str, raft_id: u64, cluster: u16, http: u16, state: MemberState) -> MemberInfo {
        MemberInfo {
            raft_id: Some(raft_id),
            raft_pristine: Some(false),
            ready: true,
            ..MemberInfo::new(name.to_owned(), Some(addr(http)), addr(cluster), state)
        }
    }

    #[test]
    fn members_that_gossip_new_addresses_are_moved_unless_an_id_is_claimed_twice() {
        let nodes = BTreeMap::from([
            (1, peer_node("a", addr(7001), addr(8001))),
            (2, peer_node("b", addr(7002), addr(8002))),
            (3, peer_node("c", addr(7003), addr(8003))),
            (4, peer_node("d", addr(7004), addr(8004))),
        ]);
        let config = openraft::Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes);
        let view = MembershipView {
            version: 1,
            members: vec![
                member("a", 1, 7001, 8001, MemberState::Up),
                // Restarted with a new peer port.
                member("b", 2, 7102, 8002, MemberState::Up),
                // Down at a new address: nothing to reach there yet.
                member("c", 3, 7103, 8103, MemberState::Down),
                // Two live members claim learner 4 (a copied data dir).
                member("d", 4, 7104, 8004, MemberState::Up),
                member("e", 4, 7105, 8005, MemberState::Up),
            ],
        };
        let moves = moved_members(&config, &view);
        assert_eq!(
            moves.moved,
            BTreeMap::from([(2, peer_node("b", addr(7102), addr(8002)))])
        );
        assert_eq!(
            moves.shared,
            vec![(4, vec!["d".to_string(), "e".to_string()])]
        );
    }

    #[test]
    fn a_larger_store_waits_for_proportionally_more_writes_between_snapshots() {
        // Up to `every` sessions: every `every` writes, plus the node's spread.
        assert_eq!(snapshot_due_after(100_000, 0, 0.0), 100_000);
        assert_eq!(snapshot_due_after(100_000, 99_999, 0.0), 100_000);
        assert_eq!(snapshot_due_after(100_000, 50_000, 0.25), 125_000);
        // Beyond: as many writes as sessions held, so snapshot work per write stays bounded.
        assert_eq!(snapshot_due_after(100_000, 400_000, 0.0), 400_000);
        assert_eq!(snapshot_due_after(100_000, 400_000, 0.1), 440_000);
        assert_eq!(snapshot_due_after(500, 10_000, 0.0), 10_000);
    }
}
