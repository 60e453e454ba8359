//! Telling the service manager how start-up and shutdown go: systemd's `sd_notify` protocol,
//! which is small enough not to need libsystemd.
//!
//! Under `Type=notify` systemd passes a datagram socket in `$NOTIFY_SOCKET` (a path, or an
//! abstract name written with a leading `@`) and waits for `READY=1` before it considers the
//! service started: units ordered after jobworkerd then start only once it accepts
//! connections. `STOPPING=1` tells it that the (possibly long: jobs get a grace period)
//! shutdown has begun. Without `$NOTIFY_SOCKET` every call is a no-op.

use std::ffi::OsString;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use tracing::warn;

/// Why `$NOTIFY_SOCKET` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Neither an absolute path nor `@name`; newer transports (e.g. `vsock:`) are not supported.
    #[error("NOTIFY_SOCKET={0:?} is neither an absolute path nor an abstract socket name (@name)")]
    Unsupported(OsString),
    /// The name does not fit a UNIX socket address.
    #[error("NOTIFY_SOCKET={value:?} is not a valid socket address")]
    Address {
        /// The variable's value.
        value: OsString,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No socket to send from.
    #[error("cannot create a socket to notify the service manager")]
    Socket(#[source] io::Error),
}

/// Where notifications go, if anywhere.
pub struct Notifier {
    /// An unbound datagram socket and systemd's address; `None` when not run under
    /// `Type=notify`.
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`. Call it once at start-up, from the main process: systemd
    /// accepts notifications only from the service's main PID (`NotifyAccess=main`).
    pub fn from_env() -> Result<Notifier, NotifyError> {
        let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(Notifier { target: None });
        };
        let bytes = value.as_bytes();
        let address = match bytes.first() {
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
            Some(b'/') => SocketAddr::from_pathname(&value),
            _ => return Err(NotifyError::Unsupported(value)),
        }
        .map_err(|source| NotifyError::Address {
            value: value.clone(),
            source,
        })?;
        let socket = UnixDatagram::unbound().map_err(NotifyError::Socket)?;
        Ok(Notifier {
            target: Some((socket, address)),
        })
    }

    /// The service is up: the listener is bound and serving.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// Shutdown has begun.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={status}"));
    }

    /// One datagram; a failure is logged, not fatal: the daemon works without it, and systemd
    /// reports a start that never became ready by itself.
    fn send(&self, message: &str) {
        let Some((socket, address)) = &self.target else {
            return;
        };
        if let Err(error) = socket.send_to_addr(message.as_bytes(), address) {
            warn!(%error, "cannot notify the service manager (NOTIFY_SOCKET)");
        }
    }
}
