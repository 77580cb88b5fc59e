//! Static files from a docroot: ETag and Last-Modified (304s), Range (206), gzip, no traversal.

use std::path::Path;

use axum::Router;
use tower_http::compression::CompressionLayer;
use tower_http::services::ServeDir;

/// Serves the files under `docroot`; paths that name no file fall through to `fallback`.
///
/// `ServeDir` decodes the path and refuses any component that is `..`, a root or a prefix, so
/// `/..%2f..%2fetc/passwd` and the like answer 404 instead of leaving the folder.
pub fn router(docroot: &Path, fallback: Router) -> Router {
    let files = ServeDir::new(docroot)
        .append_index_html_on_directories(true)
        .precompressed_gzip()
        .fallback(fallback);
    Router::new()
        .fallback_service(files)
        .layer(CompressionLayer::new())
}
