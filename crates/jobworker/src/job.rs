//! One job: its identity, its state, how it is stopped, and how its end is concluded.
//!
//! A running job is two processes the worker does not own: its init (the job's PID 1 and
//! keeper, see [`crate::init`]) and the command. The worker holds a pidfd of the init, watches
//! it become readable (the init exited), and then *concludes* the job from what the init left:
//! the exit record, the log, the cgroup's usage. The same conclusion serves a job that ended
//! while no daemon was running.

use std::fmt;
use std::fs::OpenOptions;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use crate::cgroup::JobCgroup;
use crate::output::{self, LogEnd, OutputError, OutputReader, StreamFilter};
use crate::protocol::Outcome;
use crate::store::{EndRecord, JobRecord, StateDir};
use crate::{CommandSpec, Error, Limits};

/// A job's identity: a random UUID, also the job's hostname.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
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

    /// Only the hyphenated form: a job id has one spelling.
    fn from_str(s: &str) -> Result<JobId, ParseJobIdError> {
        let bad = || ParseJobIdError(s.chars().take(64).collect());
        if s.len() != 36 {
            return Err(bad());
        }
        Uuid::parse_str(s).map(JobId).map_err(|_| bad())
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// The command is running.
    Running,
    /// The command exited with this code.
    Exited(i32),
    /// The command was killed by this signal.
    Signaled(i32),
    /// The kernel's OOM killer ended the job at its memory limit.
    OomKilled,
    /// The job ended without a recorded outcome: the daemon died under it (and was not
    /// configured to leave jobs running), or its init was killed.
    Lost,
}

impl JobState {
    /// The state without its value, for filters.
    pub fn kind(&self) -> StateKind {
        match self {
            JobState::Running => StateKind::Running,
            JobState::Exited(_) => StateKind::Exited,
            JobState::Signaled(_) => StateKind::Signaled,
            JobState::OomKilled => StateKind::OomKilled,
            JobState::Lost => StateKind::Lost,
        }
    }
}

/// A [`JobState`] without its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateKind {
    /// [`JobState::Running`].
    Running,
    /// [`JobState::Exited`].
    Exited,
    /// [`JobState::Signaled`].
    Signaled,
    /// [`JobState::OomKilled`].
    OomKilled,
    /// [`JobState::Lost`].
    Lost,
}

/// Resources a job used, measured by its cgroup when it ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time of all its processes (user + system), its init's copying of its output included.
    pub cpu_time: Duration,
    /// Highest memory use, where the kernel tracks it (v2 before Linux 5.19 does not).
    pub peak_memory_bytes: Option<u64>,
}

/// What a job's output log holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputSummary {
    /// Output bytes stored.
    pub bytes: u64,
    /// Output bytes past the job's output limit, counted and dropped.
    pub dropped_bytes: u64,
    /// Output bytes that could not be stored (a full disk, an I/O error).
    pub lost_bytes: u64,
    /// Size of the log file, framing included.
    pub log_len: u64,
}

/// A job as callers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobStatus {
    /// The job's id.
    pub id: JobId,
    /// Who started it (an opaque string to the library).
    pub owner: String,
    /// What it runs. In [`crate::Worker::list`] rows, long arguments are shortened and the
    /// environment left out (see `spec_shortened`); [`crate::Worker::details`] has it whole.
    pub spec: CommandSpec,
    /// Whether `spec` was shortened.
    pub spec_shortened: bool,
    /// The limits in force (request merged with the worker's defaults).
    pub limits: Limits,
    /// The user and group id the job runs as.
    pub uid: u32,
    /// Running, or how it ended.
    pub state: JobState,
    /// Whether someone asked for the job to stop.
    pub stop_requested: bool,
    /// When the job was started.
    pub started_at: SystemTime,
    /// When the job ended.
    pub ended_at: Option<SystemTime>,
    /// What it used, once ended.
    pub usage: Option<Usage>,
    /// What its log holds, once ended.
    pub output: Option<OutputSummary>,
    /// What is wrong with the job's stored state, if anything (a damaged record or log, an
    /// outcome that was never recorded).
    pub note: Option<String>,
}

