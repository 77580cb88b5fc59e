//! Gossip keys published by every node, and the formats of their values.

use std::fmt;
use std::str::FromStr;

/// The wire version this binary speaks; published so a peer can tell it is talking to another version.
pub const WIRE_VERSION: u32 = 1;

/// Key: the wire version of the publishing node (decimal).
pub const KEY_WIRE_VERSION: &str = "wire_version";
/// Key: the node's HTTP address (`ip:port`).
pub const KEY_HTTP_ADDR: &str = "http";
/// Key: the node's lifecycle status, a [`NodeStatus`].
pub const KEY_STATUS: &str = "status";
/// Key: the node's load report, a [`LoadReport`].
pub const KEY_LOAD: &str = "load";
/// Key: whether the node can serve its applications (`1`) or not (`0`, e.g. its upstream is down).
/// Absent means ready, so nodes that never publish it are routed to.
pub const KEY_READY: &str = "ready";
/// Key: the node's Raft id (decimal `u64`), chosen once per data dir and never reused.
pub const KEY_RAFT_ID: &str = "raft_id";
/// Key: the node's Raft storage state: `pristine` (empty, may bootstrap) or `member`.
pub const KEY_RAFT_STATE: &str = "raft";
/// Value of [`KEY_RAFT_STATE`] for an empty Raft store.
pub const RAFT_PRISTINE: &str = "pristine";
/// Value of [`KEY_RAFT_STATE`] for a store that holds a log or a snapshot.
pub const RAFT_MEMBER: &str = "member";

/// Key: the random token (32 hex digits, drawn at each start) the node puts in the hop header of the
/// requests it proxies over HTTP, so that members honour the header from it and from no one else.
/// Absent on older nodes, whose proxied requests are then routed again by the receiver.
pub const KEY_HOP_TOKEN: &str = "hop_token";

/// What a node says about itself in gossip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    /// Serving normally.
    Serving,
    /// Serving what it has, but asks for no new work.
    Draining,
    /// Shutting down on purpose: others report it `left`, not `down`.
    Leaving,
}

impl NodeStatus {
    /// The value written in gossip.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Serving => "serving",
            NodeStatus::Draining => "draining",
            NodeStatus::Leaving => "leaving",
        }
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A gossip value this version does not understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?} in gossip")]
pub struct UnknownValue {
    /// Which key the value belongs to.
    pub what: &'static str,
    /// The value as received (truncated to 64 bytes).
    pub value: String,
}

fn unknown(what: &'static str, value: &str) -> UnknownValue {
    let mut end = value.len().min(64);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    UnknownValue {
        what,
        value: value[..end].to_string(),
    }
}

impl FromStr for NodeStatus {
    type Err = UnknownValue;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "serving" => Ok(NodeStatus::Serving),
            "draining" => Ok(NodeStatus::Draining),
            "leaving" => Ok(NodeStatus::Leaving),
            other => Err(unknown("status", other)),
        }
    }
}

/// A node's own load figures, published at most once a second.
///
/// Format: `key=value` pairs separated by `;`, so a newer version can add fields an older one ignores.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadReport {
    /// HTTP connections open right now.
    pub active_connections: u64,
    /// HTTP requests served since start.
    pub requests_total: u64,
    /// Sessions held by this node's state machine.
    pub sessions: u64,
    /// Process CPU use, percent of one core.
    pub cpu_percent: f64,
    /// Process resident memory.
    pub memory_bytes: u64,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "conn={};req={};sess={};cpu={:.1};mem={}",
            self.active_connections,
            self.requests_total,
            self.sessions,
            self.cpu_percent,
            self.memory_bytes
        )
    }
}

impl FromStr for LoadReport {
    type Err = UnknownValue;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let mut report = LoadReport::default();
        for pair in value.split(';').filter(|pair| !pair.is_empty()) {
            let (key, number) = pair.split_once('=').ok_or_else(|| unknown("load", value))?;
            let bad = || unknown("load", value);
            match key {
                "conn" => report.active_connections = number.parse().map_err(|_| bad())?,
                "req" => report.requests_total = number.parse().map_err(|_| bad())?,
                "sess" => report.sessions = number.parse().map_err(|_| bad())?,
                "cpu" => {
                    report.cpu_percent = number
                        .parse::<f64>()
                        .ok()
                        .filter(|cpu| cpu.is_finite())
                        .ok_or_else(bad)?
                }
                "mem" => report.memory_bytes = number.parse().map_err(|_| bad())?,
                // A newer peer may publish more fields: ignore what we do not know.
                _ => {}
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips() {
        for status in [
            NodeStatus::Serving,
            NodeStatus::Draining,
            NodeStatus::Leaving,
        ] {
            assert_eq!(status.as_str().parse::<NodeStatus>(), Ok(status));
        }
        assert!("retired".parse::<NodeStatus>().is_err());
    }

    #[test]
    fn load_round_trips_and_ignores_unknown_fields() {
        let report = LoadReport {
            active_connections: 3,
            requests_total: 1200,
            sessions: 42,
            cpu_percent: 12.5,
            memory_bytes: 12_345_678,
        };
        assert_eq!(report.to_string().parse::<LoadReport>(), Ok(report));
        let newer = format!("{report};gpu=7");
        assert_eq!(newer.parse::<LoadReport>(), Ok(report));
        assert!("conn=x".parse::<LoadReport>().is_err());
        assert!("cpu=NaN".parse::<LoadReport>().is_err());
        assert!("garbage".parse::<LoadReport>().is_err());
    }
}
