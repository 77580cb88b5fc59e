//! The live event stream with real processes: an SSE client on node-1 sees node-3 killed and
//! restarted exactly once each, in order; a client that reconnects with `Last-Event-ID` gets exactly
//! what it missed.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, wait_for};
use serde_json::Value;

/// One dispatched SSE event.
#[derive(Debug, Clone)]
struct SseEvent {
    id: Option<u64>,
    event: String,
    data: Value,
}

/// A minimal SSE reader over a streamed reqwest response (the parts of the format the server uses:
/// `id`, `event`, `data`, `retry` and comments).
struct SseClient {
    response: reqwest::Response,
    buffer: String,
    id: Option<u64>,
    event: String,
    data: Vec<String>,
}

impl SseClient {
    async fn connect(url: &str, last_event_id: Option<u64>) -> SseClient {
        // No overall timeout: the body is endless. Only connecting is bounded.
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .expect("client");
        let mut request = client.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = tokio::time::timeout(Duration::from_secs(5), request.send())
            .await
            .expect("event stream answers within 5s")
            .expect("event stream request");
        assert_eq!(response.status(), 200, "event stream status");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(
            content_type.starts_with("text/event-stream"),
            "content type {content_type:?}"
        );
        SseClient {
            response,
            buffer: String::new(),
            id: None,
            event: String::new(),
            data: Vec::new(),
        }
    }