/// How a job ended, published once.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ended {
    pub(crate) state: JobState,
    pub(crate) at: SystemTime,
    pub(crate) usage: Usage,
    pub(crate) output: OutputSummary,
    pub(crate) note: Option<String>,
}

/// Running, with the init's pidfd (for signals), or ended.
#[derive(Debug, Clone)]
pub(crate) enum Phase {
    Running { pidfd: Arc<OwnedFd> },
    Ended(Ended),
}

/// The most bytes of arguments kept in memory per job for list rows.
const SUMMARY_BYTES: usize = 512;

/// A job in the worker's table. Its full command spec lives in its record on disk: in memory
/// it costs a few hundred bytes however large its arguments and environment.
pub(crate) struct Job {
    pub(crate) id: JobId,
    pub(crate) owner: String,
    /// Program and (shortened) arguments, for list rows.
    summary: CommandSpec,
    summary_shortened: bool,
    pub(crate) limits: Limits,
    pub(crate) uid: u32,
    pub(crate) started_at: SystemTime,
    /// The job's directory in the state directory.
    pub(crate) dir: PathBuf,
    log_path: Arc<PathBuf>,
    stop_requested: AtomicBool,
    /// Held across each read-modify-write of the job's record after its start: the stop request
    /// and the end are recorded by different threads, often at the same moment, and without it
    /// they collide on the record's temporary file or one overwrites the other's update.
    pub(crate) record_lock: std::sync::Mutex<()>,
    /// Set when the worker had to SIGKILL the init itself (it then cannot record the outcome).
    init_killed: AtomicBool,
    phase: watch::Sender<Phase>,
    /// Ticks when the log grows (fed by the log watcher).
    pub(crate) grow: watch::Sender<()>,
    /// Set once the log is complete; after `phase` is, so a reader at the end sees the final
    /// state.
    log_end: watch::Sender<Option<LogEnd>>,
}

impl Job {
    /// A job from its record: running (with its init's pidfd) or ended.
    pub(crate) fn new(
        record: &JobRecord,
        dir: PathBuf,
        phase: Phase,
        grow: watch::Sender<()>,
    ) -> Job {
        let (summary, summary_shortened) = summarize(&record.spec);
        let log_end = match &phase {
            Phase::Running { .. } => None,
            Phase::Ended(ended) => Some(log_end_of(ended)),
        };
        Job {
            id: record.id,
            owner: record.owner.clone(),
            summary,
            summary_shortened,
            limits: record.limits,
            uid: record.uid,
            started_at: record.started_at,
            log_path: Arc::new(output::log_path(&dir)),
            dir,
            stop_requested: AtomicBool::new(record.stop_requested),
            record_lock: std::sync::Mutex::new(()),
            init_killed: AtomicBool::new(false),
            phase: watch::Sender::new(phase),
            grow,
            log_end: watch::Sender::new(log_end),
        }
    }

    /// A job whose record could not be read: only its id is known.
    pub(crate) fn damaged(id: JobId, dir: PathBuf, why: String) -> Job {
        let record = JobRecord::new(
            id,
            String::new(),
            CommandSpec::default(),
            Limits::default(),
            0,
            crate::store::InitRef {
                pid: 0,
                start_time: 0,
                boot_id: String::new(),
            },
            SystemTime::UNIX_EPOCH,
        );
        // Dated when found, so retention keeps it for an admin to see for its whole period.
        let ended = Ended {
            state: JobState::Lost,
            at: SystemTime::now(),
            usage: Usage::default(),
            output: OutputSummary::default(),
            note: Some(format!("the job's record is unreadable: {why}")),
        };
        Job::new(&record, dir, Phase::Ended(ended), watch::Sender::new(()))
    }

