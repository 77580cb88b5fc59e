//! `cluster-config.xml` and the `run` flags, parsed and validated into what a node needs.
//!
//! The file is read into a raw element tree (`xml`), then checked into typed structs
//! (`validate`); `NodeConfig::resolve` merges the command line into the result.
//! Every error is one line naming the file, the line and the element at fault.

pub mod secrets;
mod validate;
mod xml;

use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use validate::{
    AddressBook, EXAMPLE_CLUSTER, EXAMPLE_HTTP, Role, check_identifier, parse_socket_addr,
};

/// Default gossip round interval in milliseconds.
pub const DEFAULT_GOSSIP_INTERVAL_MS: u64 = 150;
/// Allowed gossip interval in milliseconds.
pub const GOSSIP_INTERVAL_MS_RANGE: RangeInclusive<u64> = 20..=10_000;
/// Default phi-accrual threshold above which a peer is suspected.
pub const DEFAULT_PHI_THRESHOLD: f64 = 8.0;
/// Allowed phi-accrual threshold.
pub const PHI_THRESHOLD_RANGE: RangeInclusive<f64> = 1.0..=50.0;
/// Default time in milliseconds after which a silent peer is dropped as dead.
pub const DEFAULT_DEAD_AFTER_MS: u64 = 5_000;
/// Allowed dead-after time in milliseconds.
pub const DEAD_AFTER_MS_RANGE: RangeInclusive<u64> = 100..=600_000;
/// Default Raft data directory, relative to the config file (or the current directory).
pub const DEFAULT_DATA_DIR: &str = "data";
/// Default number of Raft voters.
pub const DEFAULT_VOTERS: usize = 3;
/// Allowed number of Raft voters.
pub const VOTERS_RANGE: RangeInclusive<u64> = 1..=9;
/// Default Raft leader heartbeat in milliseconds.
pub const DEFAULT_HEARTBEAT_MS: u64 = 100;
/// Allowed Raft heartbeat in milliseconds.
pub const HEARTBEAT_MS_RANGE: RangeInclusive<u64> = 10..=10_000;
/// Default Raft election timeout in milliseconds.
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 300;
/// Allowed Raft election timeout in milliseconds.
pub const ELECTION_TIMEOUT_MS_RANGE: RangeInclusive<u64> = 50..=60_000;
/// Default time a Raft member must be gone before the leader removes it, in milliseconds.
pub const DEFAULT_REMOVE_AFTER_MS: u64 = 30_000;
/// Allowed removal grace period in milliseconds.
pub const REMOVE_AFTER_MS_RANGE: RangeInclusive<u64> = 1_000..=86_400_000;
/// Default number of session writes between two Raft snapshots (etcd's `snapshot-count` default).
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 100_000;
/// Allowed number of session writes between two Raft snapshots.
pub const SNAPSHOT_EVERY_RANGE: RangeInclusive<u64> = 100..=10_000_000;
/// Default session lifetime in seconds.
pub const DEFAULT_SESSION_TTL_SECONDS: u64 = 1_800;
/// Allowed session lifetime in seconds (up to a year).
pub const SESSION_TTL_SECONDS_RANGE: RangeInclusive<u64> = 1..=31_536_000;
/// Default session cookie name.
pub const DEFAULT_COOKIE: &str = "MTSESSIONID";
/// Default largest session record in bytes.
pub const DEFAULT_SESSION_MAX_BYTES: usize = 1_048_576;
/// Allowed largest session record in bytes.
pub const SESSION_MAX_BYTES_RANGE: RangeInclusive<u64> = 1_024..=67_108_864;
/// Default cluster-wide session limit (`<sessions max-active>`): far above a demo, reached by a flood
/// in minutes, and about 1 GiB of memory per node at 1 KiB a session.
pub const DEFAULT_MAX_ACTIVE_SESSIONS: u64 = 1_000_000;
/// Allowed cluster-wide session limit.
pub const MAX_ACTIVE_SESSIONS_RANGE: RangeInclusive<u64> = 1..=1_000_000_000;
/// Default sessions an application may create per second for one client address, on each node
/// (`<sessions create-rate-per-ip>`; the burst is the same number).
pub const DEFAULT_CREATE_RATE_PER_IP: u64 = 100;
/// Allowed per-address creation rate; 0 turns the limit off.
pub const CREATE_RATE_PER_IP_RANGE: RangeInclusive<u64> = 0..=1_000_000;
/// Default number of other nodes tried after a failed proxy attempt.
pub const DEFAULT_RETRIES: u32 = 2;
/// Allowed number of balancer retries.
pub const RETRIES_RANGE: RangeInclusive<u64> = 0..=10;
/// Default time to open a connection to a member when proxying, in milliseconds.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Allowed proxy connect timeout in milliseconds.
pub const CONNECT_TIMEOUT_MS_RANGE: RangeInclusive<u64> = 10..=60_000;
/// Default time a member may take to start its response when proxying, in milliseconds.
pub const DEFAULT_RESPONSE_TIMEOUT_MS: u64 = 30_000;
/// Allowed proxy response timeout in milliseconds (up to an hour).
pub const RESPONSE_TIMEOUT_MS_RANGE: RangeInclusive<u64> = 100..=3_600_000;
/// Default folder of periodic backups, relative to the config file.
pub const DEFAULT_BACKUP_DIR: &str = "backups";
/// Default time between two periodic backups, in seconds.
pub const DEFAULT_BACKUP_INTERVAL_SECONDS: u64 = 3_600;
/// Allowed time between two periodic backups, in seconds (10 s to a week).
pub const BACKUP_INTERVAL_SECONDS_RANGE: RangeInclusive<u64> = 10..=604_800;
/// Default number of periodic backups kept.
pub const DEFAULT_BACKUP_KEEP: usize = 24;
/// Allowed number of periodic backups kept.
pub const BACKUP_KEEP_RANGE: RangeInclusive<u64> = 1..=10_000;
/// Default most HTTP connections open at once on `--http`.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: u64 = 10_000;
/// Allowed `<http max-connections>`.
pub const HTTP_MAX_CONNECTIONS_RANGE: RangeInclusive<u64> = 1..=1_000_000;
/// Default time a client has to send a whole request head, in milliseconds.
pub const DEFAULT_HTTP_HEADER_TIMEOUT_MS: u64 = 10_000;
/// Allowed `<http header-timeout-ms>`.
pub const HTTP_HEADER_TIMEOUT_MS_RANGE: RangeInclusive<u64> = 100..=600_000;
/// Default time a keep-alive connection may wait for its next request, in milliseconds.
pub const DEFAULT_HTTP_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Allowed `<http idle-timeout-ms>`.
pub const HTTP_IDLE_TIMEOUT_MS_RANGE: RangeInclusive<u64> = 100..=3_600_000;
/// Longest cluster id or node name.
pub const MAX_NAME_LEN: usize = 64;
/// Cluster id used when no config file is given.
pub const DEFAULT_CLUSTER_ID: &str = "micro-tomcat";
/// Config files larger than this are refused rather than read (`/dev/zero` would never end).
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Default time between two evaluations of the alert rules, in milliseconds.
pub const DEFAULT_ALERT_INTERVAL_MS: u64 = 1_000;
/// Allowed alert evaluation interval in milliseconds.
pub const ALERT_INTERVAL_MS_RANGE: RangeInclusive<u64> = 100..=60_000;
/// Allowed time a condition must hold before its alert fires, in milliseconds.
pub const ALERT_FOR_MS_RANGE: RangeInclusive<u64> = 0..=86_400_000;
/// Default window of the error-rate and latency rules, in milliseconds (five minutes).
pub const DEFAULT_ALERT_WINDOW_MS: u64 = 300_000;
/// Allowed window of the error-rate and latency rules, in milliseconds.
pub const ALERT_WINDOW_MS_RANGE: RangeInclusive<u64> = 1_000..=86_400_000;
/// Allowed error ratio threshold (a fraction of requests).
pub const ALERT_RATIO_RANGE: RangeInclusive<f64> = 0.0001..=1.0;
/// Allowed p99 latency threshold in milliseconds.
pub const ALERT_LATENCY_MS_RANGE: RangeInclusive<u64> = 1..=600_000;
/// Allowed resident memory threshold in bytes (1 MiB to 1 PiB).
pub const ALERT_MEMORY_BYTES_RANGE: RangeInclusive<u64> = 1_048_576..=1 << 50;
/// Default `receiver` named in alert notifications.
pub const DEFAULT_ALERT_RECEIVER: &str = "micro-tomcat";

