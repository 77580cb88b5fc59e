//! Security with real processes: the cluster key keeps strangers out of gossip, the admin token
//! guards mutating admin calls, bad secrets stop a node at start, oversized input is refused.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{BIN, Cluster, wait_for};
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(40);
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const OTHER_KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
const TOKEN: &str = "test-admin-token-0123456789";

fn gossip_rejected(status: &Value) -> u64 {
    status["gossip"]["datagrams_rejected"].as_u64().unwrap_or(0)
}

fn is_up(status: &Value, member: &str) -> bool {
    status["members"].as_array().is_some_and(|rows| {
        rows.iter()
            .any(|r| r["name"] == member && r["state"] == "up")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_gossip_key_cannot_join_or_read_and_the_right_key_joins() {
    let mut cluster = Cluster::with_elements(
        3,
        r#"<raft data-dir="data" voters="3"/>
  <security gossip-key-file="gossip.key"/>"#,
    );
    std::fs::write(cluster.path().join("gossip.key"), format!("{KEY}\n")).expect("key file");
    // node-3 has another key: the environment overrides the file.
    cluster
        .nodes
        .get_mut("node-3")
        .expect("node-3")
        .env
        .push(("MICRO_TOMCAT_GOSSIP_KEY".into(), OTHER_KEY.into()));
    cluster.start_all();

    // node-1 and node-2 share the key and find each other; both drop node-3's datagrams, and
    // node-3 drops theirs.
    wait_for(
        "node-1 and node-2 up to each other, node-3's gossip rejected both ways",
        READY,
        || async {
            let one = cluster.status("node-1").await?;
            let two = cluster.status("node-2").await?;
            let three = cluster.status("node-3").await?;
            (is_up(&one, "node-2")
                && is_up(&two, "node-1")
                && gossip_rejected(&one) > 0
                && gossip_rejected(&two) > 0
                && gossip_rejected(&three) > 0)
                .then_some(())
        },
    )
    .await;
    // For several gossip rounds more, nobody ever sees the other side up.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        for viewer in ["node-1", "node-2"] {
            let status = cluster.status(viewer).await.expect("status");
            assert!(!is_up(&status, "node-3"), "{viewer} lists node-3 up");
        }
        let three = cluster.status("node-3").await.expect("status");
        for member in ["node-1", "node-2"] {
            assert!(!is_up(&three, member), "node-3 lists {member} up");
        }
        assert_eq!(
            three["gossip"]["datagrams_received"], 0,
            "node-3 read gossip"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // With the right key node-3 joins, Raft forms over authenticated, encrypted peer RPC, and a
    // session written through one node is read through another.
    cluster.kill9("node-3");
    cluster.nodes.get_mut("node-3").expect("node-3").env.clear();
    cluster.start("node-3");
    cluster.wait_all_up(3, READY).await;
    cluster.wait_ready(READY).await;
    let ann = json!({"user": "ann"});
    let id = wait_for("a session created through node-3", READY, || {
        cluster.create_session("node-3", &ann)
    })
    .await;
    let data = wait_for("the session read through node-1", READY, || {
        cluster.session_data("node-1", &id)
    })
    .await;
    assert_eq!(data, ann);

    for name in ["node-1", "node-2", "node-3"] {
        let log = std::fs::read_to_string(&cluster.nodes[name].log).expect("log");
        assert!(
            !log.contains(KEY) && !log.contains(OTHER_KEY),
            "{name} logged a key"
        );
        assert!(
            log.contains("security: gossip sealed"),
            "{name}: no startup line"
        );
    }
    let log = std::fs::read_to_string(&cluster.nodes["node-1"].log).expect("log");
    assert!(
        log.contains("dropped gossip datagram"),
        "node-1 did not log the refused datagrams"
    );
}

async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = client.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("answer");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        headers,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_need_the_token_reads_do_not() {
    let mut cluster = Cluster::with_elements(
        2,
        r#"<raft data-dir="data" voters="3"/>
  <sessions max-bytes="2048"/>
  <security admin-token-file="admin.token" allow-open-peers="true"/>"#,
    );
    std::fs::write(cluster.path().join("admin.token"), format!("{TOKEN}\n")).expect("token");
    cluster.start_all();
    cluster.wait_ready(READY).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let one = cluster.nodes["node-1"].url();
    let two = cluster.nodes["node-2"].url();
    let sessions = format!("{one}/api/sessions");
    let data = json!({"cart": [1, 2]});

    let (status, body, headers) =
        send(&client, reqwest::Method::POST, &sessions, None, Some(&data)).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("Bearer")),
        "{body}"
    );
    assert!(
        headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer"))
    );
    let (status, body, _) = send(
        &client,
        reqwest::Method::POST,
        &sessions,
        Some("not-the-admin-token"),
        Some(&data),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let (status, created, _) = send(
        &client,
        reqwest::Method::POST,
        &sessions,
        Some(TOKEN),
        Some(&data),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    let session = format!("{two}/api/sessions/{id}");

    // Reads stay open: the session id itself is the unguessable capability.
    let (status, read, _) = send(&client, reqwest::Method::GET, &session, None, None).await;
    assert_eq!((status, &read["data"]), (200, &data));

    let new_data = json!({"cart": []});
    let (status, _, _) = send(
        &client,
        reqwest::Method::PUT,
        &session,
        None,
        Some(&new_data),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, _) = send(
        &client,
        reqwest::Method::PUT,
        &session,
        Some(TOKEN),
        Some(&new_data),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = send(&client, reqwest::Method::DELETE, &session, None, None).await;
    assert_eq!(status, 401);

    // Bounds: a body above max-bytes is 413; a huge request head is 431.
    let big = json!({"blob": "x".repeat(4096)});
    let (status, body, _) = send(
        &client,
        reqwest::Method::POST,
        &sessions,
        Some(TOKEN),
        Some(&big),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    let huge = json!({"blob": "x".repeat(200_000)});
    let (status, _, _) = send(
        &client,
        reqwest::Method::POST,
        &sessions,
        Some(TOKEN),
        Some(&huge),
    )
    .await;
    assert_eq!(status, 413);
    let response = client
        .get(format!("{one}/ping"))
        .header("x-padding", "p".repeat(100_000))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 431);

    let (status, _, _) = send(
        &client,
        reqwest::Method::DELETE,
        &session,
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 204);

    // Drain through node-1 is forwarded to node-2 with the caller's token.
    let drain = format!("{one}/cluster/nodes/node-2/drain");
    let (status, _, _) = send(&client, reqwest::Method::POST, &drain, None, None).await;
    assert_eq!(status, 401);
    let (status, _, _) = send(
        &client,
        reqwest::Method::POST,
        &drain,
        Some("not-the-admin-token"),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, body, _) = send(&client, reqwest::Method::POST, &drain, Some(TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    cluster
        .wait_state("node-1", "node-2", "draining", READY)
        .await;

    // The command line sends the token from MICRO_TOMCAT_ADMIN_TOKEN.
    let undrain = |token: Option<&str>| {
        let mut command = Command::new(BIN);
        command
            .args(["undrain", "node-2", "--node", &one])
            .env_remove("MICRO_TOMCAT_ADMIN_TOKEN");
        if let Some(token) = token {
            command.env("MICRO_TOMCAT_ADMIN_TOKEN", token);
        }
        command.output().expect("run undrain")
    };
    let refused = undrain(None);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
    let done = undrain(Some(TOKEN));
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    cluster.wait_state("node-1", "node-2", "up", READY).await;

    // Or from a file given with --token-file (it wins over the variable).
    let with_file = |action: &str, file: &std::path::Path| {
        Command::new(BIN)
            .args([action, "node-2", "--node", &one])
            .arg("--token-file")
            .arg(file)
            .env("MICRO_TOMCAT_ADMIN_TOKEN", "not-the-admin-token")
            .output()
            .expect("run the command")
    };
    let token_file = cluster.path().join("admin.token");
    let done = with_file("drain", &token_file);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    cluster
        .wait_state("node-1", "node-2", "draining", READY)
        .await;
    // A missing or malformed token file is a usage error: exit 1, one line, nothing sent.
    let missing = with_file("undrain", &cluster.path().join("missing.token"));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("missing.token (--token-file)") && stderr.contains("cannot read"),
        "{stderr}"
    );
    let short = cluster.path().join("short.token");
    std::fs::write(&short, "short\n").expect("token");
    let refused = with_file("undrain", &short);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("5 characters"), "{stderr}");
    assert!(!stderr.contains("short\n"), "{stderr}");
    let done = with_file("undrain", &token_file);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    cluster.wait_state("node-1", "node-2", "up", READY).await;
    let out = cluster.path().join("taken.mtbackup");
    let backup = Command::new(BIN)
        .args(["backup", "--node", &two])
        .arg("--out")
        .arg(&out)
        .arg("--token-file")
        .arg(&token_file)
        .env_remove("MICRO_TOMCAT_ADMIN_TOKEN")
        .output()
        .expect("run backup");
    assert!(
        backup.status.success(),
        "{}",
        String::from_utf8_lossy(&backup.stderr)
    );
    assert!(out.exists());

    for name in ["node-1", "node-2"] {
        let log = std::fs::read_to_string(&cluster.nodes[name].log).expect("log");
        assert!(!log.contains(TOKEN), "{name} logged the admin token");
    }
}

#[test]
fn bad_secrets_stop_the_node_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("cluster-config.xml");
    let write_config = |security: &str| {
        std::fs::write(
            &config,
            format!(
                "<cluster id=\"t\">\n  {security}\n  <nodes>\n    <node name=\"node-1\" http=\"127.0.0.1:1\" cluster=\"127.0.0.1:2\"/>\n  </nodes>\n</cluster>\n"
            ),
        )
        .expect("config");
    };
    let run = |env: &[(&str, &str)]| {
        let mut command = Command::new(BIN);
        command
            .args(["run", "--config"])
            .arg(&config)
            .args(["--name", "node-1"])
            .env_remove("MICRO_TOMCAT_GOSSIP_KEY")
            .env_remove("MICRO_TOMCAT_ADMIN_TOKEN");
        for (k, v) in env {
            command.env(k, v);
        }
        let output = command.output().expect("run");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let one_line = |stderr: &str| {
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    };

    write_config("");
    let (code, stderr) = run(&[("MICRO_TOMCAT_GOSSIP_KEY", "c2hvcnQta2V5")]);
    assert_eq!(code, Some(1), "{stderr}");
    one_line(&stderr);
    assert!(
        stderr.contains("MICRO_TOMCAT_GOSSIP_KEY") && stderr.contains("32"),
        "{stderr}"
    );
    assert!(!stderr.contains("c2hvcnQta2V5"), "quotes the key: {stderr}");

    let (code, stderr) = run(&[("MICRO_TOMCAT_ADMIN_TOKEN", "short")]);
    assert_eq!(code, Some(1), "{stderr}");
    one_line(&stderr);
    assert!(stderr.contains("MICRO_TOMCAT_ADMIN_TOKEN"), "{stderr}");

    write_config(r#"<security gossip-key-file="missing.key"/>"#);
    let (code, stderr) = run(&[]);
    assert_eq!(code, Some(1), "{stderr}");
    one_line(&stderr);
    assert!(stderr.contains("missing.key"), "{stderr}");

    // An admin token without a cluster key guards little (the peer port takes writes from anyone):
    // refused at start with one line naming both and the two ways out.
    let token = "0123456789abcdef-token";
    write_config("");
    let (code, stderr) = run(&[("MICRO_TOMCAT_ADMIN_TOKEN", token)]);
    assert_eq!(code, Some(1), "{stderr}");
    one_line(&stderr);
    for needle in [
        "MICRO_TOMCAT_ADMIN_TOKEN",
        "no cluster key",
        "MICRO_TOMCAT_GOSSIP_KEY",
        "allow-open-peers",
    ] {
        assert!(stderr.contains(needle), "{stderr} does not name {needle}");
    }
    assert!(!stderr.contains(token), "quotes the token: {stderr}");

    std::fs::write(dir.path().join("bad.key"), "not base64!\n").expect("key");
    write_config(r#"<security gossip-key-file="bad.key"/>"#);
    let (code, stderr) = run(&[]);
    assert_eq!(code, Some(1), "{stderr}");
    one_line(&stderr);
    assert!(
        stderr.contains("bad.key") && stderr.contains("base64"),
        "{stderr}"
    );
}
