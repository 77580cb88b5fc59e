//! The `/cluster/status` document, in JSON and XML.

use serde::Serialize;

use crate::membership::{MemberInfo, MembershipView, TrafficSnapshot};

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
    /// Raft figures (filled by the Raft layer).
    pub raft: Option<RaftStatus>,
    /// Session figures (filled by the session layer).
    pub sessions: Option<SessionsStatus>,
    /// Balancer figures (filled by the balancer).
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

impl ClusterStatus {
    /// The status as this node sees it now.
    pub fn build(
        cluster_id: &str,
        node: &str,
        view: &MembershipView,
        gossip: TrafficSnapshot,
    ) -> ClusterStatus {
        ClusterStatus {
            cluster_id: cluster_id.to_string(),
            node: node.to_string(),
            leader: None,
            members: view.members.iter().map(MemberStatus::from_member).collect(),
            raft: None,
            sessions: None,
            balancer: None,
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
