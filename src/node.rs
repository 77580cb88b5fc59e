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
use crate::apps::upstream::Upstream;
use crate::config::NodeConfig;
use crate::events::EventLog;
use crate::http;
use crate::http::server::AcceptHealth;
use crate::http::status::{ClusterStatus, StatusSource};
use crate::membership::{MemberInfo, MemberState, Membership, MembershipError, MembershipView};
use crate::metrics::Metrics;
use crate::metrics::http::Measured;
use crate::peer::server::Dispatch;
use crate::proxy::hop::HopServer;
use crate::raft::replica::{Replica, ReplicaError};
use crate::routing::{Routing, route};
use crate::session::ClusterStore;
use crate::session::api::SessionApi;

/// How long in-flight requests get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Log filter when `RUST_LOG` is not set: our events at info; chitchat, openraft and raft-log only
/// when they warn; not openraft's core (one error per read while any follower is down) nor its
/// responder (one warning per write whose client went away); tower-sessions only on errors (it warns
/// once per request carrying a malformed session cookie, which any client can send).
pub const DEFAULT_LOG_FILTER: &str = "info,chitchat=warn,openraft=warn,raft_log=warn,\
    openraft::core::raft_core=off,openraft::raft::responder=error,tower_sessions=error";
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
    upstream: Option<Arc<Upstream>>,
    events: EventLog,
    closing: CancellationToken,
    metrics: Arc<Metrics>,
    live: Arc<crate::ops::reload::LiveSettings>,
    accept: Arc<AcceptHealth>,
    status: StatusSource,
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

    /// The local application in upstream mode, if any.
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        self.inner.upstream.as_ref()
    }

    /// Settings a config reload can change.
    pub fn live(&self) -> &crate::ops::reload::LiveSettings {
        &self.inner.live
    }

    /// Request routing of this node.
    pub fn routing(&self) -> &Arc<Routing> {
        &self.inner.routing
    }

    /// The event history.
    pub fn events(&self) -> &EventLog {
        &self.inner.events
    }

    /// This node's metrics (request figures, alerting counters).
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Whether the HTTP port can accept connections.
    pub fn accept_health(&self) -> &AcceptHealth {
        &self.inner.accept
    }

    /// Cancelled when the node stops serving HTTP: long-lived responses (event streams) end then, so
    /// they do not hold up the shutdown.
    pub fn closing(&self) -> &CancellationToken {
        &self.inner.closing
    }

    /// The status document as of now.
    pub fn status(&self) -> ClusterStatus {
        self.inner.status.status()
    }

    /// `Ok` when this node has joined gossip, Raft has a leader, and this node applied its log.
    pub fn readiness(&self) -> Result<(), String> {
        self.accept_health().check()?;
        let view = self.membership().view();
        if let Err(gossip) = gossip_readiness(&view, self.config().seeds.is_empty()) {
            // A leader that lost its peers lost its quorum too: say both.
            return Err(match self.replica().quorum_problem() {
                Some(quorum) if self.replica().is_leader() => format!("{gossip}; {quorum}"),
                _ => gossip,
            });
        }
        if let Some(upstream) = self.upstream()
            && !upstream.is_healthy()
        {
            return Err("the upstream application does not answer".to_string());
        }
        self.replica().readiness()?;
        // A leader cut off from its majority still names itself leader: it can serve nothing.
        match self.replica().quorum_problem() {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }
}

