use std::io::Write;

use super::*;

const FILE: &str = "cluster-config.xml";

/// A complete file with every element, values different from the defaults where allowed.
const FULL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- every element -->
<cluster id="demo">
  <gossip interval-ms="200" phi-threshold="9.5" dead-after-ms="4000"/>
  <raft data-dir="state" voters="5" heartbeat-ms="50" election-timeout-ms="300" remove-after-ms="5000" snapshot-every="2000"/>
  <sessions ttl-seconds="60" cookie="SID" max-bytes="2048" max-active="5000" create-rate-per-ip="7" cookie-secure="true"/>
  <balancer strategy="round-robin" key="ip" retries="0" connect-timeout-ms="250" response-timeout-ms="5000" transport="http"/>
  <security gossip-key-file="keys/gossip.key" admin-token-file="/etc/mt/token" allow-open-peers="true"/>
  <app docroot="www" upstream="http://127.0.0.1:9000"/>
  <nodes>
    <node name="node-1" http="127.0.0.1:8081" cluster="127.0.0.1:7001"/>
    <node name="node-2" http="127.0.0.1:8082" cluster="127.0.0.1:7002"/>
  </nodes>
</cluster>
"#;

/// The smallest valid file.
fn minimal(nodes: &str) -> String {
    format!("<cluster id=\"demo\">\n  <nodes>\n{nodes}  </nodes>\n</cluster>\n")
}

fn node_line(name: &str, http: &str, cluster: &str) -> String {
    format!("    <node name=\"{name}\" http=\"{http}\" cluster=\"{cluster}\"/>\n")
}

/// Three valid nodes, starting at line 3.
fn three_nodes() -> String {
    (1..=3)
        .map(|i| {
            node_line(
                &format!("node-{i}"),
                &format!("127.0.0.1:808{i}"),
                &format!("127.0.0.1:700{i}"),
            )
        })
        .collect()
}

/// A file with `element` placed before a valid `<nodes>` (so it sits on line 2).
fn with_element(element: &str) -> String {
    format!(
        "<cluster id=\"demo\">\n  {element}\n  <nodes>\n{}  </nodes>\n</cluster>\n",
        three_nodes()
    )
}

fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
    ClusterConfig::parse(text, Path::new(FILE))
}

fn error(text: &str) -> String {
    match parse(text) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(err) => {
            let message = err.to_string();
            assert!(!message.contains('\n'), "not one line: {message}");
            message
        }
    }
}

fn assert_error(text: &str, expected: &str) {
    assert_eq!(error(text), expected);
}

fn assert_error_contains(text: &str, starts: &str, contains: &str) {
    let message = error(text);
    assert!(
        message.starts_with(starts),
        "{message}\n  should start with {starts}"
    );
    assert!(
        message.contains(contains),
        "{message}\n  should contain {contains}"
    );
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

// ---- valid files ----

#[test]
fn full_file_parses_every_value() {
    let config =
        ClusterConfig::parse(FULL, Path::new("/etc/mt/cluster-config.xml")).expect("valid");
    assert_eq!(config.cluster_id, "demo");
    assert_eq!(
        config.gossip,
        GossipConfig {
            interval: Duration::from_millis(200),
            phi_threshold: 9.5,
            dead_after: Duration::from_millis(4000),
        }
    );
    assert_eq!(
        config.raft,
        RaftConfig {
            data_dir: PathBuf::from("/etc/mt/state"),
            voters: 5,
            heartbeat: Duration::from_millis(50),
            election_timeout: Duration::from_millis(300),
            remove_after: Duration::from_millis(5000),
            snapshot_every: 2000,
        }
    );
    assert_eq!(
        config.sessions,
        SessionsConfig {
            ttl: Duration::from_secs(60),
            cookie: "SID".to_owned(),
            max_bytes: 2048,
            max_active: 5000,
            create_rate_per_ip: 7,
            cookie_secure: true,
        }
    );
    assert_eq!(
        config.balancer,
        BalancerConfig {
            strategy: Strategy::RoundRobin,
            key: HashKey::Ip,
            retries: 0,
            connect_timeout: Duration::from_millis(250),
            response_timeout: Duration::from_millis(5000),
            transport: Transport::Http,
        }
    );
    assert_eq!(
        config.security,
        SecurityConfig {
            gossip_key_file: Some(PathBuf::from("/etc/mt/keys/gossip.key")),
            admin_token_file: Some(PathBuf::from("/etc/mt/token")),
            allow_open_peers: true,
        }
    );
    assert_eq!(
        config.app,
        AppConfig {
            docroot: Some(PathBuf::from("/etc/mt/www")),
            upstream: Some("http://127.0.0.1:9000".to_owned()),
        }
    );
    assert_eq!(
        config.nodes,
        vec![
            NodeSpec {
                name: "node-1".to_owned(),
                http: addr("127.0.0.1:8081"),
                cluster: addr("127.0.0.1:7001"),
            },
            NodeSpec {
                name: "node-2".to_owned(),
                http: addr("127.0.0.1:8082"),
                cluster: addr("127.0.0.1:7002"),
            },
        ]
    );
    assert_eq!(
        config.source,
        Some(PathBuf::from("/etc/mt/cluster-config.xml"))
    );
}

#[test]
fn minimal_file_gets_every_default() {
    let config = parse(&minimal(&three_nodes())).expect("valid");
    let expected = ClusterConfig {
        nodes: config.nodes.clone(),
        source: Some(PathBuf::from(FILE)),
        ..ClusterConfig::single("demo")
    };
    assert_eq!(config, expected);
    assert_eq!(config.gossip.interval, Duration::from_millis(150));
    assert_eq!(config.gossip.phi_threshold, 8.0);
    assert_eq!(config.gossip.dead_after, Duration::from_millis(5000));
    assert_eq!(config.raft.data_dir, PathBuf::from("data"));
    assert_eq!(config.raft.voters, 3);
    assert_eq!(config.raft.heartbeat, Duration::from_millis(100));
    assert_eq!(config.raft.election_timeout, Duration::from_millis(300));
    assert_eq!(config.sessions.ttl, Duration::from_secs(1800));
    assert_eq!(config.sessions.cookie, "MTSESSIONID");
    assert_eq!(config.sessions.max_bytes, 1_048_576);
    assert_eq!(config.balancer.strategy, Strategy::ConsistentHash);
    assert_eq!(config.balancer.key, HashKey::Session);
    assert_eq!(config.balancer.retries, 2);
    assert_eq!(config.security, SecurityConfig::default());
    assert_eq!(config.app, AppConfig::default());
    assert_eq!(config.nodes.len(), 3);
}

#[test]
fn empty_elements_mean_defaults() {
    let text = with_element("<gossip/><raft></raft><sessions/><balancer/><security/><app/>");
    let config = parse(&text).expect("valid");
    assert_eq!(config.gossip, GossipConfig::default());
    assert_eq!(config.raft, RaftConfig::default());
    assert_eq!(config.balancer, BalancerConfig::default());
}

#[test]
fn data_dir_default_is_next_to_the_file() {
    let config =
        ClusterConfig::parse(&minimal(&three_nodes()), Path::new("/srv/mt/c.xml")).expect("valid");
    assert_eq!(config.raft.data_dir, PathBuf::from("/srv/mt/data"));
    let text = with_element("<raft data-dir=\"/var/lib/mt\"/>");
    let config = ClusterConfig::parse(&text, Path::new("/srv/mt/c.xml")).expect("valid");
    assert_eq!(config.raft.data_dir, PathBuf::from("/var/lib/mt"));
}

#[test]
fn repo_example_is_valid() {
    let text = include_str!("../../cluster-config.xml");
    let config = parse(text).expect("the repo-root example must stay valid");
    assert_eq!(config.cluster_id, "demo");
    let names: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["node-1", "node-2", "node-3"]);
    assert_eq!(config.nodes[2].http, addr("127.0.0.1:8083"));
    assert_eq!(config.nodes[2].cluster, addr("127.0.0.1:7003"));
    assert_eq!(config.gossip, GossipConfig::default());
    assert_eq!(config.raft.voters, 3);
    assert_eq!(config.balancer, BalancerConfig::default());
}

