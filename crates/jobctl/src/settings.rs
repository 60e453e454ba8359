//! Which server to connect to and with which certificates, from the four places that can say
//! so, strongest first: flags, environment variables, the selected context of the config file,
//! defaults.
//!
//! Each setting is decided on its own, by the strongest place that sets it. The TLS files are
//! either named (`--ca`, `--cert`, `--key`, or a context's `ca`, `cert`, `key`) or derived from
//! a PKI directory and a user; a stronger `--pki-dir` or `--user` beats a weaker named file, so
//! that `--user bob` means bob even when the context names alice's certificate.

use std::path::{Path, PathBuf};

use jobworker_api::paths::{DEFAULT_PKI_DIR_HELP, default_pki_dir};

use crate::cli::{ConnectionArgs, Source};
use crate::config::{self, Config, ConfigError, Context};

/// The server and TLS files to use.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `https://HOST:PORT` or `HOST:PORT`.
    pub server: String,
    /// The TLS files, and who named each.
    pub files: TlsFiles,
    /// How long to wait for the connection (TCP, TLS, HTTP/2).
    pub connect_timeout: std::time::Duration,
}

/// The three files of a client's TLS identity, and where each was named; the hints differ.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate the server's certificate must chain to.
    pub ca: TlsFile,
    /// Our client certificate.
    pub cert: TlsFile,
    /// Its private key.
    pub key: TlsFile,
}

/// One file of [`TlsFiles`].
#[derive(Debug, Clone)]
pub struct TlsFile {
    /// Where it is.
    pub path: PathBuf,
    /// Who chose that path.
    pub named_by: NamedBy,
}

/// Who chose a TLS file's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedBy {
    /// Its flag or environment variable, e.g. "--cert (JOBCTL_CERT)".
    Option(&'static str),
    /// A key of a context, e.g. `cert` of context `node1`.
    Context {
        /// The context's name.
        context: String,
        /// The key: `ca`, `cert` or `key`.
        key: &'static str,
    },
    /// Derived from the PKI directory and user.
    PkiDir,
}

/// Why no settings could be decided.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The config file is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `--context`, `JOBCTL_CONTEXT` or `current-context` names a context the file lacks.
    #[error("no context named {name:?} in {}", path.display())]
    NoSuchContext {
        /// The missing context.
        name: String,
        /// The config file.
        path: PathBuf,
    },
    /// A TLS file is to be found in the default PKI directory, which has no location.
    #[error(
        "cannot locate the development PKI ({DEFAULT_PKI_DIR_HELP}): neither XDG_DATA_HOME nor \
         HOME is set"
    )]
    NoPkiDir,
}

/// One candidate value and how strong its source is.
struct Candidate<T> {
    value: T,
    strength: Strength,
}

/// How strong a source is, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Strength {
    Default,
    Context,
    Environment,
    Flag,
}

impl From<Source> for Strength {
    fn from(source: Source) -> Strength {
        match source {
            Source::Default => Strength::Default,
            Source::Environment => Strength::Environment,
            Source::Flag => Strength::Flag,
        }
    }
}

