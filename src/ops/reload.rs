//! Configuration reload (SIGHUP or `POST /cluster/config/reload`): tunables apply live, the rest waits
//! for a restart, and an invalid file changes nothing.
//!
//! Live: `<balancer>` (strategy, key, retries, proxy timeouts, through `Routing::apply`), the session
//! TTL, `<logging level>`, and the parts that read `LiveSettings::cluster` at each use: `<alerts>` (the
//! evaluator, every interval), `<backup>` (the periodic writer, every second) and `<http>` (the accept
//! loop, at each accept: connections already open keep the timeouts they were accepted with).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::Mutex;
use tracing::{error, info, warn};

use crate::config::{
    AlertCondition, AlertRule, AlertsConfig, BackupConfig, ClusterConfig, HttpConfig,
};
use crate::events::{EventKind, EventLog};
use crate::raft::replica::Replica;
use crate::routing::Routing;

/// Applies a new log filter (`RUST_LOG` syntax); provided by whoever installed the subscriber.
pub type LogControl = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The settings a reload can change while the node runs, shared with the parts that use them.
pub struct LiveSettings {
    /// The config as last applied.
    pub cluster: ArcSwap<ClusterConfig>,
    /// `<sessions ttl-seconds>` in ms.
    pub session_ttl_ms: Arc<AtomicU64>,
    /// `<sessions create-rate-per-ip>` and its buckets.
    pub create_rate: Arc<crate::session::quota::CreateRate>,
    /// Changes the log filter, when the process installed one that can be changed.
    pub log: Option<LogControl>,
    /// One reload at a time.
    busy: Mutex<()>,
}

impl LiveSettings {
    /// Settings as loaded at start.
    pub fn new(cluster: ClusterConfig, log: Option<LogControl>) -> LiveSettings {
        LiveSettings {
            session_ttl_ms: Arc::new(AtomicU64::new(cluster.sessions.ttl.as_millis() as u64)),
            create_rate: Arc::new(crate::session::quota::CreateRate::new(
                cluster.sessions.create_rate_per_ip,
            )),
            cluster: ArcSwap::from_pointee(cluster),
            log,
            busy: Mutex::new(()),
        }
    }
}

/// What changed, in words, and which changes wait for a restart.
fn compare(old: &ClusterConfig, new: &ClusterConfig) -> (Vec<String>, Vec<&'static str>) {
    let mut applied = Vec::new();
    let (was, is) = (&old.balancer, &new.balancer);
    if (was.strategy, was.key, was.retries) != (is.strategy, is.key, is.retries) {
        applied.push(format!(
            "balancer {}/{}/retries {} -> {}/{}/retries {}",
            was.strategy.as_str(),
            was.key.as_str(),
            was.retries,
            is.strategy.as_str(),
            is.key.as_str(),
            is.retries
        ));
    }
    let ms = |duration: std::time::Duration| duration.as_millis();
    applied.extend(changed(
        "proxy connect timeout",
        ms(was.connect_timeout),
        ms(is.connect_timeout),
        " ms",
    ));
    applied.extend(changed(
        "proxy response timeout",
        ms(was.response_timeout),
        ms(is.response_timeout),
        " ms",
    ));
    let (was, is) = (&old.sessions, &new.sessions);
    applied.extend(changed(
        "session ttl",
        was.ttl.as_secs(),
        is.ttl.as_secs(),
        "s",
    ));
    applied.extend(changed(
        "session max-active",
        was.max_active,
        is.max_active,
        "",
    ));
    applied.extend(changed(
        "session create-rate-per-ip",
        was.create_rate_per_ip,
        is.create_rate_per_ip,
        "/s",
    ));
    if old.logging != new.logging {
        applied.push(format!(
            "log level {:?} -> {:?}",
            old.logging.level, new.logging.level
        ));
    }
    applied.extend(compare_http(&old.http, &new.http));
    applied.extend(compare_alerts(old.alerts.as_ref(), new.alerts.as_ref()));
    if old.backup != new.backup {
        applied.push(format!(
            "periodic backups {} -> {}",
            describe_backup(old.backup.as_ref()),
            describe_backup(new.backup.as_ref())
        ));
    }
    let mut restart = Vec::new();
    if old.cluster_id != new.cluster_id {
        restart.push("cluster id");
    }
    if old.gossip != new.gossip {
        restart.push("<gossip>");
    }
    if old.raft != new.raft {
        restart.push("<raft>");
    }
    if old.nodes != new.nodes {
        restart.push("<nodes>");
    }
    if old.security != new.security {
        restart.push("<security>");
    }
    if old.app != new.app {
        restart.push("<app>");
    }
    if old.sessions.cookie != new.sessions.cookie
        || old.sessions.max_bytes != new.sessions.max_bytes
        || old.sessions.cookie_secure != new.sessions.cookie_secure
    {
        restart.push("<sessions cookie/max-bytes/cookie-secure>");
    }
    if old.metrics != new.metrics {
        restart.push("<metrics>");
    }
    if old.balancer.transport != new.balancer.transport {
        restart.push("<balancer transport>");
    }
    (applied, restart)
}

