//! A shopping cart served by a micro-tomcat cluster: an ordinary axum `Router` whose handlers use the
//! `tower_sessions::Session` extractor, backed by the cluster's replicated session store.
//!
//! `cargo run --example shop` starts node-1..3 of `cluster-config.xml` as three processes (this program
//! again, one per node) and stops them on Ctrl-C. Then, through any node:
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

/// Runs this program once per node of the repository's cluster-config.xml until Ctrl-C.
fn run_three() -> ExitCode {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = root.join("cluster-config.xml");
    let Ok(me) = std::env::current_exe() else {
        eprintln!("error: cannot find this program's path");
        return ExitCode::from(2);
    };
    let mut children = Vec::new();
    for name in ["node-1", "node-2", "node-3"] {
        let data = root.join(".cluster/shop").join(name);
        let child = std::process::Command::new(&me)
            .args(["--config", &config.display().to_string(), "--name", name])
            .args(["--data-dir", &data.display().to_string()])
            .spawn();
        match child {
            Ok(child) => children.push(child),
            Err(err) => eprintln!("error: cannot start {name}: {err}"),
        }
    }
    println!("shop: node-1..3 on http://127.0.0.1:8081..8083/shop/cart (Ctrl-C stops them)");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    if let Ok(runtime) = runtime {
        runtime.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
    }
    for child in &mut children {
        // SIGTERM, so each node leaves the cluster gracefully.
        let _ = std::process::Command::new("kill")
            .arg(child.id().to_string())
            .status();
    }
    for mut child in children {
        let _ = child.wait();
    }
    ExitCode::SUCCESS
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
                .unwrap_or_else(|_| micro_tomcat::node::DEFAULT_LOG_FILTER.into()),
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
