//! Prometheus metrics: `GET /metrics` in the text format (0.0.4), every name prefixed `micro_tomcat_`.
//!
//! Request figures are counted as they happen ([`http`]); everything else (membership, Raft, sessions,
//! routing, traffic, the process) is read from its owner when scraped, so nothing is kept twice and a
//! scrape shows the state of that instant. Labels are bounded: route and status classes, member names
//! (bounded by the cluster), event kinds, alert names; never a session id or a path.

pub mod http;
pub mod process;

use std::fmt;
use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::events::EventLog;
use crate::membership::{MemberState, Membership};
use crate::ops::alerts::AlertStats;
use crate::ops::backup::BackupStats;
use crate::ops::reload::LiveSettings;
use crate::raft::replica::Replica;
use crate::routing::Routing;
use http::{AcceptError, ConnectionTimeout, HttpMetrics, RouteClass, STATUS_CLASSES};
use process::ProcessStats;

/// The prefix of every metric name.
pub const PREFIX: &str = "micro_tomcat";

/// This node's own counters: what is not kept by another part of the node.
#[derive(Debug)]
pub struct Metrics {
    enabled: bool,
    http: &'static HttpMetrics,
    alerts: Arc<AlertStats>,
    backups: Arc<BackupStats>,
}

impl Metrics {
    /// Counters for a node; `enabled` false serves no `/metrics` (the middleware is not installed).
    pub fn new(enabled: bool) -> Metrics {
        Metrics {
            enabled,
            // Leaked on purpose (about 20 KiB, once per node started): the request path then counts
            // without touching a reference count, which would be one more cache line shared by
            // every core on every request.
            http: Box::leak(Box::default()),
            alerts: Arc::default(),
            backups: Arc::default(),
        }
    }

    /// Whether requests are measured and `/metrics` is served.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The request figures.
    pub fn http(&self) -> &'static HttpMetrics {
        self.http
    }

    /// What alerting did (the evaluator counts into it).
    pub fn alerts(&self) -> &Arc<AlertStats> {
        &self.alerts
    }

    /// What periodic backups did (the writer counts into it).
    pub fn backups(&self) -> &Arc<BackupStats> {
        &self.backups
    }
}

/// What a scrape reads, each from its owner: nothing is kept twice.
pub struct MetricsInputs {
    /// This node's name (its own row of the routing figures).
    pub node: String,
    /// This node's own counters.
    pub metrics: Arc<Metrics>,
    /// The membership view and the gossip traffic.
    pub membership: Arc<Membership>,
    /// Event counts by kind.
    pub events: EventLog,
    /// Raft and the session figures.
    pub replica: Arc<Replica>,
    /// The proxy figures.
    pub routing: Arc<Routing>,
    /// The live settings: the create-rate refusals, whether `<alerts>` and `<backup>` are configured.
    pub live: Arc<LiveSettings>,
}

/// `GET /metrics`: the text format, or 404 when metrics are turned off.
pub fn serve(context: &Arc<MetricsInputs>) -> Response {
    if !context.metrics.enabled() {
        return (
            StatusCode::NOT_FOUND,
            "metrics are turned off (<metrics enabled=\"false\"/>)\n",
        )
            .into_response();
    }
    match render(context) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        )
            .into_response(),
    }
}

/// Every metric of this node as of now, in the Prometheus text format.
pub fn render(context: &Arc<MetricsInputs>) -> Result<String, fmt::Error> {
    // A registry per scrape: it holds only the collector, and the collector holds the context only
    // for the scrape (kept in the context, it would keep itself alive).
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(Scrape {
        context: context.clone(),
    }));
    let mut text = String::with_capacity(16 * 1024);
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// Reads every figure at scrape time.
struct Scrape {
    context: Arc<MetricsInputs>,
}

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

type Labels = Vec<(&'static str, String)>;

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs
        .into_iter()
        .map(|(key, value)| (key, value.to_string()))
        .collect()
}

/// Writes metric families; a family without samples is left out (no lone HELP/TYPE lines).
struct Out<'a, 'e> {
    encoder: &'a mut DescriptorEncoder<'e>,
}

impl Out<'_, '_> {
    fn counter(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        self.counters(name, help, vec![(Vec::new(), value)])
    }

