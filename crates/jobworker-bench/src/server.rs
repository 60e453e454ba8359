//! The daemon under test: the development PKI, a real `jobworkerd serve` process, and what we
//! read about it from `/proc`.
//!
//! Each figure starts its own daemon, so its peak memory (`VmHWM`, which cannot be reset)
//! belongs to that figure alone. A [`Daemon`] is a guard: however a figure ends, the daemon is
//! sent SIGTERM (which stops its jobs and removes their cgroups) and, if it does not exit, is
//! killed and its cgroups removed here.
//!
//! Daemons run side by side (a figure compares two, another agent's tests may run daemons on
//! the same machine), so each gets its own state directory, cgroup parent and job uid range.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use jobworker_api::pb::job_worker_client::JobWorkerClient;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;
use tonic::transport::Channel;

/// How long the daemon may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the daemon may take to exit after SIGTERM: it stops its jobs first (grace
/// [`STOP_GRACE`]) and gives connections a few seconds to drain.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The daemon's grace period between SIGTERM and SIGKILL of a job.
const STOP_GRACE: &str = "2s";

/// How many of the daemon's last log lines are kept for error messages.
const LOG_TAIL: usize = 20;

/// How many of the daemon's warnings and errors are quoted in full (all are counted).
const PROBLEMS_KEPT: usize = 10;

/// The client identity most figures use (an ordinary user, not an admin).
pub const USER: &str = "bench";

/// The users of the noisy-neighbour figure: the one measured, and the one making the noise.
pub const ALICE: &str = "alice";
/// See [`ALICE`].
pub const MALLORY: &str = "mallory";

/// Where state directories are made: the file system of the daemon's default
/// `/var/lib/jobworker` on a usual install. Not `/tmp`, which may be a tmpfs, where the fsync of
/// every job record would cost nothing and the durability figure would measure nothing.
pub const STATE_PARENT: &str = "/var/tmp";

/// Job uids per daemon: more than any figure runs at once (figure 5 runs 1000 jobs).
const JOB_IDS_PER_DAEMON: u32 = 4096;

/// The binaries the benchmark drives.
pub struct Binaries {
    /// The daemon.
    pub jobworkerd: PathBuf,
    /// The command-line client.
    pub jobctl: PathBuf,
    /// The program the daemon execs as each job's init: `jobworker-init` beside it if built,
    /// else the daemon itself (the library's rule); the direct-sandbox floor uses the same.
    pub init: PathBuf,
}

impl Binaries {
    /// Finds both next to this executable (`target/release/`), so the benchmark always drives
    /// the binaries of its own build profile.
    pub fn locate() -> anyhow::Result<Binaries> {
        let exe = std::env::current_exe().context("cannot find this executable's path")?;
        let dir = exe
            .parent()
            .context("this executable's path has no directory")?;
        let find = |name: &str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(anyhow::anyhow!(
                    "{} is missing: the benchmark drives the real binaries; build them first with \
                     `cargo build --release --workspace --locked`",
                    path.display()
                ))
            }
        };
        let jobworkerd = find("jobworkerd")?;
        let init = find("jobworker-init").unwrap_or_else(|_| jobworkerd.clone());
        Ok(Binaries {
            jobworkerd,
            jobctl: find("jobctl")?,
            init,
        })
    }
}

/// A development PKI (CA, server, clients `bench`, `alice` and `mallory`) in a temporary
/// directory.
pub struct Pki {
    /// Holds the files; removed on drop.
    dir: TempDir,
}

impl Pki {
    /// Issues the certificates with the API crate's development CA.
    pub fn create() -> anyhow::Result<Pki> {
        let dir = tempfile::Builder::new()
            .prefix("jobworker-bench-pki-")
            .tempdir()
            .context("cannot create a directory for the PKI")?;
        let users = [USER, ALICE, MALLORY].map(str::to_owned);
        jobworker_api::pki::init(dir.path(), &users, &[], 1, false)
            .context("cannot create the development PKI")?;
        Ok(Pki { dir })
    }

    /// A file of the PKI, e.g. `ca.pem`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The certificate and key files of user `bench`.
    pub fn client_files(&self) -> (PathBuf, PathBuf) {
        self.user_files(USER)
    }

