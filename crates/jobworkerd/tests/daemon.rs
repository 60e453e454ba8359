//! The real `jobworkerd` binary: the dev PKI command and an orderly shutdown on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::JOBWORKERD;
use jobworker_api::pb;
use tonic::Code;

#[test]
fn certs_init_writes_private_keys_0600_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    let run = |extra: &[&str]| {
        Command::new(JOBWORKERD)
            .args(["certs", "init", "--dir"])
            .arg(&pki)
            .args(["--user", "alice", "--admin", "root"])
            .args(extra)
            .output()
            .expect("run jobworkerd certs init")
    };
    let first = run(&[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    for name in ["ca", "server", "alice", "root"] {
        assert!(pki.join(format!("{name}.pem")).exists(), "{name}.pem");
        let mode = std::fs::metadata(pki.join(format!("{name}.key")))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}.key mode {mode:o}");
    }
    let before = std::fs::read(pki.join("alice.key")).expect("key");
    let second = run(&[]);
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("jobworkerd: error:") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(pki.join("alice.key")).expect("key"),
        before,
        "a refused init changed a key"
    );
    let forced = run(&["--force"]);
    assert!(forced.status.success());
    assert_ne!(std::fs::read(pki.join("alice.key")).expect("key"), before);
}

/// A `jobworkerd serve` child process, killed on drop if the test did not end it.
struct Daemon {
    child: std::process::Child,
    addr: String,
    /// The log up to and including the line that says where it listens.
    startup_logs: Vec<String>,
    /// The log from there on, as it comes.
    logs: std::sync::mpsc::Receiver<String>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(pki: &std::path::Path, state: &std::path::Path, parent: &str) -> Daemon {
    serve_with(Command::new(JOBWORKERD), &[], pki, state, parent)
}

/// `serve` run through `command` (the daemon, or a wrapper that execs it) with `extra`
/// arguments before the subcommand.
fn serve_with(
    mut command: Command,
    extra: &[&str],
    pki: &std::path::Path,
    state: &std::path::Path,
    parent: &str,
) -> Daemon {
    let mut child = command
        .args(extra)
        .arg("serve")
        .args([
            "--listen",
            "127.0.0.1:0",
            "--stop-grace",
            "2s",
            "--cgroup-parent",
            parent,
        ])
        .arg("--ca")
        .arg(pki.join("ca.pem"))
        .arg("--cert")
        .arg(pki.join("server.pem"))
        .arg("--key")
        .arg(pki.join("server.key"))
        .arg("--state-dir")
        .arg(state)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start jobworkerd serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, logs) = std::sync::mpsc::channel();
    // Keep draining the log so the daemon never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Owned by the guard from here on, so a failed wait below still kills it.
    let mut daemon = Daemon {
        child,
        addr: String::new(),
        startup_logs: Vec::new(),
        logs,
    };
    daemon.addr = loop {
        let line = daemon
            .logs
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "jobworkerd did not report listening; log: {:#?}",
                    daemon.startup_logs
                )
            });
        daemon.startup_logs.push(line.clone());
        if let Some(rest) = line.split("listen=").nth(1) {
            break rest.split_whitespace().next().expect("address").to_owned();
        }
        // --log-format json
        if let Some(rest) = line.split(r#""listen":""#).nth(1) {
            break rest.split('"').next().expect("address").to_owned();
        }
    };
    daemon
}

/// A dev PKI and state dir in a temporary directory, a daemon with its own cgroup parent, and a
/// client connected as alice.
struct Setup {
    dir: tempfile::TempDir,
    parent: String,
    daemon: Daemon,
    client: jobworker_api::pb::job_worker_client::JobWorkerClient<tonic::transport::Channel>,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    let made = Command::new(JOBWORKERD)
        .args(["certs", "init", "--dir"])
        .arg(&pki)
        .output()
        .expect("certs init");
    assert!(made.status.success());
    let parent = format!("jobworkerd-bin-test-{}", uuid::Uuid::new_v4());
    let daemon = serve(&pki, &dir.path().join("state"), &parent);
    let config = jobworker_api::tls::client_config(
        &pki.join("ca.pem"),
        &pki.join("alice.pem"),
        &pki.join("alice.key"),
    )
    .expect("client config");
    let client = jobworker_api::connect(&format!("https://{}", daemon.addr), config)
        .await
        .expect("connect");
    Setup {
        dir,
        parent,
        daemon,
        client,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_stops_jobs_removes_cgroups_and_exits_zero() {
    let Setup {
        dir: _dir,
        parent,
        mut daemon,
        mut client,
    } = setup().await;
    // A job that ignores SIGTERM: the daemon must wait the grace period, then kill it.
    let id = client
        .start(pb::StartRequest {
            command: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "trap '' TERM; echo started; while :; do sleep 1; done".into(),
            ],
            ..Default::default()
        })
        .await
        .expect("start")
        .into_inner()
        .job_id;
    let mut stream = client
        .stream_output(pb::StreamOutputRequest {
            job_id: id,
            streams: vec![],
        })
        .await
        .expect("stream")
        .into_inner();
    let first = stream.message().await.expect("message").expect("chunk");
    assert_eq!(&first.data[..], b"started\n");
    let cgroup_dirs: Vec<std::path::PathBuf> = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.contains(" - cgroup"))
        .filter_map(|l| l.split_whitespace().nth(4).map(std::path::PathBuf::from))
        .collect();

