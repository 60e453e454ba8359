//! What every end-to-end test needs: a real `jobworkerd` with its own development PKI, state
//! directory and cgroup parent, and the real `jobctl` pointed at it.
//!
//! The daemon binary is not built by `cargo test -p jobctl` (a binary of another package):
//! build the workspace first (`cargo build --workspace`, as `.ci/run` does). It is looked up
//! next to `jobctl`, in the same target directory.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

/// The CLI under test.
pub const JOBCTL: &str = env!("CARGO_BIN_EXE_jobctl");

/// How long the daemon may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the daemon may take to shut down after SIGTERM (it stops its jobs first).
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Environment variables of jobctl that must not leak from the developer's shell into a test.
const JOBCTL_ENV: [&str; 7] = [
    "JOBCTL_SERVER",
    "JOBCTL_PKI_DIR",
    "JOBCTL_USER",
    "JOBCTL_CA",
    "JOBCTL_CERT",
    "JOBCTL_KEY",
    "NO_COLOR",
];

/// The daemon binary, next to jobctl in the target directory.
pub fn jobworkerd() -> PathBuf {
    let path = Path::new(JOBCTL).with_file_name("jobworkerd");
    assert!(
        path.is_file(),
        "{} is missing: the end-to-end tests run the real daemon; build it first with \
         `cargo build --workspace` (same profile as the tests)",
        path.display()
    );
    path
}

/// A development PKI (CA, server, users alice and bob, admin) in its own directory, created by
/// `jobworkerd certs init` exactly as the quickstart does.
pub struct Pki {
    /// Holds the files; removed on drop.
    pub dir: TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir for the PKI");
        let out = Command::new(jobworkerd())
            .args(["certs", "init", "--dir"])
            .arg(dir.path())
            .output()
            .expect("run jobworkerd certs init");
        assert!(
            out.status.success(),
            "jobworkerd certs init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Pki { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A running `jobworkerd serve`, killed (SIGTERM, then waited for) when dropped, so that a
/// failing test never leaves a server or its jobs behind.
pub struct TestServer {
    pub pki: Pki,
    /// The state directory (job output logs); removed on drop, after the server is gone.
    state: TempDir,
    /// A host directory every job sees read-only at /data (a `--bind-ro`).
    pub data: TempDir,
    child: Option<Child>,
    /// 127.0.0.1:PORT, as the daemon reported it.
    pub address: String,
    /// Everything the daemon has logged so far, for failure messages.
    log: Arc<Mutex<String>>,
}

/// A range of 64 job uids picked at random among a million such blocks, so that daemons of
/// tests running at the same time (each needs a range no other running daemon holds) do not
/// collide.
pub fn random_job_ids() -> String {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    let block = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], 0]) % (1 << 20);
    let first = 1_000_000_000 + block * 64;
    format!("{first}-{}", first + 63)
}

