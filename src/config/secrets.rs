//! Secret loading: the cluster key and the admin token, each from its environment variable or its
//! `<security>` file, checked once at start (and by client commands for `--token-file`). What the
//! secrets do is `crypto`'s; what they guard is `http::guards`'.

use std::ffi::OsString;
use std::io::Read;
use std::path::Path;

use super::SecurityConfig;
use crate::crypto::{AdminToken, ClusterKey};

/// Environment variable holding the cluster key; overrides `<security gossip-key-file>`.
pub const GOSSIP_KEY_ENV: &str = "MICRO_TOMCAT_GOSSIP_KEY";
/// Environment variable holding the admin token; overrides `<security admin-token-file>`.
pub const ADMIN_TOKEN_ENV: &str = "MICRO_TOMCAT_ADMIN_TOKEN";
/// Secret files larger than this are refused rather than read.
const MAX_SECRET_FILE_BYTES: u64 = 4096;

/// The secrets a node runs with, loaded at start from the environment or the `<security>` files.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Secrets {
    /// Seals gossip and authenticates peer RPC; `None` leaves both open (the default).
    pub gossip_key: Option<ClusterKey>,
    /// Where the key came from (the variable's name or the file), for the startup line.
    pub gossip_key_origin: Option<String>,
    /// Required by mutating admin calls; `None` leaves them open (the default).
    pub admin_token: Option<AdminToken>,
    /// Where the token came from, for the startup line.
    pub admin_token_origin: Option<String>,
}

impl Secrets {
    /// One line for the startup banner: what is protected and from where, never a secret.
    pub fn describe(&self) -> String {
        let gossip = match (&self.gossip_key, &self.gossip_key_origin) {
            (Some(key), Some(origin)) => format!(
                "gossip sealed and peer RPC authenticated with the cluster key from {origin} \
                 (fingerprint {})",
                key.fingerprint()
            ),
            _ => "no cluster key: gossip and peer RPC are open to the network, and the peer port \
                  takes session writes from anyone who can reach it"
                .to_string(),
        };
        let admin = match &self.admin_token_origin {
            Some(origin) if self.admin_token.is_some() => {
                format!("admin calls need the token from {origin}")
            }
            _ => "admin calls are open".to_string(),
        };
        format!("security: {gossip}; {admin}")
    }
}

/// A secret that cannot be loaded; displayed as one line naming where it was looked for.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file named in `<security>` cannot be read.
    #[error("{origin}: cannot read {what}: {source}")]
    Read {
        /// "the gossip key" or "the admin token".
        what: &'static str,
        /// The file and the attribute that named it.
        origin: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// An admin token without a cluster key: the peer port would take session writes from anyone
    /// who reaches it, so the token would guard little. Allowed only when the operator says so.
    #[error(
        "{origin}: an admin token is set but no cluster key, so the peer port takes session writes \
         from anyone who can reach it and the token guards little; set a cluster key \
         (MICRO_TOMCAT_GOSSIP_KEY or <security gossip-key-file>; make one with \
         `openssl rand -base64 32`), or accept open peers with <security allow-open-peers=\"true\"/>"
    )]
    OpenPeers {
        /// Where the token came from.
        origin: String,
    },
    /// The secret is there but malformed.
    #[error("{origin}: {problem}")]
    Invalid {
        /// The variable or file it came from.
        origin: String,
        /// What is wrong (never the secret itself).
        problem: String,
    },
}

