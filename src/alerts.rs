//! In-node alerting: rules from `<alerts>` checked every interval, notifications POSTed to webhooks
//! with an Alertmanager-compatible body.
//!
//! Every node evaluates every rule on its own view (so any node can take over), but only one node, the
//! **notifier**, sends: the Raft leader, or while there is none the first `up` member by name. An alert
//! fires once when its condition has held for `for-ms` and resolves once when it clears. The node that
//! sent an alert's firing notification also sends its resolution, even if it stopped being the notifier
//! meanwhile; a node that becomes the notifier because the previous one is gone adopts the alerts still
//! firing (sends them again, so a receiver may see a repeat, never a lost alert, across such a handover).
//!
//! Notifications queue into a delivery task; a slow or dead webhook never holds up evaluation or
//! the node. Each POST is tried a few times with backoff, then dropped with a warning.
//!
//! The rules, interval, receiver and webhooks are read from the live configuration at every
//! evaluation, so a reload changes them at once (and `<alerts>` can be added to or removed from a
//! running node). Alerts are keyed by rule name: a rule whose threshold or `for-ms` changed keeps its
//! alerts, judged against the new values from the next evaluation on (one that no longer holds resolves
//! then). A rule that is removed, or whose kind changed, resolves its firing alerts at once, to the
//! webhooks that were configured when they fired.

use std::collections::{BTreeMap, VecDeque};
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::client::{ExchangeError, HttpClient};
use crate::clock::{now_ms, rfc3339};
use crate::config::{AlertCondition, AlertRule, ClusterConfig, DEFAULT_ALERT_INTERVAL_MS};
use crate::membership::MemberState;
use crate::metrics::http::TrafficTotals;
use crate::metrics::process::ProcessStats;
use crate::node::NodeContext;

/// Notifications waiting for delivery; beyond this, new ones are dropped with a warning.
const QUEUE: usize = 256;
/// Attempts per webhook and notification.
const ATTEMPTS: u32 = 4;
/// Wait before the second attempt; doubled before each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Time one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(3);

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

/// What this node's alerting did, for `/metrics`.
#[derive(Debug, Default)]
pub struct AlertStats {
    firing: Mutex<BTreeMap<String, u64>>,
    /// `[firing, resolved] × [sent, failed]`.
    notifications: [[AtomicU64; 2]; 2],
}

impl AlertStats {
    /// Alerts firing now as this node evaluates them, by rule name (every configured rule listed).
    pub fn firing(&self) -> Vec<(String, u64)> {
        let firing = self.firing.lock().unwrap_or_else(PoisonError::into_inner);
        firing.iter().map(|(name, n)| (name.clone(), *n)).collect()
    }

    /// `(status, outcome, count)` of the notifications this node delivered or gave up on.
    pub fn notifications(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut rows = Vec::new();
        for (status, row) in [AlertStatus::Firing, AlertStatus::Resolved]
            .iter()
            .zip(&self.notifications)
        {
            for (outcome, count) in ["sent", "failed"].iter().zip(row) {
                rows.push((status.as_str(), *outcome, count.load(Ordering::Relaxed)));
            }
        }
        rows
    }

    fn count(&self, status: AlertStatus, sent: bool) {
        let row = match status {
            AlertStatus::Firing => 0,
            AlertStatus::Resolved => 1,
        };
        self.notifications[row][usize::from(!sent)].fetch_add(1, Ordering::Relaxed);
    }

