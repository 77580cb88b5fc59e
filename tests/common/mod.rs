//! Test harness: real `micro-tomcat` processes on loopback, free ports, deadlines instead of sleeps.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::future::Future;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test; `cargo test` builds it first.
pub const BIN: &str = env!("CARGO_BIN_EXE_micro-tomcat");

/// Clusters compete for two cores: run one at a time or starvation fakes failures.
pub fn cluster_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A port free for both TCP and UDP on 127.0.0.1, never handed out twice by this process.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    for _ in 0..1000 {
        let Ok(tcp) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(port) = tcp.local_addr().map(|addr| addr.port()) else {
            continue;
        };
        if UdpSocket::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let mut given = given.lock().unwrap_or_else(PoisonError::into_inner);
        if given.insert(port) {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1");
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One node process.
pub struct NodeProc {
    pub name: String,
    pub http: SocketAddr,
    pub cluster: SocketAddr,
    pub args: Vec<String>,
    pub child: Option<Child>,
    pub log: PathBuf,
    /// Extra environment variables (e.g. `MICRO_TOMCAT_GOSSIP_KEY`), set on every start.
    pub env: Vec<(String, String)>,
}

impl NodeProc {
    /// Base URL of its HTTP port.
    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }
}

/// A local cluster in a temporary folder; every process is killed on drop.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub nodes: BTreeMap<String, NodeProc>,
    pub client: reqwest::Client,
    /// The program every node runs (the `micro-tomcat` binary unless a test swaps in an example).
    pub binary: PathBuf,
    _lock: MutexGuard<'static, ()>,
}