/// A configuration problem, displayed as one line a person can act on.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file as named by the user.
        file: String,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The file holds nothing but whitespace.
    #[error("{file}: the file is empty; expected a <cluster> element")]
    Empty {
        /// The file as named by the user.
        file: String,
    },
    /// The file is not well-formed XML.
    #[error("{file}:{line}: malformed XML: {message}")]
    Malformed {
        /// The file as named by the user.
        file: String,
        /// 1-based line of the problem.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// An element or attribute breaks a rule of the format.
    #[error("{file}:{line}: {element}: {message}")]
    Invalid {
        /// The file as named by the user.
        file: String,
        /// 1-based line of the element.
        line: usize,
        /// The element as written, e.g. `<gossip interval-ms="5">`.
        element: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// The file as a whole is wrong, with no line to point at.
    #[error("{file}: {message}")]
    File {
        /// The file as named by the user.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// `--name` is not a node of the file and its addresses were not given.
    #[error(
        "{file}: node \"{name}\" is not in <nodes>; pass --http and --cluster to run a node that is not in the file"
    )]
    NodeNotInFile {
        /// The file as named by the user.
        file: String,
        /// The `--name` value.
        name: String,
    },
    /// A command-line flag is wrong or missing.
    #[error("{message}")]
    Flag {
        /// What is wrong, naming the flag.
        message: String,
    },
    /// The cluster key or the admin token cannot be loaded (`<security>` or the environment).
    #[error(transparent)]
    Secret(#[from] secrets::SecretError),
}

/// The validated contents of `cluster-config.xml`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// Name shared by every node of the cluster.
    pub cluster_id: String,
    /// Membership gossip and failure detection.
    pub gossip: GossipConfig,
    /// Replicated session log.
    pub raft: RaftConfig,
    /// HTTP sessions.
    pub sessions: SessionsConfig,
    /// Request routing.
    pub balancer: BalancerConfig,
    /// Where the secrets are kept.
    pub security: SecurityConfig,
    /// What the nodes serve.
    pub app: AppConfig,
    /// Prometheus metrics (`<metrics>`).
    pub metrics: MetricsConfig,
    /// Bounds of the `--http` port (`<http>`).
    pub http: HttpConfig,
    /// `<logging>`.
    pub logging: LoggingConfig,
    /// Alert rules and receivers (`<alerts>`); `None` evaluates nothing.
    pub alerts: Option<AlertsConfig>,
    /// Periodic backups (`<backup>`); `None` writes none.
    pub backup: Option<BackupConfig>,
    /// The founding nodes, in file order.
    pub nodes: Vec<NodeSpec>,
    /// The file this came from, if any.
    pub source: Option<PathBuf>,
}

