//! Turns the raw element tree into a typed `ClusterConfig`, checking every rule.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::xml::RawElement;
use super::*;

/// Where the file came from: its name for messages and its directory for relative paths.
pub(super) struct Ctx<'a> {
    pub file: &'a str,
    pub base_dir: &'a Path,
}

/// The top-level children `<cluster>` accepts, in the order they are listed in messages.
const CLUSTER_CHILDREN: [&str; 12] = [
    "gossip", "raft", "sessions", "balancer", "security", "app", "metrics", "alerts", "backup",
    "logging", "http", "nodes",
];

impl Ctx<'_> {
    /// An error about `element`, showing `attr` (and a node's name) in the label.
    fn invalid(&self, element: &RawElement, attr: Option<&str>, message: String) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            line: element.line,
            element: label(element, attr),
            message: one_line(&message),
        }
    }

    fn only_attrs(&self, element: &RawElement, allowed: &[&str]) -> Result<(), ConfigError> {
        for (key, _) in &element.attrs {
            if !allowed.contains(&key.as_str()) {
                let hint = if allowed.is_empty() {
                    format!("<{}> takes no attributes", element.name)
                } else {
                    format!("allowed: {}", allowed.join(", "))
                };
                return Err(self.invalid(
                    element,
                    Some(key),
                    format!("unknown attribute {key}; {hint}"),
                ));
            }
        }
        Ok(())
    }

    fn no_children(&self, element: &RawElement) -> Result<(), ConfigError> {
        match element.children.first() {
            None => Ok(()),
            Some(child) => Err(self.invalid(
                child,
                None,
                format!(
                    "unexpected element <{}> inside <{}>; <{}> takes no child elements",
                    child.name, element.name, element.name
                ),
            )),
        }
    }

    fn required<'e>(&self, element: &'e RawElement, name: &str) -> Result<&'e str, ConfigError> {
        element
            .attr(name)
            .ok_or_else(|| self.invalid(element, None, format!("missing attribute {name}")))
    }

    /// A whole number attribute within `range`, or `default` when absent.
    fn whole(
        &self,
        element: &RawElement,
        name: &str,
        default: u64,
        range: RangeInclusive<u64>,
    ) -> Result<u64, ConfigError> {
        let Some(raw) = element.attr(name) else {
            return Ok(default);
        };
        match raw.trim().parse::<u64>() {
            Ok(value) if range.contains(&value) => Ok(value),
            Ok(value) => Err(self.invalid(
                element,
                Some(name),
                format!(
                    "{name} must be between {} and {}, got {value}",
                    range.start(),
                    range.end()
                ),
            )),
            Err(_) => Err(self.invalid(
                element,
                Some(name),
                format!(
                    "{name} must be a whole number between {} and {}, got {}",
                    range.start(),
                    range.end(),
                    quote(raw)
                ),
            )),
        }
    }

    /// A finite decimal attribute within `range`, or `default` when absent.
    fn decimal(
        &self,
        element: &RawElement,
        name: &str,
        default: f64,
        range: RangeInclusive<f64>,
    ) -> Result<f64, ConfigError> {
        let Some(raw) = element.attr(name) else {
            return Ok(default);
        };
        match raw.trim().parse::<f64>() {
            // `parse` accepts "NaN" and "inf"; the range check turns both away.
            Ok(value) if value.is_finite() && range.contains(&value) => Ok(value),
            _ => Err(self.invalid(
                element,
                Some(name),
                format!(
                    "{name} must be a number between {} and {}, got {}",
                    range.start(),
                    range.end(),
                    quote(raw)
                ),
            )),
        }
    }

    /// An optional path attribute; relative paths are taken from the file's directory.
    fn path(&self, element: &RawElement, name: &str) -> Result<Option<PathBuf>, ConfigError> {
        match element.attr(name) {
            None => Ok(None),
            Some(raw) if raw.trim().is_empty() => Err(self.invalid(
                element,
                Some(name),
                format!("{name} must not be empty; leave the attribute out instead"),
            )),
            Some(raw) => Ok(Some(self.base_dir.join(raw))),
        }
    }

    /// One of `choices` (pairs of spelling and value), or `default` when absent.
    fn choice<T: Copy>(
        &self,
        element: &RawElement,
        name: &str,
        default: T,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let Some(raw) = element.attr(name) else {
            return Ok(default);
        };
        match choices.iter().find(|(spelling, _)| *spelling == raw) {
            Some(&(_, value)) => Ok(value),
            None => {
                let names: Vec<&str> = choices.iter().map(|(spelling, _)| *spelling).collect();
                Err(self.invalid(
                    element,
                    Some(name),
                    format!(
                        "{name} must be one of {}, got {}",
                        names.join(", "),
                        quote(raw)
                    ),
                ))
            }
        }
    }
}

