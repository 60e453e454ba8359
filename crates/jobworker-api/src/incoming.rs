//! Accepting mutual-TLS connections for a tonic server.
//!
//! tonic's own TLS support cannot restrict versions, suites or groups, so the daemon accepts
//! TCP and TLS here, with the configuration from [`crate::tls`], and hands tonic finished TLS
//! streams through `Server::serve_with_incoming_shutdown`. Because tonic implements
//! `Connected` for `tokio_rustls::server::TlsStream<TcpStream>` (feature `tls-connect-info`),
//! handlers still get `request.peer_certs()`.

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
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

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
                    self.handshakes.spawn(handshake(
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

/// One handshake, bounded by `timeout`; `None` (after logging why) if it did not complete.
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            warn!(%peer, %error, "TLS handshake failed");
            None
        }
        Err(_elapsed) => {
            warn!(%peer, ?timeout, "TLS handshake timed out");
            None
        }
    }
}

/// Whether an accept error concerns only the connection being accepted.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
