//! Wiring: one node = membership + Raft replica + HTTP, started together and stopped in order.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, HeaderValue};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_sessions::{Expiry, SessionManagerLayer};
use tracing::{info, warn};

use crate::apps;
use crate::config::NodeConfig;
use crate::events::EventLog;
use crate::http;
use crate::http::status::{BalancerStatus, ClusterStatus, RaftStatus, SessionsStatus};
use crate::membership::{MemberState, Membership, MembershipError};
use crate::raft::replica::{Replica, ReplicaError};
use crate::routing::{Routing, route};
use crate::session::ClusterStore;
use crate::session::api::SessionApi;

/// How long in-flight requests get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Log filter when `RUST_LOG` is not set: our events at info; chitchat and openraft only when they
/// warn, and not openraft's core, which logs one error per read while any follower is down.
pub const DEFAULT_LOG_FILTER: &str =
    "info,chitchat=warn,openraft=warn,openraft::core::raft_core=off";
/// Header naming the node that served an application request.
pub const SERVED_BY: &str = "x-served-by";

/// Why a node stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Gossip could not start.
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// The Raft replica could not start.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// The peer RPC port could not be opened.
    #[error("cannot listen for peers on {addr}/tcp: {source}")]
    PeerListener {
        /// The `--cluster` address.
        addr: std::net::SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP listener failed.
    #[error("HTTP server on {addr}: {source}")]
    Http {
        /// The `--http` address.
        addr: std::net::SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// What request handlers see of the node.
#[derive(Clone)]
pub struct NodeContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    config: NodeConfig,
    membership: Arc<Membership>,
    replica: Arc<Replica>,
    routing: Arc<Routing>,
    events: EventLog,
}

impl NodeContext {
    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// The membership of this node.
    pub fn membership(&self) -> &Membership {
        &self.inner.membership
    }

    /// This node's Raft replica.
    pub fn replica(&self) -> &Arc<Replica> {
        &self.inner.replica
    }

    /// Request routing of this node.
    pub fn routing(&self) -> &Arc<Routing> {
        &self.inner.routing
    }

    /// The event history.
    pub fn events(&self) -> &EventLog {
        &self.inner.events
    }

    /// The status document as of now.
    pub fn status(&self) -> ClusterStatus {
        let config = self.config();
        let view = self.membership().view();
        let mut status = ClusterStatus::build(
            &config.cluster.cluster_id,
            &config.me.name,
            &view,
            self.membership().traffic(),
        );
        let metrics = self.replica().metrics();
        let raft_config = metrics.membership_config.membership();
        let name_of = |id: u64| {
            raft_config
                .get_node(&id)
                .map(|node| node.name.clone())
                .unwrap_or_else(|| format!("raft-{id}"))
        };
        let sorted_names = |ids: &[u64]| {
            let mut names: Vec<String> = ids.iter().map(|id| name_of(*id)).collect();
            names.sort();
            names
        };
        let voters: Vec<u64> = raft_config.voter_ids().collect();
        let learners: Vec<u64> = raft_config.learner_ids().collect();
        for row in &mut status.members {
            let raft_id = view.member(&row.name).and_then(|member| member.raft_id);
            row.raft_role = raft_id.and_then(|id| {
                if voters.contains(&id) {
                    Some("voter".to_string())
                } else if learners.contains(&id) {
                    Some("learner".to_string())
                } else {
                    None
                }
            });
        }
        let leader = metrics.current_leader.map(name_of);
        status.leader = leader.clone();
        let applied = metrics.last_applied.map(|log_id| log_id.index).unwrap_or(0);
        status.raft = Some(RaftStatus {
            term: metrics.current_term,
            leader,
            // A follower only knows the commit index through what it applied.
            commit_index: applied,
            applied_index: applied,
            voters: sorted_names(&voters),
            learners: sorted_names(&learners),
        });
        let routing = self.routing();
        status.balancer = Some(BalancerStatus {
            strategy: routing.strategy().as_str().to_string(),
            key: routing.key().as_str().to_string(),
            members: routing.members(),
            targets: routing.stats(),
        });
        status.sessions = Some(SessionsStatus {
            active: self.replica().reader().len() as u64,
            expired_total: self.replica().expired_total(),
        });
        status
    }

    /// `Ok` when this node has joined gossip, Raft has a leader, and this node applied its log.
    pub fn readiness(&self) -> Result<(), String> {
        let view = self.membership().view();
        let alone = self.config().seeds.is_empty();
        let others_up = view
            .members
            .iter()
            .any(|member| !member.is_self && member.state == MemberState::Up);
        if !alone && !others_up {
            return Err("no other member reachable through gossip yet".to_string());
        }
        self.replica().readiness()
    }
}

/// Prints what the node will run with: every configured node and its own addresses.
pub fn describe_startup(config: &NodeConfig) -> String {
    let mut text = config.cluster.describe();
    let role = match (config.founder, config.seeds.is_empty()) {
        (true, _) => "founder",
        (false, false) => "joining",
        (false, true) => "a cluster of one",
    };
    text.push_str(&format!(
        "\nthis node: {} ({role})  http {}  cluster {}  data {}",
        config.me.name,
        config.me.http,
        config.me.cluster,
        config.data_dir.display()
    ));
    if !config.seeds.is_empty() {
        let seeds: Vec<String> = config.seeds.iter().map(ToString::to_string).collect();
        text.push_str(&format!("\nseeds: {}", seeds.join(", ")));
    }
    text
}

/// The applications: session API, demo app (with the cluster session store), stamped with the node.
fn applications(context: &NodeContext) -> Router {
    let config = context.config();
    let sessions = &config.cluster.sessions;
    let store = ClusterStore::new(context.replica().clone(), sessions.max_bytes);
    let ttl = tower_sessions::cookie::time::Duration::milliseconds(
        i64::try_from(sessions.ttl.as_millis()).unwrap_or(i64::MAX),
    );
    let session_layer = SessionManagerLayer::new(store)
        .with_name(sessions.cookie.clone())
        .with_secure(false)
        .with_expiry(Expiry::OnInactivity(ttl));
    let api = SessionApi {
        replica: context.replica().clone(),
        default_ttl: sessions.ttl,
        max_bytes: sessions.max_bytes,
    };
    let served_by = HeaderValue::from_str(&config.me.name).unwrap_or(HeaderValue::from_static("?"));
    // Stamped only on what this node serves: a proxied response keeps the owner's stamp.
    let stamp = axum::middleware::map_response(move |mut response: axum::response::Response| {
        let served_by = served_by.clone();
        async move {
            response
                .headers_mut()
                .insert(HeaderName::from_static(SERVED_BY), served_by);
            response
        }
    });
    let application = apps::demo::router(config.me.name.clone())
        .layer(session_layer)
        .fallback(not_found)
        .layer(stamp.clone())
        .layer(axum::middleware::from_fn_with_state(
            context.routing().clone(),
            route,
        ));
    Router::new()
        .merge(crate::session::api::router(api).layer(stamp))
        .merge(application)
}

async fn not_found() -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    (
        axum::http::StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({ "error": "no such page" })),
    )
}

