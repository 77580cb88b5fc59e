//! How this node enters the Raft group: its Raft id (the `node-id` file of the data dir), the
//! founders' one-time bootstrap, and, after a restart, waiting for the leader before standing for
//! election.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use proto::raft::{NodeId, SessionId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::reconcile::peer_node;
use super::replica::{Replica, ReplicaError};
use crate::config::NodeConfig;
use crate::membership::{MemberState, Membership};

/// File in the data dir holding this node's Raft id.
const NODE_ID_FILE: &str = "node-id";

/// Reads or creates the node id. A fresh data dir gets a fresh random id: ids are never reused.
pub(super) fn node_id(data_dir: &Path, pristine: bool) -> Result<NodeId, ReplicaError> {
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
pub(super) const REJOIN_RETRY: Duration = Duration::from_millis(500);

/// Lets a restarted node stand for election only after the leader had time to reach it: until it hears
/// from a leader, or for `quiet` (two of the leader's retries and one election timeout).
///
/// Without this, a node back from a crash stands as soon as its election timer runs out, which can be
/// before the leader's next try (the leader backs off after failing to reach it while it was down).
/// It would then ask for votes in a term that may already have a leader, and openraft 0.9, with no
/// pre-vote, lets a candidate of a higher id outrank that leader in its own term: every restart of an
/// old leader would unseat the new one for another election. A cluster restarted as a whole elects
/// its leader `quiet` after the nodes start instead of one election timeout after.
pub(super) async fn stand_after_rejoin_quiet(
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

/// Founders with empty stores initialize the group once every founder is seen empty, all with the
/// identical founder set. Never from a partial view: a founder that never appears blocks bootstrap.
pub(super) async fn bootstrap(
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