/// Gossip settings (`<gossip>`).
#[derive(Debug, Clone, PartialEq)]
pub struct GossipConfig {
    /// Time between gossip rounds; also the failure detector's initial interval.
    pub interval: Duration,
    /// Phi-accrual threshold above which a peer is suspected.
    pub phi_threshold: f64,
    /// Time after which a suspected peer is dropped as dead.
    pub dead_after: Duration,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(DEFAULT_GOSSIP_INTERVAL_MS),
            phi_threshold: DEFAULT_PHI_THRESHOLD,
            dead_after: Duration::from_millis(DEFAULT_DEAD_AFTER_MS),
        }
    }
}

/// Raft settings (`<raft>`).
#[derive(Debug, Clone, PartialEq)]
pub struct RaftConfig {
    /// Parent of every node's data directory, already resolved against the file's directory.
    pub data_dir: PathBuf,
    /// How many nodes vote.
    pub voters: usize,
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Follower election timeout.
    pub election_timeout: Duration,
    /// How long a member must be gone from gossip before the leader removes it from Raft.
    pub remove_after: Duration,
    /// Session writes applied between two snapshots (each compacts the log).
    pub snapshot_every: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            voters: DEFAULT_VOTERS,
            heartbeat: Duration::from_millis(DEFAULT_HEARTBEAT_MS),
            election_timeout: Duration::from_millis(DEFAULT_ELECTION_TIMEOUT_MS),
            remove_after: Duration::from_millis(DEFAULT_REMOVE_AFTER_MS),
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
        }
    }
}

