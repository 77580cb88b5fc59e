//! Backup and restore with real processes: a backup of one cluster seeds a brand-new one.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::{BIN, Cluster};
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
    let mut fresh = Cluster::new(3);
    fresh.start_all();
    fresh.wait_ready(READY).await;
    let output = Command::new(BIN)
        .arg("restore")
        .arg(&file)
        .args(["--node", &fresh.nodes["node-3"].url()])
        .output()
        .expect("restore command");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: Value = serde_json::from_str(stdout.trim()).expect("json answer");
    assert_eq!(answer["imported"], 1200, "{answer}");
    assert_eq!(answer["skipped"], 0);
    let (_, count, _) = fresh.wait_identical(READY).await;
    assert_eq!(count, 1200);
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
