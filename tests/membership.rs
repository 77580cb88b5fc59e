//! Gossip membership with real processes: join, failure detection, restart, graceful leave, garbage.

mod common;

use std::time::Duration;

use common::{BIN, Cluster, wait_for};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(20);
const DETECT: Duration = Duration::from_secs(15);

fn count(events: &[Value], kind: &str, node: &str, after: u64) -> usize {
    events
        .iter()
        .filter(|event| event["seq"].as_u64().unwrap_or(0) > after)
        .filter(|event| event["kind"] == kind && event["node"] == node)
        .count()
}

fn last_seq(events: &[Value]) -> u64 {
    events
        .iter()
        .filter_map(|event| event["seq"].as_u64())
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn founders_converge_and_a_joiner_is_seen_by_all() {
    let mut cluster = Cluster::new(3);
    cluster.start_all();
    cluster.wait_all_up(3, CONVERGE).await;

    for name in ["node-1", "node-2", "node-3"] {
        let status = cluster.status(name).await.expect("status");
        assert_eq!(status["cluster_id"], "test");
        assert_eq!(status["node"], name);
        for row in status["members"].as_array().expect("members") {
            let member = row["name"].as_str().expect("name");
            assert_eq!(row["http_addr"], cluster.nodes[member].http.to_string());
            assert_eq!(
                row["cluster_addr"],
                cluster.nodes[member].cluster.to_string()
            );
            assert!(row["generation"].as_u64().is_some(), "{row}");
        }
    }
    // Ready also needs a Raft leader, which may come a moment after gossip converged.
    cluster.wait_ready(CONVERGE).await;
    // Every member's load reaches every node through gossip, at most a second old.
    wait_for(
        "load figures of all 3 members on node-1",
        CONVERGE,
        || async {
            let status = cluster.status("node-1").await?;
            let members = status["members"].as_array()?;
            let complete = members.iter().all(|row| {
                row["memory_bytes"]
                    .as_u64()
                    .is_some_and(|bytes| bytes > 1_000_000)
                    && row["cpu_percent"].as_f64().is_some()
                    && row["sessions"].as_u64().is_some()
                    && row["requests_total"].as_u64().is_some()
                    && row["active_connections"].as_u64().is_some()
            });
            complete.then_some(())
        },
    )
    .await;

    cluster.add_joiner("node-4", "node-2");
    cluster.start("node-4");
    cluster.wait_all_up(4, CONVERGE).await;

    // XML form carries the same members.
    let xml = cluster
        .client
        .get(format!(
            "{}/cluster/status?format=xml",
            cluster.nodes["node-4"].url()
        ))
        .send()
        .await
        .expect("xml status")
        .text()
        .await
        .expect("xml body");
    assert!(xml.contains("<cluster_id>test</cluster_id>"), "{xml}");
    assert_eq!(xml.matches("<member>").count(), 4, "{xml}");
    let by_accept = cluster
        .client
        .get(format!("{}/cluster/status", cluster.nodes["node-1"].url()))
        .header("Accept", "application/xml")
        .send()
        .await
        .expect("xml by accept");
    assert_eq!(
        by_accept.headers()["content-type"].to_str().ok(),
        Some("application/xml")
    );

    // The operator's table.
    let output = std::process::Command::new(BIN)
        .args(["status", "--node", &cluster.nodes["node-3"].url()])
        .output()
        .expect("status command");
    assert!(output.status.success());
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("4 members: 4 up, 0 down"), "{table}");
    for name in ["node-1", "node-2", "node-3*", "node-4"] {
        assert!(table.contains(name), "{table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_is_down_everywhere_and_comes_back_with_a_newer_generation() {
    let mut cluster = Cluster::new(3);
    cluster.start_all();
    cluster.wait_all_up(3, CONVERGE).await;
    let survivors = ["node-1", "node-2"];
    let old_generation = cluster.member("node-1", "node-3").await.expect("row")["generation"]
        .as_u64()
        .expect("generation");
    let mut before = Vec::new();
    for name in survivors {
        before.push(last_seq(&cluster.events(name).await));
    }

    cluster.kill9("node-3");
    for name in survivors {
        let row = cluster.wait_state(name, "node-3", "down", DETECT).await;
        assert!(row["phi"].as_f64().is_some(), "{row}");
    }

    cluster.start("node-3");
    for name in survivors {
        let row = cluster.wait_state(name, "node-3", "up", CONVERGE).await;
        let generation = row["generation"].as_u64().expect("generation");
        assert!(
            generation > old_generation,
            "{generation} <= {old_generation}"
        );
    }
    cluster.wait_all_up(3, CONVERGE).await;

    for (name, after) in survivors.into_iter().zip(before) {
        let events = cluster.events(name).await;
        assert_eq!(
            count(&events, "node_down", "node-3", after),
            1,
            "{name}: {events:?}"
        );
        assert_eq!(
            count(&events, "node_up", "node-3", after),
            1,
            "{name}: {events:?}"
        );
        let down = events
            .iter()
            .find(|event| event["kind"] == "node_down" && event["seq"].as_u64() > Some(after))
            .expect("down event");
        let reason = down["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("phi") || reason.contains("no heartbeat"),
            "{reason}"
        );
        assert!(
            reason.contains("last seen") || reason.contains("dead-after"),
            "{reason}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_reported_as_left_not_down() {
    let mut cluster = Cluster::new(3);
    cluster.start_all();
    cluster.wait_all_up(3, CONVERGE).await;
    let before = last_seq(&cluster.events("node-1").await);

    let code = cluster.terminate("node-2");
    assert_eq!(code, Some(0), "a graceful shutdown exits 0");
    for name in ["node-1", "node-3"] {
        cluster.wait_state(name, "node-2", "left", DETECT).await;
    }
    // Long past detection time it is still `left`, never `down`.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for name in ["node-1", "node-3"] {
        let row = cluster.member(name, "node-2").await.expect("row");
        assert_eq!(row["state"], "left", "{name}: {row}");
    }
    let events = cluster.events("node-1").await;
    assert_eq!(
        count(&events, "node_left", "node-2", before),
        1,
        "{events:?}"
    );
    assert_eq!(
        count(&events, "node_down", "node-2", before),
        0,
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_gossip_port_neither_crashes_nor_stalls_a_node() {
    let mut cluster = Cluster::new(2);
    cluster.start_all();
    cluster.wait_all_up(2, CONVERGE).await;
    let target = cluster.nodes["node-1"].cluster;

    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..3000u32 {
        let len = (next() % 1400) as usize;
        let mut datagram: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Some datagrams start like a real chitchat message to reach deeper into the decoder.
        if round % 3 == 0 && !datagram.is_empty() {
            datagram[0] = (round % 4) as u8;
        }
        let _ = socket.send_to(&datagram, target);
    }
    // Random bytes on the TCP side of the cluster port too (nothing may listen yet: that is fine).
    if let Ok(mut stream) = std::net::TcpStream::connect(target) {
        use std::io::Write;
        let junk: Vec<u8> = (0..4096).map(|_| next() as u8).collect();
        let _ = stream.write_all(&junk);
    }

    assert!(cluster.is_running("node-1"), "node-1 died on garbage");
    // Still answers and still gossips: the peer stays up and a restart of it is noticed.
    cluster.wait_all_up(2, CONVERGE).await;
    cluster.kill9("node-2");
    cluster.wait_state("node-1", "node-2", "down", DETECT).await;
    cluster.start("node-2");
    cluster.wait_all_up(2, CONVERGE).await;
    assert!(cluster.is_running("node-1"));
    let _ = wait_for("node-1 answers /ping", Duration::from_secs(5), || async {
        let response = cluster
            .client
            .get(format!("{}/ping", cluster.nodes["node-1"].url()))
            .send()
            .await
            .ok()?;
        (response.text().await.ok()? == "pong").then_some(())
    })
    .await;
}
