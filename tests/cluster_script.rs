//! `scripts/cluster.sh` end to end: the real script on free ports, in a temporary `MT_HOME`, with the
//! debug binary `cargo test` built. up 3, add 1, restart, stop, start, a node started by hand and
//! restarted by the script, down, clean; each verb's exit code and key line, and no process or file of the cluster left behind.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, GOSSIP, cluster_lock, free_port};

/// What one run of the script did.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn assert_ok(&self, what: &str) {
        assert_eq!(self.code, Some(0), "{what} failed:\n{self}");
    }

    fn assert_says(&self, line: &str) {
        assert!(
            self.stdout.contains(line),
            "expected {line:?} in the output:\n{self}"
        );
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A cluster run by the script under a temporary folder. On drop, every process whose command line
/// names the folder (and the node started by hand) is killed, even when the test panics.
struct ScriptCluster {
    dir: tempfile::TempDir,
    home: PathBuf,
    config: PathBuf,
    founders: Vec<(u16, u16)>,
    http_base: u16,
    cluster_base: u16,
    by_hand: Option<Child>,
    /// HTTP and cluster port of node-5, the node started by hand.
    by_hand_ports: (u16, u16),
}

impl ScriptCluster {
    fn new() -> ScriptCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        // The script resolves MT_HOME (symlinks too); so must the /proc scan below.
        let home = dir
            .path()
            .canonicalize()
            .expect("tempdir path")
            .join("home");
        let founders: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let mut xml = format!(
            "<cluster id=\"script\">\n  {GOSSIP}\n  <raft data-dir=\"data\" voters=\"3\"/>\n  <nodes>\n"
        );
        for (index, (http, cluster)) in founders.iter().enumerate() {
            xml.push_str(&format!(
                "    <node name=\"node-{}\" http=\"127.0.0.1:{http}\" cluster=\"127.0.0.1:{cluster}\"/>\n",
                index + 1
            ));
        }
        xml.push_str("  </nodes>\n</cluster>\n");
        let config = dir.path().join("cluster-config.xml");
        std::fs::write(&config, xml).expect("write config");
        // node-K of `add` listens on base + K: bases from free ports put node-4 on those ports.
        let http_base = free_port() - 4;
        let cluster_base = free_port() - 4;
        ScriptCluster {
            dir,
            home,
            config,
            founders,
            http_base,
            cluster_base,
            by_hand: None,
            by_hand_ports: (free_port(), free_port()),
        }
    }

    /// Runs `scripts/cluster.sh ARGS`; output goes to files, so nodes that inherit nothing of ours
    /// cannot hold a pipe open.
    fn run(&self, args: &[&str], timeout: Duration) -> Run {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh");
        // BIN is <target>/<profile dir>/micro-tomcat; the script finds the dev profile in `debug`,
        // any other in the directory of its name. Its build is then a no-op.
        let profile_dir = Path::new(BIN).parent().expect("profile dir");
        let target = profile_dir.parent().expect("target dir");
        let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
            Some("debug") | None => "dev",
            Some(other) => other,
        };
        let out = self.dir.path().join("script.out");
        let err = self.dir.path().join("script.err");
        let mut child = Command::new("bash")
            .arg(&script)
            .args(args)
            .env("MT_HOME", &self.home)
            .env("MT_CONFIG", &self.config)
            .env("MT_PROFILE", profile)
            .env("CARGO_TARGET_DIR", target)
            .env("MT_ADD_HTTP_BASE", self.http_base.to_string())
            .env("MT_ADD_CLUSTER_BASE", self.cluster_base.to_string())
            .env("MT_WAIT_SECONDS", "60")
            .env(
                "RUST_LOG",
                "info,chitchat=warn,openraft=warn,openraft::core::raft_core=off",
            )
            .env_remove("MICRO_TOMCAT_GOSSIP_KEY")
            .env_remove("MICRO_TOMCAT_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("stdout file"))
            .stderr(File::create(&err).expect("stderr file"))
            .spawn()
            .expect("run the script");
        let deadline = Instant::now() + timeout;
        let code = loop {
            if let Some(status) = child.try_wait().expect("wait for the script") {
                break status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "cluster.sh {args:?} did not finish within {timeout:?}; stderr:\n{}",
                    std::fs::read_to_string(&err).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Run {
            code,
            stdout: std::fs::read_to_string(&out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err).unwrap_or_default(),
        }
    }

    /// The pid in a node's own pid file, if it has one.
    fn node_pid(&self, name: &str) -> Option<u32> {
        let path = self.home.join("data").join(name).join("micro-tomcat.pid");
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// Waits until `name` has written its pid file and that pid is a live micro-tomcat.
    fn wait_pid_file(&self, name: &str, timeout: Duration) -> u32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pid) = self.node_pid(name).filter(|pid| is_micro_tomcat(*pid)) {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "{name} wrote no pid file within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts node-5 by hand, as the docs show, with a data dir relative to its working directory.
    fn start_by_hand(&mut self) -> u32 {
        let key = std::fs::read_to_string(self.home.join("secrets/cluster.key")).expect("key");
        let log = File::create(self.dir.path().join("node-5.log")).expect("log");
        let child = Command::new(BIN)
            .args(["run", "--name", "node-5", "--http"])
            .arg(format!("127.0.0.1:{}", self.by_hand_ports.0))
            .arg("--cluster")
            .arg(format!("127.0.0.1:{}", self.by_hand_ports.1))
            .arg("--seed")
            .arg(format!("127.0.0.1:{}", self.founders[0].1))
            .arg("--config")
            .arg(&self.config)
            .args(["--data-dir", "home/data/node-5"])
            .current_dir(self.dir.path())
            .env("MICRO_TOMCAT_GOSSIP_KEY", key.trim())
            .env_remove("MICRO_TOMCAT_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start node-5");
        let pid = child.id();
        self.by_hand = Some(child);
        assert_eq!(self.wait_pid_file("node-5", Duration::from_secs(20)), pid);
        pid
    }

    /// Pids of micro-tomcat processes whose command line names this cluster's folder.
    fn processes_of_home(&self) -> Vec<u32> {
        let home = self.home.display().to_string();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains("micro-tomcat") && cmdline.contains(&home) {
                found.push(pid);
            }
        }
        found
    }
}

impl Drop for ScriptCluster {
    fn drop(&mut self) {
        for pid in self.processes_of_home() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        if let Some(mut child) = self.by_hand.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for name in ["node-1", "node-2", "node-3", "node-4"] {
                let log = self.home.join("logs").join(format!("{name}.log"));
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                eprintln!("----- last lines of {name} -----");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

fn is_micro_tomcat(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| String::from_utf8_lossy(&cmdline).contains("micro-tomcat"))
        .unwrap_or(false)
}

/// Waits until process `pid` is gone (or a zombie of ours).
fn wait_gone(pid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while is_micro_tomcat(pid) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} still runs after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The status table's first line names a leader (not `leader -`).
fn assert_leader(run: &Run) {
    let header = run.stdout.lines().find(|line| line.starts_with("cluster "));
    let header = header.unwrap_or_else(|| panic!("no status table:\n{run}"));
    assert!(
        header.contains("leader node-"),
        "no leader in {header:?}:\n{run}"
    );
}

#[test]
fn cluster_script_manages_a_local_cluster_completely() {
    let _lock = cluster_lock();
    let mut cluster = ScriptCluster::new();
    let step = Duration::from_secs(90);

    let up = cluster.run(&["up", "3"], Duration::from_secs(300));
    up.assert_ok("up 3");
    up.assert_says("building micro-tomcat (");
    // cargo's own progress, not --quiet.
    assert!(up.stderr.contains("Finished"), "no cargo output:\n{up}");
    up.assert_says("3 members: 3 up");
    assert_leader(&up);
    assert!(cluster.home.join("secrets/cluster.key").exists());
    for name in ["node-1", "node-2", "node-3"] {
        cluster.wait_pid_file(name, Duration::from_secs(5));
    }

    let add = cluster.run(&["add", "1"], step);
    add.assert_ok("add 1");
    add.assert_says(&format!(
        "started node-4 (pid {}",
        cluster.wait_pid_file("node-4", Duration::from_secs(5))
    ));
    add.assert_says(&format!("127.0.0.1:{}", cluster.http_base + 4));
    add.assert_says("4 members: 4 up");
    assert_leader(&add);

    let refused = cluster.run(&["clean"], step);
    assert_eq!(refused.code, Some(1), "clean while running:\n{refused}");
    assert!(refused.stderr.contains("down first"), "{refused}");
    assert!(cluster.home.exists());

    let old = cluster.wait_pid_file("node-2", Duration::from_secs(5));
    let restart = cluster.run(&["restart", "node-2"], step);
    restart.assert_ok("restart node-2");
    restart.assert_says(&format!("stopped node-2 (pid {old})"));
    restart.assert_says("started node-2");
    assert_leader(&restart);
    wait_gone(old, Duration::from_secs(5));
    let new = cluster.wait_pid_file("node-2", Duration::from_secs(5));
    assert_ne!(old, new, "node-2 was not restarted");

    let node_4 = cluster.wait_pid_file("node-4", Duration::from_secs(5));
    let stop = cluster.run(&["stop", "node-4"], step);
    stop.assert_ok("stop node-4");
    stop.assert_says(&format!("stopped node-4 (pid {node_4})"));
    wait_gone(node_4, Duration::from_secs(5));
    assert_eq!(cluster.node_pid("node-4"), None, "a clean exit removes it");

    // `start` brings back an added node with its recorded arguments.
    let start = cluster.run(&["start", "node-4"], step);
    start.assert_ok("start node-4");
    start.assert_says("started node-4");
    assert_leader(&start);

    // The operator's case: a node started by hand, not by the script.
    let by_hand = cluster.start_by_hand();
    let first_start = cluster
        .by_hand
        .as_mut()
        .map(|child| child.try_wait().expect("try_wait").is_none());
    assert_eq!(first_start, Some(true), "node-5 (pid {by_hand}) exited");
    // `restart` of a node started by hand reuses its command line (relative paths made absolute).
    let restart = cluster.run(&["restart", "node-5"], step);
    restart.assert_ok("restart node-5");
    restart.assert_says("recorded how node-5 was started");
    restart.assert_says(&format!("stopped node-5 (pid {by_hand})"));
    restart.assert_says("started node-5");
    assert_leader(&restart);
    let exited = cluster
        .by_hand
        .as_mut()
        .map(|child| child.try_wait().expect("try_wait").is_some());
    assert_eq!(exited, Some(true), "the hand-started node-5 still runs");
    let stop = cluster.run(&["stop", "node-5"], step);
    stop.assert_ok("stop node-5");
    // And by hand again: `down` must find it with nothing but its own pid file.
    let by_hand = cluster.start_by_hand();

    let down = cluster.run(&["down"], step);
    down.assert_ok("down");
    down.assert_says("stopped 5 node(s): node-1 node-2 node-3 node-4 node-5");
    assert_eq!(cluster.processes_of_home(), Vec::<u32>::new());
    let exited = cluster
        .by_hand
        .as_mut()
        .map(|child| child.try_wait().expect("try_wait").is_some());
    assert_eq!(exited, Some(true), "node-5 (pid {by_hand}) still runs");

    let clean = cluster.run(&["clean"], step);
    clean.assert_ok("clean");
    clean.assert_says(&format!("removed {}", cluster.home.display()));
    assert!(
        !cluster.home.exists(),
        "clean left {}",
        cluster.home.display()
    );
}
