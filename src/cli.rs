//! The command line: flags, and the `status` client.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::Value;

use crate::client::{CALL_TIMEOUT, CallError, HttpClient};
use crate::config::RunOverrides;

/// How long a backup or restore may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);

/// micro-tomcat: a clustered HTTP application server.
#[derive(Debug, Parser)]
#[command(name = "micro-tomcat", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node.
    Run(RunArgs),
    /// Ask a node how the cluster is doing.
    Status(StatusArgs),
    /// Stop routing new work to a node (it finishes what it has).
    Drain(NodeActionArgs),
    /// Resume routing new work to a drained node.
    Undrain(NodeActionArgs),
    /// Save every session and the config of a running cluster to a file, at one log index.
    Backup {
        /// Any node's HTTP base URL.
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        node: String,
        /// Where to write the backup.
        #[arg(long)]
        out: PathBuf,
        /// A file holding the admin token (else MICRO_TOMCAT_ADMIN_TOKEN, if set).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Load a backup's sessions into a running (typically new) cluster.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// Any node's HTTP base URL of the cluster to seed.
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        node: String,
        /// A file holding the admin token (else MICRO_TOMCAT_ADMIN_TOKEN, if set).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Validate a config file and print its nodes; exit 0 when valid, 1 when not.
    CheckConfig {
        /// The cluster-config.xml to check.
        file: PathBuf,
    },
}

/// One line for a usage error, per the contract "exit 1, one clear line": clap's own rendering spreads
/// the useful part (which arguments are missing, the possible values) over several lines.
pub fn usage_error_line(err: &clap::Error) -> String {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let context_strings = |kind: ContextKind| match err.get(kind) {
        Some(ContextValue::String(one)) => vec![one.clone()],
        Some(ContextValue::Strings(many)) => many.clone(),
        _ => Vec::new(),
    };
    let command = command_path(err);
    match err.kind() {
        ErrorKind::MissingRequiredArgument => {
            let missing = context_strings(ContextKind::InvalidArg);
            let missing = if missing.is_empty() {
                "a required argument".to_string()
            } else {
                missing.join(", ")
            };
            format!("error: {command}: missing {missing} (see {command} --help)")
        }
        ErrorKind::MissingSubcommand | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let mut commands = context_strings(ContextKind::ValidSubcommand);
            if commands.is_empty() {
                commands = Cli::command()
                    .get_subcommands()
                    .map(|sub| sub.get_name().to_string())
                    .collect();
            }
            format!(
                "error: {command}: a command is needed, one of {} (see {command} --help)",
                commands.join(", ")
            )
        }
        _ => {
            // Everything clap says before the usage block, on one line: the problem, then its
            // details (`[possible values: ...]`, `tip: ...`).
            let rendered = err.render().to_string();
            let parts: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more"))
                .filter(|line| !line.is_empty())
                .collect();
            let text = parts.join("; ");
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            let text = if text.is_empty() {
                "invalid usage"
            } else {
                text
            };
            format!("error: {command}: {text} (see {command} --help)")
        }
    }
}

/// `micro-tomcat run` for an error in `run`'s flags: the command words of the usage clap attached,
/// else the program name.
fn command_path(err: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    let usage = match err.get(ContextKind::Usage) {
        Some(ContextValue::StyledStr(usage)) => usage.to_string(),
        _ => String::new(),
    };
    let usage = usage.trim_start();
    let usage = usage.strip_prefix("Usage:").unwrap_or(usage);
    let words: Vec<&str> = usage
        .split_whitespace()
        .take_while(|word| {
            word.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !word.starts_with('-')
        })
        .collect();
    if words.is_empty() {
        "micro-tomcat".to_string()
    } else {
        words.join(" ")
    }
}

