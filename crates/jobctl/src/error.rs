//! Every failure jobctl reports, and the one place where TLS, connection and gRPC errors
//! become a message and a hint for the person at the terminal.
//!
//! A [`Failure`] prints as exactly one `jobctl: error: ...` line, plus one `hint: ...` line
//! when there is something specific to try, and makes jobctl exit 1. Usage errors never get
//! here: clap reports them itself and exits 2.
//!
//! This module only reads the settings' types (to name the flag or context behind a file);
//! the connection uses it, never the other way round.

use std::error::Error;
use std::fmt;
use std::io;
use std::path::Path;

use jobworker_api::{ConnectError, TlsError};
use tonic::{Code, Status};

use crate::config::ConfigError;
use crate::settings::{NamedBy, SettingsError, TlsFiles};

/// An error to report before exiting 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong, on one line.
    pub message: String,
    /// What to try next, if we know something better than "read the message".
    pub hint: Option<String>,
}

impl Failure {
    /// A failure with no hint.
    pub fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: one_line(&message.into()),
            hint: None,
        }
    }

    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Failure {
        self.hint = Some(one_line(&hint.into()));
        self
    }
}

impl fmt::Display for Failure {
    /// The lines jobctl prints on stderr.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "jobctl: error: {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

/// A TLS file could not be loaded: the files the user pointed us at are missing or unusable.
pub fn tls_files(error: &TlsError, files: &TlsFiles) -> Failure {
    let failure = Failure::new(chain(error));
    match error {
        TlsError::Read { path, source, .. } if source.kind() == io::ErrorKind::NotFound => {
            match files.named_by(path) {
                Some(NamedBy::Option(flag)) => {
                    failure.hint(format!("check the file given with {flag}"))
                }
                Some(NamedBy::Context { context, key }) => failure.hint(format!(
                    "check `{key}` of context {context} (`jobctl config get-contexts`)"
                )),
                Some(NamedBy::PkiDir) | None => failure.hint(
                    "create a development PKI with `jobworkerd certs init`, or pass --ca, --cert \
                     and --key",
                ),
            }
        }
        TlsError::CertifiedKey { .. } => {
            failure.hint("the key must be the private key of the certificate (--key, --cert)")
        }
        _ => failure,
    }
}

/// The connection settings could not be decided.
pub fn settings(error: &SettingsError) -> Failure {
    match error {
        SettingsError::Config(error) => config(error),
        SettingsError::NoSuchContext { .. } => {
            Failure::new(chain(error)).hint("`jobctl config get-contexts` lists the contexts")
        }
        SettingsError::NoPkiDir => {
            Failure::new(chain(error)).hint("pass --pki-dir, or --ca, --cert and --key")
        }
    }
}

/// The config file could not be read or written.
pub fn config(error: &ConfigError) -> Failure {
    let failure = Failure::new(chain(error));
    match error {
        ConfigError::NoLocation => failure.hint("name the file with JOBCTL_CONFIG"),
        ConfigError::Parse { .. } => {
            failure.hint("fix it, or change it with `jobctl config set-context`")
        }
        ConfigError::Read { .. } | ConfigError::Write { .. } => failure,
    }
}

/// No connection could be made to the server.
pub fn connect(error: &ConnectError, cert: &Path) -> Failure {
    let failure = Failure::new(chain(error));
    match error {
        ConnectError::InvalidEndpoint { .. } => {
            failure.hint("pass the server as --server 127.0.0.1:50051 or https://HOST:PORT")
        }
        ConnectError::Connect { .. } | ConnectError::Timeout { .. } => unreachable_hint(failure),
        ConnectError::Handshake { .. } => match tls_alert(error) {
            Some(alert) => refused_certificate(&alert, cert),
            None => failure.hint(
                "the server's certificate must be issued by the CA given with --ca and name the host \
                 in --server",
            ),
        },
        ConnectError::Http2 { .. } => match tls_alert(error) {
            Some(alert) => refused_certificate(&alert, cert),
            None => failure,
        },
    }
}

/// A call failed with a gRPC status. `cert` is the client certificate in use, for the hint
/// when the server turns out to refuse it.
pub fn status(status: &Status, cert: &Path) -> Failure {
    if let Some(alert) = tls_alert(status) {
        return refused_certificate(&alert, cert);
    }
    // Statuses the server sends carry only a code and a message; one with a source was made
    // on our side from a broken connection (reset, server gone mid-call).
    if let Some(source) = status.source() {
        return Failure::new(format!(
            "lost the connection to the server: {}",
            chain(source)
        ))
        .hint("is jobworkerd still running?");
    }
    let message = if status.message().is_empty() {
        format!("the server answered: {}", status.code().description())
    } else {
        status.message().to_owned()
    };
    let failure = Failure::new(message);
    match status.code() {
        Code::NotFound => failure.hint("`jobctl list` shows the jobs you can see"),
        Code::Unauthenticated => failure.hint(format!(
            "the server did not accept the client certificate {}",
            cert.display()
        )),
        Code::PermissionDenied => failure
            .hint("you may act only on your own jobs; members of the group admin may act on all"),
        _ => failure,
    }
}

/// Why a call failed, in a few words: the server's message, or for a broken connection the
/// innermost causes (without the links some libraries append to their messages).
pub fn reason(status: &Status) -> String {
    let text = match status.source() {
        Some(source) => chain(source),
        None if status.message().is_empty() => status.code().description().to_owned(),
        None => status.message().to_owned(),
    };
    let text = text.split(": https://").next().unwrap_or_default();
    one_line(text)
}

/// Whether `status` is a broken connection rather than the server's answer: worth retrying
/// once the server is back. A refused certificate is not, however it arrived.
pub fn is_transient(status: &Status) -> bool {
    if tls_alert(status).is_some() {
        return false;
    }
    // UNAVAILABLE is what the server says while shutting down and what tonic says when it
    // cannot connect; a status with a source was made on our side from a broken connection.
    status.code() == Code::Unavailable || status.source().is_some()
}

/// Writing the job's output or our own answer failed for a reason other than a closed pipe.
pub fn write(error: &io::Error) -> Failure {
    Failure::new(format!("cannot write output: {error}"))
}

/// Anything else the operating system refused us (e.g. installing the Ctrl-C handler).
pub fn system(what: &str, error: &io::Error) -> Failure {
    Failure::new(format!("{what}: {error}"))
}

fn unreachable_hint(failure: Failure) -> Failure {
    failure.hint("is jobworkerd running and listening there? Choose the server with --server or JOBCTL_SERVER")
}

fn refused_certificate(alert: &str, cert: &Path) -> Failure {
    Failure::new(format!(
        "the server refused the client certificate {} (TLS alert: {alert})",
        cert.display()
    ))
    .hint("the certificate must be issued by the CA the server trusts for clients (its --ca) and be valid now")
}

/// The TLS alert the server sent us, if one is somewhere in `error`'s chain.
///
/// With TLS 1.3 the server judges the client's certificate after the client has finished its
/// side of the handshake, so a refusal arrives as an alert on the first read: inside an I/O
/// error, inside HTTP/2, inside a gRPC status. Only the text survives every layer.
fn tls_alert(error: &(dyn Error + 'static)) -> Option<String> {
    const MARKER: &str = "received fatal alert: ";
    let mut next = Some(error);
    while let Some(current) = next {
        let text = current.to_string();
        if let Some(at) = text.find(MARKER) {
            let alert = &text[at + MARKER.len()..];
            let end = alert
                .find(|c: char| !c.is_ascii_alphanumeric())
                .unwrap_or(alert.len());
            return Some(alert[..end].to_owned());
        }
        next = current.source();
    }
    None
}

/// `error` and its sources as one line, "outer: inner: innermost", skipping a source whose
/// text its parent already includes.
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(source) = next {
        let part = source.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = source.source();
    }
    text
}

/// Messages from the server or the OS could contain newlines; the contract is one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn a_failure_prints_one_error_line_and_one_hint_line() {
        let failure =
            Failure::new("job x not found").hint("`jobctl list` shows the jobs you can see");
        assert_eq!(
            failure.to_string(),
            "jobctl: error: job x not found\nhint: `jobctl list` shows the jobs you can see"
        );
    }

    #[test]
    fn multi_line_messages_are_folded_into_one() {
        assert_eq!(Failure::new("a\nb  c\n").message, "a b c");
    }

    #[test]
    fn not_found_hints_at_list() {
        let failure = status(
            &Status::not_found("job 1 not found"),
            Path::new("alice.pem"),
        );
        assert_eq!(failure.message, "job 1 not found");
        assert_eq!(
            failure.hint.as_deref(),
            Some("`jobctl list` shows the jobs you can see")
        );
    }

    #[test]
    fn invalid_argument_is_the_servers_message_alone() {
        let failure = status(
            &Status::invalid_argument("cannot execute nosuchcmd: No such file or directory"),
            Path::new("alice.pem"),
        );
        assert_eq!(
            failure,
            Failure::new("cannot execute nosuchcmd: No such file or directory")
        );
    }

    #[test]
    fn a_broken_connection_is_transient_and_its_reason_is_short() {
        let io = io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "peer closed connection without sending TLS close_notify: \
             https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof",
        );
        let status = Status::from_error(Box::new(io));
        assert!(is_transient(&status));
        assert_eq!(
            reason(&status),
            "peer closed connection without sending TLS close_notify"
        );
        assert!(is_transient(&Status::unavailable(
            "the server is shutting down"
        )));
        assert!(!is_transient(&Status::not_found("job x not found")));
        assert!(!is_transient(&Status::from_error(Box::new(
            io::Error::new(
                io::ErrorKind::InvalidData,
                "received fatal alert: UnknownCA",
            )
        ))));
    }

    #[test]
    fn a_tls_alert_anywhere_in_the_chain_is_a_refused_certificate() {
        let io = io::Error::new(
            io::ErrorKind::InvalidData,
            "received fatal alert: UnknownCA",
        );
        let failure = status(
            &Status::from_error(Box::new(io)),
            &PathBuf::from("mallory.pem"),
        );
        assert_eq!(
            failure.message,
            "the server refused the client certificate mallory.pem (TLS alert: UnknownCA)"
        );
    }
}