/// `<node name="node-1" http="...">`: the element, a node's name, and the attribute at fault.
fn label(element: &RawElement, attr: Option<&str>) -> String {
    let mut shown: Vec<&str> = Vec::new();
    if element.name == "node" && element.attr("name").is_some() {
        shown.push("name");
    }
    if let Some(attr) = attr
        && !shown.contains(&attr)
        && element.attr(attr).is_some()
    {
        shown.push(attr);
    }
    let mut out = format!("<{}", one_line(&element.name));
    for key in shown {
        let value = element.attr(key).unwrap_or_default();
        out.push_str(&format!(" {}={}", one_line(key), quote(value)));
    }
    out.push('>');
    out
}

/// Validates the whole document.
pub(super) fn cluster(root: &RawElement, ctx: &Ctx<'_>) -> Result<ClusterConfig, ConfigError> {
    if root.name != "cluster" {
        return Err(ctx.invalid(
            root,
            None,
            format!(
                "the top-level element must be <cluster>, found <{}>",
                root.name
            ),
        ));
    }
    ctx.only_attrs(root, &["id"])?;
    let id = match root.attr("id") {
        Some(id) => id,
        None => {
            return Err(ctx.invalid(
                root,
                None,
                "missing attribute id; name the cluster, as in <cluster id=\"demo\">".to_owned(),
            ));
        }
    };
    if let Err(problem) = check_identifier(id) {
        return Err(ctx.invalid(root, Some("id"), format!("id {problem}")));
    }

    let mut found: HashMap<&str, &RawElement> = HashMap::new();
    for child in &root.children {
        if !CLUSTER_CHILDREN.contains(&child.name.as_str()) {
            let allowed: Vec<String> = CLUSTER_CHILDREN.iter().map(|n| format!("<{n}>")).collect();
            return Err(ctx.invalid(
                child,
                None,
                format!(
                    "unknown element <{}> inside <cluster>; allowed: {}",
                    child.name,
                    allowed.join(", ")
                ),
            ));
        }
        if let Some(first) = found.insert(child.name.as_str(), child) {
            return Err(ctx.invalid(
                child,
                None,
                format!(
                    "duplicate <{}> element (first at line {}); merge the two",
                    child.name, first.line
                ),
            ));
        }
    }

    let gossip = match found.get("gossip") {
        Some(element) => gossip(element, ctx)?,
        None => GossipConfig::default(),
    };
    let raft = match found.get("raft") {
        Some(element) => raft(element, ctx)?,
        None => RaftConfig {
            data_dir: ctx.base_dir.join(DEFAULT_DATA_DIR),
            ..RaftConfig::default()
        },
    };
    let sessions = match found.get("sessions") {
        Some(element) => sessions(element, ctx)?,
        None => SessionsConfig::default(),
    };
    let balancer = match found.get("balancer") {
        Some(element) => balancer(element, ctx)?,
        None => BalancerConfig::default(),
    };
    let security = match found.get("security") {
        Some(element) => security(element, ctx)?,
        None => SecurityConfig::default(),
    };
    let app = match found.get("app") {
        Some(element) => app(element, ctx)?,
        None => AppConfig::default(),
    };
    let metrics = match found.get("metrics") {
        Some(element) => metrics(element, ctx)?,
        None => MetricsConfig::default(),
    };
    let alerts = match found.get("alerts") {
        Some(element) => Some(alerts(element, ctx, &metrics)?),
        None => None,
    };
    let backup = match found.get("backup") {
        Some(element) => Some(backup(element, ctx)?),
        None => None,
    };
    let logging = match found.get("logging") {
        Some(element) => logging(element, ctx)?,
        None => LoggingConfig::default(),
    };
    let http = match found.get("http") {
        Some(element) => http(element, ctx)?,
        None => HttpConfig::default(),
    };
    let nodes = match found.get("nodes") {
        Some(element) => nodes(element, ctx)?,
        None => {
            return Err(ctx.invalid(
                root,
                Some("id"),
                "missing <nodes>; list the founding nodes as \
                 <nodes><node name=\"node-1\" http=\"IP:PORT\" cluster=\"IP:PORT\"/></nodes>"
                    .to_owned(),
            ));
        }
    };

    Ok(ClusterConfig {
        cluster_id: id.to_owned(),
        gossip,
        raft,
        sessions,
        balancer,
        security,
        app,
        metrics,
        http,
        alerts,
        backup,
        logging,
        nodes,
        source: None,
    })
}