/// Flags of `run`; they override the config file.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The cluster config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This node's name (a `<node>` of the file, or a new one with --http and --cluster).
    #[arg(long)]
    pub name: String,
    /// HTTP listen address, IP:PORT.
    #[arg(long)]
    pub http: Option<String>,
    /// Gossip (UDP) and peer RPC (TCP) address, IP:PORT.
    #[arg(long)]
    pub cluster: Option<String>,
    /// A running member's cluster address to join through; repeat or separate with commas.
    #[arg(long = "seed", value_delimiter = ',')]
    pub seeds: Vec<String>,
    /// Where this node keeps its data (default: <raft data-dir>/<name>).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A folder of static files to serve (overrides <app docroot>).
    #[arg(long)]
    pub docroot: Option<PathBuf>,
    /// This node's local application, http://IP:PORT (overrides <app upstream>).
    #[arg(long)]
    pub upstream: Option<String>,
}

impl RunArgs {
    /// The flags as config overrides.
    pub fn overrides(&self) -> RunOverrides {
        RunOverrides {
            config: self.config.clone(),
            name: self.name.clone(),
            http: self.http.clone(),
            cluster: self.cluster.clone(),
            seeds: self.seeds.clone(),
            data_dir: self.data_dir.clone(),
            docroot: self.docroot.clone(),
            upstream: self.upstream.clone(),
        }
    }
}

/// Flags of `drain` and `undrain`.
#[derive(Debug, Args)]
pub struct NodeActionArgs {
    /// The member to act on.
    pub name: String,
    /// Any node's HTTP base URL.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub node: String,
    /// A file holding the admin token (else MICRO_TOMCAT_ADMIN_TOKEN, if set).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

/// Asks `node` to drain or undrain `name` (with the admin token as bearer token, when given);
/// returns the answer body.
pub async fn node_action(args: &NodeActionArgs, action: &str) -> Result<String, StatusError> {
    let url = format!(
        "{}/cluster/nodes/{}/{action}",
        args.node.trim_end_matches('/'),
        args.name
    );
    let authorization = authorization(args.token_file.as_deref())?;
    let headers: Vec<(&str, &str)> = authorization
        .iter()
        .map(|value| ("authorization", value.as_str()))
        .collect();
    let (status, body) = http_call(hyper::Method::POST, &url, &headers).await?;
    if !status.is_success() {
        return Err(StatusError::BadAnswer {
            url,
            status: status.as_u16(),
            body: body.chars().take(200).collect(),
        });
    }
    Ok(body)
}

/// Output formats of `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    /// A table for people.
    Table,
    /// The raw JSON document.
    Json,
    /// The XML document.
    Xml,
}

/// Flags of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Any node's HTTP base URL.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub node: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = StatusFormat::Table)]
    pub format: StatusFormat,
    /// A file holding the admin token, sent along (reads need none today; scripts may pass it anyway).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

/// Why `status` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The URL is not an http:// URL.
    #[error("--node {url:?}: expected an http:// URL such as http://127.0.0.1:8081")]
    BadUrl {
        /// What was given.
        url: String,
    },
    /// A local file is not what the command needs.
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The node did not answer.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The node answered something else than a status document.
    #[error("{url} answered {status}: {body}")]
    BadAnswer {
        /// The URL asked.
        url: String,
        /// HTTP status.
        status: u16,
        /// What it said (truncated).
        body: String,
    },
    /// The `--token-file` cannot be read or holds no valid token.
    #[error(transparent)]
    Token(#[from] crate::config::secrets::SecretError),
}

impl From<CallError> for StatusError {
    fn from(err: CallError) -> StatusError {
        match err {
            CallError::BadUrl { url } => StatusError::BadUrl { url },
            CallError::Unreachable { url, reason } => StatusError::Unreachable { url, reason },
        }
    }
}

impl StatusError {
    /// The exit code: 1 for a usage problem (a bad `--token-file`), 2 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            StatusError::Token(_) => 1,
            _ => 2,
        }
    }
}

