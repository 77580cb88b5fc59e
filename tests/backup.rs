//! Backup and restore with real processes: a backup of one cluster seeds a brand-new one, and the
//! periodic backups of `<backup>` keep the newest files and restore the same way.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{BIN, Cluster, wait_for};
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_into_a_fresh_cluster_has_every_session() {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let file = out_dir.path().join("demo.mtbackup");
    let mut sessions = BTreeMap::new();
    {
        let mut cluster = Cluster::new(3);
        cluster.start_all();
        cluster.wait_ready(READY).await;
        for n in 0..1200 {
            let data = json!({ "n": n, "user": format!("user-{n}") });
            let node = format!("node-{}", n % 3 + 1);
            let id = cluster
                .create_session(&node, &data)
                .await
                .expect("acknowledged");
            sessions.insert(id, data);
        }
        let output = Command::new(BIN)
            .args(["backup", "--node", &cluster.nodes["node-2"].url()])
            .arg("--out")
            .arg(&file)
            .output()
            .expect("backup command");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("1200 sessions"), "{stdout}");
    }

    // A new cluster (new data dirs, new Raft group) from the same kind of config.
    let (fresh, answer) = restore_into_fresh_cluster(&file, "node-3", 1200).await;
    assert_eq!(answer["skipped"], 0);
    for (id, data) in sessions.iter().step_by(7) {
        for name in ["node-1", "node-2", "node-3"] {
            assert_eq!(
                fresh.session_data(name, id).await.as_ref(),
                Some(data),
                "{name} {id}"
            );
        }
    }

    // Restoring again changes nothing: live sessions are kept, the records skipped.
    let output = Command::new(BIN)
        .arg("restore")
        .arg(&file)
        .args(["--node", &fresh.nodes["node-1"].url()])
        .output()
        .expect("restore command");
    let answer: Value = serde_json::from_slice(&output.stdout).expect("json answer");
    assert_eq!(
        (answer["imported"].clone(), answer["skipped"].clone()),
        (json!(0), json!(1200))
    );

    // A file that is not a backup is refused with one clear line.
    let bogus = out_dir.path().join("bogus.mtbackup");
    std::fs::write(&bogus, b"not a backup").expect("write");
    let output = Command::new(BIN)
        .arg("restore")
        .arg(&bogus)
        .args(["--node", &fresh.nodes["node-1"].url()])
        .output()
        .expect("restore command");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a micro-tomcat backup"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// The periodic backup files in `folder`, oldest first (temporary files are hidden and not listed).
fn backup_files(folder: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("micro-tomcat-test-") && name.ends_with(".mtbackup"))
        .collect();
    names.sort();
    names
}