    pub(crate) fn status(&self) -> JobStatus {
        let phase = self.phase.borrow();
        let ended = match &*phase {
            Phase::Running { .. } => None,
            Phase::Ended(ended) => Some(ended),
        };
        JobStatus {
            id: self.id,
            owner: self.owner.clone(),
            spec: self.summary.clone(),
            spec_shortened: self.summary_shortened,
            limits: self.limits,
            uid: self.uid,
            state: ended.map_or(JobState::Running, |e| e.state),
            stop_requested: self.stop_requested.load(Ordering::Relaxed),
            started_at: self.started_at,
            ended_at: ended.map(|e| e.at),
            usage: ended.map(|e| e.usage),
            output: ended.map(|e| e.output),
            note: ended.and_then(|e| e.note.clone()),
        }
    }

    pub(crate) fn is_running(&self) -> bool {
        matches!(*self.phase.borrow(), Phase::Running { .. })
    }

    /// When it ended, if it has.
    pub(crate) fn ended(&self) -> Option<Ended> {
        match &*self.phase.borrow() {
            Phase::Running { .. } => None,
            Phase::Ended(ended) => Some(ended.clone()),
        }
    }

    pub(crate) fn stop_was_requested(&self) -> bool {
        self.stop_requested.load(Ordering::Relaxed)
    }

    /// Publishes the end: first the state, then the log's end, so a reader that reaches the
    /// end of the output always finds the final state.
    pub(crate) fn publish_end(&self, ended: Ended) {
        let end = log_end_of(&ended);
        self.phase.send_replace(Phase::Ended(ended));
        self.log_end.send_replace(Some(end));
    }

    /// A reader of the output from position `from`.
    pub(crate) fn reader(
        &self,
        filter: StreamFilter,
        from: u64,
    ) -> Result<OutputReader, OutputError> {
        OutputReader::open(
            self.log_path.clone(),
            self.grow.subscribe(),
            self.log_end.subscribe(),
            filter,
            from,
        )
    }

    /// Waits until the job has ended.
    pub(crate) async fn wait(&self) {
        let _ = self
            .phase
            .subscribe()
            .wait_for(|p| matches!(p, Phase::Ended(_)))
            .await;
    }

    /// Asks the job to stop: SIGTERM to every process (the init forwards it), then, after
    /// `grace`, the init's SIGKILL of every process; if the init itself does not end within
    /// [`KILL_TIMEOUT`] more, SIGKILL of the init (the kernel then kills the whole PID
    /// namespace). Returns once the job has ended. Stopping an ended job does nothing.
    ///
    /// `persist` records the stop request (so a daemon restarted meanwhile still knows).
    pub(crate) async fn stop(
        self: &Arc<Self>,
        grace: Duration,
        persist: impl FnOnce() + Send + 'static,
    ) -> Result<(), Error> {
        let pidfd = match &*self.phase.borrow() {
            Phase::Running { pidfd } => pidfd.clone(),
            Phase::Ended(_) => return Ok(()),
        };
        if !self.stop_requested.swap(true, Ordering::Relaxed) {
            tokio::task::spawn_blocking(persist);
        }
        signal(&pidfd, libc::SIGTERM)
            .map_err(|e| Error::io("cannot send SIGTERM to the job", e))?;
        // The escalation runs in its own task so that a stop always finishes, even when its
        // caller goes away (a client disconnecting mid-stop). The task ends with the job.
        let job = self.clone();
        let escalation = tokio::spawn(async move {
            let mut phase = job.phase.subscribe();
            let ended = |p: &Phase| matches!(p, Phase::Ended(_));
            if tokio::time::timeout(grace, phase.wait_for(ended))
                .await
                .is_ok()
            {
                return Ok(());
            }
            signal(&pidfd, crate::init::KILL_REQUEST as i32)
                .map_err(|e| Error::io("cannot ask the job's init to kill the job", e))?;
            if tokio::time::timeout(KILL_TIMEOUT, phase.wait_for(ended))
                .await
                .is_ok()
            {
                return Ok(());
            }
            tracing::warn!(job = %job.id, "the job's init did not end the job; killing the init");
            job.init_killed.store(true, Ordering::Relaxed);
            signal(&pidfd, libc::SIGKILL)
                .map_err(|e| Error::io("cannot send SIGKILL to the job's init", e))?;
            // Ends once the worker concluded the job: the init is gone, so that is prompt.
            let _ = phase.wait_for(ended).await;
            Ok(())
        });
        escalation
            .await
            .map_err(|e| Error::io("the stop of the job failed", std::io::Error::other(e)))?
    }

