//! gRPC health and reflection as an independent client sees them: Python's grpcio (C core,
//! BoringSSL), over the same mutual-TLS listener as the job API, with real certificates.
//!
//! Needs Python 3 with the packages in `tests/grpcio/requirements.txt` (`.ci/run` installs
//! them in a venv and sets `JOBWORKER_TEST_PYTHON`); without them the test fails, saying so.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::TestServer;
use jobworker_api::pb;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const PROBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpcio/probe.py");

/// The interpreter with grpcio installed.
fn python() -> String {
    std::env::var("JOBWORKER_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_checks_health_reads_reflection_and_sees_not_serving_when_shutdown_starts() {
    let t = TestServer::start().await;
    let mut alice = t.client("alice").await;
    // A job that ignores SIGTERM keeps shutdown busy for the whole grace period, so the health
    // flip can be seen to come before jobs are stopped.
    let id = alice
        .start(pb::StartRequest {
            command: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "trap '' TERM; while :; do sleep 1; done".into(),
            ],
            ..Default::default()
        })
        .await
        .expect("start")
        .into_inner()
        .job_id;
    let python = python();
    let mut probe = tokio::process::Command::new(&python)
        .arg(PROBE)
        .args([
            "--target",
            &format!("localhost:{}", t.server.local_addr().port()),
        ])
        .arg("--ca")
        .arg(t.pki.path("ca.pem"))
        .arg("--cert")
        .arg(t.pki.path("alice.pem"))
        .arg("--key")
        .arg(t.pki.path("alice.key"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {python} ({e}): this test needs Python 3 with grpcio \
                 (pip install -r crates/jobworkerd/tests/grpcio/requirements.txt; \
                 JOBWORKER_TEST_PYTHON names the interpreter)"
            )
        });
    let mut stderr = probe.stderr.take().expect("stderr");
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut lines = BufReader::new(probe.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    let mut next_line = async || {
        tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the probe printed nothing for 30 s")
            .expect("read the probe's output")
    };

    while let Some(line) = next_line().await {
        let watching = line == "watch SERVING";
        seen.push(line);
        if watching {
            break;
        }
    }
    let worker = t.worker.clone();
    let job = id.parse().expect("job id");
    let shutdown = tokio::spawn(t.finish());
    let mut running_at_flip = None;
    while let Some(line) = next_line().await {
        if line == "watch NOT_SERVING" {
            running_at_flip = Some(worker.status(job).expect("job").ended_at.is_none());
        }
        seen.push(line);
    }
    let exit = probe.wait().await.expect("probe exit");
    let errors = errors.await.expect("stderr task");
    eprintln!("--- grpcio probe:\n{}\n{errors}", seen.join("\n"));
    assert!(
        exit.success(),
        "the grpcio probe failed ({exit}):\n{errors}"
    );

    for expected in [
        r#"check "" SERVING"#,
        r#"check "jobworker.v1.JobWorker" SERVING"#,
        "watch SERVING",
        "watch NOT_SERVING",
        // The server ended the stream cleanly once jobs were stopped, rather than leaving it
        // to hold the connection until the drain bound cuts it.
        "watch ended: OK",
    ] {
        assert!(
            seen.iter().any(|l| l == expected),
            "no {expected:?} in {seen:#?}"
        );
    }
    for version in ["v1", "v1alpha"] {
        let services = seen
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{version} services: ")))
            .unwrap_or_else(|| panic!("no {version} service list in {seen:#?}"));
        for service in ["jobworker.v1.JobWorker", "grpc.health.v1.Health"] {
            assert!(
                services.split(", ").any(|s| s == service),
                "{version} reflection does not list {service}: {services}"
            );
        }
        let file = format!(
            "{version} file jobworker/v1/jobworker.proto: package jobworker.v1, service JobWorker: "
        );
        let methods = seen
            .iter()
            .find_map(|l| l.strip_prefix(&file))
            .unwrap_or_else(|| {
                panic!("{version} reflection did not return the job API's file: {seen:#?}")
            });
        assert_eq!(
            methods, "Start, Stop, GetStatus, List, StreamOutput, Wait, Remove",
            "{version}: every RPC of the proto, in its order"
        );
    }
    assert_eq!(
        running_at_flip,
        Some(true),
        "health must report NOT_SERVING while jobs are still being stopped"
    );
    shutdown.await.expect("shutdown");
}