#[test]
fn bom_comments_and_ipv6_are_fine() {
    let text = format!(
        "\u{feff}<?xml version=\"1.0\"?>\n<!-- a -->\n{}",
        minimal(&node_line("n6", "[::1]:8081", "[::1]:7001"))
    );
    let config = parse(&text).expect("valid");
    assert_eq!(config.nodes[0].http, addr("[::1]:8081"));
}

#[test]
fn escaped_attribute_values_are_unescaped() {
    let text = with_element("<app docroot=\"/srv/a&amp;b\"/>");
    let config = parse(&text).expect("valid");
    assert_eq!(config.app.docroot.as_deref(), Some(Path::new("/srv/a&b")));
}

#[test]
fn load_reads_a_file_and_reports_missing_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.xml");
    std::fs::write(&path, minimal(&three_nodes())).expect("write");
    let config = ClusterConfig::load(&path).expect("valid");
    assert_eq!(config.source, Some(path.clone()));
    assert_eq!(config.raft.data_dir, dir.path().join("data"));

    let missing = dir.path().join("missing.xml");
    let message = ClusterConfig::load(&missing)
        .expect_err("missing file")
        .to_string();
    assert!(
        message.starts_with(&format!("{}: cannot read: ", missing.display())),
        "{message}"
    );
}

#[test]
fn load_rejects_invalid_utf8_with_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("latin1.xml");
    let mut file = std::fs::File::create(&path).expect("create");
    file.write_all(b"<cluster id=\"demo\">\n<!-- caf\xe9 -->\n</cluster>")
        .expect("write");
    let message = ClusterConfig::load(&path)
        .expect_err("not utf-8")
        .to_string();
    assert_eq!(
        message,
        format!(
            "{}:2: malformed XML: the file is not valid UTF-8; save it as UTF-8",
            path.display()
        )
    );
}

#[test]
fn load_refuses_huge_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.xml");
    std::fs::write(&path, " ".repeat(2 << 20)).expect("write");
    let message = ClusterConfig::load(&path).expect_err("too big").to_string();
    assert!(message.contains("larger than"), "{message}");
}

// ---- document-level errors ----

#[test]
fn empty_file() {
    assert_error(
        "",
        "cluster-config.xml: the file is empty; expected a <cluster> element",
    );
}

#[test]
fn wrong_root_element() {
    assert_error_contains(
        "<config id=\"x\"/>",
        "cluster-config.xml:1: <config>: ",
        "the top-level element must be <cluster>",
    );
}

#[test]
fn malformed_xml_has_line() {
    assert_error_contains(
        "<cluster id=\"demo\">\n  <nodes>\n    <node name=\"a\" \n",
        "cluster-config.xml:3: malformed XML: ",
        "not closed",
    );
}

#[test]
fn cluster_id_rules() {
    assert_error(
        "<cluster>\n<nodes/></cluster>",
        "cluster-config.xml:1: <cluster>: missing attribute id; name the cluster, as in <cluster id=\"demo\">",
    );
    for bad in ["", "has space", "slash/", &"x".repeat(65)] {
        assert_error_contains(
            &format!("<cluster id=\"{bad}\"><nodes/></cluster>"),
            "cluster-config.xml:1: <cluster id=",
            "id must be 1 to 64 characters from A-Z a-z 0-9 . _ -",
        );
    }
    let ok = minimal(&three_nodes()).replace("demo", &"a.b_c-D9".repeat(8));
    assert!(parse(&ok).is_ok());
}

#[test]
fn unknown_attribute_lists_allowed_ones() {
    assert_error(
        &with_element("<gossip intervall-ms=\"150\"/>"),
        "cluster-config.xml:2: <gossip intervall-ms=\"150\">: unknown attribute intervall-ms; allowed: interval-ms, phi-threshold, dead-after-ms",
    );
    assert_error_contains(
        "<cluster id=\"demo\" name=\"x\"><nodes/></cluster>",
        "cluster-config.xml:1: <cluster name=\"x\">: ",
        "unknown attribute name; allowed: id",
    );
    assert_error_contains(
        &minimal(&three_nodes()).replace("<nodes>", "<nodes count=\"3\">"),
        "cluster-config.xml:2: <nodes count=\"3\">: ",
        "<nodes> takes no attributes",
    );
    assert_error_contains(
        &minimal(&node_line("n", "127.0.0.1:1", "127.0.0.1:2").replace("/>", " port=\"1\"/>")),
        "cluster-config.xml:3: <node name=\"n\" port=\"1\">: ",
        "unknown attribute port; allowed: name, http, cluster",
    );
}

#[test]
fn unknown_element_lists_allowed_ones() {
    assert_error(
        &with_element("<gosip interval-ms=\"150\"/>"),
        "cluster-config.xml:2: <gosip>: unknown element <gosip> inside <cluster>; allowed: <gossip>, <raft>, <sessions>, <balancer>, <security>, <app>, <metrics>, <alerts>, <backup>, <logging>, <http>, <nodes>",
    );
    assert_error_contains(
        &minimal("    <server name=\"x\"/>\n"),
        "cluster-config.xml:3: <server>: ",
        "unknown element <server> inside <nodes>; only <node> is allowed",
    );
    assert_error_contains(
        &with_element("<gossip><extra/></gossip>"),
        "cluster-config.xml:2: <extra>: ",
        "<gossip> takes no child elements",
    );
}

#[test]
fn duplicate_element() {
    assert_error(
        &with_element("<gossip/>\n  <raft/>\n  <gossip interval-ms=\"200\"/>"),
        "cluster-config.xml:4: <gossip>: duplicate <gossip> element (first at line 2); merge the two",
    );
}