fn gossip(element: &RawElement, ctx: &Ctx<'_>) -> Result<GossipConfig, ConfigError> {
    ctx.only_attrs(element, &["interval-ms", "phi-threshold", "dead-after-ms"])?;
    ctx.no_children(element)?;
    let interval = ctx.whole(
        element,
        "interval-ms",
        DEFAULT_GOSSIP_INTERVAL_MS,
        GOSSIP_INTERVAL_MS_RANGE,
    )?;
    let phi_threshold = ctx.decimal(
        element,
        "phi-threshold",
        DEFAULT_PHI_THRESHOLD,
        PHI_THRESHOLD_RANGE,
    )?;
    let dead_after = ctx.whole(
        element,
        "dead-after-ms",
        DEFAULT_DEAD_AFTER_MS,
        DEAD_AFTER_MS_RANGE,
    )?;
    // A node must be allowed to miss at least one heartbeat before it is declared dead.
    if dead_after < 2 * interval {
        let (attr, shown) = if element.attr("dead-after-ms").is_some() {
            ("dead-after-ms", dead_after.to_string())
        } else {
            ("interval-ms", format!("{dead_after} (the default)"))
        };
        return Err(ctx.invalid(
            element,
            Some(attr),
            format!(
                "dead-after-ms must be at least twice interval-ms (2 × {interval} = {}), got {shown}",
                2 * interval
            ),
        ));
    }
    Ok(GossipConfig {
        interval: Duration::from_millis(interval),
        phi_threshold,
        dead_after: Duration::from_millis(dead_after),
    })
}

fn raft(element: &RawElement, ctx: &Ctx<'_>) -> Result<RaftConfig, ConfigError> {
    ctx.only_attrs(
        element,
        &[
            "data-dir",
            "voters",
            "heartbeat-ms",
            "election-timeout-ms",
            "remove-after-ms",
            "snapshot-every",
        ],
    )?;
    ctx.no_children(element)?;
    let data_dir = ctx
        .path(element, "data-dir")?
        .unwrap_or_else(|| ctx.base_dir.join(DEFAULT_DATA_DIR));
    let voters = ctx.whole(element, "voters", DEFAULT_VOTERS as u64, VOTERS_RANGE)?;
    let heartbeat = ctx.whole(
        element,
        "heartbeat-ms",
        DEFAULT_HEARTBEAT_MS,
        HEARTBEAT_MS_RANGE,
    )?;
    let election_timeout = ctx.whole(
        element,
        "election-timeout-ms",
        DEFAULT_ELECTION_TIMEOUT_MS,
        ELECTION_TIMEOUT_MS_RANGE,
    )?;
    // Followers must be able to miss a couple of heartbeats without starting an election.
    if election_timeout < 3 * heartbeat {
        let (attr, shown) = if element.attr("election-timeout-ms").is_some() {
            ("election-timeout-ms", election_timeout.to_string())
        } else {
            ("heartbeat-ms", format!("{election_timeout} (the default)"))
        };
        return Err(ctx.invalid(
            element,
            Some(attr),
            format!(
                "election-timeout-ms must be at least 3 × heartbeat-ms (3 × {heartbeat} = {}), got {shown}",
                3 * heartbeat
            ),
        ));
    }
    let remove_after = ctx.whole(
        element,
        "remove-after-ms",
        DEFAULT_REMOVE_AFTER_MS,
        REMOVE_AFTER_MS_RANGE,
    )?;
    let snapshot_every = ctx.whole(
        element,
        "snapshot-every",
        DEFAULT_SNAPSHOT_EVERY,
        SNAPSHOT_EVERY_RANGE,
    )?;
    Ok(RaftConfig {
        data_dir,
        snapshot_every,
        remove_after: Duration::from_millis(remove_after),
        // The range check above keeps this far below any platform's usize limit.
        voters: usize::try_from(voters).unwrap_or(DEFAULT_VOTERS),
        heartbeat: Duration::from_millis(heartbeat),
        election_timeout: Duration::from_millis(election_timeout),
    })
}