    /// The certificate and key files of `user`.
    fn user_files(&self, user: &str) -> (PathBuf, PathBuf) {
        (
            self.file(&format!("{user}.pem")),
            self.file(&format!("{user}.key")),
        )
    }

    /// The client side of the TLS policy for user `bench`, as `jobctl` builds it.
    pub fn client_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        self.client_config_for(USER)
    }

    /// The client side of the TLS policy for `user`.
    pub fn client_config_for(&self, user: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let (cert, key) = self.user_files(user);
        Ok(jobworker_api::tls::client_config(
            &self.file("ca.pem"),
            &cert,
            &key,
        )?)
    }

    /// The server side of the TLS policy, as `jobworkerd` builds it.
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        Ok(jobworker_api::tls::server_config(
            &self.file("ca.pem"),
            &self.file("server.pem"),
            &self.file("server.key"),
        )?)
    }
}

/// A fresh, empty state directory (0700, as the daemon makes it) on the disk a production
/// daemon's state lives on; removed on drop.
pub fn state_dir() -> anyhow::Result<TempDir> {
    tempfile::Builder::new()
        .prefix("jobworker-bench-state-")
        .tempdir_in(STATE_PARENT)
        .with_context(|| format!("cannot create a state directory in {STATE_PARENT}"))
}

/// A range of job uids (`FIRST-LAST`) of its own for one daemon or worker, picked at random so
/// that daemons running at once (this run's, or other tests' on the machine) do not collide: a
/// daemon refuses to start on a range another running one holds.
pub fn random_job_ids() -> (u32, u32) {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    let block = u32::from(u16::from_le_bytes([bytes[0], bytes[1]]));
    // Clear of system accounts, systemd's DynamicUser range, the daemon's default range
    // (0x70000000) and the test kit's blocks (from 1,000,000,000, 64 M ids).
    let first = 1_200_000_000 + block * JOB_IDS_PER_DAEMON;
    (first, first + JOB_IDS_PER_DAEMON - 1)
}

/// How a daemon is started, beyond what every benchmark daemon gets.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Keep state in this directory (which outlives the daemon); a fresh one when `None`.
    pub state_dir: Option<PathBuf>,
    /// Put job cgroups below this parent (e.g. a second daemon on the same state directory);
    /// a unique one when `None`.
    pub cgroup_parent: Option<String>,
    /// More `jobworkerd serve` flags.
    pub args: Vec<String>,
}

impl Options {
    /// Default settings plus `args`.
    pub fn with_args(args: &[&str]) -> Options {
        Options {
            args: args.iter().map(|&arg| arg.to_owned()).collect(),
            ..Options::default()
        }
    }
}

/// A running `jobworkerd serve` with its own state directory and cgroup parent.
pub struct Daemon {
    /// `None` once it has been stopped and reaped.
    child: Option<Child>,
    /// `127.0.0.1:PORT`, as the daemon logged it.
    address: String,
    /// The job cgroup parents the daemon logged; removed here if the daemon could not.
    cgroup_parents: Vec<PathBuf>,
    /// Warnings and errors the daemon logged: a benchmark run must cause none.
    problems: Arc<AtomicUsize>,
    /// The first of them, quoted in the error.
    first_problems: Arc<Mutex<Vec<String>>>,
    /// The daemon's last log lines, for error messages.
    tail: Arc<Mutex<VecDeque<String>>>,
    /// When it was spawned.
    spawned: Instant,
    /// From the exec to the line saying it listens (its start-up, reloading included).
    startup: Duration,
    /// Its `--state-dir`.
    state_path: PathBuf,
    /// The state directory when the daemon made it; removed on drop, after the daemon is gone
    /// (field order).
    _state: Option<TempDir>,
}

/// The daemon's memory, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Resident now (`VmRSS`).
    pub rss: u64,
    /// The most ever resident (`VmHWM`).
    pub peak: u64,
}

impl Daemon {
    /// Starts a daemon on a free loopback port with default settings and waits until it
    /// listens.
    pub fn start(bins: &Binaries, pki: &Pki) -> anyhow::Result<Daemon> {
        Daemon::start_with(bins, pki, &Options::default())
    }