#[test]
fn text_content_is_rejected() {
    assert_error_contains(
        &with_element("<gossip>150</gossip>"),
        "cluster-config.xml:2: <gossip>: unexpected text \"150\"",
        "settings go in attributes",
    );
}

#[test]
fn missing_nodes_and_empty_nodes() {
    assert_error_contains(
        "<cluster id=\"demo\">\n  <gossip/>\n</cluster>",
        "cluster-config.xml:1: <cluster id=\"demo\">: missing <nodes>",
        "list the founding nodes",
    );
    assert_error_contains(
        "<cluster id=\"demo\">\n  <nodes/>\n</cluster>",
        "cluster-config.xml:2: <nodes>: <nodes> lists no <node>",
        "add at least one",
    );
}

// ---- numbers and ranges ----

#[test]
fn gossip_ranges() {
    assert_error(
        &with_element("<gossip interval-ms=\"5\"/>"),
        "cluster-config.xml:2: <gossip interval-ms=\"5\">: interval-ms must be between 20 and 10000, got 5",
    );
    assert_error_contains(
        &with_element("<gossip interval-ms=\"10001\"/>"),
        "cluster-config.xml:2: ",
        "interval-ms must be between 20 and 10000, got 10001",
    );
    assert_error_contains(
        &with_element("<gossip dead-after-ms=\"99\"/>"),
        "cluster-config.xml:2: <gossip dead-after-ms=\"99\">: ",
        "dead-after-ms must be between 100 and 600000, got 99",
    );
    for bad in ["0.5", "51", "NaN", "inf", "-8", "abc", ""] {
        assert_error_contains(
            &with_element(&format!("<gossip phi-threshold=\"{bad}\"/>")),
            &format!("cluster-config.xml:2: <gossip phi-threshold=\"{bad}\">: "),
            &format!("phi-threshold must be a number between 1 and 50, got \"{bad}\""),
        );
    }
    for ok in ["1", "50", "12.25"] {
        assert!(parse(&with_element(&format!("<gossip phi-threshold=\"{ok}\"/>"))).is_ok());
    }
    assert!(
        parse(&with_element(
            "<gossip interval-ms=\"20\" dead-after-ms=\"100\"/>"
        ))
        .is_ok()
    );
    assert!(
        parse(&with_element(
            "<gossip interval-ms=\"10000\" dead-after-ms=\"600000\"/>"
        ))
        .is_ok()
    );
}

#[test]
fn non_numeric_values_name_attribute_and_value() {
    assert_error(
        &with_element("<gossip interval-ms=\"fast\"/>"),
        "cluster-config.xml:2: <gossip interval-ms=\"fast\">: interval-ms must be a whole number between 20 and 10000, got \"fast\"",
    );
    for bad in ["-1", "1.5", "1e3", "99999999999999999999999"] {
        assert_error_contains(
            &with_element(&format!("<raft voters=\"{bad}\"/>")),
            "cluster-config.xml:2: <raft voters=",
            "voters must be a whole number between 1 and 9",
        );
    }
}

#[test]
fn dead_after_must_cover_two_intervals() {
    assert_error(
        &with_element("<gossip interval-ms=\"150\" dead-after-ms=\"200\"/>"),
        "cluster-config.xml:2: <gossip dead-after-ms=\"200\">: dead-after-ms must be at least twice interval-ms (2 × 150 = 300), got 200",
    );
    assert_error(
        &with_element("<gossip interval-ms=\"3000\"/>"),
        "cluster-config.xml:2: <gossip interval-ms=\"3000\">: dead-after-ms must be at least twice interval-ms (2 × 3000 = 6000), got 5000 (the default)",
    );
    assert!(
        parse(&with_element(
            "<gossip interval-ms=\"150\" dead-after-ms=\"300\"/>"
        ))
        .is_ok()
    );
}

#[test]
fn raft_ranges() {
    assert_error_contains(
        &with_element("<raft snapshot-every=\"99\"/>"),
        "cluster-config.xml:2: <raft snapshot-every=\"99\">: ",
        "snapshot-every must be between 100 and 10000000, got 99",
    );
    assert_error_contains(
        &with_element("<raft voters=\"0\"/>"),
        "cluster-config.xml:2: <raft voters=\"0\">: ",
        "voters must be between 1 and 9, got 0",
    );
    assert_error_contains(
        &with_element("<raft voters=\"10\"/>"),
        "cluster-config.xml:2: ",
        "voters must be between 1 and 9, got 10",
    );
    assert_error_contains(
        &with_element("<raft heartbeat-ms=\"9\"/>"),
        "cluster-config.xml:2: <raft heartbeat-ms=\"9\">: ",
        "heartbeat-ms must be between 10 and 10000, got 9",
    );
    assert_error_contains(
        &with_element("<raft election-timeout-ms=\"60001\"/>"),
        "cluster-config.xml:2: ",
        "election-timeout-ms must be between 50 and 60000, got 60001",
    );
    assert_error_contains(
        &with_element("<raft data-dir=\"\"/>"),
        "cluster-config.xml:2: <raft data-dir=\"\">: ",
        "data-dir must not be empty",
    );
}

#[test]
fn election_timeout_must_cover_three_heartbeats() {
    assert_error(
        &with_element("<raft heartbeat-ms=\"100\" election-timeout-ms=\"250\"/>"),
        "cluster-config.xml:2: <raft election-timeout-ms=\"250\">: election-timeout-ms must be at least 3 × heartbeat-ms (3 × 100 = 300), got 250",
    );
    assert_error_contains(
        &with_element("<raft heartbeat-ms=\"300\"/>"),
        "cluster-config.xml:2: <raft heartbeat-ms=\"300\">: ",
        "got 300 (the default)",
    );
    assert!(
        parse(&with_element(
            "<raft heartbeat-ms=\"100\" election-timeout-ms=\"300\"/>"
        ))
        .is_ok()
    );
}

#[test]
fn sessions_rules() {
    assert_error_contains(
        &with_element("<sessions ttl-seconds=\"0\"/>"),
        "cluster-config.xml:2: ",
        "ttl-seconds must be between 1 and 31536000, got 0",
    );
    assert_error_contains(
        &with_element("<sessions ttl-seconds=\"31536001\"/>"),
        "cluster-config.xml:2: ",
        "ttl-seconds must be between 1 and 31536000",
    );
    assert_error_contains(
        &with_element("<sessions max-bytes=\"1023\"/>"),
        "cluster-config.xml:2: ",
        "max-bytes must be between 1024 and 67108864, got 1023",
    );
    assert_error_contains(
        &with_element("<sessions max-bytes=\"67108865\"/>"),
        "cluster-config.xml:2: ",
        "max-bytes must be between 1024 and 67108864",
    );
    for bad in ["", "a b", "a;b", "a,b", "a=b", "é", "a\tb"] {
        let text = with_element(&format!("<sessions cookie=\"{bad}\"/>"));
        assert_error_contains(
            &text,
            "cluster-config.xml:2: <sessions cookie=",
            "cookie must be a cookie name",
        );
    }
    let config = parse(&with_element("<sessions cookie=\"my_session-ID.1\"/>")).expect("valid");
    assert_eq!(config.sessions.cookie, "my_session-ID.1");
}

