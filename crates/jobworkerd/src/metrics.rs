//! Metrics in the Prometheus text format, and the small plain-HTTP endpoint that serves them.
//!
//! Counters and gauges are updated where things happen (handlers, the connection loop) and are
//! always kept, enabled endpoint or not: each update is an atomic add. Jobs by state are
//! computed from the worker at each scrape. The endpoint (`--metrics-listen`) is plain HTTP
//! with no authentication: it is meant for loopback, where a local Prometheus agent scrapes it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use jobworker::Worker;
use jobworker_api::HandshakeFailure;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tonic::Status;

use crate::convert::code_name;
use crate::server::shutting_down;

/// A metric's single label, e.g. `[("reason", "timeout")]`.
type Label = [(&'static str, &'static str); 1];

/// Every metric the daemon exports.
#[derive(Debug)]
pub struct Metrics {
    /// What a scrape encodes; only read after construction.
    registry: Registry,
    /// Jobs in the table by state, refreshed from the worker at each scrape.
    jobs: Family<Label, Gauge>,
    /// Jobs started (their command was exec'd).
    starts: Counter,
    /// Refused or failed starts, by the gRPC code the client got.
    start_failures: Family<Label, Counter>,
    /// Starts refused because a quota or table bound was reached (RESOURCE_EXHAUSTED).
    quota_refusals: Counter,
    /// Time from receiving a Start to answering it, for successful starts.
    start_duration: Histogram,
    /// Output bytes handed to connections by StreamOutput.
    streamed_bytes: Counter,
    /// StreamOutput responses in progress.
    open_streams: Gauge,
    /// Connections holding a slot under `--max-connections` (TLS handshake included).
    open_connections: Gauge,
    /// Connections closed at once because `--max-connections` were open.
    refused_connections: Counter,
    /// TLS handshakes that did not complete, by reason.
    handshake_failures: Family<Label, Counter>,
    /// Bytes of output logs of ended jobs, refreshed at each scrape.
    output_stored: Gauge,
    /// Bytes of the output budget reserved by running jobs (their output limits).
    output_reserved: Gauge,
    /// The output budget.
    output_budget: Gauge,
}

/// The states a job can be in, as the `state` label names them.
const JOB_STATES: [&str; 5] = ["running", "exited", "signaled", "oom_killed", "lost"];

/// gRPC codes a Start is commonly refused with, whose series are created up front.
const COMMON_START_FAILURES: [tonic::Code; 5] = [
    tonic::Code::InvalidArgument,
    tonic::Code::ResourceExhausted,
    tonic::Code::Unauthenticated,
    tonic::Code::Unavailable,
    tonic::Code::Internal,
];

