//! Connecting to the server: the mutual-TLS connection the settings describe.

use std::path::PathBuf;
use std::time::Duration;

use jobworker_api::pb::job_worker_client::JobWorkerClient;
use tonic::transport::Channel;

use crate::error::{self, Failure};
use crate::settings::Settings;

/// How long we wait for the server before telling the user it is unreachable: long enough for
/// a loaded server's TLS handshake, short enough that a typo in --server is noticed quickly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected client, and what error messages need to know about the connection.
pub struct Connection {
    /// The gRPC client; cheap to clone (clones share the connection).
    pub client: JobWorkerClient<Channel>,
    /// The client certificate, named when the server refuses it.
    pub cert: PathBuf,
}

impl Connection {
    /// Loads the TLS files and connects to the server.
    pub async fn open(settings: &Settings) -> Result<Connection, Failure> {
        let files = &settings.files;
        let config =
            jobworker_api::client_config(&files.ca.path, &files.cert.path, &files.key.path)
                .map_err(|e| error::tls_files(&e, files))?;
        let cert = files.cert.path.clone();
        let server = &settings.server;
        let client = tokio::time::timeout(CONNECT_TIMEOUT, jobworker_api::connect(server, config))
            .await
            .map_err(|_elapsed| error::connect_timeout(server, CONNECT_TIMEOUT.as_secs()))?
            .map_err(|e| error::connect(&e, &cert))?;
        Ok(Connection { client, cert })
    }

    /// Turns a failed call's status into the failure to report.
    pub fn failure(&self, status: &tonic::Status) -> Failure {
        error::status(status, &self.cert)
    }
}