    /// Whether the worker SIGKILLed the init itself.
    pub(crate) fn init_was_killed(&self) -> bool {
        self.init_killed.load(Ordering::Relaxed)
    }
}

/// How long the init gets to end the job after being asked to (it SIGKILLs every process and
/// reaps them) before the worker kills the init itself.
pub(crate) const KILL_TIMEOUT: Duration = Duration::from_secs(2);

fn log_end_of(ended: &Ended) -> LogEnd {
    LogEnd {
        len: ended.output.log_len,
        output_bytes: ended.output.bytes,
        lost: ended.output.lost_bytes > 0,
    }
}

/// The most bytes of the program and of the working directory kept for list rows.
const SUMMARY_PATH_BYTES: usize = 256;

/// `text` cut to at most `max` bytes at a character boundary, "…" appended when cut.
fn shorten(text: &str, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text.to_owned(), false);
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    (format!("{}…", &text[..cut]), true)
}

/// What list rows show of a spec: the program and working directory cut to
/// [`SUMMARY_PATH_BYTES`], as many arguments as fit in [`SUMMARY_BYTES`] (the last one cut), no
/// environment. A row then has a bound size, so a page of them fits a message.
fn summarize(spec: &CommandSpec) -> (CommandSpec, bool) {
    let (program, mut shortened) = shorten(&spec.program, SUMMARY_PATH_BYTES);
    shortened |= !spec.env.is_empty();
    let working_dir = spec.working_dir.as_ref().map(|dir| {
        let (dir, cut) = shorten(&dir.to_string_lossy(), SUMMARY_PATH_BYTES);
        shortened |= cut;
        PathBuf::from(dir)
    });
    let mut budget = SUMMARY_BYTES;
    let mut args = Vec::new();
    for arg in &spec.args {
        if budget == 0 {
            shortened = true;
            break;
        }
        let (arg, cut) = shorten(arg, budget);
        budget = budget.saturating_sub(arg.len());
        shortened |= cut;
        args.push(arg);
        if cut {
            break;
        }
    }
    let summary = CommandSpec {
        program,
        args,
        env: Vec::new(),
        working_dir,
    };
    (summary, shortened)
}

