//! Readiness: what `/readyz` answers, and what the alert evaluator waits for before it trusts its view.

use std::sync::Arc;

use crate::apps::upstream::Upstream;
use crate::http::server::AcceptHealth;
use crate::membership::{MemberInfo, MemberState, Membership, MembershipView};
use crate::raft::replica::Replica;

/// The parts whose state makes this node ready or not.
#[derive(Clone)]
pub struct Readiness {
    /// Whether the HTTP port can accept connections.
    pub accept: Arc<AcceptHealth>,
    /// Gossip: whether another member is up.
    pub membership: Arc<Membership>,
    /// This node runs without seeds: alone by design, it needs no other member.
    pub alone: bool,
    /// Raft: a leader, an applied log, a quorum.
    pub replica: Arc<Replica>,
    /// The local application in upstream mode, if any.
    pub upstream: Option<Arc<Upstream>>,
}

impl Readiness {
    /// `Ok` when this node has joined gossip, Raft has a leader, and this node applied its log.
    pub fn check(&self) -> Result<(), String> {
        self.accept.check()?;
        let view = self.membership.view();
        if let Err(gossip) = gossip_readiness(&view, self.alone) {
            // A leader that lost its peers lost its quorum too: say both.
            return Err(match self.replica.quorum_problem() {
                Some(quorum) if self.replica.is_leader() => format!("{gossip}; {quorum}"),
                _ => gossip,
            });
        }
        if let Some(upstream) = &self.upstream
            && !upstream.is_healthy()
        {
            return Err("the upstream application does not answer".to_string());
        }
        self.replica.readiness()?;
        // A leader cut off from its majority still names itself leader: it can serve nothing.
        match self.replica.quorum_problem() {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }
}

/// `Ok` when this node is alone by design or sees another member up. Otherwise says whether it
/// never heard from another member ("yet") or heard from some and lost them, naming them.
fn gossip_readiness(view: &MembershipView, alone: bool) -> Result<(), String> {
    let others: Vec<&MemberInfo> = view.members.iter().filter(|m| !m.is_self).collect();
    if alone || others.iter().any(|member| member.state == MemberState::Up) {
        return Ok(());
    }
    // A generation is known only for a member this node has heard from.
    let lost: Vec<String> = others
        .iter()
        .filter(|member| member.generation.is_some())
        .map(|member| format!("{} {}", member.name, member.state.as_str()))
        .collect();
    if lost.is_empty() {
        return Err("no other member reachable through gossip yet".to_string());
    }
    let noun = if lost.len() == 1 { "member" } else { "members" };
    Err(format!(
        "no other member reachable through gossip ({} {noun} seen before, none up now: {})",
        lost.len(),
        lost.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, state: MemberState, heard: bool, is_self: bool) -> MemberInfo {
        let mut member = MemberInfo::new(
            name.to_string(),
            None,
            "127.0.0.1:7001".parse().expect("address"),
            state,
        );
        member.generation = heard.then_some(1);
        member.is_self = is_self;
        member
    }

    fn view(members: Vec<MemberInfo>) -> MembershipView {
        MembershipView {
            version: 1,
            members,
        }
    }

    #[test]
    fn gossip_readiness_tells_never_seen_from_lost() {
        let me = || member("node-1", MemberState::Up, true, true);
        let never = view(vec![
            me(),
            member("node-2", MemberState::Down, false, false),
            member("node-3", MemberState::Down, false, false),
        ]);
        assert_eq!(
            gossip_readiness(&never, false),
            Err("no other member reachable through gossip yet".to_string())
        );
        assert_eq!(gossip_readiness(&never, true), Ok(()));
        let lost = view(vec![
            me(),
            member("node-2", MemberState::Down, true, false),
            member("node-3", MemberState::Left, true, false),
            member("node-4", MemberState::Down, false, false),
        ]);
        assert_eq!(
            gossip_readiness(&lost, false),
            Err("no other member reachable through gossip (2 members seen before, none up now: node-2 down, node-3 left)".to_string())
        );
        let one_up = view(vec![me(), member("node-2", MemberState::Up, true, false)]);
        assert_eq!(gossip_readiness(&one_up, false), Ok(()));
    }
}