fn sessions(element: &RawElement, ctx: &Ctx<'_>) -> Result<SessionsConfig, ConfigError> {
    ctx.only_attrs(
        element,
        &[
            "ttl-seconds",
            "cookie",
            "max-bytes",
            "max-active",
            "create-rate-per-ip",
            "cookie-secure",
        ],
    )?;
    ctx.no_children(element)?;
    let ttl = ctx.whole(
        element,
        "ttl-seconds",
        DEFAULT_SESSION_TTL_SECONDS,
        SESSION_TTL_SECONDS_RANGE,
    )?;
    let cookie = match element.attr("cookie") {
        None => DEFAULT_COOKIE.to_owned(),
        Some(raw) if is_cookie_name(raw) => raw.to_owned(),
        Some(raw) => {
            return Err(ctx.invalid(
                element,
                Some("cookie"),
                format!(
                    "cookie must be a cookie name (letters, digits and !#$%&'*+-.^_`|~, \
                     no spaces, ';', ',' or '='), got {}",
                    quote(raw)
                ),
            ));
        }
    };
    let max_bytes = ctx.whole(
        element,
        "max-bytes",
        DEFAULT_SESSION_MAX_BYTES as u64,
        SESSION_MAX_BYTES_RANGE,
    )?;
    let max_active = ctx.whole(
        element,
        "max-active",
        DEFAULT_MAX_ACTIVE_SESSIONS,
        MAX_ACTIVE_SESSIONS_RANGE,
    )?;
    let create_rate_per_ip = ctx.whole(
        element,
        "create-rate-per-ip",
        DEFAULT_CREATE_RATE_PER_IP,
        CREATE_RATE_PER_IP_RANGE,
    )?;
    let cookie_secure = ctx.choice(
        element,
        "cookie-secure",
        false,
        &[("true", true), ("false", false)],
    )?;
    Ok(SessionsConfig {
        ttl: Duration::from_secs(ttl),
        cookie,
        // The range check keeps this within 64 MiB, which fits every usize we build for.
        max_bytes: usize::try_from(max_bytes).unwrap_or(DEFAULT_SESSION_MAX_BYTES),
        max_active,
        create_rate_per_ip,
        cookie_secure,
    })
}

fn balancer(element: &RawElement, ctx: &Ctx<'_>) -> Result<BalancerConfig, ConfigError> {
    ctx.only_attrs(
        element,
        &[
            "strategy",
            "key",
            "retries",
            "connect-timeout-ms",
            "response-timeout-ms",
            "transport",
        ],
    )?;
    ctx.no_children(element)?;
    let strategy = ctx.choice(
        element,
        "strategy",
        Strategy::default(),
        &Strategy::ALL.map(|s| (s.as_str(), s)),
    )?;
    let key = ctx.choice(
        element,
        "key",
        HashKey::default(),
        &HashKey::ALL.map(|k| (k.as_str(), k)),
    )?;
    let transport = ctx.choice(
        element,
        "transport",
        Transport::default(),
        &Transport::ALL.map(|t| (t.as_str(), t)),
    )?;
    let retries = ctx.whole(
        element,
        "retries",
        u64::from(DEFAULT_RETRIES),
        RETRIES_RANGE,
    )?;
    let connect_timeout = ctx.whole(
        element,
        "connect-timeout-ms",
        DEFAULT_CONNECT_TIMEOUT_MS,
        CONNECT_TIMEOUT_MS_RANGE,
    )?;
    let response_timeout = ctx.whole(
        element,
        "response-timeout-ms",
        DEFAULT_RESPONSE_TIMEOUT_MS,
        RESPONSE_TIMEOUT_MS_RANGE,
    )?;
    // The response timeout runs from the start of the exchange, connecting included: a shorter one
    // would make the connect timeout meaningless.
    if response_timeout < connect_timeout {
        let (attr, shown) = if element.attr("response-timeout-ms").is_some() {
            ("response-timeout-ms", response_timeout.to_string())
        } else {
            (
                "connect-timeout-ms",
                format!("{response_timeout} (the default)"),
            )
        };
        return Err(ctx.invalid(
            element,
            Some(attr),
            format!(
                "response-timeout-ms must be at least connect-timeout-ms ({connect_timeout}), got {shown}"
            ),
        ));
    }
    Ok(BalancerConfig {
        strategy,
        key,
        // The range check keeps this at 10 or less.
        retries: u32::try_from(retries).unwrap_or(DEFAULT_RETRIES),
        connect_timeout: Duration::from_millis(connect_timeout),
        response_timeout: Duration::from_millis(response_timeout),
        transport,
    })
}

