//! What operators see: Prometheus metrics scraped with curl, the audit log, the connection cap.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::TestServer;
use jobworker_api::pb::{self, job_worker_client::JobWorkerClient};
use jobworkerd::{AuditLog, Options};
use tonic::Code;
use tonic::transport::Channel;

fn start_req(command: &str, args: &[&str]) -> pb::StartRequest {
    pb::StartRequest {
        command: command.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    }
}

async fn start(client: &mut JobWorkerClient<Channel>, command: &str, args: &[&str]) -> String {
    client
        .start(start_req(command, args))
        .await
        .unwrap_or_else(|e| panic!("start {command}: {e}"))
        .into_inner()
        .job_id
}

/// Every output byte of a job, to the end of its stream.
async fn read_output(client: &mut JobWorkerClient<Channel>, id: &str) -> Vec<u8> {
    let mut stream = client
        .stream_output(pb::StreamOutputRequest {
            job_id: id.into(),
            streams: vec![],
            offset: 0,
        })
        .await
        .expect("stream")
        .into_inner();
    let mut all = Vec::new();
    while let Some(message) = stream.message().await.expect("message") {
        all.extend_from_slice(message.data());
    }
    all
}

/// One scrape with curl: each sample line as `name{labels}` → value.
async fn scrape(t: &TestServer) -> BTreeMap<String, f64> {
    let addr = t.server.metrics_addr().expect("metrics enabled");
    let out = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--fail", "--max-time", "10"])
        .arg(format!("http://{addr}/metrics"))
        .output()
        .await
        .expect("curl is installed (CI installs it)");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            (series.to_owned(), value.parse().expect("sample value"))
        })
        .collect()
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in {samples:#?}"))
}

