//! The demo app: `/app/counter` (a counter in the session) and `/app/hello` (no session work).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tower_sessions::Session;

use crate::http::error::ApiError;

/// Session key of the counter.
const COUNT_KEY: &str = "count";
/// Session key of the last request id and the count it produced.
const LAST_REQUEST_KEY: &str = "last_request";

/// The demo routes; `node` is the serving node's name, reported in every answer.
pub fn router(node: String) -> Router {
    Router::new()
        .route("/app/counter", get(counter).post(counter))
        .route("/app/hello", get(hello))
        .with_state(node)
}

async fn hello(State(node): State<String>) -> String {
    format!("hello from {node}")
}

/// Increments the session's counter. A replayed request (same `X-Request-Id`, after its first
/// attempt committed but the answer was lost with the member that served it) gets the same answer
/// instead of a second increment.
async fn counter(State(node): State<String>, headers: HeaderMap, session: Session) -> Response {
    let request_id = headers
        .get(crate::routing::REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let last: Option<(String, u64)> = match session.get(LAST_REQUEST_KEY).await {
        Ok(last) => last,
        Err(err) => return unavailable(err),
    };
    if let (Some(id), Some((last_id, last_count))) = (&request_id, &last)
        && id == last_id
    {
        return axum::Json(json!({ "count": last_count, "node": node, "replayed": true }))
            .into_response();
    }
    let count: u64 = match session.get(COUNT_KEY).await {
        Ok(count) => count.unwrap_or(0),
        Err(err) => return unavailable(err),
    };
    let count = count + 1;
    if let Err(err) = session.insert(COUNT_KEY, count).await {
        return unavailable(err);
    }
    if let Some(id) = request_id
        && let Err(err) = session.insert(LAST_REQUEST_KEY, (id, count)).await
    {
        return unavailable(err);
    }
    axum::Json(json!({ "count": count, "node": node })).into_response()
}

fn unavailable(err: tower_sessions::session::Error) -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("session store unavailable: {err}"),
    )
    .into_response()
}
