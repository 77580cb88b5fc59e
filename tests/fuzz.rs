//! Fuzz tests (proptest; cargo-fuzz needs a nightly toolchain): untrusted text reaching the config
//! parser and the HTTP header parsers never panics, and every error is one line.
//!
//! The default run is short (256 cases per test); for a longer one:
//! `PROPTEST_CASES=100000 cargo test --workspace fuzz_`. A failing case is shrunk and written to
//! `tests/fuzz.proptest-regressions`, which is committed so it is replayed on every run.

use std::path::Path;

use axum::http::{HeaderMap, HeaderValue, header};
use micro_tomcat::config::ClusterConfig;
use micro_tomcat::routing::session_cookie;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// Every element and attribute the parser knows, with values different from the defaults.
const FULL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- every element -->
<cluster id="demo">
  <gossip interval-ms="200" phi-threshold="9.5" dead-after-ms="4000"/>
  <raft data-dir="state" voters="5" heartbeat-ms="50" election-timeout-ms="300" remove-after-ms="5000"/>
  <sessions ttl-seconds="60" cookie="SID" max-bytes="2048"/>
  <balancer strategy="round-robin" key="ip" retries="0"/>
  <security gossip-key-file="keys/gossip.key" admin-token-file="/etc/mt/token"/>
  <app docroot="www" upstream="http://127.0.0.1:9000"/>
  <metrics enabled="true"/>
  <http max-connections="50" header-timeout-ms="500" idle-timeout-ms="2000"/>
  <alerts interval-ms="1000" receiver="ops">
    <rule name="member-down" kind="member-down" for-ms="0"/>
    <rule kind="error-rate" threshold="0.05" window-ms="300000"/>
    <webhook url="http://127.0.0.1:9099/hook"/>
  </alerts>
  <nodes>
    <node name="node-1" http="127.0.0.1:8081" cluster="127.0.0.1:7001"/>
    <node name="node-2" http="127.0.0.1:8082" cluster="127.0.0.1:7002"/>
  </nodes>
</cluster>
"#;

/// Pieces a mutation inserts: the XML syntax and the vocabulary of the format, and some trouble.
const SNIPPETS: &[&str] = &[
    "<",
    ">",
    "/>",
    "</",
    "=",
    "\"",
    "'",
    "&",
    "&amp;",
    "&#0;",
    "&#x110000;",
    "<!--",
    "-->",
    "<![CDATA[",
    "]]>",
    "<?xml",
    "?>",
    "<!DOCTYPE x [<!ENTITY a \"b\">]>",
    "\n",
    "\t",
    " ",
    "\0",
    "\u{feff}",
    "é",
    "\u{10ffff}",
    "cluster",
    "nodes",
    "node",
    "gossip",
    "raft",
    "sessions",
    "balancer",
    "security",
    "app",
    "metrics",
    "alerts",
    "rule",
    "webhook",
    "id",
    "name",
    "http",
    "cluster=",
    "interval-ms",
    "phi-threshold",
    "dead-after-ms",
    "voters",
    "max-bytes",
    "strategy",
    "key",
    "retries",
    "gossip-key-file",
    "admin-token-file",
    "docroot",
    "upstream",
    "kind",
    "threshold",
    "-1",
    "0",
    "1e308",
    "NaN",
    "inf",
    "18446744073709551616",
    "127.0.0.1:0",
    "[::1]:7001",
    "999.1.1.1:80",
    "http://",
    "node-1",
];

fn check(text: &str) {
    match ClusterConfig::parse(text, Path::new("cluster-config.xml")) {
        Ok(config) => {
            // A config that parses describes itself without panicking too.
            let _ = config.describe();
        }
        Err(err) => {
            let message = err.to_string();
            assert!(!message.contains('\n'), "two lines: {message:?}");
            assert!(!message.is_empty());
        }
    }
}