    fn set_firing(&self, firing: BTreeMap<String, u64>) {
        *self.firing.lock().unwrap_or_else(PoisonError::into_inner) = firing;
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
struct TrafficWindow {
    samples: VecDeque<(u64, TrafficTotals)>,
}

impl TrafficWindow {
    /// Adds the totals at `mono_ms`, forgetting samples older than `keep_ms` (one older sample is
    /// kept as the window's start).
    fn push(&mut self, mono_ms: u64, totals: TrafficTotals, keep_ms: u64) {
        self.samples.push_back((mono_ms, totals));
        let horizon = mono_ms.saturating_sub(keep_ms);
        while self.samples.len() > 2 && self.samples[1].0 <= horizon {
            self.samples.pop_front();
        }
    }

    /// What happened over the last `window_ms` (or since the first sample, if younger).
    fn over(&self, window_ms: u64) -> Option<TrafficTotals> {
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

/// The conditions of every rule that hold now, as this node sees them.
fn observe(
    context: &NodeContext,
    rules: &[AlertRule],
    window: &TrafficWindow,
    me: &str,
) -> Vec<Observation> {
    let mut observed = Vec::new();
    let view = context.membership().view();
    for rule in rules {
        let key = |member: Option<String>| AlertKey {
            rule: rule.name.clone(),
            member,
        };
        match &rule.condition {
            AlertCondition::MemberDown => {
                for member in &view.members {
                    if member.state == MemberState::Down && !member.is_self {
                        observed.push(Observation {
                            key: key(Some(member.name.clone())),
                            summary: format!("member {} is down (seen from {me})", member.name),
                        });
                    }
                }
            }
            AlertCondition::NoLeader => {
                if context.replica().status().leader.is_none() {
                    observed.push(Observation {
                        key: key(None),
                        summary: format!("no Raft leader (seen from {me})"),
                    });
                }
            }
            AlertCondition::ErrorRate {
                ratio,
                window: span,
            } => {
                if let Some(totals) = window.over(span.as_millis() as u64)
                    && totals.requests > 0
                {
                    let seen = totals.errors as f64 / totals.requests as f64;
                    if seen > *ratio {
                        observed.push(Observation {
                            key: key(None),
                            summary: format!(
                                "{:.1}% of requests answered 5xx over {}s on {me} (threshold {:.1}%)",
                                seen * 100.0,
                                span.as_secs(),
                                ratio * 100.0
                            ),
                        });
                    }
                }
            }
            AlertCondition::P99Latency {
                threshold,
                window: span,
            } => {
                if let Some(p99) = window
                    .over(span.as_millis() as u64)
                    .and_then(|totals| totals.latency.quantile(0.99))
                    && p99 > threshold.as_secs_f64()
                {
                    observed.push(Observation {
                        key: key(None),
                        summary: format!(
                            "p99 request latency {:.0} ms over {}s on {me} (threshold {} ms)",
                            p99 * 1000.0,
                            span.as_secs(),
                            threshold.as_millis()
                        ),
                    });
                }
            }
            AlertCondition::Memory { bytes } => {
                if let Some(resident) = ProcessStats::read().resident_bytes
                    && resident > *bytes
                {
                    observed.push(Observation {
                        key: key(None),
                        summary: format!(
                            "{me} uses {} MiB resident memory (threshold {} MiB)",
                            resident >> 20,
                            bytes >> 20
                        ),
                    });
                }
            }
        }
    }
    observed
}

/// Who sends notifications as this node sees it: the Raft leader, else the first `up` member by name.
fn notifier(context: &NodeContext) -> Option<String> {
    let raft = context.replica().status();
    if raft.is_leader() {
        return Some(context.config().me.name.clone());
    }
    if let Some(name) = raft.leader_name {
        return Some(name);
    }
    let view = context.membership().view();
    view.members
        .iter()
        .find(|member| member.state == MemberState::Up)
        .map(|member| member.name.clone())
}

/// Starts the evaluator and the delivery task on `tasks`; both stop on `shutdown`. They follow the live
/// configuration: without `<alerts>` they wait (checking once a second) until a reload adds it.
pub fn start(context: NodeContext, tasks: &TaskTracker, shutdown: CancellationToken) {
    let (queue, pending) = mpsc::channel(QUEUE);
    let delivery = Delivery {
        client: HttpClient::shared().clone(),
        cluster_id: context.config().cluster.cluster_id.clone(),
        external_url: format!("http://{}/console", context.config().me.http),
    };
    tasks.spawn(deliver(
        delivery,
        pending,
        context.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(evaluate(context, queue, shutdown));
}

/// A notification, with the configuration whose receiver and webhooks it goes to.
struct Outgoing {
    notification: Notification,
    config: Arc<ClusterConfig>,
}

/// The evaluation interval of `config` (the default while it has no `<alerts>`, to notice one added).
fn period(config: &ClusterConfig) -> Duration {
    config
        .alerts
        .as_ref()
        .map_or(Duration::from_millis(DEFAULT_ALERT_INTERVAL_MS), |alerts| {
            alerts.interval
        })
}

fn enqueue(
    queue: &mpsc::Sender<Outgoing>,
    me: &str,
    notification: Notification,
    config: &Arc<ClusterConfig>,
) {
    info!(
        node = %me,
        alert = %notification.rule_name,
        member = notification.key.member.as_deref().unwrap_or(""),
        "alert {}: {}",
        notification.status.as_str(),
        notification.summary
    );
    let outgoing = Outgoing {
        notification,
        config: config.clone(),
    };
    if queue.try_send(outgoing).is_err() {
        warn!(node = %me, "alert notification queue full; dropping a notification");
    }
}

async fn evaluate(
    context: NodeContext,
    queue: mpsc::Sender<Outgoing>,
    shutdown: CancellationToken,
) {
    let me = context.config().me.name.clone();
    let mut evaluator = Evaluator::new(Vec::new());
    // The configuration the evaluator's rules came from: resolutions of rules a reload removed go to
    // its webhooks.
    let mut rules_from = context.live().cluster.load_full();
    let mut window = TrafficWindow::default();
    let mut every = period(&rules_from);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let epoch = Instant::now();
    // A node that just started sees founders it has not heard from yet as down: evaluate only once it
    // has joined (readiness), after which its view is worth alerting on.
    let mut joined = false;
    let mut last_notifier: Option<String> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let config = context.live().cluster.load_full();
        if period(&config) != every {
            every = period(&config);
            ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let rules = config
            .alerts
            .as_ref()
            .map_or(&[][..], |alerts| alerts.rules.as_slice());
        if evaluator.rules() != rules {
            for notification in evaluator.set_rules(rules.to_vec(), now_ms()) {
                enqueue(&queue, &me, notification, &rules_from);
            }
            context.metrics().alerts().set_firing(evaluator.firing());
            if joined {
                info!(node = %me, rules = rules.len(), "alert rules changed by a config reload");
            }
        }
        rules_from = config.clone();
        if rules.is_empty() {
            continue;
        }
        if !joined {
            if context.readiness().is_err() {
                continue;
            }
            joined = true;
            info!(node = %me, rules = rules.len(), "alert rules are evaluated from now on");
        }
        let mono_ms = epoch.elapsed().as_millis() as u64;
        let keep_ms = rules
            .iter()
            .filter_map(|rule| match rule.condition {
                AlertCondition::ErrorRate { window, .. }
                | AlertCondition::P99Latency { window, .. } => Some(window.as_millis() as u64),
                _ => None,
            })
            .max();
        if let Some(keep_ms) = keep_ms {
            window.push(mono_ms, context.metrics().http().user_traffic(), keep_ms);
        }
        let observed = observe(&context, evaluator.rules(), &window, &me);
        let current = notifier(&context);
        let notifier_now = current.as_deref() == Some(me.as_str());
        // Take over what the previous notifier sent only if it is gone: it still owes the resolutions.
        let adopt = notifier_now
            && last_notifier.as_deref() != Some(me.as_str())
            && last_notifier.as_ref().is_some_and(|previous| {
                context
                    .membership()
                    .view()
                    .member(previous)
                    .is_none_or(|member| member.state != MemberState::Up)
            });
        last_notifier = current;
        for notification in evaluator.step(mono_ms, now_ms(), observed, notifier_now, adopt) {
            enqueue(&queue, &me, notification, &config);
        }
        context.metrics().alerts().set_firing(evaluator.firing());
    }
}

struct Delivery {
    client: HttpClient,
    cluster_id: String,
    external_url: String,
}

async fn deliver(
    delivery: Delivery,
    mut pending: mpsc::Receiver<Outgoing>,
    context: NodeContext,
    shutdown: CancellationToken,
) {
    let me = context.config().me.name.clone();
    loop {
        let Outgoing {
            notification,
            config,
        } = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = pending.recv() => match next {
                Some(outgoing) => outgoing,
                None => return,
            },
        };
        let Some(alerts) = config.alerts.as_ref() else {
            continue;
        };
        let body = webhook_body(
            &notification,
            &alerts.receiver,
            &delivery.cluster_id,
            &me,
            &delivery.external_url,
        );
        let body = Bytes::from(body.to_string());
        for url in &alerts.webhooks {
            let sent = tokio::select! {
                _ = shutdown.cancelled() => return,
                sent = post_with_retries(&delivery.client, url, body.clone()) => sent,
            };
            match sent {
                Ok(()) => debug!(node = %me, webhook = %url, "alert notification delivered"),
                Err(ref why) => warn!(
                    node = %me,
                    webhook = %url,
                    alert = %notification.rule_name,
                    "alert notification dropped after {ATTEMPTS} attempts: {why}"
                ),
            }
            context
                .metrics()
                .alerts()
                .count(notification.status, sent.is_ok());
        }
    }
}

async fn post_with_retries(client: &HttpClient, url: &str, body: Bytes) -> Result<(), String> {
    let mut backoff = FIRST_BACKOFF;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match post_json(client, url, body.clone()).await {
            Ok(()) => return Ok(()),
            Err(why) => last = why,
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    Err(last)
}

async fn post_json(client: &HttpClient, url: &str, body: Bytes) -> Result<(), String> {
    let request = hyper::Request::post(url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "micro-tomcat-alerts")
        .body(Full::new(body))
        .map_err(|err| format!("bad request: {err}"))?;
    // The answer's status decides; a body that breaks off does not undo a 2xx.
    let status = match client.exchange(request, POST_TIMEOUT).await {
        Ok((status, _)) | Err(ExchangeError::Body { status, .. }) => status,
        Err(ExchangeError::Send(err)) => return Err(format!("cannot reach: {err}")),
        Err(ExchangeError::Timeout(_)) => return Err(format!("no answer within {POST_TIMEOUT:?}")),
    };
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

/// The Alertmanager webhook body (version 4) for one notification.
pub fn webhook_body(
    notification: &Notification,
    receiver: &str,
    cluster_id: &str,
    reported_by: &str,
    external_url: &str,
) -> Value {
    let mut labels = BTreeMap::new();
    labels.insert("alertname", notification.rule_name.clone());
    labels.insert("cluster", cluster_id.to_string());
    labels.insert("severity", notification.severity.to_string());
    if let Some(member) = &notification.key.member {
        labels.insert("member", member.clone());
    }
    let mut group_labels = BTreeMap::new();
    group_labels.insert("alertname", notification.rule_name.clone());
    let annotations = json!({
        "summary": notification.summary,
        "reported_by": reported_by,
    });
    let status = notification.status.as_str();
    let fingerprint = format!("{:016x}", fingerprint(&labels));
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{}\"}}", notification.rule_name),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": external_url,
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": rfc3339(notification.starts_at_ms),
            // Alertmanager's zero time means "not ended".
            "endsAt": notification.ends_at_ms.map_or_else(|| "0001-01-01T00:00:00Z".to_string(), rfc3339),
            "generatorURL": external_url,
            "fingerprint": fingerprint,
        }],
    })
}

/// A stable hash of the label set (FNV-1a), as Alertmanager's fingerprint identifies an alert.
fn fingerprint(labels: &BTreeMap<&str, String>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, value) in labels {
        for byte in name
            .bytes()
            .chain([0xff])
            .chain(value.bytes())
            .chain([0xff])
        {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn body_is_alertmanager_shaped() {
        let notification = Notification {
            status: AlertStatus::Resolved,
            key: AlertKey {
                rule: "member-down".into(),
                member: Some("node-2".into()),
            },
            rule_name: "member-down".into(),
            severity: "critical",
            summary: "member node-2 is down".into(),
            starts_at_ms: 1_767_225_600_123,
            ends_at_ms: Some(1_767_225_660_000),
        };
        let body = webhook_body(&notification, "ops", "demo", "node-1", "http://h/console");
        assert_eq!(body["version"], "4");
        assert_eq!(body["status"], "resolved");
        assert_eq!(body["receiver"], "ops");
        assert_eq!(body["groupKey"], "{}:{alertname=\"member-down\"}");
        let alert = &body["alerts"][0];
        assert_eq!(alert["status"], "resolved");
        assert_eq!(alert["labels"]["alertname"], "member-down");
        assert_eq!(alert["labels"]["member"], "node-2");
        assert_eq!(alert["labels"]["cluster"], "demo");
        assert_eq!(alert["annotations"]["summary"], "member node-2 is down");
        assert_eq!(alert["startsAt"], "2026-01-01T00:00:00.123Z");
        assert_eq!(alert["endsAt"], "2026-01-01T00:01:00.000Z");
        assert_eq!(alert["fingerprint"].as_str().map(str::len), Some(16));
        let firing = Notification {
            status: AlertStatus::Firing,
            ends_at_ms: None,
            ..notification
        };
        let body = webhook_body(&firing, "ops", "demo", "node-1", "http://h/console");
        assert_eq!(body["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    }

    #[tokio::test]
    async fn a_webhook_that_fails_at_first_gets_the_notification_on_a_retry() {
        use axum::http::StatusCode;
        let calls = std::sync::Arc::new(AtomicU64::new(0));
        let counted = calls.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                let calls = counted.clone();
                async move {
                    match calls.fetch_add(1, Ordering::SeqCst) {
                        0 | 1 => StatusCode::SERVICE_UNAVAILABLE,
                        _ => StatusCode::OK,
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let client = HttpClient::new();
        post_with_retries(&client, &url, Bytes::from_static(b"{}"))
            .await
            .expect("delivered on the third attempt");
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        // Nobody listens: every attempt fails, and the error says why.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let gone = format!("http://{}/hook", closed.local_addr().expect("addr"));
        drop(closed);
        let err = post_with_retries(&client, &gone, Bytes::from_static(b"{}"))
            .await
            .expect_err("nobody listens");
        assert!(err.contains("cannot reach"), "{err}");
    }
}
