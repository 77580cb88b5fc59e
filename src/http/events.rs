//! `/cluster/events` as a live Server-Sent Events stream that resumes from `Last-Event-ID`.
//!
//! Each cluster event goes out as `id: <seq>`, `event: <kind>`, `data: <the event JSON>`. A client
//! that reconnects with the last id it saw first gets every remembered event after it, then the live
//! ones, with no gap and no duplicate: the feed takes the history and the live receiver atomically
//! ([`EventLog::subscribe_since`]) and never sends a sequence number twice. With `?status=true` the
//! stream also carries the `/cluster/status` document as `event: status` (no id) every second and
//! shortly after each cluster event, which is what the console runs on.

use std::collections::VecDeque;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::events::{ClusterEvent, EventLog};
use crate::http::error::ApiError;
use crate::http::status::{ClusterStatus, StatusSource};

/// A comment line goes out this often on an idle stream, so proxies and clients keep the connection.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often a stream with `?status=true` carries a status snapshot.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// The snapshot after an event waits this long: the membership view is published just after the
/// event is recorded.
const STATUS_AFTER_EVENT: Duration = Duration::from_millis(150);
/// What browsers are told to wait before reconnecting (their default is about 3 s).
const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// The SSE event name of status snapshots.
pub const STATUS_EVENT: &str = "status";

/// Whether the request asks for the SSE form (`Accept: text/event-stream`).
pub fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|accept| accept.contains("text/event-stream"))
}

/// The sequence number to resume after: `Last-Event-ID` (what a reconnecting browser sends) wins
/// over `?after=`, which only names where the first connection started.
pub fn resume_point(headers: &HeaderMap, after: Option<u64>) -> Result<u64, String> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(after.unwrap_or(0));
    };
    let text = value.to_str().unwrap_or("").trim();
    if text.is_empty() {
        return Ok(after.unwrap_or(0));
    }
    text.parse().map_err(|_| {
        format!("Last-Event-ID must be an event sequence number (an `id:` this stream sent), not {text:?}")
    })
}

/// The events after a resume point, in sequence order, each exactly once: the remembered ones, then
/// the live ones.
pub struct EventFeed {
    log: EventLog,
    live: broadcast::Receiver<ClusterEvent>,
    pending: VecDeque<ClusterEvent>,
    last_sent: u64,
    /// Set when the resume point was ahead of this node's history.
    restarted_from: Option<u64>,
}

impl EventFeed {
    /// Starts after `after`. An id beyond the newest event this node recorded was not handed out by
    /// this incarnation (the node restarted and numbers from 1 again): the feed then starts from the
    /// beginning of what it remembers instead of waiting silently for that number to come round.
    pub fn new(log: &EventLog, after: u64) -> EventFeed {
        let (history, live) = log.subscribe_since(0);
        let newest = history.last().map_or(0, |event| event.seq);
        let (after, restarted_from) = if after > newest {
            (0, Some(after))
        } else {
            (after, None)
        };
        EventFeed {
            log: log.clone(),
            live,
            pending: history
                .into_iter()
                .filter(|event| event.seq > after)
                .collect(),
            last_sent: after,
            restarted_from,
        }
    }

    /// The resume point the client gave when it was ahead of this node's history.
    pub fn restarted_from(&self) -> Option<u64> {
        self.restarted_from
    }

    /// The sequence number of the last event handed out.
    pub fn last_sent(&self) -> u64 {
        self.last_sent
    }

