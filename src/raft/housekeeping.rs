//! Work every node does in the background on the session store: the leader's expiry, the flush
//! of coalesced access times, and the snapshot policy that compacts each node's log. Expiry and
//! access times are written through the write queue like every other session write.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use proto::raft::{CommandResponse, SessionCommand, SessionId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::batch::{Attempt, Proposer};
use super::replica::Replica;
use crate::clock::now_ms;

/// At most this many entries are kept in the log behind a snapshot, so briefly absent followers
/// catch up from the log (fewer with a small `snapshot-every`: a tenth of it).
pub(super) const LOG_KEPT_BEHIND_SNAPSHOT: u64 = 1_000;
/// How often the snapshot policy (`<raft snapshot-every>`, counted in writes) is checked.
const SNAPSHOT_CHECK_EVERY: Duration = Duration::from_millis(250);
/// How often the leader looks for expired sessions, and how many it expires per entry.
const EXPIRY_EVERY: Duration = Duration::from_millis(500);
const EXPIRY_BATCH: usize = 1_000;
/// How often access times are flushed as one `Touch` entry.
const TOUCH_EVERY: Duration = Duration::from_secs(1);

/// Only the leader decides expiry, with its clock, as a log entry: every node removes the same
/// sessions at the same index, and the expiry is counted once, here.
pub(super) async fn expire_sessions(replica: Arc<Replica>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EXPIRY_EVERY) => {}
        }
        // A leader without a quorum proposes no expiry: each proposal would stay in its log
        // uncommitted (the queue gives up on it after COMMIT_TIMEOUT), and one every round would
        // pile up for as long as the quorum is gone.
        if !replica.is_leader() || Proposer::quorum_problem(&*replica).is_some() {
            continue;
        }
        let now = now_ms();
        let ids = replica.reader.expired_at(now, EXPIRY_BATCH);
        if ids.is_empty() {
            continue;
        }
        // One attempt through the write queue, not retried: should leadership move meanwhile, the
        // next leader decides expiry with its own clock.
        match replica
            .writes
            .attempt(&*replica, SessionCommand::Expire { ids, now_ms: now })
            .await
        {
            Attempt::Done(log_id, CommandResponse::Expired { ids }) => {
                if !ids.is_empty() {
                    replica
                        .expired_total
                        .fetch_add(ids.len() as u64, Ordering::Relaxed);
                    info!(count = ids.len(), index = log_id.index, "expired sessions");
                }
            }
            Attempt::Done(..) => {}
            Attempt::Retry { uncertain } => {
                let error = uncertain.unwrap_or_else(|| "this node no longer leads".to_owned());
                debug!(%error, "expiry proposal failed");
            }
            Attempt::Failed(err) => debug!(error = %err, "expiry proposal failed"),
        }
    }
}

/// Flushes coalesced access times as one `Touch` entry per interval.
pub(super) async fn flush_touches(replica: Arc<Replica>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(TOUCH_EVERY) => {}
        }
        let touches: Vec<(SessionId, u64)> = {
            let mut pending = replica
                .touches
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            pending.drain().collect()
        };
        if touches.is_empty() {
            continue;
        }
        if let Err(err) = replica.write(SessionCommand::Touch { touches }).await {
            debug!(error = %err, "access-time flush failed; sessions keep their older access time");
        }
    }
}

/// openraft's own entry-count trigger is this many times `<raft snapshot-every>`.
pub(super) const SNAPSHOT_BACKSTOP_FACTOR: u64 = 10;

/// Writes after which a node whose latest snapshot held `sessions` sessions takes its next one:
/// `every`, or as many writes as that snapshot held sessions when that is more, times
/// `1 + spread`. A snapshot costs in proportion to the sessions it holds (at most the previous
/// snapshot's plus the writes since), so waiting for as many writes as the last one held keeps the
/// share of time spent on snapshots bounded however large the store grows; the log since the last
/// snapshot is then at most about as large as that snapshot.
fn snapshot_due_after(every: u64, sessions: u64, spread: f64) -> u64 {
    let base = every.max(sessions) as f64;
    (base * (1.0 + spread)) as u64
}

/// Every node compacts its own log: once [`snapshot_due_after`] session writes were applied since
/// the latest snapshot, it builds a new one (openraft then purges the log behind it).
pub(super) async fn take_snapshots(replica: Arc<Replica>, every: u64, shutdown: CancellationToken) {
    // Every node applies the same writes, so without a spread all of them would serialize their
    // whole store at the same moment; each waits up to a quarter more, by its own id.
    let spread = (replica.id % 1001) as f64 / 4000.0;
    let mut tick = tokio::time::interval(SNAPSHOT_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let pending = replica.reader.writes_since_snapshot();
        if pending < snapshot_due_after(every, replica.reader.sessions_at_snapshot(), spread) {
            continue;
        }
        // Tests watch for this line to act while the snapshot is being built.
        info!(
            writes = pending,
            "snapshot due: building a session snapshot"
        );
        let mark = replica.reader.snapshot_mark();
        if let Err(err) = replica.raft.trigger().snapshot().await {
            warn!(error = %err, "cannot trigger a snapshot");
            return;
        }
        // The builder moves the mark when it copies the state; until then, do not ask again.
        let asked_at = Instant::now();
        while replica.reader.snapshot_mark() == mark && asked_at.elapsed() < Duration::from_secs(30)
        {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::snapshot_due_after;

    #[test]
    fn a_larger_store_waits_for_proportionally_more_writes_between_snapshots() {
        // Up to `every` sessions: every `every` writes, plus the node's spread.
        assert_eq!(snapshot_due_after(100_000, 0, 0.0), 100_000);
        assert_eq!(snapshot_due_after(100_000, 99_999, 0.0), 100_000);
        assert_eq!(snapshot_due_after(100_000, 50_000, 0.25), 125_000);
        // Beyond: as many writes as sessions held, so snapshot work per write stays bounded.
        assert_eq!(snapshot_due_after(100_000, 400_000, 0.0), 400_000);
        assert_eq!(snapshot_due_after(100_000, 400_000, 0.1), 440_000);
        assert_eq!(snapshot_due_after(500, 10_000, 0.0), 10_000);
    }
}