/// Whether `value` can be a node's name (1 to 64 of A-Z a-z 0-9 . _ -): a peer or gossip entry naming
/// anything else is not a member of ours, and its name is never logged as it is.
pub fn is_node_name(value: &str) -> bool {
    validate::check_identifier(value).is_ok()
}

/// Session settings (`<sessions>`).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionsConfig {
    /// Idle time after which a session expires.
    pub ttl: Duration,
    /// Name of the session cookie.
    pub cookie: String,
    /// Largest session record accepted.
    pub max_bytes: usize,
    /// Most sessions the cluster holds; a create beyond it is refused (enforced by the state machine
    /// with the leader's value).
    pub max_active: u64,
    /// Sessions an application may create per second for one client address on one node (0: no
    /// limit).
    pub create_rate_per_ip: u64,
    /// Whether the session cookie carries `Secure` (send it over HTTPS only).
    pub cookie_secure: bool,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(DEFAULT_SESSION_TTL_SECONDS),
            cookie: DEFAULT_COOKIE.to_owned(),
            max_bytes: DEFAULT_SESSION_MAX_BYTES,
            max_active: DEFAULT_MAX_ACTIVE_SESSIONS,
            create_rate_per_ip: DEFAULT_CREATE_RATE_PER_IP,
            cookie_secure: false,
        }
    }
}

/// How requests are spread over live nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Each node in turn.
    RoundRobin,
    /// The node with the fewest requests in flight.
    LeastConnections,
    /// The owner of the request's key on the hash ring (sticky).
    #[default]
    ConsistentHash,
}

impl Strategy {
    /// Every strategy, in the order messages list them.
    pub const ALL: [Strategy; 3] = [
        Strategy::RoundRobin,
        Strategy::LeastConnections,
        Strategy::ConsistentHash,
    ];

    /// The spelling used in the file, e.g. `"round-robin"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round-robin",
            Strategy::LeastConnections => "least-connections",
            Strategy::ConsistentHash => "consistent-hash",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What consistent hashing hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashKey {
    /// The session id, falling back to the client IP without one.
    #[default]
    Session,
    /// The client IP.
    Ip,
}

impl HashKey {
    /// Every key, in the order messages list them.
    pub const ALL: [HashKey; 2] = [HashKey::Session, HashKey::Ip];

    /// The spelling used in the file, e.g. `"session"`.
    pub fn as_str(self) -> &'static str {
        match self {
            HashKey::Session => "session",
            HashKey::Ip => "ip",
        }
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How proxied requests travel to the member that serves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Requests held in memory over the member's hop channel (its peer port, many requests per
    /// connection); streaming bodies over HTTP.
    #[default]
    Hop,
    /// Everything over pooled HTTP/1.1 connections to the member's HTTP port.
    Http,
}

impl Transport {
    /// Every transport, in the order messages list them.
    pub const ALL: [Transport; 2] = [Transport::Hop, Transport::Http];