/// Path of a compiled example (`cargo test` builds examples next to the binary).
pub fn example_binary(name: &str) -> PathBuf {
    let bin = Path::new(BIN);
    let dir = bin.parent().expect("target dir");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --examples`",
        path.display()
    );
    path
}

/// Gossip settings for tests: the defaults, spelled out.
pub const GOSSIP: &str = r#"<gossip interval-ms="150" phi-threshold="8" dead-after-ms="5000"/>"#;

impl Cluster {
    /// Writes a config with `founders` nodes (node-1..) on free ports; starts nothing.
    pub fn new(founders: usize) -> Cluster {
        Cluster::with_raft(founders, r#"data-dir="data" voters="3""#)
    }

    /// Like [`Cluster::new`], with the given `<raft>` attributes.
    pub fn with_raft(founders: usize, raft_attrs: &str) -> Cluster {
        Cluster::with_elements(founders, &format!("<raft {raft_attrs}/>"))
    }

    /// Like [`Cluster::new`], with these elements (besides `<gossip>` and `<nodes>`) in the file.
    pub fn with_elements(founders: usize, elements: &str) -> Cluster {
        let lock = cluster_lock();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = BTreeMap::new();
        let mut xml = format!("<cluster id=\"test\">\n  {GOSSIP}\n  {elements}\n  <nodes>\n");
        for index in 1..=founders {
            let name = format!("node-{index}");
            let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let cluster: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            xml.push_str(&format!(
                "    <node name=\"{name}\" http=\"{http}\" cluster=\"{cluster}\"/>\n"
            ));
            let log = dir.path().join(format!("{name}.log"));
            nodes.insert(
                name.clone(),
                NodeProc {
                    name: name.clone(),
                    http,
                    cluster,
                    args: vec![],
                    child: None,
                    log,
                    env: Vec::new(),
                },
            );
        }
        xml.push_str("  </nodes>\n</cluster>\n");
        let config = dir.path().join("cluster-config.xml");
        std::fs::write(&config, xml).expect("write config");
        for node in nodes.values_mut() {
            node.args = vec![
                "run".into(),
                "--config".into(),
                config.display().to_string(),
                "--name".into(),
                node.name.clone(),
            ];
        }
        Cluster {
            dir,
            config,
            nodes,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("client"),
            // Worktrees that share a target dir overwrite each other's `target/debug/micro-tomcat`;
            // MICRO_TOMCAT_TEST_BIN names a private copy of the binary to test instead.
            binary: std::env::var_os("MICRO_TOMCAT_TEST_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(BIN)),
            _lock: lock,
        }
    }

    /// Adds a node that joins through `seed`'s cluster address (not started).
    pub fn add_joiner(&mut self, name: &str, seed: &str) {
        let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let cluster: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let seed_addr = self.nodes[seed].cluster;
        let args = vec![
            "run".into(),
            "--name".into(),
            name.into(),
            "--http".into(),
            http.to_string(),
            "--cluster".into(),
            cluster.to_string(),
            "--seed".into(),
            seed_addr.to_string(),
            "--config".into(),
            self.config.display().to_string(),
        ];
        let log = self.dir.path().join(format!("{name}.log"));
        self.nodes.insert(
            name.to_string(),
            NodeProc {
                name: name.to_string(),
                http,
                cluster,
                args,
                child: None,
                log,
                env: Vec::new(),
            },
        );
    }

    /// Starts a node process (appending to its log).
    pub fn start(&mut self, name: &str) {
        let node = self.nodes.get_mut(name).expect("known node");
        assert!(node.child.is_none(), "{name} already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("log file");
        let child = Command::new(&self.binary)
            .args(&node.args)
            .current_dir(self.dir.path())
            .env(
                "RUST_LOG",
                "info,chitchat=warn,openraft=warn,openraft::core::raft_core=off",
            )
            // The caller's own secrets never leak into a test node; a test gives them with `env`.
            .env_remove("MICRO_TOMCAT_GOSSIP_KEY")
            .env_remove("MICRO_TOMCAT_ADMIN_TOKEN")
            .envs(node.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn micro-tomcat");
        node.child = Some(child);
    }

    /// Starts every node not running.
    pub fn start_all(&mut self) {
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in names {
            if self.nodes[&name].child.is_none() {
                self.start(&name);
            }
        }
    }

    fn signal(&mut self, name: &str, signal: &str) -> Child {
        let node = self.nodes.get_mut(name).expect("known node");
        let child = node.child.take().expect("node running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {name}");
        child
    }

    /// `kill -9`: no goodbye.
    pub fn kill9(&mut self, name: &str) {
        let mut child = self.signal(name, "-KILL");
        let _ = child.wait();
    }

    /// SIGTERM and wait for the process to exit; returns its exit code.
    pub fn terminate(&mut self, name: &str) -> Option<i32> {
        let mut child = self.signal(name, "-TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{name} did not exit within 20s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether a started node's process is still alive.
    pub fn is_running(&mut self, name: &str) -> bool {
        match self
            .nodes
            .get_mut(name)
            .and_then(|node| node.child.as_mut())
        {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// GET a JSON document from a node, `None` if it does not answer 200 with JSON.
    pub async fn get_json(&self, name: &str, path: &str) -> Option<Value> {
        let url = format!("{}{path}", self.nodes[name].url());
        let response = self.client.get(url).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// `/cluster/status` of a node.
    pub async fn status(&self, name: &str) -> Option<Value> {
        self.get_json(name, "/cluster/status").await
    }

    /// `member`'s row in `viewer`'s status.
    pub async fn member(&self, viewer: &str, member: &str) -> Option<Value> {
        let status = self.status(viewer).await?;
        status["members"]
            .as_array()?
            .iter()
            .find(|row| row["name"] == member)
            .cloned()
    }

    /// Waits until every running node reports exactly `expected` members, all `up`.
    pub async fn wait_all_up(&self, expected: usize, timeout: Duration) {
        let running: Vec<String> = self
            .nodes
            .values()
            .filter(|node| node.child.is_some())
            .map(|node| node.name.clone())
            .collect();
        wait_for(
            &format!("{running:?} each report {expected} members up"),
            timeout,
            || async {
                for name in &running {
                    let status = self.status(name).await?;
                    let members = status["members"].as_array()?;
                    let up = members.iter().filter(|row| row["state"] == "up").count();
                    if members.len() != expected || up != expected {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await
    }

    /// Waits until `viewer` reports `member` in `state`; returns the row.
    pub async fn wait_state(
        &self,
        viewer: &str,
        member: &str,
        state: &str,
        timeout: Duration,
    ) -> Value {
        wait_for(
            &format!("{viewer} reports {member} {state}"),
            timeout,
            || async {
                let row = self.member(viewer, member).await?;
                (row["state"] == state).then_some(row)
            },
        )
        .await
    }

    /// `viewer`'s event history.
    pub async fn events(&self, viewer: &str) -> Vec<Value> {
        self.get_json(viewer, "/cluster/events")
            .await
            .and_then(|doc| doc["events"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Names of the nodes whose process runs.
    pub fn running(&self) -> Vec<String> {
        self.nodes
            .values()
            .filter(|node| node.child.is_some())
            .map(|node| node.name.clone())
            .collect()
    }

    /// Path of the data folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            for node in self.nodes.values() {
                let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("----- last lines of {} -----", node.name);
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

impl Cluster {
    /// Waits until every running node answers `/readyz` with 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let running = self.running();
        wait_for(&format!("{running:?} ready"), timeout, || async {
            for name in &running {
                let url = format!("{}/readyz", self.nodes[name].url());
                let response = self.client.get(url).send().await.ok()?;
                if response.status() != 200 {
                    return None;
                }
            }
            Some(())
        })
        .await
    }

    /// The Raft leader's name as `viewer` reports it.
    pub async fn leader(&self, viewer: &str) -> Option<String> {
        self.status(viewer).await?["leader"]
            .as_str()
            .map(str::to_string)
    }

    /// Waits until every running node names the same leader; returns it.
    pub async fn wait_leader(&self, timeout: Duration) -> String {
        let running = self.running();
        wait_for("one leader named by every node", timeout, || async {
            let mut leader = None;
            for name in &running {
                let seen = self.leader(name).await?;
                if leader.get_or_insert_with(|| seen.clone()) != &seen {
                    return None;
                }
            }
            leader.filter(|leader| running.contains(leader))
        })
        .await
    }

    /// Watches for `window`: every running node keeps naming `leader` at `term`. Returns what changed,
    /// if anything.
    pub async fn leadership_changes(
        &self,
        leader: &str,
        term: u64,
        window: Duration,
    ) -> Option<String> {
        let until = Instant::now() + window;
        while Instant::now() < until {
            for name in self.running() {
                let Some(status) = self.status(&name).await else {
                    continue;
                };
                let seen = (
                    status["raft"]["leader"].as_str().unwrap_or("-").to_string(),
                    status["raft"]["term"].as_u64().unwrap_or(0),
                );
                if seen != (leader.to_string(), term) {
                    return Some(format!(
                        "{name} reports leader {} at term {} (expected {leader} at term {term})",
                        seen.0, seen.1
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// `/cluster/sessions/digest` of a node: (applied index, session count, digest).
    pub async fn digest(&self, name: &str) -> Option<(u64, u64, String)> {
        let doc = self.get_json(name, "/cluster/sessions/digest").await?;
        Some((
            doc["applied_index"].as_u64().unwrap_or(0),
            doc["sessions"].as_u64()?,
            doc["digest"].as_str()?.to_string(),
        ))
    }

    /// Waits until every running node holds identical sessions at the same applied index.
    pub async fn wait_identical(&self, timeout: Duration) -> (u64, u64, String) {
        let running = self.running();
        wait_for("identical session state on every node", timeout, || async {
            let mut first = None;
            for name in &running {
                let digest = self.digest(name).await?;
                if first.get_or_insert_with(|| digest.clone()) != &digest {
                    return None;
                }
            }
            first
        })
        .await
    }

    /// `POST /cluster/config/reload` on `name`: the status code and the JSON answer.
    pub async fn reload(&self, name: &str) -> (u16, Value) {
        let url = format!("{}/cluster/config/reload", self.nodes[name].url());
        let response = self.client.post(url).send().await.expect("reload answer");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The value of one series (`name{labels}` exactly as `/metrics` prints it) on node `name`.
    pub async fn metric(&self, name: &str, series: &str) -> Option<f64> {
        let url = format!("{}/metrics", self.nodes[name].url());
        let response = self.client.get(url).send().await.ok()?;
        let text = response.text().await.ok()?;
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                line.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
    }

    /// Replaces `from` (which must occur) with `to` in the config file.
    pub fn rewrite_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).expect("read config");
        assert!(text.contains(from), "{from} not in {text}");
        std::fs::write(&self.config, text.replace(from, to)).expect("write config");
    }

    /// POST a session with `data` through `name`; returns its id when acknowledged (201).
    pub async fn create_session(&self, name: &str, data: &Value) -> Option<String> {
        let url = format!("{}/api/sessions", self.nodes[name].url());
        let response = self.client.post(url).json(data).send().await.ok()?;
        if response.status() != 201 {
            return None;
        }
        let doc: Value = response.json().await.ok()?;
        doc["id"].as_str().map(str::to_string)
    }

    /// GET a session's data through `name`; `None` when not 200.
    pub async fn session_data(&self, name: &str, id: &str) -> Option<Value> {
        let doc = self.get_json(name, &format!("/api/sessions/{id}")).await?;
        Some(doc["data"].clone())
    }
}

/// A webhook receiver on a free port that keeps every body it is sent.
pub struct WebhookReceiver {
    /// Where to POST (`http://127.0.0.1:PORT/hook`).
    pub url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl WebhookReceiver {
    /// Listens on a free port until the test ends.
    pub async fn start() -> WebhookReceiver {
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let kept = bodies.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let kept = kept.clone();
                async move {
                    kept.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(body);
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        WebhookReceiver {
            url: format!("http://{addr}/hook"),
            bodies,
        }
    }

    /// `(status, alertname, member)` of every alert received so far, in order.
    pub fn alerts(&self) -> Vec<(String, String, String)> {
        let bodies = self.bodies.lock().unwrap_or_else(PoisonError::into_inner);
        bodies
            .iter()
            .flat_map(|body| body["alerts"].as_array().cloned().unwrap_or_default())
            .map(|alert| {
                let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
                (
                    text(&alert["status"]),
                    text(&alert["labels"]["alertname"]),
                    text(&alert["labels"]["member"]),
                )
            })
            .collect()
    }

    /// Every body received so far, in order.
    pub fn bodies(&self) -> Vec<Value> {
        self.bodies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
