//! Webhook delivery: notifications POSTed with an Alertmanager-compatible body (version 4), each
//! tried a few times with backoff, then dropped with a warning.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::AlertStats;
use super::Outgoing;
use super::rules::Notification;
use crate::client::{ExchangeError, HttpClient};
use crate::clock::rfc3339;

/// Attempts per webhook and notification.
const ATTEMPTS: u32 = 4;
/// Wait before the second attempt; doubled before each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Time one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(3);

/// What the delivery task needs besides the queue.
pub(super) struct Delivery {
    pub(super) client: HttpClient,
    /// This node's name, sent in every notification.
    pub(super) node: String,
    pub(super) cluster_id: String,
    pub(super) external_url: String,
    /// Counts each notification sent or failed, for `/metrics`.
    pub(super) stats: Arc<AlertStats>,
}

pub(super) async fn deliver(
    delivery: Delivery,
    mut pending: mpsc::Receiver<Outgoing>,
    shutdown: CancellationToken,
) {
    let me = delivery.node.clone();
    loop {
        let Outgoing {
            notification,
            config,
        } = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = pending.recv() => match next {
                Some(outgoing) => outgoing,
                None => return,
            },
        };
        let Some(alerts) = config.alerts.as_ref() else {
            continue;
        };
        let body = webhook_body(
            &notification,
            &alerts.receiver,
            &delivery.cluster_id,
            &me,
            &delivery.external_url,
        );
        let body = Bytes::from(body.to_string());
        for url in &alerts.webhooks {
            let sent = tokio::select! {
                _ = shutdown.cancelled() => return,
                sent = post_with_retries(&delivery.client, url, body.clone()) => sent,
            };
            match sent {
                Ok(()) => debug!(node = %me, webhook = %url, "alert notification delivered"),
                Err(ref why) => warn!(
                    node = %me,
                    webhook = %url,
                    alert = %notification.rule_name,
                    "alert notification dropped after {ATTEMPTS} attempts: {why}"
                ),
            }
            delivery.stats.count(notification.status, sent.is_ok());
        }
    }
}

async fn post_with_retries(client: &HttpClient, url: &str, body: Bytes) -> Result<(), String> {
    let mut backoff = FIRST_BACKOFF;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match post_json(client, url, body.clone()).await {
            Ok(()) => return Ok(()),
            Err(why) => last = why,
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    Err(last)
}

async fn post_json(client: &HttpClient, url: &str, body: Bytes) -> Result<(), String> {
    let request = hyper::Request::post(url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "micro-tomcat-alerts")
        .body(Full::new(body))
        .map_err(|err| format!("bad request: {err}"))?;
    // The answer's status decides; a body that breaks off does not undo a 2xx.
    let status = match client.exchange(request, POST_TIMEOUT).await {
        Ok((status, _)) | Err(ExchangeError::Body { status, .. }) => status,
        Err(ExchangeError::Send(err)) => return Err(format!("cannot reach: {err}")),
        Err(ExchangeError::Timeout(_)) => return Err(format!("no answer within {POST_TIMEOUT:?}")),
    };
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

/// The Alertmanager webhook body (version 4) for one notification.
pub fn webhook_body(
    notification: &Notification,
    receiver: &str,
    cluster_id: &str,
    reported_by: &str,
    external_url: &str,
) -> Value {
    let mut labels = BTreeMap::new();
    labels.insert("alertname", notification.rule_name.clone());
    labels.insert("cluster", cluster_id.to_string());
    labels.insert("severity", notification.severity.to_string());
    if let Some(member) = &notification.key.member {
        labels.insert("member", member.clone());
    }
    let mut group_labels = BTreeMap::new();
    group_labels.insert("alertname", notification.rule_name.clone());
    let annotations = json!({
        "summary": notification.summary,
        "reported_by": reported_by,
    });
    let status = notification.status.as_str();
    let fingerprint = format!("{:016x}", fingerprint(&labels));
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{}\"}}", notification.rule_name),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": external_url,
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": rfc3339(notification.starts_at_ms),
            // Alertmanager's zero time means "not ended".
            "endsAt": notification.ends_at_ms.map_or_else(|| "0001-01-01T00:00:00Z".to_string(), rfc3339),
            "generatorURL": external_url,
            "fingerprint": fingerprint,
        }],
    })
}

/// A stable hash of the label set (FNV-1a), as Alertmanager's fingerprint identifies an alert.
fn fingerprint(labels: &BTreeMap<&str, String>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, value) in labels {
        for byte in name
            .bytes()
            .chain([0xff])
            .chain(value.bytes())
            .chain([0xff])
        {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::ops::alerts::rules::{AlertKey, AlertStatus};

    #[test]
    fn body_is_alertmanager_shaped() {
        let notification = Notification {
            status: AlertStatus::Resolved,
            key: AlertKey {
                rule: "member-down".into(),
                member: Some("node-2".into()),
            },
            rule_name: "member-down".into(),
            severity: "critical",
            summary: "member node-2 is down".into(),
            starts_at_ms: 1_767_225_600_123,
            ends_at_ms: Some(1_767_225_660_000),
        };
        let body = webhook_body(&notification, "ops", "demo", "node-1", "http://h/console");
        assert_eq!(body["version"], "4");
        assert_eq!(body["status"], "resolved");
        assert_eq!(body["receiver"], "ops");
        assert_eq!(body["groupKey"], "{}:{alertname=\"member-down\"}");
        let alert = &body["alerts"][0];
        assert_eq!(alert["status"], "resolved");
        assert_eq!(alert["labels"]["alertname"], "member-down");
        assert_eq!(alert["labels"]["member"], "node-2");
        assert_eq!(alert["labels"]["cluster"], "demo");
        assert_eq!(alert["annotations"]["summary"], "member node-2 is down");
        assert_eq!(alert["startsAt"], "2026-01-01T00:00:00.123Z");
        assert_eq!(alert["endsAt"], "2026-01-01T00:01:00.000Z");
        assert_eq!(alert["fingerprint"].as_str().map(str::len), Some(16));
        let firing = Notification {
            status: AlertStatus::Firing,
            ends_at_ms: None,
            ..notification
        };
        let body = webhook_body(&firing, "ops", "demo", "node-1", "http://h/console");
        assert_eq!(body["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    }

    #[tokio::test]
    async fn a_webhook_that_fails_at_first_gets_the_notification_on_a_retry() {
        use axum::http::StatusCode;
        let calls = std::sync::Arc::new(AtomicU64::new(0));
        let counted = calls.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                let calls = counted.clone();
                async move {
                    match calls.fetch_add(1, Ordering::SeqCst) {
                        0 | 1 => StatusCode::SERVICE_UNAVAILABLE,
                        _ => StatusCode::OK,
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let client = HttpClient::new();
        post_with_retries(&client, &url, Bytes::from_static(b"{}"))
            .await
            .expect("delivered on the third attempt");
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        // Nobody listens: every attempt fails, and the error says why.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let gone = format!("http://{}/hook", closed.local_addr().expect("addr"));
        drop(closed);
        let err = post_with_retries(&client, &gone, Bytes::from_static(b"{}"))
            .await
            .expect_err("nobody listens");
        assert!(err.contains("cannot reach"), "{err}");
    }
}
