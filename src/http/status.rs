//! The `/cluster/status` document, in JSON and XML: built here and nowhere else, from narrow inputs
//! (the membership view, our [`RaftSnapshot`], the routing figures, the session figures and the gossip
//! counters) that [`StatusSource`] reads from their owners at the moment of the request.

use std::sync::Arc;

use serde::Serialize;

use crate::membership::{MemberInfo, Membership, MembershipView, TrafficSnapshot};
use crate::ops::reload::LiveSettings;
use crate::raft::replica::Replica;
use crate::raft::status::RaftStatus as RaftSnapshot;
use crate::routing::Routing;

/// The whole status document. Field names are the contract in DESIGN.md.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// `id` of `<cluster>`.
    pub cluster_id: String,
    /// The node that answered.
    pub node: String,
    /// The Raft leader, when there is one.
    pub leader: Option<String>,
    /// Every member this node knows, itself included, sorted by name.
    pub members: Vec<MemberStatus>,
    /// Raft figures.
    pub raft: Option<RaftStatus>,
    /// Session figures.
    pub sessions: Option<SessionsStatus>,
    /// Balancer figures.
    pub balancer: Option<BalancerStatus>,
    /// This node's gossip traffic since start.
    pub gossip: TrafficSnapshot,
}

/// One row of `members`.
#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    /// Node name.
    pub name: String,
    /// HTTP address.
    pub http_addr: Option<String>,
    /// Gossip/peer address.
    pub cluster_addr: String,
    /// `up`, `down`, `draining` or `left`.
    pub state: String,
    /// Incarnation (start time in ms).
    pub generation: Option<u64>,
    /// Failure-detector phi.
    pub phi: Option<f64>,
    /// Milliseconds since its last heartbeat.
    pub last_seen_ms: Option<u64>,
    /// `voter` or `learner`, when Raft knows it.
    pub raft_role: Option<String>,
    /// Open HTTP connections.
    pub active_connections: Option<u64>,
    /// Requests served since start.
    pub requests_total: Option<u64>,
    /// Sessions held.
    pub sessions: Option<u64>,
    /// Process CPU, percent of one core.
    pub cpu_percent: Option<f64>,
    /// Process resident memory.
    pub memory_bytes: Option<u64>,
    /// Listed in the config file.
    pub founder: bool,
    /// Able to serve its applications (false while its upstream is down).
    pub ready: bool,
}

/// The `raft` object.
#[derive(Debug, Clone, Serialize)]
pub struct RaftStatus {
    /// Current term.
    pub term: u64,
    /// Leader name.
    pub leader: Option<String>,
    /// Highest committed log index.
    pub commit_index: u64,
    /// Highest applied log index on this node.
    pub applied_index: u64,
    /// Voting members.
    pub voters: Vec<String>,
    /// Non-voting members.
    pub learners: Vec<String>,
    /// Voters live versus needed, the absent ones, and whether a quorum stands.
    pub quorum: crate::raft::status::QuorumStatus,
}

/// The `sessions` object.
#[derive(Debug, Clone, Serialize)]
pub struct SessionsStatus {
    /// Live sessions in the replicated store.
    pub active: u64,
    /// Sessions this node expired while it was the leader (each expiry is counted on one node only).
    pub expired_total: u64,
    /// `<sessions max-active>` this node stamps on creates when it leads.
    pub max_active: u64,
    /// `<sessions create-rate-per-ip>` on this node (0: no limit).
    pub create_rate_per_ip: u64,
    /// Whether the session cookie carries `Secure`.
    pub cookie_secure: bool,
}

/// The `balancer` object.
#[derive(Debug, Clone, Serialize)]
pub struct BalancerStatus {
    /// Strategy in use.
    pub strategy: String,
    /// Routing key.
    pub key: String,
    /// Proxy connect timeout in ms (`<balancer connect-timeout-ms>`, as applied).
    pub connect_timeout_ms: u64,
    /// Proxy response timeout in ms (`<balancer response-timeout-ms>`, as applied).
    pub response_timeout_ms: u64,
    /// How proxied requests travel: `hop` or `http` (`<balancer transport>`).
    pub transport: String,
    /// Members that receive work.
    pub members: Vec<String>,
    /// Per member: requests this node proxied there (served here, for this node), failures, in flight.
    pub targets: Vec<crate::routing::TargetStats>,
}

impl MemberStatus {
    /// Builds a row from the membership view.
    pub fn from_member(member: &MemberInfo) -> MemberStatus {
        let load = member.load;
        MemberStatus {
            name: member.name.clone(),
            http_addr: member.http_addr.map(|addr| addr.to_string()),
            cluster_addr: member.cluster_addr.to_string(),
            state: member.state.as_str().to_string(),
            generation: member.generation,
            phi: member.phi,
            last_seen_ms: member.last_seen_ms,
            raft_role: None,
            active_connections: load.map(|load| load.active_connections),
            requests_total: load.map(|load| load.requests_total),
            sessions: load.map(|load| load.sessions),
            cpu_percent: load.map(|load| load.cpu_percent),
            memory_bytes: load.map(|load| load.memory_bytes),
            founder: member.founder,
            ready: member.ready,
        }
    }
}