fn backup(element: &RawElement, ctx: &Ctx<'_>) -> Result<BackupConfig, ConfigError> {
    ctx.only_attrs(element, &["dir", "interval-seconds", "keep"])?;
    ctx.no_children(element)?;
    let dir = ctx
        .path(element, "dir")?
        .unwrap_or_else(|| ctx.base_dir.join(DEFAULT_BACKUP_DIR));
    let interval = ctx.whole(
        element,
        "interval-seconds",
        DEFAULT_BACKUP_INTERVAL_SECONDS,
        BACKUP_INTERVAL_SECONDS_RANGE,
    )?;
    let keep = ctx.whole(
        element,
        "keep",
        DEFAULT_BACKUP_KEEP as u64,
        BACKUP_KEEP_RANGE,
    )?;
    Ok(BackupConfig {
        dir,
        interval: Duration::from_secs(interval),
        // The range check keeps this at 10,000 or less.
        keep: usize::try_from(keep).unwrap_or(DEFAULT_BACKUP_KEEP),
    })
}

fn security(element: &RawElement, ctx: &Ctx<'_>) -> Result<SecurityConfig, ConfigError> {
    ctx.only_attrs(
        element,
        &["gossip-key-file", "admin-token-file", "allow-open-peers"],
    )?;
    ctx.no_children(element)?;
    Ok(SecurityConfig {
        gossip_key_file: ctx.path(element, "gossip-key-file")?,
        admin_token_file: ctx.path(element, "admin-token-file")?,
        allow_open_peers: ctx.choice(
            element,
            "allow-open-peers",
            false,
            &[("true", true), ("false", false)],
        )?,
    })
}

fn app(element: &RawElement, ctx: &Ctx<'_>) -> Result<AppConfig, ConfigError> {
    ctx.only_attrs(element, &["docroot", "upstream"])?;
    ctx.no_children(element)?;
    let docroot = ctx.path(element, "docroot")?;
    let upstream = match element.attr("upstream") {
        None => None,
        Some(raw) => match super::parse_upstream(raw) {
            Ok(_) => Some(raw.to_owned()),
            Err(problem) => {
                return Err(ctx.invalid(
                    element,
                    Some("upstream"),
                    format!("upstream {}: {problem}", quote(raw)),
                ));
            }
        },
    };
    Ok(AppConfig { docroot, upstream })
}

fn logging(element: &RawElement, ctx: &Ctx<'_>) -> Result<LoggingConfig, ConfigError> {
    ctx.only_attrs(element, &["level"])?;
    ctx.no_children(element)?;
    let level = match element.attr("level") {
        None => None,
        Some(raw) => {
            // The same syntax as RUST_LOG: comma-separated `level` or `target=level` directives.
            let valid = !raw.trim().is_empty()
                && raw.split(',').all(|directive| {
                    let level = directive.rsplit('=').next().unwrap_or("").trim();
                    let target_ok = directive.split('=').count() <= 2;
                    target_ok
                        && ["trace", "debug", "info", "warn", "error", "off"]
                            .contains(&level.to_ascii_lowercase().as_str())
                });
            if !valid {
                return Err(ctx.invalid(
                    element,
                    Some("level"),
                    format!(
                        "level must be a RUST_LOG filter such as \"info\" or \"info,chitchat=warn\", got {}",
                        quote(raw)
                    ),
                ));
            }
            Some(raw.trim().to_owned())
        }
    };
    Ok(LoggingConfig { level })
}

fn metrics(element: &RawElement, ctx: &Ctx<'_>) -> Result<MetricsConfig, ConfigError> {
    ctx.only_attrs(element, &["enabled"])?;
    ctx.no_children(element)?;
    let enabled = ctx.choice(
        element,
        "enabled",
        true,
        &[("true", true), ("false", false)],
    )?;
    Ok(MetricsConfig { enabled })
}