    /// The next event, waiting for it if need be; `None` once the log is gone. Cancel-safe: the only
    /// await is the broadcast receive.
    pub async fn next(&mut self) -> Option<ClusterEvent> {
        loop {
            while let Some(event) = self.pending.pop_front() {
                if let Some(event) = self.accept(event) {
                    return Some(event);
                }
            }
            match self.live.recv().await {
                Ok(event) => {
                    if let Some(event) = self.accept(event) {
                        return Some(event);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    // The live buffer overflowed: the history still has what we missed (it is
                    // longer than the buffer), and `accept` drops what the receiver replays twice.
                    self.pending = self.log.since(self.last_sent).into();
                    let first = self.pending.front().map(|event| event.seq);
                    if first.is_some_and(|seq| seq > self.last_sent + 1) {
                        tracing::warn!(
                            after = self.last_sent,
                            "event stream fell behind the history: events {}..{} are lost to this client",
                            self.last_sent + 1,
                            first.unwrap_or(0) - 1
                        );
                    } else {
                        tracing::debug!(skipped, "event stream caught up from history after lag");
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    fn accept(&mut self, event: ClusterEvent) -> Option<ClusterEvent> {
        (event.seq > self.last_sent).then(|| {
            self.last_sent = event.seq;
            event
        })
    }
}

/// The SSE form of one cluster event.
pub fn sse_event(event: &ClusterEvent) -> Result<Event, axum::Error> {
    Event::default()
        .id(event.seq.to_string())
        .event(event.kind.as_str())
        .json_data(event)
}

/// The live stream of `log` (the events of `node`) for one client, resuming after the point its
/// headers or query name; with `status`, status snapshots go along. It ends when `closing` is cancelled.
pub fn stream(
    log: &EventLog,
    node: &str,
    closing: CancellationToken,
    status: Option<StatusSource>,
    headers: &HeaderMap,
    after: Option<u64>,
) -> Response {
    let after = match resume_point(headers, after) {
        Ok(after) => after,
        Err(message) => {
            return ApiError::new(StatusCode::BAD_REQUEST, message).into_response();
        }
    };
    let feed = EventFeed::new(log, after);
    let greeting = match feed.restarted_from() {
        Some(id) => {
            format!("{node} has no event {id} (restarted?): replaying its history from the start")
        }
        None => format!("events of {node} after {after}"),
    };
    let status = status.map(|source| {
        let mut ticks = tokio::time::interval(STATUS_INTERVAL);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        (source, ticks)
    });
    let state = StreamState {
        greeting: Some(Event::default().comment(greeting).retry(RECONNECT_DELAY)),
        feed,
        status,
        closing,
    };
    let events = futures_util::stream::unfold(state, |mut state| async move {
        let item = state.next_item().await?;
        Some((item, state))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

struct StreamState {
    greeting: Option<Event>,
    feed: EventFeed,
    status: Option<(StatusSource, Interval)>,
    closing: CancellationToken,
}

impl StreamState {
    /// The next thing to send; `None` ends the stream (the node is shutting down).
    async fn next_item(&mut self) -> Option<Result<Event, axum::Error>> {
        if let Some(greeting) = self.greeting.take() {
            return Some(Ok(greeting));
        }
        let next = {
            let StreamState {
                feed,
                status,
                closing,
                ..
            } = self;
            let status_tick = async {
                match status {
                    Some((source, ticks)) => {
                        ticks.tick().await;
                        source.status()
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = closing.cancelled() => Next::Closing,
                event = feed.next() => Next::Event(event?),
                snapshot = status_tick => Next::Status(Box::new(snapshot)),
            }
        };
        match next {
            Next::Closing => None,
            Next::Event(event) => {
                if let Some((_, ticks)) = &mut self.status {
                    ticks.reset_after(STATUS_AFTER_EVENT);
                }
                Some(sse_event(&event))
            }
            Next::Status(snapshot) => {
                Some(Event::default().event(STATUS_EVENT).json_data(snapshot))
            }
        }
    }
}

enum Next {
    Closing,
    Event(ClusterEvent),
    Status(Box<ClusterStatus>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EventKind, LIVE_BUFFER};
    use axum::http::HeaderValue;

    fn seqs(events: &[ClusterEvent]) -> Vec<u64> {
        events.iter().map(|event| event.seq).collect()
    }

    async fn take(feed: &mut EventFeed, count: usize) -> Vec<ClusterEvent> {
        let mut taken = Vec::new();
        for _ in 0..count {
            let next = tokio::time::timeout(Duration::from_secs(1), feed.next())
                .await
                .expect("an event within 1s")
                .expect("log alive");
            taken.push(next);
        }
        taken
    }

    async fn nothing_more(feed: &mut EventFeed) {
        let extra = tokio::time::timeout(Duration::from_millis(50), feed.next()).await;
        assert!(extra.is_err(), "unexpected event {extra:?}");
    }

    #[tokio::test]
    async fn resumes_after_the_given_id_then_goes_live_without_duplicates() {
        let log = EventLog::new();
        for _ in 0..5 {
            log.record(EventKind::NodeUp, "node-1", String::new());
        }
        let mut feed = EventFeed::new(&log, 3);
        log.record(EventKind::NodeDown, "node-2", String::new());
        let events = take(&mut feed, 3).await;
        assert_eq!(seqs(&events), [4, 5, 6]);
        assert_eq!(events[2].kind, EventKind::NodeDown);
        nothing_more(&mut feed).await;
        assert_eq!(feed.last_sent(), 6);
        assert_eq!(feed.restarted_from(), None);
    }

    #[tokio::test]
    async fn an_id_at_the_newest_event_sends_only_new_events() {
        let log = EventLog::new();
        log.record(EventKind::NodeUp, "node-1", String::new());
        let mut feed = EventFeed::new(&log, 1);
        nothing_more(&mut feed).await;
        log.record(EventKind::NodeLeft, "node-1", String::new());
        assert_eq!(seqs(&take(&mut feed, 1).await), [2]);
    }

    #[tokio::test]
    async fn recovers_from_a_lagging_receiver_with_no_gap_and_no_duplicate() {
        let log = EventLog::new();
        let mut feed = EventFeed::new(&log, 0);
        let total = LIVE_BUFFER as u64 + 40;
        for i in 0..total {
            log.record(EventKind::NodeUp, "node-1", format!("#{i}"));
        }
        let events = take(&mut feed, total as usize).await;
        assert_eq!(seqs(&events), (1..=total).collect::<Vec<_>>());
        nothing_more(&mut feed).await;
        log.record(EventKind::NodeDown, "node-1", String::new());
        assert_eq!(seqs(&take(&mut feed, 1).await), [total + 1]);
    }

    #[tokio::test]
    async fn an_id_from_a_previous_incarnation_replays_the_history() {
        let log = EventLog::new();
        log.record(EventKind::NodeUp, "node-1", String::new());
        log.record(EventKind::NodeUp, "node-2", String::new());
        let mut feed = EventFeed::new(&log, 40);
        assert_eq!(feed.restarted_from(), Some(40));
        assert_eq!(seqs(&take(&mut feed, 2).await), [1, 2]);
    }

    #[test]
    fn last_event_id_wins_over_the_query_and_garbage_is_refused() {
        let mut headers = HeaderMap::new();
        assert_eq!(resume_point(&headers, None), Ok(0));
        assert_eq!(resume_point(&headers, Some(7)), Ok(7));
        headers.insert("last-event-id", HeaderValue::from_static("12"));
        assert_eq!(resume_point(&headers, Some(7)), Ok(12));
        headers.insert("last-event-id", HeaderValue::from_static(""));
        assert_eq!(resume_point(&headers, Some(7)), Ok(7));
        headers.insert("last-event-id", HeaderValue::from_static("x1"));
        assert!(resume_point(&headers, None).is_err());
    }

    #[test]
    fn event_stream_accept_is_recognised() {
        let mut headers = HeaderMap::new();
        assert!(!wants_event_stream(&headers));
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!wants_event_stream(&headers));
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        assert!(wants_event_stream(&headers));
    }
}