    let sent = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let end = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let status = end.expect_err("the stream ends with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let exit = loop {
        if let Some(exit) = daemon.child.try_wait().expect("try_wait") {
            break exit;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(2 + 5),
            "jobworkerd still running {:?} after SIGTERM",
            sent.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(exit.code(), Some(0), "jobworkerd exit status");
    let logs: Vec<String> = daemon.logs.try_iter().collect();
    assert!(logs.iter().any(|l| l.contains("shut down")), "{logs:#?}");
    // No job cgroup and no parent are left in any hierarchy.
    for mount in cgroup_dirs {
        let found = Command::new("find")
            .arg(&mount)
            .args(["-maxdepth", "4", "-name", &parent])
            .output()
            .expect("find");
        assert!(
            found.stdout.is_empty(),
            "left behind: {}",
            String::from_utf8_lossy(&found.stdout)
        );
    }
}

/// Host processes whose command line contains `marker`.
fn processes_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_die_with_a_killed_daemon_and_the_next_start_removes_their_cgroups() {
    let Setup {
        dir,
        parent,
        mut daemon,
        mut client,
    } = setup().await;
    let marker = "1000.424242";
    client
        .start(pb::StartRequest {
            command: "/bin/sleep".into(),
            args: vec![marker.into()],
            ..Default::default()
        })
        .await
        .expect("start");
    assert!(processes_with(marker) > 0, "the job runs");

    // A crash: no chance to stop anything.
    daemon.child.kill().expect("SIGKILL the daemon");
    daemon.child.wait().expect("reap the daemon");
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_with(marker) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(processes_with(marker), 0, "the job outlived its daemon");

    // Its cgroup is still there (nobody removed it) until the next daemon starts.
    let find = |name: &str| {
        let out = Command::new("find")
            .args([
                "/sys/fs/cgroup",
                "-mindepth",
                "2",
                "-maxdepth",
                "6",
                "-type",
                "d",
                "-path",
            ])
            .arg(format!("*{name}*"))
            .output()
            .expect("find");
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert!(
        find(&parent) > 0,
        "the crashed daemon's cgroups are expected to remain"
    );
    let mut next = serve(&dir.path().join("pki"), &dir.path().join("state"), &parent);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(next.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let exit = next.child.wait().expect("wait");
    assert_eq!(exit.code(), Some(0));
    assert_eq!(
        find(&parent),
        0,
        "the next daemon removed the stale job cgroups and its parent"
    );
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    let made = Command::new(JOBWORKERD)
        .args(["certs", "init", "--dir"])
        .arg(&pki)
        .output()
        .expect("certs init");
    assert!(made.status.success());
    let parent = format!("jobworkerd-bin-test-{}", uuid::Uuid::new_v4());
    let mut daemon = serve_with(
        Command::new(JOBWORKERD),
        &["--log-format", "json"],
        &pki,
        &dir.path().join("state"),
        &parent,
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    assert_eq!(daemon.child.wait().expect("wait").code(), Some(0));
    let logs = &daemon.startup_logs;
    let listening = logs
        .iter()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
        })
        .find(|record| record["fields"]["message"] == "jobworkerd listening (mutual TLS 1.3)")
        .unwrap_or_else(|| panic!("no listening record in {logs:#?}"));
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["fields"]["listen"], daemon.addr.as_str());
}

#[test]
fn serve_raises_the_soft_open_file_limit_to_the_hard_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    let made = Command::new(JOBWORKERD)
        .args(["certs", "init", "--dir"])
        .arg(&pki)
        .output()
        .expect("certs init");
    assert!(made.status.success());
    let hard = std::fs::read_to_string("/proc/self/limits")
        .expect("limits")
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(4).map(str::to_owned))
        .expect("hard open-file limit");
    // Started with a low soft limit (prlimit execs the daemon, keeping its pid).
    let mut wrapper = Command::new("prlimit");
    wrapper.args(["--nofile=256:", JOBWORKERD]);
    let parent = format!("jobworkerd-bin-test-{}", uuid::Uuid::new_v4());
    let mut daemon = serve_with(wrapper, &[], &pki, &dir.path().join("state"), &parent);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.child.id()))
        .expect("the daemon's limits");
    let open_files = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("open-file limit");
    assert_eq!(
        open_files.split_whitespace().nth(3),
        Some(hard.as_str()),
        "{open_files}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    assert_eq!(daemon.child.wait().expect("wait").code(), Some(0));
    let logs = &daemon.startup_logs;
    assert!(
        logs.iter()
            .any(|l| l.contains("raised the open-file limit") && l.contains("from=256")),
        "{logs:#?}"
    );
}