#[test]
fn balancer_rules() {
    assert_error(
        &with_element("<balancer strategy=\"random\"/>"),
        "cluster-config.xml:2: <balancer strategy=\"random\">: strategy must be one of round-robin, least-connections, consistent-hash, got \"random\"",
    );
    assert_error(
        &with_element("<balancer key=\"cookie\"/>"),
        "cluster-config.xml:2: <balancer key=\"cookie\">: key must be one of session, ip, got \"cookie\"",
    );
    assert_error_contains(
        &with_element("<balancer retries=\"11\"/>"),
        "cluster-config.xml:2: ",
        "retries must be between 0 and 10, got 11",
    );
    for strategy in Strategy::ALL {
        let text = with_element(&format!("<balancer strategy=\"{strategy}\"/>"));
        assert_eq!(parse(&text).expect("valid").balancer.strategy, strategy);
    }
    assert_eq!(Strategy::LeastConnections.as_str(), "least-connections");
    assert_eq!(HashKey::Ip.as_str(), "ip");
}

#[test]
fn security_and_app_rules() {
    assert_error_contains(
        &with_element("<security gossip-key-file=\"\"/>"),
        "cluster-config.xml:2: <security gossip-key-file=\"\">: ",
        "gossip-key-file must not be empty",
    );
    for bad in [
        "https://x",
        "ftp://x",
        "http://",
        "127.0.0.1:9000",
        "http://a b",
        "http://localhost:9000",
        "http://127.0.0.1:9000/app",
    ] {
        assert_error_contains(
            &with_element(&format!("<app upstream=\"{bad}\"/>")),
            "cluster-config.xml:2: <app upstream=",
            "expected http://IP:PORT",
        );
    }
    let config = parse(&with_element("<app upstream=\"http://127.0.0.1:9000/\"/>")).expect("valid");
    assert_eq!(
        config.app.upstream.as_deref(),
        Some("http://127.0.0.1:9000/")
    );
    let config = ClusterConfig::parse(
        &with_element("<app docroot=\"public\"/>"),
        Path::new("conf/c.xml"),
    )
    .expect("valid");
    assert_eq!(config.app.docroot, Some(PathBuf::from("conf/public")));
}

// ---- nodes ----

#[test]
fn duplicate_node_name_points_at_first() {
    let nodes = format!(
        "{}{}",
        node_line("node-2", "127.0.0.1:8081", "127.0.0.1:7001"),
        node_line("node-2", "127.0.0.1:8082", "127.0.0.1:7002"),
    );
    assert_error(
        &minimal(&nodes),
        "cluster-config.xml:4: <node name=\"node-2\">: duplicate node name \"node-2\" (first defined at line 3)",
    );
}

#[test]
fn duplicate_addresses_name_both_users() {
    let nodes = format!(
        "{}{}",
        node_line("node-1", "127.0.0.1:8081", "127.0.0.1:7001"),
        node_line("node-2", "127.0.0.1:7001", "127.0.0.1:7002"),
    );
    assert_error(
        &minimal(&nodes),
        "cluster-config.xml:4: <node name=\"node-2\" http=\"127.0.0.1:7001\">: address 127.0.0.1:7001 used twice (node-1 cluster, node-2 http)",
    );
    let nodes = format!(
        "{}{}",
        node_line("node-1", "127.0.0.1:8081", "127.0.0.1:7001"),
        node_line("node-2", "127.0.0.1:8082", "127.0.0.1:7001"),
    );
    assert_error_contains(
        &minimal(&nodes),
        "cluster-config.xml:4: <node name=\"node-2\" cluster=\"127.0.0.1:7001\">: ",
        "address 127.0.0.1:7001 used twice (node-1 cluster, node-2 cluster)",
    );
    let nodes = format!(
        "{}{}",
        node_line("node-1", "127.0.0.1:8081", "127.0.0.1:7001"),
        node_line("node-2", "127.0.0.1:8081", "127.0.0.1:7002"),
    );
    assert_error_contains(
        &minimal(&nodes),
        "cluster-config.xml:4: ",
        "(node-1 http, node-2 http)",
    );
    assert_error_contains(
        &minimal(&node_line("solo", "127.0.0.1:7000", "127.0.0.1:7000")),
        "cluster-config.xml:3: <node name=\"solo\" cluster=\"127.0.0.1:7000\">: ",
        "address 127.0.0.1:7000 used twice (solo http, solo cluster)",
    );
    // Same port on different IPs is two different addresses.
    let nodes = format!(
        "{}{}",
        node_line("a", "10.0.0.1:8080", "10.0.0.1:7000"),
        node_line("b", "10.0.0.2:8080", "10.0.0.2:7000"),
    );
    assert!(parse(&minimal(&nodes)).is_ok());
}

#[test]
fn node_attributes_are_required() {
    assert_error(
        &minimal("    <node http=\"127.0.0.1:8081\" cluster=\"127.0.0.1:7001\"/>\n"),
        "cluster-config.xml:3: <node>: missing attribute name",
    );
    assert_error(
        &minimal("    <node name=\"n\" cluster=\"127.0.0.1:7001\"/>\n"),
        "cluster-config.xml:3: <node name=\"n\">: missing attribute http",
    );
    assert_error(
        &minimal("    <node name=\"n\" http=\"127.0.0.1:8081\"/>\n"),
        "cluster-config.xml:3: <node name=\"n\">: missing attribute cluster",
    );
}

#[test]
fn node_name_rules() {
    for bad in ["", "node 1", "node/1", "nöde", &"n".repeat(65)] {
        assert_error_contains(
            &minimal(&node_line(bad, "127.0.0.1:8081", "127.0.0.1:7001")),
            "cluster-config.xml:3: <node name=",
            "name must be 1 to 64 characters",
        );
    }
}

#[test]
fn bad_addresses_explain_themselves() {
    let cases = [
        (
            "localhost:8081",
            "bad http address: host names are not resolved",
        ),
        (
            "127.0.0.1",
            "bad http address: expected IP:PORT such as 127.0.0.1:8081",
        ),
        (
            "0.0.0.0:8081",
            "bad http address: 0.0.0.0 is not reachable by peers",
        ),
        ("127.0.0.1:0", "bad http address: port 0 is not allowed"),
        (
            "127.0.0.1:70000",
            "bad http address: port must be between 1 and 65535, got 70000",
        ),
        ("::1:8081", "bad http address: IPv6 addresses need brackets"),
        (
            "300.0.0.1:80",
            "bad http address: host names are not resolved",
        ),
        ("", "bad http address: expected IP:PORT"),
        ("127.0.0.1:http", "bad http address: expected IP:PORT"),
    ];
    for (bad, expected) in cases {
        assert_error_contains(
            &minimal(&node_line("n", bad, "127.0.0.1:7001")),
            &format!("cluster-config.xml:3: <node name=\"n\" http=\"{bad}\">: "),
            expected,
        );
    }
    assert_error_contains(
        &minimal(&node_line("n", "127.0.0.1:8081", "127.0.0.1:0")),
        "cluster-config.xml:3: <node name=\"n\" cluster=\"127.0.0.1:0\">: ",
        "bad cluster address: port 0 is not allowed",
    );
}