/// `Ok` when this node is alone by design or sees another member up. Otherwise says whether it
/// never heard from another member ("yet") or heard from some and lost them, naming them.
fn gossip_readiness(view: &MembershipView, alone: bool) -> Result<(), String> {
    let others: Vec<&MemberInfo> = view.members.iter().filter(|m| !m.is_self).collect();
    if alone || others.iter().any(|member| member.state == MemberState::Up) {
        return Ok(());
    }
    // A generation is known only for a member this node has heard from.
    let lost: Vec<String> = others
        .iter()
        .filter(|member| member.generation.is_some())
        .map(|member| format!("{} {}", member.name, member.state.as_str()))
        .collect();
    if lost.is_empty() {
        return Err("no other member reachable through gossip yet".to_string());
    }
    let noun = if lost.len() == 1 { "member" } else { "members" };
    Err(format!(
        "no other member reachable through gossip ({} {noun} seen before, none up now: {})",
        lost.len(),
        lost.join(", ")
    ))
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

/// The applications: session API, demo app (with the cluster session store), stamped with the node.
fn applications(context: &NodeContext, apps: Vec<Router>) -> Router {
    let config = context.config();
    let sessions = &config.cluster.sessions;
    let store = ClusterStore::new(
        context.replica().clone(),
        sessions.max_bytes,
        context.live().session_ttl_ms.clone(),
        context.live().create_rate.clone(),
    );
    let ttl = tower_sessions::cookie::time::Duration::milliseconds(
        i64::try_from(sessions.ttl.as_millis()).unwrap_or(i64::MAX),
    );
    let session_layer = SessionManagerLayer::new(store)
        .with_name(sessions.cookie.clone())
        .with_secure(sessions.cookie_secure)
        .with_expiry(Expiry::OnInactivity(ttl));
    let api = SessionApi {
        replica: context.replica().clone(),
        default_ttl_ms: context.live().session_ttl_ms.clone(),
        max_bytes: sessions.max_bytes,
        admin: crate::http::guards::AdminAuth::new(config.secrets.admin_token.clone()),
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
    // What no application route matches: static files, then the upstream, then 404.
    let mut tail = match context.upstream() {
        Some(upstream) => upstream.clone().router(),
        None => Router::new().fallback(not_found),
    };
    if let Some(docroot) = &config.cluster.app.docroot {
        tail = apps::static_files::router(docroot, tail);
    }
    let mut application = Router::new();
    for app in apps {
        application = application.merge(app);
    }
    // The session layer wraps the embedded apps only: an upstream app owns its cookie (it uses the REST
    // API), and tower-sessions would delete a cookie whose value is not one of its own ids.
    let application = application
        .layer(session_layer)
        // Outside the session layer: a save that fails after the handler gets a status and a reason.
        .layer(axum::middleware::from_fn(
            crate::session::store::explain_save_failures,
        ))
        .merge(tail)
        .layer(stamp.clone())
        .layer(axum::middleware::from_fn_with_state(
            context.routing().clone(),
            route,
        ));
    Router::new()
        .merge(crate::session::api::router(api).layer(stamp))
        .merge(application)
}

/// How often this node publishes its load in gossip.
const LOAD_EVERY: Duration = Duration::from_secs(1);

/// Publishes this node's load (connections, requests, sessions, CPU, memory) in gossip once a second,
/// so every node's status shows every member's figures.
async fn publish_load(context: NodeContext, stop: CancellationToken) {
    let mut last_cpu: Option<(std::time::Instant, f64)> = None;
    let mut last: Option<proto::gossip::LoadReport> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(LOAD_EVERY) => {}
        }
        let process = crate::metrics::process::ProcessStats::read();
        let now = std::time::Instant::now();
        let cpu_percent = match (process.cpu_seconds, last_cpu) {
            (Some(cpu), Some((then, before))) => {
                let wall = now.duration_since(then).as_secs_f64().max(1e-3);
                ((cpu - before).max(0.0) / wall * 1000.0).round() / 10.0
            }
            _ => 0.0,
        };
        if let Some(cpu) = process.cpu_seconds {
            last_cpu = Some((now, cpu));
        }
        let http = context.metrics().http();
        let load = proto::gossip::LoadReport {
            active_connections: http.connections_open(),
            requests_total: http.requests_total(),
            sessions: context.replica().reader().len() as u64,
            cpu_percent,
            memory_bytes: process.resident_bytes.unwrap_or(0),
        };
        if last != Some(load) {
            context.membership().set_load(load).await;
            last = Some(load);
        }
    }
}

/// How often the accept loop's health is turned into gossip readiness.
const ACCEPTING_EVERY: Duration = Duration::from_millis(250);

/// Publishes in gossip whether the HTTP port accepts connections (with one log line per change), so
/// that members route around a node out of file descriptors and back to it once it recovers.
async fn publish_accepting(context: NodeContext, stop: CancellationToken) {
    let mut published = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(ACCEPTING_EVERY) => {}
        }
        let health = context.accept_health().check();
        if health.is_ok() != published {
            published = health.is_ok();
            match health {
                Ok(()) => info!("HTTP connections accepted again; ready"),
                Err(why) => warn!("not ready, routing elsewhere: {why}"),
            }
            context.membership().set_accepting(published).await;
        }
    }
}

/// Reloads the config file on every SIGHUP until `stop`.
async fn reload_on_sighup(context: NodeContext, stop: CancellationToken) {
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
                    let _ = crate::ops::reload::reload(&context).await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    stop.cancelled().await;
}

async fn not_found() -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    (
        axum::http::StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({ "error": "no such page" })),
    )
}