/// Fetches `/cluster/status` from `node` and renders it in `format`.
pub async fn status(args: &StatusArgs) -> Result<String, StatusError> {
    let (node, format) = (args.node.as_str(), args.format);
    let base = node.trim_end_matches('/');
    let suffix = match format {
        StatusFormat::Xml => "?format=xml",
        StatusFormat::Table | StatusFormat::Json => "",
    };
    let url = format!("{base}/cluster/status{suffix}");
    let authorization = authorization(args.token_file.as_deref())?;
    let headers: Vec<(&str, &str)> = authorization
        .iter()
        .map(|value| ("authorization", value.as_str()))
        .collect();
    let (status, body) = http_call(hyper::Method::GET, &url, &headers).await?;
    if !status.is_success() {
        return Err(StatusError::BadAnswer {
            url,
            status: status.as_u16(),
            body: body.chars().take(200).collect(),
        });
    }
    match format {
        StatusFormat::Xml => Ok(body),
        StatusFormat::Json | StatusFormat::Table => {
            let document: Value =
                serde_json::from_str(&body).map_err(|err| StatusError::BadAnswer {
                    url: url.clone(),
                    status: 200,
                    body: format!("not a status document: {err}"),
                })?;
            if format == StatusFormat::Json {
                Ok(serde_json::to_string_pretty(&document).unwrap_or(body))
            } else {
                Ok(render_table(&document))
            }
        }
    }
}

/// A plain HTTP GET returning the body of a 2xx answer.
pub async fn http_get(url: &str) -> Result<String, StatusError> {
    let (status, body) = http_call(hyper::Method::GET, url, &[]).await?;
    if !status.is_success() {
        return Err(StatusError::BadAnswer {
            url: url.to_string(),
            status: status.as_u16(),
            body: body.chars().take(200).collect(),
        });
    }
    Ok(body)
}

/// One bodiless HTTP request with extra headers; returns the status and the body, whatever the status.
pub async fn http_call(
    method: hyper::Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(hyper::StatusCode, String), StatusError> {
    let (status, bytes) =
        http_bytes(method, url, headers, bytes::Bytes::new(), CALL_TIMEOUT).await?;
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// One HTTP request with a body; returns the status and the raw body, whatever the status.
pub async fn http_bytes(
    method: hyper::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: bytes::Bytes,
    timeout: Duration,
) -> Result<(hyper::StatusCode, bytes::Bytes), StatusError> {
    Ok(HttpClient::shared()
        .call(method, url, headers, body, timeout)
        .await?)
}

/// Fetches a backup from `node` and writes it to `out` (atomically: a temporary file, then a rename).
pub async fn backup(
    node: &str,
    out: &std::path::Path,
    token_file: Option<&std::path::Path>,
) -> Result<String, StatusError> {
    let url = format!("{}/cluster/backup", node.trim_end_matches('/'));
    let token = authorization(token_file)?;
    let headers: Vec<(&str, &str)> = token
        .as_deref()
        .map(|token| vec![("authorization", token)])
        .unwrap_or_default();
    let (status, body) = http_bytes(
        hyper::Method::GET,
        &url,
        &headers,
        bytes::Bytes::new(),
        TRANSFER_TIMEOUT,
    )
    .await?;
    if !status.is_success() {
        return Err(StatusError::BadAnswer {
            url,
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).chars().take(200).collect(),
        });
    }
    let backup = proto::raft::decode_backup_file(&body).map_err(|err| StatusError::BadAnswer {
        url: url.clone(),
        status: status.as_u16(),
        body: err.to_string(),
    })?;
    write_backup(out, &body)?;
    Ok(format!(
        "{}: {} sessions of cluster {:?} at log index {} ({} bytes)",
        out.display(),
        backup.sessions.len(),
        backup.cluster_id,
        backup.log_index,
        body.len()
    ))
}

/// Writes `body` to `out` through a temporary file and a rename, creating `out`'s folder when missing.
/// Errors name the file, not the node.
fn write_backup(out: &std::path::Path, body: &[u8]) -> Result<(), StatusError> {
    let bad_file = |reason: String| StatusError::BadFile {
        path: out.display().to_string(),
        reason,
    };
    if let Some(parent) = out.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|err| {
            bad_file(format!(
                "cannot create the folder {} for the backup: {err}",
                parent.display()
            ))
        })?;
    }
    let temp = out.with_extension("partial");
    std::fs::write(&temp, body).map_err(|err| {
        bad_file(format!(
            "cannot write the backup (to {} first): {err}",
            temp.display()
        ))
    })?;
    std::fs::rename(&temp, out).map_err(|err| {
        let _ = std::fs::remove_file(&temp);
        bad_file(format!("cannot write the backup: {err}"))
    })
}

