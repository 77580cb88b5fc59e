//! The Raft membership kept in line with gossip: the leader adds live members as learners, promotes
//! them, removes members gone too long, and follows members to new addresses; peers are reached at
//! the addresses they gossip. The other way, this node publishes `raft=member` once it holds state,
//! and records leader changes as events.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::{ChangeMembers, ServerState};
use proto::raft::{NodeId, PeerNode};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::replica::Replica;
use crate::events::{EventKind, EventLog};
use crate::membership::{MemberInfo, MemberState, Membership, MembershipView};
use crate::peer::PeerAt;

pub(super) fn peer_node(name: &str, cluster: SocketAddr, http: SocketAddr) -> PeerNode {
    PeerNode {
        name: name.to_string(),
        cluster_addr: cluster.to_string(),
        http_addr: http.to_string(),
    }
}

/// Publishes `raft=member` once the store holds state, and records leader changes as events.
pub(super) async fn watch_raft(
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
pub(super) async fn reconcile(
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::SocketAddr;

    use super::{moved_members, peer_node};
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
}
