//! Lost quorum, at the leader and at a follower, with real processes: every write and read answers
//! within its deadline, status says there is no quorum, and writes resume when a voter returns,
//! without a restart of the survivor. A dead voter costs a bounded number of log lines.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, wait_for};
use serde_json::{Value, json};

/// Longer than the 8 s a write or read waits for a quorum, shorter than "never".
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(ANSWER_WITHIN)
        .build()
        .expect("client")
}

/// POST a session through `url` and GET an unknown one: both must answer (not hang) with 503
/// naming what is missing.
async fn write_and_read_answer_503(url: &str, expect_in_reason: &str) {
    let client = client();
    let write = client
        .post(format!("{url}/api/sessions"))
        .json(&json!({"during": "no quorum"}))
        .send()
        .await
        .expect("a write at a node without quorum answers within its deadline");
    assert_eq!(write.status(), 503);
    let reason = write.text().await.unwrap_or_default();
    assert!(reason.contains(expect_in_reason), "{reason}");
    let read = client
        .get(format!(
            "{url}/api/sessions/0123456789abcdef0123456789abcdef"
        ))
        .send()
        .await
        .expect("a read at a node without quorum answers within its deadline");
    assert_eq!(
        read.status(),
        503,
        "{}",
        read.text().await.unwrap_or_default()
    );
}

async fn quorum_of(cluster: &Cluster, name: &str) -> Option<Value> {
    Some(cluster.status(name).await?["raft"]["quorum"].clone())
}

async fn lose_quorum_then_get_it_back(survivor_is_leader: bool) {
    let mut cluster = Cluster::new(3);
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(30)).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let mut others: Vec<String> = cluster
        .running()
        .into_iter()
        .filter(|name| *name != leader)
        .collect();
    let survivor = if survivor_is_leader {
        leader.clone()
    } else {
        others.remove(0)
    };
    let victims: Vec<String> = cluster
        .running()
        .into_iter()
        .filter(|name| *name != survivor)
        .collect();
    let healthy = quorum_of(&cluster, &survivor).await.expect("status");
    assert_eq!(healthy["has_quorum"], true, "{healthy}");
    assert_eq!(
        (healthy["voters"].as_u64(), healthy["needed"].as_u64()),
        (Some(3), Some(2))
    );
    for victim in &victims {
        cluster.kill9(victim);
    }
    let url = cluster.nodes[&survivor].url();
    // The leader answers with its lost quorum; a follower with no leader.
    let reason = if survivor_is_leader {
        "no quorum"
    } else {
        "no Raft leader"
    };
    let started = Instant::now();
    write_and_read_answer_503(&url, reason).await;
    eprintln!(
        "{survivor}: write and read answered 503 after {:?}",
        started.elapsed()
    );

    // Status says so, with the absent voters by name; /readyz is 503.
    let quorum = wait_for(
        "status reports no quorum",
        Duration::from_secs(20),
        || async {
            let quorum = quorum_of(&cluster, &survivor).await?;
            (quorum["has_quorum"] == false && quorum["live"] == 1).then_some(quorum)
        },
    )
    .await;
    let mut absent: Vec<&str> = quorum["absent"]
        .as_array()
        .expect("absent")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    absent.sort();
    let mut expected: Vec<&str> = victims.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(absent, expected);
    let ready = client()
        .get(format!("{url}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    let why = ready.text().await.unwrap_or_default();
    if survivor_is_leader {
        assert!(why.contains("no quorum"), "{why}");
    }
    let table = std::process::Command::new(common::BIN)
        .args(["status", "--node", &url])
        .output()
        .expect("status table");
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.contains("NO QUORUM"), "{table}");

    // One voter back: writes resume through the survivor, which was never restarted.
    cluster.start(&victims[0]);
    wait_for(
        "a write through the survivor",
        Duration::from_secs(40),
        || async {
            cluster
                .create_session(&survivor, &json!({"after": "quorum is back"}))
                .await
        },
    )
    .await;
    let back = quorum_of(&cluster, &survivor).await.expect("status");
    assert_eq!(back["has_quorum"], true, "{back}");
}

#[tokio::test]
async fn a_leader_that_lost_its_quorum_answers_in_time_says_so_and_recovers() {
    lose_quorum_then_get_it_back(true).await;
}

#[tokio::test]
async fn a_follower_that_lost_its_quorum_answers_in_time_says_so_and_recovers() {
    lose_quorum_then_get_it_back(false).await;
}

#[tokio::test]
async fn a_leader_with_a_dead_voter_logs_a_bounded_number_of_lines() {
    let mut cluster = Cluster::new(3);
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(30)).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let victim = cluster
        .running()
        .into_iter()
        .find(|name| *name != leader)
        .expect("a follower");
    let log_path = cluster.nodes[&leader].log.clone();
    let lines_before = std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .lines()
        .count();
    cluster.kill9(&victim);
    // Writes keep going meanwhile (a quorum of two remains), so replication keeps trying.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        cluster
            .create_session(&leader, &json!({"while": "a voter is dead"}))
            .await
            .expect("writes with two of three voters");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let new: Vec<&str> = log.lines().skip(lines_before).collect();
    // Before: four lines per retry every 500 ms (about 240 in 30 s). Now: one line per 10 s naming
    // the peer, openraft's own lines once a minute per kind, and the membership events.
    assert!(
        new.len() <= 20,
        "{} lines in 30 s with one dead voter:\n{}",
        new.len(),
        new.join("\n")
    );
    assert!(
        new.iter()
            .any(|line| line.contains(&format!("raft: cannot reach {victim}"))),
        "the dead voter is named: {}",
        new.join("\n")
    );
}