/// Everything the status document is made of, as read at one instant.
pub struct StatusInputs<'a> {
    /// `id` of `<cluster>`.
    pub cluster_id: &'a str,
    /// The node that answers.
    pub node: &'a str,
    /// The membership as this node sees it.
    pub view: &'a MembershipView,
    /// This node's gossip traffic since start.
    pub gossip: TrafficSnapshot,
    /// Raft as this node sees it.
    pub raft: &'a RaftSnapshot,
    /// The routing figures.
    pub balancer: BalancerStatus,
    /// The session figures.
    pub sessions: SessionsStatus,
}

impl BalancerStatus {
    /// The routing figures of `routing` as of now.
    pub fn of(routing: &Routing) -> BalancerStatus {
        BalancerStatus {
            strategy: routing.strategy().as_str().to_string(),
            key: routing.key().as_str().to_string(),
            connect_timeout_ms: routing.connect_timeout().as_millis() as u64,
            response_timeout_ms: routing.response_timeout().as_millis() as u64,
            transport: if routing.uses_hop() { "hop" } else { "http" }.to_string(),
            members: routing.members(),
            targets: routing.stats(),
        }
    }
}

/// What the status document is read from: the owners of its parts, nothing else of the node.
#[derive(Clone)]
pub struct StatusSource {
    /// `id` of `<cluster>`.
    pub cluster_id: String,
    /// This node's name.
    pub node: String,
    /// Whether the session cookie carries `Secure`: a restart-only setting, so what this node runs
    /// with, not what the file says now.
    pub cookie_secure: bool,
    /// Gossip: the view and the traffic counters.
    pub membership: Arc<Membership>,
    /// Raft and the session figures.
    pub replica: Arc<Replica>,
    /// The balancer.
    pub routing: Arc<Routing>,
    /// The live settings (`create-rate-per-ip`).
    pub live: Arc<LiveSettings>,
}

impl StatusSource {
    /// The status document as of now.
    pub fn status(&self) -> ClusterStatus {
        let view = self.membership.view();
        let raft = self.replica.status();
        let live = self.live.cluster.load();
        let sessions = SessionsStatus {
            active: self.replica.reader().len() as u64,
            expired_total: self.replica.expired_total(),
            max_active: self.replica.limits().max_active(),
            create_rate_per_ip: live.sessions.create_rate_per_ip,
            cookie_secure: self.cookie_secure,
        };
        ClusterStatus::build(StatusInputs {
            cluster_id: &self.cluster_id,
            node: &self.node,
            view: &view,
            gossip: self.membership.traffic(),
            raft: &raft,
            balancer: BalancerStatus::of(&self.routing),
            sessions,
        })
    }
}

impl ClusterStatus {
    /// The document made of `inputs`.
    pub fn build(inputs: StatusInputs<'_>) -> ClusterStatus {
        let StatusInputs {
            cluster_id,
            node,
            view,
            gossip,
            raft,
            balancer,
            sessions,
        } = inputs;
        let members = view
            .members
            .iter()
            .map(|member| {
                let mut row = MemberStatus::from_member(member);
                row.raft_role = member.raft_id.and_then(|id| {
                    if raft.is_voter(id) {
                        Some("voter".to_string())
                    } else if raft.is_learner(id) {
                        Some("learner".to_string())
                    } else {
                        None
                    }
                });
                row
            })
            .collect();
        let leader = raft.leader_label();
        let applied = raft.applied_index.unwrap_or(0);
        ClusterStatus {
            cluster_id: cluster_id.to_string(),
            node: node.to_string(),
            leader: leader.clone(),
            members,
            raft: Some(RaftStatus {
                term: raft.term,
                leader,
                // A follower only knows the commit index through what it applied.
                commit_index: applied,
                applied_index: applied,
                voters: raft.voter_names(),
                learners: raft.learner_names(),
                quorum: raft.quorum.clone(),
            }),
            sessions: Some(sessions),
            balancer: Some(balancer),
            gossip,
        }
    }

