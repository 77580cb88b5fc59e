//! Routes every application request to its owner among the live members: served here, or proxied.
//!
//! The balancer picks an ordered list of candidates (owner first) from an immutable snapshot that is
//! rebuilt when membership or local ejections change. A request that already carries a trusted hop
//! header is always served where it lands, so a request is proxied at most once. Trusted means it came
//! over a hop channel, or its token is the one the member it names gossips; anyone else's hop header
//! (a client's) is removed and the request routed like any other, so no client can skip routing
//! or a node's draining.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::balancer::{BalancerSnapshot, InFlight, LoadBalancer, RoutingKey, for_strategy};
use crate::config::{HashKey, NodeConfig, Strategy, Transport};
use crate::http::error::ApiError;
use crate::membership::{MemberState, Membership};
use crate::proxy::{
    HOP_HEADER, PreparedRequest, Proxy, ProxySettings, RETRY_BUFFER_LIMIT, buffer_for_retry,
    is_idempotent,
};

/// Per-member routing counters, as this node sees them.
#[derive(Debug, Default)]
struct TargetCounters {
    proxied: AtomicU64,
    over_hop: AtomicU64,
    failures: AtomicU64,
}

/// A member's routing figures in status.
#[derive(Debug, Clone, Serialize)]
pub struct TargetStats {
    /// The member.
    pub name: String,
    /// Requests this node proxied to it.
    pub proxied: u64,
    /// Of those, answered over its hop channel (the rest went over HTTP).
    pub over_hop: u64,
    /// Proxy attempts to it that failed.
    pub failures: u64,
    /// Requests in flight to it (or served here, for this node).
    pub in_flight: usize,
    /// Ejected locally after repeated failures.
    pub ejected: bool,
}

/// What a config reload may change: strategy, key, retries and the response timeout, swapped as one
/// (a request loads it once).
struct Policy {
    strategy: Strategy,
    key: HashKey,
    retries: u32,
    response_timeout: Duration,
    balancer: Arc<dyn LoadBalancer>,
}

/// The routing state of one node.
pub struct Routing {
    me: String,
    policy: ArcSwap<Policy>,
    cookie: String,
    in_flight: InFlight,
    proxy: Proxy,
    snapshot: ArcSwap<BalancerSnapshot>,
    counters: std::sync::Mutex<BTreeMap<String, Arc<TargetCounters>>>,
    served_locally: AtomicU64,
    /// Requests sent to a further candidate after a failure.
    retried: AtomicU64,
    /// Whether serving here can fail for reasons routing can avoid (upstream mode).
    local_may_fail: bool,
    /// Bumped after every snapshot rebuild, so requests in flight can notice their member left it.
    rebuilt: tokio::sync::watch::Sender<u64>,
    /// Members that are down.
    departed: ArcSwap<HashSet<String>>,
    /// Where the hop tokens of the members are read; set by [`Routing::maintain`].
    membership: std::sync::OnceLock<Arc<Membership>>,
    /// Hop headers removed because nothing vouched for them.
    untrusted_hops: AtomicU64,
}

impl Routing {
    /// Routing for this node, with an empty snapshot until [`Routing::maintain`] runs. Hop channels'
    /// tasks run on `tasks` until `stop`.
    pub fn new(config: &NodeConfig, tasks: &TaskTracker, stop: CancellationToken) -> Routing {
        let balancer = &config.cluster.balancer;
        let in_flight = InFlight::default();
        Routing {
            me: config.me.name.clone(),
            policy: ArcSwap::from_pointee(Policy {
                strategy: balancer.strategy,
                key: balancer.key,
                retries: balancer.retries,
                response_timeout: balancer.response_timeout,
                balancer: for_strategy(balancer.strategy, in_flight.clone()),
            }),
            cookie: config.cluster.sessions.cookie.clone(),
            in_flight,
            proxy: {
                let proxy = Proxy::with_settings(
                    &config.me.name,
                    ProxySettings {
                        connect_timeout: balancer.connect_timeout,
                        response_timeout: balancer.response_timeout,
                        ..ProxySettings::default()
                    },
                );
                match balancer.transport {
                    Transport::Hop => proxy.with_hop(crate::proxy::hop::HopClient::new(
                        crate::peer::PeerClient::new(
                            &config.cluster.cluster_id,
                            &config.me.name,
                            config
                                .secrets
                                .gossip_key
                                .as_ref()
                                .map(crate::crypto::PeerKey::new),
                        ),
                        tasks.clone(),
                        stop,
                    )),
                    Transport::Http => proxy,
                }
            },
            snapshot: ArcSwap::from_pointee(BalancerSnapshot::default()),
            counters: std::sync::Mutex::new(BTreeMap::new()),
            served_locally: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            local_may_fail: config.cluster.app.upstream.is_some(),
            rebuilt: tokio::sync::watch::Sender::new(0),
            departed: ArcSwap::from_pointee(HashSet::new()),
            membership: std::sync::OnceLock::new(),
            untrusted_hops: AtomicU64::new(0),
        }
    }

