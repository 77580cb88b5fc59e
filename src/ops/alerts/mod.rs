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

pub mod rules;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::client::HttpClient;
use crate::clock::now_ms;
use crate::config::{AlertCondition, AlertRule, ClusterConfig, DEFAULT_ALERT_INTERVAL_MS};
use crate::http::readiness::Readiness;
use crate::membership::{MemberState, Membership};
use crate::metrics::http::HttpMetrics;
use crate::metrics::process::ProcessStats;
use crate::ops::reload::LiveSettings;
use crate::raft::replica::Replica;
use rules::{AlertKey, AlertStatus, Evaluator, Notification, Observation, TrafficWindow};
use webhook::{Delivery, deliver};

/// Notifications waiting for delivery; beyond this, new ones are dropped with a warning.
const QUEUE: usize = 256;

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

/// What alerting evaluates and where it reports: the membership view, Raft, this node's request
/// figures and readiness, the live `<alerts>`, and its own counters.
pub struct AlertInputs {
    /// This node's name.
    pub node: String,
    /// `id` of `<cluster>`, sent in every notification.
    pub cluster_id: String,
    /// The console's address, sent in every notification.
    pub external_url: String,
    /// The membership view (`member-down`, the notifier when there is no leader).
    pub membership: Arc<Membership>,
    /// Raft (`no-leader`, the notifier).
    pub replica: Arc<Replica>,
    /// This node's request figures (`error-rate`, `p99-latency`).
    pub http: &'static HttpMetrics,
    /// Whether this node has joined: evaluation starts then.
    pub readiness: Readiness,
    /// `<alerts>`, read at every evaluation.
    pub live: Arc<LiveSettings>,
    /// What alerting did, for `/metrics`.
    pub stats: Arc<AlertStats>,
}

/// The conditions of every rule that hold now, as this node sees them.
fn observe(
    context: &AlertInputs,
    rules: &[AlertRule],
    window: &TrafficWindow,
    me: &str,
) -> Vec<Observation> {
    let mut observed = Vec::new();
    let view = context.membership.view();
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
                if context.replica.status().leader.is_none() {
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
fn notifier(context: &AlertInputs) -> Option<String> {
    let raft = context.replica.status();
    if raft.is_leader() {
        return Some(context.node.clone());
    }
    if let Some(name) = raft.leader_name {
        return Some(name);
    }
    let view = context.membership.view();
    view.members
        .iter()
        .find(|member| member.state == MemberState::Up)
        .map(|member| member.name.clone())
}

/// Starts the evaluator and the delivery task on `tasks`; both stop on `shutdown`. They follow the live
/// configuration: without `<alerts>` they wait (checking once a second) until a reload adds it.
pub fn start(inputs: AlertInputs, tasks: &TaskTracker, shutdown: CancellationToken) {
    let (queue, pending) = mpsc::channel(QUEUE);
    let delivery = Delivery {
        client: HttpClient::shared().clone(),
        node: inputs.node.clone(),
        cluster_id: inputs.cluster_id.clone(),
        external_url: inputs.external_url.clone(),
        stats: inputs.stats.clone(),
    };
    tasks.spawn(deliver(delivery, pending, shutdown.clone()));
    tasks.spawn(evaluate(inputs, queue, shutdown));
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
    context: AlertInputs,
    queue: mpsc::Sender<Outgoing>,
    shutdown: CancellationToken,
) {
    let me = context.node.clone();
    let mut evaluator = Evaluator::new(Vec::new());
    // The configuration the evaluator's rules came from: resolutions of rules a reload removed go to
    // its webhooks.
    let mut rules_from = context.live.cluster.load_full();
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
        let config = context.live.cluster.load_full();
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
            context.stats.set_firing(evaluator.firing());
            if joined {
                info!(node = %me, rules = rules.len(), "alert rules changed by a config reload");
            }
        }
        rules_from = config.clone();
        if rules.is_empty() {
            continue;
        }
        if !joined {
            if context.readiness.check().is_err() {
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
            window.push(mono_ms, context.http.user_traffic(), keep_ms);
        }
        let observed = observe(&context, evaluator.rules(), &window, &me);
        let current = notifier(&context);
        let notifier_now = current.as_deref() == Some(me.as_str());
        // Take over what the previous notifier sent only if it is gone: it still owes the resolutions.
        let adopt = notifier_now
            && last_notifier.as_deref() != Some(me.as_str())
            && last_notifier.as_ref().is_some_and(|previous| {
                context
                    .membership
                    .view()
                    .member(previous)
                    .is_none_or(|member| member.state != MemberState::Up)
            });
        last_notifier = current;
        for notification in evaluator.step(mono_ms, now_ms(), observed, notifier_now, adopt) {
            enqueue(&queue, &me, notification, &config);
        }
        context.stats.set_firing(evaluator.firing());
    }
}
