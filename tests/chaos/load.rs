//! Client load for the chaos scenarios, the fault windows that excuse a client's failures, a
//! collector of who led which term, and the invariant checks run after each scenario.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::common::Cluster;

/// A node as clients see it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub url: String,
}

/// Every node of the cluster, by name.
pub fn entries(cluster: &Cluster) -> Vec<Entry> {
    cluster
        .nodes
        .values()
        .map(|node| Entry {
            name: node.name.clone(),
            url: node.url(),
        })
        .collect()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("client")
}

/// An acknowledged session write (201).
#[derive(Clone, Debug)]
pub struct Ack {
    pub id: String,
    pub data: Value,
    pub via: String,
    pub started: Instant,
    pub at: Instant,
}

/// A successful GET.
#[derive(Clone, Debug)]
pub struct GetOk {
    pub served_by: String,
    pub count: Option<u64>,
    pub new_cookie: bool,
}

/// One GET by a reader, in the reader's order.
#[derive(Clone, Debug)]
pub struct Get {
    pub reader: usize,
    pub entry: String,
    pub path: &'static str,
    pub started: Instant,
    pub ended: Instant,
    pub result: Result<GetOk, String>,
}

#[derive(Default)]
struct Shared {
    acks: Mutex<Vec<Ack>>,
    gets: Mutex<Vec<Get>>,
    write_attempts: AtomicU64,
}

/// Session writers and cookie-carrying readers running until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    started: Instant,
    started_wall: SystemTime,
    next_writer: usize,
}

/// Extra writers that stop on their own flag (see [`Load::burst`]).
pub struct Burst {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Burst {
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// How long after a request failed it may still take effect: the node executing it keeps going when
/// the client (or the proxying entry node) gives up, and across a partition it cannot learn that
/// they did; it gives up itself after waiting for a leader to read (8 s) and again to write (8 s).
/// A counter that moves by more than one within this window after a failure is that request landing
/// late; moving back or standing still is never excused.
pub const UNKNOWN_OUTCOME_WINDOW: Duration = Duration::from_secs(20);

/// Client request timeouts: longer than a leader election plus a forwarded write.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
pub const READ_TIMEOUT: Duration = Duration::from_secs(12);

impl Load {
    /// `writers_per_node` tasks per node POSTing sessions through that node (so a stalled node
    /// stalls only its own writers), and `readers` tasks GETting `/app/counter` and `/app/hello`
    /// with their own cookie, cycling through `entries`.
    pub fn start(entries: &[Entry], writers_per_node: usize, readers: usize) -> Load {
        let mut load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            shared: Arc::new(Shared::default()),
            tasks: Vec::new(),
            started: Instant::now(),
            started_wall: SystemTime::now(),
            next_writer: 0,
        };
        for _ in 0..writers_per_node {
            for entry in entries {
                let task = load.writer(entry, load.stop.clone(), Duration::from_millis(5));
                load.tasks.push(task);
            }
        }
        for reader in 0..readers {
            let (entries, shared, stop) =
                (entries.to_vec(), load.shared.clone(), load.stop.clone());
            load.tasks
                .push(tokio::spawn(read_loop(reader, entries, shared, stop)));
        }
        load
    }