/// `<http>`: the bounds of the `--http` port. The TLS issue adds its certificate attributes here.
fn http(element: &RawElement, ctx: &Ctx<'_>) -> Result<HttpConfig, ConfigError> {
    ctx.only_attrs(
        element,
        &["max-connections", "header-timeout-ms", "idle-timeout-ms"],
    )?;
    ctx.no_children(element)?;
    let max_connections = ctx.whole(
        element,
        "max-connections",
        DEFAULT_HTTP_MAX_CONNECTIONS,
        HTTP_MAX_CONNECTIONS_RANGE,
    )?;
    let header_timeout = ctx.whole(
        element,
        "header-timeout-ms",
        DEFAULT_HTTP_HEADER_TIMEOUT_MS,
        HTTP_HEADER_TIMEOUT_MS_RANGE,
    )?;
    let idle_timeout = ctx.whole(
        element,
        "idle-timeout-ms",
        DEFAULT_HTTP_IDLE_TIMEOUT_MS,
        HTTP_IDLE_TIMEOUT_MS_RANGE,
    )?;
    Ok(HttpConfig {
        // The range check keeps this within a million, which fits every usize we build for.
        max_connections: usize::try_from(max_connections)
            .unwrap_or(DEFAULT_HTTP_MAX_CONNECTIONS as usize),
        header_timeout: Duration::from_millis(header_timeout),
        idle_timeout: Duration::from_millis(idle_timeout),
    })
}

/// Attributes every `<rule>` takes, whatever its kind.
const RULE_ATTRS: [&str; 3] = ["name", "kind", "for-ms"];

fn alerts(
    element: &RawElement,
    ctx: &Ctx<'_>,
    metrics: &MetricsConfig,
) -> Result<AlertsConfig, ConfigError> {
    ctx.only_attrs(element, &["interval-ms", "receiver"])?;
    let interval = ctx.whole(
        element,
        "interval-ms",
        DEFAULT_ALERT_INTERVAL_MS,
        ALERT_INTERVAL_MS_RANGE,
    )?;
    let receiver = match element.attr("receiver") {
        None => DEFAULT_ALERT_RECEIVER.to_owned(),
        Some(raw) => {
            check_identifier(raw).map_err(|problem| {
                ctx.invalid(element, Some("receiver"), format!("receiver {problem}"))
            })?;
            raw.to_owned()
        }
    };
    let mut rules: Vec<AlertRule> = Vec::new();
    let mut lines: HashMap<String, usize> = HashMap::new();
    let mut webhooks = Vec::new();
    for child in &element.children {
        match child.name.as_str() {
            "rule" => {
                let rule = alert_rule(child, ctx, metrics)?;
                if let Some(first_line) = lines.insert(rule.name.clone(), child.line) {
                    return Err(ctx.invalid(
                        child,
                        Some("name"),
                        format!(
                            "duplicate rule name {} (first at line {first_line}); give each rule its own name",
                            quote(&rule.name)
                        ),
                    ));
                }
                rules.push(rule);
            }
            "webhook" => {
                ctx.only_attrs(child, &["url"])?;
                ctx.no_children(child)?;
                let url = ctx.required(child, "url")?;
                if let Err(problem) = check_webhook_url(url) {
                    return Err(ctx.invalid(
                        child,
                        Some("url"),
                        format!("url {}: {problem}", quote(url)),
                    ));
                }
                webhooks.push(url.to_owned());
            }
            other => {
                return Err(ctx.invalid(
                    child,
                    None,
                    format!(
                        "unknown element <{other}> inside <alerts>; allowed: <rule>, <webhook>"
                    ),
                ));
            }
        }
    }
    Ok(AlertsConfig {
        interval: Duration::from_millis(interval),
        receiver,
        rules,
        webhooks,
    })
}

