//! Alert evaluation: the fire-once / resolve-once [`Evaluator`] and the traffic window behind the
//! rate and latency rules. Pure: time and observations come in, notifications go out.

use std::collections::{BTreeMap, VecDeque};

use crate::config::{AlertCondition, AlertRule};
use crate::metrics::http::TrafficTotals;

/// Whether an alert starts or ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertStatus {
    /// The condition held for the rule's `for-ms`.
    Firing,
    /// The condition no longer holds.
    Resolved,
}

impl AlertStatus {
    /// The word Alertmanager uses.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }
}

/// One alert: a rule and, for per-member rules, the member.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AlertKey {
    /// The rule's name (unique within `<alerts>`, and stable across a reload, unlike its position).
    pub rule: String,
    /// The member it is about (`member-down`).
    pub member: Option<String>,
}

/// A condition that holds now, with words for the notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Which alert.
    pub key: AlertKey,
    /// What is wrong, in one line.
    pub summary: String,
}

/// A notification to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// Firing or resolved.
    pub status: AlertStatus,
    /// Which alert.
    pub key: AlertKey,
    /// The rule's name (`alertname`).
    pub rule_name: String,
    /// Critical or warning.
    pub severity: &'static str,
    /// What is (or was) wrong.
    pub summary: String,
    /// Wall-clock ms when it started firing.
    pub starts_at_ms: u64,
    /// Wall-clock ms when it resolved.
    pub ends_at_ms: Option<u64>,
}

#[derive(Debug)]
struct Instance {
    /// Monotonic ms when the condition was first seen holding.
    since_ms: u64,
    /// Wall-clock ms when it fired.
    fired_at_ms: Option<u64>,
    /// This node sent the firing notification (so it owes the resolution).
    notified: bool,
    summary: String,
}

/// The fire-once / resolve-once state machine over every rule. Pure: time and observations come in.
#[derive(Debug)]
pub struct Evaluator {
    rules: Vec<AlertRule>,
    instances: BTreeMap<AlertKey, Instance>,
}

impl Evaluator {
    /// An evaluator with nothing pending.
    pub fn new(rules: Vec<AlertRule>) -> Evaluator {
        Evaluator {
            rules,
            instances: BTreeMap::new(),
        }
    }

    /// The rules.
    pub fn rules(&self) -> &[AlertRule] {
        &self.rules
    }

    fn rule(&self, name: &str) -> Option<&AlertRule> {
        find_rule(&self.rules, name)
    }

    /// Replaces the rules (a config reload) at `wall_ms`. Alerts of a rule that keeps its name and
    /// kind stay as they are and meet the new threshold and `for-ms` at the next [`Evaluator::step`];
    /// alerts of a rule that is gone or changed kind are dropped, and the ones this node notified are
    /// returned as resolved.
    pub fn set_rules(&mut self, rules: Vec<AlertRule>, wall_ms: u64) -> Vec<Notification> {
        let mut out = Vec::new();
        let old = std::mem::replace(&mut self.rules, rules);
        let ended: Vec<AlertKey> = self
            .instances
            .keys()
            .filter(|key| {
                let before = find_rule(&old, &key.rule);
                let after = self.rule(&key.rule);
                match (before, after) {
                    (Some(before), Some(after)) => {
                        before.condition.kind() != after.condition.kind()
                    }
                    _ => true,
                }
            })
            .cloned()
            .collect();
        for key in ended {
            let Some(mut instance) = self.instances.remove(&key) else {
                continue;
            };
            if instance.notified
                && let Some(rule) = find_rule(&old, &key.rule)
            {
                instance.summary = format!(
                    "{} (resolved: the rule was removed or changed by a config reload)",
                    instance.summary
                );
                out.push(notification(
                    rule,
                    &key,
                    &instance,
                    AlertStatus::Resolved,
                    Some(wall_ms),
                ));
            }
        }
        out
    }

