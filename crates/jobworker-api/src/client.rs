//! Connecting to a jobworker server over mutual TLS.
//!
//! The TCP and TLS connection is made here with tokio-rustls and the configuration from
//! [`crate::tls`]; tonic only speaks HTTP/2 over it (`Endpoint::connect_with_connector`).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::pb::job_worker_client::JobWorkerClient;

/// The most one connection attempt (TCP connect and TLS handshake) may take, unless the caller
/// says otherwise ([`connect_within`]).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no connection to the server could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The endpoint string is not something we can dial.
    #[error("invalid server address {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The TCP connection failed (e.g. refused: is the server running, on this port?).
    #[error("cannot connect to {address}")]
    Connect {
        /// host:port.
        address: String,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// The TLS handshake failed: the server's certificate was refused (unknown CA, wrong
    /// name, expired) or the server refused ours (an alert such as `CertificateExpired`).
    #[error("TLS handshake with {address} failed")]
    Handshake {
        /// host:port.
        address: String,
        /// rustls' reason, e.g. "invalid peer certificate: UnknownIssuer".
        #[source]
        source: io::Error,
    },
    /// Neither success nor failure within [`CONNECT_TIMEOUT`].
    #[error("timed out connecting to {address} after {timeout:?}")]
    Timeout {
        /// host:port.
        address: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// TLS succeeded but HTTP/2 could not be set up over it.
    #[error("cannot start HTTP/2 with {address}")]
    Http2 {
        /// host:port.
        address: String,
        /// tonic's reason.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Connects to the server at `endpoint` (`https://host:port` or `host:port`) and returns a
/// client for it.
///
/// The server must present a certificate for `host` (a DNS name, or an IP address matched
/// against the certificate's IP SANs) issued by the CA in `config`.
///
/// The first connection is made before this returns, so its failure is reported here with a
/// precise reason. If it later breaks, the channel reconnects on the next call.
pub async fn connect(
    endpoint: &str,
    config: Arc<ClientConfig>,
) -> Result<JobWorkerClient<Channel>, ConnectError> {
    connect_within(endpoint, config, CONNECT_TIMEOUT).await
}

/// [`connect`], with each connection attempt (the first and every reconnection) bounded by
/// `timeout` instead of [`CONNECT_TIMEOUT`].
pub async fn connect_within(
    endpoint: &str,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<JobWorkerClient<Channel>, ConnectError> {
    let target = Target::parse(endpoint)?;
    let connector = TlsConnector::from(config);

    let mut first = Some(dial(&target, &connector, timeout).await?);
    let dial_target = target.clone();
    let make_connection = tower::service_fn(move |_: Uri| {
        let ready = first.take();
        let target = dial_target.clone();
        let connector = connector.clone();
        async move {
            let stream = match ready {
                Some(stream) => stream,
                None => dial(&target, &connector, timeout).await?,
            };
            Ok::<_, ConnectError>(TokioIo::new(stream))
        }
    });

    // tonic gets an http:// URI so that it never tries TLS itself, whatever tonic features
    // another crate in the build enables (with its TLS support compiled in, tonic refuses
    // https:// without its own TLS config). Requests still carry the https origin.
    let channel = Endpoint::from(target.plain_uri.clone())
        .origin(target.origin.clone())
        .connect_with_connector(make_connection)
        .await
        .map_err(|source| ConnectError::Http2 {
            address: target.address.clone(),
            source,
        })?;
    Ok(JobWorkerClient::new(channel))
}

/// Where to connect and what name to expect on the server's certificate.
#[derive(Clone)]
struct Target {
    /// host:port as given (IPv6 in brackets), for messages.
    address: String,
    /// The host without brackets, for DNS resolution.
    host: String,
    port: u16,
    /// What the server's certificate must be valid for.
    server_name: ServerName<'static>,
    /// `https://host:port`: the origin requests carry.
    origin: Uri,
    /// `http://host:port`: what tonic is told to dial (see [`connect`]).
    plain_uri: Uri,
}

impl Target {
    fn parse(endpoint: &str) -> Result<Target, ConnectError> {
        let invalid = |reason| ConnectError::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            reason,
        };
        let with_scheme = if endpoint.contains("://") {
            endpoint.to_owned()
        } else {
            format!("https://{endpoint}")
        };
        let uri: Uri = with_scheme
            .parse()
            .map_err(|_| invalid("expected https://host:port or host:port"))?;
        if uri.scheme_str() != Some("https") {
            return Err(invalid(
                "only https:// is supported: every call uses mutual TLS",
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(invalid("a path is not allowed"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| invalid("a host is required"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("user information is not allowed"));
        }
        let port = authority
            .port_u16()
            .ok_or_else(|| invalid("a port is required, e.g. localhost:50051"))?;
        // `Authority::host` keeps the brackets of an IPv6 literal.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| invalid("the host is neither a DNS name nor an IP address"))?;
        let with_scheme = |scheme: &str| {
            Uri::builder()
                .scheme(scheme)
                .authority(authority.clone())
                .path_and_query("/")
                .build()
                .map_err(|_| invalid("expected https://host:port or host:port"))
        };
        Ok(Target {
            address: authority.to_string(),
            host,
            port,
            server_name,
            origin: with_scheme("https")?,
            plain_uri: with_scheme("http")?,
        })
    }
}

/// One TCP connection and TLS handshake, bounded by `timeout`.
async fn dial(
    target: &Target,
    connector: &TlsConnector,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let attempt = async {
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|source| ConnectError::Connect {
                address: target.address.clone(),
                source,
            })?;
        // gRPC calls are small and latency-bound: no Nagle delays.
        tcp.set_nodelay(true)
            .map_err(|source| ConnectError::Connect {
                address: target.address.clone(),
                source,
            })?;
        let handshake = async {
            let mut tls = connector.connect(target.server_name.clone(), tcp).await?;
            await_acceptance(&mut tls).await?;
            Ok(tls)
        };
        handshake.await.map_err(|source| ConnectError::Handshake {
            address: target.address.clone(),
            source,
        })
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_elapsed| ConnectError::Timeout {
            address: target.address.clone(),
            timeout,
        })?
}

/// Waits until the server has accepted our certificate.
///
/// In TLS 1.3 the client's handshake is complete before the server has checked the client's
/// certificate, so a refusal arrives afterwards, as an alert. Left alone it would surface on
/// the first call as an opaque "transport error". The server's first record after the
/// handshake is that alert or, once it has accepted us, session tickets (if it issues any)
/// or its HTTP/2 SETTINGS frame (an HTTP/2 server speaks first). So records are read and
/// decrypted until one of those arrives; data stays in rustls' buffer, where the HTTP/2
/// client reads it as usual.
async fn await_acceptance(tls: &mut TlsStream<TcpStream>) -> io::Result<()> {
    let (tcp, conn) = tls.get_mut();
    loop {
        let state = conn
            .process_new_packets()
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        if conn.tls13_tickets_received() > 0 || state.plaintext_bytes_to_read() > 0 {
            return Ok(());
        }
        if state.peer_has_closed() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        tcp.readable().await?;
        match conn.read_tls(&mut NonBlocking(tcp)) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            // Readiness can be spurious.
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
}

/// `std::io::Read` over a tokio socket, for rustls' `read_tls`: reads what is there.
struct NonBlocking<'a>(&'a TcpStream);

impl io::Read for NonBlocking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(endpoint: &str) -> Result<Target, ConnectError> {
        Target::parse(endpoint)
    }

    #[test]
    fn host_port_and_https_url_mean_the_same_server() {
        for endpoint in [
            "127.0.0.1:50051",
            "https://127.0.0.1:50051",
            "https://127.0.0.1:50051/",
        ] {
            let target = parse(endpoint).expect(endpoint);
            assert_eq!(target.address, "127.0.0.1:50051", "{endpoint}");
            assert_eq!(target.port, 50051, "{endpoint}");
            assert!(
                matches!(target.server_name, ServerName::IpAddress(_)),
                "{endpoint}: an IP host must be matched against IP SANs"
            );
            assert_eq!(target.origin.to_string(), "https://127.0.0.1:50051/");
        }
    }

    #[test]
    fn ipv6_literals_lose_their_brackets_for_dialling_and_matching() {
        let target = parse("[::1]:50051").expect("parse");
        assert_eq!(target.host, "::1");
        assert_eq!(target.address, "[::1]:50051");
        assert!(matches!(target.server_name, ServerName::IpAddress(_)));
    }

    #[test]
    fn dns_names_are_matched_as_dns_names() {
        let target = parse("localhost:50051").expect("parse");
        assert!(matches!(target.server_name, ServerName::DnsName(_)));
    }

    #[test]
    fn endpoints_we_cannot_dial_securely_are_refused() {
        for endpoint in [
            "http://127.0.0.1:50051",
            "localhost",
            "https://localhost/",
            "localhost:50051/jobs",
            "user@localhost:50051",
            "",
        ] {
            let result = parse(endpoint);
            assert!(
                matches!(result, Err(ConnectError::InvalidEndpoint { .. })),
                "{endpoint:?} accepted"
            );
        }
    }
}