#[test]
fn hostile_values_stay_on_one_line_and_short() {
    let text = with_element(&format!(
        "<gossip interval-ms=\"1&#10;2{}\"/>",
        "9".repeat(500)
    ));
    let message = error(&text);
    assert!(message.contains("\\n"), "{message}");
    assert!(message.len() < 400, "{message}");
}

// ---- describe ----

#[test]
fn describe_lists_nodes() {
    let config = parse(include_str!("../../cluster-config.xml")).expect("valid");
    assert_eq!(
        config.describe(),
        "cluster \"demo\": 3 nodes, gossip every 150 ms, phi 8, dead after 5000 ms, raft voters 3\n\
         \x20 node-1  http 127.0.0.1:8081  cluster 127.0.0.1:7001\n\
         \x20 node-2  http 127.0.0.1:8082  cluster 127.0.0.1:7002\n\
         \x20 node-3  http 127.0.0.1:8083  cluster 127.0.0.1:7003"
    );
}

#[test]
fn describe_aligns_names_and_counts_one_node() {
    let mut config = ClusterConfig::single("x");
    assert_eq!(
        config.describe(),
        "cluster \"x\": 0 nodes, gossip every 150 ms, phi 8, dead after 5000 ms, raft voters 3"
    );
    config.nodes.push(NodeSpec {
        name: "a".to_owned(),
        http: addr("127.0.0.1:1"),
        cluster: addr("127.0.0.1:2"),
    });
    assert!(config.describe().starts_with("cluster \"x\": 1 node, "));
    config.nodes.push(NodeSpec {
        name: "long-name".to_owned(),
        http: addr("127.0.0.1:3"),
        cluster: addr("127.0.0.1:4"),
    });
    config.gossip.phi_threshold = 8.5;
    let described = config.describe();
    let lines: Vec<&str> = described.lines().collect();
    assert!(lines[0].contains("phi 8.5"));
    assert_eq!(
        lines[1],
        "  a          http 127.0.0.1:1  cluster 127.0.0.1:2"
    );
    assert_eq!(
        lines[2],
        "  long-name  http 127.0.0.1:3  cluster 127.0.0.1:4"
    );
}

// ---- resolve ----

/// Writes the repo-like three-node file into a temp dir.
fn three_node_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cluster-config.xml");
    std::fs::write(&path, minimal(&three_nodes())).expect("write");
    (dir, path)
}

fn overrides(config: Option<&Path>, name: &str) -> RunOverrides {
    RunOverrides {
        config: config.map(Path::to_path_buf),
        name: name.to_owned(),
        ..RunOverrides::default()
    }
}

fn resolve_error(overrides: &RunOverrides) -> String {
    match NodeConfig::resolve(overrides) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(err) => {
            let message = err.to_string();
            assert!(!message.contains('\n'), "not one line: {message}");
            message
        }
    }
}

#[test]
fn resolve_founder_from_file() {
    let (dir, path) = three_node_file();
    let node = NodeConfig::resolve(&overrides(Some(&path), "node-2")).expect("valid");
    assert!(node.founder);
    assert_eq!(node.me.name, "node-2");
    assert_eq!(node.me.http, addr("127.0.0.1:8082"));
    assert_eq!(node.me.cluster, addr("127.0.0.1:7002"));
    assert_eq!(
        node.seeds,
        vec![addr("127.0.0.1:7001"), addr("127.0.0.1:7003")]
    );
    assert_eq!(node.data_dir, dir.path().join("data").join("node-2"));
    assert_eq!(node.cluster.nodes.len(), 3);
}

#[test]
fn resolve_founder_with_overrides() {
    let (_dir, path) = three_node_file();
    let mut flags = overrides(Some(&path), "node-1");
    flags.http = Some("127.0.0.1:9081".to_owned());
    flags.cluster = Some("127.0.0.1:9001".to_owned());
    flags.data_dir = Some(PathBuf::from("/tmp/n1"));
    flags.seeds = vec!["127.0.0.1:7002".to_owned(), "127.0.0.1:9001".to_owned()];
    let node = NodeConfig::resolve(&flags).expect("valid");
    assert!(node.founder);
    assert_eq!(node.me.http, addr("127.0.0.1:9081"));
    assert_eq!(node.me.cluster, addr("127.0.0.1:9001"));
    assert_eq!(node.cluster.nodes[0], node.me);
    assert_eq!(node.data_dir, PathBuf::from("/tmp/n1"));
    // --seed first, deduplicated, never our own address.
    assert_eq!(
        node.seeds,
        vec![addr("127.0.0.1:7002"), addr("127.0.0.1:7003")]
    );
}

#[test]
fn resolve_override_clash_is_reported() {
    let (_dir, path) = three_node_file();
    let mut flags = overrides(Some(&path), "node-1");
    flags.http = Some("127.0.0.1:7002".to_owned());
    let message = resolve_error(&flags);
    assert_eq!(
        message,
        format!(
            "{}: --name node-1 with these flags: address 127.0.0.1:7002 used twice (node-1 http, node-2 cluster)",
            path.display()
        )
    );
}

#[test]
fn resolve_joiner_with_file() {
    let (_dir, path) = three_node_file();
    let mut flags = overrides(Some(&path), "node-4");
    flags.http = Some("127.0.0.1:8084".to_owned());
    flags.cluster = Some("127.0.0.1:7004".to_owned());
    flags.seeds = vec!["127.0.0.1:7001".to_owned()];
    let node = NodeConfig::resolve(&flags).expect("valid");
    assert!(!node.founder);
    assert_eq!(node.cluster.nodes.len(), 3);
    assert_eq!(
        node.seeds,
        vec![
            addr("127.0.0.1:7001"),
            addr("127.0.0.1:7002"),
            addr("127.0.0.1:7003")
        ]
    );

    flags.cluster = Some("127.0.0.1:7003".to_owned());
    assert!(
        resolve_error(&flags)
            .contains("address 127.0.0.1:7003 used twice (node-3 cluster, node-4 cluster)")
    );
}

#[test]
fn resolve_unknown_node_needs_addresses() {
    let (_dir, path) = three_node_file();
    let mut flags = overrides(Some(&path), "node-9");
    assert_eq!(
        resolve_error(&flags),
        format!(
            "{}: node \"node-9\" is not in <nodes>; pass --http and --cluster to run a node that is not in the file",
            path.display()
        )
    );
    flags.http = Some("127.0.0.1:8089".to_owned());
    assert!(resolve_error(&flags).contains("is not in <nodes>"));
}

