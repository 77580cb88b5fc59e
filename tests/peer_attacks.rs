//! The peer and gossip ports of a cluster with the shipped defaults (no cluster key) against an
//! attacker on loopback: hostile frames crash nothing and reach no log, forged names forge no log
//! line, floods of junk write a bounded number of lines, and the cluster survives a full restart.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Cluster, wait_for};
use proto::raft::{
    Hello, PEER_WIRE_VERSION, PeerRequest, PeerResponse, SessionCommand, SessionId, encode_frame,
};
use serde_json::json;

/// A connection to a node's peer port that has sent `hello` and read the node's own.
fn introduce(addr: SocketAddr, hello: &Hello) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(&encode_frame(hello).expect("hello frame"))?;
    let _theirs: Hello = read_frame(&mut stream)?;
    Ok(stream)
}

fn attacker_hello(name: &str) -> Hello {
    Hello {
        wire_version: PEER_WIRE_VERSION,
        cluster_id: "test".to_string(),
        from_name: name.to_string(),
    }
}

fn read_frame<T: serde::de::DeserializeOwned>(stream: &mut TcpStream) -> std::io::Result<T> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header)?;
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    stream.read_exact(&mut body)?;
    proto::decode(&body).map_err(|err| std::io::Error::other(err.to_string()))
}

/// A frame holding `body` as it is.
fn raw_frame(body: &[u8]) -> Vec<u8> {
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

/// `PeerRequest::ClientWrite` of `depth` batches nested in each other around one delete, written
/// by hand: our encoder is as happy to write it as a stranger's would be.
fn nested_client_write(depth: usize) -> Vec<u8> {
    let mut body = vec![3u8]; // PeerRequest::ClientWrite
    for _ in 0..depth {
        body.extend_from_slice(&[6, 1]); // SessionCommand::Batch of one
    }
    body.push(2); // SessionCommand::Delete
    body.extend_from_slice(&[7; 16]);
    raw_frame(&body)
}

/// Whether the node closed the connection (EOF or reset) instead of answering.
fn closed_without_answer(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(0) | Err(_))
}

/// What a node answers to one forwarded write.
fn forwarded_write(addr: SocketAddr, command: SessionCommand) -> PeerResponse {
    let mut stream = introduce(addr, &attacker_hello("attacker")).expect("hello");
    let frame = encode_frame(&PeerRequest::ClientWrite(command)).expect("frame");
    stream.write_all(&frame).expect("send");
    read_frame(&mut stream).expect("an answer")
}

fn log_of(cluster: &Cluster, name: &str) -> String {
    std::fs::read_to_string(&cluster.nodes[name].log).unwrap_or_default()
}

fn warn_lines(log: &str) -> usize {
    log.lines().filter(|line| line.contains(" WARN ")).count()
}

#[tokio::test]
async fn hostile_peer_frames_crash_no_node_and_the_cluster_restarts_after_kill_9() {
    let mut cluster = Cluster::new(3);
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(30)).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let follower = cluster
        .running()
        .into_iter()
        .find(|name| *name != leader)
        .expect("a follower");

    for target in [&follower, &leader] {
        let addr = cluster.nodes[target].cluster;
        // A batch nested thousands deep: before, this overflowed the stack of every node that
        // decoded or applied it. Now the frame does not decode and the connection is dropped.
        for depth in [2, 5_000, 200_000] {
            let mut stream = introduce(addr, &attacker_hello("attacker")).expect("hello");
            stream.write_all(&nested_client_write(depth)).expect("send");
            assert!(
                closed_without_answer(&mut stream),
                "{target} answered a batch nested {depth} deep"
            );
        }
        // Writes no client could make are refused before they are proposed.
        let not_an_object = SessionCommand::Create {
            id: SessionId::from_bytes([1; 16]),
            data: "[\"not\", \"an object\"]".into(),
            ttl_ms: 60_000,
            now_ms: 0,
        };
        let bad_batch = SessionCommand::Batch(vec![
            SessionCommand::Delete {
                id: SessionId::from_bytes([2; 16]),
            },
            SessionCommand::Put {
                id: SessionId::from_bytes([3; 16]),
                data: "{\"a\":".into(),
                expected_version: None,
                ttl_ms: None,
                now_ms: 0,
            },
        ]);
        let huge = SessionCommand::Create {
            id: SessionId::from_bytes([4; 16]),
            data: format!("{{\"pad\":\"{}\"}}", "x".repeat(2 * 1024 * 1024)),
            ttl_ms: 60_000,
            now_ms: 0,
        };
        for command in [not_an_object, bad_batch, huge] {
            match forwarded_write(addr, command) {
                PeerResponse::WriteRefused(_) => {}
                // A follower has no business taking writes at all: it names the leader.
                PeerResponse::ForwardToLeader { .. } if target == &follower => {}
                other => panic!("{target} took a malformed write: {other:?}"),
            }
        }
        // Junk after a good hello, and a frame announcing more than the limit.
        for junk in [raw_frame(&[0xff; 64]), vec![0xff, 0xff, 0xff, 0xff]] {
            let mut stream = introduce(addr, &attacker_hello("attacker")).expect("hello");
            stream.write_all(&junk).expect("send");
            assert!(closed_without_answer(&mut stream), "{target} answered junk");
        }
    }
    for name in cluster.running() {
        assert!(cluster.is_running(&name), "{name} died");
    }
    let before = cluster
        .create_session(&follower, &json!({"after": "attack"}))
        .await
        .expect("the cluster still takes writes");

    // Nothing hostile reached the log: every node restarts from its log and snapshot and serves.
    for name in cluster.running() {
        cluster.kill9(&name);
    }
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(60)).await;
    for name in cluster.running() {
        assert_eq!(
            cluster.session_data(&name, &before).await,
            Some(json!({"after": "attack"})),
            "{name} lost the session written before the restart"
        );
    }
    cluster
        .create_session(&leader, &json!({"after": "restart"}))
        .await
        .expect("writes after the restart");
    for name in cluster.running() {
        let log = log_of(&cluster, &name);
        assert!(!log.contains("overflowed its stack"), "{name}: {log}");
        assert!(!log.contains("panicked"), "{name} panicked");
    }
}

