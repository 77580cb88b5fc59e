//! A shopping cart served by a micro-tomcat cluster: an ordinary axum `Router` whose handlers use the
//! `tower_sessions::Session` extractor, backed by the cluster's replicated session store.
//!
//! `cargo run --example shop` starts node-1..3 of `cluster-config.xml` as three processes (this program
//! again, one per node), prints the URLs once all three are ready and stops them on Ctrl-C; when a node
//! stops by itself (it cannot start: a port in use, say) it stops the others and exits 2 with that
//! node's error. Then, through any node:
//!
//! ```text
//! curl -c jar -b jar -XPOST '127.0.0.1:8081/shop/cart/add?item=apple&qty=2'
//! curl -c jar -b jar '127.0.0.1:8083/shop/cart'
//! curl -c jar -b jar -XPOST 127.0.0.1:8082/shop/checkout
//! ```
//!
//! `cargo run --example shop -- --config FILE --name node-2 [--http ... --cluster ... --seed ...]` runs one node.

use std::collections::BTreeMap;
use std::process::ExitCode;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use micro_tomcat::cli::RunArgs;
use micro_tomcat::config::NodeConfig;
use micro_tomcat::node::Node;
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tower_sessions::Session;

/// Session key of the cart: item name → quantity.
const CART: &str = "cart";

type Cart = BTreeMap<String, u32>;

#[derive(Debug, Parser)]
struct ShopArgs {
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Deserialize)]
struct ItemQuery {
    item: String,
    qty: Option<u32>,
}

fn shop(node: String) -> Router {
    Router::new()
        .route("/shop/cart", get(list))
        .route("/shop/cart/add", post(add))
        .route("/shop/cart/remove", post(remove))
        .route("/shop/checkout", post(checkout))
        .with_state(node)
}

