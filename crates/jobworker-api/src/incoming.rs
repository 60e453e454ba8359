//! Server-side TLS handshakes: one [`handshake`] bounded by a timeout, the reason it failed
//! ([`HandshakeFailure`], for logs and metrics), and [`tls_incoming`], an accept loop for a
//! tonic `Server`.
//!
//! tonic's own TLS support cannot restrict versions, suites or groups, so TLS is accepted here
//! with the configuration from [`crate::tls`]. `jobworkerd` runs [`handshake`] in its own
//! connection loop (it needs hyper's HTTP/2 settings, a connection cap and the verified
//! identity once per connection). [`TlsIncoming`] serves any tonic `Server` through
//! `serve_with_incoming_shutdown`; because tonic implements `Connected` for
//! `tokio_rustls::server::TlsStream<TcpStream>` (feature `tls-connect-info`), its handlers
//! still get `request.peer_certs()`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tracing::{debug, warn};

/// How long accepting pauses after an error that is not about one connection (e.g. EMFILE):
/// retrying at once would spin while the process is out of file descriptors.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// A stream of established mutual-TLS connections, for
/// `tonic::transport::Server::serve_with_incoming_shutdown`.
///
/// Every handshake runs in its own task bounded by the handshake timeout, so a slow or silent
/// client delays only itself. A failed or timed-out handshake is logged and skipped; the
/// stream never ends and never yields an error. Dropping it closes the listening socket and
/// aborts the handshakes in flight: nothing outlives it.
pub struct TlsIncoming {
    /// Where connections come from; owned, so dropping the stream releases the port.
    listener: TcpListener,
    /// Runs the TLS handshake with the server configuration.
    acceptor: TlsAcceptor,
    /// The most a client may take to complete its handshake.
    handshake_timeout: Duration,
    /// Handshakes in flight. Dropping the set aborts them.
    handshakes: JoinSet<Option<TlsStream<TcpStream>>>,
    /// Set while accepting is paused after a resource error.
    pause: Option<Pin<Box<Sleep>>>,
}

/// Accepts connections on `listener` and completes each one's TLS handshake with `config`
/// within `handshake_timeout`.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
) -> TlsIncoming {
    TlsIncoming {
        listener,
        acceptor: TlsAcceptor::from(config),
        handshake_timeout,
        handshakes: JoinSet::new(),
        pause: None,
    }
}

impl TlsIncoming {
    /// The address being listened on (useful after binding port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Starts a handshake task for every connection waiting in the backlog.
    ///
    /// Returns once the listener has nothing more (its waker is then registered) or accepting
    /// is paused (the pause timer's waker is). The loop cannot monopolise the executor:
    /// `poll_accept` draws on tokio's cooperative budget and yields when it runs out.
    fn accept_waiting(&mut self, cx: &mut Context<'_>) {
        loop {
            if let Some(pause) = &mut self.pause {
                if pause.as_mut().poll(cx).is_pending() {
                    return;
                }
                self.pause = None;
            }
            match self.listener.poll_accept(cx) {
                Poll::Ready(Ok((tcp, peer))) => {
                    // gRPC calls are small and latency-bound: no Nagle delays.
                    if let Err(error) = tcp.set_nodelay(true) {
                        debug!(%peer, %error, "cannot set TCP_NODELAY");
                    }
                    self.handshakes.spawn(handshake_or_log(
                        self.acceptor.clone(),
                        tcp,
                        peer,
                        self.handshake_timeout,
                    ));
                }
                // The client gave up before we got to it; nothing is wrong with the listener.
                Poll::Ready(Err(error)) if is_per_connection(&error) => {
                    debug!(%error, "connection lost before accept");
                }
                Poll::Ready(Err(error)) => {
                    warn!(%error, pause = ?ACCEPT_ERROR_PAUSE, "cannot accept connections");
                    self.pause = Some(Box::pin(tokio::time::sleep(ACCEPT_ERROR_PAUSE)));
                }
                Poll::Pending => return,
            }
        }
    }
}

impl Stream for TlsIncoming {
    // Failures are per connection and handled here, so there is no error to yield; tonic
    // still wants a `Result`.
    type Item = Result<TlsStream<TcpStream>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Every field is Unpin, so the stream is too.
        let this = self.get_mut();
        this.accept_waiting(cx);
        loop {
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(stream)))) => return Poll::Ready(Some(Ok(stream))),
                // The task logged why the handshake failed.
                Poll::Ready(Some(Ok(None))) => {}
                // A panicking handshake loses one connection, not the server.
                Poll::Ready(Some(Err(error))) => warn!(%error, "TLS handshake task failed"),
                // No handshakes in flight: the listener (or the pause) will wake us.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Why a server-side handshake did not complete, by the TLS alert the server sent or received
