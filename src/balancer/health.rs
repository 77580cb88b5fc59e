//! Which members are ejected from balancing: a member that failed its last few exchanges gets no
//! work for a while, then one trial request.
//!
//! Only the bookkeeping lives here; the proxy records each exchange's outcome (and logs what
//! changed), and routing reads [`Ejections::ejected`] into the snapshot it balances over. Changes
//! are pushed: [`Ejections::changes`] fires when a member is ejected or back, and
//! [`Ejections::next_end`] says when the next window ends, so nobody polls.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Failure bookkeeping for one member.
#[derive(Debug, Default)]
struct Health {
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
}

/// Consecutive failures per member and the ejections they caused.
#[derive(Debug)]
pub struct Ejections {
    eject_after_failures: u32,
    ejection_window: Duration,
    health: Mutex<HashMap<String, Health>>,
    /// Bumped whenever the ejected set changes other than by a window ending.
    changed: tokio::sync::watch::Sender<u64>,
}

impl Ejections {
    /// Ejects a member for `ejection_window` after `eject_after_failures` failures in a row.
    pub fn new(eject_after_failures: u32, ejection_window: Duration) -> Ejections {
        Ejections {
            eject_after_failures,
            ejection_window,
            health: Mutex::new(HashMap::new()),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Fires when a member is ejected, or is back before or after its window ended. A window that
    /// just ends is not announced: wait for [`Ejections::next_end`] for that.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// When the earliest ejection window still running ends.
    pub fn next_end(&self) -> Option<Instant> {
        let now = Instant::now();
        lock(&self.health)
            .values()
            .filter_map(|health| health.ejected_until)
            .filter(|until| *until > now)
            .min()
    }

    fn announce(&self) {
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// Counts a failed exchange with `name`; the threshold-th consecutive one ejects it, and so does
    /// any failure of the trial request after an ejection ends. Returns the failures in a row when
    /// this one ejected the member.
    pub fn record_failure(&self, name: &str) -> Option<u32> {
        let now = Instant::now();
        let mut health = lock(&self.health);
        let entry = health.entry(name.to_owned()).or_default();
        entry.consecutive_failures = entry.consecutive_failures.saturating_add(1);
        let already_ejected = entry.ejected_until.is_some_and(|until| until > now);
        if entry.consecutive_failures >= self.eject_after_failures && !already_ejected {
            entry.ejected_until = Some(now + self.ejection_window);
            let failures = entry.consecutive_failures;
            drop(health);
            self.announce();
            return Some(failures);
        }
        None
    }

    /// Counts a successful exchange with `name`: clears its failures and any ejection. Returns
    /// whether it had been ejected (its window may have ended already).
    pub fn record_success(&self, name: &str) -> bool {
        let mut health = lock(&self.health);
        let Some(entry) = health.get_mut(name) else {
            return false;
        };
        let was_ejected = entry.ejected_until.is_some();
        *entry = Health::default();
        drop(health);
        if was_ejected {
            self.announce();
        }
        was_ejected
    }

    /// Forgets member `name`'s failure history (it went down or left).
    pub fn forget(&self, name: &str) {
        let forgotten = lock(&self.health).remove(name);
        if forgotten.is_some_and(|health| health.ejected_until.is_some()) {
            self.announce();
        }
    }

    /// Members ejected now (≥ the failure threshold in a row, ejection window not yet over).
    pub fn ejected(&self) -> HashSet<String> {
        let now = Instant::now();
        lock(&self.health)
            .iter()
            .filter(|(_, health)| health.ejected_until.is_some_and(|until| until > now))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Whether member `name` is ejected now.
    pub fn is_ejected(&self, name: &str) -> bool {
        let now = Instant::now();
        lock(&self.health)
            .get(name)
            .and_then(|health| health.ejected_until)
            .is_some_and(|until| until > now)
    }
}

/// Locks `mutex`; the map it guards is valid after any panic, so poison is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proxy's defaults: ejected after 3 failures in a row, for 5 s.
    const EJECTION_WINDOW: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn ejections_and_returns_are_announced_and_the_next_window_end_is_known() {
        let ejections = Ejections::new(2, EJECTION_WINDOW);
        let mut changes = ejections.changes();
        assert_eq!(ejections.next_end(), None);
        ejections.record_failure("node-2");
        assert!(
            !changes.has_changed().expect("open"),
            "one failure ejects no one"
        );
        let start = Instant::now();
        ejections.record_failure("node-2");
        assert!(
            changes.has_changed().expect("open"),
            "an ejection is announced"
        );
        changes.mark_unchanged();
        assert_eq!(ejections.next_end(), Some(start + EJECTION_WINDOW));
        tokio::time::advance(Duration::from_secs(1)).await;
        ejections.record_failure("node-3");
        ejections.record_failure("node-3");
        changes.mark_unchanged();
        assert_eq!(
            ejections.next_end(),
            Some(start + EJECTION_WINDOW),
            "the earliest"
        );
        assert!(ejections.record_success("node-2"));
        assert!(
            changes.has_changed().expect("open"),
            "a return is announced"
        );
        changes.mark_unchanged();
        assert_eq!(
            ejections.next_end(),
            Some(start + Duration::from_secs(1) + EJECTION_WINDOW)
        );
        ejections.forget("node-3");
        assert!(
            changes.has_changed().expect("open"),
            "forgetting an ejected member too"
        );
        assert_eq!(ejections.next_end(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_lasts_the_window_then_the_member_is_retried() {
        let ejections = Ejections::new(3, EJECTION_WINDOW);
        ejections.record_failure("node-2");
        ejections.record_failure("node-2");
        ejections.record_success("node-2");
        ejections.record_failure("node-2");
        assert!(ejections.ejected().is_empty(), "a success resets the count");

        ejections.record_failure("node-2");
        ejections.record_failure("node-2");
        assert_eq!(ejections.ejected(), HashSet::from(["node-2".to_owned()]));
        tokio::time::advance(EJECTION_WINDOW - Duration::from_millis(1)).await;
        assert!(ejections.is_ejected("node-2"));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(ejections.ejected().is_empty(), "window over: tried again");

        // The trial request fails: ejected again at once, for a full window.
        ejections.record_failure("node-2");
        assert!(ejections.is_ejected("node-2"));
        tokio::time::advance(EJECTION_WINDOW).await;
        assert!(!ejections.is_ejected("node-2"));
        // The trial succeeds: back for good, and it takes a full run of failures to eject it again.
        ejections.record_success("node-2");
        ejections.record_failure("node-2");
        ejections.record_failure("node-2");
        assert!(!ejections.is_ejected("node-2"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_proxy_learns_which_outcome_ejected_or_restored_a_member() {
        let ejections = Ejections::new(3, EJECTION_WINDOW);
        assert_eq!(ejections.record_failure("node-2"), None);
        assert_eq!(ejections.record_failure("node-2"), None);
        assert_eq!(ejections.record_failure("node-2"), Some(3));
        // Already ejected: counted, not announced again.
        assert_eq!(ejections.record_failure("node-2"), None);
        tokio::time::advance(EJECTION_WINDOW).await;
        // The window is over, but the ejection is still on record until a success.
        assert!(ejections.record_success("node-2"));
        assert!(!ejections.record_success("node-2"));
        assert!(!ejections.record_success("never-seen"));
        ejections.record_failure("node-3");
        ejections.record_failure("node-3");
        ejections.forget("node-3");
        assert_eq!(
            ejections.record_failure("node-3"),
            None,
            "history forgotten"
        );
    }
}