fn store_error(err: tower_sessions::session::Error) -> Response {
    let body = json!({ "error": format!("session store: {err}") });
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

async fn load(session: &Session) -> Result<Cart, Response> {
    session
        .get::<Cart>(CART)
        .await
        .map(Option::unwrap_or_default)
        .map_err(store_error)
}

fn answer(node: &str, cart: &Cart) -> Response {
    let count: u32 = cart.values().sum();
    axum::Json(json!({ "items": cart, "count": count, "node": node })).into_response()
}

async fn list(State(node): State<String>, session: Session) -> Response {
    match load(&session).await {
        Ok(cart) => answer(&node, &cart),
        Err(response) => response,
    }
}

async fn add(State(node): State<String>, session: Session, Query(q): Query<ItemQuery>) -> Response {
    let mut cart = match load(&session).await {
        Ok(cart) => cart,
        Err(response) => return response,
    };
    *cart.entry(q.item).or_default() += q.qty.unwrap_or(1).max(1);
    match session.insert(CART, &cart).await {
        Ok(()) => answer(&node, &cart),
        Err(err) => store_error(err),
    }
}

async fn remove(
    State(node): State<String>,
    session: Session,
    Query(q): Query<ItemQuery>,
) -> Response {
    let mut cart = match load(&session).await {
        Ok(cart) => cart,
        Err(response) => return response,
    };
    cart.remove(&q.item);
    match session.insert(CART, &cart).await {
        Ok(()) => answer(&node, &cart),
        Err(err) => store_error(err),
    }
}

async fn checkout(State(node): State<String>, session: Session) -> Response {
    let cart = match load(&session).await {
        Ok(cart) => cart,
        Err(response) => return response,
    };
    if cart.is_empty() {
        let body = json!({ "error": "the cart is empty" });
        return (StatusCode::CONFLICT, axum::Json(body)).into_response();
    }
    if let Err(err) = session.remove::<Cart>(CART).await {
        return store_error(err);
    }
    let order = proto::raft::SessionId::generate().to_string();
    axum::Json(json!({ "order": &order[..12], "items": cart, "node": node })).into_response()
}

/// Runs this program once per node of the repository's cluster-config.xml until Ctrl-C, or until a
/// node stops by itself (it could not start: a port in use, say), which stops the others and exits 2.
fn run_three() -> ExitCode {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = root.join("cluster-config.xml");
    let Ok(me) = std::env::current_exe() else {
        eprintln!("error: cannot find this program's path");
        return ExitCode::from(2);
    };
    let mut nodes = Vec::new();
    for (name, port) in [("node-1", 8081), ("node-2", 8082), ("node-3", 8083)] {
        let data = root.join(".cluster/shop").join(name);
        let mut command = std::process::Command::new(&me);
        command
            .args(["--config", &config.display().to_string(), "--name", name])
            .args(["--data-dir", &data.display().to_string()]);
        match NodeProcess::spawn(name, command) {
            Ok(node) => nodes.push((node, format!("http://127.0.0.1:{port}/readyz"))),
            Err(err) => {
                eprintln!("error: shop: cannot start {name}: {err}");
                stop_all(nodes.into_iter().map(|(node, _)| node).collect());
                return ExitCode::from(2);
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: shop: cannot start the async runtime: {err}");
            stop_all(nodes.into_iter().map(|(node, _)| node).collect());
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(supervise(nodes, async {
        let _ = tokio::signal::ctrl_c().await;
    }));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("error: shop: {reason}");
            ExitCode::from(2)
        }
    }
}

/// One node started by `run_three`: its process, and the last `error:` line it wrote to stderr
/// (its stderr is copied through to ours by a thread).
struct NodeProcess {
    name: String,
    child: std::process::Child,
    copier: Option<std::thread::JoinHandle<Option<String>>>,
}

impl NodeProcess {
    fn spawn(name: &str, mut command: std::process::Command) -> std::io::Result<NodeProcess> {
        let mut child = command.stderr(std::process::Stdio::piped()).spawn()?;
        let copier = child.stderr.take().map(|stderr| {
            std::thread::spawn(move || {
                use std::io::BufRead;
                let mut last_error = None;
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("{line}");
                    if let Some(error) = line.strip_prefix("error: ") {
                        last_error = Some(error.to_string());
                    }
                }
                last_error
            })
        });
        Ok(NodeProcess {
            name: name.to_string(),
            child,
            copier,
        })
    }

    /// Sends SIGTERM, so the node leaves the cluster gracefully.
    fn terminate(&self) {
        let _ = std::process::Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits for the process and its stderr; returns the last error line it wrote.
    fn finish(mut self) -> Option<String> {
        let _ = self.child.wait();
        self.copier
            .take()
            .and_then(|copier| copier.join().ok().flatten())
    }
}

fn stop_all(nodes: Vec<NodeProcess>) {
    for node in &nodes {
        node.terminate();
    }
    for node in nodes {
        node.finish();
    }
}

/// Watches `nodes` until `stop` completes (then stops them: `Ok`), printing the URLs once every
/// node's readiness URL answers 200. A node that exits by itself first stops the others and is an
/// `Err` naming it, how it ended and its last error line.
async fn supervise(
    nodes: Vec<(NodeProcess, String)>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let (mut nodes, ready_urls): (Vec<NodeProcess>, Vec<String>) = nodes.into_iter().unzip();
    println!("shop: starting node-1..3 (Ctrl-C stops them)");
    let mut announced = false;
    tokio::pin!(stop);
    let outcome = loop {
        tokio::select! {
            () = &mut stop => break Ok(()),
            () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
        }
        if let Some(index) = nodes
            .iter_mut()
            .position(|node| !matches!(node.child.try_wait(), Ok(None)))
        {
            let mut node = nodes.remove(index);
            let name = node.name.clone();
            let status = node
                .child
                .try_wait()
                .ok()
                .flatten()
                .map_or("it ended".to_string(), |status| status.to_string());
            let error = node.finish().unwrap_or_else(|| "no error line".to_string());
            break Err(format!(
                "{name} stopped ({status}): {error}; stopping the others"
            ));
        }
        if !announced {
            let mut ready = true;
            for url in &ready_urls {
                ready &= micro_tomcat::cli::http_get(url).await.is_ok();
            }
            if ready {
                println!("shop: node-1..3 on http://127.0.0.1:8081..8083/shop/cart");
                announced = true;
            }
        }
    };
    stop_all(nodes);
    outcome
}

fn main() -> ExitCode {
    if std::env::args().len() == 1 {
        return run_three();
    }
    // Accept `shop run --name ...` too, the spelling of the micro-tomcat binary.
    let args = ShopArgs::parse_from(
        std::env::args()
            .enumerate()
            .filter(|(index, arg)| !(*index == 1 && arg == "run"))
            .map(|(_, arg)| arg),
    );
    let config = match NodeConfig::resolve(&args.run.overrides()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(1);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| micro_tomcat::logging::DEFAULT_LOG_FILTER.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(term) => { term.recv().await; } None => std::future::pending().await } } => {}
            }
            stop.cancel();
        });
        let name = config.me.name.clone();
        match Node::builder(config).app(shop(name)).run(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::from(2)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(name: &str, script: &str) -> (NodeProcess, String) {
        let mut command = std::process::Command::new("sh");
        command.args(["-c", script]);
        let node = NodeProcess::spawn(name, command).expect("spawn sh");
        // Port 9 on loopback: nothing answers, so the URLs are never announced.
        (node, "http://127.0.0.1:9/readyz".to_string())
    }

    #[tokio::test]
    async fn a_node_that_cannot_start_stops_the_others_and_is_reported() {
        let nodes = vec![
            shell(
                "node-1",
                "echo 'error: cannot listen for HTTP on 127.0.0.1:8081: Address already in use' >&2; exit 2",
            ),
            shell("node-2", "exec sleep 60"),
        ];
        let started = std::time::Instant::now();
        let outcome = supervise(nodes, std::future::pending()).await;
        let reason = outcome.expect_err("node-1 failed");
        assert!(
            reason.starts_with("node-1 stopped (exit status: 2)"),
            "{reason}"
        );
        assert!(reason.contains("Address already in use"), "{reason}");
        // node-2 was terminated, not waited for its 60 s.
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
    }

    #[tokio::test]
    async fn stop_ends_every_node() {
        let nodes = vec![
            shell("node-1", "exec sleep 60"),
            shell("node-2", "exec sleep 60"),
        ];
        let stop = tokio::time::sleep(std::time::Duration::from_millis(300));
        assert_eq!(supervise(nodes, stop).await, Ok(()));
    }
}
