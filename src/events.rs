//! The cluster event history: membership and leader changes, each with a sequence number.
//!
//! Every node keeps its own history of what it observed. Sequence numbers start at 1 and have no gaps,
//! so a client that saw `seq = n` can ask for everything after `n` and miss nothing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use crate::clock::now_ms;
use serde::Serialize;
use tokio::sync::broadcast;

/// How many events a node remembers.
pub const EVENT_HISTORY: usize = 1024;
/// How many live events a subscriber may fall behind before its receiver lags. Smaller than the
/// history on purpose: a lagging subscriber re-reads what it missed from the history (`since`).
pub const LIVE_BUFFER: usize = EVENT_HISTORY / 4;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A member became reachable (joined, came back, or restarted with a new generation).
    NodeUp,
    /// A member stopped answering.
    NodeDown,
    /// A member shut down on purpose.
    NodeLeft,
    /// A member asked for no new work.
    NodeDraining,
    /// The Raft leader changed.
    LeaderChanged,
    /// The configuration was reloaded.
    ConfigReloaded,
}

impl EventKind {
    /// Every kind, in declaration order (the index of [`EventLog::counts`]).
    pub const ALL: [EventKind; 6] = [
        EventKind::NodeUp,
        EventKind::NodeDown,
        EventKind::NodeLeft,
        EventKind::NodeDraining,
        EventKind::LeaderChanged,
        EventKind::ConfigReloaded,
    ];

    /// The name used in JSON and as the SSE event name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::NodeUp => "node_up",
            EventKind::NodeDown => "node_down",
            EventKind::NodeLeft => "node_left",
            EventKind::NodeDraining => "node_draining",
            EventKind::LeaderChanged => "leader_changed",
            EventKind::ConfigReloaded => "config_reloaded",
        }
    }
}

/// One entry of the history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterEvent {
    /// Position in this node's history, from 1, without gaps.
    pub seq: u64,
    /// What happened.
    pub kind: EventKind,
    /// The member it happened to.
    pub node: String,
    /// Wall-clock time this node recorded it, ms since the Unix epoch.
    pub at_ms: u64,
    /// Why, in words (phi value, time since last heartbeat, ...).
    pub reason: String,
}

struct History {
    next_seq: u64,
    events: VecDeque<ClusterEvent>,
    /// Events recorded since start per kind, indexed like [`EventKind::ALL`] (the history forgets).
    counts: [u64; EventKind::ALL.len()],
}

/// The shared, bounded event history with a live feed.
#[derive(Clone)]
pub struct EventLog {
    history: Arc<Mutex<History>>,
    live: broadcast::Sender<ClusterEvent>,
}

impl Default for EventLog {
    fn default() -> Self {
        Self::new()
    }
}

impl EventLog {
    /// An empty history.
    pub fn new() -> EventLog {
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        EventLog {
            history: Arc::new(Mutex::new(History {
                next_seq: 1,
                events: VecDeque::with_capacity(EVENT_HISTORY),
                counts: [0; EventKind::ALL.len()],
            })),
            live,
        }
    }

    /// Records an event, logs nothing (the caller logs with its own context), and returns it.
    pub fn record(&self, kind: EventKind, node: &str, reason: String) -> ClusterEvent {
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let event = ClusterEvent {
            seq: history.next_seq,
            kind,
            node: node.to_string(),
            at_ms: now_ms(),
            reason,
        };
        history.next_seq += 1;
        history.counts[kind as usize] += 1;
        if history.events.len() == EVENT_HISTORY {
            history.events.pop_front();
        }
        history.events.push_back(event.clone());
        // Sent while holding the lock so subscribers see events in sequence order.
        let _ = self.live.send(event.clone());
        event
    }

    /// How many events of each kind were recorded since start, in [`EventKind::ALL`] order.
    pub fn counts(&self) -> [(EventKind, u64); EventKind::ALL.len()] {
        let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        EventKind::ALL.map(|kind| (kind, history.counts[kind as usize]))
    }

    /// Every remembered event with `seq > after`, oldest first.
    pub fn since(&self, after: u64) -> Vec<ClusterEvent> {
        let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        history
            .events
            .iter()
            .filter(|event| event.seq > after)
            .cloned()
            .collect()
    }

    /// The remembered events after `after` plus a receiver for the ones still to come, taken atomically
    /// so nothing falls between the two.
    pub fn subscribe_since(
        &self,
        after: u64,
    ) -> (Vec<ClusterEvent>, broadcast::Receiver<ClusterEvent>) {
        let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let receiver = self.live.subscribe();
        let past = history
            .events
            .iter()
            .filter(|event| event.seq > after)
            .cloned()
            .collect();
        (past, receiver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_have_no_gaps_and_history_is_bounded() {
        let log = EventLog::new();
        for i in 0..(EVENT_HISTORY + 10) {
            log.record(EventKind::NodeUp, "node-1", format!("#{i}"));
        }
        let all = log.since(0);
        assert_eq!(all.len(), EVENT_HISTORY);
        assert_eq!(all.first().map(|e| e.seq), Some(11));
        assert!(all.windows(2).all(|pair| pair[1].seq == pair[0].seq + 1));
        assert_eq!(log.since(all[all.len() - 2].seq).len(), 1);
        // Counts by kind outlive the bounded history.
        assert_eq!(
            log.counts()[0],
            (EventKind::NodeUp, EVENT_HISTORY as u64 + 10)
        );
        assert!(
            EventKind::ALL
                .iter()
                .enumerate()
                .all(|(i, kind)| *kind as usize == i)
        );
    }

    #[tokio::test]
    async fn subscribers_miss_nothing_between_history_and_live() {
        let log = EventLog::new();
        log.record(EventKind::NodeUp, "node-1", String::new());
        let (past, mut live) = log.subscribe_since(0);
        log.record(EventKind::NodeDown, "node-1", String::new());
        assert_eq!(past.len(), 1);
        let next = live.recv().await.expect("live event");
        assert_eq!((next.seq, next.kind), (2, EventKind::NodeDown));
    }
}
