//! The server: the connection loop and an orderly shutdown.
//!
//! ```text
//! Server ── accept loop task ─┬─ connection task ── TLS handshake, identity, HTTP/2 (hyper)
//!        │   (owns a JoinSet) ├─ connection task      └─ hyper's task per request stream
//!        │                    └─ ...
//!        └─ metrics task (if --metrics-listen) ── scrape tasks
//! ```
//!
//! The accept loop takes a slot under `--max-connections` before anything else (excess
//! connections are closed at once), then hands the TCP stream to a connection task it owns.
//! The task runs the TLS handshake (bounded by the handshake timeout, so a silent client
//! delays only itself), reads the client's identity from its verified certificate once, and
//! serves HTTP/2 with hyper's own builder, whose per-stream send buffer tonic's `Server` does
//! not expose. Each request carries the connection's [`Peer`] in its extensions.
//!
//! Every task ends: a connection task when its client goes away, or at shutdown after a
//! GOAWAY and a bounded drain; the accept loop after its last connection; the aborts at the end
//! of [`Server::shutdown`] catch whatever is left.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use jobworker::Worker;
use jobworker_api::pb::job_worker_server::JobWorkerServer;
use jobworker_api::{HandshakeFailure, Identity, IdentityError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::audit::AuditLog;
use crate::authz::Peer;
use crate::metrics::{self, Metrics};
use crate::service::JobService;

/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The default cap on open connections (`--max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4096;

/// How long connections get to finish after jobs are stopped and streams ended.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// HTTP/2 flow-control windows for what clients send us: large enough that a request never
/// waits for a window update, small enough to bound what a client makes us buffer.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;

/// Streams one connection may have open at once (hyper's default is 200; h2 bounds the memory
/// of each): a client needing more opens another connection, which counts against the cap.
pub const MAX_CONCURRENT_STREAMS: u32 = 128;

/// Encoded response data queued per stream before its handler is polled for more. hyper's
/// default (400 KiB) made 100 readers of one job cost ~70 MB; at 64 KiB each stream holds at
/// most this plus the one chunk in hand. docs/design.md has the measurements.
pub const MAX_SEND_BUF_SIZE: usize = 64 << 10;

/// Ping a client silent this long, and close its connection if the ping is not answered in
/// time: notices clients that vanished without closing their connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Refused handshakes and connections are logged at debug one by one (anyone who can reach the
/// port can cause them) and summarised at WARN at most once per period.
const FAILURE_SUMMARY_PERIOD: Duration = Duration::from_secs(10);

/// The name the health service reports the job API under: its gRPC service name.
const JOB_SERVICE_NAME: &str = <JobWorkerServer<JobService> as NamedService>::NAME;

/// How a server is run, beyond its listener, TLS configuration and worker.
pub struct Options {
    /// Connections open at once, handshakes included; more are closed at once.
    pub max_connections: usize,
    /// The most a client may take to complete its TLS handshake.
    pub handshake_timeout: Duration,
    /// Where to serve `/metrics` over plain HTTP, if anywhere.
    pub metrics_listener: Option<TcpListener>,
    /// Where mutating and refused requests are recorded.
    pub audit: AuditLog,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_connections: DEFAULT_MAX_CONNECTIONS as usize,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            metrics_listener: None,
            audit: AuditLog::disabled(),
        }
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listener's address cannot be read.
    #[error("cannot read the listening address")]
    LocalAddr(#[source] std::io::Error),
    /// The reflection service rejects the compiled descriptors: a build problem.
    #[error("cannot build the reflection service from the compiled proto descriptors")]
    Reflection(#[source] tonic_reflection::server::Error),
}

/// A running server.
pub struct Server {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    worker: Arc<Worker>,
    metrics: Arc<Metrics>,
    /// The statuses `grpc.health.v1.Health` reports; NOT_SERVING once shutdown starts.
    health: HealthReporter,
    /// Flips to true at shutdown: the accept loop stops accepting, connections send GOAWAY,
    /// output streams end with UNAVAILABLE, the metrics endpoint closes.
    shutdown: watch::Sender<bool>,
    /// The accept loop. It owns every connection task (a JoinSet): aborting it ends them all.
    accepting: JoinHandle<()>,
    /// The metrics endpoint, when enabled.
    metrics_endpoint: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves the job API for `worker` on `listener`, with `tls` for every connection, plus
    /// gRPC health and reflection on the same listener.
    pub async fn start(
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        worker: Arc<Worker>,
        options: Options,
    ) -> Result<Server, StartError> {
        let local_addr = listener.local_addr().map_err(StartError::LocalAddr)?;
        let metrics_addr = match &options.metrics_listener {
            Some(listener) => Some(listener.local_addr().map_err(StartError::LocalAddr)?),
            None => None,
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let metrics = Arc::new(Metrics::new(options.audit.write_failures()));
        let service = JobService::new(
            worker.clone(),
            shutdown_rx.clone(),
            metrics.clone(),
            options.audit,
        );

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status(JOB_SERVICE_NAME, ServingStatus::Serving)
            .await;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(jobworker_api::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let routes = Routes::new(JobWorkerServer::new(service))
            .add_service(health_service)
            .add_service(reflection().build_v1().map_err(StartError::Reflection)?)
            .add_service(
                reflection()
                    .build_v1alpha()
                    .map_err(StartError::Reflection)?,
            )
            .prepare();

        let connections = Arc::new(Connections {
            acceptor: TlsAcceptor::from(tls),
            handshake_timeout: options.handshake_timeout,
            http2: http2_builder(),
            routes,
            metrics: metrics.clone(),
            shutdown: shutdown_rx.clone(),
        });
        let accepting = tokio::spawn(accept_loop(
            listener,
            connections,
            options.max_connections,
            shutdown_rx.clone(),
        ));
        let metrics_endpoint = options.metrics_listener.map(|listener| {
            tokio::spawn(metrics::serve(
                listener,
                metrics.clone(),
                worker.clone(),
                shutdown_rx,
            ))
        });
        Ok(Server {
            local_addr,
            metrics_addr,
            worker,
            metrics,
            health,
            shutdown,
            accepting,
            metrics_endpoint,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the metrics endpoint, when enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// How many output streams are open right now.
    pub fn active_streams(&self) -> usize {
        usize::try_from(self.metrics.open_streams()).unwrap_or(0)
    }

    /// Reports NOT_SERVING, stops accepting connections, sends every connection a GOAWAY,
    /// ends every output stream with UNAVAILABLE, stops every job (SIGTERM, grace period,
    /// SIGKILL), removes their cgroups, lets connections drain for a bounded time, then closes
    /// what is left.
    pub async fn shutdown(self) {
        info!("shutting down: no new connections, ending streams, stopping jobs");
        // First, so that health checkers hear it before anything stops.
        let mut health = self.health;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health
            .set_service_status(JOB_SERVICE_NAME, ServingStatus::NotServing)
            .await;
        self.shutdown.send_replace(true);
        self.worker.shutdown().await;
        // Ends health Watch streams (their sender goes), which would otherwise hold their
        // connections open for the whole drain.
        health.clear_service_status("").await;
        health.clear_service_status(JOB_SERVICE_NAME).await;

        let mut accepting = self.accepting;
        if tokio::time::timeout(DRAIN_TIMEOUT, &mut accepting)
            .await
            .is_err()
        {
            warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
            // Drops the JoinSet of connections, which aborts each of them.
            accepting.abort();
        }
        if let Some(mut endpoint) = self.metrics_endpoint
            && tokio::time::timeout(DRAIN_TIMEOUT, &mut endpoint)
                .await
                .is_err()
        {
            endpoint.abort();
        }
        info!("shut down");
    }
}

/// The HTTP/2 settings of every connection.
fn http2_builder() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_send_buf_size(MAX_SEND_BUF_SIZE)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    builder
}

/// What every connection task shares.
struct Connections {
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    /// The gRPC services; cloning is cheap (an `Arc`).
    routes: Routes,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
}

/// Accepts connections until shutdown, then waits for the connections it started to end.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Connections>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    // A slot per open connection, taken before the handshake so that half-open connections
    // count too; released when the connection task ends.
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut connections = JoinSet::new();
    let mut summary = FailureSummary::new(shared.metrics.clone(), max_connections);
    let mut summarise = tokio::time::interval_at(
        tokio::time::Instant::now() + FAILURE_SUMMARY_PERIOD,
        FAILURE_SUMMARY_PERIOD,
    );
    loop {
        tokio::select! {
            () = shutting_down(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, addr)) => match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        connections.spawn(serve_connection(tcp, addr, slot, shared.clone()));
                    }
                    Err(_) => {
                        shared.metrics.connection_refused();
                        debug!(%addr, max_connections, "connection refused: at the connection cap");
                        drop(tcp);
                    }
                },
                // The client gave up before we got to it; nothing is wrong with the listener.
                Err(error) if jobworker_api::incoming::is_per_connection(&error) => {
                    debug!(%error, "connection lost before accept");
                }
                Err(error) => {
                    let pause = jobworker_api::incoming::ACCEPT_ERROR_PAUSE;
                    warn!(%error, ?pause, "cannot accept connections");
                    // Retrying at once would spin (e.g. out of file descriptors).
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        () = shutting_down(&mut shutdown) => break,
                    }
                }
            },
            Some(ended) = connections.join_next() => log_panic(ended),
            _ = summarise.tick() => summary.log(),
        }
    }
    // Stop accepting now: the port closes, and new clients are refused rather than left
    // waiting. Open connections have seen the same flag and are draining.
    drop(listener);
    while let Some(ended) = connections.join_next().await {
        log_panic(ended);
    }
    summary.log();
}

fn log_panic(ended: Result<(), tokio::task::JoinError>) {
    if let Err(error) = ended
        && error.is_panic()
    {
        // A panicking connection loses one client, not the server.
        warn!(%error, "a connection task panicked");
    }
}

/// One connection, from TCP to its end: TLS handshake, identity, HTTP/2.
async fn serve_connection(
    tcp: TcpStream,
    addr: SocketAddr,
    slot: OwnedSemaphorePermit,
    shared: Arc<Connections>,
) {
    let _slot = slot;
    let _open = shared.metrics.connection_opened();
    let mut shutdown = shared.shutdown.clone();
    // gRPC calls are small and latency-bound: no Nagle delays.
    if let Err(error) = tcp.set_nodelay(true) {
        debug!(%addr, %error, "cannot set TCP_NODELAY");
    }
    let handshake =
        jobworker_api::incoming::handshake(&shared.acceptor, tcp, shared.handshake_timeout);
    let tls = tokio::select! {
        done = handshake => match done {
            Ok(tls) => tls,
            Err(error) => {
                let reason = error.reason();
                shared.metrics.handshake_failed(reason);
                debug!(%addr, %reason, error = ?error, "TLS handshake failed");
                return;
            }
        },
        () = shutting_down(&mut shutdown) => return,
    };

    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .ok_or(IdentityError::NoCertificate)
        .and_then(Identity::from_peer_certs)
        .map_err(|error| {
            // The CA issued a certificate we cannot read a user from: worth an operator's look.
            warn!(%addr, %error, "client certificate without a usable identity");
            error.to_string()
        });
    let peer = Arc::new(Peer { addr, identity });
    let routes = shared.routes.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(peer.clone());
        routes.clone().oneshot(request)
    });

    let connection = shared.http2.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = shutting_down(&mut shutdown) => {
            // GOAWAY: requests in flight finish, no new ones start; the drain bound in
            // `Server::shutdown` ends the rest.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = ended {
        debug!(%addr, %error, "connection ended with an error");
    }
}

/// Returns once `shutdown` is true (or its sender is gone, which means the same).
pub(crate) async fn shutting_down(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, not held across the caller's awaits.
    let _ = shutdown.wait_for(|down| *down).await;
}

/// Turns the per-connection counters into at most one WARN line per period.
struct FailureSummary {
    metrics: Arc<Metrics>,
    max_connections: usize,
    since: Instant,
    handshakes: [u64; HandshakeFailure::ALL.len()],
    refused: u64,
}

impl FailureSummary {
    fn new(metrics: Arc<Metrics>, max_connections: usize) -> FailureSummary {
        FailureSummary {
            handshakes: metrics.handshake_failures(),
            refused: metrics.connections_refused(),
            metrics,
            max_connections,
            since: Instant::now(),
        }
    }

    /// Logs what failed since the last call, if anything did.
    fn log(&mut self) {
        let seconds = self.since.elapsed().as_secs();
        self.since = Instant::now();
        let handshakes = self.metrics.handshake_failures();
        let failed: Vec<String> = HandshakeFailure::ALL
            .iter()
            .zip(handshakes.iter().zip(self.handshakes))
            .filter_map(|(reason, (now, before))| {
                let new = now.saturating_sub(before);
                (new > 0).then(|| format!("{reason} {new}"))
            })
            .collect();
        let total: u64 = handshakes
            .iter()
            .zip(self.handshakes)
            .map(|(now, before)| now.saturating_sub(before))
            .sum();
        self.handshakes = handshakes;
        if total > 0 {
            warn!(
                "{total} TLS handshakes failed in the last {seconds} s ({}); details at debug level",
                failed.join(", ")
            );
        }
        let refused = self.metrics.connections_refused();
        let new = refused.saturating_sub(self.refused);
        self.refused = refused;
        if new > 0 {
            warn!(
                "{new} connections refused in the last {seconds} s: {} were open (--max-connections)",
                self.max_connections
            );
        }
    }
}
