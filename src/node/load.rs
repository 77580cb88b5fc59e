//! What this node publishes about itself in gossip: its load, and whether its HTTP port accepts.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::http::server::AcceptHealth;
use crate::membership::Membership;
use crate::metrics::http::HttpMetrics;
use crate::raft::replica::Replica;

/// How often this node publishes its load in gossip.
const LOAD_EVERY: Duration = Duration::from_secs(1);

/// How often the accept loop's health is turned into gossip readiness.
const ACCEPTING_EVERY: Duration = Duration::from_millis(250);

/// Publishes this node's load (connections, requests, sessions, CPU, memory) in gossip once a second,
/// so every node's status shows every member's figures.
pub(super) async fn publish_load(
    http: &'static HttpMetrics,
    replica: Arc<Replica>,
    membership: Arc<Membership>,
    stop: CancellationToken,
) {
    let mut last_cpu: Option<(std::time::Instant, f64)> = None;
    let mut last: Option<proto::gossip::LoadReport> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(LOAD_EVERY) => {}
        }
        let process = crate::metrics::process::ProcessStats::read();
        let now = std::time::Instant::now();
        let cpu_percent = match (process.cpu_seconds, last_cpu) {
            (Some(cpu), Some((then, before))) => {
                let wall = now.duration_since(then).as_secs_f64().max(1e-3);
                ((cpu - before).max(0.0) / wall * 1000.0).round() / 10.0
            }
            _ => 0.0,
        };
        if let Some(cpu) = process.cpu_seconds {
            last_cpu = Some((now, cpu));
        }
        let load = proto::gossip::LoadReport {
            active_connections: http.connections_open(),
            requests_total: http.requests_total(),
            sessions: replica.reader().len() as u64,
            cpu_percent,
            memory_bytes: process.resident_bytes.unwrap_or(0),
        };
        if last != Some(load) {
            membership.set_load(load).await;
            last = Some(load);
        }
    }
}

/// Publishes in gossip whether the HTTP port accepts connections (with one log line per change), so
/// that members route around a node out of file descriptors and back to it once it recovers.
pub(super) async fn publish_accepting(
    accept: Arc<AcceptHealth>,
    membership: Arc<Membership>,
    stop: CancellationToken,
) {
    let mut published = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(ACCEPTING_EVERY) => {}
        }
        let health = accept.check();
        if health.is_ok() != published {
            published = health.is_ok();
            match health {
                Ok(()) => info!("HTTP connections accepted again; ready"),
                Err(why) => warn!("not ready, routing elsewhere: {why}"),
            }
            membership.set_accepting(published).await;
        }
    }
}