    /// Starts a daemon with `options` and waits until it listens.
    ///
    /// Blocks for the daemon's start-up (tens of milliseconds); nothing else runs then.
    pub fn start_with(bins: &Binaries, pki: &Pki, options: &Options) -> anyhow::Result<Daemon> {
        let (state, state_path) = match &options.state_dir {
            Some(path) => (None, path.clone()),
            None => {
                let state = state_dir()?;
                let path = state.path().to_owned();
                (Some(state), path)
            }
        };
        // Unique, so that concurrent runs and tests never share (or clean up) each other's jobs.
        let cgroup_parent = options
            .cgroup_parent
            .clone()
            .unwrap_or_else(|| format!("bench-{}", uuid::Uuid::new_v4()));
        let (first, last) = random_job_ids();
        let mut command = Command::new(&bins.jobworkerd);
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--ca")
            .arg(pki.file("ca.pem"))
            .arg("--cert")
            .arg(pki.file("server.pem"))
            .arg("--key")
            .arg(pki.file("server.key"))
            .arg("--state-dir")
            .arg(&state_path)
            .args(["--cgroup-parent", &cgroup_parent])
            .args(["--job-ids", &format!("{first}-{last}")])
            .args(["--stop-grace", STOP_GRACE])
            .args(&options.args)
            // No JOBWORKER_* setting of the caller's shell may change what is measured; info is
            // the level the daemon runs at in production (it logs every start).
            .env_clear()
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // If the benchmark dies without running its guards (SIGKILL), the daemon still gets
        // SIGTERM and stops its jobs. The signal is tied to the thread that forks, not the
        // process: daemons are started from the main thread (which runs the benchmark's
        // future), never from a pool thread that could exit first.
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot run {}", bins.jobworkerd.display()))?;
        let stderr = child
            .stderr
            .take()
            .context("the daemon's stderr is not piped")?;

        let problems = Arc::new(AtomicUsize::new(0));
        let first_problems = Arc::new(Mutex::new(Vec::new()));
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL)));
        let (listening_tx, listening_rx) = mpsc::channel();
        let (problems_w, first_w, tail_w) =
            (problems.clone(), first_problems.clone(), tail.clone());
        // Drains the daemon's log for its whole life (a full pipe would block it).
        std::thread::spawn(move || {
            let mut listening_tx = Some(listening_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains(" WARN ") || line.contains(" ERROR ") {
                    problems_w.fetch_add(1, Ordering::Relaxed);
                    let mut first = first_w.lock().unwrap_or_else(|e| e.into_inner());
                    if first.len() < PROBLEMS_KEPT {
                        first.push(line.clone());
                    }
                }
                if line.contains("jobworkerd listening")
                    && let Some(tx) = listening_tx.take()
                {
                    let _ = tx.send((line.clone(), Instant::now()));
                }
                let mut tail = tail_w.lock().unwrap_or_else(|e| e.into_inner());
                if tail.len() == LOG_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });

        let mut daemon = Daemon {
            child: Some(child),
            address: String::new(),
            cgroup_parents: Vec::new(),
            problems,
            first_problems,
            tail,
            spawned,
            startup: Duration::ZERO,
            state_path,
            _state: state,
        };
        let (line, listening) = listening_rx.recv_timeout(START_TIMEOUT).map_err(|_| {
            anyhow::anyhow!(
                "jobworkerd did not log `jobworkerd listening listen=ADDRESS` within \
                 {START_TIMEOUT:?}; its log ends with:\n{}",
                daemon.log_tail()
            )
        })?;
        daemon.address = field(&line, "listen=")
            .context("the daemon's listening line has no listen= field")?
            .to_owned();
        daemon.cgroup_parents = cgroup_parents(&line);
        daemon.startup = listening.duration_since(spawned);
        Ok(daemon)
    }

    /// From the exec to the line saying it listens: its whole start-up, reloading the state
    /// directory included (it listens only once the worker is ready).
    pub fn startup(&self) -> Duration {
        self.startup
    }

    /// When it was spawned (just before the exec).
    pub fn spawned(&self) -> Instant {
        self.spawned
    }

    /// Its state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_path
    }

    /// How many file descriptors the daemon has open now.
    pub fn open_fds(&self) -> anyhow::Result<usize> {
        open_fds(self.pid()?)
    }

    /// The daemon's process id.
    pub fn pid(&self) -> anyhow::Result<u32> {
        Ok(self
            .child
            .as_ref()
            .context("the daemon has been stopped")?
            .id())
    }

    /// The directories the daemon creates job cgroups in (one per v1 hierarchy).
    pub fn cgroup_parents(&self) -> &[PathBuf] {
        &self.cgroup_parents
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A new client connection (TCP, TLS handshake, HTTP/2), made the way `jobctl` makes it.
    pub async fn connect(
        &self,
        tls: Arc<rustls::ClientConfig>,
    ) -> anyhow::Result<JobWorkerClient<Channel>> {
        jobworker_api::connect(&self.address, tls)
            .await
            .with_context(|| format!("cannot connect to the daemon at {}", self.address))
    }

    /// The daemon's memory now, and its peak so far.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        memory(self.pid()?)
    }

    /// CPU time (user and system) the daemon has used so far.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        cpu_time(&self.pid()?.to_string())
    }

    /// Stops the daemon the way an operator would (SIGTERM: it stops its jobs and removes their
    /// cgroups) and checks that it exited cleanly, removed its cgroups and logged no warning.
    ///
    /// Drop every client of this daemon first: it waits for open connections to drain.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        terminate(&child)?;
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().context("cannot wait for the daemon")? {
                break status;
            }
            if Instant::now() >= deadline {
                kill_and_reap(&mut child);
                remove_cgroups(&self.cgroup_parents);
                bail!(
                    "jobworkerd did not exit within {EXIT_TIMEOUT:?} of SIGTERM; killed it. Its \
                     log ends with:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        self.check_exit(status)
    }

    fn check_exit(&self, status: ExitStatus) -> anyhow::Result<()> {
        if !status.success() {
            remove_cgroups(&self.cgroup_parents);
            bail!(
                "jobworkerd exited with {status}; its log ends with:\n{}",
                self.log_tail()
            );
        }
        let left: Vec<&PathBuf> = self
            .cgroup_parents
            .iter()
            .filter(|dir| dir.exists())
            .collect();
        if !left.is_empty() {
            let message = format!("jobworkerd left its cgroup parents behind: {left:?}");
            remove_cgroups(&self.cgroup_parents);
            bail!(message);
        }
        // The reader thread may still be reading the last lines; they were written before the
        // exit, so they are in the pipe and a moment is enough.
        std::thread::sleep(Duration::from_millis(50));
        let problems = self.problems.load(Ordering::Relaxed);
        if problems > 0 {
            let first = self
                .first_problems
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .join("\n  ");
            bail!(
                "jobworkerd logged {problems} warning(s) or error(s), the first:\n  {first}\nits log \
                 ends with:\n{}",
                self.log_tail()
            );
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.iter().map(|line| format!("  {line}\n")).collect()
    }
}

/// Runs `measure` against a fresh daemon, then stops the daemon and checks its exit.
///
/// `measure` adds its rows to the report itself, so what it measured is kept even when the
/// daemon then fails to shut down cleanly (which is still an error).
pub async fn with_daemon<T>(
    bins: &Binaries,
    pki: &Pki,
    measure: impl AsyncFnOnce(&Daemon) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    with_daemon_options(bins, pki, &Options::default(), measure).await
}

/// [`with_daemon`] with a daemon started with `options`.
pub async fn with_daemon_options<T>(
    bins: &Binaries,
    pki: &Pki,
    options: &Options,
    measure: impl AsyncFnOnce(&Daemon) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let daemon = Daemon::start_with(bins, pki, options)?;
    let measured = measure(&daemon).await;
    let stopped = daemon.stop().await;
    let value = measured?;
    stopped?;
    Ok(value)
}

impl Drop for Daemon {
    /// The unhappy path (a figure failed or was interrupted): SIGTERM, a bounded wait, then
    /// SIGKILL and our own clean-up of the daemon's cgroups.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if terminate(&child).is_ok() {
            let deadline = Instant::now() + EXIT_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) | Err(_) = child.try_wait() {
                    remove_cgroups(&self.cgroup_parents);
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        eprintln!("jobworker-bench: jobworkerd did not exit after SIGTERM; killing it");
        kill_and_reap(&mut child);
        remove_cgroups(&self.cgroup_parents);
    }
}

