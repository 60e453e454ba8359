//! The server: mutual-TLS connections in, the job service on top, and an orderly shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jobworker::Worker;
use jobworker_api::pb::job_worker_server::JobWorkerServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::service::JobService;

/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connections get to finish after jobs are stopped and streams ended.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// HTTP/2 flow-control windows: large enough that one stream can move hundreds of MB/s over
/// loopback without waiting for window updates, small enough to bound what a slow client makes
/// us buffer.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;

/// A running server.
pub struct Server {
    local_addr: SocketAddr,
    worker: Arc<Worker>,
    active_streams: Arc<AtomicUsize>,
    shutdown: watch::Sender<bool>,
    serving: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Server {
    /// Serves the job API for `worker` on `listener`, with `tls` for every connection.
    pub fn start(
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        worker: Arc<Worker>,
    ) -> std::io::Result<Server> {
        let local_addr = listener.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let service = JobService::new(worker.clone(), shutdown_rx.clone());
        let active_streams = service.active_streams();
        let incoming = jobworker_api::incoming::tls_incoming(listener, tls, HANDSHAKE_TIMEOUT);
        let mut stop_accepting = shutdown_rx;
        let serving = tokio::spawn(
            tonic::transport::Server::builder()
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                // Notice clients that vanished without closing their connection.
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .add_service(JobWorkerServer::new(service))
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop_accepting.wait_for(|down| *down).await;
                }),
        );
        Ok(Server {
            local_addr,
            worker,
            active_streams,
            shutdown,
            serving,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many output streams are open right now.
    pub fn active_streams(&self) -> usize {
        self.active_streams.load(Ordering::SeqCst)
    }

    /// Stops accepting connections, ends every output stream with UNAVAILABLE, stops every job
    /// (SIGTERM, grace period, SIGKILL), removes their cgroups, and lets connections drain.
    pub async fn shutdown(self) {
        tracing::info!("shutting down: no new connections, ending streams, stopping jobs");
        self.shutdown.send_replace(true);
        self.worker.shutdown().await;
        let mut serving = self.serving;
        match tokio::time::timeout(DRAIN_TIMEOUT, &mut serving).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!("server ended with an error: {e}"),
            Ok(Err(e)) => tracing::warn!("server task failed: {e}"),
            Err(_) => {
                tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
                serving.abort();
            }
        }
        tracing::info!("shut down");
    }
}
