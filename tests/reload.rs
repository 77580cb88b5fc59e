//! Configuration reload with real processes: SIGHUP and the admin endpoint, valid and invalid files,
//! alert rules and proxy timeouts changed live.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Cluster, WebhookReceiver, wait_for};
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(30);

async fn strategy(cluster: &Cluster) -> Option<Value> {
    let status = cluster.status("node-1").await?;
    Some(status["balancer"]["strategy"].clone())
}

fn rewrite(cluster: &Cluster, from: &str, to: &str) {
    cluster.rewrite_config(from, to);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunables_apply_live_and_an_invalid_file_changes_nothing() {
    let mut cluster = Cluster::with_elements(
        1,
        r#"<raft data-dir="data" voters="1"/><sessions ttl-seconds="1800"/><balancer strategy="consistent-hash"/>"#,
    );
    cluster.start_all();
    cluster.wait_ready(READY).await;
    let base = cluster.nodes["node-1"].url();
    assert_eq!(strategy(&cluster).await, Some(json!("consistent-hash")));

    // SIGHUP with new tunables and a change that needs a restart.
    rewrite(
        &cluster,
        r#"strategy="consistent-hash""#,
        r#"strategy="round-robin" retries="1""#,
    );
    rewrite(&cluster, r#"ttl-seconds="1800""#, r#"ttl-seconds="60""#);
    rewrite(&cluster, r#"interval-ms="150""#, r#"interval-ms="200""#);
    let pid = cluster.nodes["node-1"]
        .child
        .as_ref()
        .expect("running")
        .id();
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    wait_for(
        "round-robin after SIGHUP",
        Duration::from_secs(10),
        || async { (strategy(&cluster).await? == json!("round-robin")).then_some(()) },
    )
    .await;
    let events = cluster.events("node-1").await;
    let reloaded: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "config_reloaded")
        .collect();
    assert_eq!(reloaded.len(), 1, "{events:?}");
    let reason = reloaded[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("round-robin") && reason.contains("session ttl 1800s -> 60s"),
        "{reason}"
    );
    assert!(
        reason.contains("needs a restart") && reason.contains("<gossip>"),
        "{reason}"
    );

    let response = cluster
        .client
        .post(format!("{base}/api/sessions"))
        .json(&json!({}))
        .send()
        .await
        .expect("post");
    let doc: Value = response.json().await.expect("json");
    let lifetime =
        doc["expires_at_ms"].as_u64().unwrap_or(0) - doc["created_ms"].as_u64().unwrap_or(0);
    assert_eq!(
        lifetime, 60_000,
        "the new TTL applies to new sessions: {doc}"
    );

    // An invalid file is refused through the endpoint; the running configuration stays.
    rewrite(
        &cluster,
        r#"strategy="round-robin""#,
        r#"strategy="fastest""#,
    );
    let response = cluster
        .client
        .post(format!("{base}/cluster/config/reload"))
        .send()
        .await
        .expect("reload");
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.expect("json");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("strategy"),
        "{answer}"
    );
    assert_eq!(strategy(&cluster).await, Some(json!("round-robin")));
    let log = std::fs::read_to_string(&cluster.nodes["node-1"].log).unwrap_or_default();
    assert!(log.contains("keeping the running configuration"), "{log}");

    // The log level is a tunable too.
    rewrite(
        &cluster,
        r#"strategy="fastest""#,
        r#"strategy="least-connections""#,
    );
    rewrite(&cluster, "<nodes>", r#"<logging level="debug"/><nodes>"#);
    let response = cluster
        .client
        .post(format!("{base}/cluster/config/reload"))
        .send()
        .await
        .expect("reload");
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("json");
    let changes = answer["changes"].as_str().unwrap_or_default();
    assert!(
        changes.contains("least-connections") && changes.contains("log level"),
        "{answer}"
    );
    assert_eq!(strategy(&cluster).await, Some(json!("least-connections")));
    let events = cluster.events("node-1").await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e["kind"] == "config_reloaded")
            .count(),
        2
    );
}

