//! The HTTP surface every node serves on `--http`.

pub mod status;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::node::NodeContext;
use status::ClusterStatus;

/// Builds the router for one node.
pub fn router(context: NodeContext) -> Router {
    Router::new()
        .route("/ping", get(|| async { "pong" }))
        .route("/livez", get(|| async { "alive" }))
        .route("/readyz", get(readyz))
        .route("/cluster/status", get(cluster_status))
        .route("/cluster/events", get(cluster_events))
        .route("/cluster/sessions/digest", get(sessions_digest))
        .with_state(context)
}

async fn readyz(State(context): State<NodeContext>) -> Response {
    match context.readiness() {
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
    State(context): State<NodeContext>,
    Query(query): Query<FormatQuery>,
    headers: HeaderMap,
) -> Response {
    let status = context.status();
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
}

async fn cluster_events(
    State(context): State<NodeContext>,
    Query(query): Query<EventsQuery>,
) -> Response {
    let events = context.events().since(query.after.unwrap_or(0));
    axum::Json(serde_json::json!({ "events": events })).into_response()
}

/// This node's local session state, without any consensus round: for comparing replicas.
async fn sessions_digest(State(context): State<NodeContext>) -> Response {
    let reader = context.replica().reader();
    axum::Json(serde_json::json!({
        "node": context.config().me.name,
        "applied_index": reader.last_applied_index(),
        "sessions": reader.len(),
        "digest": format!("{:016x}", reader.digest()),
    }))
    .into_response()
}
