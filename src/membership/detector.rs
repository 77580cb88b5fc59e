//! Phi-accrual failure detection over the heartbeats chitchat gossips.
//!
//! chitchat runs its own detector to pick gossip targets, but does not expose phi or the time of the last
//! heartbeat. We need both for the reason we log ("phi 9.1 > 8, last seen 1.8s ago") and for status, so
//! this detector is the authority for up/down. It uses the same estimator as chitchat (phi = time since the
//! last heartbeat / smoothed mean interval), fed with the same heartbeats, with the same parameters.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Intervals kept per member; enough for a stable mean, small enough to adapt within seconds.
const WINDOW: usize = 200;
/// Weight of the prior (the configured gossip interval) in the mean, in samples.
const PRIOR_WEIGHT: f64 = 5.0;

/// Detector parameters, from `<gossip>`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorParams {
    /// Expected time between heartbeats: the gossip interval.
    pub prior_interval: Duration,
    /// Phi above which a member is down.
    pub phi_threshold: f64,
    /// A member silent this long is down whatever phi says; longer gaps are not learned as intervals.
    pub dead_after: Duration,
}

/// Verdict on one member at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Liveness {
    /// Current phi, `None` until two heartbeats were seen.
    pub phi: Option<f64>,
    /// Time since the last heartbeat changed.
    pub since_last: Duration,
    /// Whether the member counts as alive.
    pub alive: bool,
}

impl Liveness {
    /// Why the member is down, in words, for logs and events.
    pub fn reason(&self, params: &DetectorParams) -> String {
        let seen = format!("last seen {:.1}s ago", self.since_last.as_secs_f64());
        match self.phi {
            _ if self.since_last >= params.dead_after => format!(
                "no heartbeat for {:.1}s (dead-after {:.1}s)",
                self.since_last.as_secs_f64(),
                params.dead_after.as_secs_f64()
            ),
            Some(phi) => format!("phi {phi:.1} > {}, {seen}", params.phi_threshold),
            None => format!("no heartbeat yet, {seen}"),
        }
    }
}

/// Heartbeat arrivals of one member incarnation.
#[derive(Debug, Clone)]
pub struct HeartbeatHistory {
    last_value: u64,
    last_change: Instant,
    intervals: VecDeque<f64>,
    sum: f64,
}

impl HeartbeatHistory {
    /// Starts tracking at the first heartbeat value seen.
    pub fn new(value: u64, now: Instant) -> HeartbeatHistory {
        HeartbeatHistory {
            last_value: value,
            last_change: now,
            intervals: VecDeque::with_capacity(WINDOW),
            sum: 0.0,
        }
    }

    /// Records the heartbeat value observed at `now`; only an increase counts as a heartbeat.
    pub fn observe(&mut self, value: u64, now: Instant, params: &DetectorParams) {
        if value <= self.last_value {
            return;
        }
        let interval = now.saturating_duration_since(self.last_change);
        // A gap longer than dead-after is an outage, not a sample of normal behaviour.
        if interval < params.dead_after {
            if self.intervals.len() == WINDOW
                && let Some(oldest) = self.intervals.pop_front()
            {
                self.sum -= oldest;
            }
            let secs = interval.as_secs_f64();
            self.intervals.push_back(secs);
            self.sum += secs;
        }
        self.last_value = value;
        self.last_change = now;
    }

    /// The verdict at `now`.
    pub fn liveness(&self, now: Instant, params: &DetectorParams) -> Liveness {
        let since_last = now.saturating_duration_since(self.last_change);
        let phi = if self.intervals.is_empty() {
            None
        } else {
            let mean = (self.sum + PRIOR_WEIGHT * params.prior_interval.as_secs_f64())
                / (self.intervals.len() as f64 + PRIOR_WEIGHT);
            Some(since_last.as_secs_f64() / mean.max(1e-6))
        };
        let alive =
            since_last < params.dead_after && phi.is_some_and(|phi| phi <= params.phi_threshold);
        Liveness {
            phi,
            since_last,
            alive,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> DetectorParams {
        DetectorParams {
            prior_interval: Duration::from_millis(100),
            phi_threshold: 8.0,
            dead_after: Duration::from_secs(5),
        }
    }

    #[test]
    fn needs_two_heartbeats_before_alive() {
        let start = Instant::now();
        let history = HeartbeatHistory::new(1, start);
        let verdict = history.liveness(start, &params());
        assert_eq!(verdict.phi, None);
        assert!(!verdict.alive);
    }

    #[test]
    fn regular_heartbeats_stay_alive_and_silence_turns_down_near_threshold() {
        let params = params();
        let start = Instant::now();
        let mut history = HeartbeatHistory::new(0, start);
        for beat in 1..=50u64 {
            history.observe(beat, start + Duration::from_millis(100 * beat), &params);
        }
        let last = start + Duration::from_millis(5000);
        assert!(
            history
                .liveness(last + Duration::from_millis(700), &params)
                .alive
        );
        let verdict = history.liveness(last + Duration::from_millis(900), &params);
        assert!(!verdict.alive, "{verdict:?}");
        assert!(
            verdict
                .reason(&params)
                .starts_with("phi 9.0 > 8, last seen 0.9s ago")
        );
    }

    #[test]
    fn dead_after_caps_slow_members_and_long_gaps_are_not_learned() {
        let params = params();
        let start = Instant::now();
        let mut history = HeartbeatHistory::new(0, start);
        history.observe(1, start + Duration::from_millis(100), &params);
        // A 60 s outage must not teach the detector that 60 s is a normal interval.
        history.observe(2, start + Duration::from_secs(60), &params);
        assert_eq!(history.intervals.len(), 1);
        let late = start + Duration::from_secs(66);
        let verdict = history.liveness(late, &params);
        assert!(!verdict.alive);
        assert!(verdict.reason(&params).starts_with("no heartbeat for 6.0s"));
    }

    #[test]
    fn repeated_or_older_values_are_not_heartbeats() {
        let params = params();
        let start = Instant::now();
        let mut history = HeartbeatHistory::new(5, start);
        history.observe(5, start + Duration::from_millis(100), &params);
        history.observe(4, start + Duration::from_millis(200), &params);
        assert!(history.intervals.is_empty());
        assert_eq!(history.last_change, start);
    }
}