fn terminate(child: &Child) -> anyhow::Result<()> {
    let pid = Pid::from_raw(i32::try_from(child.id()).context("the daemon's pid exceeds i32")?);
    kill(pid, Signal::SIGTERM).context("cannot send SIGTERM to the daemon")
}

fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills what is left in the daemon's job cgroups and removes them and their parents.
///
/// Only needed when the daemon could not clean up itself (it was killed). The job cgroups'
/// processes are SIGKILLed: a job's init is PID 1 of its namespace, so killing it kills the
/// job. Best effort: failures are printed, the run already reports an error.
fn remove_cgroups(parents: &[PathBuf]) {
    for parent in parents.iter().filter(|dir| dir.exists()) {
        let children: Vec<PathBuf> = std::fs::read_dir(parent)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|entry| entry.path())
                    .filter(|path| path.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        for dir in children.iter().chain(std::iter::once(parent)) {
            if let Err(e) = remove_cgroup(dir) {
                eprintln!(
                    "jobworker-bench: cannot remove cgroup {}: {e}",
                    dir.display()
                );
            }
        }
    }
}

fn remove_cgroup(dir: &Path) -> io::Result<()> {
    // A killed process leaves its cgroup only once the kernel has torn it down: retry briefly.
    let mut result = Ok(());
    for _ in 0..100 {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|line| line.parse::<i32>().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        result = std::fs::remove_dir(dir);
        match &result {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    result
}

/// The value of `key` (e.g. `listen=`) in a log line: up to the next space or comma.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(key)? + key.len();
    let value = &line[start..];
    let end = value.find([' ', ',']).unwrap_or(value.len());
    (end > 0).then(|| &value[..end])
}

/// The paths in `cgroup_parents=["/sys/fs/cgroup/cpu/x", ...]` (the daemon logs them with
/// `Debug`).
fn cgroup_parents(line: &str) -> Vec<PathBuf> {
    let Some(start) = line.find("cgroup_parents=[") else {
        return Vec::new();
    };
    let list = &line[start + "cgroup_parents=[".len()..];
    let list = &list[..list.find(']').unwrap_or(list.len())];
    list.split(", ")
        .map(|quoted| quoted.trim_matches('"'))
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// The memory of process `pid`, from `/proc/PID/status`.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let kib = |key: &str| -> anyhow::Result<u64> {
        let value = status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|number| number.trim().parse::<u64>().ok())
            .with_context(|| format!("{path} has no {key} line in kB"))?;
        Ok(value * 1024)
    };
    Ok(Memory {
        rss: kib("VmRSS:")?,
        peak: kib("VmHWM:")?,
    })
}