    /// The XML form: the same fields, with lists wrapped (`<members><member>…</member></members>`).
    pub fn to_xml(&self) -> Result<String, quick_xml::SeError> {
        #[derive(Serialize)]
        struct Members<'a> {
            member: &'a [MemberStatus],
        }
        #[derive(Serialize)]
        struct Names<'a> {
            name: &'a [String],
        }
        #[derive(Serialize)]
        struct XmlRaft<'a> {
            term: u64,
            leader: &'a Option<String>,
            commit_index: u64,
            applied_index: u64,
            voters: Names<'a>,
            learners: Names<'a>,
        }
        #[derive(Serialize)]
        struct XmlBalancer<'a> {
            strategy: &'a str,
            key: &'a str,
            connect_timeout_ms: u64,
            response_timeout_ms: u64,
            transport: &'a str,
            members: Names<'a>,
            targets: Targets<'a>,
        }
        #[derive(Serialize)]
        struct Targets<'a> {
            target: &'a [crate::routing::TargetStats],
        }
        #[derive(Serialize)]
        struct XmlStatus<'a> {
            cluster_id: &'a str,
            node: &'a str,
            leader: &'a Option<String>,
            members: Members<'a>,
            raft: Option<XmlRaft<'a>>,
            sessions: &'a Option<SessionsStatus>,
            balancer: Option<XmlBalancer<'a>>,
            gossip: &'a TrafficSnapshot,
        }
        let xml = XmlStatus {
            cluster_id: &self.cluster_id,
            node: &self.node,
            leader: &self.leader,
            members: Members {
                member: &self.members,
            },
            raft: self.raft.as_ref().map(|raft| XmlRaft {
                term: raft.term,
                leader: &raft.leader,
                commit_index: raft.commit_index,
                applied_index: raft.applied_index,
                voters: Names { name: &raft.voters },
                learners: Names {
                    name: &raft.learners,
                },
            }),
            sessions: &self.sessions,
            balancer: self.balancer.as_ref().map(|balancer| XmlBalancer {
                strategy: &balancer.strategy,
                key: &balancer.key,
                connect_timeout_ms: balancer.connect_timeout_ms,
                response_timeout_ms: balancer.response_timeout_ms,
                transport: &balancer.transport,
                members: Names {
                    name: &balancer.members,
                },
                targets: Targets {
                    target: &balancer.targets,
                },
            }),
            gossip: &self.gossip,
        };
        let body = quick_xml::se::to_string_with_root("cluster", &xml)?;
        Ok(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{body}\n"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::MemberState;
    use crate::raft::status::{QuorumStatus, RaftMember, Role};

    fn member(name: &str, raft_id: Option<u64>) -> MemberInfo {
        let mut member = MemberInfo::new(
            name.to_string(),
            None,
            "127.0.0.1:7001".parse().expect("address"),
            MemberState::Up,
        );
        member.raft_id = raft_id;
        member
    }

    fn raft() -> RaftSnapshot {
        let named = |id, name: &str| RaftMember {
            id,
            name: name.to_string(),
        };
        RaftSnapshot {
            id: 1,
            role: Role::Follower,
            term: 7,
            leader: Some(1),
            leader_name: Some("node-1".to_string()),
            voters: vec![named(1, "node-1")],
            learners: vec![named(2, "node-2")],
            last_log_index: Some(42),
            applied_index: Some(40),
            stopped: None,
            quorum: QuorumStatus {
                voters: 1,
                needed: 1,
                live: 1,
                absent: Vec::new(),
                leader_ack_ms: None,
                has_quorum: true,
            },
        }
    }

    #[test]
    fn rows_get_their_raft_role_and_the_commit_index_is_what_was_applied() {
        let view = MembershipView {
            version: 1,
            members: vec![
                member("node-1", Some(1)),
                member("node-2", Some(2)),
                member("node-3", None),
            ],
        };
        let status = ClusterStatus::build(StatusInputs {
            cluster_id: "demo",
            node: "node-1",
            view: &view,
            gossip: TrafficSnapshot::default(),
            raft: &raft(),
            balancer: BalancerStatus {
                strategy: "consistent-hash".to_string(),
                key: "session".to_string(),
                connect_timeout_ms: 1,
                response_timeout_ms: 2,
                transport: "hop".to_string(),
                members: vec!["node-1".to_string()],
                targets: Vec::new(),
            },
            sessions: SessionsStatus {
                active: 3,
                expired_total: 0,
                max_active: 10,
                create_rate_per_ip: 0,
                cookie_secure: false,
            },
        });
        let roles: Vec<Option<&str>> = status
            .members
            .iter()
            .map(|row| row.raft_role.as_deref())
            .collect();
        assert_eq!(roles, [Some("voter"), Some("learner"), None]);
        assert_eq!(status.leader.as_deref(), Some("node-1"));
        let raft = status.raft.as_ref().expect("raft figures");
        assert_eq!(
            (raft.term, raft.commit_index, raft.applied_index),
            (7, 40, 40)
        );
        assert_eq!(raft.voters, ["node-1"]);
        assert_eq!(raft.learners, ["node-2"]);
        let json = serde_json::to_value(&status).expect("JSON");
        assert_eq!(json["sessions"]["active"], 3);
        assert_eq!(json["balancer"]["transport"], "hop");
        assert!(
            status
                .to_xml()
                .expect("XML")
                .contains("<learners><name>node-2</name></learners>")
        );
    }
}
