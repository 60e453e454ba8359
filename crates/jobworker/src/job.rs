//! One job: its identity, state and output, and the supervisor thread that runs it.
//!
//! Each job has one supervisor thread, which owns everything that needs blocking system calls:
//! it creates the cgroup and the log, clones the init, waits for it to report "ready", then
//! copies the job's stdout and stderr into the log until both close, reaps the init, reads the
//! cgroup's usage, removes the cgroup and publishes the final state. A thread per running job is
//! proportionate (each job is already at least two processes) and keeps every step a plain,
//! sequential system call. Everyone else only reads the state through a `watch` channel and
//! sends signals through the init's pidfd.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use crate::cgroup::{Cgroups, DevNum, JobCgroup};
use crate::output::{self, Log, LogWriter, Stream};
use crate::protocol::{self, Stage};
use crate::spawn::{self, InitCommand};
use crate::{CommandSpec, Error, Limits};

/// A job's identity: a random UUID, also the job's hostname.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(Uuid);

impl JobId {
    pub(crate) fn new() -> JobId {
        JobId(Uuid::new_v4())
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// The text is not a job id.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a job id (expected a UUID such as 67e55044-10b1-426f-9247-bb680e5fe0c8)")]
pub struct ParseJobIdError(String);

impl FromStr for JobId {
    type Err = ParseJobIdError;

    fn from_str(s: &str) -> Result<JobId, ParseJobIdError> {
        Uuid::parse_str(s)
            .map(JobId)
            .map_err(|_| ParseJobIdError(s.chars().take(64).collect()))
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// The command is running.
    Running,
    /// The command exited with this code.
    Exited(i32),
    /// The command was killed by this signal.
    Signaled(i32),
    /// The kernel's OOM killer ended the job at its memory limit.
    OomKilled,
}

/// Resources a job used, measured by its cgroup when it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// CPU time, user and system, of all the job's processes.
    pub cpu_time: Duration,
    /// The most memory the job held at once, when the kernel reports it.
    pub peak_memory_bytes: Option<u64>,
}

/// A snapshot of a job, for status and listings.
#[derive(Debug, Clone, PartialEq)]
pub struct JobStatus {
    /// The job's id.
    pub id: JobId,
    /// Who started it (opaque to the library).
    pub owner: String,
    /// The program as given.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The limits in force (request merged with the worker's defaults).
    pub limits: Limits,
    /// Running, or how it ended.
    pub state: JobState,
    /// Whether someone asked for the job to stop.
    pub stop_requested: bool,
    /// When the command was exec'd.
    pub started_at: SystemTime,
    /// When the job ended.
    pub ended_at: Option<SystemTime>,
    /// What it used, once ended.
    pub usage: Option<Usage>,
}

/// The final record of a job, published once by its supervisor.
#[derive(Debug, Clone, Copy)]
struct Ended {
    state: JobState,
    at: SystemTime,
    usage: Usage,
}

/// A started job.
pub(crate) struct Job {
    pub(crate) id: JobId,
    pub(crate) owner: String,
    spec: CommandSpec,
    limits: Limits,
    started_at: SystemTime,
    /// The init's pidfd: signals reach exactly this process even after its PID is reused.
    pidfd: OwnedFd,
    stop_requested: AtomicBool,
    /// `None` while running; set once by the supervisor.
    ended: watch::Sender<Option<Ended>>,
    pub(crate) log: Log,
}

impl Job {
    pub(crate) fn status(&self) -> JobStatus {
        let ended = *self.ended.borrow();
        JobStatus {
            id: self.id,
            owner: self.owner.clone(),
            program: self.spec.program.clone(),
            args: self.spec.args.clone(),
            limits: self.limits,
            state: ended.map_or(JobState::Running, |e| e.state),
            stop_requested: self.stop_requested.load(Ordering::Relaxed),
            started_at: self.started_at,
            ended_at: ended.map(|e| e.at),
            usage: ended.map(|e| e.usage),
        }
    }

    pub(crate) fn is_running(&self) -> bool {
        self.ended.borrow().is_none()
    }

    /// SIGTERM to every process of the job, then SIGKILL after `grace`; returns once the job
    /// has ended and its cgroup is gone. Stopping an ended job does nothing.
    pub(crate) async fn stop(self: &Arc<Self>, grace: Duration) -> Result<(), Error> {
        if self.ended.borrow().is_some() {
            return Ok(());
        }
        self.stop_requested.store(true, Ordering::Relaxed);
        // The init forwards SIGTERM to every process in the job's PID namespace.
        spawn::signal(&self.pidfd, libc::SIGTERM)
            .map_err(|e| Error::io("cannot send SIGTERM to the job", e))?;
        // The escalation runs in its own task so that a stop always finishes, even when its
        // caller goes away (a client disconnecting mid-stop). The task ends with the job.
        let job = self.clone();
        let escalation = tokio::spawn(async move {
            let mut ended = job.ended.subscribe();
            if tokio::time::timeout(grace, ended.wait_for(Option::is_some))
                .await
                .is_err()
            {
                // SIGKILL of a PID namespace's init makes the kernel kill every process in it.
                spawn::signal(&job.pidfd, libc::SIGKILL)
                    .map_err(|e| Error::io("cannot send SIGKILL to the job", e))?;
                // The sender lives in `job`, so this only ends when the supervisor publishes.
                let _ = ended.wait_for(Option::is_some).await;
            }
            Ok(())
        });
        escalation
            .await
            .map_err(|e| Error::io("the stop of the job failed", std::io::Error::other(e)))?
    }

    /// Immediate SIGKILL, for a worker that is going away without a graceful shutdown.
    pub(crate) fn kill(&self) {
        if self.is_running() {
            let _ = spawn::signal(&self.pidfd, libc::SIGKILL);
        }
    }

    /// Waits until the job has ended.
    pub(crate) async fn wait(&self) {
        let _ = self.ended.subscribe().wait_for(Option::is_some).await;
    }
}

/// Everything needed to start a job, prepared by the worker.
pub(crate) struct Launch {
    pub(crate) id: JobId,
    pub(crate) owner: String,
    pub(crate) spec: CommandSpec,
    pub(crate) limits: Limits,
    pub(crate) io_device: Option<DevNum>,
    pub(crate) init: InitCommand,
    pub(crate) log_path: PathBuf,
    pub(crate) cgroups: Arc<Cgroups>,
}

/// Starts the job's supervisor thread; the receiver gets the job once its command runs, or
/// the reason it could not start (in which case nothing was left behind).
pub(crate) fn launch(launch: Launch) -> Result<oneshot::Receiver<Result<Arc<Job>, Error>>, Error> {
    let (tx, rx) = oneshot::channel();
    let name = format!("job-{}", &launch.id.to_string()[..8]);
    std::thread::Builder::new()
        .name(name)
        // The thread only moves bytes through a heap buffer; a small stack is plenty.
        .stack_size(256 * 1024)
        .spawn(move || supervise(launch, tx))
        .map_err(|e| Error::io("cannot start a supervisor thread for the job", e))?;
    Ok(rx)
}

/// The running parts the supervisor keeps after start.
struct Running {
    job: Arc<Job>,
    cgroup: JobCgroup,
    writer: LogWriter,
    stdout: File,
    stderr: File,
    status: File,
}

fn supervise(launch: Launch, ready: oneshot::Sender<Result<Arc<Job>, Error>>) {
    let log_path = launch.log_path.clone();
    let running = match start(launch) {
        Ok(running) => running,
        Err(e) => {
            let _ = std::fs::remove_file(&log_path);
            let _ = ready.send(Err(e));
            return;
        }
    };
    let Running {
        job,
        cgroup,
        mut writer,
        stdout,
        stderr,
        status,
    } = running;
    // If the caller went away before seeing the job, nobody could ever stop or read it: kill
    // it, and remove its log once it is gone.
    let orphan = ready.send(Ok(job.clone())).is_err();
    if orphan {
        let _ = spawn::signal(&job.pidfd, libc::SIGKILL);
    }
    let reported = pump(&job, &mut writer, stdout, stderr, status);
    let waited = spawn::wait(&job.pidfd);
    let usage = cgroup.usage();
    let cgroup_dirs = cgroup.dirs();
    if let Err(e) = cgroup.remove() {
        tracing::warn!(job = %job.id, dirs = ?cgroup_dirs, "cannot remove the job's cgroup: {e}");
    }
    let mut state = match (reported, waited) {
        (Some(state), _) => state,
        (None, Ok(info)) => state_from_siginfo(&info),
        (None, Err(e)) => {
            tracing::error!(job = %job.id, "cannot reap the job's init: {e}");
            JobState::Signaled(libc::SIGKILL)
        }
    };
    if usage.oom_kills > 0 && state != JobState::Exited(0) {
        state = JobState::OomKilled;
    }
    if orphan {
        let _ = std::fs::remove_file(&log_path);
    }
    tracing::debug!(job = %job.id, ?state, "job ended");
    job.ended.send_replace(Some(Ended {
        state,
        at: SystemTime::now(),
        usage: Usage {
            cpu_time: usage.cpu_time,
            peak_memory_bytes: usage.peak_memory_bytes,
        },
    }));
    // Closed only now, so a reader that reaches the end of the output sees the final state.
    drop(writer);
}

fn state_from_siginfo(info: &libc::siginfo_t) -> JobState {
    // SAFETY: waitid filled a SIGCHLD siginfo, for which si_status is the valid union member.
    let status = unsafe { info.si_status() };
    match info.si_code {
        libc::CLD_EXITED => JobState::Exited(status),
        _ => JobState::Signaled(status),
    }
}

fn start(launch: Launch) -> Result<Running, Error> {
    let Launch {
        id,
        owner,
        spec,
        limits,
        io_device,
        init,
        log_path,
        cgroups,
    } = launch;
    let (writer, log) = output::create(&log_path).map_err(|e| {
        Error::io(
            format!("cannot create the output log {}", log_path.display()),
            e,
        )
    })?;
    let cgroup = cgroups.create(&id.to_string(), &limits, io_device.as_slice())?;
    let spawned = match spawn::spawn(&init, &cgroup.procs_fds()) {
        Ok(spawned) => spawned,
        Err(e) => {
            discard(cgroup);
            return Err(Error::io("cannot create the job's process", e));
        }
    };
    let mut status = spawned.status;
    let mut rec = [0u8; protocol::RECORD_LEN];
    let got = read_record(&mut status, &mut rec);
    let failure = match got {
        Ok(true) => match protocol::parse(&rec) {
            (protocol::READY, _, _) => None,
            (protocol::ERROR, stage, errno) => Some(start_error(&spec, stage, errno)),
            (tag, _, _) => Some(Error::io(
                "the job's init sent an unexpected message",
                io::Error::other(format!("tag {tag:#x}")),
            )),
        },
        Ok(false) => Some(Error::io(
            "the job's init exited before the command started",
            io::Error::from(io::ErrorKind::UnexpectedEof),
        )),
        Err(e) => Some(Error::io("cannot read the job's status pipe", e)),
    };
    if let Some(err) = failure {
        // The init is exiting; reap it so the cgroup is empty when it is removed.
        let _ = spawn::signal(&spawned.pidfd, libc::SIGKILL);
        let _ = spawn::wait(&spawned.pidfd);
        discard(cgroup);
        return Err(err);
    }
    let job = Arc::new(Job {
        id,
        owner,
        spec,
        limits,
        started_at: SystemTime::now(),
        pidfd: spawned.pidfd,
        stop_requested: AtomicBool::new(false),
        ended: watch::Sender::new(None),
        log,
    });
    Ok(Running {
        job,
        cgroup,
        writer,
        stdout: spawned.stdout,
        stderr: spawned.stderr,
        status,
    })
}

/// Kills whatever is in the cgroup of a job that failed to start and removes it (a job cgroup
/// handle does not do that when dropped). Failures are logged: the start's error matters more.
fn discard(cgroup: JobCgroup) {
    if let Err(e) = cgroup.kill() {
        tracing::warn!(
            cgroup = cgroup.name(),
            "cannot kill the processes of a failed job: {e}"
        );
    }
    let name = cgroup.name().to_owned();
    if let Err(e) = cgroup.remove() {
        tracing::warn!(
            cgroup = name,
            "cannot remove the cgroup of a failed job: {e}"
        );
    }
}

/// Reads one status record; false at end of file.
fn read_record(status: &mut File, rec: &mut [u8; protocol::RECORD_LEN]) -> io::Result<bool> {
    match status.read_exact(rec) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Turns a failure the init reported into the error the caller sees: the caller's mistakes
/// (program, working directory) name the cause; the rest are the worker's own failures.
fn start_error(spec: &CommandSpec, stage: u8, errno: i32) -> Error {
    let os = io::Error::from_raw_os_error(errno);
    let program = spec.program.clone();
    match Stage::from_byte(stage) {
        Some(Stage::ExecCommand) => {
            let reason = match errno {
                libc::ENOENT if spec.program.contains('/') => "no such file".to_owned(),
                libc::ENOENT => "executable not found in PATH".to_owned(),
                libc::EACCES => "permission denied (is it executable by the job user?)".to_owned(),
                libc::EISDIR => "is a directory".to_owned(),
                libc::ENOEXEC => "not an executable format this machine runs".to_owned(),
                _ => os.to_string(),
            };
            Error::Spawn { program, reason }
        }
        Some(Stage::Chdir) => {
            let dir = spec
                .working_dir
                .as_deref()
                .unwrap_or(std::path::Path::new("/"));
            Error::Spawn {
                program,
                reason: format!("working directory {}: {os}", dir.display()),
            }
        }
        Some(stage) => Error::io(format!("job set-up failed while {}", stage.describe()), os),
        None => Error::io("job set-up failed at an unknown step", os),
    }
}

/// Copies the job's output into the log until both pipes close, and collects the outcome the
/// init reports. Returns that outcome, or `None` if the init died without reporting.
fn pump(
    job: &Job,
    writer: &mut LogWriter,
    stdout: File,
    stderr: File,
    status: File,
) -> Option<JobState> {
    let mut outcome = None;
    // Allocated at the first output (see `copy_chunk`): a job that prints nothing, such as a
    // service or a `sleep`, costs the daemon no 64 KiB buffer while it runs.
    let mut buf = Vec::new();
    let mut write_failed = false;
    let mut fds = [poll_fd(&stdout), poll_fd(&stderr), poll_fd(&status)];
    let mut files = [Some(stdout), Some(stderr), Some(status)];
    while files.iter().any(Option::is_some) {
        // SAFETY: polling descriptors we own; closed ones are set to -1 and ignored.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if ready == -1 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(job = %job.id, "cannot poll the job's pipes: {err}");
            break;
        }
        for i in 0..fds.len() {
            if fds[i].revents == 0 {
                continue;
            }
            let Some(file) = files[i].as_mut() else {
                continue;
            };
            let open = if i == 2 {
                read_outcome(file, &mut outcome)
            } else {
                let stream = if i == 0 {
                    Stream::Stdout
                } else {
                    Stream::Stderr
                };
                copy_chunk(job, file, stream, writer, &mut buf, &mut write_failed)
            };
            if !open {
                files[i] = None;
                fds[i].fd = -1;
            }
        }
    }
    outcome
}

fn poll_fd(file: &File) -> libc::pollfd {
    libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }
}

/// One read from a job's pipe into the log. Returns false at end of file.
fn copy_chunk(
    job: &Job,
    pipe: &mut File,
    stream: Stream,
    writer: &mut LogWriter,
    buf: &mut Vec<u8>,
    write_failed: &mut bool,
) -> bool {
    if buf.is_empty() {
        *buf = LogWriter::frame_buffer();
    }
    let n = match pipe.read(&mut buf[LogWriter::PAYLOAD..]) {
        Ok(0) => return false,
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return true,
        Err(e) => {
            tracing::error!(job = %job.id, "cannot read the job's {stream:?}: {e}");
            return false;
        }
    };
    if *write_failed {
        // Keep draining so the job never blocks on a full pipe; its output is already lost.
        return true;
    }
    if let Err(e) = writer.append(stream, &mut buf[..LogWriter::PAYLOAD + n]) {
        tracing::error!(job = %job.id, log = %job.log.path().display(),
            "cannot write the job's output; the rest of it is discarded: {e}");
        *write_failed = true;
        writer.mark_lost();
    }
    true
}

/// Reads one record from the status pipe. Returns false at end of file.
fn read_outcome(status: &mut File, outcome: &mut Option<JobState>) -> bool {
    let mut rec = [0u8; protocol::RECORD_LEN];
    match read_record(status, &mut rec) {
        Ok(true) => {
            *outcome = match protocol::parse(&rec) {
                (protocol::EXITED, _, code) => Some(JobState::Exited(code)),
                (protocol::KILLED, _, signal) => Some(JobState::Signaled(signal)),
                _ => *outcome,
            };
            true
        }
        Ok(false) | Err(_) => false,
    }
}
