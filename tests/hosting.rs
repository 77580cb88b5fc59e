//! Hosting applications: an embedded axum app (the shop example), a docroot, and an upstream app in
//! another language (Python), each behind a real cluster.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Cluster, example_binary, free_port, wait_for};
use serde_json::Value;

const READY: Duration = Duration::from_secs(30);
const DETECT: Duration = Duration::from_secs(15);

/// Sends a request with the cookie jar `cookie` (updated from Set-Cookie); returns status, served-by, body.
async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    cookie: &mut Option<String>,
) -> (u16, String, Value) {
    let mut request = client.request(method, url);
    if let Some(cookie) = cookie.as_ref() {
        request = request.header("Cookie", cookie.as_str());
    }
    let Ok(response) = request.send().await else {
        return (0, String::new(), Value::Null);
    };
    if let Some(set) = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
    {
        *cookie = set.split(';').next().map(str::to_string);
    }
    let status = response.status().as_u16();
    let served_by = response
        .headers()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, served_by, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_cart_is_shared_and_survives_its_owner() {
    let mut cluster = Cluster::new(3);
    cluster.binary = example_binary("shop");
    cluster.start_all();
    cluster.wait_ready(READY).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let url = |name: &str, path: &str| format!("{}{path}", cluster.nodes[name].url());
    let mut cookie = None;
    let post = reqwest::Method::POST;

    let (status, _, _) = call(
        &client,
        post.clone(),
        url("node-1", "/shop/cart/add?item=apple&qty=2"),
        &mut cookie,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = call(
        &client,
        post.clone(),
        url("node-2", "/shop/cart/add?item=pear"),
        &mut cookie,
    )
    .await;
    assert_eq!(status, 200);
    let (status, owner, cart) = call(
        &client,
        reqwest::Method::GET,
        url("node-3", "/shop/cart"),
        &mut cookie,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        cart["items"],
        serde_json::json!({ "apple": 2, "pear": 1 }),
        "{cart}"
    );
    assert_eq!(cart["node"], owner.as_str());

    // Kill the member that owns this cart mid-shopping; the next request through a survivor succeeds.
    cluster.kill9(&owner);
    let survivor = ["node-1", "node-2", "node-3"]
        .into_iter()
        .find(|n| *n != owner)
        .expect("survivor");
    let survivor_url = cluster.nodes[survivor].url();
    let (status, served_by, cart) = call(
        &client,
        post.clone(),
        format!("{survivor_url}/shop/cart/add?item=banana&qty=3"),
        &mut cookie,
    )
    .await;
    assert_eq!(status, 200, "{cart}");
    assert_ne!(served_by, owner);
    assert_eq!(
        cart["items"],
        serde_json::json!({ "apple": 2, "banana": 3, "pear": 1 }),
        "{cart}"
    );
    let (status, _, order) = call(
        &client,
        post,
        format!("{survivor_url}/shop/checkout"),
        &mut cookie,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(order["items"]["banana"], 3);
    let (_, _, cart) = call(
        &client,
        reqwest::Method::GET,
        format!("{survivor_url}/shop/cart"),
        &mut cookie,
    )
    .await;
    assert_eq!(cart["count"], 0, "checkout empties the cart: {cart}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docroot_serves_exact_bytes_with_etags_ranges_and_no_traversal() {
    let mut cluster = Cluster::with_elements(
        1,
        r#"<raft data-dir="data" voters="1"/><app docroot="www"/>"#,
    );
    let www = cluster.path().join("www");
    std::fs::create_dir_all(www.join("sub")).expect("www");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(www.join("data.bin"), &data).expect("data");
    std::fs::write(www.join("sub/index.html"), "<h1>hi</h1>").expect("index");
    std::fs::write(cluster.path().join("secret.txt"), "outside the docroot").expect("secret");
    cluster.start_all();
    cluster.wait_ready(READY).await;
    let base = cluster.nodes["node-1"].url();
    let client = &cluster.client;

    let response = client
        .get(format!("{base}/data.bin"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 200);
    let etag = response.headers().get("etag").expect("etag").clone();
    assert!(response.headers().contains_key("last-modified"));
    assert_eq!(response.headers()["x-served-by"], "node-1");
    assert_eq!(response.bytes().await.expect("body").as_ref(), &data[..]);

    let response = client
        .get(format!("{base}/data.bin"))
        .header("If-None-Match", etag)
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 304);

    let response = client
        .get(format!("{base}/data.bin"))
        .header("Range", "bytes=1000-1999")
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 206);
    assert_eq!(
        response.bytes().await.expect("body").as_ref(),
        &data[1000..2000]
    );

    let response = client
        .get(format!("{base}/sub/"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "<h1>hi</h1>");

    for attack in [
        "/..%2fsecret.txt",
        "/%2e%2e/secret.txt",
        "/sub/..%2f..%2fsecret.txt",
        "/..%5csecret.txt",
        "/%2e%2e%2fcluster-config.xml",
    ] {
        let response = client
            .get(format!("{base}{attack}"))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), 404, "{attack}");
        let body = response.text().await.unwrap_or_default();
        assert!(
            !body.contains("outside the docroot") && !body.contains("<cluster"),
            "{attack}: {body}"
        );
    }
    // Compression for clients that ask for it.
    let response = client
        .get(format!("{base}/sub/index.html"))
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 200);
}

/// A Python upstream app; killed on drop.
struct PythonApp(Child);

impl Drop for PythonApp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_python(port: u16) -> PythonApp {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/upstream_app.py");
    let child = Command::new("python3")
        .args([script, &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 must be installed (CI installs it)");
    PythonApp(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_upstream_keeps_sessions_across_nodes_and_fails_over() {
    let mut cluster = Cluster::new(3);
    let mut apps = std::collections::BTreeMap::new();
    for name in ["node-1", "node-2", "node-3"] {
        let port = free_port();
        apps.insert(name.to_string(), (port, Some(start_python(port))));
        let node = cluster.nodes.get_mut(name).expect("node");
        node.args
            .extend(["--upstream".to_string(), format!("http://127.0.0.1:{port}")]);
    }
    for (port, _) in apps.values() {
        wait_for("python app listens", Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", *port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
    }
    cluster.start_all();
    cluster.wait_ready(READY).await;
    // Sticky routing needs every node to route over the same three members.
    for name in ["node-1", "node-2", "node-3"] {
        wait_for("every node routes to 3 members", READY, || async {
            let status = cluster.status(name).await?;
            (status["balancer"]["members"].as_array()?.len() == 3).then_some(())
        })
        .await;
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let urls: Vec<String> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|n| cluster.nodes[*n].url())
        .collect();

    let mut cookie = None;
    let mut owner = String::new();
    for visit in 1..=6u64 {
        let (status, served_by, doc) = call(
            &client,
            reqwest::Method::GET,
            format!("{}/visits", urls[visit as usize % 3]),
            &mut cookie,
        )
        .await;
        assert_eq!(status, 200, "{doc}");
        assert_eq!(doc["visits"], visit, "{doc}");
        assert_eq!(doc["app"], "python");
        // The first visit is routed by client address; from the second on the cookie decides.
        if visit > 2 {
            assert_eq!(served_by, owner, "sticky once the session exists");
        }
        owner = served_by;
    }

    // The owner's Python app dies: that node says it is not ready and its visitors go elsewhere.
    let owner_app = apps
        .get_mut(&owner)
        .and_then(|(_, app)| app.take())
        .expect("owner app");
    drop(owner_app);
    let mut failures = 0;
    let mut visits = 6;
    for round in 0..20 {
        let (status, served_by, doc) = call(
            &client,
            reqwest::Method::GET,
            format!("{}/visits", urls[round % 3]),
            &mut cookie,
        )
        .await;
        if status != 200 {
            failures += 1;
            continue;
        }
        assert_ne!(
            served_by, owner,
            "served by the node whose app is dead: {doc}"
        );
        visits += 1;
        assert_eq!(doc["visits"], visits, "{doc}");
    }
    assert!(
        failures <= 1,
        "{failures} requests failed; at most the one in flight may"
    );
    let ready = client
        .get(format!("{}/readyz", cluster.nodes[&owner].url()))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    for name in ["node-1", "node-2", "node-3"] {
        wait_for("the owner is reported not ready", DETECT, || async {
            let row = cluster.member(name, &owner).await?;
            (row["ready"] == false).then_some(())
        })
        .await;
    }
}