/// (or the timeout): few enough values to label a metric and to summarise in a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HandshakeFailure {
    /// The client sent no certificate (alert `certificate_required`).
    NoClientCert,
    /// The client's certificate (or, as the client says, ours) is not from a trusted CA.
    UnknownCa,
    /// A certificate has expired or is not yet valid.
    Expired,
    /// Any other certificate problem: wrong EKU, bad encoding, bad signature, revoked.
    BadCertificate,
    /// The client does not speak TLS 1.3 (alert `protocol_version`).
    ProtocolVersion,
    /// No cipher suite, key-exchange group or signature scheme in common.
    HandshakeFailure,
    /// The client did not finish within the handshake timeout.
    Timeout,
    /// Anything else: a connection closed or reset mid-handshake, bytes that are not TLS.
    Other,
}

impl HandshakeFailure {
    /// Every reason, in a fixed order (e.g. to pre-register metric labels).
    pub const ALL: [HandshakeFailure; 8] = [
        HandshakeFailure::NoClientCert,
        HandshakeFailure::UnknownCa,
        HandshakeFailure::Expired,
        HandshakeFailure::BadCertificate,
        HandshakeFailure::ProtocolVersion,
        HandshakeFailure::HandshakeFailure,
        HandshakeFailure::Timeout,
        HandshakeFailure::Other,
    ];

    /// A short snake_case name: a metric label value, a word in a log line.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::NoClientCert => "no_client_cert",
            HandshakeFailure::UnknownCa => "unknown_ca",
            HandshakeFailure::Expired => "expired",
            HandshakeFailure::BadCertificate => "bad_certificate",
            HandshakeFailure::ProtocolVersion => "protocol_version",
            HandshakeFailure::HandshakeFailure => "handshake_failure",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Other => "other",
        }
    }

    /// The reason behind a rustls error raised by (or reported to) the server's handshake.
    pub fn of(error: &rustls::Error) -> HandshakeFailure {
        use rustls::{AlertDescription as Alert, Error, PeerIncompatible as Incompatible};
        match error {
            Error::NoCertificatesPresented => HandshakeFailure::NoClientCert,
            // rustls picks the alert it sends from the certificate error; so do we, so that the
            // reason matches what the client was told.
            Error::InvalidCertificate(certificate) => match Alert::from(certificate.clone()) {
                Alert::UnknownCA => HandshakeFailure::UnknownCa,
                Alert::CertificateExpired => HandshakeFailure::Expired,
                _ => HandshakeFailure::BadCertificate,
            },
            Error::PeerIncompatible(
                Incompatible::SupportedVersionsExtensionRequired
                | Incompatible::Tls12NotOffered
                | Incompatible::Tls12NotOfferedOrEnabled
                | Incompatible::Tls13RequiredForQuic
                | Incompatible::ServerDoesNotSupportTls12Or13
                | Incompatible::ServerTlsVersionIsDisabledByOurConfig,
            ) => HandshakeFailure::ProtocolVersion,
            Error::PeerIncompatible(_) => HandshakeFailure::HandshakeFailure,
            // The client refused the handshake, usually because of our certificate.
            Error::AlertReceived(alert) => match alert {
                Alert::CertificateRequired => HandshakeFailure::NoClientCert,
                Alert::UnknownCA => HandshakeFailure::UnknownCa,
                Alert::CertificateExpired => HandshakeFailure::Expired,
                Alert::BadCertificate
                | Alert::UnsupportedCertificate
                | Alert::CertificateRevoked
                | Alert::CertificateUnknown => HandshakeFailure::BadCertificate,
                Alert::ProtocolVersion => HandshakeFailure::ProtocolVersion,
                Alert::HandshakeFailure | Alert::InsufficientSecurity => {
                    HandshakeFailure::HandshakeFailure
                }
                _ => HandshakeFailure::Other,
            },
            _ => HandshakeFailure::Other,
        }
    }
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A server-side handshake that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client did not finish the handshake in time.
    #[error("TLS handshake timed out after {0:?}")]
    Timeout(Duration),
    /// TLS failed (the error wraps a `rustls::Error` when TLS itself refused), or the
    /// connection broke.
    #[error("TLS handshake failed")]
    Failed(#[source] io::Error),
}