fn alert_rule(
    element: &RawElement,
    ctx: &Ctx<'_>,
    metrics: &MetricsConfig,
) -> Result<AlertRule, ConfigError> {
    ctx.no_children(element)?;
    let kinds = AlertCondition::KINDS.map(|kind| (kind, kind));
    let Some(raw_kind) = element.attr("kind") else {
        return Err(ctx.invalid(
            element,
            None,
            format!(
                "missing attribute kind; one of {}",
                AlertCondition::KINDS.join(", ")
            ),
        ));
    };
    let kind = ctx.choice(element, "kind", raw_kind, &kinds)?;
    let extra: &[&str] = match kind {
        "error-rate" => &["threshold", "window-ms"],
        "p99-latency" => &["threshold-ms", "window-ms"],
        "memory" => &["threshold-bytes"],
        _ => &[],
    };
    let allowed: Vec<&str> = RULE_ATTRS.iter().chain(extra).copied().collect();
    for (key, _) in &element.attrs {
        if !allowed.contains(&key.as_str()) {
            return Err(ctx.invalid(
                element,
                Some(key),
                format!(
                    "unknown attribute {key} for kind=\"{kind}\"; allowed: {}",
                    allowed.join(", ")
                ),
            ));
        }
    }
    let name = match element.attr("name") {
        None => kind.to_owned(),
        Some(raw) => {
            check_identifier(raw)
                .map_err(|problem| ctx.invalid(element, Some("name"), format!("name {problem}")))?;
            raw.to_owned()
        }
    };
    let needs = |attr: &str| -> Result<(), ConfigError> {
        match element.attr(attr) {
            Some(_) => Ok(()),
            None => Err(ctx.invalid(
                element,
                Some("kind"),
                format!("missing attribute {attr}; kind=\"{kind}\" needs it"),
            )),
        }
    };
    let window = || -> Result<Duration, ConfigError> {
        let ms = ctx.whole(
            element,
            "window-ms",
            DEFAULT_ALERT_WINDOW_MS,
            ALERT_WINDOW_MS_RANGE,
        )?;
        Ok(Duration::from_millis(ms))
    };
    let condition = match kind {
        "member-down" => AlertCondition::MemberDown,
        "no-leader" => AlertCondition::NoLeader,
        "error-rate" => {
            needs("threshold")?;
            AlertCondition::ErrorRate {
                ratio: ctx.decimal(element, "threshold", 0.0, ALERT_RATIO_RANGE)?,
                window: window()?,
            }
        }
        "p99-latency" => {
            needs("threshold-ms")?;
            let ms = ctx.whole(element, "threshold-ms", 0, ALERT_LATENCY_MS_RANGE)?;
            AlertCondition::P99Latency {
                threshold: Duration::from_millis(ms),
                window: window()?,
            }
        }
        _ => {
            needs("threshold-bytes")?;
            AlertCondition::Memory {
                bytes: ctx.whole(element, "threshold-bytes", 0, ALERT_MEMORY_BYTES_RANGE)?,
            }
        }
    };
    if matches!(
        condition,
        AlertCondition::ErrorRate { .. } | AlertCondition::P99Latency { .. }
    ) && !metrics.enabled
    {
        return Err(ctx.invalid(
            element,
            Some("kind"),
            format!(
                "kind=\"{kind}\" reads the request metrics, which <metrics enabled=\"false\"/> turns off; \
                 enable metrics or remove this rule"
            ),
        ));
    }
    let for_ms = ctx.whole(element, "for-ms", 0, ALERT_FOR_MS_RANGE)?;
    Ok(AlertRule {
        name,
        condition,
        for_duration: Duration::from_millis(for_ms),
    })
}

/// Webhook receivers are plain `http://host[:port][/path]` URLs (the node speaks no TLS).
fn check_webhook_url(raw: &str) -> Result<(), String> {
    let expected = "expected an http:// URL such as http://127.0.0.1:9099/hook";
    if raw.starts_with("https://") {
        return Err(format!("https is not supported; {expected}"));
    }
    match raw.parse::<axum::http::Uri>() {
        Ok(uri)
            if uri.scheme_str() == Some("http") && uri.host().is_some_and(|h| !h.is_empty()) =>
        {
            Ok(())
        }
        _ => Err(expected.to_owned()),
    }
}

fn nodes(element: &RawElement, ctx: &Ctx<'_>) -> Result<Vec<NodeSpec>, ConfigError> {
    ctx.only_attrs(element, &[])?;
    let mut specs: Vec<NodeSpec> = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut addresses = AddressBook::default();
    for child in &element.children {
        if child.name != "node" {
            return Err(ctx.invalid(
                child,
                None,
                format!(
                    "unknown element <{}> inside <nodes>; only <node> is allowed",
                    child.name
                ),
            ));
        }
        let spec = node(child, ctx)?;
        if let Some(first_line) = names.get(&spec.name) {
            return Err(ctx.invalid(
                child,
                None,
                format!(
                    "duplicate node name {} (first defined at line {first_line})",
                    quote(&spec.name)
                ),
            ));
        }
        names.insert(spec.name.clone(), child.line);
        for (role, attr) in [(Role::Http, "http"), (Role::Cluster, "cluster")] {
            if let Err(message) = addresses.add(&spec, role) {
                return Err(ctx.invalid(child, Some(attr), message));
            }
        }
        specs.push(spec);
    }
    if specs.is_empty() {
        return Err(ctx.invalid(
            element,
            None,
            "<nodes> lists no <node>; add at least one founding node, as in \
             <node name=\"node-1\" http=\"127.0.0.1:8081\" cluster=\"127.0.0.1:7001\"/>"
                .to_owned(),
        ));
    }
    Ok(specs)
}