async fn metrics_server(configure: impl FnOnce(&mut jobworker::Config)) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind metrics");
    let options = Options {
        metrics_listener: Some(listener),
        ..Options::default()
    };
    TestServer::start_with(configure, options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_starts_refusals_streamed_bytes_and_failed_handshakes() {
    let t = metrics_server(|config| config.max_jobs = 1).await;
    let mut alice = t.client("alice").await;
    let before = scrape(&t).await;
    for series in [
        r#"jobworker_tls_handshake_failures_total{reason="unknown_ca"}"#,
        r#"jobworker_job_start_failures_total{reason="resource_exhausted"}"#,
        r#"jobworker_jobs{state="running"}"#,
    ] {
        assert_eq!(
            value(&before, series),
            0.0,
            "{series} exists from the start"
        );
    }

    let id = start(&mut alice, "/bin/echo", &["hello"]).await;
    assert_eq!(read_output(&mut alice, &id).await, b"hello\n");
    let refused = alice
        .start(start_req("", &[]))
        .await
        .expect_err("empty command");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let full = alice
        .start(start_req("/bin/true", &[]))
        .await
        .expect_err("table full");
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    jobworker_api::connect(&t.endpoint(), t.pki.client_config("other-ca"))
        .await
        .expect_err("a certificate from another CA");

    let after = scrape(&t).await;
    let moved = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(moved("jobworker_job_starts_total"), 1.0);
    assert_eq!(moved("jobworker_job_start_duration_seconds_count"), 1.0);
    assert_eq!(
        moved(r#"jobworker_job_start_failures_total{reason="invalid_argument"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"jobworker_job_start_failures_total{reason="resource_exhausted"}"#),
        1.0
    );
    assert_eq!(moved("jobworker_quota_refusals_total"), 1.0);
    assert_eq!(moved("jobworker_output_streamed_bytes_total"), 6.0);
    assert_eq!(
        moved(r#"jobworker_tls_handshake_failures_total{reason="unknown_ca"}"#),
        1.0
    );
    assert_eq!(value(&after, r#"jobworker_jobs{state="exited"}"#), 1.0);
    assert_eq!(value(&after, "jobworker_output_streams"), 0.0);
    assert!(
        value(&after, "jobworker_connections") >= 1.0,
        "alice's connection is open"
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_serves_only_get_metrics_and_closes_at_shutdown() {
    let t = metrics_server(|_| {}).await;
    let addr = t.server.metrics_addr().expect("metrics enabled");
    let status = |path: &'static str, method: &'static str| async move {
        let out = tokio::process::Command::new("curl")
            .args([
                "--silent",
                "--output",
                "/dev/null",
                "--write-out",
                "%{http_code}",
            ])
            .args(["--request", method])
            .arg(format!("http://{addr}{path}"))
            .output()
            .await
            .expect("curl");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    assert_eq!(status("/metrics", "GET").await, "200");
    assert_eq!(status("/", "GET").await, "404");
    assert_eq!(status("/metrics", "POST").await, "405");
    t.finish().await;
    let error = tokio::net::TcpStream::connect(addr)
        .await
        .expect_err("the metrics endpoint outlived the server");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_at_once_and_a_slot_frees_when_a_client_leaves() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind metrics");
    let options = Options {
        max_connections: 1,
        metrics_listener: Some(listener),
        ..Options::default()
    };
    let t = TestServer::start_with(|_| {}, options).await;
    let mut alice = t.client("alice").await;
    alice
        .list(pb::ListRequest::default())
        .await
        .expect("first client");

    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        jobworker_api::connect(&t.endpoint(), t.pki.client_config("bob")),
    )
    .await
    .expect("a connection over the cap must be closed at once, not left waiting");
    assert!(refused.is_err(), "a second connection got in");
    assert_eq!(
        value(&scrape(&t).await, "jobworker_connections_refused_total"),
        1.0
    );

    drop(alice);
    // The slot is released when the server notices the client left: retry until then.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Err(error) = jobworker_api::connect(&t.endpoint(), t.pki.client_config("bob")).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot of a client that left was never released: {error}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.finish().await;
}

/// The audit log's records, parsed.
fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("audit log")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_records_mutations_and_refusals_with_the_verified_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    let options = Options {
        audit: AuditLog::open(&path).expect("open audit log"),
        ..Options::default()
    };
    let t = TestServer::start_with(|_| {}, options).await;
    let mut alice = t.client("alice").await;
    let mut bob = t.client("bob").await;
    let mut nameless = t.client("nameless").await;

    let id = start(&mut alice, "/bin/sleep", &["1000"]).await;
    let err = bob
        .get_status(pb::GetStatusRequest { job_id: id.clone() })
        .await
        .expect_err("bob reads alice's job");
    assert_eq!(err.code(), Code::NotFound);
    let err = bob
        .stop(pb::StopRequest { job_id: id.clone() })
        .await
        .expect_err("bob stops alice's job");
    assert_eq!(err.code(), Code::NotFound);
    // Written before the response: no waiting needed.
    assert_eq!(records(&path).len(), 3, "{:#?}", records(&path));
    bob.list(pb::ListRequest::default())
        .await
        .expect("bob lists");
    let err = nameless
        .list(pb::ListRequest::default())
        .await
        .expect_err("no user name");
    assert_eq!(err.code(), Code::Unauthenticated);
    alice
        .stop(pb::StopRequest { job_id: id.clone() })
        .await
        .expect("alice stops her job");

    let log = records(&path);
    eprintln!(
        "--- audit log:\n{}",
        std::fs::read_to_string(&path).expect("audit log")
    );
    let summary: Vec<(String, String, String, String)> = log
        .iter()
        .map(|r| {
            let text = |field: &str| r[field].as_str().unwrap_or("<null>").to_owned();
            (text("user"), text("rpc"), text("job_id"), text("outcome"))
        })
        .collect();
    let row = |user: &str, rpc: &str, job: &str, outcome: &str| {
        (user.into(), rpc.into(), job.into(), outcome.into())
    };
    assert_eq!(
        summary,
        [
            row("alice", "Start", &id, "ok"),
            row("bob", "GetStatus", &id, "not_found"),
            row("bob", "Stop", &id, "not_found"),
            row("<null>", "List", "<null>", "unauthenticated"),
            row("alice", "Stop", &id, "ok"),
        ],
        "a successful List is not recorded; everything else is, in order"
    );
    let bobs_stop = &log[2];
    assert_eq!(bobs_stop["message"], format!("job {id} not found"));
    assert_eq!(bobs_stop["groups"], serde_json::json!([]));
    let peer: std::net::SocketAddr = bobs_stop["peer"]
        .as_str()
        .expect("peer")
        .parse()
        .expect("peer address");
    assert!(peer.ip().is_loopback(), "{peer}");
    let time = bobs_stop["time"].as_str().expect("time");
    assert!(
        time.len() == "2026-01-01T00:00:00.000Z".len() && time.ends_with('Z'),
        "RFC 3339 UTC with milliseconds: {time}"
    );
    assert!(
        log[3]["message"]
            .as_str()
            .is_some_and(|m| m.contains("common name")),
        "{}",
        log[3]
    );
    let mode = std::fs::metadata(&path)
        .expect("audit log")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "audit log mode {mode:o}");
    t.finish().await;
}
