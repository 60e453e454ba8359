//! gRPC end to end: a tonic server fed by `tls_incoming`, called through `connect`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use jobworker_api::pb::job_worker_server::{JobWorker, JobWorkerServer};
use jobworker_api::pb::{
    GetStatusRequest, GetStatusResponse, JobStatus, ListRequest, ListResponse, RemoveRequest,
    RemoveResponse, StartRequest, StartResponse, StopRequest, StopResponse, StreamOutputRequest,
    StreamOutputResponse, WaitRequest, WaitResponse,
};
use jobworker_api::pki::{Leaf, Validity};
use jobworker_api::{ConnectError, Identity, TlsIncoming, connect, tls_incoming};
use jobworker_testkit::{Pki, client_leaf};
use rustls::{AlertDescription, CertificateError, ServerConfig};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

/// Answers GetStatus with the caller's identity (owner = user, args = groups), read from the
/// connection's client certificate exactly as the daemon will.
struct WhoAmI;

#[tonic::async_trait]
impl JobWorker for WhoAmI {
    async fn get_status(
        &self,
        request: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusResponse>, Status> {
        let identity =
            Identity::from_request(&request).map_err(|e| Status::unauthenticated(e.to_string()))?;
        Ok(Response::new(GetStatusResponse {
            status: Some(JobStatus {
                job_id: request.into_inner().job_id,
                owner: identity.user,
                args: identity.groups,
                ..JobStatus::default()
            }),
        }))
    }

    async fn start(&self, _: Request<StartRequest>) -> Result<Response<StartResponse>, Status> {
        Err(Status::unimplemented("test server"))
    }

    async fn stop(&self, _: Request<StopRequest>) -> Result<Response<StopResponse>, Status> {
        Err(Status::unimplemented("test server"))
    }

    async fn list(&self, _: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        Err(Status::unimplemented("test server"))
    }

    async fn wait(&self, _: Request<WaitRequest>) -> Result<Response<WaitResponse>, Status> {
        Err(Status::unimplemented("test server"))
    }

    async fn remove(&self, _: Request<RemoveRequest>) -> Result<Response<RemoveResponse>, Status> {
        Err(Status::unimplemented("test server"))
    }

    type StreamOutputStream =
        Pin<Box<dyn Stream<Item = Result<StreamOutputResponse, Status>> + Send + 'static>>;

    async fn stream_output(
        &self,
        _: Request<StreamOutputRequest>,
    ) -> Result<Response<Self::StreamOutputStream>, Status> {
        Err(Status::unimplemented("test server"))
    }
}

/// A running test server; shut down (gracefully) when dropped.
struct Server {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(config: Arc<ServerConfig>, handshake_timeout: Duration) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let incoming = tls_incoming(listener, config, handshake_timeout);
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(JobWorkerServer::new(WhoAmI))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = signal.await;
                })
                .await
                .expect("serve");
        });
        Server {
            addr,
            shutdown: Some(shutdown),
            task,
        }
    }

    fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.task.abort();
    }
}

/// Calls GetStatus and returns (owner, groups) as the server saw them.
async fn who_am_i(endpoint: &str, client: Arc<rustls::ClientConfig>) -> (String, Vec<String>) {
    let mut client = connect(endpoint, client).await.expect("connect");
    let status = client
        .get_status(GetStatusRequest {
            job_id: "probe".to_owned(),
        })
        .await
        .expect("GetStatus")
        .into_inner()
        .status
        .expect("status");
    (status.owner, status.args)
}

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn handlers_see_the_verified_client_certificate() {
    let pki = Pki::new("test CA");
    let server = Server::start(pki.server_config(), LONG).await;
    let alice = pki.client_config_for(&pki.client("alice", &["admin", "dev"]));

    let (user, groups) = who_am_i(&server.endpoint(), alice).await;

    assert_eq!(user, "alice");
    assert_eq!(groups, ["admin", "dev"]);
}

#[tokio::test]
async fn connect_accepts_host_port_and_ip_literals() {
    let pki = Pki::new("test CA");
    let server = Server::start(pki.server_config(), LONG).await;
    let alice = pki.client_config_for(&pki.client("alice", &[]));

    let (user, _) = who_am_i(&server.addr.to_string(), alice).await;

    assert_eq!(user, "alice");
}

#[tokio::test]
async fn a_silent_client_does_not_delay_others() {
    let pki = Pki::new("test CA");
    let server = Server::start(pki.server_config(), LONG).await;
    let _silent = TcpStream::connect(server.addr).await.expect("connect");
    let alice = pki.client_config_for(&pki.client("alice", &[]));

    let call =
        tokio::time::timeout(Duration::from_secs(5), who_am_i(&server.endpoint(), alice)).await;

    assert!(call.is_ok(), "a silent connection stalled the server");
}