fn node(element: &RawElement, ctx: &Ctx<'_>) -> Result<NodeSpec, ConfigError> {
    ctx.only_attrs(element, &["name", "http", "cluster"])?;
    ctx.no_children(element)?;
    let name = ctx.required(element, "name")?;
    if let Err(problem) = check_identifier(name) {
        return Err(ctx.invalid(element, None, format!("name {problem}")));
    }
    let addr = |attr: &str| -> Result<SocketAddr, ConfigError> {
        let raw = ctx.required(element, attr)?;
        let example = if attr == "http" {
            EXAMPLE_HTTP
        } else {
            EXAMPLE_CLUSTER
        };
        parse_socket_addr(raw, example).map_err(|problem| {
            ctx.invalid(
                element,
                Some(attr),
                format!("bad {attr} address: {problem}"),
            )
        })
    };
    let http = addr("http")?;
    let cluster = addr("cluster")?;
    Ok(NodeSpec {
        name: name.to_owned(),
        http,
        cluster,
    })
}

/// Shown in address errors, matching the repo-root example file.
pub(super) const EXAMPLE_HTTP: &str = "127.0.0.1:8081";
/// Shown in cluster and seed address errors.
pub(super) const EXAMPLE_CLUSTER: &str = "127.0.0.1:7001";

/// Which of a node's two listeners an address belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Http,
    Cluster,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Http => "http",
            Role::Cluster => "cluster",
        }
    }
}

/// Tracks which node listens where, so no address is used twice.
#[derive(Debug, Default)]
pub(super) struct AddressBook {
    owners: HashMap<SocketAddr, (String, Role)>,
}

impl AddressBook {
    /// Records `spec`'s address for `role`, or says who already uses it.
    pub(super) fn add(&mut self, spec: &NodeSpec, role: Role) -> Result<(), String> {
        let addr = match role {
            Role::Http => spec.http,
            Role::Cluster => spec.cluster,
        };
        if let Some((owner, owner_role)) = self.owners.get(&addr) {
            return Err(format!(
                "address {addr} used twice ({owner} {}, {} {})",
                owner_role.as_str(),
                spec.name,
                role.as_str()
            ));
        }
        self.owners.insert(addr, (spec.name.clone(), role));
        Ok(())
    }
}

/// Cluster ids and node names: what fits in a directory name, a metric label and a log field.
pub(super) fn check_identifier(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be 1 to {MAX_NAME_LEN} characters from A-Z a-z 0-9 . _ -, got {}",
            quote(value)
        ))
    }
}

/// RFC 6265 cookie names are RFC 7230 tokens.
fn is_cookie_name(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses `IP:PORT`, explaining the usual mistakes (host names, bare IPv6, port 0).
/// The problem does not repeat the value: callers show it next to the attribute or flag.
pub(super) fn parse_socket_addr(raw: &str, example: &str) -> Result<SocketAddr, String> {
    let expected = format!("expected IP:PORT such as {example}");
    let text = raw.trim();
    match text.parse::<SocketAddr>() {
        Ok(addr) if addr.port() == 0 => {
            Err("port 0 is not allowed; every node needs a fixed port".to_owned())
        }
        // Peers are given this address to reach the node, and nobody can reach 0.0.0.0.
        Ok(addr) if addr.ip().is_unspecified() => Err(format!(
            "{} is not reachable by peers; give this node's own address",
            addr.ip()
        )),
        Ok(addr) => Ok(addr),
        Err(_) => {
            let Some((host, port)) = text.rsplit_once(':') else {
                return Err(expected);
            };
            let port_ok = port.parse::<u16>().is_ok();
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !port_ok {
                Err(format!("port must be between 1 and 65535, got {port}"))
            } else if port_ok && matches!(host.parse::<IpAddr>(), Ok(IpAddr::V6(_))) {
                Err("IPv6 addresses need brackets, as in [::1]:8081".to_owned())
            } else if port_ok && !host.is_empty() && host.parse::<IpAddr>().is_err() {
                Err(format!("host names are not resolved; {expected}"))
            } else {
                Err(expected)
            }
        }
    }
}