#[test]
fn resolve_without_file() {
    let mut flags = overrides(None, "solo");
    assert_eq!(
        resolve_error(&flags),
        "--http and --cluster are required when the node is not in a config file"
    );
    flags.http = Some("127.0.0.1:8080".to_owned());
    flags.cluster = Some("127.0.0.1:7000".to_owned());
    let node = NodeConfig::resolve(&flags).expect("valid");
    assert!(!node.founder);
    assert!(node.seeds.is_empty());
    assert_eq!(node.cluster.cluster_id, "micro-tomcat");
    assert!(node.cluster.nodes.is_empty());
    assert_eq!(node.data_dir, PathBuf::from("data").join("solo"));

    flags.cluster = Some("127.0.0.1:8080".to_owned());
    assert_eq!(
        resolve_error(&flags),
        "--http and --cluster: address 127.0.0.1:8080 used twice (solo http, solo cluster)"
    );
}

#[test]
fn resolve_flag_errors() {
    let mut flags = overrides(None, "solo");
    flags.http = Some("127.0.0.1:8080".to_owned());
    flags.cluster = Some("127.0.0.1:7000".to_owned());

    flags.seeds = vec!["x".to_owned()];
    assert_eq!(
        resolve_error(&flags),
        "--seed \"x\": expected IP:PORT such as 127.0.0.1:7001"
    );
    flags.seeds = vec!["127.0.0.1:0".to_owned()];
    assert!(resolve_error(&flags).starts_with("--seed \"127.0.0.1:0\": port 0 is not allowed"));
    flags.seeds.clear();

    flags.http = Some("localhost:8080".to_owned());
    assert!(
        resolve_error(&flags).starts_with("--http \"localhost:8080\": host names are not resolved")
    );
    flags.http = Some("127.0.0.1:8080".to_owned());
    flags.cluster = Some("127.0.0.1:0".to_owned());
    assert!(resolve_error(&flags).starts_with("--cluster \"127.0.0.1:0\": port 0 is not allowed"));
    flags.cluster = Some("127.0.0.1:7000".to_owned());

    flags.name = "bad name".to_owned();
    assert!(resolve_error(&flags).starts_with("--name must be 1 to 64 characters"));
    flags.name = String::new();
    assert!(resolve_error(&flags).starts_with("--name must be 1 to 64 characters"));
    flags.name = "a\nb".to_owned();
    assert!(resolve_error(&flags).contains("\"a\\nb\""));
}

#[test]
fn resolve_reports_file_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broken.xml");
    std::fs::write(&path, "<cluster id=\"demo\">\n  <nodes>\n").expect("write");
    let message = resolve_error(&overrides(Some(&path), "node-1"));
    assert!(
        message.starts_with(&format!("{}:3: malformed XML:", path.display())),
        "{message}"
    );
    let message = resolve_error(&overrides(Some(&dir.path().join("nope.xml")), "node-1"));
    assert!(message.contains("nope.xml: cannot read"), "{message}");
}

// ---- robustness ----

/// splitmix64: a tiny deterministic generator, so failures reproduce without a crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Fragments that steer mutations towards the parser's interesting paths.
const TOKENS: &[&str] = &[
    "<",
    ">",
    "/>",
    "</",
    "\"",
    "'",
    "=",
    "&",
    "&amp;",
    "&#0;",
    "&#x110000;",
    "&bogus;",
    "<!--",
    "-->",
    "<![CDATA[",
    "]]>",
    "<?xml version=\"1.0\"?>",
    "<!DOCTYPE x>",
    "\n",
    "\r\n",
    "\u{feff}",
    "é",
    "\u{0}",
    "<nodes>",
    "</nodes>",
    "<node name=\"n\" http=\"1.2.3.4:5\" cluster=\"[::1]:6\"/>",
    "<gossip interval-ms=\"",
    "99999999999999999999",
    "-1",
    "NaN",
    "1e308",
    "<cluster id=\"x\">",
    "</cluster>",
    "<raft/>",
    "<gossip/>",
    " x=\"1\"",
    ":0",
    "[::1]",
    "\u{1F600}",
];

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for _ in 0..=rng.below(6) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(6) {
            0 => {
                if at < bytes.len() {
                    bytes[at] = rng.next() as u8;
                }
            }
            1 => {
                let end = (at + rng.below(40)).min(bytes.len());
                bytes.drain(at..end);
            }
            2 => {
                let token = TOKENS[rng.below(TOKENS.len())].as_bytes();
                bytes.splice(at..at, token.iter().copied());
            }
            3 => bytes.truncate(at),
            4 => {
                let end = (at + rng.below(200)).min(bytes.len());
                let chunk = bytes[at..end].to_vec();
                let to = rng.below(bytes.len() + 1);
                bytes.splice(to..to, chunk);
            }
            _ => {
                let end = (at + rng.below(8)).min(bytes.len());
                bytes[at..end].reverse();
            }
        }
    }
    bytes
}

fn random_bytes(rng: &mut Rng) -> Vec<u8> {
    let len = rng.below(300);
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        if rng.below(3) == 0 {
            bytes.extend_from_slice(TOKENS[rng.below(TOKENS.len())].as_bytes());
        } else {
            bytes.push(rng.next() as u8);
        }
    }
    bytes
}

#[test]
fn fuzz_parse_never_panics_and_errors_are_one_line() {
    let bases = [
        FULL.as_bytes().to_vec(),
        include_str!("../../cluster-config.xml").as_bytes().to_vec(),
        minimal(&three_nodes()).into_bytes(),
    ];
    let mut rng = Rng(0x5EED_C0FF_EE00_0001);
    let mut accepted = 0;
    for round in 0..2400 {
        let bytes = if round % 4 == 3 {
            random_bytes(&mut rng)
        } else {
            mutate(&mut rng, &bases[round % bases.len()])
        };
        let path = Path::new("fuzz.xml");
        // Exercise both entry points: raw bytes (as `load` sees them) and lossy text.
        let results = [
            ClusterConfig::parse_bytes(&bytes, path),
            ClusterConfig::parse(&String::from_utf8_lossy(&bytes), path),
        ];
        for result in results {
            match result {
                Ok(config) => {
                    accepted += 1;
                    assert!(!config.nodes.is_empty());
                    let _ = config.describe();
                }
                Err(err) => {
                    let message = err.to_string();
                    assert!(message.starts_with("fuzz.xml"), "round {round}: {message}");
                    assert!(
                        !message.contains(['\n', '\r']),
                        "round {round}: not one line: {message:?}"
                    );
                }
            }
        }
    }
    // Some mutations (e.g. in comments) keep the file valid; that path is exercised too.
    assert!(accepted > 0);
}