    /// The spelling used in the file, e.g. `"hop"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Hop => "hop",
            Transport::Http => "http",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Balancer settings (`<balancer>`).
#[derive(Debug, Clone, PartialEq)]
pub struct BalancerConfig {
    /// How the target node is chosen.
    pub strategy: Strategy,
    /// What consistent hashing hashes.
    pub key: HashKey,
    /// Other nodes tried after a failed proxy attempt.
    pub retries: u32,
    /// How long opening a connection to a member may take.
    pub connect_timeout: Duration,
    /// How long a member may take to send response headers, counted from the start of the exchange.
    pub response_timeout: Duration,
    /// How proxied requests travel (fixed at start: a reload does not change it).
    pub transport: Transport,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::default(),
            key: HashKey::default(),
            retries: DEFAULT_RETRIES,
            connect_timeout: Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS),
            response_timeout: Duration::from_millis(DEFAULT_RESPONSE_TIMEOUT_MS),
            transport: Transport::default(),
        }
    }
}

/// Where secrets live (`<security>`); the files are not read here.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SecurityConfig {
    /// File holding the gossip key, resolved against the file's directory.
    pub gossip_key_file: Option<PathBuf>,
    /// File holding the admin token, resolved against the file's directory.
    pub admin_token_file: Option<PathBuf>,
    /// Start with an admin token but no cluster key (the peer port then takes writes from anyone,
    /// so the token guards little): refused unless this is set.
    pub allow_open_peers: bool,
}

/// What the nodes serve (`<app>`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AppConfig {
    /// Directory of static files, resolved against the file's directory.
    pub docroot: Option<PathBuf>,
    /// `http://` base URL requests are forwarded to.
    pub upstream: Option<String>,
}

/// Log settings (`<logging>`); `RUST_LOG` wins at start, a reload applies the file's level.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoggingConfig {
    /// A `RUST_LOG`-style filter, e.g. `info,chitchat=warn`.
    pub level: Option<String>,
}

/// Metrics settings (`<metrics>`).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// Measure every request and serve `/metrics`; off, neither happens (404 on `/metrics`).
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// Bounds of the `--http` port (`<http>`); all of them apply to the next connection after a reload.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// Connections open at once; one more is accepted and closed at once.
    pub max_connections: usize,
    /// Time from accepting a connection, or from the first byte of a later request, to the end of
    /// the request head.
    pub header_timeout: Duration,
    /// Time a keep-alive connection may wait, with no request in progress, for the next one.
    pub idle_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_HTTP_MAX_CONNECTIONS as usize,
            header_timeout: Duration::from_millis(DEFAULT_HTTP_HEADER_TIMEOUT_MS),
            idle_timeout: Duration::from_millis(DEFAULT_HTTP_IDLE_TIMEOUT_MS),
        }
    }
}

/// In-node alerting (`<alerts>`).
#[derive(Debug, Clone, PartialEq)]
pub struct AlertsConfig {
    /// Time between two evaluations of the rules.
    pub interval: Duration,
    /// The `receiver` named in notifications.
    pub receiver: String,
    /// The rules, in file order.
    pub rules: Vec<AlertRule>,
    /// `http://` URLs every notification is POSTed to.
    pub webhooks: Vec<String>,
}

/// Periodic backups (`<backup>`): the Raft leader writes one every `interval` into `dir`.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupConfig {
    /// Where the backup files go, resolved against the file's directory.
    pub dir: PathBuf,
    /// Time between two backups.
    pub interval: Duration,
    /// How many backup files of this cluster are kept in `dir`; older ones are deleted.
    pub keep: usize,
}

/// One alert rule (`<rule>`).
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    /// The alert's name (`alertname` label); unique within `<alerts>`.
    pub name: String,
    /// What is watched.
    pub condition: AlertCondition,
    /// How long the condition must hold before the alert fires.
    pub for_duration: Duration,
}