#[tokio::test]
async fn peer_names_forge_no_log_line_and_floods_log_a_bounded_number_of_lines() {
    let mut cluster = Cluster::new(1);
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(30)).await;
    let node = &cluster.nodes["node-1"];
    let (peer, gossip) = (node.cluster, node.cluster);
    let quiet_before = warn_lines(&log_of(&cluster, "node-1"));

    // A name with a newline and terminal escapes: refused, and nothing of it starts a line.
    let forged =
        "x\n2026-12-03T00:00:00.000000Z  INFO micro_tomcat: FORGED admin logged in\u{1b}[2J";
    let refused = introduce(peer, &attacker_hello(forged));
    if let Ok(mut stream) = refused {
        assert!(closed_without_answer(&mut stream));
    }
    // 2,000 hellos with another wire version, and 2,000 junk gossip datagrams.
    let started = Instant::now();
    for n in 0..2_000u32 {
        let mut hello = attacker_hello("attacker");
        hello.wire_version = 1_000 + n;
        if let Ok(mut stream) = TcpStream::connect_timeout(&peer, Duration::from_secs(2)) {
            let _ = stream.write_all(&encode_frame(&hello).expect("frame"));
        }
    }
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    for n in 0..2_000u32 {
        let _ = socket.send_to(&[0xee, (n % 251) as u8, 0x01, 0x02, 0x03], gossip);
    }
    let flood_took = started.elapsed();
    // The node still answers, and has logged the refusals (first lines), not one per input.
    let client = reqwest::Client::new();
    let ping = client
        .get(format!("{}/ping", node.url()))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("ping after the flood");
    assert_eq!(ping.status(), 200);
    let log = wait_for("the refusals logged", Duration::from_secs(10), || async {
        let log = log_of(&cluster, "node-1");
        log.contains("no node name").then_some(log)
    })
    .await;
    assert!(
        !log.lines()
            .any(|line| line.contains("FORGED") && !line.contains("no node name")),
        "a forged line got into the log:\n{log}"
    );
    assert!(!log.contains('\u{1b}'), "terminal escapes reached the log");
    let flood_lines = warn_lines(&log) - quiet_before;
    // One line per throttle per 10 s (peer refusals and chitchat's junk-datagram warning), and the
    // flood took well under a minute: a handful of lines, not 4,000.
    let windows = 1 + flood_took.as_secs() / 10;
    assert!(
        flood_lines as u64 <= 4 * windows,
        "{flood_lines} warning lines for 4,000 hostile inputs in {flood_took:?}:\n{log}"
    );
}

#[tokio::test]
async fn a_token_without_a_key_starts_only_when_allowed_and_says_so() {
    let mut cluster = Cluster::with_elements(
        1,
        r#"<raft data-dir="data" voters="1"/>
  <security admin-token-file="admin.token" allow-open-peers="true"/>"#,
    );
    std::fs::write(
        cluster.path().join("admin.token"),
        "0123456789abcdef-token\n",
    )
    .expect("token");
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(30)).await;
    let log = log_of(&cluster, "node-1");
    let warning = log
        .lines()
        .find(|line| line.contains(" WARN ") && line.contains("no cluster key"))
        .unwrap_or_else(|| panic!("no warning about the open peer port:\n{log}"));
    assert!(warning.contains("session writes from anyone"), "{warning}");
    assert!(log.contains("admin calls need the token"), "{log}");
}

/// `/app/counter` without a cookie through `node`: the status and, for a 429, `Retry-After`.
async fn fresh_counter(client: &reqwest::Client, url: &str) -> (u16, Option<u64>, String) {
    let response = client
        .get(format!("{url}/app/counter"))
        .send()
        .await
        .expect("counter");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok());
    (
        status,
        retry_after,
        response.text().await.unwrap_or_default(),
    )
}

