//! What every end-to-end test needs: a real `jobworkerd` with its own development PKI, state
//! directory and cgroup parent (from jobworker-testkit), and the real `jobctl` pointed at it.
//!
//! The daemon binary is not built by `cargo test -p jobctl` (a binary of another package):
//! build the workspace first (`cargo build --workspace`, as `scripts/test` does). It is looked up
//! next to `jobctl`, in the same target directory.

#![allow(dead_code)] // each test binary uses a different part

use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

pub use jobworker_testkit::Pki;
use jobworker_testkit::{Daemon, eventually_blocking};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The CLI under test.
pub const JOBCTL: &str = env!("CARGO_BIN_EXE_jobctl");

/// Where jobctl would look for its config file and the default PKI unless a test says
/// otherwise: a directory that does not exist, so nothing of the developer's leaks in.
pub const NO_HOME: &str = "/nonexistent/jobctl-test-home";

/// Environment variables that must not leak from the developer's shell into a test.
/// JOBCTL_CONNECT_TIMEOUT is let through: the cgroup v2 guest, emulated, needs a longer one.
const JOBCTL_ENV: [&str; 11] = [
    "JOBCTL_SERVER",
    "JOBCTL_PKI_DIR",
    "JOBCTL_USER",
    "JOBCTL_CA",
    "JOBCTL_CERT",
    "JOBCTL_KEY",
    "JOBCTL_CONTEXT",
    "JOBCTL_CONFIG",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "NO_COLOR",
];

/// A running `jobworkerd serve` with a fresh development PKI (alice, bob, admin), stopped and
/// cleaned up when dropped.
pub struct TestServer {
    /// Declared first so that it stops before the PKI's files go.
    pub daemon: Daemon,
    pub pki: Pki,
}

impl TestServer {
    /// Starts a daemon on a free loopback port, with a fresh PKI, state directory and cgroup
    /// parent (so that tests may run in parallel).
    pub fn start() -> TestServer {
        assert_root();
        let pki = Pki::dev();
        let daemon = Daemon::start(pki.dir());
        TestServer { daemon, pki }
    }

    /// 127.0.0.1:PORT.
    pub fn address(&self) -> String {
        self.daemon.address().to_string()
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// jobctl, connected to this server as `alice` through the PKI directory (the way the
    /// quickstart uses it: environment, no flags).
    pub fn jobctl(&self) -> Command {
        let mut command = jobctl();
        command
            .env("JOBCTL_SERVER", self.address())
            .env("JOBCTL_PKI_DIR", self.pki.dir());
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
        let mut status = serde_json::Value::Null;
        let ended = eventually_blocking(Duration::from_secs(30), || {
            status = self.status_json(id);
            !matches!(status["state"].as_str(), Some("running" | "stopping"))
        });
        assert!(ended, "job {id} still running: {status}");
        status
    }
}

/// jobctl with none of the developer's JOBCTL_* settings, config file or PKI.
pub fn jobctl() -> Command {
    let mut command = Command::new(JOBCTL);
    for name in JOBCTL_ENV {
        command.env_remove(name);
    }
    command.env("HOME", NO_HOME).stdin(Stdio::null());
    command
}

/// Splits `jobctl run`'s stderr into the job id it announces first and the rest (the job's
/// own stderr and anything else jobctl says).
pub fn announced_job(stderr: &str) -> (String, String) {
    let (first, rest) = stderr.split_once('\n').unwrap_or((stderr, ""));
    let id = first
        .strip_prefix("jobctl: started job ")
        .unwrap_or_else(|| panic!("run must announce the job first on stderr, got {stderr:?}"));
    assert!(is_uuid(id), "not a job id in {first:?}");
    (id.to_owned(), rest.to_owned())
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
    let mut status = None;
    eventually_blocking(timeout, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    status.unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("jobctl still running after {timeout:?}");
    })
}

/// Sends SIGINT, as Ctrl-C in a terminal would.
pub fn interrupt(child: &Child) {
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
    kill(pid, Signal::SIGINT).expect("send SIGINT");
}