/// What an alert rule watches.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertCondition {
    /// A member is down (one alert per member, label `member`).
    MemberDown,
    /// This node knows no Raft leader.
    NoLeader,
    /// More than `ratio` of the requests answered in `window` were 5xx.
    ErrorRate {
        /// The largest acceptable fraction of 5xx answers.
        ratio: f64,
        /// The window the fraction is taken over.
        window: Duration,
    },
    /// The 99th percentile of request latency over `window` is above `threshold`.
    P99Latency {
        /// The largest acceptable p99.
        threshold: Duration,
        /// The window the percentile is taken over.
        window: Duration,
    },
    /// The process's resident memory is above `bytes`.
    Memory {
        /// The largest acceptable resident set.
        bytes: u64,
    },
}

impl AlertCondition {
    /// Every `kind` spelling, in the order messages list them.
    pub const KINDS: [&str; 5] = [
        "member-down",
        "no-leader",
        "error-rate",
        "p99-latency",
        "memory",
    ];

    /// The `kind` as spelled in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            AlertCondition::MemberDown => "member-down",
            AlertCondition::NoLeader => "no-leader",
            AlertCondition::ErrorRate { .. } => "error-rate",
            AlertCondition::P99Latency { .. } => "p99-latency",
            AlertCondition::Memory { .. } => "memory",
        }
    }
}

/// One node: its name and its two listening addresses.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    /// Unique node name.
    pub name: String,
    /// HTTP listener (TCP).
    pub http: SocketAddr,
    /// Gossip (UDP) and peer RPC (TCP) listener.
    pub cluster: SocketAddr,
}

impl ClusterConfig {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let file = display_name(path);
        let read_error = |source| ConfigError::Read {
            file: file.clone(),
            source,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
            .map_err(read_error)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(ConfigError::File {
                file,
                message: format!(
                    "the file is larger than {} KiB; is this the right file?",
                    MAX_FILE_BYTES / 1024
                ),
            });
        }
        Self::parse_bytes(&bytes, path)
    }

    /// Parses and validates `text`; `source` names it in messages and anchors relative paths.
    pub fn parse(text: &str, source: &Path) -> Result<ClusterConfig, ConfigError> {
        let file = display_name(source);
        // A UTF-8 byte order mark is legal XML but not part of the document.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let root = xml::parse_document(text, &file)?;
        let base_dir = source.parent().unwrap_or(Path::new(""));
        let ctx = validate::Ctx {
            file: &file,
            base_dir,
        };
        let mut config = validate::cluster(&root, &ctx)?;
        config.source = Some(source.to_path_buf());
        Ok(config)
    }

    /// Like `parse`, for bytes straight from disk: rejects invalid UTF-8 with its line.
    fn parse_bytes(bytes: &[u8], source: &Path) -> Result<ClusterConfig, ConfigError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Self::parse(text, source),
            Err(err) => {
                let valid = &bytes[..err.valid_up_to()];
                let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
                Err(ConfigError::Malformed {
                    file: display_name(source),
                    line,
                    message: "the file is not valid UTF-8; save it as UTF-8".to_owned(),
                })
            }
        }
    }

    /// Defaults and no nodes: the configuration of a cluster of one started without a file.
    pub fn single(cluster_id: &str) -> ClusterConfig {
        ClusterConfig {
            cluster_id: cluster_id.to_owned(),
            gossip: GossipConfig::default(),
            raft: RaftConfig::default(),
            sessions: SessionsConfig::default(),
            balancer: BalancerConfig::default(),
            security: SecurityConfig::default(),
            app: AppConfig::default(),
            metrics: MetricsConfig::default(),
            http: HttpConfig::default(),
            logging: LoggingConfig::default(),
            alerts: None,
            backup: None,
            nodes: Vec::new(),
            source: None,
        }
    }

    /// Loads the secrets named in `<security>` as `run` would (`env` reads a variable, which wins over
    /// the file), for `check-config`; a problem names this file and the secret's origin on one line.
    pub fn check_secrets(
        &self,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<secrets::Secrets, ConfigError> {
        secrets::load_secrets(&self.security, env).map_err(|err| ConfigError::File {
            file: self.source_name(),
            message: one_line(&err.to_string()),
        })
    }

    /// The listing `check-config` prints: a summary line, then one line per node.
    pub fn describe(&self) -> String {
        let count = self.nodes.len();
        let mut out = format!(
            "cluster \"{}\": {count} {}, gossip every {} ms, phi {}, dead after {} ms, raft voters {}",
            self.cluster_id,
            if count == 1 { "node" } else { "nodes" },
            self.gossip.interval.as_millis(),
            self.gossip.phi_threshold,
            self.gossip.dead_after.as_millis(),
            self.raft.voters,
        );
        let width = self.nodes.iter().map(|n| n.name.len()).max().unwrap_or(0);
        for node in &self.nodes {
            out.push_str(&format!(
                "\n  {:width$}  http {}  cluster {}",
                node.name, node.http, node.cluster
            ));
        }
        out
    }

    /// The file name for messages, or a stand-in when there is no file.
    fn source_name(&self) -> String {
        match &self.source {
            Some(path) => display_name(path),
            None => "(no config file)".to_owned(),
        }
    }
}