/// Runs a node serving the demo app until `shutdown` is cancelled, then leaves the cluster gracefully.
pub async fn run(
    config: NodeConfig,
    http_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let demo = apps::demo::router(config.me.name.clone());
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
            log: None,
        }
    }
}

/// Collects a node's applications; [`NodeBuilder::run`] starts it.
pub struct NodeBuilder {
    config: NodeConfig,
    apps: Vec<Router>,
    listener: Option<TcpListener>,
    log: Option<crate::ops::reload::LogControl>,
}

impl NodeBuilder {
    /// Adds an application. Its routes get routing, failover, `X-Served-By` and the cluster's
    /// `tower_sessions::Session`; it must not set a fallback (static files and the upstream use it).
    pub fn app(mut self, router: Router) -> NodeBuilder {
        self.apps.push(router);
        self
    }

    /// Serves HTTP on this listener instead of binding `--http`.
    pub fn listener(mut self, listener: TcpListener) -> NodeBuilder {
        self.listener = Some(listener);
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
            config,
            apps,
            listener,
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
        serve(config, apps, http_listener, log, shutdown).await
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
    log: Option<crate::ops::reload::LogControl>,
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
    let routing = Arc::new(Routing::new(&config));
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
    let config_metrics_enabled = config.cluster.metrics.enabled;
    let live = Arc::new(crate::ops::reload::LiveSettings::new(
        config.cluster.clone(),
        log,
    ));
    let status = StatusSource {
        cluster_id: config.cluster.cluster_id.clone(),
        node: config.me.name.clone(),
        cookie_secure: config.cluster.sessions.cookie_secure,
        membership: membership.clone(),
        replica: replica.clone(),
        routing: routing.clone(),
        live: live.clone(),
    };
    let context = NodeContext {
        inner: Arc::new(ContextInner {
            membership,
            replica,
            routing,
            upstream,
            events,
            closing: http_stop.clone(),
            metrics: Arc::new(Metrics::new(config_metrics_enabled)),
            live,
            accept: Arc::new(AcceptHealth::default()),
            status,
            config,
        }),
    };
    tasks.spawn(reload_on_sighup(context.clone(), stop.clone()));
    tasks.spawn(publish_load(context.clone(), stop.clone()));
    let app = http::router(context.clone())
        .merge(applications(&context, apps))
        .layer(axum::middleware::from_fn(
            crate::http::guards::limit_request_head,
        ));
    // Every request is measured (unless metrics are off) by one service around the whole router.
    let metrics = context.metrics();
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
    crate::ops::alerts::start(context.clone(), &tasks, leaving.clone());
    crate::ops::backup::start(context.clone(), &tasks, leaving.clone());
    tasks.spawn(publish_accepting(context.clone(), stop.clone()));
    let mut server = {
        let http_stop = http_stop.clone();
        let bounds_context = context.clone();
        let metrics = context.metrics().http();
        let health = context.inner.accept.clone();
        tokio::spawn(http::server::serve(
            http_listener,
            app,
            move || bounds_context.live().cluster.load().http.clone(),
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
        context.replica().shutdown().await;
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
    context
        .membership()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, state: MemberState, heard: bool, is_self: bool) -> MemberInfo {
        let mut member = MemberInfo::new(
            name.to_string(),
            None,
            "127.0.0.1:7001".parse().expect("address"),
            state,
        );
        member.generation = heard.then_some(1);
        member.is_self = is_self;
        member
    }

    fn view(members: Vec<MemberInfo>) -> MembershipView {
        MembershipView {
            version: 1,
            members,
        }
    }

    #[test]
    fn gossip_readiness_tells_never_seen_from_lost() {
        let me = || member("node-1", MemberState::Up, true, true);
        let never = view(vec![
            me(),
            member("node-2", MemberState::Down, false, false),
            member("node-3", MemberState::Down, false, false),
        ]);
        assert_eq!(
            gossip_readiness(&never, false),
            Err("no other member reachable through gossip yet".to_string())
        );
        assert_eq!(gossip_readiness(&never, true), Ok(()));
        let lost = view(vec![
            me(),
            member("node-2", MemberState::Down, true, false),
            member("node-3", MemberState::Left, true, false),
            member("node-4", MemberState::Down, false, false),
        ]);
        assert_eq!(
            gossip_readiness(&lost, false),
            Err("no other member reachable through gossip (2 members seen before, none up now: node-2 down, node-3 left)".to_string())
        );
        let one_up = view(vec![me(), member("node-2", MemberState::Up, true, false)]);
        assert_eq!(gossip_readiness(&one_up, false), Ok(()));
    }
}