/// Sends a backup file to `node`, which replays it into its cluster.
pub async fn restore(
    node: &str,
    file: &std::path::Path,
    token_file: Option<&std::path::Path>,
) -> Result<String, StatusError> {
    let token = authorization(token_file)?;
    let bytes = std::fs::read(file).map_err(|err| StatusError::BadFile {
        path: file.display().to_string(),
        reason: format!("cannot read the backup: {err}"),
    })?;
    if let Err(err) = proto::raft::decode_backup_file(&bytes) {
        return Err(StatusError::BadFile {
            path: file.display().to_string(),
            reason: err.to_string(),
        });
    }
    let url = format!("{}/cluster/restore", node.trim_end_matches('/'));
    let mut headers = vec![("content-type", "application/octet-stream")];
    if let Some(token) = token.as_deref() {
        headers.push(("authorization", token));
    }
    let (status, body) = http_bytes(
        hyper::Method::POST,
        &url,
        &headers,
        bytes.into(),
        TRANSFER_TIMEOUT,
    )
    .await?;
    let text = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        return Err(StatusError::BadAnswer {
            url,
            status: status.as_u16(),
            body: text.chars().take(300).collect(),
        });
    }
    Ok(text)
}

/// `Bearer <token>` from `--token-file` when given, else from `MICRO_TOMCAT_ADMIN_TOKEN` when set
/// (the same variable that gives a node its token).
fn authorization(token_file: Option<&std::path::Path>) -> Result<Option<String>, StatusError> {
    if let Some(path) = token_file {
        let token = crate::config::secrets::admin_token_from_file(path)?;
        return Ok(Some(format!("Bearer {token}")));
    }
    Ok(std::env::var(crate::config::secrets::ADMIN_TOKEN_ENV)
        .ok()
        .map(|token| token.trim().to_string())
        .filter(|token| !token.is_empty())
        .map(|token| format!("Bearer {token}")))
}

