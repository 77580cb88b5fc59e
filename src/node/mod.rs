//! Wiring: one node = membership + Raft replica + HTTP, started together and stopped in order.
//!
//! `context` hands each part the narrow handle it reads, `apps` assembles the applications, and
//! `load` publishes this node's load and accept health in gossip; this file starts and stops them.

mod apps;
mod context;
mod load;
mod sockets;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::apps::upstream::Upstream;
use crate::config::NodeConfig;
use crate::events::EventLog;
use crate::http;
use crate::http::server::AcceptHealth;
use crate::membership::{Membership, MembershipError};
use crate::metrics::Metrics;
use crate::metrics::http::Measured;
use crate::ops::reload::Reloader;
use crate::peer::server::Dispatch;
use crate::proxy::hop::HopServer;
use crate::raft::replica::{Replica, ReplicaError};
use crate::routing::Routing;
pub use apps::SERVED_BY;
use context::Parts;
pub use sockets::{PeerSockets, PeerSocketsError};

/// How long in-flight requests get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a node stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Gossip could not start.
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// The Raft replica could not start.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// The peer port (TCP listener and gossip socket) could not be opened.
    #[error("cannot open the peer port: {0}")]
    PeerSockets(#[from] PeerSocketsError),
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
    text.push('\n');
    text.push_str(&config.secrets.describe());
    text
}