/// Runs a node until `shutdown` is cancelled, then leaves the cluster gracefully.
pub async fn run(
    config: NodeConfig,
    http_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let tasks = TaskTracker::new();
    let stop = CancellationToken::new();
    let events = EventLog::new();
    let peer_listener = TcpListener::bind(config.me.cluster)
        .await
        .map_err(|source| NodeError::PeerListener {
            addr: config.me.cluster,
            source,
        })?;
    let membership =
        Arc::new(Membership::start(&config, events.clone(), stop.clone(), &tasks).await?);
    let replica = match Replica::start(
        &config,
        membership.clone(),
        events.clone(),
        peer_listener,
        stop.clone(),
        &tasks,
    )
    .await
    {
        Ok(replica) => replica,
        Err(err) => {
            stop.cancel();
            membership.leave().await;
            tasks.close();
            tasks.wait().await;
            return Err(err.into());
        }
    };
    let http_addr = config.me.http;
    let name = config.me.name.clone();
    let routing = Arc::new(Routing::new(&config));
    tasks.spawn(routing.clone().maintain(membership.clone(), stop.clone()));
    let context = NodeContext {
        inner: Arc::new(ContextInner {
            config,
            membership,
            replica,
            routing,
            events,
        }),
    };
    let app = http::router(context.clone()).merge(applications(&context));
    let http_stop = CancellationToken::new();
    let mut server = {
        let http_stop = http_stop.clone();
        tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(http_listener, app)
                .with_graceful_shutdown(http_stop.cancelled_owned())
                .await
        })
    };
    info!(node = %name, "serving HTTP on {http_addr}");

    let served = tokio::select! {
        _ = shutdown.cancelled() => None,
        result = &mut server => Some(result),
    };
    if let Some(result) = served {
        // The server ended on its own: that is a failure, not a shutdown.
        stop.cancel();
        context.replica().shutdown().await;
        tasks.close();
        tasks.wait().await;
        let source = match result {
            Ok(Ok(())) => std::io::Error::other("HTTP server stopped unexpectedly"),
            Ok(Err(err)) => err,
            Err(join) => std::io::Error::other(join.to_string()),
        };
        return Err(NodeError::Http {
            addr: http_addr,
            source,
        });
    }

    info!(node = %name, "shutting down: leaving the cluster");
    // Say "leaving" first so peers stop routing here, then finish in-flight requests, then stop
    // Raft and gossip.
    context
        .membership()
        .set_status(proto::gossip::NodeStatus::Leaving)
        .await;
    http_stop.cancel();
    match tokio::time::timeout(DRAIN_TIMEOUT, &mut server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => warn!(node = %name, error = %err, "HTTP server ended with an error"),
        Ok(Err(join)) => warn!(node = %name, error = %join, "HTTP server task failed"),
        Err(_) => {
            warn!(node = %name, "in-flight requests not finished after {DRAIN_TIMEOUT:?}; closing them");
            server.abort();
        }
    }
    context.replica().shutdown().await;
    context.membership().leave().await;
    stop.cancel();
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(10), tasks.wait())
        .await
        .is_err()
    {
        warn!(node = %name, "background tasks did not stop within 10s");
    }
    info!(node = %name, "stopped");
    Ok(())
}