#[tokio::test]
async fn a_silent_client_is_disconnected_after_the_handshake_timeout() {
    let pki = Pki::new("test CA");
    let server = Server::start(pki.server_config(), Duration::from_millis(200)).await;
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");

    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;

    match read {
        Ok(Ok(0)) => {}
        Ok(Err(error)) if error.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the server to close the connection, got {other:?}"),
    }
}

/// The TLS error behind a `ConnectError::Handshake`, or a panic naming what came instead.
fn handshake_cause(error: &ConnectError) -> &rustls::Error {
    let ConnectError::Handshake { source, .. } = error else {
        panic!("expected Handshake, got {error:?}");
    };
    source
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("expected a TLS error, got {source:?}"))
}

#[tokio::test]
async fn a_failed_handshake_does_not_stop_the_server() {
    let pki = Pki::new("test CA");
    let server = Server::start(pki.server_config(), LONG).await;
    let other = Pki::new("another CA");
    let mallory = other.client("mallory", &[]);
    let (cert, key) = other.write("mallory", &mallory);
    let mallory = jobworker_api::tls::client_config(&pki.ca_path(), &cert, &key).expect("config");
    let refused = connect(&server.endpoint(), mallory)
        .await
        .expect_err("a certificate from another CA must be refused");
    assert!(
        matches!(
            handshake_cause(&refused),
            rustls::Error::AlertReceived(AlertDescription::UnknownCA)
        ),
        "{refused:?}"
    );

    let alice = pki.client_config_for(&pki.client("alice", &[]));
    let (user, _) = who_am_i(&server.endpoint(), alice).await;

    assert_eq!(user, "alice");
}

/// TLS 1.3 finishes the client's handshake before the server checks the client certificate;
/// `connect` must still report the refusal itself, not leave it to the first call.
#[tokio::test]
async fn connect_reports_a_refused_client_certificate() {
    let pki = Pki::new("test CA");
    let server = Server::start(pki.server_config(), LONG).await;
    let expired = pki.leaf(Leaf {
        validity: Validity::expired(),
        ..client_leaf("alice")
    });

    let error = connect(&server.endpoint(), pki.client_config_for(&expired))
        .await
        .expect_err("an expired certificate must be refused");

    assert!(
        matches!(
            handshake_cause(&error),
            rustls::Error::AlertReceived(AlertDescription::CertificateExpired)
        ),
        "{error:?}"
    );
    assert_eq!(
        format!(
            "{error}: {}",
            std::error::Error::source(&error).expect("source")
        ),
        format!(
            "TLS handshake with {} failed: received fatal alert: CertificateExpired",
            server.addr
        )
    );
}

#[tokio::test]
async fn dropping_the_incoming_stream_releases_the_port_and_aborts_handshakes() {
    let pki = Pki::new("test CA");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let mut incoming: TlsIncoming = tls_incoming(listener, pki.server_config(), LONG);
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    // Drive the stream until it has accepted the silent connection (nothing will be yielded).
    let none = tokio::time::timeout(Duration::from_millis(200), incoming.next()).await;
    assert!(none.is_err(), "a silent client produced a connection");

    drop(incoming);

    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the in-flight handshake outlived the stream: {read:?}"
    );
    let error = TcpStream::connect(addr)
        .await
        .expect_err("the port is still listening");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn connect_names_the_address_when_nothing_listens() {
    let pki = Pki::new("test CA");
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("local addr")
    };
    let alice = pki.client_config_for(&pki.client("alice", &[]));

    let error = connect(&addr.to_string(), alice)
        .await
        .expect_err("nothing listens");

    match &error {
        ConnectError::Connect { address, source } => {
            assert_eq!(address, &addr.to_string());
            assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused);
        }
        other => panic!("expected Connect, got {other:?}"),
    }
    assert_eq!(error.to_string(), format!("cannot connect to {addr}"));
}

#[tokio::test]
async fn connect_reports_an_untrusted_server_as_a_tls_failure() {
    let pki = Pki::new("test CA");
    let other = Pki::new("another CA");
    let server = Server::start(other.server_config(), LONG).await;
    let alice = pki.client_config_for(&pki.client("alice", &[]));

    let error = connect(&server.endpoint(), alice)
        .await
        .expect_err("the server's CA is not trusted");

    let ConnectError::Handshake { address, .. } = &error else {
        panic!("expected Handshake, got {error:?}");
    };
    assert_eq!(address, &server.addr.to_string());
    assert!(
        matches!(
            handshake_cause(&error),
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{error:?}"
    );
}