impl Settings {
    /// Decides the settings for `args`, reading the config file when one exists.
    pub fn resolve(args: &ConnectionArgs) -> Result<Settings, SettingsError> {
        let (name, context) = match selected_context(args)? {
            Some((name, context)) => (Some(name), context),
            None => (None, Context::default()),
        };
        let given = &args.given;

        let server = pick(Some(&args.server), given.server, context.server.as_ref());
        let user = pick(Some(&args.user), given.user, context.user.as_ref());
        let pki_dir = pick(
            args.pki_dir.as_ref(),
            given.pki_dir,
            context.pki_dir.as_ref(),
        );

        let named = |cli: Option<&PathBuf>,
                     source: Source,
                     from_context: Option<&PathBuf>,
                     option: &'static str,
                     key: &'static str| {
            let candidate = pick(cli, source, from_context);
            let named_by = match candidate.strength {
                Strength::Context => NamedBy::Context {
                    context: name.clone().unwrap_or_default(),
                    key,
                },
                _ => NamedBy::Option(option),
            };
            candidate.value.map(|path| Candidate {
                value: TlsFile { path, named_by },
                strength: candidate.strength,
            })
        };
        let ca = named(
            args.ca.as_ref(),
            given.ca,
            context.ca.as_ref(),
            "--ca (JOBCTL_CA)",
            "ca",
        );
        let cert = named(
            args.cert.as_ref(),
            given.cert,
            context.cert.as_ref(),
            "--cert (JOBCTL_CERT)",
            "cert",
        );
        let key = named(
            args.key.as_ref(),
            given.key,
            context.key.as_ref(),
            "--key (JOBCTL_KEY)",
            "key",
        );

        // A file found in the PKI directory is as strong as what chose it: the directory
        // for ca.pem, the stronger of the directory and the user for USER.pem and USER.key.
        let user_name = user.value.unwrap_or_default();
        let dir_strength = pki_dir.strength;
        let user_strength = dir_strength.max(user.strength);
        let pki_dir = pki_dir.value;
        let from_pki = |file: String| -> Result<TlsFile, SettingsError> {
            let dir = match &pki_dir {
                Some(dir) => dir.clone(),
                None => default_pki_dir().ok_or(SettingsError::NoPkiDir)?,
            };
            Ok(TlsFile {
                path: dir.join(file),
                named_by: NamedBy::PkiDir,
            })
        };
        let choose =
            |named: Option<Candidate<TlsFile>>, derived: Strength, file: String| match named {
                Some(named) if named.strength >= derived => Ok(named.value),
                _ => from_pki(file),
            };
        Ok(Settings {
            server: server.value.unwrap_or_default(),
            files: TlsFiles {
                ca: choose(ca, dir_strength, "ca.pem".to_owned())?,
                cert: choose(cert, user_strength, format!("{user_name}.pem"))?,
                key: choose(key, user_strength, format!("{user_name}.key"))?,
            },
            connect_timeout: args.connect_timeout,
        })
    }
}

/// The value from the stronger of the command line (flag or environment variable) and the
/// context; clap's defaults rank below a context.
fn pick<T: Clone>(
    cli: Option<&T>,
    source: Source,
    from_context: Option<&T>,
) -> Candidate<Option<T>> {
    match (cli, from_context) {
        (Some(value), _) if source != Source::Default => Candidate {
            value: Some(value.clone()),
            strength: source.into(),
        },
        (_, Some(value)) => Candidate {
            value: Some(value.clone()),
            strength: Strength::Context,
        },
        (default, None) => Candidate {
            value: default.cloned(),
            strength: Strength::Default,
        },
    }
}

/// The context named by `--context` (or `JOBCTL_CONTEXT`), else the file's current one, if
/// any.
fn selected_context(args: &ConnectionArgs) -> Result<Option<(String, Context)>, SettingsError> {
    let path = match config::path() {
        Ok(path) => path,
        // Without a home there is no config file; only --context needs one.
        Err(error) if args.context.is_some() => return Err(error.into()),
        Err(_) => return Ok(None),
    };
    let config = Config::load(&path)?;
    let Some(name) = args.context.clone().or(config.current_context.clone()) else {
        return Ok(None);
    };
    match config.contexts.get(&name) {
        Some(context) => Ok(Some((name, context.clone()))),
        None => Err(SettingsError::NoSuchContext { name, path }),
    }
}

impl TlsFiles {
    /// Who named `path`, if it is one of ours.
    pub fn named_by(&self, path: &Path) -> Option<&NamedBy> {
        [&self.ca, &self.cert, &self.key]
            .into_iter()
            .find(|file| file.path == path)
            .map(|file| &file.named_by)
    }
}
