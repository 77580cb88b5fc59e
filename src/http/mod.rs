//! The HTTP surface every node serves on `--http`.

pub mod backup;
pub mod console;
pub mod error;
pub mod events;
pub mod guards;
pub mod readiness;
pub mod server;
pub mod status;

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use tokio_util::sync::CancellationToken;

use crate::client::{CALL_TIMEOUT, HttpClient};
use crate::events::EventLog;
use crate::http::guards::{AdminAuth, RequireAdmin};
use crate::membership::{MemberState, Membership};
use crate::metrics::MetricsInputs;
use crate::ops::backup::BackupSource;
use crate::ops::reload::Reloader;
use crate::raft::replica::Replica;
use crate::routing::Routing;
use error::ApiError;
use readiness::Readiness;
use status::{ClusterStatus, StatusSource};

/// What the handlers of [`router`] read: each part of the node they answer for, nothing more.
pub struct HttpState {
    /// This node's name.
    pub node: String,
    /// The admin token check of [`RequireAdmin`].
    pub admin: AdminAuth,
    /// Drain and undrain (this node's status, another member's address).
    pub membership: Arc<Membership>,
    /// The session digest and restores.
    pub replica: Arc<Replica>,
    /// `/cluster/route`.
    pub routing: Arc<Routing>,
    /// `/cluster/events`.
    pub events: EventLog,
    /// Cancelled when the node stops serving HTTP: long-lived responses (event streams) end then, so
    /// they do not hold up the shutdown.
    pub closing: CancellationToken,
    /// `/readyz`.
    pub readiness: Readiness,
    /// `/cluster/status` and the console's snapshots.
    pub status: StatusSource,
    /// `POST /cluster/config/reload`.
    pub reloader: Reloader,
    /// `GET /cluster/backup`.
    pub backup: BackupSource,
    /// `<sessions max-bytes>`, which bounds a restore's body.
    pub session_max_bytes: usize,
    /// `/metrics`.
    pub metrics: Arc<MetricsInputs>,
}

/// The router's state: one handle shared by every request.
pub type SharedState = Arc<HttpState>;

/// Admin handlers of this router take [`RequireAdmin`]: the token comes from the node's secrets.
impl axum::extract::FromRef<SharedState> for AdminAuth {
    fn from_ref(state: &SharedState) -> AdminAuth {
        state.admin.clone()
    }
}

/// Builds the router for one node.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/ping", get(|| async { "pong" }))
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "alive" }))
        .route("/readyz", get(readyz))
        .route("/cluster/status", get(cluster_status))
        .route("/cluster/events", get(cluster_events))
        .route("/cluster/sessions/digest", get(sessions_digest))
        .route("/cluster/route", get(route_of))
        .merge(backup::routes())
        .route("/cluster/config/reload", post(reload_config))
        .route("/cluster/nodes/{name}/drain", post(drain))
        .route("/cluster/nodes/{name}/undrain", post(undrain))
        .merge(console::router())
        .with_state(Arc::new(state))
}

async fn metrics(State(state): State<SharedState>) -> Response {
    crate::metrics::serve(&state.metrics)
}

async fn readyz(State(state): State<SharedState>) -> Response {
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")).into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct FormatQuery {
    format: Option<String>,
}

fn wants_xml(format: Option<&str>, headers: &HeaderMap) -> bool {
    match format {
        Some(format) => format.eq_ignore_ascii_case("xml"),
        None => headers
            .get(header::ACCEPT)
            .and_then(|accept| accept.to_str().ok())
            .is_some_and(|accept| {
                accept.contains("application/xml") || accept.contains("text/xml")
            }),
    }
}

async fn cluster_status(
    State(context): State<SharedState>,
    Query(query): Query<FormatQuery>,
    headers: HeaderMap,
) -> Response {
    let status = context.status.status();
    if wants_xml(query.format.as_deref(), &headers) {
        match status.to_xml() {
            Ok(xml) => ([(header::CONTENT_TYPE, "application/xml")], xml).into_response(),
            Err(err) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot render status as XML: {err}"),
            )
                .into_response(),
        }
    } else {
        axum::Json::<ClusterStatus>(status).into_response()
    }
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    after: Option<u64>,
    /// With the event stream: also send `/cluster/status` snapshots (`event: status`).
    status: Option<bool>,
}

