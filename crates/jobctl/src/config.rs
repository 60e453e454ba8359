//! The config file: named contexts, each saying which server to talk to and as whom, and
//! which one is current. Like kubectl's kubeconfig, for a user with several nodes.
//!
//! TOML at `$JOBCTL_CONFIG`, else `$XDG_CONFIG_HOME/jobctl/config.toml` (`~/.config/...`):
//!
//! ```toml
//! current-context = "node1"
//!
//! [contexts.node1]
//! server = "https://node1.example.com:50051"
//! ca = "/home/alice/.config/jobctl/node1/ca.pem"
//! cert = "/home/alice/.config/jobctl/node1/alice.pem"
//! key = "/home/alice/.config/jobctl/node1/alice.key"
//!
//! [contexts.dev]
//! server = "127.0.0.1:50051"
//! pki-dir = "/home/alice/.local/share/jobworker/dev-pki"
//! user = "bob"
//! ```
//!
//! A missing file is an empty configuration. Writes replace the file atomically (a temporary
//! file in the same directory, renamed over it) with mode 0600: it names private keys.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The variable that names the config file, overriding the XDG location.
pub const CONFIG_ENV: &str = "JOBCTL_CONFIG";

/// The first lines of a written file: TOML drops comments, so this says where it came from.
const HEADER: &str =
    "# jobctl contexts; edit with `jobctl config set-context` (see `jobctl config --help`).\n\n";

/// Why the config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither `$JOBCTL_CONFIG`, `$XDG_CONFIG_HOME` nor `$HOME` says where it is.
    #[error(
        "cannot locate the config file: none of JOBCTL_CONFIG, XDG_CONFIG_HOME and HOME is set"
    )]
    NoLocation,
    /// It exists but cannot be read.
    #[error("cannot read the config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// It is not valid TOML or has unknown keys.
    #[error("the config file {} is invalid: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// It cannot be written.
    #[error("cannot write the config file {}", path.display())]
    Write {
        /// The file (or its directory, or the temporary file beside it).
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// The context used when none is named with `--context` or `JOBCTL_CONTEXT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    /// Contexts by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// Where to connect and as whom; every field is optional, unset ones take the defaults.
///
/// The TLS files are either named directly (`ca`, `cert`, `key`) or found in a PKI directory
/// laid out as `jobworkerd certs init` writes it (`pki-dir` + `user`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Context {
    /// `https://HOST:PORT` or `HOST:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// CA certificate the server's certificate must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Client private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// A development PKI directory (`ca.pem`, `USER.pem`, `USER.key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pki_dir: Option<PathBuf>,
    /// The identity to use from `pki-dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// The config file's path: `$JOBCTL_CONFIG`, else the XDG location.
pub fn path() -> Result<PathBuf, ConfigError> {
    match std::env::var_os(CONFIG_ENV) {
        Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
        _ => jobworker_api::paths::config_home()
            .map(|dir| dir.join("jobctl").join("config.toml"))
            .ok_or(ConfigError::NoLocation),
    }
}

impl Config {
    /// Reads the file at `path`; a missing file is an empty configuration.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        toml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            message: error.message().to_owned() + &location(&text, error.span()),
        })
    }

    /// Replaces the file at `path` with this configuration, atomically, mode 0600. A missing
    /// directory is created (0700). A symlink is followed, so that a config file kept
    /// elsewhere (e.g. with dotfiles) stays where it is.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let write_error = |path: &Path| {
            let path = path.to_owned();
            move |source| ConfigError::Write { path, source }
        };
        let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(write_error(&dir))?;
        let text = match toml::to_string(self) {
            Ok(text) => HEADER.to_owned() + &text,
            // Strings, paths and maps only: serializing cannot fail but for a non-UTF-8 path.
            Err(error) => {
                return Err(ConfigError::Write {
                    path,
                    source: io::Error::new(io::ErrorKind::InvalidData, error),
                });
            }
        };

        let file_name = path.file_name().map_or_else(
            || "config.toml".into(),
            |name| name.to_string_lossy().into_owned(),
        );
        let temp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
        // A leftover from a crash of a process with our pid would make create_new fail.
        let _ = fs::remove_file(&temp);
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .and_then(|mut file| {
                file.write_all(text.as_bytes())?;
                file.sync_all()
            })
            .and_then(|()| fs::rename(&temp, &path));
        if let Err(source) = written {
            let _ = fs::remove_file(&temp);
            return Err(ConfigError::Write { path, source });
        }
        // The rename is durable once the directory is.
        File::open(&dir)
            .and_then(|dir| dir.sync_all())
            .map_err(write_error(&dir))
    }
}

/// " at line L, column C" for a parse error's byte span.
fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |at| at + 1) + 1;
    format!(" at line {line}, column {column}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sample() -> Config {
        let mut config = Config {
            current_context: Some("node1".into()),
            ..Config::default()
        };
        config.contexts.insert(
            "node1".into(),
            Context {
                server: Some("https://node1:50051".into()),
                ca: Some("/etc/ca.pem".into()),
                cert: Some("/home/a/a.pem".into()),
                key: Some("/home/a/a.key".into()),
                ..Context::default()
            },
        );
        config.contexts.insert(
            "dev".into(),
            Context {
                pki_dir: Some("/p".into()),
                user: Some("bob".into()),
                ..Context::default()
            },
        );
        config
    }

    #[test]
    fn a_saved_config_loads_back_unchanged_with_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/config.toml");

        sample().save(&path).expect("save");

        assert_eq!(Config::load(&path).expect("load"), sample());
        let mode = fs::metadata(&path).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = fs::read_to_string(&path).expect("read");
        assert!(text.contains("[contexts.dev]\npki-dir = \"/p\""), "{text}");
        let leftovers: Vec<_> = fs::read_dir(path.parent().expect("dir"))
            .expect("read dir")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers, ["config.toml"], "no temporary file is left");
    }

    #[test]
    fn saving_replaces_a_more_permissive_file_with_a_0600_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        fs::write(&path, "").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");

        sample().save(&path).expect("save");

        let mode = fs::metadata(&path).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_missing_file_is_an_empty_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config::load(&dir.path().join("none.toml")).expect("load");
        assert_eq!(config, Config::default());
    }

    #[test]
    fn unknown_keys_are_refused_with_their_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        fs::write(&path, "[contexts.a]\nserver = \"x\"\nsevrer = \"y\"\n").expect("write");

        match Config::load(&path) {
            Err(ConfigError::Parse { message, .. }) => {
                assert!(message.contains("sevrer"), "{message}");
                assert!(message.ends_with(" at line 3, column 1"), "{message}");
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
    }
}