/// Renders a status document as a member table.
pub fn render_table(document: &Value) -> String {
    let text = |value: &Value| match value {
        Value::Null => "-".to_string(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let me = text(&document["node"]);
    let mut out = format!(
        "cluster {}  (answered by {}, leader {})\n",
        text(&document["cluster_id"]),
        me,
        text(&document["leader"])
    );
    let headers = [
        "NAME",
        "STATE",
        "HTTP",
        "CLUSTER",
        "GENERATION",
        "PHI",
        "LAST SEEN",
        "ROLE",
    ];
    let empty = Vec::new();
    let members = document["members"].as_array().unwrap_or(&empty);
    let rows: Vec<[String; 8]> = members
        .iter()
        .map(|member| {
            let mut name = text(&member["name"]);
            if name == me {
                name.push('*');
            }
            let last_seen = match member["last_seen_ms"].as_u64() {
                Some(ms) => format!("{ms} ms"),
                None => "never".to_string(),
            };
            [
                name,
                text(&member["state"]),
                text(&member["http_addr"]),
                text(&member["cluster_addr"]),
                text(&member["generation"]),
                member["phi"]
                    .as_f64()
                    .map_or("-".to_string(), |phi| format!("{phi:.1}")),
                last_seen,
                text(&member["raft_role"]),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|header| header.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    out.push_str(&line(headers.to_vec()));
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    let count = |state: &str| {
        members
            .iter()
            .filter(|member| member["state"] == state)
            .count()
    };
    out.push_str(&format!(
        "{} members: {} up, {} down, {} draining, {} left  (* = answering node)\n",
        members.len(),
        count("up"),
        count("down"),
        count("draining"),
        count("left")
    ));
    out.push_str(&render_quorum(&document["raft"]["quorum"]));
    out
}

/// The Raft voters line under the table: live versus needed, the absent ones, and a loud warning
/// when there is no quorum (empty for a document without `raft.quorum`).
fn render_quorum(quorum: &Value) -> String {
    let (Some(voters), Some(live), Some(needed)) = (
        quorum["voters"].as_u64(),
        quorum["live"].as_u64(),
        quorum["needed"].as_u64(),
    ) else {
        return String::new();
    };
    if voters == 0 {
        return "raft voters: none yet (the founders have not bootstrapped the cluster)\n"
            .to_owned();
    }
    let absent: Vec<&str> = quorum["absent"]
        .as_array()
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut line = format!("raft voters: {live} of {voters} up, {needed} needed for a quorum");
    if !absent.is_empty() {
        line.push_str(&format!("; absent: {}", absent.join(", ")));
    }
    if quorum["has_quorum"] == Value::Bool(false) {
        line.push_str("  NO QUORUM: writes and reads fail until a majority is back");
    } else if live.saturating_sub(1) < needed {
        // One more voter lost (a restart included) and the cluster stops.
        line.push_str("  (one more voter down loses the quorum)");
    }
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(args: &[&str]) -> String {
        match Cli::try_parse_from(args) {
            Ok(cli) => panic!("expected a usage error, got {cli:?}"),
            Err(err) => usage_error_line(&err),
        }
    }

    #[test]
    fn missing_arguments_are_named_on_one_line() {
        let text = line(&["micro-tomcat", "run"]);
        assert_eq!(
            text,
            "error: micro-tomcat run: missing --name <NAME> (see micro-tomcat run --help)"
        );
        let text = line(&["micro-tomcat", "restore"]);
        assert!(
            text.starts_with("error: micro-tomcat restore: missing <FILE>"),
            "{text}"
        );
        let text = line(&["micro-tomcat", "drain"]);
        assert!(text.contains("missing <NAME>"), "{text}");
    }

    #[test]
    fn no_command_says_one_is_needed_and_lists_them() {
        let text = line(&["micro-tomcat"]);
        assert!(
            text.starts_with("error: micro-tomcat: a command is needed, one of run, status,"),
            "{text}"
        );
        for command in ["drain", "undrain", "backup", "restore", "check-config"] {
            assert!(text.contains(command), "{text}");
        }
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn a_backup_creates_its_folder_and_write_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("new/deeper/backup.mtb");
        write_backup(&out, b"bytes").expect("folders are created");
        assert_eq!(std::fs::read(&out).expect("written"), b"bytes");
        assert!(!out.with_extension("partial").exists());

        // A plain file where the folder should be: an error about the file, not a node.
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, b"").expect("write blocker");
        let out = blocker.join("backup.mtb");
        let err = write_backup(&out, b"bytes").expect_err("cannot write under a file");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("{}: cannot create the folder", out.display())),
            "{text}"
        );
        assert!(!text.contains("reach"), "{text}");
    }

    #[test]
    fn other_errors_keep_their_details_on_one_line() {
        let text = line(&["micro-tomcat", "status", "--format", "yaml"]);
        assert!(text.contains("invalid value 'yaml'"), "{text}");
        assert!(text.contains("possible values: table, json, xml"), "{text}");
        assert!(!text.contains('\n'), "{text}");
        let text = line(&["micro-tomcat", "status", "--nod", "x"]);
        assert!(
            text.starts_with("error: micro-tomcat status: unexpected argument '--nod'"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
    }
}