/// Loads the cluster key and the admin token: each from its environment variable if set, else from
/// its `<security>` file if named, else none. `env` reads a variable (`std::env::var_os` in a node).
pub fn load_secrets(
    security: &SecurityConfig,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Secrets, SecretError> {
    let mut secrets = Secrets::default();
    if let Some((text, origin)) = read_secret(
        "the gossip key",
        GOSSIP_KEY_ENV,
        security.gossip_key_file.as_deref(),
        "gossip-key-file",
        &env,
    )? {
        let key = ClusterKey::from_base64(&text).map_err(|problem| SecretError::Invalid {
            origin: origin.clone(),
            problem,
        })?;
        secrets.gossip_key = Some(key);
        secrets.gossip_key_origin = Some(origin);
    }
    if let Some((text, origin)) = read_secret(
        "the admin token",
        ADMIN_TOKEN_ENV,
        security.admin_token_file.as_deref(),
        "admin-token-file",
        &env,
    )? {
        let token = AdminToken::new(&text).map_err(|problem| SecretError::Invalid {
            origin: origin.clone(),
            problem,
        })?;
        secrets.admin_token = Some(token);
        secrets.admin_token_origin = Some(origin);
    }
    if let (Some(origin), None) = (&secrets.admin_token_origin, &secrets.gossip_key)
        && !security.allow_open_peers
    {
        return Err(SecretError::OpenPeers {
            origin: origin.clone(),
        });
    }
    Ok(secrets)
}

/// The secret's text and where it came from, or `None` when neither the variable nor a file is set.
fn read_secret(
    what: &'static str,
    variable: &str,
    file: Option<&Path>,
    attribute: &str,
    env: &impl Fn(&str) -> Option<OsString>,
) -> Result<Option<(String, String)>, SecretError> {
    if let Some(value) = env(variable) {
        let origin = variable.to_string();
        let text = value.into_string().map_err(|_| SecretError::Invalid {
            origin: origin.clone(),
            problem: format!("{what} is not UTF-8 text"),
        })?;
        if text.trim().is_empty() {
            return Err(SecretError::Invalid {
                origin,
                problem: format!("the variable is set but empty; unset it or give {what}"),
            });
        }
        return Ok(Some((text, origin)));
    }
    let Some(path) = file else {
        return Ok(None);
    };
    let origin = format!("{} (<security {attribute}>)", path.display()).replace(['\n', '\r'], " ");
    read_secret_file(what, path, origin).map(Some)
}

/// The text of a secret file (at most [`MAX_SECRET_FILE_BYTES`], UTF-8, not blank) and `origin`.
fn read_secret_file(
    what: &'static str,
    path: &Path,
    origin: String,
) -> Result<(String, String), SecretError> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SECRET_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|source| SecretError::Read {
            what,
            origin: origin.clone(),
            source,
        })?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(SecretError::Invalid {
            origin,
            problem: format!(
                "the file is larger than {MAX_SECRET_FILE_BYTES} bytes; is this the right file?"
            ),
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| SecretError::Invalid {
        origin: origin.clone(),
        problem: format!("{what} is not UTF-8 text"),
    })?;
    if text.trim().is_empty() {
        return Err(SecretError::Invalid {
            origin,
            problem: "the file is empty".to_string(),
        });
    }
    Ok((text, origin))
}