    /// Takes the conditions holding at `mono_ms` (monotonic) / `wall_ms` (wall clock) and returns
    /// what to send. `notifier`: this node sends new alerts; `adopt`: it also sends alerts already
    /// firing that it has not sent (the previous notifier is gone).
    pub fn step(
        &mut self,
        mono_ms: u64,
        wall_ms: u64,
        observed: Vec<Observation>,
        notifier: bool,
        adopt: bool,
    ) -> Vec<Notification> {
        let mut out = Vec::new();
        let mut holding = std::collections::BTreeSet::new();
        for observation in observed {
            let Some(rule) = find_rule(&self.rules, &observation.key.rule) else {
                continue;
            };
            let for_ms = rule.for_duration.as_millis() as u64;
            holding.insert(observation.key.clone());
            let instance = self
                .instances
                .entry(observation.key.clone())
                .or_insert_with(|| Instance {
                    since_ms: mono_ms,
                    fired_at_ms: None,
                    notified: false,
                    summary: String::new(),
                });
            instance.summary = observation.summary;
            let newly_fired = instance.fired_at_ms.is_none()
                && mono_ms.saturating_sub(instance.since_ms) >= for_ms;
            if newly_fired {
                instance.fired_at_ms = Some(wall_ms);
            }
            let send = match instance.fired_at_ms {
                Some(_) if !instance.notified => (newly_fired && notifier) || adopt,
                _ => false,
            };
            if send {
                instance.notified = true;
                out.push(notification(
                    rule,
                    &observation.key,
                    instance,
                    AlertStatus::Firing,
                    None,
                ));
            }
        }
        let cleared: Vec<AlertKey> = self
            .instances
            .keys()
            .filter(|key| !holding.contains(*key))
            .cloned()
            .collect();
        for key in cleared {
            let Some(instance) = self.instances.remove(&key) else {
                continue;
            };
            if instance.notified
                && let Some(rule) = self.rule(&key.rule)
            {
                out.push(notification(
                    rule,
                    &key,
                    &instance,
                    AlertStatus::Resolved,
                    Some(wall_ms),
                ));
            }
        }
        out
    }

    /// Alerts firing now, by rule name, every rule listed.
    pub fn firing(&self) -> BTreeMap<String, u64> {
        let mut firing: BTreeMap<String, u64> = self
            .rules
            .iter()
            .map(|rule| (rule.name.clone(), 0))
            .collect();
        for (key, instance) in &self.instances {
            if instance.fired_at_ms.is_some() && self.rule(&key.rule).is_some() {
                *firing.entry(key.rule.clone()).or_default() += 1;
            }
        }
        firing
    }
}

/// The rule named `name` (names are unique within `<alerts>`).
fn find_rule<'a>(rules: &'a [AlertRule], name: &str) -> Option<&'a AlertRule> {
    rules.iter().find(|rule| rule.name == name)
}

fn notification(
    rule: &AlertRule,
    key: &AlertKey,
    instance: &Instance,
    status: AlertStatus,
    ends_at_ms: Option<u64>,
) -> Notification {
    Notification {
        status,
        key: key.clone(),
        rule_name: rule.name.clone(),
        severity: severity(&rule.condition),
        summary: instance.summary.clone(),
        starts_at_ms: instance.fired_at_ms.unwrap_or_default(),
        ends_at_ms,
    }
}

fn severity(condition: &AlertCondition) -> &'static str {
    match condition {
        AlertCondition::MemberDown | AlertCondition::NoLeader => "critical",
        _ => "warning",
    }
}

/// Samples of the request totals, for the rules that look at a window of time.
#[derive(Debug, Default)]
pub(super) struct TrafficWindow {
    samples: VecDeque<(u64, TrafficTotals)>,
}

impl TrafficWindow {
    /// Adds the totals at `mono_ms`, forgetting samples older than `keep_ms` (one older sample is
    /// kept as the window's start).
    pub(super) fn push(&mut self, mono_ms: u64, totals: TrafficTotals, keep_ms: u64) {
        self.samples.push_back((mono_ms, totals));
        let horizon = mono_ms.saturating_sub(keep_ms);
        while self.samples.len() > 2 && self.samples[1].0 <= horizon {
            self.samples.pop_front();
        }
    }

