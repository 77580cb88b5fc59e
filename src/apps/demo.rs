//! The demo app: `/app/counter` (a counter in the session) and `/app/hello` (no session work).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tower_sessions::Session;

/// Session key of the counter.
const COUNT_KEY: &str = "count";

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

async fn counter(State(node): State<String>, session: Session) -> Response {
    let count: u64 = match session.get(COUNT_KEY).await {
        Ok(count) => count.unwrap_or(0),
        Err(err) => return unavailable(err),
    };
    let count = count + 1;
    if let Err(err) = session.insert(COUNT_KEY, count).await {
        return unavailable(err);
    }
    axum::Json(json!({ "count": count, "node": node })).into_response()
}

fn unavailable(err: tower_sessions::session::Error) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({ "error": format!("session store unavailable: {err}") })),
    )
        .into_response()
}