/// One mutation of `text`, applied on character boundaries.
#[derive(Debug, Clone)]
enum Mutation {
    Delete {
        at: prop::sample::Index,
        len: usize,
    },
    Insert {
        at: prop::sample::Index,
        snippet: prop::sample::Index,
    },
    Replace {
        at: prop::sample::Index,
        with: char,
    },
    DuplicateLine {
        line: prop::sample::Index,
    },
    SwapLines {
        a: prop::sample::Index,
        b: prop::sample::Index,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1usize..40)
            .prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(at, snippet)| Mutation::Insert { at, snippet }),
        (any::<prop::sample::Index>(), any::<char>())
            .prop_map(|(at, with)| Mutation::Replace { at, with }),
        any::<prop::sample::Index>().prop_map(|line| Mutation::DuplicateLine { line }),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(a, b)| Mutation::SwapLines { a, b }),
    ]
}

fn apply(text: &str, mutation: &Mutation) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    match mutation {
        Mutation::Delete { at, len } if !chars.is_empty() => {
            let start = at.index(chars.len());
            let end = (start + len).min(chars.len());
            chars.drain(start..end);
        }
        Mutation::Insert { at, snippet } => {
            let start = at.index(chars.len() + 1);
            let piece = snippet.get(SNIPPETS);
            chars.splice(start..start, piece.chars());
        }
        Mutation::Replace { at, with } if !chars.is_empty() => {
            let i = at.index(chars.len());
            chars[i] = *with;
        }
        Mutation::DuplicateLine { line } => {
            let mut lines: Vec<&str> = text.lines().collect();
            if !lines.is_empty() {
                let i = line.index(lines.len());
                lines.insert(i, lines[i]);
            }
            return lines.join("\n");
        }
        Mutation::SwapLines { a, b } => {
            let mut lines: Vec<&str> = text.lines().collect();
            if !lines.is_empty() {
                let (i, j) = (a.index(lines.len()), b.index(lines.len()));
                lines.swap(i, j);
            }
            return lines.join("\n");
        }
        _ => {}
    }
    chars.into_iter().collect()
}

fn repo_example() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster-config.xml"))
        .expect("the example config at the repository root")
}

#[test]
fn fuzz_seeds_are_valid() {
    // The mutations start from valid files: check that they are.
    for text in [FULL.to_string(), repo_example()] {
        ClusterConfig::parse(&text, Path::new("cluster-config.xml")).expect("valid seed");
    }
}

proptest! {
    // Integration tests have no lib.rs for proptest's default path: keep regressions beside this file.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    /// Arbitrary text: never a panic, errors on one line.
    #[test]
    fn fuzz_config_arbitrary_text(text in ".{0,400}") {
        check(&text);
    }

    /// Arbitrary text inside a plausible skeleton, so the validator (not only the XML reader) runs.
    #[test]
    fn fuzz_config_arbitrary_attributes(
        element in prop::sample::select(vec!["gossip", "raft", "sessions", "balancer", "security", "app", "metrics", "http"]),
        attribute in "[a-z-]{1,20}",
        value in ".{0,40}",
    ) {
        let value = value.replace(['"', '<', '&'], "");
        let text = format!(
            "<cluster id=\"demo\">\n  <{element} {attribute}=\"{value}\"/>\n  <nodes>\n    <node name=\"n\" http=\"127.0.0.1:1\" cluster=\"127.0.0.1:2\"/>\n  </nodes>\n</cluster>\n"
        );
        check(&text);
    }

    /// Valid files with a few mutations: deletions, inserted syntax and keywords, changed
    /// characters, duplicated and swapped lines.
    #[test]
    fn fuzz_config_mutated_valid_files(
        full in any::<bool>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let mut text = if full { FULL.to_string() } else { repo_example() };
        for mutation in &mutations {
            text = apply(&text, mutation);
        }
        check(&text);
    }

    /// The session cookie parser takes any Cookie headers; a value it returns came from them.
    #[test]
    fn fuzz_session_cookie(
        values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 0..4),
        name in "[A-Za-z]{1,12}",
    ) {
        let mut headers = HeaderMap::new();
        for value in &values {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                headers.append(header::COOKIE, value);
            }
        }
        if let Some(found) = session_cookie(&headers, &name) {
            let all: String = headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            prop_assert!(all.contains(&found));
        }
    }
}
