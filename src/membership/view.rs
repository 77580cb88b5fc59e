//! The immutable membership snapshot every other part of the program reads.

use std::net::SocketAddr;

use proto::gossip::LoadReport;
use serde::Serialize;

/// A member's state as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Heartbeats arrive; serving.
    Up,
    /// No heartbeat for longer than the failure detector allows (or never seen).
    Down,
    /// Alive, but takes no new work.
    Draining,
    /// Shut down on purpose.
    Left,
}

impl MemberState {
    /// The word used in status output.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Up => "up",
            MemberState::Down => "down",
            MemberState::Draining => "draining",
            MemberState::Left => "left",
        }
    }
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberInfo {
    /// Unique node name.
    pub name: String,
    /// Where it serves HTTP; unknown for a founder never heard from.
    pub http_addr: Option<SocketAddr>,
    /// Its gossip (UDP) and peer RPC (TCP) address.
    pub cluster_addr: SocketAddr,
    /// Up, down, draining or left.
    pub state: MemberState,
    /// Start time in ms of the incarnation we track; a restart has a larger one.
    pub generation: Option<u64>,
    /// Current phi of the failure detector (0 for this node itself).
    pub phi: Option<f64>,
    /// Milliseconds since its heartbeat last advanced.
    pub last_seen_ms: Option<u64>,
    /// Listed in the config file's `<nodes>`.
    pub founder: bool,
    /// This is the node answering.
    pub is_self: bool,
    /// Wire version it publishes.
    pub wire_version: Option<u32>,
    /// Its last published load report.
    pub load: Option<LoadReport>,
    /// Its Raft id, once published.
    pub raft_id: Option<u64>,
    /// Whether its Raft store is empty (`Some(true)`), holds state (`Some(false)`), or is unknown.
    pub raft_pristine: Option<bool>,
    /// Whether it can serve its applications (false while, say, its upstream is down).
    pub ready: bool,
    /// The token it proves itself with in the hop header of requests it proxies over HTTP.
    pub hop_token: Option<crate::crypto::HopToken>,
}

impl MemberInfo {
    /// A member known only by name, addresses and state: nothing heard from it yet (no generation,
    /// phi, load or Raft id; not a founder, not this node, not ready).
    pub fn new(
        name: String,
        http_addr: Option<SocketAddr>,
        cluster_addr: SocketAddr,
        state: MemberState,
    ) -> MemberInfo {
        MemberInfo {
            name,
            http_addr,
            cluster_addr,
            state,
            generation: None,
            phi: None,
            last_seen_ms: None,
            founder: false,
            is_self: false,
            wire_version: None,
            load: None,
            raft_id: None,
            raft_pristine: None,
            ready: false,
            hop_token: None,
        }
    }

    /// Whether new work may be sent to it.
    pub fn accepts_work(&self) -> bool {
        self.state == MemberState::Up && self.ready
    }
}

/// All members, sorted by name, as of one instant. Never mutated: a change publishes a new snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MembershipView {
    /// Increases with every published snapshot.
    pub version: u64,
    /// Sorted by name, this node included.
    pub members: Vec<MemberInfo>,
}

impl MembershipView {
    /// The member with this name.
    pub fn member(&self, name: &str) -> Option<&MemberInfo> {
        self.members
            .binary_search_by(|member| member.name.as_str().cmp(name))
            .ok()
            .map(|index| &self.members[index])
    }

    /// The member publishing Raft id `raft_id`.
    pub fn by_raft_id(&self, raft_id: u64) -> Option<&MemberInfo> {
        self.members
            .iter()
            .find(|member| member.raft_id == Some(raft_id))
    }

    /// Members that take new work, in name order.
    pub fn serving(&self) -> impl Iterator<Item = &MemberInfo> {
        self.members.iter().filter(|member| member.accepts_work())
    }

    /// How many members are in `state`.
    pub fn count(&self, state: MemberState) -> usize {
        self.members
            .iter()
            .filter(|member| member.state == state)
            .count()
    }
}
