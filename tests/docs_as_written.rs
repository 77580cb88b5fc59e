//! docs/operations.md and README.md run as written: every shell command of their code blocks
//! (the `$ ` lines, and every line of an `sh` block without them) is taken from the file and run in the
//! order the page gives them,
//! against a scratch cluster of the shipped `cluster-config.xml` started with `scripts/cluster.sh up
//! 3`, from a scratch folder (so `.cluster`, `jar` and the backups land there). The cluster runs in a
//! network namespace of its own (`unshare --net`), so the manual's ports (8081.., 7001..) are used
//! literally and nothing on the machine's loopback is touched. A command the test does not run is
//! skipped for a reason written below; a new command in the manual is run. What is checked: the exit
//! code (0, or the `exit=N` / `rc=N` line the manual shows), a one-line JSON answer has the keys the
//! manual shows, a status table has the manual's header, and the script says it started or stopped
//! the nodes the manual shows.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{BIN, cluster_lock};

/// One command of the manual with the output it shows under it.
#[derive(Debug)]
struct DocCommand {
    line: usize,
    /// The `## ` heading it is under.
    section: String,
    text: String,
    shown: Vec<String>,
}

/// The commands of a markdown file's code blocks, in order.
fn commands_of(markdown: &str) -> Vec<DocCommand> {
    let mut commands: Vec<DocCommand> = Vec::new();
    let mut fence: Option<String> = None;
    let mut section = String::new();
    let mut transcript = false;
    let mut lines = markdown.lines().enumerate().peekable();
    while let Some((index, line)) = lines.next() {
        if let Some(info) = line.strip_prefix("```") {
            fence = match fence {
                Some(_) => None,
                None => Some(info.trim().to_string()),
            };
            // An `sh` block with `$ ` lines is a transcript, like the others.
            transcript = markdown
                .lines()
                .skip(index + 1)
                .take_while(|line| !line.starts_with("```"))
                .any(|line| line.starts_with("$ "));
            continue;
        }
        let Some(info) = fence.as_deref() else {
            if let Some(heading) = line.strip_prefix("## ") {
                section = heading.trim().to_string();
            }
            continue;
        };
        let text = if info == "sh" && !transcript {
            Some(line)
        } else {
            line.strip_prefix("$ ")
        };
        match text {
            Some(text) => {
                let mut text = text.to_string();
                while text.ends_with('\\') {
                    match lines.next() {
                        Some((_, next)) => {
                            text.push('\n');
                            text.push_str(next);
                        }
                        None => break,
                    }
                }
                commands.push(DocCommand {
                    line: index + 1,
                    section: section.clone(),
                    text,
                    shown: Vec::new(),
                });
            }
            None => {
                if let Some(last) = commands.last_mut() {
                    last.shown.push(line.to_string());
                }
            }
        }
    }
    commands
}

/// Why a command of the manual is not run here, if it is not.
fn skip_reason(section: &str, text: &str) -> Option<&'static str> {
    if section == "Two commands" && text.starts_with("scripts/cluster.sh up 3") {
        return Some("the README's tour starts the same cluster with the same command");
    }
    if section == "Admin calls with a token" {
        return Some("the admin calls need a cluster with a token: tests/security.rs");
    }
    const SKIPS: &[(&str, &str)] = &[
        (
            "/etc/micro-tomcat",
            "a machine install (docs/deploy); tests/config_cli.rs checks these commands",
        ),
        (
            "git diff OLD NEW",
            "OLD and NEW stand for the two versions being compared",
        ),
        ("cargo test", "the tests are the suite that runs this test"),
        (
            "ls backups",
            "periodic backups need <backup> in the file: tests/backup.rs",
        ),
        (
            "grep backup",
            "periodic backups need <backup> in the file: tests/backup.rs",
        ),
        (
            "$TOKEN",
            "the admin calls need a cluster with a token: tests/security.rs",
        ),
        (
            "wrongwrongwrong",
            "the admin calls need a cluster with a token: tests/security.rs",
        ),
        (
            "secrets/missing.token",
            "the admin calls need a cluster with a token: tests/security.rs",
        ),
    ];
    if text.trim_start().starts_with('#') {
        return Some("a comment");
    }
    SKIPS
        .iter()
        .find(|(pattern, _)| text.contains(pattern))
        .map(|(_, reason)| *reason)
}