/// What the command line says for `micro-tomcat run`.
#[derive(Debug, Clone, Default)]
pub struct RunOverrides {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--name NAME`.
    pub name: String,
    /// `--http IP:PORT`.
    pub http: Option<String>,
    /// `--cluster IP:PORT`.
    pub cluster: Option<String>,
    /// Every `--seed IP:PORT`.
    pub seeds: Vec<String>,
    /// `--data-dir DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--docroot DIR`: static files to serve (overrides `<app docroot>`).
    pub docroot: Option<PathBuf>,
    /// `--upstream http://IP:PORT`: the local application to forward to (overrides `<app upstream>`).
    pub upstream: Option<String>,
}

/// Everything one node needs to run.
///
/// A node that is not a founder and has no seeds is a cluster of one and starts it itself.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// The cluster settings; when `--http/--cluster` override a founder, its entry in
    /// `cluster.nodes` carries the overridden addresses.
    pub cluster: ClusterConfig,
    /// This node's name and addresses.
    pub me: NodeSpec,
    /// True when this node is listed in `<nodes>`.
    pub founder: bool,
    /// `--seed` values, then every founder's cluster address; deduplicated, never our own.
    pub seeds: Vec<SocketAddr>,
    /// `--data-dir`, else `<raft data-dir>/<name>`.
    pub data_dir: PathBuf,
    /// The cluster key and admin token, from the environment or the `<security>` files.
    pub secrets: secrets::Secrets,
}

