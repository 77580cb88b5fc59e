//! Observability with real processes: `/metrics` is clean under `promtool check metrics` and moves with
//! traffic, the shipped Prometheus rules pass their `promtool` tests, and the in-node alerts notify a
//! webhook exactly once per firing and resolution of a killed member.
//!
//! `promtool` comes from the Debian package `prometheus` (`.ci/run` installs it).

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Cluster, WebhookReceiver, wait_for};

const RAFT: &str = r#"<raft data-dir="data" voters="3"/>"#;

fn promtool() -> Command {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "promtool is not installed; install the Debian package `prometheus` (.ci/run does)"
    );
    Command::new("promtool")
}

/// Runs `promtool check metrics` on `text`: (exit success, everything it printed).
fn check_metrics(text: &str) -> (bool, String) {
    let mut child = promtool()
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let output = child.wait_with_output().expect("promtool output");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

/// Every sample of a scrape, keyed by the series as printed (`name{labels}`).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(cluster: &Cluster, node: &str) -> Option<String> {
    let url = format!("{}/metrics", cluster.nodes[node].url());
    let response = cluster.client.get(url).send().await.ok()?;
    if response.status() != 200 {
        return None;
    }
    response.text().await.ok()
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    match samples.get(series) {
        Some(value) => *value,
        None => panic!("no series {series} in the scrape"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_promtool_clean_and_follow_the_traffic() {
    // With periodic backups, so their figures are checked too (the leader writes one at once).
    let mut cluster = Cluster::with_elements(
        3,
        &format!(r#"{RAFT}<backup dir="backups" interval-seconds="3600" keep="1"/>"#),
    );
    cluster.start_all();
    cluster.wait_all_up(3, Duration::from_secs(20)).await;
    cluster.wait_ready(Duration::from_secs(30)).await;
    cluster.wait_leader(Duration::from_secs(20)).await;
    let node = cluster.nodes["node-1"].url();

    let before = samples(&scrape(&cluster, "node-1").await.expect("scrape"));
    for _ in 0..5 {
        let response = cluster
            .client
            .get(format!("{node}/app/counter"))
            .send()
            .await
            .expect("counter");
        assert_eq!(response.status(), 200);
    }
    let id = cluster
        .create_session("node-1", &serde_json::json!({ "user": "ann" }))
        .await
        .expect("session created");
    assert!(cluster.session_data("node-1", &id).await.is_some());
    let deleted = cluster
        .client
        .delete(format!("{node}/api/sessions/{id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 204);
    let missing = cluster
        .client
        .get(format!("{node}/no/such/page"))
        .send()
        .await
        .expect("404 page");
    assert_eq!(missing.status(), 404);

    let text = scrape(&cluster, "node-1").await.expect("scrape");
    let (ok, printed) = check_metrics(&text);
    assert!(ok, "promtool check metrics failed:\n{printed}\n---\n{text}");
    assert!(
        printed.trim().is_empty(),
        "promtool check metrics has lint findings:\n{printed}"
    );
    assert!(
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .all(|line| line.starts_with("micro_tomcat_")),
        "every metric is prefixed micro_tomcat_"
    );

    let after = samples(&text);
    let app_ok = r#"micro_tomcat_http_requests_total{route="app",status="2xx"}"#;
    assert!(value(&after, app_ok) >= value(&before, app_ok) + 5.0);
    let api_created = r#"micro_tomcat_http_requests_total{route="sessions_api",status="2xx"}"#;
    assert!(value(&after, api_created) >= 3.0, "POST, GET and DELETE");
    assert!(
        value(
            &after,
            r#"micro_tomcat_http_requests_total{route="other",status="4xx"}"#
        ) >= 1.0
    );
    assert!(
        value(
            &after,
            r#"micro_tomcat_http_request_duration_seconds_count{route="app"}"#
        ) >= value(&after, app_ok)
    );
    assert!(value(&after, "micro_tomcat_sessions_created_total") >= 1.0);
    assert!(value(&after, "micro_tomcat_sessions_deleted_total") >= 1.0);
    assert!(value(&after, "micro_tomcat_http_response_body_bytes_total") > 0.0);
    assert!(value(&after, "micro_tomcat_http_connections_total") >= 1.0);
    assert!(
        value(&after, "micro_tomcat_http_requests_in_flight") >= 1.0,
        "the scrape itself"
    );
    for member in ["node-1", "node-2", "node-3"] {
        assert_eq!(
            value(
                &after,
                &format!("micro_tomcat_member_up{{member=\"{member}\"}}")
            ),
            1.0
        );
    }
    assert!(
        value(
            &after,
            r#"micro_tomcat_gossip_bytes_total{direction="sent"}"#
        ) > 0.0
    );
    assert!(
        value(
            &after,
            r#"micro_tomcat_gossip_datagrams_total{direction="received"}"#
        ) > 0.0
    );
    assert!(
        value(
            &after,
            r#"micro_tomcat_peer_rpc_bytes_total{direction="sent"}"#
        ) > 0.0
    );
    assert!(
        value(
            &after,
            r#"micro_tomcat_membership_events_total{kind="node_up"}"#
        ) >= 2.0
    );
    assert!(value(&after, "micro_tomcat_raft_term") >= 1.0);
    assert!(value(&after, "micro_tomcat_raft_applied_index") >= 1.0);
    assert_eq!(value(&after, "micro_tomcat_raft_has_leader"), 1.0);
    assert_eq!(value(&after, "micro_tomcat_raft_voters"), 3.0);
    assert!(value(&after, "micro_tomcat_process_cpu_seconds_total") > 0.0);
    assert!(value(&after, "micro_tomcat_process_resident_memory_bytes") > 1e6);

    // Exactly one node is the leader, by its own metrics.
    let mut leaders = 0.0;
    for name in ["node-1", "node-2", "node-3"] {
        let scrape = samples(&scrape(&cluster, name).await.expect("scrape"));
        leaders += value(&scrape, "micro_tomcat_raft_is_leader");
    }
    assert_eq!(leaders, 1.0);

    let (writer, text) = wait_for(
        "a periodic backup written",
        Duration::from_secs(20),
        || async {
            for name in ["node-1", "node-2", "node-3"] {
                let text = scrape(&cluster, name).await?;
                let written = samples(&text)
                    .get(r#"micro_tomcat_backups_total{outcome="written"}"#)
                    .copied();
                if written >= Some(1.0) {
                    return Some((name, text));
                }
            }
            None
        },
    )
    .await;
    let (ok, printed) = check_metrics(&text);
    assert!(
        ok && printed.trim().is_empty(),
        "{writer}: {printed}\n---\n{text}"
    );
    assert!(
        value(
            &samples(&text),
            "micro_tomcat_backup_last_written_timestamp_seconds"
        ) > 1e9
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_turned_off() {
    let mut cluster = Cluster::with_elements(
        1,
        r#"<raft data-dir="data" voters="1"/><metrics enabled="false"/>"#,
    );
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(30)).await;
    let node = cluster.nodes["node-1"].url();
    let metrics = cluster
        .client
        .get(format!("{node}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(metrics.status(), 404);
    let hello = cluster
        .client
        .get(format!("{node}/app/hello"))
        .send()
        .await
        .expect("hello");
    assert_eq!(hello.status(), 200);
}

#[test]
fn shipped_alert_rules_pass_their_promtool_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/monitoring");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        let output = promtool()
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run promtool");
        assert!(
            output.status.success(),
            "promtool {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_fires_one_alert_and_resolves_it_once() {
    let receiver = WebhookReceiver::start().await;
    let mut cluster = Cluster::with_elements(
        3,
        &format!(
            r#"{RAFT}
  <alerts interval-ms="200" receiver="test">
    <rule name="member-down" kind="member-down"/>
    <rule name="no-leader" kind="no-leader" for-ms="5000"/>
    <webhook url="{}"/>
  </alerts>"#,
            receiver.url
        ),
    );
    cluster.start_all();
    cluster.wait_all_up(3, Duration::from_secs(20)).await;
    cluster.wait_ready(Duration::from_secs(30)).await;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let victim = ["node-1", "node-2", "node-3"]
        .into_iter()
        .find(|name| *name != leader)
        .expect("a follower")
        .to_string();
    assert!(
        receiver.alerts().is_empty(),
        "a healthy cluster raises nothing"
    );

    cluster.kill9(&victim);
    let firing = (
        "firing".to_string(),
        "member-down".to_string(),
        victim.clone(),
    );
    wait_for(
        "a firing member-down notification",
        Duration::from_secs(20),
        || async { receiver.alerts().contains(&firing).then_some(()) },
    )
    .await;

    cluster.start(&victim);
    let resolved = (
        "resolved".to_string(),
        "member-down".to_string(),
        victim.clone(),
    );
    wait_for(
        "a resolved member-down notification",
        Duration::from_secs(30),
        || async { receiver.alerts().contains(&resolved).then_some(()) },
    )
    .await;
    cluster.wait_all_up(3, Duration::from_secs(20)).await;
    cluster.wait_ready(Duration::from_secs(30)).await;
    // Every node's alerting has seen the cluster whole again for several evaluations and the sender
    // counted what it sent: nothing else may still be on its way.
    wait_for(
        "every node's alerts quiet",
        Duration::from_secs(20),
        || async {
            let mut sent = 0.0;
            for name in ["node-1", "node-2", "node-3"] {
                let scrape = samples(&scrape(&cluster, name).await?);
                if scrape.get(r#"micro_tomcat_alerts_firing{alertname="member-down"}"#)
                    != Some(&0.0)
                {
                    return None;
                }
                sent += scrape
                    .iter()
                    .filter(|(series, _)| {
                        series.starts_with("micro_tomcat_alert_notifications_total")
                            && series.contains(r#"outcome="sent""#)
                    })
                    .map(|(_, value)| value)
                    .sum::<f64>();
            }
            (sent == receiver.alerts().len() as f64).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    assert_eq!(
        receiver.alerts(),
        vec![firing, resolved],
        "exactly one firing and one resolved notification"
    );
    for body in receiver.bodies() {
        assert_eq!(body["version"], "4");
        assert_eq!(body["receiver"], "test");
        assert_eq!(body["status"], body["alerts"][0]["status"]);
        assert_eq!(body["groupLabels"]["alertname"], "member-down");
        let alert = &body["alerts"][0];
        assert_eq!(alert["labels"]["cluster"], "test");
        assert!(
            alert["annotations"]["summary"]
                .as_str()
                .is_some_and(|summary| summary.contains(&victim)),
            "{alert}"
        );
        assert!(
            alert["startsAt"]
                .as_str()
                .is_some_and(|at| at.ends_with('Z'))
        );
        assert!(alert["endsAt"].is_string());
    }
}