async fn cluster_events(
    State(context): State<SharedState>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Response {
    if events::wants_event_stream(&headers) {
        let with_status = query.status.unwrap_or(false);
        let status = with_status.then(|| context.status.clone());
        return events::stream(
            &context.events,
            &context.node,
            context.closing.clone(),
            status,
            &headers,
            query.after,
        );
    }
    let events = context.events.since(query.after.unwrap_or(0));
    axum::Json(serde_json::json!({ "events": events })).into_response()
}

/// This node's local session state, without any consensus round: for comparing replicas.
async fn sessions_digest(State(context): State<SharedState>) -> Response {
    let reader = context.replica.reader();
    axum::Json(serde_json::json!({
        "node": context.node,
        "applied_index": reader.last_applied_index(),
        "sessions": reader.len(),
        "digest": format!("{:016x}", reader.digest()),
    }))
    .into_response()
}

async fn drain(
    _admin: RequireAdmin,
    State(context): State<SharedState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    set_draining(context, name, true, headers).await
}

async fn undrain(
    _admin: RequireAdmin,
    State(context): State<SharedState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    set_draining(context, name, false, headers).await
}

/// Drains or undrains `name`: this node directly, another member by forwarding the call to it once.
async fn set_draining(
    context: SharedState,
    name: String,
    drain: bool,
    headers: HeaderMap,
) -> Response {
    let action = if drain { "drain" } else { "undrain" };
    if name == context.node {
        let status = if drain {
            proto::gossip::NodeStatus::Draining
        } else {
            proto::gossip::NodeStatus::Serving
        };
        context.membership.set_status(status).await;
        tracing::info!(node = %name, "{action} requested through the admin API");
        let state = if drain { "draining" } else { "up" };
        return axum::Json(serde_json::json!({ "node": name, "state": state })).into_response();
    }
    let error =
        |status: StatusCode, message: String| ApiError::new(status, message).into_response();
    if headers.contains_key(crate::proxy::HOP_HEADER) {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            format!("{name} is not this node ({})", context.node),
        );
    }
    let view = context.membership.view();
    let Some(member) = view.member(&name) else {
        return error(StatusCode::NOT_FOUND, format!("no member named {name:?}"));
    };
    let Some(addr) = member
        .http_addr
        .filter(|_| member.state != MemberState::Down && member.state != MemberState::Left)
    else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{name} is {}; it cannot take the request",
                member.state.as_str()
            ),
        );
    };
    let url = format!("http://{addr}/cluster/nodes/{name}/{action}");
    // The member checks the admin token too, so the caller's credentials go along.
    let mut forwarded = vec![(crate::proxy::HOP_HEADER, "1")];
    if let Some(authorization) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
    {
        forwarded.push((header::AUTHORIZATION.as_str(), authorization));
    }
    let answer = HttpClient::shared()
        .call(
            axum::http::Method::POST,
            &url,
            &forwarded,
            bytes::Bytes::new(),
            CALL_TIMEOUT,
        )
        .await;
    match answer {
        Ok((status, body)) => {
            let body = String::from_utf8_lossy(&body).into_owned();
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(err) => error(StatusCode::BAD_GATEWAY, err.to_string()),
    }
}

#[derive(Debug, Deserialize)]
struct RouteQuery {
    session: Option<String>,
    ip: Option<std::net::IpAddr>,
}

/// Where a request with this session id (or from this client address) goes: owner first.
async fn route_of(State(context): State<SharedState>, Query(query): Query<RouteQuery>) -> Response {
    let routing = &context.routing;
    let key =
        crate::balancer::RoutingKey::for_request(routing.key(), query.session.as_deref(), query.ip);
    axum::Json(serde_json::json!({
        "strategy": routing.strategy().as_str(),
        "key": key.to_string(),
        "owners": routing.owners(&key),
    }))
    .into_response()
}

/// `POST /cluster/config/reload`: re-read the config file; 200 with what changed, 400 (old config kept)
/// when the file is invalid.
async fn reload_config(State(context): State<SharedState>, _admin: RequireAdmin) -> Response {
    match crate::ops::reload::reload(&context.reloader).await {
        Ok(summary) => {
            axum::Json(serde_json::json!({ "reloaded": true, "changes": summary })).into_response()
        }
        Err(error) => ApiError::new(StatusCode::BAD_REQUEST, error)
            .with_field("reloaded", false)
            .into_response(),
    }
}