#[test]
fn metrics_are_on_by_default_and_can_be_turned_off() {
    let config = parse(&minimal(&three_nodes())).expect("valid");
    assert!(config.metrics.enabled);
    assert_eq!(config.alerts, None);
    let config = parse(&with_element("<metrics enabled=\"false\"/>")).expect("valid");
    assert!(!config.metrics.enabled);
    assert_error_contains(
        &with_element("<metrics enabled=\"no\"/>"),
        "cluster-config.xml:2: <metrics enabled=\"no\">",
        "enabled must be one of true, false",
    );
    assert_error_contains(
        &with_element("<metrics path=\"/m\"/>"),
        "cluster-config.xml:2: <metrics path=",
        "unknown attribute path; allowed: enabled",
    );
}

#[test]
fn alerts_parse_into_rules_and_webhooks() {
    let text = with_element(
        "<alerts interval-ms=\"500\" receiver=\"ops\">\
           <rule name=\"member-down\" kind=\"member-down\"/>\
           <rule kind=\"no-leader\" for-ms=\"5000\"/>\
           <rule name=\"errors\" kind=\"error-rate\" threshold=\"0.05\" window-ms=\"60000\"/>\
           <rule kind=\"p99-latency\" threshold-ms=\"500\"/>\
           <rule kind=\"memory\" threshold-bytes=\"1073741824\" for-ms=\"10000\"/>\
           <webhook url=\"http://127.0.0.1:9099/hook\"/>\
           <webhook url=\"http://hooks.internal:8080/alerts\"/>\
         </alerts>",
    );
    let alerts = parse(&text).expect("valid").alerts.expect("alerts");
    assert_eq!(alerts.interval, Duration::from_millis(500));
    assert_eq!(alerts.receiver, "ops");
    assert_eq!(
        alerts.webhooks,
        [
            "http://127.0.0.1:9099/hook",
            "http://hooks.internal:8080/alerts"
        ]
    );
    let rules: Vec<(&str, &AlertCondition, u128)> = alerts
        .rules
        .iter()
        .map(|rule| {
            (
                rule.name.as_str(),
                &rule.condition,
                rule.for_duration.as_millis(),
            )
        })
        .collect();
    assert_eq!(
        rules,
        [
            ("member-down", &AlertCondition::MemberDown, 0),
            ("no-leader", &AlertCondition::NoLeader, 5000),
            (
                "errors",
                &AlertCondition::ErrorRate {
                    ratio: 0.05,
                    window: Duration::from_secs(60)
                },
                0
            ),
            (
                "p99-latency",
                &AlertCondition::P99Latency {
                    threshold: Duration::from_millis(500),
                    window: Duration::from_secs(300)
                },
                0
            ),
            ("memory", &AlertCondition::Memory { bytes: 1 << 30 }, 10_000),
        ]
    );
    let empty = parse(&with_element("<alerts/>")).expect("valid");
    let empty = empty.alerts.expect("alerts");
    assert_eq!(empty.interval, Duration::from_millis(1000));
    assert_eq!(empty.receiver, "micro-tomcat");
    assert!(empty.rules.is_empty() && empty.webhooks.is_empty());
}

#[test]
fn alert_mistakes_are_one_line_errors() {
    for (element, starts, contains) in [
        (
            "<alerts interval-ms=\"5\"/>",
            "cluster-config.xml:2: <alerts interval-ms=\"5\">",
            "interval-ms must be between 100 and 60000",
        ),
        (
            "<alerts><rule/></alerts>",
            "cluster-config.xml:2: <rule>",
            "missing attribute kind; one of member-down, no-leader, error-rate, p99-latency, memory",
        ),
        (
            "<alerts><rule kind=\"cpu\"/></alerts>",
            "cluster-config.xml:2: <rule kind=\"cpu\">",
            "kind must be one of member-down, no-leader",
        ),
        (
            "<alerts><rule kind=\"error-rate\"/></alerts>",
            "cluster-config.xml:2: <rule kind=\"error-rate\">",
            "missing attribute threshold; kind=\"error-rate\" needs it",
        ),
        (
            "<alerts><rule kind=\"error-rate\" threshold=\"5\"/></alerts>",
            "cluster-config.xml:2: <rule threshold=\"5\">",
            "threshold must be a number between 0.0001 and 1",
        ),
        (
            "<alerts><rule kind=\"member-down\" threshold=\"5\"/></alerts>",
            "cluster-config.xml:2: <rule threshold=\"5\">",
            "unknown attribute threshold for kind=\"member-down\"; allowed: name, kind, for-ms",
        ),
        (
            "<alerts><rule kind=\"memory\" threshold-bytes=\"12\"/></alerts>",
            "cluster-config.xml:2: <rule threshold-bytes=\"12\">",
            "threshold-bytes must be between 1048576 and",
        ),
        (
            "<alerts><rule kind=\"p99-latency\" threshold-ms=\"fast\"/></alerts>",
            "cluster-config.xml:2: <rule threshold-ms=\"fast\">",
            "threshold-ms must be a whole number",
        ),
        (
            "<alerts><rule kind=\"no-leader\" for-ms=\"-1\"/></alerts>",
            "cluster-config.xml:2: <rule for-ms=\"-1\">",
            "for-ms must be a whole number between 0 and 86400000",
        ),
        (
            "<alerts><rule kind=\"no-leader\"/><rule kind=\"no-leader\"/></alerts>",
            "cluster-config.xml:2: <rule>",
            "duplicate rule name \"no-leader\" (first at line 2)",
        ),
        (
            "<alerts><rule name=\"a b\" kind=\"no-leader\"/></alerts>",
            "cluster-config.xml:2: <rule name=\"a b\">",
            "name must be 1 to 64 characters",
        ),
        (
            "<alerts><webhook/></alerts>",
            "cluster-config.xml:2: <webhook>",
            "missing attribute url",
        ),
        (
            "<alerts><webhook url=\"https://example.com/hook\"/></alerts>",
            "cluster-config.xml:2: <webhook url=",
            "https is not supported",
        ),
        (
            "<alerts><webhook url=\"127.0.0.1:9099\"/></alerts>",
            "cluster-config.xml:2: <webhook url=",
            "expected an http:// URL",
        ),
        (
            "<alerts><email to=\"ops@example.com\"/></alerts>",
            "cluster-config.xml:2: <email>",
            "unknown element <email> inside <alerts>; allowed: <rule>, <webhook>",
        ),
        (
            "<metrics enabled=\"false\"/><alerts><rule kind=\"p99-latency\" threshold-ms=\"500\"/></alerts>",
            "cluster-config.xml:2: <rule kind=\"p99-latency\">",
            "turns off; enable metrics or remove this rule",
        ),
    ] {
        assert_error_contains(&with_element(element), starts, contains);
    }
    // Rules that need no request metrics are fine with metrics off.
    let text = with_element(
        "<metrics enabled=\"false\"/><alerts><rule kind=\"member-down\"/><rule kind=\"memory\" threshold-bytes=\"1048576\"/></alerts>",
    );
    assert_eq!(
        parse(&text)
            .expect("valid")
            .alerts
            .expect("alerts")
            .rules
            .len(),
        2
    );
}

