//! Hardening with real processes: what a client may not do to a node with the shipped defaults.

mod common;

use std::time::Duration;

use common::{Cluster, wait_for};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const READY: Duration = Duration::from_secs(30);

/// Waits until every running node routes to `members` members.
async fn routes_to_all(cluster: &Cluster, members: usize) {
    for name in cluster.running() {
        wait_for(
            &format!("{name} routes to {members} members"),
            READY,
            || async {
                let status = cluster.status(&name).await?;
                (status["balancer"]["members"].as_array()?.len() == members).then_some(())
            },
        )
        .await;
    }
}

/// A session id whose owner, as `viewer` computes it, is `owner`.
async fn session_owned_by(cluster: &Cluster, viewer: &str, owner: &str) -> String {
    for index in 0..1000 {
        let session = format!("probe{index}");
        let route = cluster
            .get_json(viewer, &format!("/cluster/route?session={session}"))
            .await
            .expect("route answer");
        if route["owners"][0] == owner {
            return session;
        }
    }
    panic!("no session among 1000 is owned by {owner}");
}

/// Writes `request` on a fresh connection to `addr` and returns the response's status code
/// (0 when none came within 5 s).
async fn raw_status(addr: std::net::SocketAddr, request: &[u8]) -> u16 {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    if stream.write_all(request).await.is_err() {
        return 0;
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    if read.is_err() {
        return 0;
    }
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// A proxy attempt counter of `viewer` for `member` (`success` or `failure`).
async fn attempts(cluster: &Cluster, viewer: &str, member: &str, outcome: &str) -> f64 {
    cluster
        .metric(
            viewer,
            &format!(
                "micro_tomcat_proxy_requests_total{{member=\"{member}\",outcome=\"{outcome}\"}}"
            ),
        )
        .await
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_chunked_body_is_the_clients_400_not_the_members_failure() {
    let mut cluster = Cluster::new(2);
    cluster.start_all();
    routes_to_all(&cluster, 2).await;
    let session = session_owned_by(&cluster, "node-1", "node-2").await;
    let entry = cluster.nodes["node-1"].http;

    // A sound request first, so the counters exist and the path is known to be proxied.
    let sound = format!(
        "POST /app/hello HTTP/1.1\r\nHost: x\r\nCookie: MTSESSIONID={session}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    let status = raw_status(entry, sound.as_bytes()).await;
    assert_ne!(status, 0, "the sound request got an answer");
    assert_ne!(status, 502, "the sound request reached node-2");
    let failures_before = attempts(&cluster, "node-1", "node-2", "failure").await;

    // Unknown length, so it streams to node-2 over HTTP; then a chunk size that is not hex.
    for _ in 0..4 {
        let broken = format!(
            "POST /app/hello HTTP/1.1\r\nHost: x\r\nCookie: MTSESSIONID={session}\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nZZZ\r\nhello\r\n"
        );
        assert_eq!(raw_status(entry, broken.as_bytes()).await, 400);
    }
    // A client that hangs up in the middle of its body.
    let truncated = format!(
        "POST /app/hello HTTP/1.1\r\nHost: x\r\nCookie: MTSESSIONID={session}\r\n\
         Transfer-Encoding: chunked\r\n\r\n100\r\nonly a few bytes"
    );
    if let Ok(mut stream) = tokio::net::TcpStream::connect(entry).await {
        let _ = stream.write_all(truncated.as_bytes()).await;
        let _ = stream.shutdown().await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    }

    assert_eq!(
        attempts(&cluster, "node-1", "node-2", "failure").await,
        failures_before,
        "the client's bodies were not counted as node-2's failures"
    );
    let ejected = cluster
        .metric(
            "node-1",
            "micro_tomcat_proxy_member_ejected{member=\"node-2\"}",
        )
        .await;
    assert_eq!(ejected, Some(0.0), "node-2 was not ejected");
    // And node-2 still takes node-1's requests.
    let status = raw_status(entry, sound.as_bytes()).await;
    assert_ne!(status, 502);
    let _: Option<Value> = cluster.status("node-2").await;
}

/// Sends a chunked restore of `chunks` MiB to `addr` and returns the status it was answered with
/// (the node may answer, and close, before all of it was sent).
async fn chunked_restore(addr: std::net::SocketAddr, chunks: usize) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            b"POST /cluster/restore HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
              Connection: close\r\n\r\n",
        )
        .await
        .expect("head");
    let mut chunk = b"100000\r\n".to_vec();
    chunk.extend(std::iter::repeat_n(b'x', 1 << 20));
    chunk.extend_from_slice(b"\r\n");
    for _ in 0..chunks {
        if stream.write_all(&chunk).await.is_err() {
            break; // answered and closed
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_above_the_limit_is_413_and_the_node_stays_up() {
    let mut cluster = Cluster::new(1);
    cluster.start_all();
    let url = cluster.nodes["node-1"].url();
    let addr = cluster.nodes["node-1"].http;
    let client = cluster.client.clone();
    wait_for("node-1 answers /ping", READY, || async {
        let response = client.get(format!("{url}/ping")).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;

    // A declared 1 GiB is refused before a byte of it is read.
    let status = raw_status(
        addr,
        b"POST /cluster/restore HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\
          Connection: close\r\n\r\nMTBACK01",
    )
    .await;
    assert_eq!(status, 413);

    // Without a length, it is refused once past the limit (256 x 1 MiB by default).
    assert_eq!(chunked_restore(addr, 300).await, 413);

    let status = client
        .get(format!("{url}/ping"))
        .send()
        .await
        .expect("node-1 still answers")
        .status();
    assert!(status.is_success());
    // One restore at a time: while one is still sending, another is refused. A probe that arrives
    // before the slow restore's handler runs takes the slot itself (and is a 400, no backup), and the
    // slow one is then the refused one: it is answered, so it is started again.
    let mut slow = slow_restore(addr).await;
    let deadline = tokio::time::Instant::now() + READY;
    loop {
        let status = client
            .post(format!("{url}/cluster/restore"))
            .body("not a backup")
            .send()
            .await
            .map(|response| response.status().as_u16());
        if let Ok(409) = status {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for a second restore to be refused while one runs (last: {status:?})"
        );
        let mut answer = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(50), slow.read(&mut answer)).await {
            // Nothing from the slow restore: it is still being read.
            Err(_elapsed) => {}
            // It was answered (refused while the probe held the slot) or closed: start it again.
            Ok(_) => slow = slow_restore(addr).await,
        }
    }
    drop(slow);

    // Under the limit, a body that is no backup is a 400 (the limit is not a blanket refusal).
    let response = client
        .post(format!("{url}/cluster/restore"))
        .body("not a backup")
        .send()
        .await
        .expect("answer");
    // (Once the first restore's connection is gone, its permit is.)
    let status = response.status().as_u16();
    let status = if status == 409 {
        wait_for("the first restore's slot is free again", READY, || async {
            let response = client
                .post(format!("{url}/cluster/restore"))
                .body("not a backup")
                .send()
                .await
                .ok()?;
            let status = response.status().as_u16();
            (status != 409).then_some(status)
        })
        .await
    } else {
        status
    };
    assert_eq!(status, 400);
}

/// Starts a chunked restore that sends its first bytes and then nothing more.
async fn slow_restore(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    slow.write_all(
        b"POST /cluster/restore HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nMTBACK01\r\n",
    )
    .await
    .expect("the slow restore starts");
    slow
}

/// GET `path` on `node` with the session cookie and, when given, a hop header: (status, served by).
async fn get_with_hop(
    cluster: &Cluster,
    node: &str,
    method: reqwest::Method,
    session: &str,
    hop: Option<&str>,
    body: Vec<u8>,
) -> (u16, String) {
    let mut request = cluster
        .client
        .request(method, format!("{}/app/hello", cluster.nodes[node].url()))
        .header("Cookie", format!("MTSESSIONID={session}"))
        .body(body);
    if let Some(hop) = hop {
        request = request.header("x-micro-tomcat-hop", hop);
    }
    let response = request.send().await.expect("answer");
    let served_by = response
        .headers()
        .get("x-served-by")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (response.status().as_u16(), served_by)
}

/// `viewer`'s count of hop headers it removed because nothing vouched for them.
async fn untrusted_hops(cluster: &Cluster, viewer: &str) -> f64 {
    cluster
        .metric(viewer, "micro_tomcat_proxy_untrusted_hop_headers_total")
        .await
        .expect("metric present")
}

/// A figure of `target` in `viewer`'s `balancer.targets`.
async fn target_figure(cluster: &Cluster, viewer: &str, target: &str, figure: &str) -> u64 {
    let status = cluster.status(viewer).await.expect("status");
    status["balancer"]["targets"]
        .as_array()
        .and_then(|targets| targets.iter().find(|t| t["name"] == target))
        .and_then(|t| t[figure].as_u64())
        .unwrap_or(0)
}

/// Hop header values a client might try: a member's bare name, the old `1`, a well-formed but
/// made-up token, a member's name with another member's... anything but the real token.
/// Every forged hop header sent to `entry` for `session` is routed: `owner` serves it.
async fn forged_hops_reach_the_owner(cluster: &Cluster, entry: &str, session: &str, owner: &str) {
    for hop in FORGED_HOPS {
        let (status, served_by) = get_with_hop(
            cluster,
            entry,
            reqwest::Method::GET,
            session,
            Some(hop),
            vec![],
        )
        .await;
        assert_eq!((status, served_by.as_str()), (200, owner), "hop {hop:?}");
    }
}

const FORGED_HOPS: [&str; 4] = [
    "node-3",
    "1",
    "node-2 00000000000000000000000000000000",
    "node-1 0123456789abcdef0123456789abcdef",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_hop_header_is_removed_so_it_cannot_skip_routing_or_draining() {
    let mut cluster = Cluster::new(3);
    cluster.start_all();
    routes_to_all(&cluster, 3).await;
    let session = session_owned_by(&cluster, "node-1", "node-2").await;

    // Members' own proxied requests still work, over the hop channel and, for a body > 64 KiB, HTTP.
    let (status, served_by) = get_with_hop(
        &cluster,
        "node-1",
        reqwest::Method::GET,
        &session,
        None,
        vec![],
    )
    .await;
    assert_eq!((status, served_by.as_str()), (200, "node-2"));
    assert!(target_figure(&cluster, "node-1", "node-2", "over_hop").await >= 1);
    // Members learn each other's tokens through gossip; until node-2 has node-1's, what node-1
    // streams to it over HTTP is routed once more there (to the same owner), so wait for that first.
    wait_for(
        "node-2 trusts node-1's hop header over HTTP",
        READY,
        || async {
            let before = untrusted_hops(&cluster, "node-2").await;
            let large = vec![b'x'; 100 * 1024];
            let (_, served_by) = get_with_hop(
                &cluster,
                "node-1",
                reqwest::Method::POST,
                &session,
                None,
                large,
            )
            .await;
            (served_by == "node-2" && untrusted_hops(&cluster, "node-2").await == before)
                .then_some(())
        },
    )
    .await;
    let node_2_untrusted = untrusted_hops(&cluster, "node-2").await;
    let node_1_untrusted = untrusted_hops(&cluster, "node-1").await;

    // A client's hop header does not make node-1 serve a key node-2 owns.
    forged_hops_reach_the_owner(&cluster, "node-1", &session, "node-2").await;
    assert_eq!(
        untrusted_hops(&cluster, "node-1").await,
        node_1_untrusted + FORGED_HOPS.len() as f64
    );
    // What node-1 forwarded carried its own token (over the hop channel too), which node-2 trusted.
    assert_eq!(untrusted_hops(&cluster, "node-2").await, node_2_untrusted);

    // A draining node is not made to serve by one either.
    let drained = cluster
        .client
        .post(format!(
            "{}/cluster/nodes/node-3/drain",
            cluster.nodes["node-3"].url()
        ))
        .send()
        .await
        .expect("drain answer");
    assert!(drained.status().is_success());
    for viewer in ["node-1", "node-2", "node-3"] {
        wait_for(&format!("{viewer} routes around node-3"), READY, || async {
            let status = cluster.status(viewer).await?;
            let members = status["balancer"]["members"].as_array()?.clone();
            (members.len() == 2 && !members.iter().any(|m| m == "node-3")).then_some(())
        })
        .await;
    }
    for index in 0..8 {
        let session = format!("drained{index}");
        for hop in FORGED_HOPS {
            let (status, served_by) = get_with_hop(
                &cluster,
                "node-3",
                reqwest::Method::GET,
                &session,
                Some(hop),
                vec![],
            )
            .await;
            assert_eq!(status, 200);
            assert_ne!(served_by, "node-3", "draining node-3 served hop {hop:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_proxying_over_http_are_trusted_and_clients_are_not() {
    let mut cluster = Cluster::with_elements(
        3,
        r#"<raft data-dir="data" voters="3"/>
  <balancer transport="http"/>"#,
    );
    cluster.start_all();
    routes_to_all(&cluster, 3).await;
    let session = session_owned_by(&cluster, "node-1", "node-2").await;
    // Members learn each other's tokens through gossip; until then a proxied request is routed again
    // (to the same owner), so wait until node-2 trusts what node-1 sends.
    wait_for("node-2 trusts node-1's hop header", READY, || async {
        let before = untrusted_hops(&cluster, "node-2").await;
        let (_, served_by) = get_with_hop(
            &cluster,
            "node-1",
            reqwest::Method::GET,
            &session,
            None,
            vec![],
        )
        .await;
        (served_by == "node-2" && untrusted_hops(&cluster, "node-2").await == before).then_some(())
    })
    .await;
    let trusted_before = untrusted_hops(&cluster, "node-2").await;
    for _ in 0..5 {
        let (status, served_by) = get_with_hop(
            &cluster,
            "node-1",
            reqwest::Method::GET,
            &session,
            None,
            vec![],
        )
        .await;
        assert_eq!((status, served_by.as_str()), (200, "node-2"));
    }
    assert_eq!(untrusted_hops(&cluster, "node-2").await, trusted_before);
    assert_eq!(
        target_figure(&cluster, "node-1", "node-2", "over_hop").await,
        0
    );
    assert!(target_figure(&cluster, "node-1", "node-2", "proxied").await >= 5);

    forged_hops_reach_the_owner(&cluster, "node-1", &session, "node-2").await;
    assert_eq!(untrusted_hops(&cluster, "node-2").await, trusted_before);
}
