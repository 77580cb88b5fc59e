//! A cluster embedded in one program: three nodes built with `Node::builder` on sockets the program
//! bound itself on port 0 (no port hunting), talking over real loopback sockets.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use micro_tomcat::config::{NodeConfig, RunOverrides};
use micro_tomcat::node::{Node, PeerSockets, PeerSocketsError};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use common::wait_for;

struct Bound {
    name: String,
    http: TcpListener,
    peer: PeerSockets,
}

async fn get_json(client: &reqwest::Client, url: String) -> Option<Value> {
    let response = client.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_embedded_nodes_on_sockets_bound_at_port_zero_form_a_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut bound = Vec::new();
    for index in 1..=3 {
        bound.push(Bound {
            name: format!("node-{index}"),
            http: TcpListener::bind(loopback).await.expect("http"),
            peer: PeerSockets::bind(loopback).await.expect("peer sockets"),
        });
    }
    // Taken: binding one of those addresses again fails with a clear error.
    let taken = bound[0].peer.local_addr();
    let err = PeerSockets::bind(taken).await.expect_err("address in use");
    assert!(matches!(err, PeerSocketsError::Bind { .. }), "{err}");
    assert!(err.to_string().contains(&taken.to_string()), "{err}");

    let mut xml = format!(
        "<cluster id=\"embedded\">\n  {}\n  <raft data-dir=\"data\" voters=\"3\"/>\n  <nodes>\n",
        common::GOSSIP
    );
    for node in &bound {
        xml.push_str(&format!(
            "    <node name=\"{}\" http=\"{}\" cluster=\"{}\"/>\n",
            node.name,
            node.http.local_addr().expect("addr"),
            node.peer.local_addr()
        ));
    }
    xml.push_str("  </nodes>\n</cluster>\n");
    let config_path = dir.path().join("cluster-config.xml");
    std::fs::write(&config_path, xml).expect("write config");

    let shutdown = CancellationToken::new();
    let mut urls = Vec::new();
    let mut running = Vec::new();
    for node in bound {
        let config = NodeConfig::resolve(&RunOverrides {
            config: Some(config_path.clone()),
            name: node.name.clone(),
            ..Default::default()
        })
        .expect("config");
        urls.push(format!("http://{}", node.http.local_addr().expect("addr")));
        let builder = Node::builder(config)
            .listener(node.http)
            .peer_sockets(node.peer);
        running.push(tokio::spawn(builder.run(shutdown.clone())));
    }

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let status = wait_for(
        "every node sees three members up and one leader",
        Duration::from_secs(30),
        || async {
            let mut leaders = Vec::new();
            let mut last = None;
            for url in &urls {
                let status = get_json(&client, format!("{url}/cluster/status")).await?;
                let up = status["members"]
                    .as_array()?
                    .iter()
                    .filter(|m| m["state"] == "up")
                    .count();
                if up != 3 {
                    return None;
                }
                leaders.push(status["leader"].as_str()?.to_string());
                last = Some(status);
            }
            leaders.windows(2).all(|w| w[0] == w[1]).then_some(last?)
        },
    )
    .await;
    // Each member is listed at the address it was bound to (the port 0 turned into a real one).
    for member in status["members"].as_array().expect("members") {
        let http = member["http_addr"].as_str().expect("http_addr");
        assert!(urls.contains(&format!("http://{http}")), "{member}");
    }

    // A session written through one node is read through another.
    let created: Value = client
        .post(format!("{}/api/sessions", urls[1]))
        .json(&json!({"user": "ada"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let id = created["id"].as_str().expect("id").to_string();
    let read = wait_for("node-3 reads the session", Duration::from_secs(10), || {
        let url = format!("{}/api/sessions/{id}", urls[2]);
        let client = client.clone();
        async move { get_json(&client, url).await }
    })
    .await;
    assert_eq!(read["data"], json!({"user": "ada"}));

    shutdown.cancel();
    for node in running {
        let stopped = tokio::time::timeout(Duration::from_secs(30), node)
            .await
            .expect("every node stops within 30 s of shutdown")
            .expect("no panic");
        assert!(stopped.is_ok(), "{stopped:?}");
    }
}