    /// The next dispatched event, or `None` if none comes before `deadline`.
    async fn next_before(&mut self, deadline: Instant) -> Option<SseEvent> {
        loop {
            while let Some(newline) = self.buffer.find('\n') {
                let line: String = self.buffer.drain(..=newline).collect();
                let line = line.trim_end_matches(['\n', '\r']);
                if let Some(event) = self.feed_line(line) {
                    return Some(event);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match tokio::time::timeout(left, self.response.chunk()).await {
                Err(_) => return None,
                Ok(Ok(Some(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(Ok(None)) => panic!("the event stream ended"),
                Ok(Err(err)) => panic!("reading the event stream: {err}"),
            }
        }
    }

    fn feed_line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            if self.data.is_empty() {
                return None;
            }
            let data = std::mem::take(&mut self.data).join("\n");
            let data = serde_json::from_str(&data)
                .unwrap_or_else(|err| panic!("event data is not JSON ({err}): {data}"));
            return Some(SseEvent {
                id: self.id.take(),
                event: if event.is_empty() {
                    "message".into()
                } else {
                    event
                },
                data,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => {
                self.id = Some(
                    value
                        .parse()
                        .unwrap_or_else(|_| panic!("id is not a sequence number: {value:?}")),
                )
            }
            "event" => self.event = value.to_string(),
            "data" => self.data.push(value.to_string()),
            "retry" => {}
            other => panic!("unexpected SSE field {other:?} in {line:?}"),
        }
        None
    }

    /// Cluster events (not status snapshots) until `deadline`.
    async fn events_until(&mut self, deadline: Instant) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next_before(deadline).await {
            if event.event != "status" {
                events.push(event);
            }
        }
        events
    }

    /// Cluster events until one satisfies `stop` (included), or panics after `timeout`.
    async fn events_through(
        &mut self,
        what: &str,
        timeout: Duration,
        stop: impl Fn(&SseEvent) -> bool,
    ) -> Vec<SseEvent> {
        let deadline = Instant::now() + timeout;
        let mut events = Vec::new();
        loop {
            let Some(event) = self.next_before(deadline).await else {
                panic!("no {what} within {timeout:?}; got {events:#?}");
            };
            if event.event == "status" {
                continue;
            }
            let done = stop(&event);
            events.push(event);
            if done {
                return events;
            }
        }
    }
}

/// Checks one event's SSE framing against its JSON: `id` = seq, `event` = kind.
fn check_framing(event: &SseEvent) {
    assert_eq!(
        event.id,
        event.data["seq"].as_u64(),
        "id is the seq: {event:?}"
    );
    assert_eq!(
        event.event,
        event.data["kind"].as_str().unwrap_or(""),
        "event name is the kind: {event:?}"
    );
}

fn is(event: &SseEvent, kind: &str, node: &str) -> bool {
    event.event == kind && event.data["node"] == node
}

fn ids(events: &[SseEvent]) -> Vec<u64> {
    events.iter().filter_map(|event| event.id).collect()
}

/// The JSON history of `viewer` after `after`.
async fn history_after(cluster: &Cluster, viewer: &str, after: u64) -> Vec<Value> {
    cluster
        .events(viewer)
        .await
        .into_iter()
        .filter(|event| event["seq"].as_u64().is_some_and(|seq| seq > after))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_reports_a_restart_once_and_resumes_from_last_event_id() {
    let mut cluster = Cluster::new(3);
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(30)).await;
    cluster.wait_all_up(3, Duration::from_secs(20)).await;
    let url = format!("{}/cluster/events", cluster.nodes["node-1"].url());

    // Start after everything node-1 has recorded so far (via ?after=; the reconnect below uses
    // the header).
    let start = cluster
        .events("node-1")
        .await
        .last()
        .and_then(|event| event["seq"].as_u64())
        .expect("node-1 recorded the others joining");
    let mut stream = SseClient::connect(&format!("{url}?after={start}"), None).await;
    // Whatever comes first is after the resume point (normally nothing comes at all).
    let mut seen = stream
        .events_until(Instant::now() + Duration::from_millis(300))
        .await;
    assert!(
        seen.iter().all(|event| event.id > Some(start)),
        "nothing at or before the resume point {start}: {seen:#?}"
    );

    cluster.kill9("node-3");
    seen.extend(
        stream
            .events_through("node_down for node-3", Duration::from_secs(15), |event| {
                is(event, "node_down", "node-3")
            })
            .await,
    );
    cluster.start("node-3");
    seen.extend(
        stream
            .events_through("node_up for node-3", Duration::from_secs(30), |event| {
                is(event, "node_up", "node-3")
            })
            .await,
    );
    // Let the restart settle (node-3 back in Raft, any leader change recorded), then keep
    // listening: no second down/up may follow.
    cluster
        .wait_state("node-1", "node-3", "up", Duration::from_secs(10))
        .await;
    cluster.wait_ready(Duration::from_secs(30)).await;
    seen.extend(
        stream
            .events_until(Instant::now() + Duration::from_secs(2))
            .await,
    );
    seen.iter().for_each(check_framing);
    let summary: Vec<String> = seen
        .iter()
        .map(|event| {
            format!(
                "{}:{}:{}",
                event.id.unwrap_or(0),
                event.event,
                event.data["node"]
            )
        })
        .collect();
    eprintln!("node-1 streamed after {start}: {summary:?}");
    let node3: Vec<&str> = seen
        .iter()
        .filter(|event| event.data["node"] == "node-3")
        .filter(|event| event.event == "node_down" || event.event == "node_up")
        .map(|event| event.event.as_str())
        .collect();
    assert_eq!(node3, ["node_down", "node_up"], "all events: {seen:#?}");
    let expected_ids: Vec<u64> = (start + 1..=start + seen.len() as u64).collect();
    assert_eq!(ids(&seen), expected_ids, "consecutive ids from {start}");
    let history = history_after(&cluster, "node-1", start).await;
    let streamed: Vec<Value> = seen.iter().map(|event| event.data.clone()).collect();
    assert_eq!(
        streamed,
        history[..streamed.len().min(history.len())],
        "the stream carries exactly the history"
    );

    // Disconnect, let things happen, reconnect with the last id seen.
    let last_seen = *ids(&seen).last().expect("ids");
    drop(stream);
    let client = &cluster.client;
    let node1 = cluster.nodes["node-1"].url();
    for action in ["drain", "undrain"] {
        let response = client
            .post(format!("{node1}/cluster/nodes/node-2/{action}"))
            .send()
            .await
            .expect("drain call");
        assert!(response.status().is_success(), "{action}: {response:?}");
        let state = if action == "drain" { "draining" } else { "up" };
        cluster
            .wait_state("node-1", "node-2", state, Duration::from_secs(10))
            .await;
    }
    let missed = wait_for(
        "node-1 records node-2 draining and back up",
        Duration::from_secs(10),
        || async {
            let missed = history_after(&cluster, "node-1", last_seen).await;
            let kinds: Vec<&str> = missed
                .iter()
                .filter(|event| event["node"] == "node-2")
                .filter_map(|event| event["kind"].as_str())
                .collect();
            (kinds == ["node_draining", "node_up"]).then_some(missed)
        },
    )
    .await;

    let mut resumed = SseClient::connect(&url, Some(last_seen)).await;
    let replayed = resumed
        .events_until(Instant::now() + Duration::from_secs(2))
        .await;
    replayed.iter().for_each(check_framing);
    let replayed_data: Vec<Value> = replayed.iter().map(|event| event.data.clone()).collect();
    // Exactly the history after the id: everything missed, nothing before it, nothing twice.
    let history = history_after(&cluster, "node-1", last_seen).await;
    assert!(
        replayed_data.starts_with(&missed),
        "a reconnect with Last-Event-ID {last_seen} gets what it missed: {missed:#?}, got {replayed:#?}"
    );
    assert_eq!(
        replayed_data,
        history[..replayed_data.len().min(history.len())],
        "the replay is the history after {last_seen}"
    );
    assert_eq!(
        replayed.first().and_then(|event| event.id),
        Some(last_seen + 1)
    );
    let expected_ids: Vec<u64> = (last_seen + 1..=last_seen + replayed.len() as u64).collect();
    assert_eq!(ids(&replayed), expected_ids);

    // The resumed stream is live too.
    client
        .post(format!("{node1}/cluster/nodes/node-1/drain"))
        .send()
        .await
        .expect("drain node-1");
    let live = resumed
        .events_through(
            "node_draining for node-1",
            Duration::from_secs(10),
            |event| is(event, "node_draining", "node-1"),
        )
        .await;
    let last_replayed = *ids(&replayed).last().expect("replayed ids");
    assert_eq!(
        ids(&live),
        (last_replayed + 1..=last_replayed + live.len() as u64).collect::<Vec<_>>()
    );
    drop(resumed);

    status_snapshots_on_request_and_bad_ids_refused(&cluster).await;
}

/// `?status=true` adds `/cluster/status` snapshots (no id) to the stream; a `Last-Event-ID` that is
/// not a sequence number is refused; the JSON form is unchanged.
async fn status_snapshots_on_request_and_bad_ids_refused(cluster: &Cluster) {
    let base = cluster.nodes["node-1"].url();
    let mut stream = SseClient::connect(&format!("{base}/cluster/events?status=true"), None).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut statuses = 0;
    while statuses < 2 {
        let event = stream
            .next_before(deadline)
            .await
            .expect("two status snapshots within 5s");
        if event.event == "status" {
            assert_eq!(event.id, None, "snapshots carry no id");
            assert_eq!(event.data["node"], "node-1");
            assert_eq!(event.data["members"].as_array().map(Vec::len), Some(3));
            statuses += 1;
        } else {
            check_framing(&event);
        }
    }

    let response = cluster
        .client
        .get(format!("{base}/cluster/events"))
        .header("accept", "text/event-stream")
        .header("last-event-id", "not-a-number")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 400);

    let json = cluster.get_json("node-1", "/cluster/events").await;
    assert!(json.is_some_and(|doc| doc["events"].is_array()));
}