/// What the test runs before a command of the manual, so that the state is the one the manual had
/// there: the manual shows two ways to do some steps, and waits a person does by eye.
fn prelude(text: &str) -> Option<&'static str> {
    const PRELUDES: &[(&str, &str)] = &[
        // "By hand" joins the node-4 that `add 1` started just before: stop that one first.
        (
            "micro-tomcat run --name node-4",
            "scripts/cluster.sh stop node-4 >/dev/null",
        ),
        // `status` right after a node started in the background: wait until it is in.
        (
            "micro-tomcat status                  # 3 s later",
            "until curl -sf 127.0.0.1:8084/readyz >/dev/null; do sleep 0.2; done; \
             until micro-tomcat status | grep -q '^node-4 *up'; do sleep 0.2; done",
        ),
        // The rolling restart starts from every founder running (node-3 was stopped for good above,
        // and the manual's cluster had replaced it; this one has node-3 come back).
        (
            "for n in node-1 node-2 node-3; do scripts/cluster.sh restart",
            "scripts/cluster.sh start node-3 >/dev/null",
        ),
        (
            "micro-tomcat status | grep node-2                                          # 1 s later",
            "until micro-tomcat status | grep -q '^node-2 *up'; do sleep 0.2; done",
        ),
    ];
    PRELUDES
        .iter()
        .find(|(pattern, _)| text.contains(pattern))
        .map(|(_, prelude)| *prelude)
}

/// The `exit=N` or `rc=N` lines the manual shows for a command.
fn shown_codes(shown: &[String]) -> Vec<String> {
    shown
        .iter()
        .map(|line| line.trim())
        .filter(|line| {
            let code = line
                .strip_prefix("exit=")
                .or_else(|| line.strip_prefix("promtool rc="));
            code.is_some_and(|code| !code.is_empty() && code.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_string)
        .collect()
}

/// The keys of a JSON object on one line (a `# comment` after it left out).
fn json_keys(line: &str) -> Option<BTreeSet<String>> {
    let line = match line.rfind("} ") {
        Some(end) if line[end + 1..].trim_start().starts_with('#') => &line[..=end],
        _ => line,
    };
    let value: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    Some(value.as_object()?.keys().cloned().collect())
}

/// A process whose command line or working directory is under `dir`.
fn processes_under(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let needle = dir.to_string_lossy().into_owned();
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(&needle) || cwd.starts_with(dir)
        })
        .collect()
}

/// Kills what the walk left running, even when the test fails.
struct KillOnDrop(PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in processes_under(&self.0) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

#[test]
fn operations_manual_runs_as_written() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manual = std::fs::read_to_string(repo.join("docs/operations.md")).expect("read the manual");
    // The version numbers the upgrade section gives are the ones the code speaks.
    for stated in [
        format!(
            "`PEER_WIRE_VERSION` (`proto/src/raft/peer.rs`, now `{}`",
            proto::raft::PEER_WIRE_VERSION
        ),
        format!(
            "(`proto::gossip::WIRE_VERSION`, now `{}`)",
            proto::gossip::WIRE_VERSION
        ),
    ] {
        assert!(
            manual.contains(&stated),
            "docs/operations.md should say {stated}"
        );
    }
    let commands = commands_of(&manual);
    assert!(
        commands.len() > 30,
        "found only {} commands",
        commands.len()
    );
    walk("docs/operations.md", &commands);
}

#[test]
fn readme_runs_as_written() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).expect("read the README");
    let commands = commands_of(&readme);
    assert!(
        commands.len() > 10,
        "found only {} commands in the README",
        commands.len()
    );
    walk("README.md", &commands);
}

