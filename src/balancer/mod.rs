//! Chooses the member that serves a request: a pure function over an immutable [`BalancerSnapshot`].
//!
//! The snapshot is rebuilt (and swapped in with `ArcSwap` by the caller) on every membership or ejection
//! change; selection never blocks on I/O and never reads gossip. Every strategy returns *all* targets in
//! the order they should be tried, so a caller retries on the next one without asking again.
//!
//! Invariants: targets are sorted by name and unique; two nodes with the same target set build the same
//! Maglev table, so a key reaches the same member whichever node it enters.

mod hash;
pub mod health;
mod least_connections;
mod maglev;
mod round_robin;

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use crate::config::{HashKey, Strategy};
use crate::membership::MembershipView;

pub use least_connections::{InFlight, InFlightGuard, LeastConnections};
pub use maglev::{ConsistentHash, TABLE_SIZE};
pub use round_robin::RoundRobin;

use maglev::MaglevTable;

/// A member that may be sent work.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Unique node name.
    pub name: String,
    /// Where it serves HTTP.
    pub http_addr: SocketAddr,
    /// Its peer port, where hop channels are opened (`None`: reach it over HTTP only).
    pub cluster_addr: Option<SocketAddr>,
}

/// What routes a request: the session cookie value when present, else the client IP.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RoutingKey {
    /// The session id from the cookie.
    Session(String),
    /// The client's address.
    Client(IpAddr),
    /// Nothing to route by; consistent hashing then spreads such requests round robin.
    None,
}

impl RoutingKey {
    /// The key for a request under `<balancer key=...>`: the session id (when `key` is `session` and
    /// the request has a non-empty one), else the client IP.
    pub fn for_request(key: HashKey, session: Option<&str>, client: Option<IpAddr>) -> RoutingKey {
        match (key, session, client) {
            (HashKey::Session, Some(id), _) if !id.is_empty() => RoutingKey::Session(id.to_owned()),
            (_, _, Some(ip)) => RoutingKey::Client(ip),
            _ => RoutingKey::None,
        }
    }
}

/// For people (`/cluster/route`): `session 0a1b...`, `client 127.0.0.1`, or `none`.
impl std::fmt::Display for RoutingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoutingKey::Session(id) => write!(f, "session {id}"),
            RoutingKey::Client(ip) => write!(f, "client {ip}"),
            RoutingKey::None => f.write_str("none"),
        }
    }
}

/// The members that accept work, sorted by name, with the Maglev table built on first use.
pub struct BalancerSnapshot {
    targets: Vec<Target>,
    // Lazy: round robin and least connections never pay for the 65,537-slot table.
    table: OnceLock<MaglevTable>,
}

impl BalancerSnapshot {
    /// Members of `view` that accept work, have an HTTP address and are not `ejected`. When ejection
    /// would leave no target at all, ejected members stay in: trying a failing member beats a sure 503.
    pub fn build(view: &MembershipView, ejected: &HashSet<String>) -> BalancerSnapshot {
        let serving: Vec<Target> = view
            .serving()
            .filter_map(|member| {
                member.http_addr.map(|http_addr| Target {
                    name: member.name.clone(),
                    http_addr,
                    cluster_addr: Some(member.cluster_addr),
                })
            })
            .collect();
        let healthy: Vec<Target> = serving
            .iter()
            .filter(|target| !ejected.contains(&target.name))
            .cloned()
            .collect();
        if healthy.is_empty() {
            BalancerSnapshot::from_targets(serving)
        } else {
            BalancerSnapshot::from_targets(healthy)
        }
    }

    /// A snapshot of exactly these targets (sorted by name; a repeated name keeps its first entry).
    pub fn from_targets(mut targets: Vec<Target>) -> BalancerSnapshot {
        // Stable sort, so dedup keeps the first entry given for a name.
        targets.sort_by(|a, b| a.name.cmp(&b.name));
        targets.dedup_by(|later, earlier| later.name == earlier.name);
        BalancerSnapshot {
            targets,
            table: OnceLock::new(),
        }
    }

    /// The targets, sorted by name; candidate lists index into this slice.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Whether there is no member to send work to.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The position of the target named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.targets
            .binary_search_by(|target| target.name.as_str().cmp(name))
            .ok()
    }

    fn maglev(&self) -> &MaglevTable {
        self.table
            .get_or_init(|| MaglevTable::build(self.targets.iter().map(|t| t.name.as_str())))
    }
}

impl fmt::Debug for BalancerSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalancerSnapshot")
            .field("targets", &self.targets)
            .field("table_built", &self.table.get().is_some())
            .finish()
    }
}

impl Default for BalancerSnapshot {
    fn default() -> Self {
        BalancerSnapshot::from_targets(Vec::new())
    }
}

/// A selection strategy.
pub trait LoadBalancer: Send + Sync {
    /// Ordered candidates: owner first, then fallbacks; every target at most once; all targets listed.
    fn candidates(&self, key: &RoutingKey, snapshot: &BalancerSnapshot) -> Vec<usize>;
}