impl Metrics {
    /// Registers every metric; `audit_write_failures` is the audit log's own counter.
    pub fn new(audit_write_failures: Counter) -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::default(),
            jobs: Family::default(),
            output_stored: Gauge::default(),
            output_reserved: Gauge::default(),
            output_budget: Gauge::default(),
            starts: Counter::default(),
            start_failures: Family::default(),
            quota_refusals: Counter::default(),
            // 1 ms to 4 s: a start takes a few milliseconds; a loaded node, hundreds.
            start_duration: Histogram::new(exponential_buckets(0.001, 2.0, 13)),
            streamed_bytes: Counter::default(),
            open_streams: Gauge::default(),
            open_connections: Gauge::default(),
            refused_connections: Counter::default(),
            handshake_failures: Family::default(),
        };
        // Series created now exist (at 0) before anything happens: `rate()` needs a start.
        for state in JOB_STATES {
            drop(metrics.jobs.get_or_create(&[("state", state)]));
        }
        for code in COMMON_START_FAILURES {
            drop(
                metrics
                    .start_failures
                    .get_or_create(&[("reason", code_name(code))]),
            );
        }
        for reason in HandshakeFailure::ALL {
            drop(
                metrics
                    .handshake_failures
                    .get_or_create(&[("reason", reason.as_str())]),
            );
        }
        let registry = &mut metrics.registry;
        // Counters get the `_total` suffix from the encoder.
        registry.register(
            "jobworker_jobs",
            "Jobs in the table, by state",
            metrics.jobs.clone(),
        );
        registry.register(
            "jobworker_output_stored_bytes",
            "Bytes of output stored in the logs of ended jobs",
            metrics.output_stored.clone(),
        );
        registry.register(
            "jobworker_output_reserved_bytes",
            "Bytes of the output budget reserved by running jobs (their output limits)",
            metrics.output_reserved.clone(),
        );
        registry.register(
            "jobworker_output_budget_bytes",
            "The output budget: bytes of logs the node keeps at most",
            metrics.output_budget.clone(),
        );
        registry.register(
            "jobworker_job_starts",
            "Jobs started (command exec'd)",
            metrics.starts.clone(),
        );
        registry.register(
            "jobworker_job_start_failures",
            "Start requests refused or failed, by the gRPC code returned",
            metrics.start_failures.clone(),
        );
        registry.register(
            "jobworker_quota_refusals",
            "Start requests refused with RESOURCE_EXHAUSTED (a quota or the job table is full)",
            metrics.quota_refusals.clone(),
        );
        registry.register(
            "jobworker_job_start_duration_seconds",
            "Time to answer a successful Start (isolation, cgroup, exec)",
            metrics.start_duration.clone(),
        );
        registry.register(
            "jobworker_output_streamed_bytes",
            "Job output bytes sent by StreamOutput",
            metrics.streamed_bytes.clone(),
        );
        registry.register(
            "jobworker_output_streams",
            "StreamOutput responses open",
            metrics.open_streams.clone(),
        );
        registry.register(
            "jobworker_connections",
            "Client connections open (TLS handshakes in progress included)",
            metrics.open_connections.clone(),
        );
        registry.register(
            "jobworker_connections_refused",
            "Connections closed at once because --max-connections were open",
            metrics.refused_connections.clone(),
        );
        registry.register(
            "jobworker_tls_handshake_failures",
            "TLS handshakes that did not complete, by reason",
            metrics.handshake_failures.clone(),
        );
        registry.register(
            "jobworker_audit_write_failures",
            "Audit records that could not be written",
            audit_write_failures,
        );
        metrics
    }

    /// Counts a finished Start: started, or refused with the result's code.
    pub fn record_start<T>(&self, elapsed: Duration, result: &Result<T, Status>) {
        match result {
            Ok(_) => {
                self.starts.inc();
                self.start_duration.observe(elapsed.as_secs_f64());
            }
            Err(status) => {
                self.start_failures
                    .get_or_create(&[("reason", code_name(status.code()))])
                    .inc();
                if status.code() == tonic::Code::ResourceExhausted {
                    self.quota_refusals.inc();
                }
            }
        }
    }

    /// Counts an output stream as open until the returned guard is dropped.
    pub fn stream_opened(&self) -> OpenGuard {
        OpenGuard::new(self.open_streams.clone())
    }

    /// Counts output bytes handed to a connection.
    pub fn streamed(&self, bytes: usize) {
        self.streamed_bytes.inc_by(bytes as u64);
    }

    /// Output streams open right now.
    pub fn open_streams(&self) -> i64 {
        self.open_streams.get()
    }

    /// Counts a connection as open until the returned guard is dropped.
    pub fn connection_opened(&self) -> OpenGuard {
        OpenGuard::new(self.open_connections.clone())
    }

    /// Counts a connection refused at the connection cap.
    pub fn connection_refused(&self) {
        self.refused_connections.inc();
    }

    /// Connections refused at the cap since start-up.
    pub fn connections_refused(&self) -> u64 {
        self.refused_connections.get()
    }

    /// Counts a failed TLS handshake.
    pub fn handshake_failed(&self, reason: HandshakeFailure) {
        self.handshake_failures
            .get_or_create(&[("reason", reason.as_str())])
            .inc();
    }

    /// Failed TLS handshakes since start-up, for each reason in [`HandshakeFailure::ALL`].
    pub fn handshake_failures(&self) -> [u64; HandshakeFailure::ALL.len()] {
        HandshakeFailure::ALL.map(|reason| {
            self.handshake_failures
                .get_or_create(&[("reason", reason.as_str())])
                .get()
        })
    }

    /// The exposition: refreshes what is computed at scrape time, then encodes everything.
    pub fn encode(&self, worker: &Worker) -> Result<String, std::fmt::Error> {
        self.refresh(worker);
        let mut text = String::new();
        prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// Sets the values computed from the worker.
    fn refresh(&self, worker: &Worker) {
        let stats = worker.stats();
        for state in JOB_STATES {
            let count = stats.jobs.get(state).copied().unwrap_or(0);
            self.jobs
                .get_or_create(&[("state", state)])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        let gauge = |bytes: u64| i64::try_from(bytes).unwrap_or(i64::MAX);
        self.output_stored.set(gauge(stats.output_bytes_ended));
        self.output_reserved.set(gauge(stats.output_bytes_reserved));
        self.output_budget.set(gauge(stats.max_total_output));
    }
}

/// Keeps a gauge one higher for as long as it lives.
#[derive(Debug)]
pub struct OpenGuard(Gauge);

impl OpenGuard {
    fn new(gauge: Gauge) -> OpenGuard {
        gauge.inc();
        OpenGuard(gauge)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Scrapes served at once; more are closed at once. A scraper needs one.
const MAX_SCRAPE_CONNECTIONS: usize = 8;

/// The most one scrape connection may live: a stuck or slow client cannot hold a slot longer.
const SCRAPE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `GET /metrics` on `listener` (plain HTTP/1.1, one request per connection) until
/// `shutdown` turns true. Scrape connections are owned by this task and end with it.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    worker: Arc<Worker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPE_CONNECTIONS));
    let mut scrapes = JoinSet::new();
    loop {
        tokio::select! {
            () = shutting_down(&mut shutdown) => break,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::debug!(%error, "metrics endpoint: cannot accept");
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "metrics endpoint: too many scrapes at once; closed");
                    continue;
                };
                let (metrics, worker) = (metrics.clone(), worker.clone());
                scrapes.spawn(async move {
                    let _slot = slot;
                    scrape(tcp, peer, metrics, worker).await;
                });
            }
            Some(_) = scrapes.join_next() => {}
        }
    }
    // Dropping `scrapes` aborts scrapes in progress.
}

/// One scrape connection.
async fn scrape(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    metrics: Arc<Metrics>,
    worker: Arc<Worker>,
) {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let response = respond(&request, &metrics, &worker);
        async move { Ok::<_, std::convert::Infallible>(response) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(false)
        .serve_connection(TokioIo::new(tcp), service);
    match tokio::time::timeout(SCRAPE_CONNECTION_TIMEOUT, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%peer, %error, "metrics endpoint: connection failed"),
        Err(_) => tracing::debug!(%peer, "metrics endpoint: connection timed out"),
    }
}

fn respond(request: &Request<Incoming>, metrics: &Metrics, worker: &Worker) -> Response<String> {
    let plain = |status: StatusCode, text: &str| {
        let mut response = Response::new(format!("{text}\n"));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found: metrics are at /metrics");
    }
    if request.method() != Method::GET {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported");
    }
    match metrics.encode(worker) {
        Ok(text) => {
            let mut response = Response::new(text);
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(prometheus_text::CONTENT_TYPE),
            );
            response
        }
        Err(error) => {
            tracing::error!(%error, "cannot encode metrics");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics")
        }
    }
}
