//! The applications a node serves: the session API, the embedded apps with the cluster session
//! store, static files and the upstream, all stamped with the node that served them and routed.

use axum::Router;
use axum::http::{HeaderName, HeaderValue};
use tower_sessions::{Expiry, SessionManagerLayer};

use super::context::Parts;
use crate::apps;
use crate::routing::route;
use crate::session::ClusterStore;
use crate::session::api::SessionApi;

/// Header naming the node that served an application request.
pub const SERVED_BY: &str = "x-served-by";

/// The applications: session API, demo app (with the cluster session store), stamped with the node.
pub(super) fn applications(parts: &Parts, apps: Vec<Router>) -> Router {
    let config = &parts.config;
    let sessions = &config.cluster.sessions;
    let store = ClusterStore::new(
        parts.replica.clone(),
        sessions.max_bytes,
        parts.live.session_ttl_ms.clone(),
        parts.live.create_rate.clone(),
    );
    let ttl = tower_sessions::cookie::time::Duration::milliseconds(
        i64::try_from(sessions.ttl.as_millis()).unwrap_or(i64::MAX),
    );
    let session_layer = SessionManagerLayer::new(store)
        .with_name(sessions.cookie.clone())
        .with_secure(sessions.cookie_secure)
        .with_expiry(Expiry::OnInactivity(ttl));
    let api = SessionApi {
        replica: parts.replica.clone(),
        default_ttl_ms: parts.live.session_ttl_ms.clone(),
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
    let mut tail = match &parts.upstream {
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
            parts.routing.clone(),
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