/// Runs `commands` of the page `page` in order in a scratch folder, and checks each.
fn walk(page: &str, commands: &[DocCommand]) {
    let _lock = cluster_lock();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));

    let scratch = tempfile::tempdir().expect("tempdir");
    let work = scratch.path().canonicalize().expect("tempdir path");
    let _cleanup = KillOnDrop(work.clone());
    // The script finds the repository (the config, cargo) through the link; its cluster folder is
    // this test's, exported as the manual says to.
    std::os::unix::fs::symlink(repo.join("scripts"), work.join("scripts")).expect("link scripts");
    std::fs::copy(
        repo.join("cluster-config.xml"),
        work.join("cluster-config.xml"),
    )
    .expect("copy the config");
    // The manual's other paths: a working folder and a copy of the config beside it.
    let docs_work = work.join("docs-work");
    std::fs::create_dir_all(docs_work.join("cfg")).expect("docs-work");
    std::fs::copy(
        repo.join("cluster-config.xml"),
        docs_work.join("cfg/cluster-config.xml"),
    )
    .expect("copy the config");
    let bin_dir = work.join("bin");
    std::fs::create_dir(&bin_dir).expect("bin dir");
    std::os::unix::fs::symlink(BIN, bin_dir.join("micro-tomcat")).expect("link the binary");
    // The README names the binary by its path in the repository.
    std::fs::create_dir_all(work.join("target/release")).expect("target dir");
    std::os::unix::fs::symlink(BIN, work.join("target/release/micro-tomcat")).expect("link");
    let out = work.join("out");
    std::fs::create_dir(&out).expect("out dir");

    // BIN is <target>/debug/micro-tomcat: the script's dev profile then finds it and builds nothing.
    let target = Path::new(BIN)
        .parent()
        .and_then(Path::parent)
        .expect("target dir");
    let mut driver = String::from("set -u\nip link set lo up || exit 97\n");
    driver.push_str(&format!(
        "export PATH={}:$PATH MT_PROFILE=dev CARGO_TARGET_DIR={} MT_WAIT_SECONDS=90\n",
        bin_dir.display(),
        target.display()
    ));
    driver.push_str(
        "export RUST_LOG=info,chitchat=warn,openraft=warn,openraft::core::raft_core=off\n",
    );
    driver.push_str(&format!(
        "export MT_HOME={}/.cluster\nunset MT_CONFIG MICRO_TOMCAT_GOSSIP_KEY MICRO_TOMCAT_ADMIN_TOKEN\n",
        work.display()
    ));
    driver.push_str("run() { timeout -k 5 120 bash \"out/$1.sh\" >\"out/$1.out\" 2>&1 </dev/null; echo $? >\"out/$1.rc\"; }\n");
    let mut ran = Vec::new();
    let mut skipped = Vec::new();
    let mut ids: Vec<(usize, String)> = Vec::new();
    for (index, command) in commands.iter().enumerate() {
        let restore = command.text.contains("micro-tomcat restore");
        if let Some(reason) = skip_reason(&command.section, &command.text).filter(|_| !restore) {
            skipped.push(format!(
                "line {}: {} ({reason})",
                command.line, command.text
            ));
            continue;
        }
        let mut text = command
            .text
            .replace("/tmp/docs-work", &docs_work.to_string_lossy());
        // This cluster has no admin token: "without one, leave the variable out", as the manual says.
        if let Some(rest) =
            text.strip_prefix("MICRO_TOMCAT_ADMIN_TOKEN=$TOKEN micro-tomcat restore")
        {
            text = format!("micro-tomcat restore{rest}");
        }
        // A live event stream never ends by itself: it runs 3 s, and must still be open then.
        if text.contains("text/event-stream") {
            text = format!("timeout 3 {text}; test $? = 124");
        }
        if let Some(prelude) = prelude(&command.text) {
            let name = format!("{index}-prelude");
            std::fs::write(out.join(format!("{name}.sh")), prelude).expect("write prelude");
            driver.push_str(&format!("run {name}\n"));
        }
        std::fs::write(out.join(format!("{index}.sh")), &text).expect("write command");
        driver.push_str(&format!("run {index}\n"));
        ran.push(index);
        if let [only] = command.shown.as_slice()
            && let Ok(answer) = serde_json::from_str::<serde_json::Value>(only)
            && let Some(id) = answer.get("id").and_then(|id| id.as_str())
        {
            ids.push((index, id.to_string()));
        }
    }
    driver.push_str("scripts/cluster.sh down > out/down.out 2>&1; echo $? > out/down.rc\n");
    std::fs::write(work.join("driver.sh"), driver).expect("write the driver");

    let started = Instant::now();
    let status = Command::new("unshare")
        .args(["--net", "bash", "driver.sh"])
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run unshare");
    assert!(status.success(), "the driver failed: {status}");
    let took = started.elapsed();

    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap_or_default();
    let mut failures = Vec::new();
    for index in &ran {
        let command = &commands[*index];
        let prelude_rc = read(&format!("{index}-prelude.rc"));
        if !prelude_rc.is_empty() && prelude_rc.trim() != "0" {
            failures.push(format!(
                "line {}: the test's preparation failed (rc {}):\n{}",
                command.line,
                prelude_rc.trim(),
                read(&format!("{index}-prelude.out"))
            ));
        }
        let rc = read(&format!("{index}.rc"));
        let output = read(&format!("{index}.out"));
        let mut wrong = Vec::new();
        let codes = shown_codes(&command.shown);
        if codes.is_empty() {
            if rc.trim() != "0" {
                wrong.push(format!("exit code {}", rc.trim()));
            }
        } else {
            for code in codes {
                if !output.lines().any(|line| line.trim() == code) {
                    wrong.push(format!("no line {code:?}"));
                }
            }
        }
        if let [only] = command.shown.as_slice()
            && let Some(keys) = json_keys(only)
        {
            let actual = output.lines().next().and_then(json_keys);
            if actual.as_ref() != Some(&keys) {
                wrong.push(format!("JSON keys {actual:?}, the manual shows {keys:?}"));
            }
        }
        fn header(line: &str) -> Vec<&str> {
            line.split_whitespace().collect()
        }
        if let Some(shown) = command.shown.iter().find(|line| line.starts_with("NAME ")) {
            if !output.lines().any(|line| header(line) == header(shown)) {
                wrong.push(format!("no table header {shown:?}"));
            }
        }
        // The script's "started node-1 (pid ...)" / "stopped node-2 (pid ...)" lines, node by node.
        for shown in &command.shown {
            let words: Vec<&str> = shown.split_whitespace().take(2).collect();
            if matches!(words.first(), Some(&"started") | Some(&"stopped"))
                && !output
                    .lines()
                    .any(|line| line.split_whitespace().take(2).eq(words.iter().copied()))
            {
                wrong.push(format!("no line starting {:?}", words.join(" ")));
            }
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "line {}: `{}`: {}\n--- output\n{output}",
                command.line,
                command.text,
                wrong.join("; ")
            ));
        }
    }
    assert_eq!(read("down.rc").trim(), "0", "down: {}", read("down.out"));
    let left = processes_under(&work);
    assert!(
        failures.is_empty(),
        "{} of {} commands of {page} failed ({took:?}; skipped: {}):\n\n{}",
        failures.len(),
        ran.len(),
        skipped.len(),
        failures.join("\n\n")
    );
    assert!(
        left.is_empty(),
        "processes left after `scripts/cluster.sh down`: {left:?}"
    );
    eprintln!(
        "ran {} commands of {page} in {took:?}; skipped {}:\n{}",
        ran.len(),
        skipped.len(),
        skipped.join("\n")
    );
}
