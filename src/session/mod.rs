//! HTTP sessions on top of the replicated store: the `/api/sessions` REST API and a
//! `tower_sessions::SessionStore` so any axum app can use the `Session` extractor.

pub mod api;
pub mod quota;
pub mod restore;
pub mod store;

pub use store::ClusterStore;
