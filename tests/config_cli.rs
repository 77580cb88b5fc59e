//! `check-config` and `run` on broken configs: exit 1, one clear line on stderr, no panic.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test; `cargo test` builds it first.
const BIN: &str = env!("CARGO_BIN_EXE_micro-tomcat");

/// A config problem is found before anything starts, so this is generous.
const DEADLINE: Duration = Duration::from_secs(30);

/// Kills the child when dropped, so a test that fails (or a `run` that unexpectedly starts
/// serving) never leaves a process behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// What one run of the binary produced.
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` in `dir`, waiting at most `DEADLINE`.
fn micro_tomcat(dir: &Path, args: &[&str]) -> Outcome {
    // Output goes to files rather than pipes so a chatty child can never block on a full pipe.
    let out_path = dir.join("stdout.txt");
    let err_path = dir.join("stderr.txt");
    let stdout = File::create(&out_path).expect("create stdout file");
    let stderr = File::create(&err_path).expect("create stderr file");
    let child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LOG")
        .env_remove("MICRO_TOMCAT_GOSSIP_KEY")
        .env_remove("MICRO_TOMCAT_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("spawn micro-tomcat");
    let mut guard = ChildGuard(child);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = guard.0.try_wait().expect("wait for micro-tomcat") {
            break status;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "micro-tomcat {args:?} still running after {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// Asserts the contract for a bad config: exit 1, exactly one non-empty stderr line that
/// names the file and the problem, and no sign of a panic.
fn assert_one_line_error(outcome: &Outcome, file_name: &str, keywords: &[&str]) {
    let stderr = &outcome.stderr;
    assert_eq!(
        outcome.status.code(),
        Some(1),
        "exit code; stderr: {stderr:?}"
    );
    assert!(!stderr.contains("panicked"), "panic: {stderr:?}");
    assert!(
        !stderr.contains("RUST_BACKTRACE"),
        "backtrace hint: {stderr:?}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one stderr line, got {stderr:?}");
    let line = lines[0];
    assert!(!line.trim().is_empty(), "empty stderr line");
    assert!(line.starts_with("error: "), "{line}");
    assert!(line.contains(file_name), "{line:?} should name {file_name}");
    for keyword in keywords {
        assert!(
            line.contains(keyword),
            "{line:?} should contain {keyword:?}"
        );
    }
}

/// Writes `content` as `name` in a fresh temp dir.
fn config_file(name: &str, content: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, content).expect("write config");
    (dir, path)
}

/// A valid file with `extra` before `<nodes>` and `nodes` as its node lines.
fn cluster_xml(extra: &str, nodes: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?>\n<cluster id=\"demo\">\n  {extra}\n  <nodes>\n{nodes}  </nodes>\n</cluster>\n"
    )
}

fn node(name: &str, http: &str, cluster: &str) -> String {
    format!("    <node name=\"{name}\" http=\"{http}\" cluster=\"{cluster}\"/>\n")
}

fn two_nodes() -> String {
    node("node-1", "127.0.0.1:8081", "127.0.0.1:7001")
        + &node("node-2", "127.0.0.1:8082", "127.0.0.1:7002")
}

/// `check-config NAME` on a file holding `content` must fail with `keywords` in its one line.
fn check_config_fails(name: &str, content: &str, keywords: &[&str]) {
    let (dir, path) = config_file(name, content);
    let outcome = micro_tomcat(
        dir.path(),
        &["check-config", path.to_str().expect("utf-8 path")],
    );
    assert_one_line_error(&outcome, name, keywords);
}

#[test]
fn malformed_xml() {
    check_config_fails(
        "broken.xml",
        "<cluster id=\"demo\">\n  <nodes>\n    <node name=\"node-1\" http=\"127.0.0.1:8081\n",
        &["malformed XML"],
    );
}

#[test]
fn unclosed_tag() {
    check_config_fails(
        "unclosed.xml",
        "<cluster id=\"demo\">\n  <nodes>\n    <node name=\"n\" http=\"127.0.0.1:8081\" cluster=\"127.0.0.1:7001\"/>\n</cluster>\n",
        &["malformed XML", ":4:", "nodes>"],
    );
}

#[test]
fn unclosed_node_names_where_it_opened() {
    let nodes = "    <node name=\"node-1\" http=\"127.0.0.1:8081\" cluster=\"127.0.0.1:7001\">\n"
        .to_string()
        + &node("node-2", "127.0.0.1:8082", "127.0.0.1:7002");
    check_config_fails(
        "unclosed-node.xml",
        &cluster_xml("", &nodes),
        &[":7:", "<node> opened at line 5 is never closed", "</nodes>"],
    );
}

#[test]
fn unknown_attribute() {
    check_config_fails(
        "unknown-attr.xml",
        &cluster_xml("<gossip intervall-ms=\"150\"/>", &two_nodes()),
        &[":3:", "unknown attribute intervall-ms", "interval-ms"],
    );
}

#[test]
fn unknown_element() {
    check_config_fails(
        "unknown-element.xml",
        &cluster_xml("<gosip/>", &two_nodes()),
        &[":3:", "unknown element <gosip>", "<gossip>"],
    );
}

#[test]
fn duplicate_node_name() {
    let nodes = node("node-1", "127.0.0.1:8081", "127.0.0.1:7001")
        + &node("node-1", "127.0.0.1:8082", "127.0.0.1:7002");
    check_config_fails(
        "dup-name.xml",
        &cluster_xml("", &nodes),
        &[":6:", "duplicate node name \"node-1\"", "line 5"],
    );
}

#[test]
fn duplicate_address() {
    let nodes = node("node-1", "127.0.0.1:8081", "127.0.0.1:7001")
        + &node("node-2", "127.0.0.1:8082", "127.0.0.1:7001");
    check_config_fails(
        "dup-port.xml",
        &cluster_xml("", &nodes),
        &[":6:", "address 127.0.0.1:7001 used twice"],
    );
}

#[test]
fn bad_address() {
    check_config_fails(
        "bad-addr.xml",
        &cluster_xml("", &node("node-1", "localhost:8081", "127.0.0.1:7001")),
        &[":5:", "bad http address", "IP:PORT"],
    );
}

#[test]
fn port_zero() {
    check_config_fails(
        "port-zero.xml",
        &cluster_xml("", &node("node-1", "127.0.0.1:8081", "127.0.0.1:0")),
        &[":5:", "port 0"],
    );
}

#[test]
fn interval_out_of_range() {
    check_config_fails(
        "interval.xml",
        &cluster_xml("<gossip interval-ms=\"5\"/>", &two_nodes()),
        &[":3:", "interval-ms must be between 20 and 10000, got 5"],
    );
}

#[test]
fn phi_not_a_number() {
    check_config_fails(
        "phi.xml",
        &cluster_xml("<gossip phi-threshold=\"high\"/>", &two_nodes()),
        &[":3:", "phi-threshold must be a number", "\"high\""],
    );
}

#[test]
fn dead_after_below_two_intervals() {
    check_config_fails(
        "dead-after.xml",
        &cluster_xml(
            "<gossip interval-ms=\"500\" dead-after-ms=\"800\"/>",
            &two_nodes(),
        ),
        &[":3:", "dead-after-ms must be at least twice interval-ms"],
    );
}

#[test]
fn bad_strategy() {
    check_config_fails(
        "strategy.xml",
        &cluster_xml("<balancer strategy=\"random\"/>", &two_nodes()),
        &[":3:", "strategy must be one of", "consistent-hash"],
    );
}

#[test]
fn missing_cluster_element() {
    check_config_fails(
        "no-cluster.xml",
        "<?xml version=\"1.0\"?>\n<!-- nothing here -->\n",
        &["no <cluster> element"],
    );
    check_config_fails(
        "wrong-root.xml",
        "<config id=\"demo\"/>\n",
        &[":1:", "must be <cluster>"],
    );
}

#[test]
fn empty_file() {
    check_config_fails("empty.xml", "", &["the file is empty"]);
}

#[test]
fn text_content() {
    check_config_fails(
        "text.xml",
        &cluster_xml("<gossip>150</gossip>", &two_nodes()),
        &[":3:", "unexpected text \"150\""],
    );
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outcome = micro_tomcat(dir.path(), &["check-config", "missing-config.xml"]);
    assert_one_line_error(&outcome, "missing-config.xml", &["cannot read"]);
}

#[test]
fn check_config_reads_the_secret_files() {
    let security = r#"<security gossip-key-file="secrets/gossip.key" admin-token-file="secrets/admin.token"/>"#;
    let (dir, path) = config_file("cluster-config.xml", &cluster_xml(security, &two_nodes()));
    let check = || {
        micro_tomcat(
            dir.path(),
            &["check-config", path.to_str().expect("utf-8 path")],
        )
    };
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).expect("mkdir");

    assert_one_line_error(
        &check(),
        "cluster-config.xml",
        &[
            "gossip.key",
            "<security gossip-key-file>",
            "cannot read the gossip key",
        ],
    );
    std::fs::write(secrets.join("gossip.key"), "not base64!\n").expect("key");
    assert_one_line_error(&check(), "cluster-config.xml", &["gossip.key", "base64"]);
    // 32 bytes of base64, as `openssl rand -base64 32` makes them.
    std::fs::write(
        secrets.join("gossip.key"),
        "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=\n",
    )
    .expect("key");
    assert_one_line_error(
        &check(),
        "cluster-config.xml",
        &["admin.token", "cannot read the admin token"],
    );
    std::fs::write(secrets.join("admin.token"), "short\n").expect("token");
    assert_one_line_error(
        &check(),
        "cluster-config.xml",
        &["admin.token", "the admin token has 5 characters"],
    );
    std::fs::write(secrets.join("admin.token"), "0123456789abcdef0123\n").expect("token");
    let outcome = check();
    assert_eq!(outcome.status.code(), Some(0), "{}", outcome.stderr);
    assert!(
        outcome.stdout.contains("gossip sealed")
            && outcome.stdout.contains("admin calls need the token"),
        "{}",
        outcome.stdout
    );
    assert!(
        !outcome.stdout.contains("0123456789abcdef0123"),
        "prints the token: {}",
        outcome.stdout
    );
}

#[test]
fn run_with_node_not_in_file() {
    let (dir, path) = config_file("cluster-config.xml", &cluster_xml("", &two_nodes()));
    let outcome = micro_tomcat(
        dir.path(),
        &[
            "run",
            "--config",
            path.to_str().expect("utf-8 path"),
            "--name",
            "node-9",
        ],
    );
    assert_one_line_error(
        &outcome,
        "cluster-config.xml",
        &["node \"node-9\" is not in <nodes>", "--http and --cluster"],
    );
}

#[test]
fn run_with_bad_config() {
    let (dir, path) = config_file(
        "run-broken.xml",
        &cluster_xml("<raft voters=\"12\"/>", &two_nodes()),
    );
    let outcome = micro_tomcat(
        dir.path(),
        &[
            "run",
            "--config",
            path.to_str().expect("utf-8 path"),
            "--name",
            "node-1",
        ],
    );
    assert_one_line_error(
        &outcome,
        "run-broken.xml",
        &[":3:", "voters must be between 1 and 9"],
    );
}

#[test]
fn run_without_file_needs_addresses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outcome = micro_tomcat(dir.path(), &["run", "--name", "solo"]);
    assert_eq!(
        outcome.status.code(),
        Some(1),
        "stderr: {:?}",
        outcome.stderr
    );
    let lines: Vec<&str> = outcome.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{:?}", outcome.stderr);
    assert!(
        lines[0].contains("--http and --cluster are required"),
        "{}",
        lines[0]
    );
}

#[test]
fn repo_example_checks_out() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster-config.xml");
    let dir = tempfile::tempdir().expect("tempdir");
    let outcome = micro_tomcat(
        dir.path(),
        &["check-config", example.to_str().expect("utf-8 path")],
    );
    assert_eq!(
        outcome.status.code(),
        Some(0),
        "stderr: {:?}",
        outcome.stderr
    );
    assert!(
        outcome.stdout.contains("cluster \"demo\": 3 nodes"),
        "{}",
        outcome.stdout
    );
    for (name, http, cluster) in [
        ("node-1", "127.0.0.1:8081", "127.0.0.1:7001"),
        ("node-2", "127.0.0.1:8082", "127.0.0.1:7002"),
        ("node-3", "127.0.0.1:8083", "127.0.0.1:7003"),
    ] {
        let line = outcome
            .stdout
            .lines()
            .find(|line| line.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("{name} not listed in {:?}", outcome.stdout));
        assert!(line.contains(http) && line.contains(cluster), "{line}");
    }
}

/// Asserts a usage error: exit 1 and exactly one `error:` line on stderr holding `keywords`.
fn assert_usage_error(outcome: &Outcome, keywords: &[&str]) {
    let stderr = &outcome.stderr;
    assert_eq!(outcome.status.code(), Some(1), "stderr: {stderr:?}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one stderr line, got {stderr:?}");
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    for keyword in keywords {
        assert!(
            lines[0].contains(keyword),
            "{:?} should contain {keyword:?}",
            lines[0]
        );
    }
}

#[test]
fn run_without_name_names_the_missing_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outcome = micro_tomcat(dir.path(), &["run", "--http", "127.0.0.1:1"]);
    assert_usage_error(&outcome, &["micro-tomcat run", "missing --name <NAME>"]);
}

#[test]
fn no_command_lists_the_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outcome = micro_tomcat(dir.path(), &[]);
    assert_usage_error(
        &outcome,
        &[
            "a command is needed",
            "run",
            "status",
            "backup",
            "check-config",
        ],
    );
}