    fn counters(&mut self, name: &str, help: &str, rows: Vec<(Labels, u64)>) -> fmt::Result {
        if rows.is_empty() {
            return Ok(());
        }
        // Names are written in full here for grep; the encoder appends `_total` to counters itself.
        let name = name.strip_suffix("_total").unwrap_or(name);
        let mut metric = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in &rows {
            if labels.is_empty() {
                metric.encode_counter::<NoLabelSet, _, u64>(value, None)?;
            } else {
                metric
                    .encode_family(labels)?
                    .encode_counter::<NoLabelSet, _, u64>(value, None)?;
            }
        }
        Ok(())
    }

    fn gauge<V: EncodeGaugeValue>(&mut self, name: &str, help: &str, value: V) -> fmt::Result {
        self.gauges(name, help, vec![(Vec::new(), value)])
    }

    fn gauges<V: EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        rows: Vec<(Labels, V)>,
    ) -> fmt::Result {
        if rows.is_empty() {
            return Ok(());
        }
        let mut metric = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, value) in &rows {
            if labels.is_empty() {
                metric.encode_gauge(value)?;
            } else {
                metric.encode_family(labels)?.encode_gauge(value)?;
            }
        }
        Ok(())
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut out = Out {
            encoder: &mut encoder,
        };
        let context = &self.context;
        out.gauges(
            "build_info",
            "Always 1; the version of micro-tomcat this node runs.",
            vec![(labels([("version", env!("CARGO_PKG_VERSION"))]), 1i64)],
        )?;
        membership(&mut out, context)?;
        process(&mut out)?;
        http_figures(&mut out, context.metrics.http())?;
        latency_histograms(&mut out, context.metrics.http())?;
        sessions(&mut out, context)?;
        traffic(&mut out, context)?;
        raft(&mut out, context)?;
        routing(&mut out, context)?;
        alerting(&mut out, context)?;
        backups(&mut out, context)
    }
}

fn membership(out: &mut Out, context: &MetricsInputs) -> fmt::Result {
    let view = context.membership.view();
    let states = [
        MemberState::Up,
        MemberState::Down,
        MemberState::Draining,
        MemberState::Left,
    ];
    out.gauges(
        "member_up",
        "1 when the member is reachable (up or draining) as this node sees it, 0 when down or left.",
        view.members
            .iter()
            .map(|member| {
                let up = matches!(member.state, MemberState::Up | MemberState::Draining);
                (labels([("member", &member.name)]), i64::from(up))
            })
            .collect(),
    )?;
    out.gauges(
        "member_state",
        "1 for the member's current state (up, down, draining, left) as this node sees it, 0 for the others.",
        view.members
            .iter()
            .flat_map(|member| {
                states.iter().map(move |state| {
                    (
                        labels([("member", &member.name), ("state", state.as_str())]),
                        i64::from(member.state == *state),
                    )
                })
            })
            .collect(),
    )?;
    out.counters(
        "membership_events_total",
        "Membership and leader events this node recorded, by kind.",
        context
            .events
            .counts()
            .iter()
            .map(|(kind, count)| (labels([("kind", kind.as_str())]), *count))
            .collect(),
    )
}

fn process(out: &mut Out) -> fmt::Result {
    let stats = ProcessStats::read();
    if let Some(seconds) = stats.cpu_seconds {
        let mut metric = out.encoder.encode_descriptor(
            // The encoder appends `_total`.
            "process_cpu_seconds",
            "User and system CPU time this process used.",
            None,
            MetricType::Counter,
        )?;
        metric.encode_counter::<NoLabelSet, _, u64>(&seconds, None)?;
    }
    if let Some(bytes) = stats.resident_bytes {
        out.gauge(
            "process_resident_memory_bytes",
            "Resident memory of this process.",
            bytes,
        )?;
    }
    if let Some(fds) = stats.open_fds {
        out.gauge(
            "process_open_fds",
            "Open file descriptors of this process (files and sockets).",
            fds,
        )?;
    }
    Ok(())
}

