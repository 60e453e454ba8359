//! `jobctl logs`: output from the first byte, byte for byte, per stream, until the job ends.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use common::{TestServer, interrupt, read_until, stderr_of, stdout_of, wait_with_timeout};

/// Size of the binary output test: large enough to span many gRPC messages and buffer fills.
const RANDOM_BYTES: usize = 10 << 20;

#[test]
fn ten_mib_of_random_bytes_arrive_byte_identical() {
    let server = TestServer::start();
    // The job runs as `nobody`: the file and every directory above it must be readable.
    // Jobs see the server's data directory (a --bind-ro) at /data.
    let path = server.daemon.data_dir().join("random.bin");
    let mut random = vec![0u8; RANDOM_BYTES];
    fs::File::open("/dev/urandom")
        .and_then(|mut urandom| urandom.read_exact(&mut random))
        .expect("read /dev/urandom");
    fs::write(&path, &random).expect("write random file");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod file");
    let id = server.start_job(&["cat", "/data/random.bin"]);
    let out = server
        .jobctl()
        .args(["logs", &id])
        .output()
        .expect("run jobctl logs");

    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr_of(&out));
    assert_eq!(stderr_of(&out), "");
    assert_eq!(out.stdout.len(), random.len(), "byte count");
    assert!(out.stdout == random, "the bytes differ from the file's");
}

#[test]
fn logs_separates_stdout_and_stderr() {
    let server = TestServer::start();
    let id = server.start_job(&[
        "sh",
        "-c",
        "echo out1; echo err1 >&2; echo out2; echo err2 >&2",
    ]);
    server.wait_for_end(&id);

    let both = server.jobctl().args(["logs", &id]).output().expect("logs");
    let stdout = server
        .jobctl()
        .args(["logs", "--stdout", &id])
        .output()
        .expect("logs --stdout");
    let stderr = server
        .jobctl()
        .args(["logs", "--stderr", &id])
        .output()
        .expect("logs --stderr");

    assert_eq!(
        (stdout_of(&both), stderr_of(&both)),
        ("out1\nout2\n".into(), "err1\nerr2\n".into())
    );
    assert_eq!(
        (stdout_of(&stdout), stderr_of(&stdout)),
        ("out1\nout2\n".into(), String::new())
    );
    assert_eq!(
        (stdout_of(&stderr), stderr_of(&stderr)),
        (String::new(), "err1\nerr2\n".into())
    );
    for out in [both, stdout, stderr] {
        assert_eq!(out.status.code(), Some(0));
    }
}

#[test]
fn logs_follows_a_running_job_until_it_ends() {
    let server = TestServer::start();
    let id = server.start_job(&["sh", "-c", "echo one; sleep 1; echo two"]);

    let out = server.jobctl().args(["logs", &id]).output().expect("logs");

    assert_eq!(stdout_of(&out), "one\ntwo\n", "stderr: {}", stderr_of(&out));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(server.status_json(&id)["state"], "exited");
}

#[test]
fn logs_shows_each_line_as_it_arrives() {
    let server = TestServer::start();
    let id = server.start_job(&["sh", "-c", "echo first; exec sleep 600"]);
    let mut logs = server
        .jobctl()
        .args(["logs", &id])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn jobctl logs");
    let stdout = logs.stdout.take().expect("stdout");

    // Without a flush when the stream goes idle, this line would sit in jobctl's buffer
    // until the job ends.
    let (seen, _stdout) = read_until(stdout, b"first\n", Duration::from_secs(10));

    assert_eq!(seen, b"first\n");
    let _ = logs.kill();
    let _ = logs.wait();
}

#[test]
fn ctrl_c_ends_logs_with_130_and_leaves_the_job_running() {
    let server = TestServer::start();
    let id = server.start_job(&["sh", "-c", "echo started; exec sleep 600"]);
    let mut logs = server
        .jobctl()
        .args(["logs", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn jobctl logs");
    let stdout = logs.stdout.take().expect("stdout");
    let (seen, _stdout) = read_until(stdout, b"started\n", Duration::from_secs(10));
    assert_eq!(seen, b"started\n");

    interrupt(&logs);
    let status = wait_with_timeout(&mut logs, Duration::from_secs(10));

    assert_eq!(status.code(), Some(130));
    let mut stderr = String::new();
    logs.stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert_eq!(stderr, "", "Ctrl-C is not an error");
    assert_eq!(server.status_json(&id)["state"], "running");
}

#[test]
fn a_closed_stdout_ends_logs_quietly_with_141() {
    let server = TestServer::start();
    let id = server.start_job(&["yes"]);
    let mut logs = server
        .jobctl()
        .args(["logs", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn jobctl logs");

    // What `jobctl logs ID | head -c 4` does: read a little, then close the pipe.
    let mut stdout = logs.stdout.take().expect("stdout");
    let mut first = [0u8; 4];
    stdout.read_exact(&mut first).expect("read the first bytes");
    drop(stdout);
    let status = wait_with_timeout(&mut logs, Duration::from_secs(10));

    assert_eq!(&first, b"y\ny\n");
    assert_eq!(
        status.code(),
        Some(141),
        "128 + SIGPIPE, as a shell reports it"
    );
    let mut stderr = String::new();
    logs.stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert_eq!(
        stderr, "",
        "a closed pipe is not an error, and never a panic"
    );
    assert_eq!(
        server.status_json(&id)["state"],
        "running",
        "logs never stops the job"
    );
}

#[test]
fn a_closed_stdout_during_run_stops_the_job() {
    let server = TestServer::start();
    let mut run = server
        .jobctl()
        .args(["run", "--", "yes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn jobctl run");

    let mut stdout = run.stdout.take().expect("stdout");
    let mut first = [0u8; 2];
    stdout.read_exact(&mut first).expect("read the first bytes");
    drop(stdout);
    let status = wait_with_timeout(&mut run, Duration::from_secs(20));

    assert_eq!(status.code(), Some(141));
    let jobs: Vec<serde_json::Value> =
        serde_json::from_str(&server.ok(&["list", "--output", "json"])).expect("list JSON");
    assert_eq!(jobs[0]["stop_requested"], true, "{}", jobs[0]);
    assert_ne!(jobs[0]["state"], "running", "{}", jobs[0]);
}
