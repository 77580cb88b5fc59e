//! How far this node's Raft log is known to be on disk, for the leader's pipelined appends.
//!
//! openraft 0.9 waits for the leader's own append to be flushed before it starts replicating
//! it, so a write pays for two fsyncs in series: the leader's, then a follower's. The leader
//! need not wait: Raft only requires that an entry is on disk on a majority before it counts as
//! committed (Raft thesis §10.2.1; etcd writes its leader's log in parallel with replication the
//! same way). So when [`super::log_store::LogStore`] appends the entries its own node proposed
//! as leader, it reports them to openraft at once and fsyncs in the background, and the two
//! places where openraft would otherwise count the leader's copy before it is on disk wait for
//! this watermark instead:
//!
//! - a follower's successful append response is handed to openraft only once the leader's own
//!   log is durable up to the log id the follower matched ([`super::network`]). openraft commits
//!   an index when a quorum matches it, and with every follower's match capped by what the leader
//!   has synced, any quorum that includes the leader is a quorum of entries on disk;
//! - the state machine applies an entry only once it is durable here
//!   ([`super::state_machine`]). That covers a configuration whose only voter is the leader,
//!   where openraft commits on the leader's own progress: nothing is applied, answered or read
//!   before it is on disk.
//!
//! Followers never pipeline: their append is acknowledged only after its fsync. A failed fsync
//! marks the watermark failed; every wait then fails and the log store refuses further appends,
//! which stops Raft on this node.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use proto::raft::LogId;
use tokio::sync::watch;

/// The watermark; cheap to clone, all clones share it.
#[derive(Clone)]
pub struct Durability {
    inner: Arc<Inner>,
}

struct Inner {
    mark: watch::Sender<Mark>,
    /// Set once the log store pipelines the leader's appends; until then every acknowledged
    /// append was already synced and waits return at once.
    pipelining: AtomicBool,
}

#[derive(Debug, Clone, Default)]
struct Mark {
    /// Every entry up to this log id (in log id order) is on disk.
    synced: Option<LogId>,
    /// Why a sync failed; nothing is durable beyond `synced` from then on.
    failed: Option<Arc<str>>,
}

impl std::fmt::Debug for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = self.inner.mark.borrow();
        f.debug_struct("Durability")
            .field("synced", &mark.synced)
            .field("failed", &mark.failed)
            .field("pipelining", &self.pipelining())
            .finish()
    }
}

impl Durability {
    /// A watermark at `synced`: what the log held, on disk, when it was opened.
    pub fn new(synced: Option<LogId>) -> Durability {
        let (mark, _) = watch::channel(Mark {
            synced,
            failed: None,
        });
        Durability {
            inner: Arc::new(Inner {
                mark,
                pipelining: AtomicBool::new(false),
            }),
        }
    }

    /// From now on acknowledged appends may be ahead of the disk, so waits are real.
    pub(crate) fn start_pipelining(&self) {
        self.inner.pipelining.store(true, Ordering::Release);
    }

    /// Whether the leader's appends are pipelined.
    pub fn pipelining(&self) -> bool {
        self.inner.pipelining.load(Ordering::Acquire)
    }

    /// A sync covering everything up to `upto` finished.
    pub(crate) fn synced(&self, upto: Option<LogId>) {
        let Some(upto) = upto else { return };
        self.inner.mark.send_if_modified(|mark| {
            if mark.synced.is_some_and(|synced| synced >= upto) {
                return false;
            }
            mark.synced = Some(upto);
            true
        });
    }

    /// A sync failed: nothing written after the last good sync can be trusted to be on disk.
    pub(crate) fn fail(&self, reason: String) {
        self.inner.mark.send_modify(|mark| {
            if mark.failed.is_none() {
                mark.failed = Some(reason.into());
            }
        });
    }

    /// The error every wait and append gets after a failed sync.
    pub(crate) fn failure(&self) -> Option<io::Error> {
        self.inner.mark.borrow().failed.as_deref().map(sync_failed)
    }

    /// Whether `id` is on disk (always true while not pipelining).
    pub fn is_synced(&self, id: LogId) -> bool {
        !self.pipelining() || self.inner.mark.borrow().synced >= Some(id)
    }

    /// Waits until the entry `id`, and every entry before it, is on disk. Returns at once while
    /// not pipelining; fails if a sync failed first.
    pub async fn wait_for(&self, id: LogId) -> io::Result<()> {
        if !self.pipelining() {
            return Ok(());
        }
        let mut marks = self.inner.mark.subscribe();
        let result = marks
            .wait_for(|mark| mark.failed.is_some() || mark.synced >= Some(id))
            .await
            .map(|mark| mark.failed.clone());
        match result {
            Ok(None) => Ok(()),
            Ok(Some(reason)) => Err(sync_failed(&reason)),
            // The sender lives in `inner`, which `self` holds: it cannot be dropped first.
            Err(_) => Err(io::Error::other("raft log closed")),
        }
    }
}

fn sync_failed(reason: &str) -> io::Error {
    io::Error::other(format!("the raft log could not be synced: {reason}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::CommittedLeaderId;

    use super::*;

    fn id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    #[tokio::test]
    async fn waits_return_at_once_until_pipelining_starts() {
        let durable = Durability::new(None);
        assert!(durable.is_synced(id(1, 5)));
        durable.wait_for(id(1, 5)).await.expect("not pipelining");
        durable.start_pipelining();
        assert!(!durable.is_synced(id(1, 5)));
    }

    #[tokio::test]
    async fn a_wait_ends_when_a_sync_covers_the_entry() {
        let durable = Durability::new(Some(id(1, 2)));
        durable.start_pipelining();
        durable.wait_for(id(1, 2)).await.expect("already synced");
        let waiter = tokio::spawn({
            let durable = durable.clone();
            async move { durable.wait_for(id(1, 5)).await }
        });
        durable.synced(Some(id(1, 4)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "index 4 does not cover index 5");
        durable.synced(Some(id(1, 7)));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined")
            .expect("synced");
        // The watermark never goes back, and an entry of a later term is not covered by an
        // earlier term's higher index.
        durable.synced(Some(id(1, 3)));
        assert!(durable.is_synced(id(1, 7)));
        assert!(!durable.is_synced(id(2, 1)));
    }

    #[tokio::test]
    async fn a_failed_sync_fails_every_wait() {
        let durable = Durability::new(None);
        durable.start_pipelining();
        let waiter = tokio::spawn({
            let durable = durable.clone();
            async move { durable.wait_for(id(1, 1)).await }
        });
        durable.fail("disk on fire".into());
        let err = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined")
            .expect_err("failed");
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert!(durable.failure().is_some());
        assert!(durable.wait_for(id(1, 1)).await.is_err());
    }
}
