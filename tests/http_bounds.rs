//! Bounds of the HTTP port with real processes: slow heads and idle keep-alive connections are
//! closed, connections above `max-connections` are closed at once, and a node out of file
//! descriptors says it is not ready until it can accept again.
//!
//! The clients here speak HTTP/1.1 over raw sockets, so that each test knows exactly which
//! connections it holds (a pooled client would open and keep its own).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const READY: Duration = Duration::from_secs(40);

/// A single-node cluster with these `<http>` attributes, started and ready.
async fn node(http_attrs: &str) -> Cluster {
    let mut cluster = Cluster::with_elements(
        1,
        &format!(r#"<raft data-dir="data" voters="1"/><http {http_attrs}/>"#),
    );
    cluster.start_all();
    cluster.wait_ready(READY).await;
    cluster
}

async fn connect(cluster: &Cluster) -> TcpStream {
    TcpStream::connect(cluster.nodes["node-1"].http)
        .await
        .expect("connect to node-1")
}

/// One keep-alive request on `stream`: the status code and the body, or `None` if the connection
/// ended (or nothing came within `within`).
async fn request(stream: &mut TcpStream, path: &str, within: Duration) -> Option<(u16, String)> {
    let head = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
    stream.write_all(head.as_bytes()).await.ok()?;
    tokio::time::timeout(within, read_response(stream))
        .await
        .ok()?
}

async fn read_response(stream: &mut TcpStream) -> Option<(u16, String)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    let body = String::from_utf8_lossy(&buffer[head_end..head_end + length]).to_string();
    Some((status, body))
}

/// Waits until the server ends `stream` (EOF or reset); panics after `within`. Returns how long it
/// took.
async fn closed_within(stream: &mut TcpStream, within: Duration, what: &str) -> Duration {
    let started = Instant::now();
    let mut chunk = [0u8; 1024];
    match tokio::time::timeout(within, stream.read(&mut chunk)).await {
        Err(_) => panic!("{what}: still open after {within:?}"),
        Ok(Ok(0)) | Ok(Err(_)) => started.elapsed(),
        Ok(Ok(_)) => panic!("{what}: the server sent data instead of closing"),
    }
}