    /// Keeps the snapshot in line with membership and ejections, and drops the connection pools of
    /// members that went down or left. Runs until `shutdown`.
    pub async fn maintain(
        self: Arc<Self>,
        membership: Arc<Membership>,
        shutdown: CancellationToken,
    ) {
        let _ = self.membership.set(membership.clone());
        if let Some(token) = self.proxy.hop_token() {
            membership.set_hop_token(token).await;
        }
        let mut changes = membership.changes();
        let mut ejections = self.proxy.ejections().changes();
        let mut last_ejected: Option<HashSet<String>> = None;
        let mut last_version = None;
        loop {
            let view = membership.view();
            let ejected = self.proxy.ejected();
            if last_version != Some(view.version) || last_ejected.as_ref() != Some(&ejected) {
                let mut departed = HashSet::new();
                for member in &view.members {
                    if matches!(member.state, MemberState::Down | MemberState::Left) {
                        self.proxy.drop_pool(&member.name);
                    }
                    // A member that left finishes its in-flight requests; one that is down never will.
                    if member.state == MemberState::Down {
                        departed.insert(member.name.clone());
                    }
                }
                self.departed.store(Arc::new(departed));
                let next = BalancerSnapshot::build(&view, &ejected);
                let names: Vec<&str> = next.targets().iter().map(|t| t.name.as_str()).collect();
                if names != self.members() {
                    info!(members = ?names, "balancer now routes to {} member(s)", names.len());
                }
                if !ejected.is_empty() && last_ejected.as_ref() != Some(&ejected) {
                    warn!(ejected = ?ejected, "members ejected locally after repeated proxy failures");
                }
                self.snapshot.store(Arc::new(next));
                self.rebuilt.send_modify(|generation| *generation += 1);
                last_version = Some(view.version);
                last_ejected = Some(ejected);
            }
            // Woken by what changes the snapshot: membership, an ejection or a return, and the end
            // of the earliest ejection window.
            let window_ends = self.proxy.ejections().next_end();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = changes.changed() => {}
                _ = ejections.changed() => {}
                () = async {
                    match window_ends {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    }

    /// Names of the members receiving work.
    pub fn members(&self) -> Vec<String> {
        self.snapshot
            .load()
            .targets()
            .iter()
            .map(|target| target.name.clone())
            .collect()
    }

    /// Applies a reloaded `<balancer>`: later requests use it; requests in flight keep the old one
    /// (their response timeout included). A new connect timeout applies to new connections.
    pub fn apply(&self, balancer: &crate::config::BalancerConfig) {
        let current = self.policy.load();
        let strategy_changed = current.strategy != balancer.strategy;
        self.proxy.set_connect_timeout(balancer.connect_timeout);
        self.policy.store(Arc::new(Policy {
            strategy: balancer.strategy,
            key: balancer.key,
            retries: balancer.retries,
            response_timeout: balancer.response_timeout,
            balancer: if strategy_changed {
                for_strategy(balancer.strategy, self.in_flight.clone())
            } else {
                current.balancer.clone()
            },
        }));
    }

    /// Completes when `name` is down: a request in flight to it is then abandoned and, when
    /// safe, retried elsewhere, instead of waiting out the response timeout. (A draining member
    /// finishes what it has.)
    async fn gone(&self, name: &str) {
        let mut rebuilt = self.rebuilt.subscribe();
        loop {
            if self.departed.load().contains(name) {
                return;
            }
            if rebuilt.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The strategy in use.
    pub fn strategy(&self) -> Strategy {
        self.policy.load().strategy
    }

    /// The routing key in use.
    pub fn key(&self) -> HashKey {
        self.policy.load().key
    }

    /// The proxy response timeout in use.
    pub fn response_timeout(&self) -> Duration {
        self.policy.load().response_timeout
    }

    /// Whether requests held in memory are proxied over hop channels (`<balancer transport="hop">`).
    pub fn uses_hop(&self) -> bool {
        self.proxy.uses_hop()
    }

    /// The proxy connect timeout in use (for connections opened from now on).
    pub fn connect_timeout(&self) -> Duration {
        self.proxy.connect_timeout()
    }

    /// Routing figures per member, by name.
    pub fn stats(&self) -> Vec<TargetStats> {
        let ejected = self.proxy.ejected();
        let counters = self.counters.lock().map(|c| c.clone()).unwrap_or_default();
        let mut stats: BTreeMap<String, TargetStats> = counters
            .into_iter()
            .map(|(name, counters)| {
                let stats = TargetStats {
                    name: name.clone(),
                    proxied: counters.proxied.load(Ordering::Relaxed),
                    over_hop: counters.over_hop.load(Ordering::Relaxed),
                    failures: counters.failures.load(Ordering::Relaxed),
                    in_flight: self.in_flight.get(&name),
                    ejected: ejected.contains(&name),
                };
                (name, stats)
            })
            .collect();
        stats.insert(
            self.me.clone(),
            TargetStats {
                name: self.me.clone(),
                proxied: self.served_locally.load(Ordering::Relaxed),
                over_hop: 0,
                failures: 0,
                in_flight: self.in_flight.get(&self.me),
                ejected: false,
            },
        );
        stats.into_values().collect()
    }

    /// Hop headers removed from requests (and the requests routed) because nothing vouched for them:
    /// sent by a client, or by a member whose token this node has not heard yet.
    pub fn untrusted_hop_headers(&self) -> u64 {
        self.untrusted_hops.load(Ordering::Relaxed)
    }

    /// The member a hop header's `value` comes from, if it is to be honoured: any over a hop channel,
    /// else only with the token that member (not down) gossips.
    fn hop_sender<'v>(&self, value: &'v HeaderValue, over_hop_channel: bool) -> Option<&'v str> {
        let value = value.to_str().ok()?;
        let (name, token) = value.split_once(' ').unwrap_or((value, ""));
        if over_hop_channel {
            return Some(name);
        }
        let view = self.membership.get()?.view();
        let member = view.member(name)?;
        let vouched = member.state != MemberState::Down
            && member
                .hop_token
                .as_ref()
                .is_some_and(|known| known.matches(token));
        vouched.then_some(name)
    }

    /// Attempts made on a next member after the previous one failed, since start.
    pub fn retries(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }

    /// The ordered member names a request with this key would go to (owner first).
    pub fn owners(&self, key: &RoutingKey) -> Vec<String> {
        let snapshot = self.snapshot.load();
        self.policy
            .load()
            .balancer
            .candidates(key, &snapshot)
            .into_iter()
            .filter_map(|index| snapshot.targets().get(index).map(|t| t.name.clone()))
            .collect()
    }

    /// The routing key of a request: its session cookie, else the client address.
    pub fn key_for(&self, headers: &HeaderMap, client: IpAddr) -> RoutingKey {
        let session = session_cookie(headers, &self.cookie);
        RoutingKey::for_request(self.key(), session.as_deref(), Some(client))
    }

    fn counters(&self, name: &str) -> Arc<TargetCounters> {
        let mut counters = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(counters) = counters.get(name) {
            return counters.clone();
        }
        counters.entry(name.to_string()).or_default().clone()
    }

    async fn serve_here(&self, request: Request, next: Next) -> Response {
        let _guard = self.in_flight.guard(&self.me);
        self.served_locally.fetch_add(1, Ordering::Relaxed);
        next.run(request).await
    }
}

/// The value of cookie `name`, if the request has it.
pub fn session_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"').to_string())
}

fn bad_gateway(message: String) -> Response {
    ApiError::new(StatusCode::BAD_GATEWAY, message).into_response()
}

/// Untrusted hop headers are logged at most this often: a client can send them at any rate.
static UNTRUSTED_HOP_LOG: crate::logging::LogThrottle =
    crate::logging::LogThrottle::new(Duration::from_secs(10));

/// Refused client bodies are logged at most this often: a client can send them at any rate.
static CLIENT_BODY_LOG: crate::logging::LogThrottle =
    crate::logging::LogThrottle::new(Duration::from_secs(10));

/// The answer to a request whose body the client broke: 413 when it was longer than allowed, 408
/// when it did not arrive in time, else 400.
fn refuse_client_body(err: &crate::proxy::ProxyError) -> Response {
    let causes = || {
        std::iter::successors(Some(err as &(dyn std::error::Error + 'static)), |err| {
            err.source()
        })
    };
    let (status, what) = if causes().any(|err| err.is::<http_body_util::LengthLimitError>()) {
        (StatusCode::PAYLOAD_TOO_LARGE, "too long")
    } else if causes().any(|err| err.is::<crate::proxy::ClientBodyTimeout>()) {
        (StatusCode::REQUEST_TIMEOUT, "not sent in time")
    } else {
        (StatusCode::BAD_REQUEST, "malformed or incomplete")
    };
    if let Some(held_back) = CLIENT_BODY_LOG.allow() {
        let cause = causes().last().map(ToString::to_string).unwrap_or_default();
        info!(status = status.as_u16(), held_back, %cause, "refused a request whose body the client broke");
    }
    let message = format!("{err}: the request body was {what}");
    ApiError::new(status, message).into_response()
}

/// Header carrying one id per client request; a retry on another member carries the same id, so an
/// application can recognise a replay (the demo counter does) and answer it without doing it twice.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// One attempt's request: held in memory (and sent again on a retryable failure) or sent once.
// Lives on the stack for one attempt; boxing the request would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Attempt<'a> {
    Held(&'a crate::proxy::ReplayableRequest),
    Once(Request),
}

/// The middleware: serve here or proxy to the owner, moving to the next candidate on failure.
pub async fn route(
    State(routing): State<Arc<Routing>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let over_hop_channel = request
        .extensions()
        .get::<crate::proxy::hop::ArrivedOverHopChannel>()
        .is_some();
    if let Some(value) = request.headers().get(HOP_HEADER) {
        match routing.hop_sender(value, over_hop_channel) {
            Some(sender) => {
                // The application learns where the request came from, never the token.
                let sender = HeaderValue::from_str(sender).ok();
                let headers = request.headers_mut();
                headers.remove(HOP_HEADER);
                if let Some(sender) = sender {
                    headers.insert(HOP_HEADER, sender);
                }
                return routing.serve_here(request, next).await;
            }
            None => {
                request.headers_mut().remove(HOP_HEADER);
                routing.untrusted_hops.fetch_add(1, Ordering::Relaxed);
                if let Some(held_back) = UNTRUSTED_HOP_LOG.allow() {
                    warn!(
                        peer = %peer,
                        held_back,
                        "removed a hop header nothing vouched for (a client's, or a member's whose token is not known here yet); routing the request"
                    );
                }
            }
        }
    } else if over_hop_channel {
        // Members always send the header; a request from a hop channel is never proxied again anyway.
        return routing.serve_here(request, next).await;
    }
    if !request.headers().contains_key(REQUEST_ID_HEADER) {
        let id = proto::raft::SessionId::generate().to_string();
        if let Ok(value) = HeaderValue::from_str(&id) {
            request.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
    }
    let policy = routing.policy.load_full();
    let session = session_cookie(request.headers(), &routing.cookie);
    let key = RoutingKey::for_request(policy.key, session.as_deref(), Some(peer.ip()));
    let snapshot = routing.snapshot.load_full();
    let order = policy.balancer.candidates(&key, &snapshot);
    let Some(first) = order.first().and_then(|i| snapshot.targets().get(*i)) else {
        // Nobody takes work (this node drains alone, or membership is still empty): serve here.
        return routing.serve_here(request, next).await;
    };
    // In upstream mode the local application can be down too, so keep the request for a retry.
    if first.name == routing.me && !routing.local_may_fail {
        return routing.serve_here(request, next).await;
    }
    let idempotent = is_idempotent(request.method());
    // Small bodies are kept so the request can be replayed; large or chunked ones stream, once.
    let (replayable, mut streaming) = match buffer_for_retry(request, RETRY_BUFFER_LIMIT).await {
        Ok(PreparedRequest::Replayable(replayable)) => (Some(replayable), None),
        Ok(PreparedRequest::Streaming(request)) => (None, Some(request)),
        Err(err) => return refuse_client_body(&err),
    };
    let attempts = 1 + policy.retries as usize;
    let mut last_error = String::from("no member could take the request");
    for (attempt, index) in order.into_iter().take(attempts).enumerate() {
        let Some(target) = snapshot.targets().get(index) else {
            continue;
        };
        let attempt_request = match (&replayable, streaming.take()) {
            (Some(replayable), _) => Attempt::Held(replayable),
            (None, Some(request)) => Attempt::Once(request),
            (None, None) => break,
        };
        if attempt > 0 {
            routing.retried.fetch_add(1, Ordering::Relaxed);
        }
        if target.name == routing.me {
            let request = match attempt_request {
                Attempt::Held(replayable) => replayable.to_request(),
                Attempt::Once(request) => request,
            };
            let response = routing.serve_here(request, next.clone()).await;
            let unavailable = response
                .headers()
                .contains_key(crate::apps::upstream::UNAVAILABLE_HEADER);
            if unavailable && idempotent && replayable.is_some() {
                last_error = "this node's application is unavailable".to_string();
                continue;
            }
            return response;
        }
        let counters = routing.counters(&target.name);
        counters.proxied.fetch_add(1, Ordering::Relaxed);
        let result = {
            let _guard = routing.in_flight.guard(&target.name);
            let (proxy, ip, timeout) = (&routing.proxy, peer.ip(), policy.response_timeout);
            let forward = async {
                match attempt_request {
                    Attempt::Held(replayable) => {
                        proxy
                            .forward_replayable(target, replayable, ip, timeout)
                            .await
                    }
                    Attempt::Once(request) => {
                        proxy.forward_within(target, request, ip, timeout).await
                    }
                }
            };
            tokio::select! {
                result = forward => result,
                () = routing.gone(&target.name) => Err(crate::proxy::ProxyError::Timeout {
                    target: target.name.clone(),
                }),
            }
        };
        match result {
            // The member is up but its application is not: like a failed member, when safe to retry.
            Ok(response)
                if response
                    .headers()
                    .contains_key(crate::apps::upstream::UNAVAILABLE_HEADER)
                    && idempotent
                    && replayable.is_some() =>
            {
                counters.failures.fetch_add(1, Ordering::Relaxed);
                last_error = format!("{}'s application is unavailable", target.name);
                continue;
            }
            Ok(response) => {
                if response
                    .extensions()
                    .get::<crate::proxy::OverHop>()
                    .is_some()
                {
                    counters.over_hop.fetch_add(1, Ordering::Relaxed);
                }
                return response;
            }
            // The client's own body broke (it hung up, bad chunking, too long): its fault, not the
            // member's, so neither the member's failure count nor a 502 may say otherwise.
            Err(err @ crate::proxy::ProxyError::ClientBody { .. }) => {
                return refuse_client_body(&err);
            }
            Err(err) => {
                counters.failures.fetch_add(1, Ordering::Relaxed);
                let retry = err.is_retryable(idempotent) && replayable.is_some();
                debug!(target = %target.name, error = %err, retry, "proxying failed");
                last_error = err.to_string();
                if !retry {
                    break;
                }
            }
        }
    }
    bad_gateway(last_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_session_cookie_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            "a=1; MTSESSIONID=abc; b=2".parse().expect("header"),
        );
        assert_eq!(
            session_cookie(&headers, "MTSESSIONID").as_deref(),
            Some("abc")
        );
        assert_eq!(session_cookie(&headers, "missing"), None);
        headers.append(header::COOKIE, "other=\"x\"".parse().expect("header"));
        assert_eq!(session_cookie(&headers, "other").as_deref(), Some("x"));
    }
}
