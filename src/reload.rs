//! Configuration reload (SIGHUP or `POST /cluster/config/reload`): tunables apply live, the rest waits
//! for a restart, and an invalid file changes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::Mutex;
use tracing::{error, info, warn};

use crate::config::ClusterConfig;
use crate::events::EventKind;
use crate::node::NodeContext;

/// Applies a new log filter (`RUST_LOG` syntax); provided by whoever installed the subscriber.
pub type LogControl = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The settings a reload can change while the node runs, shared with the parts that use them.
pub struct LiveSettings {
    /// The config as last applied.
    pub cluster: ArcSwap<ClusterConfig>,
    /// `<sessions ttl-seconds>` in ms.
    pub session_ttl_ms: Arc<AtomicU64>,
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
            cluster: ArcSwap::from_pointee(cluster),
            log,
            busy: Mutex::new(()),
        }
    }
}

/// What changed, in words, and which changes wait for a restart.
fn compare(old: &ClusterConfig, new: &ClusterConfig) -> (Vec<String>, Vec<&'static str>) {
    let mut applied = Vec::new();
    if old.balancer != new.balancer {
        applied.push(format!(
            "balancer {}/{}/retries {} -> {}/{}/retries {}",
            old.balancer.strategy.as_str(),
            old.balancer.key.as_str(),
            old.balancer.retries,
            new.balancer.strategy.as_str(),
            new.balancer.key.as_str(),
            new.balancer.retries
        ));
    }
    if old.sessions.ttl != new.sessions.ttl {
        applied.push(format!(
            "session ttl {}s -> {}s",
            old.sessions.ttl.as_secs(),
            new.sessions.ttl.as_secs()
        ));
    }
    if old.logging != new.logging {
        applied.push(format!(
            "log level {:?} -> {:?}",
            old.logging.level, new.logging.level
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
    {
        restart.push("<sessions cookie/max-bytes>");
    }
    if old.metrics != new.metrics {
        restart.push("<metrics>");
    }
    // The alert evaluator keeps the rules it started with.
    if old.alerts != new.alerts {
        restart.push("<alerts>");
    }
    (applied, restart)
}

/// Re-reads the config file and applies what can change live. On any error the running configuration
/// stays as it was. Returns a one-line summary.
pub async fn reload(context: &NodeContext) -> Result<String, String> {
    let live = context.live();
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
    let (_, restart) = compare(&context.config().cluster, &new);
    context.routing().apply(&new.balancer);
    live.session_ttl_ms
        .store(new.sessions.ttl.as_millis() as u64, Ordering::Relaxed);
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
    let name = context.config().me.name.clone();
    let event = context
        .events()
        .record(EventKind::ConfigReloaded, &name, summary.clone());
    info!(
        seq = event.seq,
        "configuration reloaded from {}: {summary}",
        path.display()
    );
    Ok(summary)
}
