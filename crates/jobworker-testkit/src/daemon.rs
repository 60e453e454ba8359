//! The real `jobworkerd serve`, as a guard.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::poll::eventually_blocking;

/// How long the daemon may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the daemon may take to exit after SIGTERM: it stops its jobs first (the guard
/// starts it with a 2 s grace period), then removes their cgroups.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A range of 64 job uids (`FIRST-LAST`) picked at random among a million such blocks: daemons
/// of tests running at the same time each need a range no other running one holds (a second
/// daemon with an overlapping range refuses to start).
pub fn random_job_ids() -> String {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    let block = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], 0]) % (1 << 20);
    let first = 1_000_000_000 + block * 64;
    format!("{first}-{}", first + 63)
}

/// The `jobworkerd` binary of the target directory the running test was built into.
///
/// Tests of other packages than jobworkerd do not get it built by `cargo test -p ...`: build
/// the workspace first (`cargo build --workspace`, as `scripts/test` does).
pub fn jobworkerd() -> PathBuf {
    // A test binary is target/<profile>/deps/<name>-<hash>; binaries are in target/<profile>.
    let exe = std::env::current_exe().expect("the path of the running test");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join("jobworkerd"))
        .unwrap_or_else(|| panic!("{} is not in a target directory", exe.display()));
    assert!(
        path.is_file(),
        "{} is missing: these tests run the real daemon; build it first with `cargo build \
         --workspace` (same profile as the tests)",
        path.display()
    );
    path
}

/// How to start a [`Daemon`]; [`Daemon::options`] has the defaults.
pub struct DaemonOptions {
    /// The PKI directory: `ca.pem`, `server.pem`, `server.key`.
    pki_dir: PathBuf,
    /// Job output logs; a fresh temporary directory unless set.
    state_dir: Option<PathBuf>,
    /// The cgroup parent flag; a unique name below the daemon's cgroup unless set.
    cgroup_parent: Option<String>,
    /// The `--job-ids` range; a random one of 64 ids unless set.
    job_ids: Option<String>,
    /// The `--listen` address; a free loopback port unless set.
    listen: Option<SocketAddr>,
    /// More `serve` flags.
    args: Vec<OsString>,
    /// More environment variables.
    env: Vec<(OsString, OsString)>,
    /// A program that execs the daemon (keeping its pid), with its arguments, e.g. `prlimit`.
    wrapper: Option<(OsString, Vec<OsString>)>,
}

impl DaemonOptions {
    /// Keeps job output logs in `dir` (which outlives the daemon) instead of a fresh one.
    pub fn state_dir(mut self, dir: &Path) -> Self {
        self.state_dir = Some(dir.to_owned());
        self
    }

    /// Puts job cgroups below `parent`, e.g. to start a second daemon where a first left off.
    pub fn cgroup_parent(mut self, parent: &str) -> Self {
        self.cgroup_parent = Some(parent.to_owned());
        self
    }

    /// Runs jobs with uids from `range` (`FIRST-LAST`), e.g. a second daemon taking over the
    /// jobs of a first.
    pub fn job_ids(mut self, range: &str) -> Self {
        self.job_ids = Some(range.to_owned());
        self
    }

    /// Listens on `address`, e.g. a daemon taking over from one that crashed, at the address
    /// its clients reconnect to.
    pub fn listen(mut self, address: SocketAddr) -> Self {
        self.listen = Some(address);
        self
    }

    /// Adds a flag of `jobworkerd serve`.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Starts the daemon through `program args... jobworkerd ...` (a wrapper that execs it,
    /// such as `prlimit`).
    pub fn wrapped_by(mut self, program: impl Into<OsString>, args: &[&str]) -> Self {
        self.wrapper = Some((program.into(), args.iter().map(OsString::from).collect()));
        self
    }