impl TestServer {
    /// Starts a daemon on a free loopback port, with a fresh PKI, state directory and cgroup
    /// parent (so that tests may run in parallel).
    pub fn start() -> TestServer {
        assert_root();
        let pki = Pki::new();
        let state = tempfile::tempdir().expect("temp state dir");
        let cgroup_parent = format!("jobctl-test-{}", uuid::Uuid::new_v4());
        let data = tempfile::tempdir().expect("temp data dir");
        std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod data dir");
        let mut child = Command::new(jobworkerd())
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--ca")
            .arg(pki.file("ca.pem"))
            .arg("--cert")
            .arg(pki.file("server.pem"))
            .arg("--key")
            .arg(pki.file("server.key"))
            .arg("--state-dir")
            .arg(state.path())
            .args(["--cgroup-parent", &cgroup_parent])
            .args(["--job-ids", &random_job_ids(), "--stop-grace", "2s"])
            .arg("--bind-ro")
            .arg(format!("{}:/data", data.path().display()))
            // Plain log lines, so that the address can be read from them.
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn jobworkerd serve");

        let log = Arc::new(Mutex::new(String::new()));
        let (address_tx, address_rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        let log_writer = log.clone();
        // Drains the daemon's stderr for its whole life (a full pipe would block it) and
        // reports the address once.
        thread::spawn(move || {
            let mut address_tx = Some(address_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("jobworkerd listening")
                    && let (Some(tx), Some(address)) = (address_tx.take(), listen_address(&line))
                {
                    let _ = tx.send(address);
                }
                let mut log = log_writer.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });

        let mut server = TestServer {
            pki,
            state,
            data,
            child: Some(child),
            address: String::new(),
            log,
        };
        match address_rx.recv_timeout(START_TIMEOUT) {
            Ok(address) => server.address = address,
            Err(_) => panic!(
                "jobworkerd did not report `jobworkerd listening ... listen=ADDRESS` within \
                 {START_TIMEOUT:?}; its log:\n{}",
                server.log()
            ),
        }
        server
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// jobctl, connected to this server as `alice` through the PKI directory (the way the
    /// quickstart uses it: environment, no flags).
    pub fn jobctl(&self) -> Command {
        let mut command = jobctl();
        command
            .env("JOBCTL_SERVER", &self.address)
            .env("JOBCTL_PKI_DIR", self.pki.path());
        command
    }

    /// Runs jobctl with `args`, asserts that it succeeded, and returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.jobctl().args(args).output().expect("run jobctl");
        assert_eq!(
            out.status.code(),
            Some(0),
            "jobctl {args:?} failed\nstderr: {}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).expect("jobctl printed UTF-8")
    }

    /// `jobctl start -- command...`, returning the job id.
    pub fn start_job(&self, command: &[&str]) -> String {
        let mut args = vec!["start", "--"];
        args.extend_from_slice(command);
        let stdout = self.ok(&args);
        let id = stdout
            .strip_suffix('\n')
            .unwrap_or_else(|| panic!("start must print the id and a newline, got {stdout:?}"));
        assert!(
            is_uuid(id),
            "start must print only the job id, got {stdout:?}"
        );
        id.to_owned()
    }

    /// The job's status as `jobctl status --output json` reports it.
    pub fn status_json(&self, id: &str) -> serde_json::Value {
        let stdout = self.ok(&["status", "--output", "json", id]);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("status JSON: {e}: {stdout}"))
    }

    /// Waits until the job has ended and returns its JSON status.
    pub fn wait_for_end(&self, id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status_json(id);
            if !matches!(status["state"].as_str(), Some("running" | "stopping")) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} still running: {status}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    // Not a panic: a panic while unwinding from a failed test would abort and
                    // hide the original failure.
                    eprintln!("jobworkerd ignored SIGTERM for {STOP_TIMEOUT:?}; killed it");
                    return;
                }
            }
        }
    }
}

/// `listen=127.0.0.1:PORT` in a log line, without any terminal colour codes around it.
fn listen_address(line: &str) -> Option<String> {
    let plain = strip_ansi(line);
    let start = plain.find("listen=")? + "listen=".len();
    let address: String = plain[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ',')
        .collect();
    (!address.is_empty()).then_some(address)
}

fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI sequences: ESC [ parameters final-letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// jobctl with none of the developer's JOBCTL_* settings.
pub fn jobctl() -> Command {
    let mut command = Command::new(JOBCTL);
    for name in JOBCTL_ENV {
        command.env_remove(name);
    }
    command.stdin(Stdio::null());
    command
}

pub fn assert_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the end-to-end tests need root: jobworkerd creates namespaces and cgroups (run them \
         as root, e.g. with sudo)"
    );
}

/// A loopback port with nothing listening on it.
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
    // The listener closes here: the port is free, and nothing else is likely to take it
    // within the test's few milliseconds.
}

pub fn is_uuid(text: &str) -> bool {
    uuid::Uuid::parse_str(text).is_ok() && text.len() == 36
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts exit code 1, nothing on stdout, and exactly `expected` on stderr.
pub fn assert_failure(out: &Output, expected_stderr: &str) {
    assert_eq!(
        stderr_of(out),
        expected_stderr,
        "stderr (exit status {:?})",
        out.status
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit code; stderr: {}",
        stderr_of(out)
    );
    assert_eq!(stdout_of(out), "", "nothing on stdout when failing");
}

/// Reads `stdout` until `needle` has been seen, failing the test if that takes longer than
/// `timeout`; returns what was read and the still open pipe.
pub fn read_until(stdout: ChildStdout, needle: &[u8], timeout: Duration) -> (Vec<u8>, ChildStdout) {
    let (tx, rx) = mpsc::channel();
    let needle = needle.to_vec();
    thread::spawn(move || {
        let mut stdout = stdout;
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        while !seen.windows(needle.len()).any(|w| w == needle.as_slice()) {
            match stdout.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buffer[..n]),
            }
        }
        let _ = tx.send((seen, stdout));
    });
    rx.recv_timeout(timeout)
        .unwrap_or_else(|_| panic!("nothing like the expected output within {timeout:?}"))
}

/// Waits for `child` for at most `timeout`, killing it if it is still running then.
pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("jobctl still running after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGINT, as Ctrl-C in a terminal would.
pub fn interrupt(child: &Child) {
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
    kill(pid, Signal::SIGINT).expect("send SIGINT");
}