    /// What happened over the last `window_ms` (or since the first sample, if younger).
    pub(super) fn over(&self, window_ms: u64) -> Option<TrafficTotals> {
        let (now_ms, latest) = self.samples.back()?;
        let horizon = now_ms.saturating_sub(window_ms);
        let start = self
            .samples
            .iter()
            .rev()
            .find(|(at, _)| *at <= horizon)
            .or_else(|| self.samples.front())
            .map(|(_, totals)| totals)?;
        Some(TrafficTotals {
            requests: latest.requests.saturating_sub(start.requests),
            errors: latest.errors.saturating_sub(start.errors),
            latency: latest.latency.since(&start.latency),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn rule(name: &str, condition: AlertCondition, for_ms: u64) -> AlertRule {
        AlertRule {
            name: name.to_string(),
            condition,
            for_duration: Duration::from_millis(for_ms),
        }
    }

    fn down(member: &str) -> Observation {
        Observation {
            key: AlertKey {
                rule: "member-down".to_string(),
                member: Some(member.to_string()),
            },
            summary: format!("member {member} is down"),
        }
    }

    fn no_leader() -> Observation {
        Observation {
            key: AlertKey {
                rule: "no-leader".to_string(),
                member: None,
            },
            summary: "no Raft leader".to_string(),
        }
    }

    fn evaluator() -> Evaluator {
        Evaluator::new(vec![
            rule("member-down", AlertCondition::MemberDown, 0),
            rule("no-leader", AlertCondition::NoLeader, 5_000),
        ])
    }

    fn statuses(notifications: &[Notification]) -> Vec<(AlertStatus, String, Option<String>)> {
        notifications
            .iter()
            .map(|n| (n.status, n.rule_name.clone(), n.key.member.clone()))
            .collect()
    }

    #[test]
    fn fires_once_while_the_condition_holds_and_resolves_once() {
        let mut alerts = evaluator();
        let fired = alerts.step(0, 1_000, vec![down("node-2")], true, false);
        assert_eq!(
            statuses(&fired),
            [(
                AlertStatus::Firing,
                "member-down".into(),
                Some("node-2".into())
            )]
        );
        assert_eq!(fired[0].starts_at_ms, 1_000);
        for tick in 1..10 {
            let again = alerts.step(
                tick * 1_000,
                1_000 + tick * 1_000,
                vec![down("node-2")],
                true,
                false,
            );
            assert!(again.is_empty(), "tick {tick}: {again:?}");
        }
        assert_eq!(alerts.firing()["member-down"], 1);
        let resolved = alerts.step(10_000, 11_000, vec![], true, false);
        assert_eq!(
            statuses(&resolved),
            [(
                AlertStatus::Resolved,
                "member-down".into(),
                Some("node-2".into())
            )]
        );
        assert_eq!(resolved[0].starts_at_ms, 1_000);
        assert_eq!(resolved[0].ends_at_ms, Some(11_000));
        assert!(alerts.step(11_000, 12_000, vec![], true, false).is_empty());
        assert_eq!(alerts.firing()["member-down"], 0);
    }

    #[test]
    fn for_duration_delays_firing_and_a_short_blip_sends_nothing() {
        let mut alerts = evaluator();
        assert!(alerts.step(0, 0, vec![no_leader()], true, false).is_empty());
        assert!(
            alerts
                .step(4_000, 4_000, vec![no_leader()], true, false)
                .is_empty()
        );
        // Cleared before for-ms: neither fired nor resolved.
        assert!(alerts.step(4_500, 4_500, vec![], true, false).is_empty());
        assert!(
            alerts
                .step(5_000, 5_000, vec![no_leader()], true, false)
                .is_empty()
        );
        let fired = alerts.step(10_000, 10_000, vec![no_leader()], true, false);
        assert_eq!(
            statuses(&fired),
            [(AlertStatus::Firing, "no-leader".into(), None)]
        );
        assert!(
            alerts
                .step(11_000, 11_000, vec![no_leader()], true, false)
                .is_empty()
        );
        let resolved = alerts.step(12_000, 12_000, vec![], true, false);
        assert_eq!(
            statuses(&resolved),
            [(AlertStatus::Resolved, "no-leader".into(), None)]
        );
    }

    #[test]
    fn members_are_separate_alerts() {
        let mut alerts = evaluator();
        let fired = alerts.step(0, 0, vec![down("node-2"), down("node-3")], true, false);
        assert_eq!(fired.len(), 2);
        let resolved = alerts.step(1_000, 1_000, vec![down("node-3")], true, false);
        assert_eq!(
            statuses(&resolved),
            [(
                AlertStatus::Resolved,
                "member-down".into(),
                Some("node-2".into())
            )]
        );
        assert_eq!(alerts.firing()["member-down"], 1);
    }

    #[test]
    fn only_the_notifier_sends_and_the_sender_resolves_what_it_sent() {
        // A follower tracks the alert but sends nothing, neither firing nor resolved.
        let mut follower = evaluator();
        assert!(
            follower
                .step(0, 0, vec![down("node-2")], false, false)
                .is_empty()
        );
        assert_eq!(follower.firing()["member-down"], 1);
        assert!(follower.step(1_000, 1_000, vec![], false, false).is_empty());

        // The notifier loses the role while the alert fires: it still sends the resolution.
        let mut leader = evaluator();
        assert_eq!(
            leader.step(0, 0, vec![down("node-2")], true, false).len(),
            1
        );
        assert!(
            leader
                .step(1_000, 1_000, vec![down("node-2")], false, false)
                .is_empty()
        );
        let resolved = leader.step(2_000, 2_000, vec![], false, false);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].status, AlertStatus::Resolved);
    }

    #[test]
    fn a_new_notifier_adopts_alerts_only_when_told_to() {
        let mut next = evaluator();
        assert!(
            next.step(0, 0, vec![down("node-2")], false, false)
                .is_empty()
        );
        // Became the notifier, the previous one still up: it does not repeat the alert.
        assert!(
            next.step(1_000, 1_000, vec![down("node-2")], true, false)
                .is_empty()
        );
        // The previous notifier is gone: the alert is sent (once), and so is its resolution.
        let adopted = next.step(2_000, 2_000, vec![down("node-2")], true, true);
        assert_eq!(statuses(&adopted)[0].0, AlertStatus::Firing);
        assert_eq!(adopted[0].starts_at_ms, 0);
        assert!(
            next.step(3_000, 3_000, vec![down("node-2")], true, true)
                .is_empty()
        );
        let resolved = next.step(4_000, 4_000, vec![], true, false);
        assert_eq!(statuses(&resolved)[0].0, AlertStatus::Resolved);
    }

    #[test]
    fn a_reload_keeps_alerts_of_kept_rules_and_resolves_those_of_removed_ones() {
        let mut alerts = evaluator();
        let both = || vec![down("node-2"), no_leader()];
        assert_eq!(
            alerts
                .step(0, 1_000, vec![down("node-2")], true, false)
                .len(),
            1
        );
        assert!(alerts.step(1_000, 2_000, both(), true, false).is_empty());
        // Same names and kinds, new for-ms: nothing is sent; the pending no-leader alert keeps its
        // start and fires as soon as the shorter for-ms has passed; the fired member-down alert does
        // not go back to pending because its for-ms grew.
        let shorter = vec![
            rule("member-down", AlertCondition::MemberDown, 60_000),
            rule("no-leader", AlertCondition::NoLeader, 500),
        ];
        assert!(alerts.set_rules(shorter, 2_500).is_empty());
        let fired = alerts.step(2_000, 3_000, both(), true, false);
        assert_eq!(
            statuses(&fired),
            [(AlertStatus::Firing, "no-leader".into(), None)]
        );
        assert_eq!(alerts.firing()["member-down"], 1);
        assert_eq!(alerts.firing()["no-leader"], 1);

        // member-down removed, and no-leader now names a rule of another kind: both resolve at once,
        // as the rule they fired under, saying why.
        let memory = rule("no-leader", AlertCondition::Memory { bytes: 1 << 20 }, 0);
        let resolved = alerts.set_rules(vec![memory], 4_000);
        let mut seen = statuses(&resolved);
        seen.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(
            seen,
            [
                (
                    AlertStatus::Resolved,
                    "member-down".into(),
                    Some("node-2".into())
                ),
                (AlertStatus::Resolved, "no-leader".into(), None),
            ]
        );
        assert!(
            resolved
                .iter()
                .all(|n| n.ends_at_ms == Some(4_000) && n.summary.contains("config reload"))
        );
        assert_eq!(
            resolved
                .iter()
                .find(|n| n.rule_name == "no-leader")
                .map(|n| n.severity),
            Some("critical")
        );
        assert!(!alerts.firing().contains_key("member-down"));
        assert_eq!(alerts.firing()["no-leader"], 0);
        // Nothing is owed twice: the next evaluation sends nothing for what was resolved.
        assert!(alerts.step(4_000, 5_000, vec![], true, false).is_empty());
    }

    #[test]
    fn a_changed_threshold_is_judged_at_the_next_evaluation() {
        let memory = |bytes| vec![rule("memory", AlertCondition::Memory { bytes }, 0)];
        let over = || Observation {
            key: AlertKey {
                rule: "memory".into(),
                member: None,
            },
            summary: "big".into(),
        };
        let mut alerts = Evaluator::new(memory(1 << 20));
        assert_eq!(alerts.step(0, 0, vec![over()], true, false).len(), 1);
        // Raised: the alert stays until an evaluation finds the condition cleared under the new value.
        assert!(alerts.set_rules(memory(1 << 40), 1_000).is_empty());
        assert_eq!(alerts.firing()["memory"], 1);
        let resolved = alerts.step(2_000, 2_000, vec![], true, false);
        assert_eq!(
            statuses(&resolved),
            [(AlertStatus::Resolved, "memory".into(), None)]
        );
    }

    #[test]
    fn traffic_window_takes_differences_over_the_window() {
        let mut window = TrafficWindow::default();
        let totals = |requests, errors| TrafficTotals {
            requests,
            errors,
            ..TrafficTotals::default()
        };
        window.push(0, totals(100, 0), 10_000);
        window.push(5_000, totals(200, 10), 10_000);
        let over = window.over(10_000).expect("samples");
        assert_eq!((over.requests, over.errors), (100, 10));
        window.push(10_000, totals(300, 10), 10_000);
        window.push(15_000, totals(400, 10), 10_000);
        let over = window.over(10_000).expect("samples");
        // From the sample at 5 s (the latest one at or before 15 s - 10 s).
        assert_eq!((over.requests, over.errors), (200, 0));
        assert!(window.samples.len() <= 3, "old samples are forgotten");
    }
}