fn http_figures(out: &mut Out, http: &HttpMetrics) -> fmt::Result {
    out.gauge(
        "http_connections_open",
        "HTTP connections open on the --http port now.",
        http.connections_open(),
    )?;
    out.counter(
        "http_connections_total",
        "HTTP connections accepted on the --http port.",
        http.connections_total(),
    )?;
    out.counter(
        "http_connections_refused",
        "HTTP connections closed at once because <http max-connections> were open.",
        http.connections_refused(),
    )?;
    out.counters(
        "http_connections_timed_out",
        "HTTP connections closed for sending no whole request head in time (header) or no request while kept alive (idle).",
        ConnectionTimeout::ALL
            .into_iter()
            .map(|timeout| (labels([("phase", timeout.as_str())]), http.timed_out(timeout)))
            .collect(),
    )?;
    out.counters(
        "http_accept_errors",
        "Failed accepts on the --http port, by kind (file_descriptors, memory, connection, other).",
        AcceptError::ALL
            .into_iter()
            .map(|kind| (labels([("kind", kind.as_str())]), http.accept_errors(kind)))
            .collect(),
    )?;
    out.gauge(
        "http_requests_in_flight",
        "HTTP requests being handled now.",
        http.in_flight(),
    )?;
    let mut rows = Vec::new();
    for class in RouteClass::ALL {
        for (index, status) in STATUS_CLASSES.iter().enumerate() {
            rows.push((
                labels([("route", class.as_str()), ("status", status)]),
                http.requests(class, index),
            ));
        }
    }
    out.counters(
        "http_requests_total",
        "HTTP requests answered, by route class and status class.",
        rows,
    )?;
    out.counter(
        "http_request_body_bytes_total",
        "Request body bytes received, for requests whose size was known up front.",
        http.request_body_bytes(),
    )?;
    out.counter(
        "http_response_body_bytes_total",
        "Response body bytes sent, for responses whose size was known up front (not streams).",
        http.response_body_bytes(),
    )
}

fn latency_histograms(out: &mut Out, http: &HttpMetrics) -> fmt::Result {
    let mut metric = out.encoder.encode_descriptor(
        "http_request_duration_seconds",
        "Time from receiving a request to its response head, by route class.",
        None,
        MetricType::Histogram,
    )?;
    for class in RouteClass::ALL {
        let snapshot = http.latency(class);
        let route = labels([("route", class.as_str())]);
        metric
            .encode_family(&route)?
            .encode_histogram::<NoLabelSet>(
                snapshot.sum_seconds,
                snapshot.count,
                &snapshot.per_bucket(),
                None,
            )?;
    }
    Ok(())
}

fn sessions(out: &mut Out, context: &MetricsInputs) -> fmt::Result {
    let replica = &context.replica;
    out.gauge(
        "sessions_active",
        "Sessions held by this node's replica of the session store.",
        replica.reader().len() as u64,
    )?;
    out.counter(
        "sessions_created_total",
        "Sessions created through this node.",
        replica.created_total(),
    )?;
    out.counters(
        "sessions_refused_total",
        "Session creates refused through this node: the cluster held <sessions max-active> \
         (reason max_active, answered 503), or the client created sessions faster than \
         create-rate-per-ip (reason rate, answered 429).",
        vec![
            (
                labels([("reason", "max_active")]),
                replica.refused_full_total(),
            ),
            (
                labels([("reason", "rate")]),
                context.live.create_rate.refused_total(),
            ),
        ],
    )?;
    out.counter(
        "sessions_deleted_total",
        "Sessions deleted through this node.",
        replica.deleted_total(),
    )?;
    out.counter(
        "sessions_expired_total",
        "Sessions this node expired while Raft leader.",
        replica.expired_total(),
    )
}

fn traffic(out: &mut Out, context: &MetricsInputs) -> fmt::Result {
    let gossip = context.membership.traffic();
    let direction = |sent: u64, received: u64| {
        vec![
            (labels([("direction", "sent")]), sent),
            (labels([("direction", "received")]), received),
        ]
    };
    out.counters(
        "gossip_bytes_total",
        "Gossip (UDP) payload bytes.",
        direction(gossip.bytes_sent, gossip.bytes_received),
    )?;
    out.counters(
        "gossip_datagrams_total",
        "Gossip (UDP) datagrams.",
        direction(gossip.datagrams_sent, gossip.datagrams_received),
    )?;
    out.counter(
        "gossip_datagrams_rejected_total",
        "Gossip datagrams dropped: under another cluster key or none, tampered with, oversized, or not chitchat.",
        gossip.datagrams_rejected,
    )?;
    let (bytes_sent, bytes_received, frames_sent, frames_received) =
        crate::peer::PEER_TRAFFIC.snapshot();
    out.counters(
        "peer_rpc_bytes_total",
        "Peer RPC (Raft and forwarded writes, TCP) bytes, frame headers included.",
        direction(bytes_sent, bytes_received),
    )?;
    out.counters(
        "peer_rpc_frames_total",
        "Peer RPC frames.",
        direction(frames_sent, frames_received),
    )
}

