//! The node's parts and the narrow handle each consumer gets of them. Pure wiring: every part
//! outside `node` (HTTP handlers, metrics, alerts, backups, reloads) names only what it reads, and
//! this is the one place that knows which part of the node that is.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::apps::upstream::Upstream;
use crate::config::NodeConfig;
use crate::events::EventLog;
use crate::http::HttpState;
use crate::http::guards::AdminAuth;
use crate::http::readiness::Readiness;
use crate::http::server::AcceptHealth;
use crate::http::status::StatusSource;
use crate::membership::Membership;
use crate::metrics::{Metrics, MetricsInputs};
use crate::ops::alerts::AlertInputs;
use crate::ops::backup::{BackupSource, PeriodicBackups};
use crate::ops::reload::{LiveSettings, Reloader};
use crate::raft::replica::Replica;
use crate::routing::Routing;

/// Everything one node is made of, once started.
pub(super) struct Parts {
    /// The node's configuration as started.
    pub config: NodeConfig,
    /// Gossip.
    pub membership: Arc<Membership>,
    /// The Raft replica of the session store.
    pub replica: Arc<Replica>,
    /// Request routing.
    pub routing: Arc<Routing>,
    /// The local application in upstream mode, if any.
    pub upstream: Option<Arc<Upstream>>,
    /// The event history.
    pub events: EventLog,
    /// Cancelled when the node stops serving HTTP.
    pub closing: CancellationToken,
    /// This node's own counters.
    pub metrics: Arc<Metrics>,
    /// The settings a reload changes.
    pub live: Arc<LiveSettings>,
    /// Whether the HTTP port can accept connections.
    pub accept: Arc<AcceptHealth>,
}

impl Parts {
    /// What readiness is judged from.
    pub fn readiness(&self) -> Readiness {
        Readiness {
            accept: self.accept.clone(),
            membership: self.membership.clone(),
            alone: self.config.seeds.is_empty(),
            replica: self.replica.clone(),
            upstream: self.upstream.clone(),
        }
    }

    /// What the status document is read from.
    pub fn status_source(&self) -> StatusSource {
        StatusSource {
            cluster_id: self.config.cluster.cluster_id.clone(),
            node: self.config.me.name.clone(),
            cookie_secure: self.config.cluster.sessions.cookie_secure,
            membership: self.membership.clone(),
            replica: self.replica.clone(),
            routing: self.routing.clone(),
            live: self.live.clone(),
        }
    }

    /// What a config reload reads and changes.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            node: self.config.me.name.clone(),
            live: self.live.clone(),
            started_with: Arc::new(self.config.cluster.clone()),
            routing: self.routing.clone(),
            replica: self.replica.clone(),
            events: self.events.clone(),
        }
    }

    /// What a backup is taken from.
    pub fn backup_source(&self) -> BackupSource {
        BackupSource {
            replica: self.replica.clone(),
            cluster_id: self.config.cluster.cluster_id.clone(),
            node: self.config.me.name.clone(),
            config_file: self.config.cluster.source.clone(),
        }
    }

    /// What the periodic backup writer reads.
    pub fn periodic_backups(&self) -> PeriodicBackups {
        PeriodicBackups {
            source: self.backup_source(),
            live: self.live.clone(),
            stats: self.metrics.backups().clone(),
        }
    }

    /// What alerting evaluates.
    pub fn alert_inputs(&self) -> AlertInputs {
        AlertInputs {
            node: self.config.me.name.clone(),
            cluster_id: self.config.cluster.cluster_id.clone(),
            external_url: format!("http://{}/console", self.config.me.http),
            membership: self.membership.clone(),
            replica: self.replica.clone(),
            http: self.metrics.http(),
            readiness: self.readiness(),
            live: self.live.clone(),
            stats: self.metrics.alerts().clone(),
        }
    }

    /// What a `/metrics` scrape reads.
    pub fn metrics_inputs(&self) -> MetricsInputs {
        MetricsInputs {
            node: self.config.me.name.clone(),
            metrics: self.metrics.clone(),
            membership: self.membership.clone(),
            events: self.events.clone(),
            replica: self.replica.clone(),
            routing: self.routing.clone(),
            live: self.live.clone(),
        }
    }

    /// What the handlers of the node's own HTTP routes read.
    pub fn http_state(&self) -> HttpState {
        HttpState {
            node: self.config.me.name.clone(),
            admin: AdminAuth::new(self.config.secrets.admin_token.clone()),
            membership: self.membership.clone(),
            replica: self.replica.clone(),
            routing: self.routing.clone(),
            events: self.events.clone(),
            closing: self.closing.clone(),
            readiness: self.readiness(),
            status: self.status_source(),
            reloader: self.reloader(),
            backup: self.backup_source(),
            session_max_bytes: self.config.cluster.sessions.max_bytes,
            metrics: Arc::new(self.metrics_inputs()),
        }
    }
}