/// The log index at the end of a periodic backup's name.
fn index_of(name: &str) -> u64 {
    name.trim_end_matches(".mtbackup")
        .rsplit_once('-')
        .and_then(|(_, index)| index.parse().ok())
        .unwrap_or_else(|| panic!("no index in {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_writes_periodic_backups_keeps_the_newest_and_they_restore() {
    let saved = tempfile::tempdir().expect("tempdir");
    let newest_copy = saved.path().join("newest.mtbackup");
    let mut sessions = BTreeMap::new();
    {
        let mut cluster = Cluster::with_elements(
            3,
            r#"<raft data-dir="data" voters="3"/>
  <backup dir="blocked" interval-seconds="10" keep="2"/>"#,
        );
        // A file where the folder should be: every attempt fails.
        std::fs::write(cluster.path().join("blocked"), b"not a folder").expect("write");
        cluster.start_all();
        cluster.wait_ready(READY).await;
        let leader = cluster.wait_leader(READY).await;
        wait_for("a failed periodic backup, counted", READY, || async {
            let failed = cluster
                .metric(&leader, r#"micro_tomcat_backups_total{outcome="failed"}"#)
                .await?;
            (failed >= 1.0).then_some(())
        })
        .await;
        let log = std::fs::read_to_string(&cluster.nodes[&leader].log).expect("log");
        assert!(log.contains("periodic backup failed"), "{log}");
        // The failure cost the node nothing.
        cluster.wait_ready(READY).await;

        for n in 0..300 {
            let data = json!({ "n": n });
            let node = format!("node-{}", n % 3 + 1);
            let id = cluster
                .create_session(&node, &data)
                .await
                .expect("acknowledged");
            sessions.insert(id, data);
        }
        let (applied, count, _) = cluster.wait_identical(READY).await;
        assert_eq!(count, 300);

        // A usable folder, reloaded on every node (whichever leads writes): backups start at once.
        cluster.rewrite_config(r#"dir="blocked""#, r#"dir="backups""#);
        for name in ["node-1", "node-2", "node-3"] {
            let (status, answer) = cluster.reload(name).await;
            assert_eq!(status, 200, "{answer}");
            assert!(
                answer["changes"]
                    .as_str()
                    .is_some_and(|changes| changes.contains("periodic backups")),
                "{answer}"
            );
        }
        let folder = cluster.path().join("backups");
        let mut appeared: Vec<(String, Instant)> = Vec::new();
        let newest = wait_for(
            "three periodic backups, one of them after every session",
            Duration::from_secs(90),
            || {
                let listed = backup_files(&folder);
                assert!(listed.len() <= 2, "keep=2, found {listed:?}");
                for name in &listed {
                    if !appeared.iter().any(|(seen, _)| seen == name) {
                        appeared.push((name.clone(), Instant::now()));
                    }
                }
                let done = appeared.len() >= 3
                    && listed
                        .last()
                        .is_some_and(|newest| index_of(newest) >= applied);
                std::future::ready(done.then(|| listed.last().cloned()).flatten())
            },
        )
        .await;
        std::fs::copy(folder.join(&newest), &newest_copy).expect("copy the newest backup");

        // Names sort by time, and the cluster wrote one per interval, not one per node.
        let names: Vec<&String> = appeared.iter().map(|(name, _)| name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for pair in appeared.windows(2) {
            let gap = pair[1].1.duration_since(pair[0].1);
            assert!(gap >= Duration::from_secs(8), "{pair:?} only {gap:?} apart");
        }
        // The counter moves just after the file is in place: wait for it rather than race it.
        let seen = appeared.len() as f64;
        wait_for(
            "the backup counters to count every file seen",
            Duration::from_secs(10),
            || async {
                let mut written = 0.0;
                for name in ["node-1", "node-2", "node-3"] {
                    written += cluster
                        .metric(name, r#"micro_tomcat_backups_total{outcome="written"}"#)
                        .await
                        .expect("backup metrics on every node");
                }
                (written >= seen).then_some(())
            },
        )
        .await;
    }

    let (fresh, answer) = restore_into_fresh_cluster(&newest_copy, "node-2", 300).await;
    assert_eq!(answer["from_cluster"], "test");
    for (id, data) in &sessions {
        assert_eq!(
            fresh.session_data("node-1", id).await.as_ref(),
            Some(data),
            "{id}"
        );
    }
}

/// Starts a new 3-node cluster, restores `file` into it through `via` with the CLI, and waits until
/// every node holds exactly `expected` sessions. Returns the cluster and the CLI's JSON answer.
async fn restore_into_fresh_cluster(
    file: &std::path::Path,
    via: &str,
    expected: u64,
) -> (Cluster, Value) {
    let mut fresh = Cluster::new(3);
    fresh.start_all();
    fresh.wait_ready(READY).await;
    let output = Command::new(BIN)
        .arg("restore")
        .arg(file)
        .args(["--node", &fresh.nodes[via].url()])
        .output()
        .expect("restore command");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: Value = serde_json::from_str(stdout.trim()).expect("json answer");
    assert_eq!(answer["imported"], expected, "{answer}");
    let (_, count, _) = fresh.wait_identical(READY).await;
    assert_eq!(count, expected);
    (fresh, answer)
}