fn raft(out: &mut Out, context: &MetricsInputs) -> fmt::Result {
    let raft = context.replica.status();
    out.gauge("raft_term", "Current Raft term.", raft.term)?;
    out.gauge(
        "raft_last_log_index",
        "Index of the last entry in this node's Raft log.",
        raft.last_log_index.unwrap_or(0),
    )?;
    out.gauge(
        "raft_applied_index",
        "Index of the last entry applied to this node's session state machine (committed entries only).",
        raft.applied_index.unwrap_or(0),
    )?;
    out.gauge(
        "raft_is_leader",
        "1 when this node is the Raft leader.",
        i64::from(raft.is_leader()),
    )?;
    out.gauge(
        "raft_has_leader",
        "1 when this node knows a current Raft leader.",
        i64::from(raft.leader.is_some()),
    )?;
    out.gauge(
        "raft_voters",
        "Voters in the Raft configuration.",
        raft.voters.len() as u64,
    )?;
    out.gauge(
        "raft_learners",
        "Learners in the Raft configuration.",
        raft.learners.len() as u64,
    )
}

fn routing(out: &mut Out, context: &MetricsInputs) -> fmt::Result {
    let routing = &context.routing;
    let me = &context.node;
    let stats = routing.stats();
    let others: Vec<_> = stats.iter().filter(|target| &target.name != me).collect();
    out.counter(
        "requests_served_locally_total",
        "Application requests the router served on this node rather than proxying.",
        stats
            .iter()
            .find(|target| &target.name == me)
            .map_or(0, |target| target.proxied),
    )?;
    out.counters(
        "proxy_requests_total",
        "Proxy attempts to another member, by member and outcome (success or failure).",
        others
            .iter()
            .flat_map(|target| {
                [
                    (
                        labels([("member", &target.name), ("outcome", "success")]),
                        target.proxied.saturating_sub(target.failures),
                    ),
                    (
                        labels([("member", &target.name), ("outcome", "failure")]),
                        target.failures,
                    ),
                ]
            })
            .collect(),
    )?;
    out.counter(
        "proxy_retries_total",
        "Attempts on a next member after the previous one failed.",
        routing.retries(),
    )?;
    out.counter(
        "proxy_untrusted_hop_headers_total",
        "Hop headers removed (and the requests routed) because neither a hop channel nor a member's gossiped token vouched for them.",
        routing.untrusted_hop_headers(),
    )?;
    out.gauges(
        "proxy_requests_in_flight",
        "Requests this node is proxying to each member now.",
        others
            .iter()
            .map(|target| (labels([("member", &target.name)]), target.in_flight as u64))
            .collect(),
    )?;
    out.gauges(
        "proxy_member_ejected",
        "1 while a member is ejected locally after repeated proxy failures.",
        others
            .iter()
            .map(|target| {
                (
                    labels([("member", &target.name)]),
                    i64::from(target.ejected),
                )
            })
            .collect(),
    )
}

fn alerting(out: &mut Out, context: &MetricsInputs) -> fmt::Result {
    let stats = context.metrics.alerts();
    out.gauges(
        "alerts_firing",
        "Alerts firing now as this node evaluates its <alerts> rules, by rule.",
        stats
            .firing()
            .into_iter()
            .map(|(name, count)| (labels([("alertname", &name)]), count))
            .collect(),
    )?;
    let configured = context.live.cluster.load().alerts.is_some();
    out.counters(
        "alert_notifications_total",
        "Alert notifications this node POSTed to webhooks, by status and outcome (sent, or failed after retries).",
        if configured {
            stats
                .notifications()
                .into_iter()
                .map(|(status, outcome, count)| {
                    (labels([("status", status), ("outcome", outcome)]), count)
                })
                .collect()
        } else {
            Vec::new()
        },
    )
}

fn backups(out: &mut Out, context: &MetricsInputs) -> fmt::Result {
    let stats = context.metrics.backups();
    let configured = context.live.cluster.load().backup.is_some();
    if !configured && stats.written() == 0 && stats.failed() == 0 {
        return Ok(());
    }
    out.counters(
        "backups_total",
        "Periodic backups (<backup>) this node wrote as the Raft leader, by outcome (written, failed).",
        vec![
            (labels([("outcome", "written")]), stats.written()),
            (labels([("outcome", "failed")]), stats.failed()),
        ],
    )?;
    let last = stats.last_written_ms();
    if last > 0 {
        out.gauge(
            "backup_last_written_timestamp_seconds",
            "When this node last wrote a periodic backup (Unix time).",
            last as f64 / 1000.0,
        )?;
    }
    Ok(())
}
