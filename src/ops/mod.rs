//! What a node does for its operators in the background: alerts, scheduled backups, config reloads.

pub mod alerts;
pub mod backup;
pub mod reload;
