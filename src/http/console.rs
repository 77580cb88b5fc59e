//! `/console`: the web console, one page whose assets are compiled into the binary (no CDN, no fonts
//! to fetch). It runs on the event stream (`/cluster/events?status=true`, see [`super::events`]) and
//! calls the drain/undrain API; everything else happens in the browser.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX_HTML: &str = include_str!("console/index.html");
const APP_JS: &str = include_str!("console/app.js");
const STYLE_CSS: &str = include_str!("console/style.css");

/// The console's routes: the page and its two assets.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/console",
            get(|| asset("text/html; charset=utf-8", INDEX_HTML)),
        )
        .route(
            "/console/",
            get(|| asset("text/html; charset=utf-8", INDEX_HTML)),
        )
        .route(
            "/console/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/console/style.css",
            get(|| asset("text/css; charset=utf-8", STYLE_CSS)),
        )
}

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Revalidate each time: a node upgraded in place must not serve yesterday's script.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        assert!(INDEX_HTML.contains("/console/app.js"));
        assert!(INDEX_HTML.contains("/console/style.css"));
        for asset in [INDEX_HTML, APP_JS, STYLE_CSS] {
            assert!(!asset.contains("http://"), "no external resource");
            assert!(!asset.contains("https://"), "no external resource");
        }
    }
}
