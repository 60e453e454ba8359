//! Connecting to the server: the mutual-TLS connection the settings describe.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use jobworker_api::pb::job_worker_client::JobWorkerClient;
use tonic::Status;
use tonic::transport::Channel;

use crate::error::{self, Failure};
use crate::settings::Settings;

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
        // Each attempt, the first and every reconnection, within --connect-timeout.
        let client = jobworker_api::connect_within(server, config, settings.connect_timeout)
            .await
            .map_err(|e| error::connect(&e, &cert))?;
        Ok(Connection { client, cert })
    }

    /// Turns a failed call's status into the failure to report.
    pub fn failure(&self, status: &tonic::Status) -> Failure {
        error::status(status, &self.cert)
    }
}

/// How long a broken connection is retried before giving up: long enough for the server to
/// restart (an upgrade), short enough that a script does not hang on a server that is gone.
pub const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// First and longest pause between reconnection attempts.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// Retrying a call across a broken connection: exponential backoff, a notice on stderr when
/// the connection breaks and when it is back, and a deadline.
///
/// The channel itself redials on the next call (see [`jobworker_api::connect`]); this only
/// decides whether and when to make that call.
pub struct Reconnect {
    /// The next pause.
    pause: Duration,
    /// When we give up; `Some` while disconnected.
    give_up_at: Option<Instant>,
}

impl Reconnect {
    /// Connected, nothing to retry yet.
    pub fn new() -> Reconnect {
        Reconnect {
            pause: RECONNECT_FIRST,
            give_up_at: None,
        }
    }

    /// A call failed with `status`: returns how long to wait before trying again, or the
    /// failure to report when the error is not a broken connection or the deadline passed.
    pub fn failed(
        &mut self,
        status: &Status,
        connection: &Connection,
    ) -> Result<Duration, Failure> {
        if !error::is_transient(status) {
            return Err(connection.failure(status));
        }
        let now = Instant::now();
        let give_up_at = *self.give_up_at.get_or_insert_with(|| {
            // Not eprintln!, which panics when stderr is a closed pipe.
            let _ = writeln!(
                io::stderr(),
                "jobctl: lost the connection to the server ({}); reconnecting for up to {}s",
                error::reason(status),
                RECONNECT_FOR.as_secs()
            );
            now + RECONNECT_FOR
        });
        if now >= give_up_at {
            return Err(connection.failure(status).hint(format!(
                "gave up reconnecting after {}s",
                RECONNECT_FOR.as_secs()
            )));
        }
        let pause = self.pause.min(give_up_at - now);
        self.pause = (self.pause * 2).min(RECONNECT_MAX);
        Ok(pause)
    }

    /// A call succeeded: says so if the connection had broken. `offset` is where a resumed
    /// output stream continues.
    pub fn succeeded(&mut self, offset: Option<u64>) {
        if self.give_up_at.take().is_some() {
            let _ = match offset {
                Some(offset) => writeln!(
                    io::stderr(),
                    "jobctl: reconnected; resuming the output at byte {offset}"
                ),
                None => writeln!(io::stderr(), "jobctl: reconnected"),
            };
        }
        self.pause = RECONNECT_FIRST;
    }
}