/// Sends `signal` to the process behind `pidfd`. A process that has already exited is not an
/// error.
pub(crate) fn signal(pidfd: &OwnedFd, signal: libc::c_int) -> std::io::Result<()> {
    let Some(signal) = rustix::process::Signal::from_named_raw(signal) else {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    };
    match rustix::process::pidfd_send_signal(pidfd.as_fd(), signal) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reaps the init if the worker is its parent (a no-op for an adopted init, whose parent is
/// whatever the previous daemon's parent was).
fn reap(pidfd: &OwnedFd) {
    let _ = rustix::process::waitid(
        rustix::process::WaitId::PidFd(pidfd.as_fd()),
        rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOHANG,
    );
}

/// What the worker knows about a job whose init has ended (or is gone).
pub(crate) struct Conclusion<'a> {
    pub(crate) store: &'a StateDir,
    pub(crate) record: JobRecord,
    /// The init's pidfd, when the worker has one (to reap it).
    pub(crate) pidfd: Option<&'a OwnedFd>,
    /// The job's cgroup, if it still exists.
    pub(crate) cgroup: Option<JobCgroup>,
    /// Whether the worker SIGKILLed the init (then its missing outcome is that SIGKILL).
    pub(crate) init_killed: bool,
}

/// Concludes a job whose init is gone: its outcome from the exit record (or, without one, from
/// what the worker did, else `Lost`), its log cut to its valid frames, its usage from the
/// cgroup, which is then removed; the record is updated. Blocking; never fails — what cannot be
/// done is logged and noted.
pub(crate) fn conclude(c: Conclusion<'_>) -> (JobRecord, Ended) {
    let Conclusion {
        store,
        mut record,
        pidfd,
        cgroup,
        init_killed,
    } = c;
    let id = record.id;
    if let Some(pidfd) = pidfd {
        reap(pidfd);
    }
    let mut notes: Vec<String> = Vec::new();
    let log_path = output::log_path(&store.job_dir(id));
    let exit = store.read_exit(id);
    let (mut state, mut output, at) = match exit {
        Some(Ok(exit)) => {
            let state = match exit.outcome {
                Outcome::Exited(code) => JobState::Exited(code),
                Outcome::Signaled(signal) => JobState::Signaled(signal),
                Outcome::Abandoned => {
                    notes.push("the daemon that ran the job went away, and the job with it".into());
                    JobState::Lost
                }
            };
            let output = OutputSummary {
                bytes: exit.output_bytes,
                dropped_bytes: exit.dropped_bytes,
                lost_bytes: exit.lost_bytes,
                log_len: exit.log_len,
            };
            (state, output, exit.ended_at)
        }
        other => {
            if let Some(Err(why)) = other {
                notes.push(format!("the job's exit record is damaged ({why})"));
            }
            let state = if init_killed {
                JobState::Signaled(libc::SIGKILL)
            } else {
                notes.push(
                    "the job ended without recording how: its init died (killed, or its start \
                     was cut short by the daemon's end)"
                        .into(),
                );
                JobState::Lost
            };
            let output = match std::fs::File::open(&log_path).and_then(|f| output::scan(&f)) {
                Ok(scan) => OutputSummary {
                    bytes: scan.output_bytes,
                    log_len: scan.valid_len,
                    ..OutputSummary::default()
                },
                Err(e) => {
                    notes.push(format!("the job's output log is unreadable ({e})"));
                    OutputSummary::default()
                }
            };
            (state, output, SystemTime::now())
        }
    };
    // A torn last write (the init killed mid-write) is cut off, so readers end at whole frames.
    match std::fs::metadata(&log_path) {
        Ok(meta) if meta.len() > output.log_len => {
            let cut = OpenOptions::new()
                .write(true)
                .open(&log_path)
                .and_then(|f| f.set_len(output.log_len));
            match cut {
                Ok(()) => notes.push(format!(
                    "{} bytes of a torn write were cut off the end of the log",
                    meta.len() - output.log_len
                )),
                Err(e) => tracing::warn!(job = %id, "cannot cut the torn end of the log: {e}"),
            }
        }
        Ok(meta) if meta.len() < output.log_len => {
            notes.push(format!(
                "the output log is shorter ({} bytes) than recorded ({})",
                meta.len(),
                output.log_len
            ));
            output.log_len = meta.len();
        }
        Ok(_) => {}
        Err(e) => notes.push(format!("the job's output log is missing ({e})")),
    }
    let mut usage = Usage::default();
    if let Some(cgroup) = cgroup {
        let measured = cgroup.usage();
        usage = Usage {
            cpu_time: measured.cpu_time,
            peak_memory_bytes: measured.peak_memory_bytes,
        };
        if measured.oom_kills > 0 && !matches!(state, JobState::Exited(0) | JobState::Lost) {
            state = JobState::OomKilled;
        }
        // The init's exit took the PID namespace down; a process still dying is waited for.
        if let Err(e) = cgroup.kill().and_then(|()| cgroup.remove()) {
            tracing::warn!(job = %id, "cannot remove the job's cgroup: {e}");
        }
    }
    let note = (!notes.is_empty()).then(|| notes.join("; "));
    if let Some(note) = &note {
        tracing::warn!(job = %id, "{note}");
    }
    let ended = Ended {
        state,
        at,
        usage,
        output,
        note,
    };
    record.end = Some(EndRecord {
        state,
        ended_at: at,
        usage,
        output,
        note: ended.note.clone(),
    });
    if let Err(e) = store.write_record(&record, false) {
        tracing::error!(job = %id, "cannot record the job's end: {e}");
    }
    (record, ended)
}