/// The value of `series` (exactly as `/metrics` prints it) in a `/metrics` text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_request_head_is_disconnected_after_the_header_timeout() {
    let cluster = node(r#"header-timeout-ms="500""#).await;
    let mut slow = connect(&cluster).await;
    // Half a head, then a byte every 100 ms: always some progress, never a whole head.
    slow.write_all(b"GET /ping HTTP/1.1\r\nhost: test\r\n")
        .await
        .expect("first half");
    let (mut reader, mut writer) = slow.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer.write_all(b"x").await.is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut chunk = [0u8; 256];
    let outcome = tokio::time::timeout(Duration::from_secs(3), reader.read(&mut chunk)).await;
    trickle.abort();
    match outcome {
        Err(_) => panic!("the slow client was not disconnected within 3 s"),
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(_)) => panic!("the server answered an incomplete head"),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed after {:?}, before the header timeout",
        started.elapsed()
    );
    let timed_out = cluster
        .metric(
            "node-1",
            "micro_tomcat_http_connections_timed_out_total{phase=\"header\"}",
        )
        .await;
    assert!(
        timed_out >= Some(1.0),
        "header timeouts counted: {timed_out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_while_a_busy_one_stays_usable() {
    let cluster = node(r#"header-timeout-ms="10000" idle-timeout-ms="1000""#).await;
    let mut idle = connect(&cluster).await;
    let mut busy = connect(&cluster).await;
    assert_eq!(
        request(&mut idle, "/ping", Duration::from_secs(2)).await,
        Some((200, "pong".to_string()))
    );
    // The busy connection sends a request every 300 ms for 2.5 s, well past the idle timeout.
    let busy_task = tokio::spawn(async move {
        let until = Instant::now() + Duration::from_millis(2_500);
        let mut answered = 0;
        while Instant::now() < until {
            match request(&mut busy, "/ping", Duration::from_secs(2)).await {
                Some((200, _)) => answered += 1,
                other => {
                    return Err(format!(
                        "request {answered} on the busy connection: {other:?}"
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok(answered)
    });
    let took = closed_within(&mut idle, Duration::from_secs(4), "the idle connection").await;
    assert!(
        took >= Duration::from_millis(800),
        "the idle connection was closed after {took:?}, before the idle timeout"
    );
    let answered = busy_task
        .await
        .expect("busy task")
        .expect("busy connection usable");
    assert!(answered >= 5, "only {answered} requests answered");
    let timed_out = cluster
        .metric(
            "node-1",
            "micro_tomcat_http_connections_timed_out_total{phase=\"idle\"}",
        )
        .await;
    assert!(
        timed_out >= Some(1.0),
        "idle timeouts counted: {timed_out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_above_max_connections_are_closed_at_once_and_counted() {
    const MAX: usize = 10;
    let cluster = node(&format!(r#"max-connections="{MAX}""#)).await;
    // Hold served connections until one is turned away. The harness's own client may keep a
    // pooled connection or two, so the last few may be refused early, but never more than MAX fit.
    let mut held = Vec::new();
    let refused = loop {
        assert!(
            held.len() <= MAX,
            "{} connections served, max {MAX}",
            held.len()
        );
        let mut stream = connect(&cluster).await;
        let started = Instant::now();
        match request(&mut stream, "/ping", Duration::from_secs(2)).await {
            Some((200, _)) => held.push(stream),
            Some(other) => panic!("unexpected answer {other:?}"),
            None => break started.elapsed(),
        }
    };
    assert!(
        held.len() >= MAX - 3,
        "only {} connections served before a refusal",
        held.len()
    );
    assert!(
        refused < Duration::from_secs(1),
        "the refused connection took {refused:?} to close"
    );
    let (status, text) = request(&mut held[0], "/metrics", Duration::from_secs(2))
        .await
        .expect("metrics over a held connection");
    assert_eq!(status, 200);
    let count = metric(&text, "micro_tomcat_http_connections_refused_total");
    assert!(count >= Some(1.0), "refusals counted: {count:?}");

    drop(held);
    wait_for(
        "/ping answers a new client",
        Duration::from_secs(10),
        || async {
            let url = format!("{}/ping", cluster.nodes["node-1"].url());
            let response = reqwest::get(url).await.ok()?;
            (response.status() == 200).then_some(())
        },
    )
    .await;
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the node's fd table")
        .count()
}

fn set_soft_fd_limit(pid: u32, limit: usize) {
    let status = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={limit}:")])
        .status()
        .expect("run prlimit (util-linux)");
    assert!(status.success(), "prlimit --nofile={limit}:");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_out_of_file_descriptors_is_not_ready_until_it_accepts_again() {
    let mut cluster = node("").await;
    let pid = cluster
        .nodes
        .get_mut("node-1")
        .and_then(|node| node.child.as_ref())
        .map(|child| child.id())
        .expect("node-1 running");
    // Opened first, so that it can ask the node once it cannot accept any more.
    let mut probe = connect(&cluster).await;
    assert_eq!(
        request(&mut probe, "/readyz", Duration::from_secs(2)).await,
        Some((200, "ready".to_string()))
    );
    // A few descriptors above what the node holds now: a handful of connections exhaust it.
    set_soft_fd_limit(pid, open_fds(pid) + 6);
    let mut held = Vec::new();
    loop {
        assert!(
            held.len() < 50,
            "the node still accepts with 50 more connections"
        );
        let mut stream = connect(&cluster).await;
        let answered = request(&mut stream, "/ping", Duration::from_millis(500)).await;
        // The unanswered one stays in the backlog: the node keeps failing to accept it.
        held.push(stream);
        if answered.is_none() {
            break;
        }
    }
    let (status, body) = request(&mut probe, "/readyz", Duration::from_secs(2))
        .await
        .expect("readyz over the probe");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cannot accept HTTP connections"), "{body}");
    let (_, text) = request(&mut probe, "/metrics", Duration::from_secs(2))
        .await
        .expect("metrics over the probe");
    let errors = metric(
        &text,
        "micro_tomcat_http_accept_errors_total{kind=\"file_descriptors\"}",
    );
    assert!(errors >= Some(1.0), "accept errors counted: {errors:?}");
    // What the cluster sees: the node itself published ready=false (250 ms publication period).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, status) = request(&mut probe, "/cluster/status", Duration::from_secs(2))
            .await
            .expect("status over the probe");
        let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
        let ready = status["members"]
            .as_array()
            .and_then(|rows| rows.iter().find(|row| row["name"] == "node-1"))
            .map(|row| row["ready"].clone());
        if ready == Some(serde_json::Value::Bool(false)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still ready in gossip: {ready:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    drop(held);
    drop(probe);
    // Back by itself, with the same low limit, once the connections are gone.
    wait_for("node-1 ready again", Duration::from_secs(15), || async {
        let url = format!("{}/readyz", cluster.nodes["node-1"].url());
        let response = reqwest::get(url).await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    let status = wait_for("ready again in gossip", Duration::from_secs(5), || async {
        let status = cluster.status("node-1").await?;
        let row = status["members"]
            .as_array()?
            .iter()
            .find(|row| row["name"] == "node-1")?
            .clone();
        (row["ready"] == true).then_some(row)
    })
    .await;
    assert_eq!(status["state"], "up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_bounds_the_connections_accepted_after_it() {
    let cluster = node(r#"header-timeout-ms="10000""#).await;
    // Accepted before the reload: keeps the 10 s it was accepted with. One whole request first, so
    // the node has surely accepted it (the kernel completes a handshake before the accept loop takes
    // the connection, and on a loaded machine the reload could come in between).
    let mut before = connect(&cluster).await;
    let answer = request(&mut before, "/ping", Duration::from_secs(5)).await;
    assert_eq!(answer.map(|(status, _)| status), Some(200));
    before
        .write_all(b"GET /ping HTTP/1.1\r\n")
        .await
        .expect("half a head");
    cluster.rewrite_config(r#"header-timeout-ms="10000""#, r#"header-timeout-ms="500""#);
    let (status, answer) = cluster.reload("node-1").await;
    assert_eq!(status, 200, "{answer}");
    let changes = answer["changes"].as_str().unwrap_or_default();
    assert!(
        changes.contains("http header timeout 10000 ms -> 500 ms"),
        "{changes}"
    );
    let mut after = connect(&cluster).await;
    after
        .write_all(b"GET /ping HTTP/1.1\r\n")
        .await
        .expect("half a head");
    closed_within(
        &mut after,
        Duration::from_secs(3),
        "the connection after the reload",
    )
    .await;
    let mut chunk = [0u8; 16];
    match before.try_read(&mut chunk) {
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the connection from before the reload ended early: {other:?}"),
    }
}
