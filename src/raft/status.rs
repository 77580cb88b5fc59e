//! [`RaftStatus`]: everything the rest of the node reads of Raft, in our own types.
//!
//! openraft's types stay inside `raft` (as chitchat's stay inside `membership`): status, metrics and
//! alerts read this snapshot, so an openraft upgrade changes `raft` only. It is taken from
//! openraft's metrics in one read ([`RaftStatus::of`]) and, with the gossip view, gives the quorum
//! as this node sees it ([`QuorumStatus`]).

use std::time::Duration;

use openraft::{RaftMetrics, ServerState};
use proto::raft::{NodeId, PeerNode};

use crate::membership::{MemberState, MembershipView};

/// What this node is in the Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Leads: proposes every write and the expiry.
    Leader,
    /// Stands for election.
    Candidate,
    /// A voter following a leader (or waiting for one).
    Follower,
    /// Receives the log without a vote.
    Learner,
    /// Raft stopped.
    Shutdown,
}

impl From<ServerState> for Role {
    fn from(state: ServerState) -> Self {
        match state {
            ServerState::Leader => Role::Leader,
            ServerState::Candidate => Role::Candidate,
            ServerState::Follower => Role::Follower,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        }
    }
}

/// A member of the Raft configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftMember {
    /// Its Raft id.
    pub id: NodeId,
    /// Its name as the Raft configuration records it (`raft-<id>` if it records none).
    pub name: String,
}

/// This node's view of Raft at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    /// This node's Raft id.
    pub id: NodeId,
    /// What this node is now.
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// The leader this node knows of, if any.
    pub leader: Option<NodeId>,
    /// The leader's name as the Raft configuration records it (`None` when it records none).
    pub leader_name: Option<String>,
    /// Voters of the Raft configuration, by id.
    pub voters: Vec<RaftMember>,
    /// Learners of the Raft configuration, by id.
    pub learners: Vec<RaftMember>,
    /// Index of the last entry in this node's log.
    pub last_log_index: Option<u64>,
    /// Index of the last entry applied to this node's state machine.
    pub applied_index: Option<u64>,
    /// Why Raft stopped for good (a storage error), if it did.
    pub stopped: Option<String>,
    /// The voters and the quorum as this node sees them.
    pub quorum: QuorumStatus,
}

/// The name the Raft configuration records for `id`, else `raft-<id>`.
fn label(name: Option<&str>, id: NodeId) -> String {
    name.map(str::to_owned)
        .unwrap_or_else(|| format!("raft-{id}"))
}

impl RaftStatus {
    /// Reads `metrics` of node `id` once; `view` tells which voters are up, and a leader whose last
    /// acknowledgement by a quorum is older than `lease` has none.
    pub(super) fn of(
        id: NodeId,
        metrics: &RaftMetrics<NodeId, PeerNode>,
        view: &MembershipView,
        lease: Duration,
    ) -> RaftStatus {
        let membership = metrics.membership_config.membership();
        let member = |id: NodeId| RaftMember {
            id,
            name: label(membership.get_node(&id).map(|node| node.name.as_str()), id),
        };
        let role = Role::from(metrics.state);
        let voters: Vec<RaftMember> = membership.voter_ids().map(member).collect();
        let quorum = QuorumStatus::of(
            id,
            &voters,
            view,
            QuorumFacts {
                leading: role == Role::Leader,
                leader_known: metrics.current_leader.is_some(),
                millis_since_quorum_ack: metrics.millis_since_quorum_ack,
                lease,
            },
        );
        RaftStatus {
            id,
            role,
            term: metrics.current_term,
            leader: metrics.current_leader,
            leader_name: metrics
                .current_leader
                .and_then(|leader| membership.get_node(&leader))
                .map(|node| node.name.clone()),
            learners: membership.learner_ids().map(member).collect(),
            voters,
            last_log_index: metrics.last_log_index,
            applied_index: metrics.last_applied.map(|log_id| log_id.index),
            stopped: metrics
                .running_state
                .as_ref()
                .err()
                .map(|fatal| fatal.to_string()),
            quorum,
        }
    }

    /// Whether this node leads.
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// The leader's name, `raft-<id>` when the configuration records none; `None` with no leader.
    pub fn leader_label(&self) -> Option<String> {
        self.leader.map(|id| label(self.leader_name.as_deref(), id))
    }

    /// Names of the voters, sorted.
    pub fn voter_names(&self) -> Vec<String> {
        sorted_names(&self.voters)
    }

    /// Names of the learners, sorted.
    pub fn learner_names(&self) -> Vec<String> {
        sorted_names(&self.learners)
    }

    /// Whether `id` is a voter.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.iter().any(|member| member.id == id)
    }

    /// Whether `id` is a learner.
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.iter().any(|member| member.id == id)
    }
}

fn sorted_names(members: &[RaftMember]) -> Vec<String> {
    let mut names: Vec<String> = members.iter().map(|member| member.name.clone()).collect();
    names.sort();
    names
}

/// The Raft voters as this node sees them: how many there are, how many are live (up in gossip, or
/// this node), how many a quorum needs, and, for a leader, how long since a quorum acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QuorumStatus {
    /// Voters in the Raft membership.
    pub voters: usize,
    /// Votes a quorum needs (a majority of `voters`).
    pub needed: usize,
    /// Voters up in gossip (this node included when it is a voter).
    pub live: usize,
    /// Names of the voters that are not up in gossip (down, left or never seen).
    pub absent: Vec<String>,
    /// On the leader: milliseconds since a quorum last acknowledged it (`None` before the first).
    pub leader_ack_ms: Option<u64>,
    /// Whether a quorum stands: on the leader, acknowledged within the lease; elsewhere, enough
    /// voters live and a leader known.
    pub has_quorum: bool,
}