/// The balancer for `strategy`; `in_flight` is the registry least-connections reads.
pub fn for_strategy(strategy: Strategy, in_flight: InFlight) -> Arc<dyn LoadBalancer> {
    match strategy {
        Strategy::RoundRobin => Arc::new(RoundRobin::default()),
        Strategy::LeastConnections => Arc::new(LeastConnections::new(in_flight)),
        Strategy::ConsistentHash => Arc::new(ConsistentHash::default()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::membership::{MemberInfo, MemberState};

    /// `count` targets named node-1.. on 127.0.0.1:8081..
    pub(crate) fn targets(count: u16) -> Vec<Target> {
        (1..=count)
            .map(|i| Target {
                name: format!("node-{i}"),
                http_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080 + i)),
                cluster_addr: None,
            })
            .collect()
    }

    pub(crate) fn assert_permutation(candidates: &[usize], len: usize) {
        let mut sorted = candidates.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..len).collect::<Vec<_>>(), "{candidates:?}");
    }

    fn member(name: &str, state: MemberState, http: Option<u16>) -> MemberInfo {
        MemberInfo {
            founder: true,
            ready: true,
            ..MemberInfo::new(
                name.to_owned(),
                http.map(|port| SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
                SocketAddr::from((Ipv4Addr::LOCALHOST, 7000)),
                state,
            )
        }
    }

    #[test]
    fn build_keeps_only_members_that_take_work() {
        let view = MembershipView {
            version: 1,
            members: vec![
                member("a", MemberState::Up, Some(8001)),
                member("b", MemberState::Down, Some(8002)),
                member("c", MemberState::Draining, Some(8003)),
                member("d", MemberState::Left, Some(8004)),
                member("e", MemberState::Up, None),
                member("f", MemberState::Up, Some(8006)),
                member("g", MemberState::Up, Some(8007)),
            ],
        };
        let ejected = HashSet::from(["g".to_owned()]);
        let snapshot = BalancerSnapshot::build(&view, &ejected);
        let names: Vec<&str> = snapshot.targets().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "f"]);
        assert_eq!(snapshot.index_of("f"), Some(1));
        assert_eq!(snapshot.index_of("g"), None);
    }

    #[test]
    fn build_ignores_ejection_when_it_would_leave_nobody() {
        let view = MembershipView {
            version: 1,
            members: vec![
                member("a", MemberState::Up, Some(8001)),
                member("b", MemberState::Up, Some(8002)),
            ],
        };
        let ejected = HashSet::from(["a".to_owned(), "b".to_owned()]);
        assert_eq!(BalancerSnapshot::build(&view, &ejected).targets().len(), 2);
    }

    #[test]
    fn from_targets_sorts_and_dedups() {
        let mut input = targets(3);
        input.reverse();
        input.push(Target {
            name: "node-2".into(),
            http_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 9999)),
            cluster_addr: None,
        });
        let snapshot = BalancerSnapshot::from_targets(input);
        let names: Vec<&str> = snapshot.targets().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["node-1", "node-2", "node-3"]);
        assert_eq!(snapshot.targets()[1].http_addr.port(), 8082);
    }

    #[test]
    fn routing_key_displays_as_plain_text() {
        let session = RoutingKey::Session("0a1b2c".into());
        assert_eq!(session.to_string(), "session 0a1b2c");
        let client = RoutingKey::Client(IpAddr::from([10, 0, 0, 7]));
        assert_eq!(client.to_string(), "client 10.0.0.7");
        assert_eq!(RoutingKey::None.to_string(), "none");
    }

    #[test]
    fn every_strategy_lists_every_target_once() {
        let keys = [
            RoutingKey::Session("abc".into()),
            RoutingKey::Client(IpAddr::from([10, 0, 0, 7])),
            RoutingKey::None,
        ];
        for count in [1, 2, 3, 7, 10] {
            let snapshot = BalancerSnapshot::from_targets(targets(count));
            for strategy in Strategy::ALL {
                let balancer = for_strategy(strategy, InFlight::default());
                for key in &keys {
                    for _ in 0..5 {
                        let candidates = balancer.candidates(key, &snapshot);
                        assert_permutation(&candidates, usize::from(count));
                    }
                }
            }
        }
    }

    #[test]
    fn empty_snapshot_has_no_candidates() {
        let snapshot = BalancerSnapshot::default();
        for strategy in Strategy::ALL {
            let balancer = for_strategy(strategy, InFlight::default());
            assert!(balancer.candidates(&RoutingKey::None, &snapshot).is_empty());
            let key = RoutingKey::Session("x".into());
            assert!(balancer.candidates(&key, &snapshot).is_empty());
        }
    }

    #[test]
    fn routing_key_prefers_session_then_ip() {
        let ip = IpAddr::from([192, 168, 1, 2]);
        assert_eq!(
            RoutingKey::for_request(HashKey::Session, Some("s1"), Some(ip)),
            RoutingKey::Session("s1".into())
        );
        assert_eq!(
            RoutingKey::for_request(HashKey::Session, Some(""), Some(ip)),
            RoutingKey::Client(ip)
        );
        assert_eq!(
            RoutingKey::for_request(HashKey::Ip, Some("s1"), Some(ip)),
            RoutingKey::Client(ip)
        );
        assert_eq!(
            RoutingKey::for_request(HashKey::Session, None, None),
            RoutingKey::None
        );
    }
}