#[tokio::test]
async fn session_quotas_hold_cluster_wide() {
    let mut cluster = Cluster::with_elements(
        3,
        r#"<raft data-dir="data" voters="3"/>
  <sessions max-active="6" create-rate-per-ip="3"/>"#,
    );
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(30)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let urls: Vec<String> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|name| cluster.nodes[*name].url())
        .collect();

    // The per-address rate: a burst of cookieless requests entering every node (all from
    // 127.0.0.1, so routed to one owner, whose bucket holds 3) makes at most 3 sessions, plus what
    // refilled meanwhile; the rest are 429 with Retry-After.
    let started = Instant::now();
    let mut made = 0;
    let mut limited = 0;
    for n in 0..12 {
        let (status, retry_after, body) = fresh_counter(&client, &urls[n % 3]).await;
        match status {
            200 => made += 1,
            429 => {
                limited += 1;
                assert!(
                    retry_after.is_some_and(|s| s >= 1),
                    "429 without Retry-After"
                );
                assert!(body.contains("create-rate-per-ip"), "{body}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let refilled = (started.elapsed().as_secs_f64() * 3.0).ceil() as usize;
    assert!(
        made >= 3 && made <= 3 + refilled,
        "{made} sessions made in the burst"
    );
    assert!(limited > 0, "no request was limited");
    // A request carrying its session is no new session: never limited.
    let cookie = wait_for("a token again", Duration::from_secs(5), || async {
        let response = client
            .get(format!("{}/app/counter", urls[0]))
            .send()
            .await
            .ok()?;
        if response.status() != 200 {
            return None;
        }
        let set = response.headers().get("set-cookie")?.to_str().ok()?;
        set.split(';').next().map(str::to_string)
    })
    .await;
    for _ in 0..6 {
        let response = client
            .get(format!("{}/app/counter", urls[1]))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("counter with cookie");
        assert_eq!(response.status(), 200);
    }

    // The cluster-wide cap: whichever node a create enters, the 7th session is refused with 503
    // and the reason, by the REST API and by the application alike.
    let mut created = 0;
    for node in cluster.running() {
        let doc: serde_json::Value = cluster
            .get_json(&node, "/cluster/sessions/digest")
            .await
            .expect("digest");
        created = created.max(doc["sessions"].as_u64().unwrap_or(0) as usize);
    }
    let mut n = 0;
    while created < 6 {
        let id = cluster
            .create_session(&format!("node-{}", 1 + n % 3), &json!({"n": n}))
            .await;
        assert!(id.is_some(), "create {n} refused below the cap");
        created += 1;
        n += 1;
    }
    for url in &urls {
        let response = client
            .post(format!("{url}/api/sessions"))
            .json(&json!({"over": "cap"}))
            .send()
            .await
            .expect("create");
        assert_eq!(response.status(), 503);
        let body = response.text().await.unwrap_or_default();
        assert!(body.contains("max-active"), "{body}");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await; // a token for the app path again
    let (status, _, body) = fresh_counter(&client, &urls[2]).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("max-active"), "{body}");

    // Both refusals are counted where the create entered.
    let mut full = 0.0;
    let mut rate = 0.0;
    for name in cluster.running() {
        full += cluster
            .metric(
                &name,
                "micro_tomcat_sessions_refused_total{reason=\"max_active\"}",
            )
            .await
            .unwrap_or(0.0);
        rate += cluster
            .metric(
                &name,
                "micro_tomcat_sessions_refused_total{reason=\"rate\"}",
            )
            .await
            .unwrap_or(0.0);
    }
    assert!(full >= 4.0, "max_active refusals counted: {full}");
    assert!(
        rate >= limited as f64,
        "rate refusals counted: {rate} < {limited}"
    );

    // A reload raising the cap on the leader lets creates in again.
    cluster.rewrite_config("max-active=\"6\"", "max-active=\"100\"");
    for name in cluster.running() {
        let (code, answer) = cluster.reload(&name).await;
        assert_eq!(code, 200, "{answer}");
    }
    cluster
        .create_session("node-2", &json!({"after": "reload"}))
        .await
        .expect("a create after the cap was raised");
}

/// The `Set-Cookie` of a fresh `/app/counter` on a one-node cluster with these `<sessions>` attributes.
async fn session_cookie_with(attrs: &str) -> String {
    let mut cluster = Cluster::with_elements(
        1,
        &format!("<raft data-dir=\"data\" voters=\"1\"/>\n  <sessions {attrs}/>"),
    );
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(30)).await;
    let response = reqwest::Client::new()
        .get(format!("{}/app/counter", cluster.nodes["node-1"].url()))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("counter");
    assert_eq!(response.status(), 200);
    response
        .headers()
        .get("set-cookie")
        .and_then(|value| value.to_str().ok())
        .expect("a session cookie")
        .to_string()
}

#[tokio::test]
async fn the_session_cookie_is_secure_when_configured() {
    let secure = session_cookie_with(r#"cookie-secure="true""#).await;
    assert!(secure.contains("; Secure"), "{secure}");
    assert!(secure.contains("HttpOnly"), "{secure}");
    let plain = session_cookie_with(r#"ttl-seconds="1800""#).await;
    assert!(!plain.contains("Secure"), "{plain}");
}