impl NodeConfig {
    /// Merges the `run` flags with the config file (or the single-node defaults).
    pub fn resolve(overrides: &RunOverrides) -> Result<NodeConfig, ConfigError> {
        let name = overrides.name.as_str();
        if let Err(problem) = check_identifier(name) {
            return Err(flag(format!("--name {problem}")));
        }
        let http = flag_addr("--http", overrides.http.as_deref(), EXAMPLE_HTTP)?;
        let cluster_addr = flag_addr("--cluster", overrides.cluster.as_deref(), EXAMPLE_CLUSTER)?;

        let mut cluster = match &overrides.config {
            Some(path) => ClusterConfig::load(path)?,
            None => ClusterConfig::single(DEFAULT_CLUSTER_ID),
        };
        let file = cluster.source_name();
        let listed = cluster.nodes.iter().position(|n| n.name == name);

        let me = match listed {
            Some(index) => {
                let from_file = &cluster.nodes[index];
                let me = NodeSpec {
                    name: name.to_owned(),
                    http: http.unwrap_or(from_file.http),
                    cluster: cluster_addr.unwrap_or(from_file.cluster),
                };
                cluster.nodes[index] = me.clone();
                me
            }
            None => match (http, cluster_addr) {
                (Some(http), Some(cluster_addr)) => NodeSpec {
                    name: name.to_owned(),
                    http,
                    cluster: cluster_addr,
                },
                _ if overrides.config.is_some() => {
                    return Err(ConfigError::NodeNotInFile {
                        file,
                        name: name.to_owned(),
                    });
                }
                _ => {
                    return Err(flag(
                        "--http and --cluster are required when the node is not in a config file"
                            .to_owned(),
                    ));
                }
            },
        };

        // Flags can reintroduce a clash the file was checked for, so check the final set.
        let mut addresses = AddressBook::default();
        let mut everyone: Vec<&NodeSpec> = cluster.nodes.iter().collect();
        if listed.is_none() {
            everyone.push(&me);
        }
        for spec in everyone {
            for role in [Role::Http, Role::Cluster] {
                if let Err(problem) = addresses.add(spec, role) {
                    let message = if overrides.config.is_some() {
                        format!("{file}: --name {name} with these flags: {problem}")
                    } else {
                        format!("--http and --cluster: {problem}")
                    };
                    return Err(flag(message));
                }
            }
        }

        let mut seeds: Vec<SocketAddr> = Vec::new();
        for raw in &overrides.seeds {
            let addr = parse_socket_addr(raw, EXAMPLE_CLUSTER)
                .map_err(|problem| flag(format!("--seed {}: {problem}", quote(raw))))?;
            push_seed(&mut seeds, addr, me.cluster);
        }
        for founder in &cluster.nodes {
            if founder.name != me.name {
                push_seed(&mut seeds, founder.cluster, me.cluster);
            }
        }

        let data_dir = match &overrides.data_dir {
            Some(dir) => dir.clone(),
            None => cluster.raft.data_dir.join(name),
        };
        if let Some(docroot) = &overrides.docroot {
            cluster.app.docroot = Some(docroot.clone());
        }
        if let Some(raw) = &overrides.upstream {
            parse_upstream(raw)
                .map_err(|problem| flag(format!("--upstream {}: {problem}", quote(raw))))?;
            cluster.app.upstream = Some(raw.clone());
        }
        let secrets = secrets::load_secrets(&cluster.security, |name| std::env::var_os(name))?;
        Ok(NodeConfig {
            cluster,
            me,
            founder: listed.is_some(),
            seeds,
            data_dir,
            secrets,
        })
    }
}

/// The `IP:PORT` of an upstream URL `http://IP:PORT[/]`: the node connects to it directly, without DNS.
pub fn parse_upstream(raw: &str) -> Result<SocketAddr, String> {
    let expected = "expected http://IP:PORT such as http://127.0.0.1:9000".to_owned();
    let authority = raw
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .ok_or_else(|| expected.clone())?;
    if authority.contains('/') {
        return Err(format!("{expected} (no path)"));
    }
    parse_socket_addr(authority, "127.0.0.1:9000")
        .map_err(|problem| format!("{expected}: {problem}"))
}

fn push_seed(seeds: &mut Vec<SocketAddr>, addr: SocketAddr, own: SocketAddr) {
    if addr != own && !seeds.contains(&addr) {
        seeds.push(addr);
    }
}

fn flag(message: String) -> ConfigError {
    ConfigError::Flag {
        message: one_line(&message),
    }
}

/// Parses an optional address flag, naming the flag in the error.
fn flag_addr(
    flag_name: &str,
    raw: Option<&str>,
    example: &str,
) -> Result<Option<SocketAddr>, ConfigError> {
    match raw {
        None => Ok(None),
        Some(raw) => parse_socket_addr(raw, example)
            .map(Some)
            .map_err(|problem| flag(format!("{flag_name} {}: {problem}", quote(raw)))),
    }
}

/// The path as the user wrote it, safe to print on one line.
fn display_name(path: &Path) -> String {
    one_line(&path.display().to_string())
}

/// Escapes control characters (newlines above all) so a message stays on one line.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A value from the file, quoted and escaped for a message, cut short if long.
fn quote(value: &str) -> String {
    const MAX_SHOWN: usize = 60;
    match value.char_indices().nth(MAX_SHOWN) {
        Some((cut, _)) => format!("{:?}...", &value[..cut]),
        None => format!("{value:?}"),
    }
}

#[cfg(test)]
mod tests;
