//! Wiring: one node = membership + HTTP, started together and stopped in order.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::NodeConfig;
use crate::events::EventLog;
use crate::http;
use crate::http::status::ClusterStatus;
use crate::membership::{MemberState, Membership, MembershipError};

/// How long in-flight requests get to finish at shutdown.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a node stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Gossip could not start.
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// The HTTP listener could not be opened or failed.
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
    membership: Membership,
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

    /// The event history.
    pub fn events(&self) -> &EventLog {
        &self.inner.events
    }

    /// The status document as of now.
    pub fn status(&self) -> ClusterStatus {
        let config = self.config();
        ClusterStatus::build(
            &config.cluster.cluster_id,
            &config.me.name,
            &self.membership().view(),
            self.membership().traffic(),
        )
    }

    /// `Ok` when this node has joined: it sees another member up, or it is a cluster of one.
    pub fn readiness(&self) -> Result<(), String> {
        let view = self.membership().view();
        let alone = self.config().seeds.is_empty();
        let others_up = view
            .members
            .iter()
            .any(|member| !member.is_self && member.state == MemberState::Up);
        if alone || others_up {
            Ok(())
        } else {
            Err("no other member reachable through gossip yet".to_string())
        }
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

/// Runs a node until `shutdown` is cancelled, then leaves the cluster gracefully.
pub async fn run(
    config: NodeConfig,
    http_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let tasks = TaskTracker::new();
    let stop = CancellationToken::new();
    let events = EventLog::new();
    let membership = Membership::start(&config, events.clone(), stop.clone(), &tasks).await?;
    let http_addr = config.me.http;
    let name = config.me.name.clone();
    let context = NodeContext {
        inner: Arc::new(ContextInner {
            config,
            membership,
            events,
        }),
    };
    let app = http::router(context.clone());
    let http_stop = CancellationToken::new();
    let mut server = {
        let http_stop = http_stop.clone();
        tokio::spawn(async move {
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
    // Say "leaving" first so peers stop routing here, then finish in-flight requests, then stop gossip.
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
    context.membership().leave().await;
    stop.cancel();
    tasks.close();
    if tokio::time::timeout(std::time::Duration::from_secs(10), tasks.wait())
        .await
        .is_err()
    {
        warn!(node = %name, "background tasks did not stop within 10s");
    }
    info!(node = %name, "stopped");
    Ok(())
}