impl HandshakeError {
    /// Why, in one of a few words.
    pub fn reason(&self) -> HandshakeFailure {
        match self {
            HandshakeError::Timeout(_) => HandshakeFailure::Timeout,
            HandshakeError::Failed(error) => error
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .map_or(HandshakeFailure::Other, HandshakeFailure::of),
        }
    }
}

/// The server side of one TLS handshake on `tcp`, bounded by `timeout`.
///
/// With TLS 1.3 the client certificate is verified before this returns, so a returned stream
/// always carries a verified client chain (`get_ref().1.peer_certificates()`).
pub async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, HandshakeError> {
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(error)) => Err(HandshakeError::Failed(error)),
        Err(_elapsed) => Err(HandshakeError::Timeout(timeout)),
    }
}

/// [`handshake`] for [`TlsIncoming`]: `None`, after logging why, if it did not complete.
///
/// Failures are logged at debug: anyone who can reach the port can cause them, so they must
/// not be able to flood the log.
async fn handshake_or_log(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<TlsStream<TcpStream>> {
    match handshake(&acceptor, tcp, timeout).await {
        Ok(stream) => Some(stream),
        Err(error) => {
            debug!(%peer, reason = %error.reason(), error = ?error, "TLS handshake failed");
            None
        }
    }
}

/// Whether an accept error concerns only the connection being accepted (the client gave up
/// first), rather than the listener or the process (e.g. out of file descriptors).
pub fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{AlertDescription, CertificateError, Error, PeerIncompatible};

    #[test]
    fn refusals_of_the_client_certificate_are_named_like_the_alert_sent() {
        let cases = [
            (
                Error::NoCertificatesPresented,
                HandshakeFailure::NoClientCert,
            ),
            (
                Error::InvalidCertificate(CertificateError::UnknownIssuer),
                HandshakeFailure::UnknownCa,
            ),
            (
                Error::InvalidCertificate(CertificateError::Expired),
                HandshakeFailure::Expired,
            ),
            (
                Error::InvalidCertificate(CertificateError::NotValidYet),
                HandshakeFailure::Expired,
            ),
            (
                Error::InvalidCertificate(CertificateError::InvalidPurpose),
                HandshakeFailure::BadCertificate,
            ),
            (
                Error::InvalidCertificate(CertificateError::BadEncoding),
                HandshakeFailure::BadCertificate,
            ),
        ];
        for (error, reason) in cases {
            assert_eq!(HandshakeFailure::of(&error), reason, "{error:?}");
        }
    }

    #[test]
    fn old_protocols_and_missing_algorithms_are_told_apart() {
        let cases = [
            (
                PeerIncompatible::Tls12NotOfferedOrEnabled,
                HandshakeFailure::ProtocolVersion,
            ),
            (
                PeerIncompatible::SupportedVersionsExtensionRequired,
                HandshakeFailure::ProtocolVersion,
            ),
            (
                PeerIncompatible::NoCipherSuitesInCommon,
                HandshakeFailure::HandshakeFailure,
            ),
            (
                PeerIncompatible::NoKxGroupsInCommon,
                HandshakeFailure::HandshakeFailure,
            ),
        ];
        for (incompatible, reason) in cases {
            let error = Error::PeerIncompatible(incompatible);
            assert_eq!(HandshakeFailure::of(&error), reason, "{error:?}");
        }
    }

    #[test]
    fn a_client_refusing_our_certificate_is_named_by_its_alert() {
        let error = Error::AlertReceived(AlertDescription::UnknownCA);
        assert_eq!(HandshakeFailure::of(&error), HandshakeFailure::UnknownCa);
        let error = Error::AlertReceived(AlertDescription::DecodeError);
        assert_eq!(HandshakeFailure::of(&error), HandshakeFailure::Other);
    }

    #[test]
    fn broken_connections_and_timeouts_have_their_own_reasons() {
        let reset = HandshakeError::Failed(io::ErrorKind::ConnectionReset.into());
        assert_eq!(reset.reason(), HandshakeFailure::Other);
        let wrapped = HandshakeError::Failed(io::Error::new(
            io::ErrorKind::InvalidData,
            Error::NoCertificatesPresented,
        ));
        assert_eq!(wrapped.reason(), HandshakeFailure::NoClientCert);
        let late = HandshakeError::Timeout(Duration::from_secs(10));
        assert_eq!(late.reason(), HandshakeFailure::Timeout);
    }

    #[test]
    fn every_reason_has_a_distinct_label() {
        let mut labels: Vec<&str> = HandshakeFailure::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), HandshakeFailure::ALL.len());
    }
}