    fn writer(&mut self, entry: &Entry, stop: Arc<AtomicBool>, pause: Duration) -> JoinHandle<()> {
        let writer = self.next_writer;
        self.next_writer += 1;
        let (entry, shared, stop_all) = (entry.clone(), self.shared.clone(), self.stop.clone());
        tokio::spawn(async move {
            let client = client(WRITE_TIMEOUT);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && !stop_all.load(Ordering::Relaxed) {
                n += 1;
                let data = json!({ "w": writer, "n": n, "pad": "x".repeat(n as usize % 40) });
                shared.write_attempts.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let sent = client
                    .post(format!("{}/api/sessions", entry.url))
                    .json(&data)
                    .send()
                    .await;
                let acked = match sent {
                    Ok(response) if response.status() == 201 => response
                        .json::<Value>()
                        .await
                        .ok()
                        .and_then(|doc| doc["id"].as_str().map(str::to_string)),
                    _ => None,
                };
                match acked {
                    Some(id) => {
                        lock(&shared.acks).push(Ack {
                            id,
                            data,
                            via: entry.name.clone(),
                            started,
                            at: Instant::now(),
                        });
                        tokio::time::sleep(pause).await;
                    }
                    // A refused connection returns at once: do not spin on a dead node.
                    None => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
    }

    /// `count` more writers through `entry` (no pause between writes) until the returned burst is
    /// stopped.
    pub fn burst(&mut self, entry: &Entry, count: usize) -> Burst {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..count)
            .map(|_| self.writer(entry, stop.clone(), Duration::ZERO))
            .collect();
        Burst { stop, tasks }
    }

    /// Writes acknowledged so far.
    pub fn acked(&self) -> usize {
        lock(&self.shared.acks).len()
    }

    /// Writes acknowledged after `since` through one of `via` (any node when empty).
    pub fn acked_since(&self, since: Instant, via: &[String]) -> usize {
        lock(&self.shared.acks)
            .iter()
            .filter(|ack| ack.started >= since && (via.is_empty() || via.contains(&ack.via)))
            .count()
    }

    /// Acknowledged writes that were sent through one of `via` after `since`.
    pub fn acks_via_since(&self, since: Instant, via: &[String]) -> Vec<Ack> {
        lock(&self.shared.acks)
            .iter()
            .filter(|ack| ack.started >= since && via.contains(&ack.via))
            .cloned()
            .collect()
    }

    /// Stops every task and returns what the clients saw.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("load task");
        }
        let acks = std::mem::take(&mut *lock(&self.shared.acks));
        let gets = std::mem::take(&mut *lock(&self.shared.gets));
        LoadReport {
            acks,
            gets,
            write_attempts: self.shared.write_attempts.load(Ordering::Relaxed),
            started: self.started,
            started_wall: self.started_wall,
            elapsed: self.started.elapsed(),
        }
    }
}

/// The cookie pair of a `Set-Cookie` header, if any.
fn set_cookie(response: &reqwest::Response) -> Option<String> {
    let value = response.headers().get("set-cookie")?.to_str().ok()?;
    value.split(';').next().map(str::to_string)
}

async fn read_loop(reader: usize, entries: Vec<Entry>, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let client = client(READ_TIMEOUT);
    let mut cookie: Option<String> = None;
    let mut i = reader;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let entry = &entries[i % entries.len()];
        // Until the reader has a session, only the counter (which creates one) is asked.
        let path = if cookie.is_none() || i % 2 == 0 {
            "/app/counter"
        } else {
            "/app/hello"
        };
        let started = Instant::now();
        let mut request = client.get(format!("{}{path}", entry.url));
        if let Some(cookie) = &cookie {
            request = request.header("Cookie", cookie);
        }
        let result = match request.send().await {
            Err(err) => Err(format!("{err:?}").chars().take(200).collect()),
            Ok(response) if response.status() != 200 => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                Err(format!(
                    "{status}: {}",
                    body.chars().take(200).collect::<String>()
                ))
            }
            Ok(response) => {
                let served_by = response
                    .headers()
                    .get("x-served-by")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let new = set_cookie(&response);
                let body = response.text().await;
                match body {
                    Err(err) => Err(format!("body: {err}")),
                    Ok(body) => {
                        let count = (path == "/app/counter")
                            .then(|| serde_json::from_str::<Value>(&body).ok())
                            .flatten()
                            .and_then(|doc| doc["count"].as_u64());
                        let new_cookie = match new {
                            Some(new) if cookie.as_ref() != Some(&new) => {
                                let first = cookie.is_none();
                                cookie = Some(new);
                                !first
                            }
                            _ => false,
                        };
                        Ok(GetOk {
                            served_by,
                            count,
                            new_cookie,
                        })
                    }
                }
            }
        };
        let failed = result.is_err();
        lock(&shared.gets).push(Get {
            reader,
            entry: entry.name.clone(),
            path,
            started,
            ended: Instant::now(),
            result,
        });
        let pause = if failed { 100 } else { 20 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// `HH:MM:SS.mmm` of a wall-clock time, UTC (to find the moment in the node logs).
pub fn utc(time: SystemTime) -> String {
    let ms = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

/// Time windows during which a node is faulted (killed, paused, restarting, partitioned): a client
/// request entering that node may fail then.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<Vec<Window>>>);

struct Window {
    node: String,
    from: Instant,
    to: Option<Instant>,
}

/// Requests that end this long after a node recovered are still excused.
const FAULT_MARGIN: Duration = Duration::from_secs(1);

impl Faults {
    /// `node` is faulted from now on.
    pub fn begin(&self, node: &str) {
        lock(&self.0).push(Window {
            node: node.to_string(),
            from: Instant::now(),
            to: None,
        });
    }

    /// `node` recovered (ready and seen up by every member).
    pub fn end(&self, node: &str) {
        for window in lock(&self.0).iter_mut() {
            if window.node == node && window.to.is_none() {
                window.to = Some(Instant::now());
            }
        }
    }

    /// Whether any node had a fault while `started..ended` (with the usual margin after it).
    fn any_during(&self, started: Instant, ended: Instant) -> bool {
        lock(&self.0).iter().any(|window| {
            let to = window.to.map_or(ended, |to| to + FAULT_MARGIN);
            started <= to && ended >= window.from
        })
    }

    fn excuses(&self, node: &str, started: Instant, ended: Instant) -> bool {
        lock(&self.0).iter().any(|window| {
            let to = window.to.map_or(ended, |to| to + FAULT_MARGIN);
            window.node == node && started <= to && ended >= window.from
        })
    }
}

/// What the clients saw.
pub struct LoadReport {
    pub acks: Vec<Ack>,
    pub gets: Vec<Get>,
    pub write_attempts: u64,
    pub started: Instant,
    pub started_wall: SystemTime,
    pub elapsed: Duration,
}

impl LoadReport {
    /// Acknowledged id → data.
    pub fn acked(&self) -> BTreeMap<String, Value> {
        self.acks
            .iter()
            .map(|ack| (ack.id.clone(), ack.data.clone()))
            .collect()
    }

    /// Failed GETs not excused by a fault of their entry node, and counter anomalies: a session
    /// replaced (new cookie), a count going back, or a count skipping with no failed request between.
    pub fn get_violations(&self, faults: &Faults) -> Vec<String> {
        let mut violations = Vec::new();
        let mut by_reader: BTreeMap<usize, Vec<&Get>> = BTreeMap::new();
        for get in &self.gets {
            by_reader.entry(get.reader).or_default().push(get);
        }
        for (reader, gets) in by_reader {
            let mut last: Option<u64> = None;
            let mut last_failure: Option<String> = None;
            // When this reader's last request failed: until the server gives up on it, that request may
            // still take effect (see `UNKNOWN_OUTCOME_WINDOW`).
            let mut last_failure_at: Option<Instant> = None;
            for get in gets {
                let after_failure = last_failure_at.is_some_and(|at| {
                    get.started.saturating_duration_since(at) < UNKNOWN_OUTCOME_WINDOW
                });
                let at = get.started.saturating_duration_since(self.started);
                let wall = utc(self.started_wall + at);
                match &get.result {
                    Err(err) => {
                        // A save refused because another execution (a late one of this reader's own
                        // failed request, or a copy a proxy gave up on during a fault) changed the
                        // session first: the conflict is reported and nothing is overwritten.
                        let conflict = err.contains("changed by another request meanwhile");
                        let excused = faults.excuses(&get.entry, get.started, get.ended)
                            || (conflict
                                && (after_failure || faults.any_during(get.started, get.ended)));
                        last_failure_at = Some(get.ended);
                        last_failure = Some(format!(
                            "GET {} via {} at +{:.1}s..+{:.1}s: {}",
                            get.path,
                            get.entry,
                            at.as_secs_f64(),
                            get.ended
                                .saturating_duration_since(self.started)
                                .as_secs_f64(),
                            err.chars().take(80).collect::<String>()
                        ));
                        if !excused {
                            violations.push(format!(
                                "reader {reader}: GET {} via {} at +{:.1}s ({wall} UTC) failed after {:.1}s: {err}",
                                get.path,
                                get.entry,
                                at.as_secs_f64(),
                                (get.ended - get.started).as_secs_f64()
                            ));
                        }
                    }
                    Ok(ok) => {
                        if ok.new_cookie {
                            violations.push(format!(
                                "reader {reader}: session replaced by a new cookie via {} (served by {}) at +{:.1}s ({wall} UTC)",
                                get.entry,
                                ok.served_by,
                                at.as_secs_f64()
                            ));
                            last = None;
                        }
                        let Some(count) = ok.count else { continue };
                        if let Some(prev) = last
                            && (count <= prev || (count > prev + 1 && !after_failure))
                        {
                            violations.push(format!(
                                "reader {reader}: counter {prev} -> {count} via {} (served by {}) at +{:.1}s ({wall} UTC); \
                                 this reader's last failure: {}",
                                get.entry,
                                ok.served_by,
                                at.as_secs_f64(),
                                last_failure.as_deref().unwrap_or("none")
                            ));
                        }
                        last = Some(count);
                    }
                }
            }
        }
        violations
    }

    /// One line: writes and GETs.
    pub fn summary(&self, faults: &Faults) -> String {
        let failed: Vec<&Get> = self.gets.iter().filter(|g| g.result.is_err()).collect();
        let excused = failed
            .iter()
            .filter(|g| faults.excuses(&g.entry, g.started, g.ended))
            .count();
        format!(
            "writes {} acked / {} sent; GETs {} ok, {} failed ({} excused by a fault of their entry node); load ran {:.1}s",
            self.acks.len(),
            self.write_attempts,
            self.gets.len() - failed.len(),
            failed.len(),
            excused,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Who led which term, as every node's `/cluster/events` (`leader_changed`, reason `term N`) and
/// `/cluster/status` (`raft.term`, `raft.leader`) reported it, polled while the scenario runs.
pub struct Terms {
    stop: Arc<AtomicBool>,
    book: Arc<Mutex<TermBook>>,
    tasks: Vec<JoinHandle<()>>,
    entries: Vec<Entry>,
}

/// term → leader → who said so.
#[derive(Default)]
pub struct TermBook {
    seen: HashSet<(String, u64, u64)>,
    pub leader_events: usize,
    pub by_term: BTreeMap<u64, BTreeMap<String, BTreeSet<String>>>,
}

async fn poll_terms(client: &reqwest::Client, entry: &Entry, book: &Mutex<TermBook>) {
    if let Ok(response) = client
        .get(format!("{}/cluster/events", entry.url))
        .send()
        .await
        && let Ok(doc) = response.json::<Value>().await
        && let Some(events) = doc["events"].as_array()
    {
        let mut book = lock(book);
        for event in events {
            if event["kind"] != "leader_changed" {
                continue;
            }
            let (Some(seq), Some(at), Some(leader), Some(reason)) = (
                event["seq"].as_u64(),
                event["at_ms"].as_u64(),
                event["node"].as_str(),
                event["reason"].as_str(),
            ) else {
                continue;
            };
            if !book.seen.insert((entry.name.clone(), seq, at)) {
                continue;
            }
            book.leader_events += 1;
            let term = reason
                .strip_prefix("term ")
                .and_then(|t| t.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("leader_changed reason is not `term N`: {event}"));
            book.by_term
                .entry(term)
                .or_default()
                .entry(leader.to_string())
                .or_default()
                .insert(format!("{} event", entry.name));
        }
    }
    if let Ok(response) = client
        .get(format!("{}/cluster/status", entry.url))
        .send()
        .await
        && let Ok(doc) = response.json::<Value>().await
        && let (Some(term), Some(leader)) =
            (doc["raft"]["term"].as_u64(), doc["raft"]["leader"].as_str())
    {
        lock(book)
            .by_term
            .entry(term)
            .or_default()
            .entry(leader.to_string())
            .or_default()
            .insert(format!("{} status", entry.name));
    }
}

impl Terms {
    /// Polls every node every 200 ms.
    pub fn start(entries: &[Entry]) -> Terms {
        let stop = Arc::new(AtomicBool::new(false));
        let book = Arc::new(Mutex::new(TermBook::default()));
        let tasks = entries
            .iter()
            .map(|entry| {
                let (entry, stop, book) = (entry.clone(), stop.clone(), book.clone());
                tokio::spawn(async move {
                    let client = client(Duration::from_secs(1));
                    while !stop.load(Ordering::Relaxed) {
                        poll_terms(&client, &entry, &book).await;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                })
            })
            .collect();
        Terms {
            stop,
            book,
            tasks,
            entries: entries.to_vec(),
        }
    }

    /// Polls every node once now (before a node is killed, so its history is not lost).
    pub async fn sync(&self) {
        let client = client(Duration::from_secs(1));
        for entry in &self.entries {
            poll_terms(&client, entry, &self.book).await;
        }
    }

    /// Stops polling after a last round; returns the book.
    pub async fn finish(self) -> TermBook {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let client = client(Duration::from_secs(1));
        for entry in &self.entries {
            poll_terms(&client, entry, &self.book).await;
        }
        std::mem::take(&mut *lock(&self.book))
    }
}

impl TermBook {
    /// Terms with more than one leader.
    pub fn violations(&self) -> Vec<String> {
        self.by_term
            .iter()
            .filter(|(_, leaders)| leaders.len() > 1)
            .map(|(term, leaders)| {
                format!("term {term} had {} leaders: {leaders:?}", leaders.len())
            })
            .collect()
    }

    /// One line: terms and leaders.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "{} leader_changed events, {} terms:",
            self.leader_events,
            self.by_term.len()
        );
        for (term, leaders) in &self.by_term {
            let names: Vec<&String> = leaders.keys().collect();
            let _ = write!(line, " {term}={names:?}");
        }
        line
    }
}

/// Reads every acknowledged session once, spreading the reads over the running nodes (node
/// `i % n` for the `i`-th id), and returns the ones missing or different. Together with
/// identical digests on every node this shows every node holds every acknowledged write.
pub async fn missing_acked(cluster: &Cluster, acked: &BTreeMap<String, Value>) -> Vec<String> {
    let urls: Vec<(String, String)> = cluster
        .running()
        .into_iter()
        .map(|name| {
            let url = cluster.nodes[&name].url();
            (name, url)
        })
        .collect();
    let items: Vec<(String, Value)> = acked.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let items = Arc::new(items);
    let next = Arc::new(AtomicU64::new(0));
    let missing = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (items, next, missing, urls) =
            (items.clone(), next.clone(), missing.clone(), urls.clone());
        tasks.push(tokio::spawn(async move {
            let client = client(Duration::from_secs(5));
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some((id, data)) = items.get(i) else {
                    return;
                };
                let (name, url) = &urls[i % urls.len()];
                let mut outcome = String::new();
                for _ in 0..5 {
                    match client.get(format!("{url}/api/sessions/{id}")).send().await {
                        Ok(response) if response.status() == 200 => {
                            let doc: Value = response.json().await.unwrap_or_default();
                            outcome = if doc["data"] == *data {
                                String::new()
                            } else {
                                format!("{name} has {id} with {} instead of {data}", doc["data"])
                            };
                            break;
                        }
                        Ok(response) if response.status() == 404 => {
                            outcome = format!("{name} lost acknowledged session {id} ({data})");
                            break;
                        }
                        Ok(response) => {
                            outcome = format!("{name}: GET {id} answered {}", response.status());
                        }
                        Err(err) => outcome = format!("{name}: GET {id}: {err}"),
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                if !outcome.is_empty() {
                    lock(&missing).push(outcome);
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("reader task");
    }
    std::mem::take(&mut *lock(&missing))
}

/// A small deterministic PRNG (splitmix64) for reproducible fault schedules.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `CHAOS_SEED` when set, else from the clock; prints the seed.
    pub fn from_env(scenario: &str) -> Rng {
        let seed = std::env::var("CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(7)
            });
        println!("[{scenario}] chaos seed {seed} (rerun with CHAOS_SEED={seed})");
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}
