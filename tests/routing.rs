//! Routing with real processes: sticky sessions, failover under load, restart, drain, strategies.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, wait_for};
use serde_json::Value;

const READY: Duration = Duration::from_secs(30);
const DETECT: Duration = Duration::from_secs(15);

/// One GET of the demo counter with the session cookie: (status, count, served by).
async fn counter(client: &reqwest::Client, base: &str, cookie: &str) -> (u16, u64, String) {
    let response = match client
        .get(format!("{base}/app/counter"))
        .header("Cookie", cookie)
        .send()
        .await
    {
        Ok(response) => response,
        Err(_) => return (0, 0, String::new()),
    };
    let status = response.status().as_u16();
    let served_by = response
        .headers()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let count = response
        .json::<Value>()
        .await
        .ok()
        .and_then(|doc| doc["count"].as_u64())
        .unwrap_or(0);
    (status, count, served_by)
}

/// Waits until every running node routes to `members` members (ready needs only one other).
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

/// Requests `viewer` proxied to `target` (or served itself, when they are the same).
async fn proxied(cluster: &Cluster, viewer: &str, target: &str) -> u64 {
    target_figure(cluster, viewer, target, "proxied").await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_stick_to_their_owner_and_survive_its_death() {
    let mut cluster = Cluster::new(3);
    cluster.start_all();
    cluster.wait_ready(READY).await;
    routes_to_all(&cluster, 3).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let urls: std::collections::BTreeMap<String, String> = cluster
        .nodes
        .iter()
        .map(|(name, node)| (name.clone(), node.url()))
        .collect();
    let url = |name: &str| urls[name].clone();

    // A session, and its owner as every node computes it.
    let first = client
        .get(format!("{}/app/counter", url("node-1")))
        .send()
        .await
        .expect("first");
    let set_cookie = first.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_string();
    let cookie = set_cookie.split(';').next().expect("pair").to_string();
    let session = cookie.split_once('=').expect("name=value").1.to_string();
    let mut owners = Vec::new();
    for name in ["node-1", "node-2", "node-3"] {
        let route = cluster
            .get_json(name, &format!("/cluster/route?session={session}"))
            .await
            .expect("route");
        owners.push(route["owners"][0].as_str().expect("owner").to_string());
    }
    assert!(
        owners.windows(2).all(|pair| pair[0] == pair[1]),
        "{owners:?}"
    );
    let owner = owners[0].clone();

    // Sticky: whichever node the request enters, the owner serves it.
    let mut expected = 2;
    for round in 0..9 {
        let entry = format!("node-{}", round % 3 + 1);
        let (status, count, served_by) = counter(&client, &url(&entry), &cookie).await;
        assert_eq!(
            (status, count, served_by.as_str()),
            (200, expected, owner.as_str()),
            "via {entry}"
        );
        expected += 1;
    }
    // The entry nodes that were not the owner proxied those requests over hop channels.
    for name in ["node-1", "node-2", "node-3"]
        .into_iter()
        .filter(|n| *n != owner)
    {
        let status = cluster.status(name).await.expect("status");
        assert_eq!(status["balancer"]["transport"], "hop");
        let (sent, over_hop) = (
            proxied(&cluster, name, &owner).await,
            target_figure(&cluster, name, &owner, "over_hop").await,
        );
        assert!(
            sent >= 3 && over_hop == sent,
            "{name}: {over_hop} of {sent} over hop"
        );
    }

    // Failover under load: a client loop through the survivors while the owner is killed.
    let survivors: Vec<String> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|n| n.to_string())
        .filter(|n| *n != owner)
        .collect();
    let bases: Vec<String> = survivors.iter().map(|n| url(n)).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loop_task = {
        let (client, cookie, stop) = (client.clone(), cookie.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seen.push(counter(&client, &bases[i % 2], &cookie).await);
                i += 1;
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.kill9(&owner);
    for name in &survivors {
        cluster.wait_state(name, &owner, "down", DETECT).await;
    }
    // After detection nothing more is sent to the dead member.
    let mut at_detection = Vec::new();
    for name in &survivors {
        at_detection.push(proxied(&cluster, name, &owner).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = loop_task.await.expect("client loop");
    for (name, before) in survivors.iter().zip(at_detection) {
        assert_eq!(
            proxied(&cluster, name, &owner).await,
            before,
            "{name} still sends to {owner}"
        );
    }
    assert!(seen.len() > 10, "the client loop ran: {}", seen.len());
    for (status, count, served_by) in &seen {
        assert_eq!(*status, 200, "a request failed during failover: {seen:?}");
        assert_eq!(
            *count, expected,
            "the counter skipped or repeated: {seen:?}"
        );
        assert!(!served_by.is_empty());
        expected += 1;
    }

    // The owner comes back and takes its sessions back.
    cluster.start(&owner);
    cluster.wait_all_up(3, READY).await;
    cluster.wait_ready(READY).await;
    let base = url(&survivors[0]);
    wait_for(
        "the restarted owner serves its session again",
        READY,
        || {
            let (client, base, cookie, owner) = (&client, &base, &cookie, &owner);
            async move {
                let (_, _, served_by) = counter(client, base, cookie).await;
                (served_by == *owner).then_some(())
            }
        },
    )
    .await;
    for name in ["node-1", "node-2", "node-3"] {
        let (status, _, served_by) = counter(&client, &url(name), &cookie).await;
        assert_eq!((status, served_by.as_str()), (200, owner.as_str()));
    }

    // Drain the owner through another node: it gets no new requests; the session lives on elsewhere.
    let response = client
        .post(format!(
            "{}/cluster/nodes/{owner}/drain",
            url(&survivors[1])
        ))
        .send()
        .await
        .expect("drain");
    assert_eq!(response.status(), 200);
    for name in ["node-1", "node-2", "node-3"] {
        cluster.wait_state(name, &owner, "draining", DETECT).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let served_before = proxied(&cluster, &owner, &owner).await;
    let mut last = 0;
    for round in 0..12 {
        let entry = format!("node-{}", round % 3 + 1);
        let (status, count, served_by) = counter(&client, &url(&entry), &cookie).await;
        assert_eq!(status, 200);
        assert_ne!(
            served_by, owner,
            "a draining member got a new request via {entry}"
        );
        assert!(
            last == 0 || count == last + 1,
            "counter continues: {last} -> {count}"
        );
        last = count;
    }
    assert_eq!(proxied(&cluster, &owner, &owner).await, served_before);
    let response = client
        .post(format!("{}/cluster/nodes/{owner}/undrain", url(&owner)))
        .send()
        .await
        .expect("undrain");
    assert_eq!(response.status(), 200);
    cluster
        .wait_state(&survivors[0], &owner, "up", DETECT)
        .await;
    let started = Instant::now();
    wait_for("the undrained owner serves again", READY, || {
        let (client, base, cookie, owner) = (&client, &base, &cookie, &owner);
        async move {
            let (_, _, served_by) = counter(client, base, cookie).await;
            (served_by == *owner).then_some(())
        }
    })
    .await;
    assert!(started.elapsed() < READY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_exactly() {
    let mut cluster = Cluster::with_elements(
        3,
        r#"<raft data-dir="data" voters="3"/><balancer strategy="round-robin" retries="2"/>"#,
    );
    cluster.start_all();
    cluster.wait_ready(READY).await;
    // Ready needs only one other member; round-robin over three needs node-1 to route to all three.
    routes_to_all(&cluster, 3).await;
    let mut served = std::collections::BTreeMap::new();
    for _ in 0..30 {
        let response = cluster
            .client
            .get(format!("{}/app/hello", cluster.nodes["node-1"].url()))
            .send()
            .await
            .expect("hello");
        assert_eq!(response.status(), 200);
        let by = response.headers()["x-served-by"]
            .to_str()
            .expect("served by")
            .to_string();
        *served.entry(by).or_insert(0) += 1;
    }
    let counts: Vec<i32> = served.values().copied().collect();
    assert_eq!(counts, [10, 10, 10], "{served:?}");
    let status = cluster.status("node-2").await.expect("status");
    assert_eq!(status["balancer"]["strategy"], "round-robin");
}