/// How many file descriptors process `pid` has open now.
pub fn open_fds(pid: u32) -> anyhow::Result<usize> {
    let path = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&path)
        .with_context(|| format!("cannot list {path}"))?
        .count())
}

/// The disk space the files under `dir` take (as `du` counts it: allocated blocks).
pub fn du(dir: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            // Removed meanwhile (the daemon removes jobs while we count).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot stat {}", entry.path().display()));
            }
        };
        total += meta.blocks() * 512;
        if meta.is_dir() {
            match du(&entry.path()) {
                Ok(bytes) => total += bytes,
                Err(e)
                    if e.downcast_ref::<std::io::Error>()
                        .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(total)
}

/// User plus system CPU time of a process (`self` for this one), from `/proc/PID/stat`.
pub fn cpu_time(pid: &str) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name (field 2) may contain spaces; the fields after its ')' do not.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path} is malformed"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index)
            .and_then(|value| value.parse().ok())
            .with_context(|| format!("{path} has no CPU time field"))
    };
    // SAFETY: sysconf only reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_secs_f64(total as f64 / per_second as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTENING: &str = "2025-01-01T00:00:00.000000Z  INFO jobworkerd: jobworkerd listening \
        (mutual TLS 1.3) listen=127.0.0.1:41234 cgroup=V1 \
        cgroup_parents=[\"/sys/fs/cgroup/cpu/bench-1\", \"/sys/fs/cgroup/memory/x/bench-1\"]";

    #[test]
    fn the_address_is_read_from_the_listening_line() {
        assert_eq!(field(LISTENING, "listen="), Some("127.0.0.1:41234"));
    }

    #[test]
    fn the_cgroup_parents_are_read_from_their_debug_list() {
        assert_eq!(
            cgroup_parents(LISTENING),
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu/bench-1"),
                PathBuf::from("/sys/fs/cgroup/memory/x/bench-1"),
            ]
        );
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {}
        assert!(cpu_time("self").expect("cpu time") > Duration::ZERO);
    }
}
