//! Lints over our own source: invariants ARCHITECTURE.md states that a compiler cannot check.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/`.
fn sources() -> Vec<PathBuf> {
    let mut pending = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    let mut files = Vec::new();
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Whether `code` names `word` as a whole identifier.
fn names(code: &str, word: &str) -> bool {
    code.match_indices(word).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = code[at + word.len()..].chars().next();
        let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        !ident(before) && !ident(after)
    })
}

/// The code of a file before its unit tests (`#[cfg(test)]` modules come last in our files).
fn non_test_code(source: &str) -> String {
    let code = code_only(source);
    match code.find("#[cfg(test)]") {
        Some(at) => code[..at].to_string(),
        None => code,
    }
}

/// Removes comments and the contents of string and char literals from Rust source, so that
/// only code is left (`"openraft=warn"` in a log filter names no type).
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut code = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        let rest = &chars[i..];
        match rest {
            ['/', '/', ..] => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            ['/', '*', ..] => {
                let mut depth = 0;
                while i < chars.len() {
                    if chars[i..].starts_with(&['/', '*']) {
                        depth += 1;
                        i += 2;
                    } else if chars[i..].starts_with(&['*', '/']) {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            ['r', '#' | '"', ..] if i == 0 || !chars[i - 1].is_alphanumeric() => {
                let hashes = rest[1..].iter().take_while(|c| **c == '#').count();
                if rest.get(1 + hashes) != Some(&'"') {
                    code.push('r');
                    i += 1;
                    continue;
                }
                i += 2 + hashes;
                while i < chars.len() {
                    if chars[i] == '"'
                        && chars[i + 1..]
                            .iter()
                            .take(hashes)
                            .filter(|c| **c == '#')
                            .count()
                            == hashes
                    {
                        i += 1 + hashes;
                        break;
                    }
                    i += 1;
                }
                code.push_str("\"\"");
            }
            ['"', ..] => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                code.push_str("\"\"");
            }
            // A char literal ('x', '\n'); a lifetime ('a) has no closing quote.
            ['\'', '\\', ..] => {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            }
            ['\'', _, '\'', ..] => i += 3,
            [c, ..] => {
                code.push(*c);
                i += 1;
            }
            [] => break,
        }
    }
    code
}

#[test]
fn code_only_drops_comments_and_literals() {
    let source = "use a; // openraft::X\n/* openraft */ let s = \"openraft=warn\"; \
                  let r = r#\"openraft\"#; let c = '\"'; fn f<'a>() {} openraft::Raft";
    let code = code_only(source);
    assert_eq!(code.matches("openraft").count(), 1, "{code}");
    assert!(code.contains("fn f<'a>()"), "{code}");
}

/// Only `raft` names openraft: the rest of the node reads `raft::status::RaftStatus`, so an openraft
/// upgrade changes that module only.
#[test]
fn nothing_outside_raft_names_openraft() {
    let raft = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join("raft");
    let offenders: Vec<_> = sources()
        .into_iter()
        .filter(|path| !path.starts_with(&raft))
        .filter(|path| {
            names(
                &code_only(&std::fs::read_to_string(path).expect("read")),
                "openraft",
            )
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "openraft named outside src/raft/ in {offenders:?}"
    );
}

/// Every background task runs on the node's `TaskTracker` (so `Node::run` returns only after they
/// stopped). The only plain spawns are joined by their spawner: the HTTP server task (`node` joins
/// or aborts it), a hop channel's writer on the serving side (its channel's task awaits it), and the
/// binary's signal watcher, which lives as long as the process.
#[test]
fn background_tasks_are_spawned_on_the_tracker() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed = [
        (root.join("node/mod.rs"), 1),
        (root.join("proxy/hop/server.rs"), 1),
        (root.join("main.rs"), 1),
    ];
    let mut offenders = Vec::new();
    // Unit-test modules in their own file (`tests.rs`) are test code throughout.
    for path in sources().into_iter().filter(|p| !p.ends_with("tests.rs")) {
        let code = non_test_code(&std::fs::read_to_string(&path).expect("read"));
        let spawns = code.matches("tokio::spawn(").count() + code.matches("task::spawn(").count();
        let allowed = allowed
            .iter()
            .find(|(file, _)| *file == path)
            .map_or(0, |(_, n)| *n);
        if spawns > allowed {
            offenders.push(format!("{}: {spawns}", path.display()));
        }
    }
    assert!(
        offenders.is_empty(),
        "plain tokio::spawn outside the TaskTracker in {offenders:?}"
    );
}

#[test]
fn non_test_code_stops_at_the_unit_tests() {
    let source =
        "fn a() { tokio::spawn(x) }\n#[cfg(test)]\nmod tests { fn b() { tokio::spawn(y) } }";
    assert_eq!(non_test_code(source).matches("tokio::spawn(").count(), 1);
    assert!(names("use openraft::Raft;", "openraft"));
    assert!(!names("let my_openraft_x = 1;", "openraft"));
}
