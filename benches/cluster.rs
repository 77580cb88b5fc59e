//! Cluster benchmarks with real processes (release build): `cargo bench --bench cluster -- [figures]`.
//!
//! Figures: `detection`, `convergence`, `bandwidth`, `false-positives` (default: all but false-positives,
//! which takes 5 minutes; set `BENCH_FP_SECS` to shorten it). Prints a table and writes the raw numbers as
//! JSON to `target/bench/cluster.json`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Cluster, wait_for};
use serde_json::{Value, json};

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    if values.is_empty() {
        return f64::NAN;
    }
    let mid = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

/// Time from `kill -9` until every survivor reports the victim down, over `trials` kills.
async fn detection(trials: usize) -> Value {
    let mut cluster = Cluster::new(3);
    cluster.start_all();
    cluster.wait_all_up(3, Duration::from_secs(30)).await;
    let mut seconds = Vec::new();
    for trial in 0..trials {
        let victim = format!("node-{}", trial % 3 + 1);
        let survivors: Vec<String> = cluster
            .running()
            .into_iter()
            .filter(|name| *name != victim)
            .collect();
        let killed = Instant::now();
        cluster.kill9(&victim);
        let mut pending = survivors.clone();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for survivor in pending {
                let down = cluster
                    .member(&survivor, &victim)
                    .await
                    .is_some_and(|row| row["state"] == "down");
                if !down {
                    still.push(survivor);
                }
            }
            pending = still;
            assert!(killed.elapsed() < Duration::from_secs(30), "no detection");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let elapsed = killed.elapsed().as_secs_f64();
        eprintln!("detection trial {trial}: {victim} down everywhere after {elapsed:.3}s");
        seconds.push(elapsed);
        cluster.start(&victim);
        cluster.wait_all_up(3, Duration::from_secs(30)).await;
    }
    let raw = seconds.clone();
    json!({
        "trials": trials,
        "median_s": median(&mut seconds),
        "max_s": max(&raw),
        "raw_s": raw,
    })
}

/// Time from starting `n` founders together until each reports all `n` up.
async fn convergence(n: usize, trials: usize) -> Value {
    let mut seconds = Vec::new();
    for _ in 0..trials {
        let mut cluster = Cluster::new(n);
        let started = Instant::now();
        cluster.start_all();
        cluster.wait_all_up(n, Duration::from_secs(60)).await;
        seconds.push(started.elapsed().as_secs_f64());
        drop(cluster);
    }
    let raw = seconds.clone();
    eprintln!("convergence {n} nodes: {raw:?}");
    json!({ "nodes": n, "median_s": median(&mut seconds), "max_s": max(&raw), "raw_s": raw })
}

async fn traffic_sample(cluster: &Cluster, names: &[String]) -> (Instant, Vec<(u64, u64)>) {
    let mut totals = Vec::new();
    for name in names {
        let status = cluster.status(name).await.expect("status");
        totals.push((
            status["gossip"]["bytes_sent"].as_u64().unwrap_or(0),
            status["gossip"]["bytes_received"].as_u64().unwrap_or(0),
        ));
    }
    (Instant::now(), totals)
}

/// Gossip bytes per node per second in steady state.
async fn bandwidth(n: usize, window: Duration) -> Value {
    let mut cluster = Cluster::new(n);
    cluster.start_all();
    cluster.wait_all_up(n, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let names = cluster.running();
    let (t0, before) = traffic_sample(&cluster, &names).await;
    tokio::time::sleep(window).await;
    let (t1, after) = traffic_sample(&cluster, &names).await;
    let secs = (t1 - t0).as_secs_f64();
    let mut sent: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.0 - b.0) as f64 / secs)
        .collect();
    let mut received: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.1 - b.1) as f64 / secs)
        .collect();
    let (max_sent, max_received) = (max(&sent), max(&received));
    json!({
        "nodes": n,
        "window_s": secs,
        "median_sent_bytes_per_s": median(&mut sent),
        "max_sent_bytes_per_s": max_sent,
        "median_received_bytes_per_s": median(&mut received),
        "max_received_bytes_per_s": max_received,
    })
}

/// Members reported down while both cores are saturated by busy loops and nothing was killed.
async fn false_positives(duration: Duration) -> Value {
    let mut cluster = Cluster::new(3);
    cluster.start_all();
    cluster.wait_all_up(3, Duration::from_secs(30)).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let burners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x: u64 = 1;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for _ in 0..100_000 {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    }
                    std::hint::black_box(x);
                }
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for burner in burners {
        let _ = burner.join();
    }
    let mut downs = 0;
    for name in cluster.running() {
        let events = cluster.events(&name).await;
        downs += events.iter().filter(|e| e["kind"] == "node_down").count();
    }
    let _ = wait_for("cluster still answers", Duration::from_secs(5), || async {
        cluster.status("node-1").await.map(|_| ())
    })
    .await;
    json!({ "seconds": duration.as_secs(), "nodes": 3, "busy_threads": 2, "node_down_events": downs })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| {
        if args.is_empty() {
            name != "false-positives"
        } else {
            args.iter().any(|arg| arg == name)
        }
    };
    let mut results = serde_json::Map::new();
    if wanted("detection") {
        let trials = std::env::var("BENCH_TRIALS")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(12);
        results.insert("detection".into(), detection(trials).await);
    }
    if wanted("convergence") {
        let mut rows = Vec::new();
        for n in [3, 10, 20] {
            rows.push(convergence(n, 3).await);
        }
        results.insert("convergence".into(), Value::Array(rows));
    }
    if wanted("bandwidth") {
        let mut rows = Vec::new();
        for n in [3, 20] {
            rows.push(bandwidth(n, Duration::from_secs(10)).await);
        }
        results.insert("bandwidth".into(), Value::Array(rows));
    }
    if wanted("false-positives") {
        let secs = std::env::var("BENCH_FP_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300);
        results.insert(
            "false_positives".into(),
            false_positives(Duration::from_secs(secs)).await,
        );
    }
    let document = Value::Object(results);
    println!(
        "{}",
        serde_json::to_string_pretty(&document).unwrap_or_default()
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("cluster.json"),
        serde_json::to_string_pretty(&document).unwrap_or_default(),
    );
}
