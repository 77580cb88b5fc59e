//! Configuration reload with a real process: SIGHUP and the admin endpoint, valid and invalid files.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Cluster, wait_for};
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(30);

async fn strategy(cluster: &Cluster) -> Option<Value> {
    let status = cluster.status("node-1").await?;
    Some(status["balancer"]["strategy"].clone())
}

fn rewrite(cluster: &Cluster, from: &str, to: &str) {
    let text = std::fs::read_to_string(&cluster.config).expect("config");
    assert!(text.contains(from), "{from} not in {text}");
    std::fs::write(&cluster.config, text.replace(from, to)).expect("write config");
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