/// Reloads the config file on every SIGHUP until `stop`.
async fn reload_on_sighup(reloader: Reloader, stop: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            warn!("cannot listen for SIGHUP; reload through POST /cluster/config/reload");
            return;
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = hangup.recv() => {
                    info!("SIGHUP: reloading the configuration");
                    let _ = crate::ops::reload::reload(&reloader).await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    stop.cancelled().await;
}

/// Runs a node serving the demo app until `shutdown` is cancelled, then leaves the cluster gracefully.
pub async fn run(
    config: NodeConfig,
    http_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let demo = crate::apps::demo::router(config.me.name.clone());
    Node::builder(config)
        .app(demo)
        .listener(http_listener)
        .run(shutdown)
        .await
}

/// A cluster node: membership, the replicated session store, routing, and the applications it serves.
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use micro_tomcat::config::{NodeConfig, RunOverrides};
/// use micro_tomcat::node::Node;
/// use tokio_util::sync::CancellationToken;
/// use tower_sessions::Session;
///
/// async fn visits(session: Session) -> String {
///     let n: u64 = session.get("visits").await.ok().flatten().unwrap_or(0) + 1;
///     let _ = session.insert("visits", n).await;
///     format!("visit {n}")
/// }
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let config = NodeConfig::resolve(&RunOverrides {
///     config: Some("cluster-config.xml".into()),
///     name: "node-1".into(),
///     ..Default::default()
/// })?;
/// let app = Router::new().route("/visits", get(visits));
/// Node::builder(config).app(app).run(CancellationToken::new()).await?;
/// # Ok(())
/// # }
/// ```
pub struct Node;

impl Node {
    /// Starts describing a node that runs with `config`.
    pub fn builder(config: NodeConfig) -> NodeBuilder {
        NodeBuilder {
            config,
            apps: Vec::new(),
            listener: None,
            peer: None,
            log: None,
        }
    }
}

/// Collects a node's applications; [`NodeBuilder::run`] starts it.
pub struct NodeBuilder {
    config: NodeConfig,
    apps: Vec<Router>,
    listener: Option<TcpListener>,
    peer: Option<PeerSockets>,
    log: Option<crate::ops::reload::LogControl>,
}

impl NodeBuilder {
    /// Adds an application. Its routes get routing, failover, `X-Served-By` and the cluster's
    /// `tower_sessions::Session`; it must not set a fallback (static files and the upstream use it).
    pub fn app(mut self, router: Router) -> NodeBuilder {
        self.apps.push(router);
        self
    }

    /// Serves HTTP on this listener instead of binding `--http`; the node advertises the listener's
    /// address (so a listener on port 0 works).
    pub fn listener(mut self, listener: TcpListener) -> NodeBuilder {
        self.listener = Some(listener);
        self
    }

    /// Serves the peer port (peer RPC and gossip) on these sockets instead of binding `--cluster`;
    /// the node advertises their address (so [`PeerSockets::bind`] with port 0 works).
    pub fn peer_sockets(mut self, sockets: PeerSockets) -> NodeBuilder {
        self.peer = Some(sockets);
        self
    }

    /// Lets a config reload change the log filter (`<logging level>`) through `control`.
    pub fn log_control(mut self, control: crate::ops::reload::LogControl) -> NodeBuilder {
        self.log = Some(control);
        self
    }

    /// Runs the node until `shutdown` is cancelled, then leaves the cluster gracefully. SIGHUP reloads
    /// the config file.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), NodeError> {
        let NodeBuilder {
            mut config,
            apps,
            listener,
            peer,
            log,
        } = self;
        let http_listener = match listener {
            Some(listener) => listener,
            None => TcpListener::bind(config.me.http)
                .await
                .map_err(|source| NodeError::Http {
                    addr: config.me.http,
                    source,
                })?,
        };
        let peer = match peer {
            Some(peer) => peer,
            None => PeerSockets::bind(config.me.cluster).await?,
        };
        // What the sockets are bound to is what the node is: `--http 127.0.0.1:0` becomes a real port.
        if let Ok(addr) = http_listener.local_addr() {
            config.me.http = addr;
        }
        config.me.cluster = peer.local_addr();
        let me = config.me.clone();
        if let Some(listed) = config.cluster.nodes.iter_mut().find(|n| n.name == me.name) {
            *listed = me;
        }
        serve(config, apps, http_listener, peer, log, shutdown).await
    }
}

/// Serves the peer port on `listener` until `stop`: Raft RPCs, forwarded writes and read-index
/// requests are answered by `replica`, hop channels by `hop`.
fn serve_peers(
    config: &NodeConfig,
    listener: TcpListener,
    replica: &Arc<Replica>,
    hop: &Arc<HopServer>,
    stop: CancellationToken,
    tasks: &TaskTracker,
) {
    let key = config
        .secrets
        .gossip_key
        .as_ref()
        .map(crate::crypto::PeerKey::new);
    if key.is_none() {
        warn!(
            node = %config.me.name,
            "no cluster key: the peer port {} takes Raft traffic and session writes from anyone \
             who can reach it; set MICRO_TOMCAT_GOSSIP_KEY or <security gossip-key-file> \
             (make one with `openssl rand -base64 32`) unless the network is trusted",
            config.me.cluster
        );
    }
    let hello = proto::raft::Hello {
        wire_version: proto::raft::PEER_WIRE_VERSION,
        cluster_id: config.cluster.cluster_id.clone(),
        from_name: config.me.name.clone(),
    };
    let dispatch = Dispatch::new(replica.clone()).hop(hop.clone());
    tasks.spawn(crate::peer::server::serve(
        listener,
        dispatch,
        hello,
        key,
        stop,
        tasks.clone(),
    ));
}

async fn serve(
    config: NodeConfig,
    apps: Vec<Router>,
    http_listener: TcpListener,
    peer: PeerSockets,
    log: Option<crate::ops::reload::LogControl>,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let tasks = TaskTracker::new();
    let stop = CancellationToken::new();
    let events = EventLog::new();
    let PeerSockets {
        listener: peer_listener,
        gossip,
        ..
    } = peer;
    let membership =
        Arc::new(Membership::start(&config, gossip, events.clone(), stop.clone(), &tasks).await?);
    let replica = match Replica::start(
        &config,
        membership.clone(),
        events.clone(),
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
    // One listener on the peer port: Raft RPCs go to the replica, hop channels to the hop server,
    // which serves the application once it is built below.
    let hop = HopServer::new();
    serve_peers(&config, peer_listener, &replica, &hop, stop.clone(), &tasks);
    let http_addr = config.me.http;
    let name = config.me.name.clone();
    let routing = Arc::new(Routing::new(&config, &tasks, stop.clone()));
    tasks.spawn(routing.clone().maintain(membership.clone(), stop.clone()));
    let upstream = match &config.cluster.app.upstream {
        Some(url) => match crate::config::parse_upstream(url) {
            Ok(addr) => {
                let upstream = Upstream::new(
                    addr,
                    &config.me.name,
                    config.me.http,
                    &config.cluster.sessions.cookie,
                );
                tasks.spawn(upstream.clone().watch(membership.clone(), stop.clone()));
                Some(upstream)
            }
            // Validated when the config was loaded; a bad value here is a bug, not user input.
            Err(problem) => {
                warn!(upstream = %url, "ignoring upstream: {problem}");
                None
            }
        },
        None => None,
    };
    let http_stop = CancellationToken::new();
    let parts = Parts {
        membership,
        replica,
        routing,
        upstream,
        events,
        closing: http_stop.clone(),
        metrics: Arc::new(Metrics::new(config.cluster.metrics.enabled)),
        live: Arc::new(crate::ops::reload::LiveSettings::new(
            config.cluster.clone(),
            log,
        )),
        accept: Arc::new(AcceptHealth::default()),
        config,
    };
    tasks.spawn(reload_on_sighup(parts.reloader(), stop.clone()));
    tasks.spawn(load::publish_load(
        parts.metrics.http(),
        parts.replica.clone(),
        parts.membership.clone(),
        stop.clone(),
    ));
    let app = http::router(parts.http_state())
        .merge(apps::applications(&parts, apps))
        .layer(axum::middleware::from_fn(
            crate::http::guards::limit_request_head,
        ));
    // Every request is measured (unless metrics are off) by one service around the whole router.
    let metrics = &parts.metrics;
    let app = Measured::new(app, metrics.enabled().then(|| metrics.http()));
    // Requests proxied here over hop channels are served by the same application.
    let hop_app = app.clone();
    hop.set_service(crate::proxy::hop::HopService::new(move |request| {
        let mut app = hop_app.clone();
        Box::pin(async move {
            match tower_service::Service::call(&mut app, request).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        })
    }));
    // Alerts and periodic backups stop as soon as the node starts leaving: its own shutdown raises no
    // alert, and a leaving leader starts no backup. Both always start, whatever the file says: they
    // read `<alerts>` and `<backup>` from the live configuration, so a reload can turn them on.
    let leaving = stop.child_token();
    crate::ops::alerts::start(parts.alert_inputs(), &tasks, leaving.clone());
    crate::ops::backup::start(parts.periodic_backups(), &tasks, leaving.clone());
    tasks.spawn(load::publish_accepting(
        parts.accept.clone(),
        parts.membership.clone(),
        stop.clone(),
    ));
    let mut server = {
        let http_stop = http_stop.clone();
        let live = parts.live.clone();
        let metrics = parts.metrics.http();
        let health = parts.accept.clone();
        tokio::spawn(http::server::serve(
            http_listener,
            app,
            move || live.cluster.load().http.clone(),
            metrics,
            health,
            http_stop,
        ))
    };
    info!(node = %name, "serving HTTP on {http_addr}");

    let served = tokio::select! {
        _ = shutdown.cancelled() => None,
        result = &mut server => Some(result),
    };
    if let Some(result) = served {
        // The server ended on its own: that is a failure, not a shutdown.
        stop.cancel();
        parts.replica.shutdown().await;
        tasks.close();
        tasks.wait().await;
        let source = match result {
            Ok(()) => std::io::Error::other("HTTP server stopped unexpectedly"),
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
    parts
        .membership
        .set_status(proto::gossip::NodeStatus::Leaving)
        .await;
    leaving.cancel();
    http_stop.cancel();
    hop.close();
    let drain_started = tokio::time::Instant::now();
    match tokio::time::timeout(DRAIN_TIMEOUT, &mut server).await {
        Ok(Ok(())) => {}
        Ok(Err(join)) => warn!(node = %name, error = %join, "HTTP server task failed"),
        Err(_) => {
            warn!(node = %name, "in-flight requests not finished after {DRAIN_TIMEOUT:?}; closing them");
            server.abort();
        }
    }
    // Requests that arrived over hop channels finish within the same allowance.
    let left = DRAIN_TIMEOUT.saturating_sub(drain_started.elapsed());
    if tokio::time::timeout(left, hop.drained()).await.is_err() {
        warn!(node = %name, in_flight = hop.in_flight(), "proxied requests not finished after {DRAIN_TIMEOUT:?}; closing them");
    }
    parts.replica.shutdown().await;
    parts.membership.leave().await;
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