#[test]
fn proxy_timeouts_have_defaults_ranges_and_an_order() {
    let config = parse(&minimal(&three_nodes())).expect("valid");
    assert_eq!(config.balancer.connect_timeout, Duration::from_millis(1000));
    assert_eq!(config.balancer.response_timeout, Duration::from_secs(30));
    let config = parse(&with_element(
        "<balancer connect-timeout-ms=\"10\" response-timeout-ms=\"3600000\"/>",
    ))
    .expect("valid");
    assert_eq!(config.balancer.connect_timeout, Duration::from_millis(10));
    assert_eq!(config.balancer.response_timeout, Duration::from_secs(3600));
    // Equal is fine: the whole exchange may take as long as connecting may.
    parse(&with_element(
        "<balancer connect-timeout-ms=\"500\" response-timeout-ms=\"500\"/>",
    ))
    .expect("valid");
    assert_error(
        &with_element("<balancer connect-timeout-ms=\"9\"/>"),
        "cluster-config.xml:2: <balancer connect-timeout-ms=\"9\">: connect-timeout-ms must be between 10 and 60000, got 9",
    );
    assert_error(
        &with_element("<balancer response-timeout-ms=\"99\"/>"),
        "cluster-config.xml:2: <balancer response-timeout-ms=\"99\">: response-timeout-ms must be between 100 and 3600000, got 99",
    );
    assert_error(
        &with_element("<balancer response-timeout-ms=\"1s\"/>"),
        "cluster-config.xml:2: <balancer response-timeout-ms=\"1s\">: response-timeout-ms must be a whole number between 100 and 3600000, got \"1s\"",
    );
    assert_error(
        &with_element("<balancer connect-timeout-ms=\"2000\" response-timeout-ms=\"1000\"/>"),
        "cluster-config.xml:2: <balancer response-timeout-ms=\"1000\">: response-timeout-ms must be at least connect-timeout-ms (2000), got 1000",
    );
    assert_error(
        &with_element("<balancer connect-timeout-ms=\"45000\"/>"),
        "cluster-config.xml:2: <balancer connect-timeout-ms=\"45000\">: response-timeout-ms must be at least connect-timeout-ms (45000), got 30000 (the default)",
    );
    assert_error_contains(
        &with_element("<balancer timeout-ms=\"5\"/>"),
        "cluster-config.xml:2: <balancer timeout-ms=\"5\">: ",
        "allowed: strategy, key, retries, connect-timeout-ms, response-timeout-ms",
    );
}

#[test]
fn backup_parses_with_defaults_next_to_the_file() {
    let config = parse(&minimal(&three_nodes())).expect("valid");
    assert_eq!(config.backup, None);
    let config = ClusterConfig::parse(&with_element("<backup/>"), Path::new("/etc/mt/cluster.xml"))
        .expect("valid");
    assert_eq!(
        config.backup,
        Some(BackupConfig {
            dir: PathBuf::from("/etc/mt/backups"),
            interval: Duration::from_secs(3600),
            keep: 24,
        })
    );
    let config = ClusterConfig::parse(
        &with_element("<backup dir=\"/var/backups/mt\" interval-seconds=\"10\" keep=\"1\"/>"),
        Path::new("/etc/mt/cluster.xml"),
    )
    .expect("valid");
    assert_eq!(
        config.backup,
        Some(BackupConfig {
            dir: PathBuf::from("/var/backups/mt"),
            interval: Duration::from_secs(10),
            keep: 1,
        })
    );
}

#[test]
fn backup_mistakes_are_one_line_errors() {
    for (element, expected) in [
        (
            "<backup interval-seconds=\"9\"/>",
            "cluster-config.xml:2: <backup interval-seconds=\"9\">: interval-seconds must be between 10 and 604800, got 9",
        ),
        (
            "<backup keep=\"0\"/>",
            "cluster-config.xml:2: <backup keep=\"0\">: keep must be between 1 and 10000, got 0",
        ),
        (
            "<backup keep=\"all\"/>",
            "cluster-config.xml:2: <backup keep=\"all\">: keep must be a whole number between 1 and 10000, got \"all\"",
        ),
        (
            "<backup dir=\" \"/>",
            "cluster-config.xml:2: <backup dir=\" \">: dir must not be empty; leave the attribute out instead",
        ),
        (
            "<backup folder=\"b\"/>",
            "cluster-config.xml:2: <backup folder=\"b\">: unknown attribute folder; allowed: dir, interval-seconds, keep",
        ),
    ] {
        assert_error(&with_element(element), expected);
    }
    assert_error_contains(
        &with_element("<backup/><backup/>"),
        "cluster-config.xml:2: <backup>: ",
        "duplicate <backup> element",
    );
}

#[test]
fn http_bounds_default_parse_and_reject_out_of_range() {
    let defaults = parse(&minimal(&three_nodes())).expect("valid").http;
    assert_eq!(defaults, HttpConfig::default());
    assert_eq!(defaults.max_connections, 10_000);
    assert_eq!(defaults.header_timeout, Duration::from_millis(10_000));
    assert_eq!(defaults.idle_timeout, Duration::from_millis(60_000));
    assert_eq!(
        parse(&with_element("<http/>")).expect("valid").http,
        HttpConfig::default()
    );

    let text = with_element(
        r#"<http max-connections="50" header-timeout-ms="500" idle-timeout-ms="2000"/>"#,
    );
    let http = parse(&text).expect("valid").http;
    assert_eq!(http.max_connections, 50);
    assert_eq!(http.header_timeout, Duration::from_millis(500));
    assert_eq!(http.idle_timeout, Duration::from_millis(2000));

    assert_error(
        &with_element(r#"<http max-conections="5"/>"#),
        "cluster-config.xml:2: <http max-conections=\"5\">: unknown attribute max-conections; \
         allowed: max-connections, header-timeout-ms, idle-timeout-ms",
    );
    assert_error(
        &with_element(r#"<http max-connections="0"/>"#),
        "cluster-config.xml:2: <http max-connections=\"0\">: max-connections must be between 1 and 1000000, got 0",
    );
    assert_error(
        &with_element(r#"<http header-timeout-ms="10"/>"#),
        "cluster-config.xml:2: <http header-timeout-ms=\"10\">: header-timeout-ms must be between 100 and 600000, got 10",
    );
    assert_error(
        &with_element(r#"<http idle-timeout-ms="soon"/>"#),
        "cluster-config.xml:2: <http idle-timeout-ms=\"soon\">: idle-timeout-ms must be a whole number between 100 and 3600000, got \"soon\"",
    );
    assert_error_contains(
        &with_element("<http><tls/></http>"),
        "cluster-config.xml:2: <tls>: ",
        "<http> takes no child elements",
    );
}