/// `(status, alertname, member)` as the webhook receiver reports them.
fn alert(status: &str, name: &str) -> (String, String, String) {
    (status.to_string(), name.to_string(), String::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_are_added_changed_and_removed_live() {
    let receiver = WebhookReceiver::start().await;
    let mut cluster = Cluster::with_elements(1, r#"<raft data-dir="data" voters="1"/>"#);
    cluster.start_all();
    cluster.wait_ready(READY).await;
    let firing_gauge = r#"micro_tomcat_alerts_firing{alertname="mem"}"#;
    let gauge = |want: f64| {
        let cluster = &cluster;
        async move { (cluster.metric("node-1", firing_gauge).await? == want).then_some(()) }
    };

    // <alerts> added to a node that started without it. The process always uses more than 1 MiB, so
    // the rule holds at once; its for-ms (a day) keeps it pending.
    rewrite(
        &cluster,
        "<nodes>",
        &format!(
            r#"<alerts interval-ms="200" receiver="test">
    <rule name="mem" kind="memory" threshold-bytes="1048576" for-ms="86400000"/>
    <webhook url="{}"/>
  </alerts>
  <nodes>"#,
            receiver.url
        ),
    );
    let (status, answer) = cluster.reload("node-1").await;
    assert_eq!(status, 200, "{answer}");
    let changes = answer["changes"].as_str().unwrap_or_default();
    assert!(
        changes.contains("alerts on (1 rules: mem; 1 webhooks)"),
        "{answer}"
    );
    assert!(!changes.contains("restart"), "{answer}");
    wait_for("the mem rule evaluated, pending", READY, || gauge(0.0)).await;

    // A shorter for-ms: the alert fires (it has held since the rule came in).
    rewrite(&cluster, r#"for-ms="86400000""#, r#"for-ms="0""#);
    let (status, answer) = cluster.reload("node-1").await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["changes"].as_str().unwrap_or_default().contains(
            "alert rule mem: memory > 1048576 bytes for 86400000 ms -> memory > 1048576 bytes for 0 ms"
        ),
        "{answer}"
    );
    wait_for("mem fires", READY, || async {
        receiver
            .alerts()
            .contains(&alert("firing", "mem"))
            .then_some(())
    })
    .await;
    wait_for("the firing gauge at 1", READY, || gauge(1.0)).await;

    // A threshold above any process: the alert resolves at the next evaluation.
    rewrite(
        &cluster,
        r#"threshold-bytes="1048576""#,
        r#"threshold-bytes="1125899906842624""#,
    );
    assert_eq!(cluster.reload("node-1").await.0, 200);
    wait_for("mem resolves under the raised threshold", READY, || async {
        receiver
            .alerts()
            .contains(&alert("resolved", "mem"))
            .then_some(())
    })
    .await;
    wait_for("the firing gauge at 0", READY, || gauge(0.0)).await;

    // Back down: it fires again. Then <alerts> is removed while it fires: it resolves at once, sent
    // to the webhook it fired to (the new file has none), and the rule leaves the gauge.
    rewrite(
        &cluster,
        r#"threshold-bytes="1125899906842624""#,
        r#"threshold-bytes="1048576""#,
    );
    assert_eq!(cluster.reload("node-1").await.0, 200);
    wait_for("mem fires again", READY, || async {
        (receiver.alerts().len() == 3).then_some(())
    })
    .await;
    let text = std::fs::read_to_string(&cluster.config).expect("config");
    let start = text.find("<alerts").expect("alerts element");
    let end = text.find("</alerts>").expect("alerts end") + "</alerts>".len();
    std::fs::write(
        &cluster.config,
        format!("{}{}", &text[..start], &text[end..]),
    )
    .expect("write config");
    let (status, answer) = cluster.reload("node-1").await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["changes"]
            .as_str()
            .unwrap_or_default()
            .contains("alerts off (was 1 rules: mem)"),
        "{answer}"
    );
    wait_for("the removed rule's alert resolved", READY, || async {
        (receiver.alerts().len() == 4).then_some(())
    })
    .await;
    assert_eq!(
        receiver.alerts(),
        [
            alert("firing", "mem"),
            alert("resolved", "mem"),
            alert("firing", "mem"),
            alert("resolved", "mem"),
        ]
    );
    let last = receiver.bodies().pop().expect("a body");
    assert_eq!(last["receiver"], "test");
    assert!(
        last["alerts"][0]["annotations"]["summary"]
            .as_str()
            .is_some_and(|summary| summary.contains("config reload")),
        "{last}"
    );
    wait_for("no mem rule in the gauge", READY, || async {
        cluster
            .metric("node-1", firing_gauge)
            .await
            .is_none()
            .then_some(())
    })
    .await;
}

/// The first `MTSESSIONID` value (`key-N`) that `node-1` routes to `owner`.
async fn key_owned_by(cluster: &Cluster, owner: &str) -> String {
    let base = cluster.nodes["node-1"].url();
    for n in 0..200 {
        let key = format!("key-{n}");
        let response = cluster
            .client
            .get(format!("{base}/app/hello"))
            .header("cookie", format!("MTSESSIONID={key}"))
            .send()
            .await
            .expect("hello");
        if response.headers()["x-served-by"] == owner {
            return key;
        }
    }
    panic!("no key of 200 is owned by {owner}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_timeouts_apply_to_requests_that_start_after_the_reload() {
    // node-2 serves a named pipe as a static file: opening it waits for a writer that never comes,
    // so a request for it gets no answer, while node-2 stays healthy in every other way.
    let docroot = tempfile::tempdir().expect("docroot");
    let pipe = docroot.path().join("slow");
    let made = Command::new("mkfifo").arg(&pipe).status().expect("mkfifo");
    assert!(made.success());
    let mut cluster = Cluster::with_elements(
        2,
        r#"<raft data-dir="data" voters="2"/><balancer strategy="consistent-hash" key="session" retries="0" response-timeout-ms="600000"/>"#,
    );
    let node2 = cluster.nodes.get_mut("node-2").expect("node-2");
    node2.args.push("--docroot".into());
    node2.args.push(docroot.path().display().to_string());
    cluster.start_all();
    cluster.wait_ready(READY).await;
    wait_for("node-1 routes to both members", READY, || async {
        let status = cluster.status("node-1").await?;
        (status["balancer"]["members"].as_array()?.len() == 2).then_some(())
    })
    .await;
    let status = cluster.status("node-1").await.expect("status");
    assert_eq!(status["balancer"]["response_timeout_ms"], 600_000);
    assert_eq!(status["balancer"]["connect_timeout_ms"], 1_000);
    let key = key_owned_by(&cluster, "node-2").await;
    let slow = format!("{}/slow", cluster.nodes["node-1"].url());
    let patient = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("client");

    // Started under the old policy: waits (up to 600 s) for node-2.
    let before = tokio::spawn({
        let (patient, slow, key) = (patient.clone(), slow.clone(), key.clone());
        async move {
            patient
                .get(&slow)
                .header("cookie", format!("MTSESSIONID={key}"))
                .send()
                .await
        }
    });
    let in_flight_to_node2 = || async {
        let status = cluster.status("node-1").await?;
        let targets = status["balancer"]["targets"].as_array()?.clone();
        let row = targets.iter().find(|row| row["name"] == "node-2")?;
        row["in_flight"].as_u64()
    };
    wait_for("the first request in flight to node-2", READY, || async {
        (in_flight_to_node2().await? == 1).then_some(())
    })
    .await;

    rewrite(
        &cluster,
        r#"response-timeout-ms="600000""#,
        r#"connect-timeout-ms="200" response-timeout-ms="300""#,
    );
    let (status, answer) = cluster.reload("node-1").await;
    assert_eq!(status, 200, "{answer}");
    let changes = answer["changes"].as_str().unwrap_or_default();
    assert!(
        changes.contains("proxy connect timeout 1000 ms -> 200 ms")
            && changes.contains("proxy response timeout 600000 ms -> 300 ms"),
        "{answer}"
    );
    let status = cluster.status("node-1").await.expect("status");
    assert_eq!(status["balancer"]["response_timeout_ms"], 300);
    assert_eq!(status["balancer"]["connect_timeout_ms"], 200);

    // Started after the reload: answered 502 once node-2 has been silent for 300 ms.
    let response = patient
        .get(&slow)
        .header("cookie", format!("MTSESSIONID={key}"))
        .send()
        .await
        .expect("an answer from node-1");
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.expect("json");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|error| error.contains("node-2 sent no response within the timeout")),
        "{body}"
    );
    // The request that started before the reload keeps its 600 s and is still waiting.
    assert!(!before.is_finished(), "{:?}", before.await);
    assert_eq!(in_flight_to_node2().await, Some(1));
    before.abort();

    // An invalid file changes nothing.
    rewrite(
        &cluster,
        r#"connect-timeout-ms="200""#,
        r#"connect-timeout-ms="5000""#,
    );
    let (status, answer) = cluster.reload("node-1").await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().is_some_and(
            |error| error.contains("response-timeout-ms must be at least connect-timeout-ms")
        ),
        "{answer}"
    );
    let status = cluster.status("node-1").await.expect("status");
    assert_eq!(status["balancer"]["response_timeout_ms"], 300);
    assert_eq!(status["balancer"]["connect_timeout_ms"], 200);
}