/// What Raft says that decides the quorum, besides the voters.
struct QuorumFacts {
    leading: bool,
    leader_known: bool,
    millis_since_quorum_ack: Option<u64>,
    lease: Duration,
}

impl QuorumStatus {
    /// The quorum of `voters` as node `me` sees it with gossip's `view`.
    fn of(me: NodeId, voters: &[RaftMember], view: &MembershipView, facts: QuorumFacts) -> Self {
        let mut live = 0;
        let mut absent = Vec::new();
        for voter in voters {
            let up = voter.id == me
                || view.members.iter().any(|member| {
                    member.raft_id == Some(voter.id)
                        && matches!(member.state, MemberState::Up | MemberState::Draining)
                });
            if up {
                live += 1;
            } else {
                absent.push(voter.name.clone());
            }
        }
        absent.sort();
        let voters = voters.len();
        let needed = voters / 2 + 1;
        let leader_ack_ms = if facts.leading {
            facts.millis_since_quorum_ack
        } else {
            None
        };
        let has_quorum = if facts.leading {
            // A leader alone is its own quorum; otherwise the lease must be fresh.
            voters <= 1 || leader_ack_ms.is_some_and(|ms| ms <= facts.lease.as_millis() as u64)
        } else {
            voters > 0 && live >= needed && facts.leader_known
        };
        QuorumStatus {
            voters,
            needed,
            live,
            absent,
            leader_ack_ms,
            has_quorum,
        }
    }

    /// Why there is no quorum, in words, or `None` when there is one.
    pub fn problem(&self) -> Option<String> {
        if self.has_quorum {
            return None;
        }
        if self.voters == 0 {
            return Some("no Raft membership yet (the founders have not bootstrapped)".to_owned());
        }
        let absent = if self.absent.is_empty() {
            String::new()
        } else {
            format!("; absent: {}", self.absent.join(", "))
        };
        let voters = format!(
            "{} of {} voters up, {} needed{absent}",
            self.live, self.voters, self.needed
        );
        Some(match self.leader_ack_ms {
            Some(ms) => format!(
                "no quorum: this leader was last acknowledged by a majority {ms} ms ago ({voters})"
            ),
            None if self.live < self.needed => format!("no quorum: {voters}"),
            None => format!("no quorum acknowledged this node's leadership yet ({voters})"),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::membership::MemberInfo;

    fn voter(id: NodeId, name: &str) -> RaftMember {
        RaftMember {
            id,
            name: name.to_owned(),
        }
    }

    fn view(members: &[(&str, NodeId, MemberState)]) -> MembershipView {
        let addr = SocketAddr::from(([127, 0, 0, 1], 7000));
        MembershipView {
            version: 1,
            members: members
                .iter()
                .map(|(name, id, state)| MemberInfo {
                    raft_id: Some(*id),
                    ..MemberInfo::new((*name).to_owned(), Some(addr), addr, *state)
                })
                .collect(),
        }
    }

    fn facts(leading: bool, ack: Option<u64>) -> QuorumFacts {
        QuorumFacts {
            leading,
            leader_known: true,
            millis_since_quorum_ack: ack,
            lease: Duration::from_secs(2),
        }
    }

    #[test]
    fn a_follower_counts_live_voters_and_names_the_absent_ones() {
        let voters = [voter(1, "a"), voter(2, "b"), voter(3, "c")];
        let gossip = view(&[("b", 2, MemberState::Down), ("c", 3, MemberState::Down)]);
        let quorum = QuorumStatus::of(1, &voters, &gossip, facts(false, None));
        assert_eq!((quorum.voters, quorum.needed, quorum.live), (3, 2, 1));
        assert_eq!(quorum.absent, ["b", "c"]);
        assert!(!quorum.has_quorum);
        assert_eq!(
            quorum.problem().as_deref(),
            Some("no quorum: 1 of 3 voters up, 2 needed; absent: b, c")
        );
    }

    #[test]
    fn a_leader_has_a_quorum_while_its_lease_is_fresh() {
        let voters = [voter(1, "a"), voter(2, "b"), voter(3, "c")];
        let gossip = view(&[("b", 2, MemberState::Up), ("c", 3, MemberState::Draining)]);
        let fresh = QuorumStatus::of(1, &voters, &gossip, facts(true, Some(2000)));
        assert!(fresh.has_quorum);
        assert_eq!(fresh.problem(), None);
        let stale = QuorumStatus::of(1, &voters, &gossip, facts(true, Some(2001)));
        assert!(!stale.has_quorum);
        assert_eq!(stale.leader_ack_ms, Some(2001));
        let alone = QuorumStatus::of(1, &voters[..1], &gossip, facts(true, None));
        assert!(alone.has_quorum);
    }

    #[test]
    fn no_membership_is_no_quorum() {
        let quorum = QuorumStatus::of(1, &[], &view(&[]), facts(false, None));
        assert_eq!(
            quorum.problem().as_deref(),
            Some("no Raft membership yet (the founders have not bootstrapped)")
        );
    }
}