/// The admin token in `path` for a client command (`--token-file`), checked like a node checks its
/// own, without surrounding whitespace.
pub fn admin_token_from_file(path: &Path) -> Result<String, SecretError> {
    let origin = format!("{} (--token-file)", path.display()).replace(['\n', '\r'], " ");
    let (text, origin) = read_secret_file("the admin token", path, origin)?;
    AdminToken::new(&text).map_err(|problem| SecretError::Invalid { origin, problem })?;
    Ok(text.trim().to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use super::*;

    const KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const TOKEN: &str = "0123456789abcdef-token";

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + use<> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).map(OsString::from)
    }

    fn key_bytes() -> [u8; 32] {
        std::array::from_fn(|i| i as u8)
    }

    #[test]
    fn secrets_come_from_env_then_files_else_none() {
        let none = load_secrets(&SecurityConfig::default(), env(&[])).expect("nothing set");
        assert_eq!(none, Secrets::default());
        assert!(none.describe().contains("open"));

        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("gossip.key");
        let token_file = dir.path().join("admin.token");
        std::fs::write(&key_file, format!("{KEY_B64}\n")).expect("write");
        std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write");
        let files = SecurityConfig {
            gossip_key_file: Some(key_file.clone()),
            admin_token_file: Some(token_file.clone()),
            allow_open_peers: false,
        };
        let from_files = load_secrets(&files, env(&[])).expect("files");
        assert_eq!(
            from_files.gossip_key,
            Some(ClusterKey::from_bytes(key_bytes()))
        );
        assert!(
            from_files
                .admin_token
                .as_ref()
                .is_some_and(|t| t.matches(TOKEN))
        );
        let line = from_files.describe();
        assert!(line.contains("gossip.key"), "{line}");
        assert!(!line.contains(KEY_B64) && !line.contains(TOKEN), "{line}");

        // The environment overrides the files.
        let other_key = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
        let from_env = load_secrets(
            &files,
            env(&[
                (GOSSIP_KEY_ENV, other_key),
                (ADMIN_TOKEN_ENV, "another-token-of-enough-length"),
            ]),
        )
        .expect("env");
        assert_eq!(from_env.gossip_key, Some(ClusterKey::from_bytes([7; 32])));
        assert_eq!(from_env.gossip_key_origin.as_deref(), Some(GOSSIP_KEY_ENV));
        assert!(
            from_env
                .admin_token
                .as_ref()
                .is_some_and(|t| t.matches("another-token-of-enough-length"))
        );
    }

    #[test]
    fn an_admin_token_without_a_cluster_key_is_refused_unless_allowed() {
        let token = [(ADMIN_TOKEN_ENV, TOKEN)];
        let err = load_secrets(&SecurityConfig::default(), env(&token)).expect_err("open peers");
        let text = err.to_string();
        assert!(!text.contains('\n') && !text.contains(TOKEN), "{text}");
        for needle in [
            ADMIN_TOKEN_ENV,
            "no cluster key",
            "gossip-key-file",
            "allow-open-peers",
        ] {
            assert!(text.contains(needle), "{text} does not name {needle}");
        }
        let allowed = SecurityConfig {
            allow_open_peers: true,
            ..SecurityConfig::default()
        };
        let secrets = load_secrets(&allowed, env(&token)).expect("allowed explicitly");
        assert!(secrets.admin_token.is_some() && secrets.gossip_key.is_none());
        let both = [(ADMIN_TOKEN_ENV, TOKEN), (GOSSIP_KEY_ENV, KEY_B64)];
        load_secrets(&SecurityConfig::default(), env(&both)).expect("token and key");
    }

    #[test]
    fn bad_secrets_are_one_line_errors_naming_where() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = SecurityConfig {
            gossip_key_file: Some(dir.path().join("nope.key")),
            ..SecurityConfig::default()
        };
        let err = load_secrets(&missing, env(&[])).expect_err("missing file");
        let text = err.to_string();
        assert!(
            text.contains("nope.key") && text.contains("gossip-key-file"),
            "{text}"
        );

        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![(GOSSIP_KEY_ENV, "dG9vIHNob3J0")], GOSSIP_KEY_ENV),
            (vec![(GOSSIP_KEY_ENV, "###")], GOSSIP_KEY_ENV),
            (vec![(GOSSIP_KEY_ENV, "  ")], GOSSIP_KEY_ENV),
            (vec![(ADMIN_TOKEN_ENV, "tiny")], ADMIN_TOKEN_ENV),
        ];
        for (vars, origin) in cases {
            let err = load_secrets(&SecurityConfig::default(), env(&vars)).expect_err(origin);
            let text = err.to_string();
            assert!(text.starts_with(origin), "{text}");
            assert!(!text.contains('\n'), "{text}");
            for (_, value) in &vars {
                if value.trim().len() > 3 {
                    assert!(!text.contains(value), "{text} quotes the secret");
                }
            }
        }

        let big = dir.path().join("big.key");
        std::fs::write(&big, vec![b'A'; 10_000]).expect("write");
        let err = load_secrets(
            &SecurityConfig {
                gossip_key_file: Some(big),
                ..SecurityConfig::default()
            },
            env(&[]),
        )
        .expect_err("big file");
        assert!(err.to_string().contains("larger than"), "{err}");

        let empty = dir.path().join("empty.token");
        std::fs::write(&empty, "\n").expect("write");
        let err = load_secrets(
            &SecurityConfig {
                admin_token_file: Some(PathBuf::from(&empty)),
                ..SecurityConfig::default()
            },
            env(&[]),
        )
        .expect_err("empty file");
        assert!(err.to_string().contains("empty"), "{err}");
    }
}