    /// Sets an environment variable of the daemon.
    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Starts the daemon and waits until it reports its address.
    pub fn start(self) -> Daemon {
        let (state, state_dir) = match self.state_dir {
            Some(dir) => (None, dir),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("jobworkerd-test-state-")
                    .tempdir()
                    .expect("a temporary state directory");
                let dir = temp.path().to_owned();
                (Some(temp), dir)
            }
        };
        let cgroup_parent = self
            .cgroup_parent
            .unwrap_or_else(|| format!("jobworker-test-{}", uuid::Uuid::new_v4()));
        let job_ids = self.job_ids.unwrap_or_else(random_job_ids);
        let data = tempfile::Builder::new()
            .prefix("jobworkerd-test-data-")
            .tempdir()
            .expect("a temporary data directory");
        std::fs::set_permissions(
            data.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod the data directory");

        let mut command = match &self.wrapper {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(jobworkerd());
                command
            }
            None => Command::new(jobworkerd()),
        };
        // Nothing from the developer's shell changes the daemon's defaults.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("JOBWORKER_") {
                command.env_remove(name);
            }
        }
        command
            .env_remove("NOTIFY_SOCKET")
            .arg("serve")
            .arg("--listen")
            .arg(
                self.listen
                    .map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string()),
            )
            .arg("--ca")
            .arg(self.pki_dir.join("ca.pem"))
            .arg("--cert")
            .arg(self.pki_dir.join("server.pem"))
            .arg("--key")
            .arg(self.pki_dir.join("server.key"))
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--cgroup-parent", &cgroup_parent])
            .args(["--job-ids", &job_ids, "--stop-grace", "2s"])
            .arg("--bind-ro")
            .arg(format!("{}:/data", data.path().display()))
            .args(&self.args)
            // Plain log lines at info level: the address is read from one.
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .envs(self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn jobworkerd serve");

        let log = Arc::new(Mutex::new(String::new()));
        let (address_tx, address_rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("the daemon's stderr is piped");
        let lines = log.clone();
        // Drains the daemon's stderr for its whole life (a full pipe would block it), keeping
        // every line for failure messages, and reports the address once.
        let drain = thread::spawn(move || {
            let mut address_tx = Some(address_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(address) = listen_address(&line)
                    && let Some(tx) = address_tx.take()
                {
                    let _ = tx.send(address);
                }
                let mut log = lines.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });

        // The guard owns the child from here on: a failed start below still cleans up.
        let mut daemon = Daemon {
            child: Some(child),
            drain: Some(drain),
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            cgroup_parent,
            job_ids,
            data,
            _state: state,
        };
        match address_rx.recv_timeout(START_TIMEOUT) {
            Ok(address) => daemon.address = address,
            Err(_) => panic!(
                "jobworkerd did not report `listen=ADDRESS` within {START_TIMEOUT:?}; its log:\n{}",
                daemon.log()
            ),
        }
        daemon
    }
}

/// A running `jobworkerd serve` on a free loopback port, with the given PKI, a state directory
/// and a cgroup parent of its own (so tests may run in parallel).
///
/// Dropping it stops it as its service manager would (SIGTERM, then SIGKILL after a timeout)
/// and removes whatever a killed (or `--live-restore`) daemon left behind below its cgroup
/// parent: the processes in those cgroups are SIGKILLed, the cgroups removed. So when a test
/// starts a second daemon on the same cgroup parent, it drops the second one first.
pub struct Daemon {
    /// `None` once the process has been reaped.
    child: Option<Child>,
    /// The thread draining stderr; joined once the process is gone, so the log is complete.
    drain: Option<JoinHandle<()>>,
    /// Where it listens, as it reported.
    address: SocketAddr,
    /// Every line it wrote to stderr.
    log: Arc<Mutex<String>>,
    /// The `--cgroup-parent` it was given.
    cgroup_parent: String,
    /// The `--job-ids` it was given.
    job_ids: String,
    /// A host directory its jobs see read-only at /data.
    data: TempDir,
    /// A state directory created for it, removed after it (fields drop after `drop` runs).
    _state: Option<TempDir>,
}

impl Daemon {
    /// Starts a daemon with the defaults.
    pub fn start(pki_dir: &Path) -> Daemon {
        Daemon::options(pki_dir).start()
    }

    /// The defaults: TLS files from `pki_dir`, a fresh state directory, a unique cgroup
    /// parent, a random uid range, a fresh data directory at /data, `--stop-grace 2s`.
    pub fn options(pki_dir: &Path) -> DaemonOptions {
        DaemonOptions {
            pki_dir: pki_dir.to_owned(),
            state_dir: None,
            cgroup_parent: None,
            job_ids: None,
            listen: None,
            args: Vec::new(),
            env: Vec::new(),
            wrapper: None,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `https://127.0.0.1:PORT`, for gRPC clients.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.address)
    }

    /// The daemon's process id.
    pub fn pid(&self) -> Pid {
        let child = self
            .child
            .as_ref()
            .expect("the daemon has already been reaped");
        Pid::from_raw(i32::try_from(child.id()).expect("a pid fits in i32"))
    }

    /// Its `--cgroup-parent`.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// Its `--job-ids`.
    pub fn job_ids(&self) -> &str {
        &self.job_ids
    }

    /// The host directory its jobs see read-only at `/data`: a test puts files there for jobs.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// Everything it has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sends SIGTERM and waits for the orderly shutdown; panics if it takes longer than a
    /// stop should. The log is complete afterwards.
    pub fn terminate(&mut self) -> ExitStatus {
        let _ = kill(self.pid(), Signal::SIGTERM);
        match self.wait(STOP_TIMEOUT) {
            Some(status) => status,
            None => panic!(
                "jobworkerd still running {STOP_TIMEOUT:?} after SIGTERM; its log:\n{}",
                self.log()
            ),
        }
    }

    /// SIGKILL, as a crash would end it; returns once it is reaped.
    pub fn kill(&mut self) {
        let _ = kill(self.pid(), Signal::SIGKILL);
        let _ = self.wait(STOP_TIMEOUT);
    }

    /// Waits up to `within` for the process to exit, reaps it and finishes the log. `None` if
    /// it is still running.
    pub fn wait(&mut self, within: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let mut status = None;
        eventually_blocking(within, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        let status = status?;
        self.child = None;
        if let Some(drain) = self.drain.take() {
            // Its stderr is closed now, unless something the daemon started still holds it.
            if eventually_blocking(Duration::from_secs(5), || drain.is_finished()) {
                let _ = drain.join();
            }
        }
        Some(status)
    }

    /// Removes the cgroups named after this daemon's parent, killing what runs in them: what
    /// a killed or `--live-restore` daemon leaves behind. Best effort.
    fn remove_leftover_cgroups(&self) {
        remove_cgroup_trees(&cgroups_named(&self.cgroup_parent));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
            let _ = kill(pid, Signal::SIGTERM);
            if self.wait(STOP_TIMEOUT).is_none() {
                // Not a panic: a panic while unwinding from a failed test would abort and hide
                // the original failure.
                eprintln!("jobworkerd ignored SIGTERM for {STOP_TIMEOUT:?}; killing it");
                self.kill();
            }
        }
        self.remove_leftover_cgroups();
    }
}

/// `listen=127.0.0.1:PORT` in a log line, ignoring terminal colour codes around it.
fn listen_address(line: &str) -> Option<SocketAddr> {
    let plain = strip_ansi(line);
    // `listen=ADDR` in text logs, `"listen":"ADDR"` with --log-format json.
    let start = match plain.find("listen=") {
        Some(at) => at + "listen=".len(),
        None => plain.find(r#""listen":""#)? + r#""listen":""#.len(),
    };
    let address: String = plain[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && !matches!(c, ',' | '"'))
        .collect();
    address.parse().ok()
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

/// Where cgroup hierarchies are mounted (one on v2; one per controller set on v1).
fn cgroup_mounts() -> Vec<PathBuf> {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    mountinfo
        .lines()
        .filter(|line| line.contains(" - cgroup"))
        .filter_map(|line| line.split_whitespace().nth(4).map(PathBuf::from))
        .collect()
}

/// Every cgroup directory named `name`, in every hierarchy (one on v2, one per controller set
/// on v1): where a daemon given `--cgroup-parent name` keeps its jobs' cgroups.
pub fn cgroups_named(name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for mount in cgroup_mounts() {
        find_named(&mount, name, 0, &mut found);
    }
    found
}

/// The job cgroups below the daemon's parent `name`: their names (job ids), over every
/// hierarchy.
pub fn job_cgroups(name: &str) -> std::collections::BTreeSet<String> {
    cgroups_named(name)
        .iter()
        .filter_map(|parent| std::fs::read_dir(parent).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

fn find_named(dir: &Path, name: &str, depth: usize, found: &mut Vec<PathBuf>) {
    // The daemon's cgroup is the test's, rarely deeper than a few levels below a mount.
    const MAX_DEPTH: usize = 6;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if entry.file_name() == name {
            found.push(path);
        } else if depth < MAX_DEPTH {
            find_named(&path, name, depth + 1, found);
        }
    }
}

/// SIGKILLs every process in `dir` and the cgroups below it.
/// Kills every process in the cgroups `dirs` and below, then removes them: the clean-up for a
/// test that failed before it could shut its worker down.
pub fn remove_cgroup_trees(dirs: &[PathBuf]) {
    for dir in dirs {
        kill_all_below(dir);
    }
    for dir in dirs {
        // Killed processes leave their cgroups once the kernel has reaped them.
        eventually_blocking(Duration::from_secs(5), || {
            remove_tree(dir);
            !dir.exists()
        });
    }
}

/// Removes cgroups, and kills what runs in them, if dropped while a test panics: a failed test
/// never reaches its worker's shutdown, and its jobs and cgroups would outlive it.
pub struct CleanupOnPanic(Vec<PathBuf>);

impl CleanupOnPanic {
    /// A guard for the cgroups `dirs` (a worker's parents).
    pub fn new(dirs: Vec<PathBuf>) -> CleanupOnPanic {
        CleanupOnPanic(dirs)
    }
}

impl Drop for CleanupOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            remove_cgroup_trees(&self.0);
        }
    }
}

fn kill_all_below(dir: &Path) {
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                kill_all_below(&entry.path());
            }
        }
    }
}

/// rmdir of a cgroup and its children, innermost first (cgroupfs removes only empty cgroups,
/// one directory at a time).
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