/// The `<http>` bounds that changed, one phrase each.
fn compare_http(old: &HttpConfig, new: &HttpConfig) -> Vec<String> {
    let ms = |duration: std::time::Duration| duration.as_millis();
    [
        changed(
            "http max connections",
            old.max_connections,
            new.max_connections,
            "",
        ),
        changed(
            "http header timeout",
            ms(old.header_timeout),
            ms(new.header_timeout),
            " ms",
        ),
        changed(
            "http idle timeout",
            ms(old.idle_timeout),
            ms(new.idle_timeout),
            " ms",
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// `"{what} {old}{unit} -> {new}{unit}"` when the value changed.
fn changed<T: PartialEq + std::fmt::Display>(
    what: &str,
    old: T,
    new: T,
    unit: &str,
) -> Option<String> {
    (old != new).then(|| format!("{what} {old}{unit} -> {new}{unit}"))
}

/// `every 3600s, keep 24, in /var/backups` or `off`.
fn describe_backup(backup: Option<&BackupConfig>) -> String {
    match backup {
        None => "off".to_string(),
        Some(backup) => format!(
            "every {}s, keep {}, in {}",
            backup.interval.as_secs(),
            backup.keep,
            backup.dir.display()
        ),
    }
}

/// A rule in a few words: `memory > 1048576 bytes for 0 ms`.
fn describe_rule(rule: &AlertRule) -> String {
    let condition = match &rule.condition {
        AlertCondition::MemberDown => "member-down".to_string(),
        AlertCondition::NoLeader => "no-leader".to_string(),
        AlertCondition::ErrorRate { ratio, window } => {
            format!("error-rate > {ratio} over {} ms", window.as_millis())
        }
        AlertCondition::P99Latency { threshold, window } => format!(
            "p99-latency > {} ms over {} ms",
            threshold.as_millis(),
            window.as_millis()
        ),
        AlertCondition::Memory { bytes } => format!("memory > {bytes} bytes"),
    };
    format!("{condition} for {} ms", rule.for_duration.as_millis())
}

/// The alerting changes, one phrase each (rules by name: added, removed, changed).
fn compare_alerts(old: Option<&AlertsConfig>, new: Option<&AlertsConfig>) -> Vec<String> {
    let rule_names = |alerts: &AlertsConfig| -> String {
        let names: Vec<&str> = alerts.rules.iter().map(|rule| rule.name.as_str()).collect();
        names.join(" ")
    };
    match (old, new) {
        (None, None) => Vec::new(),
        (None, Some(new)) => vec![format!(
            "alerts on ({} rules: {}; {} webhooks)",
            new.rules.len(),
            rule_names(new),
            new.webhooks.len()
        )],
        (Some(old), None) => vec![format!(
            "alerts off (was {} rules: {})",
            old.rules.len(),
            rule_names(old)
        )],
        (Some(old), Some(new)) => {
            let mut changes = Vec::new();
            if old.interval != new.interval {
                changes.push(format!(
                    "alert interval {} ms -> {} ms",
                    old.interval.as_millis(),
                    new.interval.as_millis()
                ));
            }
            if old.receiver != new.receiver {
                changes.push(format!(
                    "alert receiver {} -> {}",
                    old.receiver, new.receiver
                ));
            }
            for rule in &old.rules {
                match new.rules.iter().find(|r| r.name == rule.name) {
                    None => changes.push(format!("alert rule {} removed", rule.name)),
                    Some(now) if now != rule => changes.push(format!(
                        "alert rule {}: {} -> {}",
                        rule.name,
                        describe_rule(rule),
                        describe_rule(now)
                    )),
                    Some(_) => {}
                }
            }
            for rule in &new.rules {
                if !old.rules.iter().any(|r| r.name == rule.name) {
                    changes.push(format!(
                        "alert rule {} added ({})",
                        rule.name,
                        describe_rule(rule)
                    ));
                }
            }
            if old.webhooks != new.webhooks {
                changes.push(format!(
                    "alert webhooks {} -> {}",
                    old.webhooks.len(),
                    new.webhooks.len()
                ));
            }
            changes
        }
    }
}

/// What a reload reads and changes: the live settings and the parts that apply a tunable themselves.
#[derive(Clone)]
pub struct Reloader {
    /// This node's name.
    pub node: String,
    /// The settings a reload changes.
    pub live: Arc<LiveSettings>,
    /// The configuration the node started with: what needs a restart is judged against it.
    pub started_with: Arc<ClusterConfig>,
    /// Applies `<balancer>`.
    pub routing: Arc<Routing>,
    /// Applies `<sessions max-active>` (through its write limits).
    pub replica: Arc<Replica>,
    /// Where `config reloaded` is recorded.
    pub events: EventLog,
}

/// Re-reads the config file and applies what can change live. On any error the running configuration
/// stays as it was. Returns a one-line summary.
pub async fn reload(reloader: &Reloader) -> Result<String, String> {
    let live = &reloader.live;
    let _one_at_a_time = live.busy.lock().await;
    let old = live.cluster.load_full();
    let Some(path) = old.source.clone() else {
        return Err("this node runs without a config file: nothing to reload".to_string());
    };
    let new = match ClusterConfig::load(&path) {
        Ok(new) => new,
        Err(err) => {
            error!("config reload failed, keeping the running configuration: {err}");
            return Err(err.to_string());
        }
    };
    if let Some(level) = &new.logging.level
        && old.logging.level.as_ref() != Some(level)
    {
        match &live.log {
            Some(control) => {
                if let Err(problem) = control(level) {
                    error!(
                        "config reload failed, keeping the running configuration: log level {level:?}: {problem}"
                    );
                    return Err(format!(
                        "{}: <logging level={level:?}>: {problem}",
                        path.display()
                    ));
                }
            }
            None => {
                warn!("log level {level:?} not applied: this process cannot change its log filter")
            }
        }
    }
    let (applied, _) = compare(&old, &new);
    // What needs a restart is judged against what the node started with, so it is named on every
    // reload until the node restarts, not just the first.
    let (_, restart) = compare(&reloader.started_with, &new);
    reloader.routing.apply(&new.balancer);
    live.session_ttl_ms
        .store(new.sessions.ttl.as_millis() as u64, Ordering::Relaxed);
    live.create_rate
        .set_per_second(new.sessions.create_rate_per_ip);
    reloader
        .replica
        .limits()
        .set_max_active(new.sessions.max_active);
    live.cluster.store(Arc::new(new));
    let mut summary = if applied.is_empty() {
        "no tunable changed".to_string()
    } else {
        applied.join(", ")
    };
    if !restart.is_empty() {
        summary.push_str(&format!(
            "; needs a restart to change: {}",
            restart.join(", ")
        ));
        warn!(
            "config reload: changes to {} apply only after a restart",
            restart.join(", ")
        );
    }
    let event = reloader
        .events
        .record(EventKind::ConfigReloaded, &reloader.node, summary.clone());
    info!(
        seq = event.seq,
        "configuration reloaded from {}: {summary}",
        path.display()
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(elements: &str) -> ClusterConfig {
        let text = format!(
            "<cluster id=\"demo\">\n  {elements}\n  <nodes>\n    \
             <node name=\"node-1\" http=\"127.0.0.1:8081\" cluster=\"127.0.0.1:7001\"/>\n  \
             </nodes>\n</cluster>\n"
        );
        ClusterConfig::parse(&text, Path::new("/etc/mt/cluster.xml")).expect("valid")
    }

    #[test]
    fn alerts_timeouts_and_backups_are_live_and_described() {
        let before = config(
            r#"<balancer retries="2"/>
            <alerts><rule name="mem" kind="memory" threshold-bytes="1048576"/><rule kind="no-leader"/></alerts>"#,
        );
        let after = config(
            r#"<balancer retries="2" connect-timeout-ms="250" response-timeout-ms="5000"/>
            <alerts interval-ms="200"><rule name="mem" kind="memory" threshold-bytes="2097152" for-ms="10"/>
              <rule kind="member-down"/><webhook url="http://127.0.0.1:9/hook"/></alerts>
            <backup interval-seconds="60" keep="3"/>"#,
        );
        let (applied, restart) = compare(&before, &after);
        assert!(restart.is_empty(), "{restart:?}");
        assert_eq!(
            applied,
            [
                "proxy connect timeout 1000 ms -> 250 ms",
                "proxy response timeout 30000 ms -> 5000 ms",
                "alert interval 1000 ms -> 200 ms",
                "alert rule mem: memory > 1048576 bytes for 0 ms -> memory > 2097152 bytes for 10 ms",
                "alert rule no-leader removed",
                "alert rule member-down added (member-down for 0 ms)",
                "alert webhooks 0 -> 1",
                "periodic backups off -> every 60s, keep 3, in /etc/mt/backups",
            ]
        );
        let (applied, _) = compare(&after, &config(""));
        assert_eq!(
            applied,
            [
                "proxy connect timeout 250 ms -> 1000 ms",
                "proxy response timeout 5000 ms -> 30000 ms",
                "alerts off (was 2 rules: mem member-down)",
                "periodic backups every 60s, keep 3, in /etc/mt/backups -> off",
            ]
        );
        let (applied, _) = compare(&config(""), &before);
        assert_eq!(applied, ["alerts on (2 rules: mem no-leader; 0 webhooks)"]);
        let (applied, restart) = compare(&before, &before);
        assert!(applied.is_empty() && restart.is_empty());
    }

    #[test]
    fn http_bounds_are_live_and_described() {
        let (applied, restart) = compare(
            &config(""),
            &config(
                r#"<http max-connections="50" header-timeout-ms="500" idle-timeout-ms="2000"/>"#,
            ),
        );
        assert!(restart.is_empty(), "{restart:?}");
        assert_eq!(
            applied,
            [
                "http max connections 10000 -> 50",
                "http header timeout 10000 ms -> 500 ms",
                "http idle timeout 60000 ms -> 2000 ms",
            ]
        );
    }

    #[test]
    fn restart_only_changes_are_named() {
        let (applied, restart) = compare(
            &config(r#"<metrics enabled="true"/>"#),
            &config(
                r#"<gossip interval-ms="200"/><metrics enabled="false"/><balancer transport="http"/>"#,
            ),
        );
        assert!(applied.is_empty(), "{applied:?}");
        assert_eq!(restart, ["<gossip>", "<metrics>", "<balancer transport>"]);
    }
}
