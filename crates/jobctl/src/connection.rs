//! Connecting to the server: which certificate files to use, and the mutual-TLS connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jobworker_api::pb::job_worker_client::JobWorkerClient;
use tonic::transport::Channel;

use crate::cli::ConnectionArgs;
use crate::error::{self, Failure};

/// How long we wait for the server before telling the user it is unreachable: long enough for
/// a loaded server's TLS handshake, short enough that a typo in --server is noticed quickly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The three files of a client's TLS identity, and whether each was named explicitly (by flag
/// or environment) or derived from --pki-dir and --user; the hints differ.
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
    /// Given with its own flag (or environment variable) rather than derived from the PKI dir.
    pub explicit: bool,
}

impl TlsFile {
    fn resolve(explicit: Option<&PathBuf>, derived: PathBuf) -> TlsFile {
        match explicit {
            Some(path) => TlsFile {
                path: path.clone(),
                explicit: true,
            },
            None => TlsFile {
                path: derived,
                explicit: false,
            },
        }
    }
}

impl TlsFiles {
    /// The files selected by the connection flags.
    pub fn from_args(args: &ConnectionArgs) -> TlsFiles {
        let dir = &args.pki_dir;
        TlsFiles {
            ca: TlsFile::resolve(args.ca.as_ref(), dir.join("ca.pem")),
            cert: TlsFile::resolve(args.cert.as_ref(), dir.join(format!("{}.pem", args.user))),
            key: TlsFile::resolve(args.key.as_ref(), dir.join(format!("{}.key", args.user))),
        }
    }

    /// The flag (and environment variable) that named `path` explicitly, if one did.
    pub fn flag_for(&self, path: &Path) -> Option<&'static str> {
        [
            (&self.ca, "--ca (JOBCTL_CA)"),
            (&self.cert, "--cert (JOBCTL_CERT)"),
            (&self.key, "--key (JOBCTL_KEY)"),
        ]
        .into_iter()
        .find(|(file, _)| file.explicit && file.path == path)
        .map(|(_, flag)| flag)
    }
}

/// A connected client, and what error messages need to know about the connection.
pub struct Connection {
    /// The gRPC client; cheap to clone (clones share the connection).
    pub client: JobWorkerClient<Channel>,
    /// The client certificate, named when the server refuses it.
    pub cert: PathBuf,
}

impl Connection {
    /// Loads the TLS files and connects to the server.
    pub async fn open(args: &ConnectionArgs) -> Result<Connection, Failure> {
        let files = TlsFiles::from_args(args);
        let config =
            jobworker_api::client_config(&files.ca.path, &files.cert.path, &files.key.path)
                .map_err(|e| error::tls_files(&e, &files))?;
        let cert = files.cert.path;
        let client = tokio::time::timeout(
            CONNECT_TIMEOUT,
            jobworker_api::connect(&args.server, config),
        )
        .await
        .map_err(|_elapsed| error::connect_timeout(&args.server, CONNECT_TIMEOUT.as_secs()))?
        .map_err(|e| error::connect(&e, &cert))?;
        Ok(Connection { client, cert })
    }

    /// Turns a failed call's status into the failure to report.
    pub fn failure(&self, status: &tonic::Status) -> Failure {
        error::status(status, &self.cert)
    }
}
