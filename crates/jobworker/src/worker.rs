//! The worker: the table of jobs, the quotas that bound it, and the operations on it.
//!
//! Every state change that affects accounting (a start reserved, a job ended, a job removed)
//! happens under the one table lock, which is never held across `.await` or I/O. Blocking work
//! (creating a job, concluding one, deleting files) runs on tokio's blocking pool.

use std::collections::{BTreeSet, HashMap};
use std::ffi::CString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::unix::AsyncFd;
use tokio::task::{AbortHandle, JoinHandle};

use crate::cgroup::{CgroupVersion, Cgroups, JobCgroup, ParentLimits};
use crate::follow::{LogWatcher, Watch};
use crate::job::{self, Conclusion, Ended, Job, JobId, JobState, JobStatus, Phase, StateKind};
use crate::output::{self, OutputReader, StreamFilter};
use crate::protocol::{INIT_FDS, InitArgs, Stage, StatusRecord};
use crate::sandbox::{self, Sandbox, SandboxConfig};
use crate::spawn::{self, CgroupJoin, InitLaunch};
use crate::store::{self, Found, InitRef, JobRecord, StateDir};
use crate::uids::{self, IdPool, IdRange};
use crate::{CommandSpec, Error, Limits, Quota};

/// `PATH` given to jobs whose environment sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How a worker runs jobs. [`Config::default`] sizes everything for the machine it runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where job records and output are kept (created 0700, made 0700 if it exists).
    pub state_dir: PathBuf,
    /// The program exec'd as each job's init; it must call [`crate::init::run_if_requested`]
    /// first thing. `None`: `jobworker-init` next to the running executable or in
    /// `../libexec/jobworker/` if there is one (small, so it starts fast), else the running
    /// executable itself.
    pub init_program: Option<PathBuf>,
    /// Parent of the job cgroups: relative to the worker's own cgroup, or absolute within each
    /// hierarchy.
    pub cgroup_parent: PathBuf,
    /// Limits for whatever a request leaves unset.
    pub default_limits: Limits,
    /// The most a request may ask for (cpus, memory, pids, output); IO limits have no maximum.
    pub max_limits: Limits,
    /// Bounds on all jobs together, set on the jobs' parent cgroup.
    pub jobs_limits: ParentLimits,
    /// How long a stopped job has between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// The most jobs, running or ended, the worker keeps.
    pub max_jobs: usize,
    /// The most jobs, running or ended, one owner may have.
    pub max_jobs_per_user: usize,
    /// The most running jobs one owner may have.
    pub max_running_per_user: usize,
    /// The most bytes of output logs kept in all (running jobs count their output limit);
    /// `None`: half the size of the state directory's filesystem.
    pub max_total_output: Option<u64>,
    /// Ended jobs are removed this long after they ended; `None` keeps them.
    pub retain_finished: Option<Duration>,
    /// User and group ids for jobs, one per running job.
    pub job_ids: IdRange,
    /// What each job's filesystem view is made of.
    pub sandbox: SandboxConfig,
    /// Files jobs must not see (the daemon's private key): their directories are hidden.
    pub secrets: Vec<PathBuf>,
    /// Leave jobs running when the worker shuts down or dies, for the next worker on the same
    /// state directory to adopt. Off: jobs end with the worker.
    pub live_restore: bool,
    /// fsync job records (off only to measure what durability costs).
    pub sync_records: bool,
}

impl Default for Config {
    fn default() -> Self {
        let machine = Machine::read();
        let jobs_memory = machine
            .memory_bytes
            .saturating_sub((machine.memory_bytes / 10).max(512 << 20))
            .max(64 << 20);
        let jobs_cpus = machine.cpus - (machine.cpus * 0.25).min(0.5);
        let jobs_pids = (machine.pid_max / 2).max(64);
        let output = 1 << 30;
        Config {
            state_dir: PathBuf::from("/var/lib/jobworker"),
            init_program: None,
            cgroup_parent: PathBuf::from("jobs"),
            default_limits: Limits {
                cpus: Some(jobs_cpus.min(1.0)),
                memory_bytes: Some(jobs_memory.min(512 << 20)),
                pids: Some(jobs_pids.min(1024)),
                output_bytes: Some(output),
                ..Limits::default()
            },
            max_limits: Limits {
                cpus: Some(jobs_cpus),
                memory_bytes: Some(jobs_memory),
                pids: Some(jobs_pids),
                output_bytes: Some(output),
                ..Limits::default()
            },
            jobs_limits: ParentLimits {
                memory_bytes: Some(jobs_memory),
                cpus: Some(jobs_cpus),
                pids: Some(jobs_pids),
            },
            stop_grace: Duration::from_secs(10),
            max_jobs: 10_000,
            max_jobs_per_user: 1_000,
            max_running_per_user: 64,
            max_total_output: None,
            retain_finished: Some(Duration::from_secs(7 * 24 * 3600)),
            job_ids: IdRange::DEFAULT,
            sandbox: SandboxConfig::default(),
            secrets: Vec::new(),
            live_restore: false,
            sync_records: true,
        }
    }
}

impl Config {
    /// The limits a job started with `spec` and `limits` would run with (the request's, these
    /// defaults for the rest), or why the request is refused: every check [`Worker::start`]
    /// makes of a request before it reserves or creates anything, except one that depends on
    /// the machine (IO limits need a block device behind the job's view). Touches nothing, so
    /// a server can check requests, and tests can try any number of them, without starting a
    /// job.
    pub fn check_request(&self, spec: &CommandSpec, limits: Limits) -> Result<Limits, Error> {
        spec.validate()?;
        let limits = limits.or(self.default_limits);
        // The node's maxima first: a value above one is told that maximum, the bound that
        // applies to it, rather than the wider range every node allows.
        self.check_maxima(&limits)?;
        limits.validate()?;
        Ok(limits)
    }

    /// Refuses limits above these maxima, naming the maximum.
    fn check_maxima(&self, limits: &Limits) -> Result<(), Error> {
        let max = &self.max_limits;
        let above = |name: &str, value: String, max: String| {
            Err(Error::InvalidLimit(format!(
                "{name} {value} is above this node's maximum of {max}"
            )))
        };
        if let (Some(v), Some(m)) = (limits.cpus, max.cpus)
            && v > m
        {
            return above("cpus", v.to_string(), format!("{m} CPUs"));
        }
        if let (Some(v), Some(m)) = (limits.memory_bytes, max.memory_bytes)
            && v > m
        {
            return above("memory", format!("{v} bytes"), format!("{m} bytes"));
        }
        if let (Some(v), Some(m)) = (limits.pids, max.pids)
            && v > m
        {
            return above("pids", v.to_string(), m.to_string());
        }
        if let (Some(v), Some(m)) = (limits.output_bytes, max.output_bytes)
            && v > m
        {
            return above("output", format!("{v} bytes"), format!("{m} bytes"));
        }
        Ok(())
    }
}

/// What this machine has, for the defaults.
struct Machine {
    memory_bytes: u64,
    cpus: f64,
    pid_max: u64,
}

impl Machine {
    fn read() -> Machine {
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
                let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kib * 1024)
            })
            .unwrap_or(1 << 30);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(32768);
        Machine {
            memory_bytes,
            cpus,
            pid_max,
        }
    }
}

/// The state directory, locked for one worker. Take it before anything else: a second daemon
/// fails here, having changed nothing.
#[derive(Debug)]
pub struct StateLock(StateDir);

impl StateLock {
    /// Creates the directory if needed (0700) and locks it.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, Error> {
        StateDir::open(state_dir, true).map(StateLock)
    }
}

/// Which jobs [`Worker::list`] returns, and how many.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only this owner's jobs.
    pub owner: Option<String>,
    /// Only jobs in these states; all when empty.
    pub states: Vec<StateKind>,
    /// Continue after this job (from the previous page).
    pub after: Option<ListCursor>,
    /// The most jobs to return.
    pub limit: usize,
}

/// A position in the list: jobs are ordered by start time, then id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListCursor {
    started_at: SystemTime,
    id: JobId,
}

impl fmt::Display for ListCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self
            .started_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        write!(f, "{nanos}.{}", self.id)
    }
}

impl ListCursor {
    /// The position right after `job` (its page's next page starts there).
    pub fn after(job: &JobStatus) -> ListCursor {
        ListCursor {
            started_at: job.started_at,
            id: job.id,
        }
    }
}

/// The text is not a list cursor.
#[derive(Debug, thiserror::Error)]
#[error("invalid page token {0:?}: pass the token of the previous page unchanged")]
pub struct ParseCursorError(String);

impl FromStr for ListCursor {
    type Err = ParseCursorError;

    fn from_str(s: &str) -> Result<ListCursor, ParseCursorError> {
        let bad = || ParseCursorError(s.chars().take(80).collect());
        let (nanos, id) = s.split_once('.').ok_or_else(bad)?;
        let nanos: u64 = nanos.parse().map_err(|_| bad())?;
        Ok(ListCursor {
            started_at: UNIX_EPOCH + Duration::from_nanos(nanos),
            id: id.parse().map_err(|_| bad())?,
        })
    }
}

/// A job's output and the job itself, from [`Worker::follow`].
pub struct JobOutput {
    /// The output, from the position asked for.
    pub reader: OutputReader,
    /// Kept so the status outlives the job's removal from the table.
    job: Arc<Job>,
}

impl JobOutput {
    /// The job's status now: final once `reader` has ended.
    pub fn status(&self) -> JobStatus {
        self.job.status()
    }
}

/// One page of [`Worker::list`].
#[derive(Debug, Clone)]
pub struct ListPage {
    /// The jobs, oldest first.
    pub jobs: Vec<JobStatus>,
    /// Where the next page starts, if there are more jobs.
    pub next: Option<ListCursor>,
}

/// Counts for monitoring.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Jobs in the table by state.
    pub jobs: HashMap<&'static str, usize>,
    /// Bytes of output in the logs of ended jobs.
    pub output_bytes_ended: u64,
    /// Bytes of output budget reserved by running jobs (their output limits).
    pub output_bytes_reserved: u64,
    /// The output budget.
    pub max_total_output: u64,
    /// Job user ids in use.
    pub ids_in_use: usize,
}

/// Runs jobs and keeps track of them. Share it behind an `Arc`.
///
/// Dropping a worker without [`Worker::shutdown`]: without live restore, every job's init sees
/// the lifeline close and ends its job; with it, jobs keep running for the next worker.
pub struct Worker {
    shared: Arc<Shared>,
    /// The daemon's end of the lifeline (none with live restore): its close, when the worker
    /// is dropped or the process dies however it dies, makes every job's init end its job.
    _lifeline: Option<OwnedFd>,
    /// Removes ended jobs past their retention; ends with the worker.
    retention: Option<JoinHandle<()>>,
}

struct Shared {
    config: Config,
    store: StateDir,
    cgroups: Cgroups,
    sandbox: Sandbox,
    /// The init program, opened once: every job runs the binary the worker started with.
    init_program: OwnedFd,
    /// The compiled syscall filter (a sealed memfd).
    seccomp: OwnedFd,
    /// The lifeline's read end, passed to each init (none with live restore).
    lifeline: Option<OwnedFd>,
    watcher: LogWatcher,
    max_total_output: u64,
    /// This worker's machine-wide claim on its uid range.
    _id_claim: uids::RangeClaim,
    /// The only shared mutable state. Held for bookkeeping only: never across `.await` or I/O.
    table: Mutex<Table>,
}

/// What one owner uses.
#[derive(Debug, Default, Clone, Copy)]
struct UserUse {
    running: usize,
    stored: usize,
    output: u64,
}

#[derive(Default)]
struct Table {
    jobs: HashMap<JobId, Arc<Job>>,
    /// The jobs by start time, for listing in pages.
    order: BTreeSet<(SystemTime, JobId)>,
    users: HashMap<String, UserUse>,
    /// Starts reserved and not yet in `jobs` (they count against the bounds).
    starting: usize,
    ids: Option<IdPool>,
    /// Output bytes counted against the budget: ended logs plus running jobs' limits.
    output: u64,
    shutting_down: bool,
    /// The monitor task of each running job (aborted when the worker leaves jobs running).
    monitors: HashMap<JobId, AbortHandle>,
}

/// The bytes a job counts against the output budget: the most its log may grow to while it
/// runs, its log once it has ended.
fn charge(job: &Job) -> u64 {
    match job.ended() {
        None => output::log_cap(job.limits.output_bytes.unwrap_or(u64::MAX)),
        Some(ended) => ended.output.log_len,
    }
}

impl Table {
    fn ids(&mut self) -> &mut IdPool {
        self.ids
            .get_or_insert_with(|| IdPool::new(IdRange::DEFAULT))
    }

    /// Adds a job and its use.
    fn insert(&mut self, job: Arc<Job>) {
        let user = self.users.entry(job.owner.clone()).or_default();
        user.stored += 1;
        if job.is_running() {
            user.running += 1;
        }
        let charge = charge(&job);
        user.output += charge;
        self.output += charge;
        self.order.insert((job.started_at, job.id));
        self.jobs.insert(job.id, job);
    }

    /// Removes a job and its use.
    fn remove(&mut self, id: JobId) -> Option<Arc<Job>> {
        let job = self.jobs.remove(&id)?;
        self.order.remove(&(job.started_at, id));
        let charge = charge(&job);
        self.output = self.output.saturating_sub(charge);
        if let Some(user) = self.users.get_mut(&job.owner) {
            user.stored = user.stored.saturating_sub(1);
            user.output = user.output.saturating_sub(charge);
            if job.is_running() {
                user.running = user.running.saturating_sub(1);
            }
            if user.stored == 0 {
                self.users.remove(&job.owner);
            }
        }
        Some(job)
    }

    /// Ended jobs to delete so that `need` more bytes fit in `budget`: first the requester's own
    /// oldest, then the oldest of owners holding more than a fair share of the budget. An owner
    /// within their fair share never loses output to someone else's start.
    fn make_room(&self, owner: &str, need: u64, budget: u64) -> Result<Vec<JobId>, Error> {
        let total = self.output + need;
        if total <= budget {
            return Ok(Vec::new());
        }
        let mut excess = total - budget;
        let mut ended: Vec<(SystemTime, &Arc<Job>, u64)> = self
            .jobs
            .values()
            .filter_map(|job| Some((job.ended()?.at, job, charge(job))))
            .collect();
        ended.sort_by_key(|(at, job, _)| (*at, job.id));
        let mut victims = Vec::new();
        for (_, job, bytes) in ended.iter().filter(|(_, job, _)| job.owner == owner) {
            if excess == 0 {
                break;
            }
            victims.push(job.id);
            excess = excess.saturating_sub(*bytes);
        }
        let owners = self.users.len().max(1) as u64 + u64::from(!self.users.contains_key(owner));
        let fair = budget / owners;
        let mut freed: HashMap<&str, u64> = HashMap::new();
        for (_, job, bytes) in ended.iter().filter(|(_, job, _)| job.owner != owner) {
            if excess == 0 {
                break;
            }
            let held = self.users.get(&job.owner).map_or(0, |u| u.output);
            let already = freed.entry(job.owner.as_str()).or_default();
            if held.saturating_sub(*already) > fair {
                *already += bytes;
                victims.push(job.id);
                excess = excess.saturating_sub(*bytes);
            }
        }
        if excess > 0 {
            return Err(Error::Quota(Quota::OutputBudget { budget }));
        }
        Ok(victims)
    }
}

/// A start that holds its place in the bounds until it is committed or dropped.
struct Reservation {
    shared: Arc<Shared>,
    owner: String,
    uid: u32,
    output: u64,
    committed: bool,
}

impl Reservation {
    /// Turns the reservation into the job it was for.
    fn commit(mut self, table: &mut Table, job: Arc<Job>) {
        self.release(table);
        table.insert(job);
        self.committed = true;
    }

    fn release(&self, table: &mut Table) {
        table.starting = table.starting.saturating_sub(1);
        table.output = table.output.saturating_sub(self.output);
        if let Some(user) = table.users.get_mut(&self.owner) {
            user.running = user.running.saturating_sub(1);
            user.stored = user.stored.saturating_sub(1);
            user.output = user.output.saturating_sub(self.output);
            if user.stored == 0 {
                table.users.remove(&self.owner);
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.committed {
            let mut table = self.shared.table();
            self.release(&mut table);
            table.ids().release(self.uid);
        }
    }
}

impl Worker {
    /// Prepares a worker on a locked state directory: checks the configuration, detects the
    /// cgroup hierarchy and bounds the jobs' parent, compiles the syscall filter, reloads every
    /// job the directory records (re-adopting running ones), and removes what an unfinished start
    /// left behind — and nothing else.
    pub async fn new(config: Config, lock: StateLock) -> Result<Worker, Error> {
        ensure_stdio_open()?;
        let StateLock(mut store) = lock;
        store.set_sync(config.sync_records);
        let (prepared, lifeline) = tokio::task::spawn_blocking(move || prepare(config, store))
            .await
            .map_err(|e| Error::io("the worker's preparation failed", io::Error::other(e)))??;
        let Prepared {
            config,
            store,
            cgroups,
            sandbox,
            init_program,
            seccomp,
            lifeline_r,
            max_total_output,
            ids,
            id_claim,
            ended,
            adopted,
        } = prepared;
        let watcher =
            LogWatcher::new().map_err(|e| Error::io("cannot watch job output logs", e))?;
        let shared = Arc::new(Shared {
            config,
            store,
            cgroups,
            sandbox,
            init_program,
            seccomp,
            lifeline: lifeline_r,
            watcher,
            max_total_output,
            _id_claim: id_claim,
            table: Mutex::new(Table {
                ids: Some(ids),
                ..Table::default()
            }),
        });
        {
            let mut table = shared.table();
            for job in ended {
                table.insert(Arc::new(job));
            }
        }
        let adopted_count = adopted.len();
        for (job, pidfd, cgroup) in adopted {
            let job = Arc::new(job);
            let watch = shared
                .watcher
                .watch(&output::log_path(&job.dir), job.grow.clone());
            shared.table().insert(job.clone());
            shared.spawn_monitor(job, pidfd, cgroup, watch.ok(), false);
        }
        let retention = shared.config.retain_finished.map(|keep| {
            let weak = Arc::downgrade(&shared);
            tokio::spawn(retention(weak, keep))
        });
        let jobs = shared.table().jobs.len();
        tracing::info!(
            version = ?shared.cgroups.version(),
            parents = ?shared.cgroups.parent_dirs(),
            jobs,
            adopted = adopted_count,
            live_restore = shared.config.live_restore,
            "worker ready"
        );
        Ok(Worker {
            shared,
            _lifeline: lifeline,
            retention,
        })
    }

    /// The cgroup hierarchy this worker detected.
    pub fn cgroup_version(&self) -> CgroupVersion {
        self.shared.cgroups.version()
    }

    /// The directories job cgroups are created in (one per v1 hierarchy).
    pub fn cgroup_parents(&self) -> Vec<PathBuf> {
        self.shared.cgroups.parent_dirs()
    }

    /// The configuration the worker runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The output budget in force (see [`Config::max_total_output`]).
    pub fn max_total_output(&self) -> u64 {
        self.shared.max_total_output
    }

    /// Starts `spec` for `owner` with `limits` (unset fields take the worker's defaults).
    ///
    /// Returns once the command has been exec'd in its isolation and cgroup and the job's record
    /// is durable. If it cannot be, the error names the cause and no job, process, cgroup or
    /// file is left behind. The start completes even if the caller goes away meanwhile (the job
    /// is then listed like any other).
    pub async fn start(
        &self,
        owner: &str,
        spec: CommandSpec,
        limits: Limits,
    ) -> Result<JobId, Error> {
        let limits = self.shared.config.check_request(&spec, limits)?;
        if limits.has_io() && self.shared.sandbox.io_devices.is_empty() {
            return Err(Error::InvalidLimit(
                "io limits need a block device behind the job's filesystem view, and this \
                 node's view has none"
                    .into(),
            ));
        }
        let shared = self.shared.clone();
        let owner = owner.to_owned();
        tokio::spawn(async move { shared.start(owner, spec, limits).await })
            .await
            .map_err(|e| Error::io("the start of the job failed", io::Error::other(e)))?
    }

    fn job(&self, id: JobId) -> Result<Arc<Job>, Error> {
        self.shared.job(id)
    }

    /// Stops a job: SIGTERM to all its processes, the configured grace period, then SIGKILL.
    /// Returns its status once it has ended. Stopping an ended job is not an error.
    pub async fn stop(&self, id: JobId) -> Result<JobStatus, Error> {
        let job = self.job(id)?;
        self.shared.stop(&job).await?;
        Ok(job.status())
    }

    /// The job's status; its command line may be shortened (see [`JobStatus::spec`]).
    pub fn status(&self, id: JobId) -> Result<JobStatus, Error> {
        Ok(self.job(id)?.status())
    }

    /// The job's status with its whole command spec (environment and all), read from its record.
    pub async fn details(&self, id: JobId) -> Result<JobStatus, Error> {
        let job = self.job(id)?;
        let mut status = job.status();
        if !status.spec_shortened {
            return Ok(status);
        }
        let shared = self.shared.clone();
        let record = tokio::task::spawn_blocking(move || shared.store.read_record(id))
            .await
            .map_err(|e| Error::io("cannot read the job's record", io::Error::other(e)))?;
        match record {
            Ok(record) => {
                status.spec = record.spec;
                status.spec_shortened = false;
            }
            Err(why) => tracing::warn!(job = %id, "cannot read the job's record: {why}"),
        }
        Ok(status)
    }

    /// A page of jobs, oldest first.
    pub fn list(&self, query: &ListQuery) -> ListPage {
        let table = self.shared.table();
        let mut jobs = Vec::new();
        let mut next = None;
        let start = query
            .after
            .map(|c| std::ops::Bound::Excluded((c.started_at, c.id)))
            .unwrap_or(std::ops::Bound::Unbounded);
        for key in table.order.range((start, std::ops::Bound::Unbounded)) {
            let Some(job) = table.jobs.get(&key.1) else {
                continue;
            };
            if query.owner.as_ref().is_some_and(|o| *o != job.owner) {
                continue;
            }
            let status = job.status();
            if !query.states.is_empty() && !query.states.contains(&status.state.kind()) {
                continue;
            }
            if jobs.len() == query.limit {
                next = jobs.last().map(ListCursor::after);
                break;
            }
            jobs.push(status);
        }
        ListPage { jobs, next }
    }

    /// A reader of the job's output from position `from` (0: the first byte).
    pub fn output(
        &self,
        id: JobId,
        filter: StreamFilter,
        from: u64,
    ) -> Result<OutputReader, Error> {
        Ok(self.job(id)?.reader(filter, from)?)
    }

    /// Like [`Worker::output`], with the job's status at hand: a stream's last message reports
    /// the final status even if the job was removed while its output was read.
    pub fn follow(&self, id: JobId, filter: StreamFilter, from: u64) -> Result<JobOutput, Error> {
        let job = self.job(id)?;
        let reader = job.reader(filter, from)?;
        Ok(JobOutput { reader, job })
    }

    /// Waits until the job has ended and returns its final status.
    pub async fn wait(&self, id: JobId) -> Result<JobStatus, Error> {
        let job = self.job(id)?;
        job.wait().await;
        Ok(job.status())
    }

    /// Removes a job: its record and output. A running job is refused unless `force`, which
    /// stops it first. Readers already streaming the output get all of it and end normally.
    pub async fn remove(&self, id: JobId, force: bool) -> Result<(), Error> {
        let job = self.job(id)?;
        if job.is_running() {
            if !force {
                return Err(Error::JobRunning(id));
            }
            self.shared.stop(&job).await?;
            // The monitor publishes the end after its accounting: wait for that.
            job.wait().await;
        }
        if self.shared.table().remove(id).is_none() {
            return Err(Error::NotFound(id));
        }
        self.shared.delete(vec![id]).await;
        Ok(())
    }

    /// Counts for monitoring.
    pub fn stats(&self) -> Stats {
        let table = self.shared.table();
        let mut stats = Stats {
            max_total_output: self.shared.max_total_output,
            ..Stats::default()
        };
        for job in table.jobs.values() {
            let name = match job.status().state.kind() {
                StateKind::Running => "running",
                StateKind::Exited => "exited",
                StateKind::Signaled => "signaled",
                StateKind::OomKilled => "oom_killed",
                StateKind::Lost => "lost",
            };
            *stats.jobs.entry(name).or_default() += 1;
            match job.ended() {
                Some(ended) => stats.output_bytes_ended += ended.output.log_len,
                None => stats.output_bytes_reserved += charge(job),
            }
        }
        stats.ids_in_use = table.ids.as_ref().map_or(0, IdPool::in_use);
        stats
    }

    /// Refuses new jobs, then — without live restore — stops every running job (grace, then
    /// kill), waits for them and removes the jobs' cgroup parent; with live restore, leaves the
    /// jobs running for the next worker.
    pub async fn shutdown(&self) {
        if let Some(retention) = &self.retention {
            retention.abort();
        }
        let running: Vec<Arc<Job>> = {
            let mut table = self.shared.table();
            table.shutting_down = true;
            if self.shared.config.live_restore {
                for monitor in table.monitors.values() {
                    monitor.abort();
                }
                tracing::info!(
                    running = table.monitors.len(),
                    "live restore: leaving running jobs to the next worker"
                );
                Vec::new()
            } else {
                let running = table.jobs.values().filter(|j| j.is_running());
                running.cloned().collect()
            }
        };
        let mut stops = tokio::task::JoinSet::new();
        for job in running {
            let shared = self.shared.clone();
            stops.spawn(async move {
                if let Err(e) = shared.stop(&job).await {
                    tracing::error!(job = %job.id, "cannot stop job: {e}");
                }
                job.wait().await;
            });
        }
        while stops.join_next().await.is_some() {}
        // Removed only when empty: with live restore, running jobs keep it.
        if let Err(e) = self.shared.cgroups.remove_parent() {
            tracing::warn!("cannot remove the jobs' cgroup parent: {e}");
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(retention) = &self.retention {
            retention.abort();
        }
    }
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic while holding this lock cannot leave the table half-updated in a way that
        // matters more than losing the process would: recover it.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn job(&self, id: JobId) -> Result<Arc<Job>, Error> {
        self.table()
            .jobs
            .get(&id)
            .cloned()
            .ok_or(Error::NotFound(id))
    }

    /// Takes a place for a start in every bound, or says which bound is reached. Returns the
    /// ended jobs removed from the table to make room for its output (their files are deleted
    /// by the caller, outside the lock).
    fn reserve(
        self: &Arc<Self>,
        owner: &str,
        output: u64,
    ) -> Result<(Reservation, Vec<JobId>), Error> {
        let config = &self.config;
        let mut table = self.table();
        if table.shutting_down {
            return Err(Error::ShuttingDown);
        }
        if table.jobs.len() + table.starting >= config.max_jobs {
            return Err(Error::Quota(Quota::NodeJobs {
                limit: config.max_jobs,
            }));
        }
        let use_ = table.users.get(owner).copied().unwrap_or_default();
        if use_.running >= config.max_running_per_user {
            return Err(Error::Quota(Quota::RunningPerUser {
                limit: config.max_running_per_user,
            }));
        }
        if use_.stored >= config.max_jobs_per_user {
            return Err(Error::Quota(Quota::JobsPerUser {
                limit: config.max_jobs_per_user,
            }));
        }
        let victims = table.make_room(owner, output, self.max_total_output)?;
        let Some(uid) = table.ids().allocate() else {
            return Err(Error::Quota(Quota::JobIds {
                limit: config.job_ids.len(),
            }));
        };
        for victim in &victims {
            table.remove(*victim);
        }
        table.starting += 1;
        table.output += output;
        let user = table.users.entry(owner.to_owned()).or_default();
        user.running += 1;
        user.stored += 1;
        user.output += output;
        drop(table);
        if !victims.is_empty() {
            tracing::info!(
                count = victims.len(),
                "removed ended jobs to make room for new output"
            );
        }
        Ok((
            Reservation {
                shared: self.clone(),
                owner: owner.to_owned(),
                uid,
                output,
                committed: false,
            },
            victims,
        ))
    }

    /// Deletes jobs' directories (already out of the table).
    async fn delete(self: &Arc<Self>, ids: Vec<JobId>) {
        if ids.is_empty() {
            return;
        }
        let shared = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for id in ids {
                if let Err(e) = shared.store.remove_job(id) {
                    tracing::warn!(job = %id, "cannot delete the job's files: {e}");
                }
            }
        })
        .await;
    }

    async fn start(
        self: Arc<Self>,
        owner: String,
        spec: CommandSpec,
        limits: Limits,
    ) -> Result<JobId, Error> {
        let output = output::log_cap(limits.output_bytes.unwrap_or(u64::MAX));
        let (reservation, victims) = self.reserve(&owner, output)?;
        self.delete(victims).await;
        let id = JobId::new();
        let uid = reservation.uid;
        let shared = self.clone();
        let launched =
            tokio::task::spawn_blocking(move || shared.launch(id, owner, spec, limits, uid))
                .await
                .map_err(|e| Error::io("the job's launch failed", io::Error::other(e)))??;
        let Launched {
            record,
            pidfd,
            cgroup,
            watch,
            grow,
        } = launched;
        let pidfd = Arc::new(pidfd);
        let job = Arc::new(Job::new(
            &record,
            self.store.job_dir(id),
            Phase::Running {
                pidfd: pidfd.clone(),
            },
            grow,
        ));
        let shutting_down = {
            let mut table = self.table();
            reservation.commit(&mut table, job.clone());
            table.shutting_down
        };
        self.spawn_monitor(job.clone(), pidfd, cgroup, Some(watch), true);
        // Either `shutdown` saw this job in the table, or it is seen here: none outlives it.
        if shutting_down && !self.config.live_restore {
            let _ = self.stop(&job).await;
            return Err(Error::ShuttingDown);
        }
        Ok(id)
    }

    /// Creates the job: directory, log, cgroup, init; writes its record while the init sets
    /// up; waits for the init's word. Blocking. On failure nothing is left behind.
    fn launch(
        &self,
        id: JobId,
        owner: String,
        spec: CommandSpec,
        limits: Limits,
        uid: u32,
    ) -> Result<Launched, Error> {
        let dir = self
            .store
            .create_job_dir(id)
            .map_err(|e| Error::io("cannot create the job's directory", e))?;
        // Removes the directory on every early return below.
        let mut undo_dir = DirGuard {
            store: &self.store,
            id: Some(id),
        };
        let log_path = output::log_path(&dir);
        let log = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&log_path)
            .map_err(|e| Error::io(format!("cannot create {}", log_path.display()), e))?;
        let dir_fd =
            File::open(&dir).map_err(|e| Error::io("cannot open the job's directory", e))?;
        // The init's exit record goes here; its block is allocated now so that the record can
        // be written even if the job fills the disk.
        let exit_tmp = dir.join(crate::protocol::EXIT_TMP_FILE);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&exit_tmp)
            .and_then(|f| {
                nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE, 0, 4096)
                    .map_err(io::Error::from)
            })
            .map_err(|e| Error::io(format!("cannot create {}", exit_tmp.display()), e))?;
        let grow = tokio::sync::watch::Sender::new(());
        let watch = self
            .watcher
            .watch(&log_path, grow.clone())
            .map_err(|e| Error::io("cannot watch the job's output log (inotify)", e))?;
        let cgroup = self
            .cgroups
            .create(&id.to_string(), &limits, &self.sandbox.io_devices)?;
        let init = self.init_args(id, &spec, &limits, uid)?;
        let argv = init
            .to_argv()
            .map_err(|e| Error::InvalidCommand(e.to_string()))?;
        let envp = environment(&spec)?;
        let cgroup_join = match cgroup.clone_into_fd() {
            Some(fd) => CgroupJoin::Into(
                // SAFETY: the fd is owned by `cgroup`, which outlives the clone below.
                unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            ),
            None => CgroupJoin::Procs(cgroup.procs_fds()),
        };
        let started_at = SystemTime::now();
        let spawned = spawn::spawn(&InitLaunch {
            program: self.init_program.as_fd(),
            argv: &argv,
            envp: &envp,
            log: log.as_fd(),
            job_dir: dir_fd.as_fd(),
            seccomp: self.seccomp.as_fd(),
            lifeline: self.lifeline.as_ref().map(|l| l.as_fd()),
            cgroup: cgroup_join,
        });
        let spawned = match spawned {
            Ok(spawned) => spawned,
            Err(e) => {
                remove_cgroup(cgroup);
                return Err(Error::io("cannot create the job's process", e));
            }
        };
        drop((log, dir_fd));
        // While the init assembles the job's view (on another CPU), the record goes to disk.
        let record = JobRecord::new(
            id,
            owner,
            spec,
            limits,
            uid,
            InitRef {
                pid: spawned.pid,
                start_time: store::start_time(spawned.pid).unwrap_or(0),
                boot_id: store::boot_id(),
            },
            started_at,
        );
        let recorded = self.store.write_record(&record, true);
        let mut status = spawned.status;
        let failure = match (read_status(&mut status), recorded) {
            (Ok(StatusRecord::Ready), Ok(())) => None,
            (Ok(StatusRecord::Failed { stage, errno }), _) => {
                Some(start_error(&record.spec, stage, errno))
            }
            (Err(e), _) if e.kind() == io::ErrorKind::UnexpectedEof => Some(Error::io(
                "cannot start the job",
                io::Error::other(format!(
                    "its init ended before the command started ({})",
                    init_end(&spawned.pidfd)
                )),
            )),
            (Err(e), _) => Some(Error::io("cannot read the job's start", e)),
            (_, Err(e)) => Some(Error::io("cannot write the job's record", e)),
        };
        if let Some(err) = failure {
            // The init is exiting (or must): reap it so the cgroup is empty when removed.
            let _ = job::signal(&spawned.pidfd, libc::SIGKILL);
            let _ = rustix::process::waitid(
                rustix::process::WaitId::PidFd(spawned.pidfd.as_fd()),
                rustix::process::WaitIdOptions::EXITED,
            );
            remove_cgroup(cgroup);
            return Err(err);
        }
        undo_dir.id = None;
        Ok(Launched {
            record,
            pidfd: spawned.pidfd,
            cgroup,
            watch,
            grow,
        })
    }

    fn init_args(
        &self,
        id: JobId,
        spec: &CommandSpec,
        limits: &Limits,
        uid: u32,
    ) -> Result<InitArgs, Error> {
        Ok(InitArgs {
            hostname: id.to_string(),
            uid,
            gid: uid,
            working_dir: spec
                .working_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("/")),
            root_mount: self.store.root_mount(),
            ro_paths: self.sandbox.ro_paths.clone(),
            binds: self.sandbox.binds.clone(),
            hidden: self.sandbox.hidden.clone(),
            // The private space is charged to the job's memory anyway; capping it at 3/4 of the
            // limit makes a full /tmp an ENOSPC rather than an OOM kill, and leaves a quarter for
            // the job's processes (and its keeper).
            tmpfs_bytes: private_space_bytes(limits.memory_bytes),
            output_limit: limits.output_bytes.unwrap_or(u64::MAX),
            lifeline: self.lifeline.is_some(),
            program: spec.program.clone(),
            args: spec.args.clone(),
        })
    }

    /// Watches the init's pidfd and concludes the job when it exits.
    fn spawn_monitor(
        self: &Arc<Self>,
        job: Arc<Job>,
        pidfd: Arc<OwnedFd>,
        cgroup: JobCgroup,
        watch: Option<Watch>,
        is_child: bool,
    ) {
        let shared = self.clone();
        let id = job.id;
        // Spawned under the lock, so the task's own removal of its entry comes after the insert.
        let mut table = self.table();
        let task = tokio::spawn(async move {
            wait_for_exit(&pidfd).await;
            drop(watch);
            let conclude_job = job.clone();
            let store_owner = shared.clone();
            let concluded = tokio::task::spawn_blocking(move || {
                let store = &store_owner.store;
                // A poisoned lock guards no broken state: the record on disk is whole either way.
                let _record = conclude_job
                    .record_lock
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let mut record = match store.read_record(conclude_job.id) {
                    Ok(record) => record,
                    Err(why) => {
                        tracing::error!(job = %conclude_job.id, "cannot read the job's record: {why}");
                        return None;
                    }
                };
                record.stop_requested = conclude_job.stop_was_requested();
                Some(job::conclude(Conclusion {
                    store,
                    record,
                    pidfd: is_child.then_some(&*pidfd),
                    cgroup: Some(cgroup),
                    init_killed: conclude_job.init_was_killed(),
                }))
            })
            .await;
            let ended = match concluded {
                Ok(Some((_, ended))) => ended,
                _ => Ended {
                    state: JobState::Lost,
                    at: SystemTime::now(),
                    usage: job::Usage::default(),
                    output: job::OutputSummary::default(),
                    note: Some("the worker could not conclude the job".into()),
                },
            };
            let mut table = shared.table();
            let before = charge(&job);
            job.publish_end(ended);
            let after = charge(&job);
            table.output = table.output.saturating_sub(before) + after;
            if let Some(user) = table.users.get_mut(&job.owner) {
                user.running = user.running.saturating_sub(1);
                user.output = user.output.saturating_sub(before) + after;
            }
            table.ids().release(job.uid);
            table.monitors.remove(&job.id);
        });
        table.monitors.insert(id, task.abort_handle());
    }

    async fn stop(self: &Arc<Self>, job: &Arc<Job>) -> Result<(), Error> {
        let shared = self.clone();
        let id = job.id;
        let locked = job.clone();
        job.stop(self.config.stop_grace, move || {
            // If the end was recorded first, the record now says so and is left alone.
            let _record = locked.record_lock.lock().unwrap_or_else(|e| e.into_inner());
            match shared.store.read_record(id) {
                Ok(mut record) if record.end.is_none() => {
                    record.stop_requested = true;
                    if let Err(e) = shared.store.write_record(&record, false) {
                        tracing::warn!(job = %id, "cannot record the stop request: {e}");
                    }
                }
                _ => {}
            }
        })
        .await
    }
}

/// The size cap of a job's private space (/tmp, /var/tmp, /run, /dev/shm together).
fn private_space_bytes(memory: Option<u64>) -> u64 {
    let memory = memory.unwrap_or(256 << 20);
    (memory - memory / 4).max(1 << 20)
}

/// Removes a job's directory on drop unless disarmed.
struct DirGuard<'a> {
    store: &'a StateDir,
    id: Option<JobId>,
}

impl Drop for DirGuard<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id
            && let Err(e) = self.store.remove_job(id)
        {
            tracing::warn!(job = %id, "cannot remove the directory of a failed start: {e}");
        }
    }
}

fn remove_cgroup(cgroup: JobCgroup) {
    let name = cgroup.name().to_owned();
    if let Err(e) = cgroup.kill().and_then(|()| cgroup.remove()) {
        tracing::warn!(cgroup = %name, "cannot remove a job cgroup: {e}");
    }
}

/// What a successful launch hands back.
struct Launched {
    record: JobRecord,
    pidfd: OwnedFd,
    cgroup: JobCgroup,
    watch: Watch,
    /// The job's log-growth channel, already fed by `watch`.
    grow: tokio::sync::watch::Sender<()>,
}

/// The job's environment for execve: the request's variables plus a default `PATH`.
fn environment(spec: &CommandSpec) -> Result<Vec<CString>, Error> {
    let c = |s: String| {
        CString::new(s).map_err(|_| Error::InvalidCommand("NUL byte in the environment".into()))
    };
    let mut envp = Vec::with_capacity(spec.env.len() + 1);
    for (key, value) in &spec.env {
        envp.push(c(format!("{key}={value}"))?);
    }
    if !spec.env.iter().any(|(key, _)| key == "PATH") {
        envp.push(c(format!("PATH={DEFAULT_PATH}"))?);
    }
    Ok(envp)
}

/// Reads the init's word on the status pipe; end of file is `UnexpectedEof`.
fn read_status(status: &mut File) -> io::Result<StatusRecord> {
    use std::io::Read;
    let mut record = [0u8; StatusRecord::LEN];
    status.read_exact(&mut record)?;
    StatusRecord::decode(&record).map_err(io::Error::other)
}

/// Waits for an init that closed its status pipe early and says how it ended, for the log:
/// a panic (status 101) and the OOM killer (signal 9) call for different fixes.
fn init_end(pidfd: &OwnedFd) -> String {
    let waited = rustix::process::waitid(
        rustix::process::WaitId::PidFd(pidfd.as_fd()),
        rustix::process::WaitIdOptions::EXITED,
    );
    match waited {
        Ok(Some(status)) => match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => format!("it exited with status {code}"),
            (None, Some(signal)) => format!("it was killed by signal {signal}"),
            (None, None) => "it ended".to_owned(),
        },
        Ok(None) => "it ended".to_owned(),
        Err(e) => format!("cannot tell how it ended: {e}"),
    }
}

/// Turns a failure the init reported into the error the caller sees: the caller's mistakes
/// (program, working directory) name the cause; the rest are the worker's own failures.
fn start_error(spec: &CommandSpec, stage: Stage, errno: i32) -> Error {
    let os = io::Error::from_raw_os_error(errno);
    let program = spec.program.clone();
    match stage {
        Stage::ExecCommand => {
            let reason = match errno {
                libc::ENOENT if spec.program.contains('/') => {
                    "no such file in the job's filesystem view".to_owned()
                }
                libc::ENOENT => "executable not found in PATH".to_owned(),
                libc::EACCES => {
                    "permission denied (is it executable by the job's user?)".to_owned()
                }
                libc::EISDIR => "is a directory".to_owned(),
                libc::ENOEXEC => "not an executable format this machine runs".to_owned(),
                libc::E2BIG => "the arguments and environment are too large".to_owned(),
                _ => os.to_string(),
            };
            Error::Spawn { program, reason }
        }
        Stage::Chdir => {
            let dir = spec.working_dir.as_deref().unwrap_or(Path::new("/"));
            let reason = if errno == libc::ENOENT {
                format!(
                    "working directory {} does not exist in the job's filesystem view",
                    dir.display()
                )
            } else {
                format!("working directory {}: {os}", dir.display())
            };
            Error::Spawn { program, reason }
        }
        stage => Error::io(format!("job set-up failed while {}", stage.describe()), os),
    }
}

/// Waits until the process behind `pidfd` has exited (the pidfd becomes readable).
async fn wait_for_exit(pidfd: &Arc<OwnedFd>) {
    /// Shares ownership of the pidfd, so it stays open while registered.
    struct PidFd(Arc<OwnedFd>);
    impl AsRawFd for PidFd {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
    }
    // SAFETY: `PidFd` holds a reference to the OwnedFd, which therefore stays open, and the same
    // descriptor, for as long as the AsyncFd exists.
    let registered = unsafe {
        AsyncFd::register_with_interest(PidFd(pidfd.clone()), tokio::io::Interest::READABLE)
    };
    match registered {
        Ok(fd) => {
            let _ = fd.readable().await;
        }
        Err(e) => {
            // Cannot register with the reactor (out of memory?): wait on the blocking pool.
            tracing::warn!(
                "cannot watch a job's init asynchronously: {}",
                e.into_parts().1
            );
            let pidfd = pidfd.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let mut fds = [rustix::event::PollFd::new(
                    &*pidfd,
                    rustix::event::PollFlags::IN,
                )];
                let _ = rustix::event::poll(&mut fds, None);
            })
            .await;
        }
    }
}

/// Removes ended jobs past their retention, once a minute, until the worker is gone.
async fn retention(shared: std::sync::Weak<Shared>, keep: Duration) {
    let mut tick =
        tokio::time::interval(Duration::from_secs(60).min(keep.max(Duration::from_secs(1))));
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let cutoff = SystemTime::now().checked_sub(keep).unwrap_or(UNIX_EPOCH);
        let expired: Vec<JobId> = {
            let mut table = shared.table();
            let ids: Vec<JobId> = table
                .jobs
                .values()
                .filter(|job| job.ended().is_some_and(|e| e.at < cutoff))
                .map(|job| job.id)
                .collect();
            for id in &ids {
                table.remove(*id);
            }
            ids
        };
        if !expired.is_empty() {
            tracing::info!(
                count = expired.len(),
                "removed ended jobs past their retention"
            );
            shared.delete(expired).await;
        }
    }
}

/// What `prepare` hands to `Worker::new`.
struct Prepared {
    config: Config,
    store: StateDir,
    cgroups: Cgroups,
    sandbox: Sandbox,
    init_program: OwnedFd,
    seccomp: OwnedFd,
    lifeline_r: Option<OwnedFd>,
    max_total_output: u64,
    ids: IdPool,
    id_claim: uids::RangeClaim,
    ended: Vec<Job>,
    adopted: Vec<(Job, Arc<OwnedFd>, JobCgroup)>,
}

/// The blocking part of `Worker::new`.
fn prepare(mut config: Config, store: StateDir) -> Result<(Prepared, Option<OwnedFd>), Error> {
    check_config(&config)?;
    store.create_layout()?;
    uids::check_range(config.job_ids)?;
    let id_claim = uids::claim_range(config.job_ids)?;
    let sandbox = sandbox::prepare(&config.sandbox, store.path(), &config.secrets)?;
    let init_program = open_init_program(config.init_program.as_deref())?;
    let seccomp = crate::seccomp::compile()?;
    let (lifeline_r, lifeline_w) = if config.live_restore {
        (None, None)
    } else {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::io("cannot create the jobs' lifeline", e.into()))?;
        (Some(r), Some(w))
    };
    let cgroups = Cgroups::detect(&config.cgroup_parent, &config.jobs_limits)?;
    let max_total_output = match config.max_total_output {
        Some(bytes) => {
            if let Some(max) = config.max_limits.output_bytes
                && max > bytes
            {
                return Err(Error::Config(format!(
                    "the output a job may keep ({max} bytes) is above the output kept in all \
                     ({bytes} bytes): no job could start"
                )));
            }
            bytes
        }
        None => {
            let budget = half_the_filesystem(store.path())?;
            fit_output_limits(&mut config, budget);
            budget
        }
    };
    let mut ids = IdPool::new(config.job_ids);
    let mut ended = Vec::new();
    let mut adopted = Vec::new();
    let cutoff = config
        .retain_finished
        .and_then(|keep| SystemTime::now().checked_sub(keep));
    for found in store.scan()? {
        match found {
            Found::Unfinished(id) => {
                // A start that never returned an id: its init, if any, is killed with its cgroup.
                if let Ok(Some(cgroup)) = cgroups.open(&id.to_string()) {
                    remove_cgroup(cgroup);
                }
                tracing::info!(job = %id, "removing an unfinished start");
                if let Err(e) = store.remove_job(id) {
                    tracing::warn!(job = %id, "cannot remove an unfinished start: {e}");
                }
            }
            Found::Damaged(id, why) => {
                tracing::warn!(job = %id, "job record unreadable, kept for an admin to inspect or remove: {why}");
                ended.push(Job::damaged(id, store.job_dir(id), why));
            }
            Found::Job(record) => {
                let record = *record;
                let id = record.id;
                let dir = store.job_dir(id);
                if let Some(end) = &record.end {
                    if cutoff.is_some_and(|c| end.ended_at < c) {
                        let _ = store.remove_job(id);
                        continue;
                    }
                    let ended_state = Ended {
                        state: end.state,
                        at: end.ended_at,
                        usage: end.usage,
                        output: end.output,
                        note: end.note.clone(),
                    };
                    ended.push(Job::new(
                        &record,
                        dir,
                        Phase::Ended(ended_state),
                        tokio::sync::watch::Sender::new(()),
                    ));
                    continue;
                }
                let cgroup = match cgroups.open(&id.to_string()) {
                    Ok(cgroup) => cgroup,
                    Err(e) => {
                        tracing::warn!(job = %id, "cannot open the job's cgroup: {e}");
                        None
                    }
                };
                let init = cgroup.as_ref().and_then(|c| find_init(&record.init, c));
                match (init, cgroup) {
                    (Some(pidfd), Some(cgroup)) if ids.claim(record.uid) => {
                        let pidfd = Arc::new(pidfd);
                        let job = Job::new(
                            &record,
                            dir,
                            Phase::Running {
                                pidfd: pidfd.clone(),
                            },
                            tokio::sync::watch::Sender::new(()),
                        );
                        tracing::info!(job = %id, pid = record.init.pid, "re-adopted a running job");
                        adopted.push((job, pidfd, cgroup));
                    }
                    (init, cgroup) => {
                        if init.is_some() {
                            tracing::error!(job = %id, uid = record.uid, "two running jobs share a uid; ending this one");
                            if let Some(cgroup) = &cgroup
                                && let Err(e) = cgroup.kill()
                            {
                                tracing::warn!(job = %id, "cannot kill the job: {e}");
                            }
                        }
                        let (record, ended_state) = job::conclude(Conclusion {
                            store: &store,
                            record,
                            pidfd: None,
                            cgroup,
                            init_killed: false,
                        });
                        ended.push(Job::new(
                            &record,
                            dir,
                            Phase::Ended(ended_state),
                            tokio::sync::watch::Sender::new(()),
                        ));
                    }
                }
            }
        }
    }
    // Job cgroups that no record owns were made for starts that never finished. Anything else
    // under the parent is not the worker's: logged and left alone.
    let known: BTreeSet<String> = adopted.iter().map(|(j, _, _)| j.id.to_string()).collect();
    for name in cgroups.child_names()? {
        if known.contains(&name) {
            continue;
        }
        if name.parse::<JobId>().is_err() {
            tracing::warn!(cgroup = %name, "not a job cgroup; left alone");
            continue;
        }
        if let Ok(Some(cgroup)) = cgroups.open(&name) {
            tracing::info!(cgroup = %name, "removing the cgroup of an unfinished start");
            remove_cgroup(cgroup);
        }
    }
    Ok((
        Prepared {
            config,
            store,
            cgroups,
            sandbox,
            init_program,
            seccomp,
            lifeline_r,
            max_total_output,
            ids,
            id_claim,
            ended,
            adopted,
        },
        lifeline_w,
    ))
}

/// Refuses configurations that contradict themselves.
fn check_config(config: &Config) -> Result<(), Error> {
    config.default_limits.validate()?;
    config.max_limits.validate()?;
    let d = &config.default_limits;
    let m = &config.max_limits;
    let over = |name: &str| {
        Err(Error::Config(format!(
            "the default {name} is above the maximum {name}"
        )))
    };
    if let (Some(d), Some(m)) = (d.cpus, m.cpus)
        && d > m
    {
        return over("cpus");
    }
    if let (Some(d), Some(m)) = (d.memory_bytes, m.memory_bytes)
        && d > m
    {
        return over("memory");
    }
    if let (Some(d), Some(m)) = (d.pids, m.pids)
        && d > m
    {
        return over("pids");
    }
    if let (Some(d), Some(m)) = (d.output_bytes, m.output_bytes)
        && d > m
    {
        return over("output");
    }
    if let (Some(m), Some(j)) = (m.cpus, config.jobs_limits.cpus)
        && m > j
    {
        return Err(Error::Config(format!(
            "the per-job cpus maximum ({m}) is above the cpus of all jobs together ({j})"
        )));
    }
    if config.max_jobs == 0 || config.max_jobs_per_user == 0 || config.max_running_per_user == 0 {
        return Err(Error::Config("job count limits must be at least 1".into()));
    }
    Ok(())
}

/// On a small state filesystem, lowers the per-job output limits to an eighth of the default
/// output budget: otherwise a single running job's reservation could exceed the whole budget
/// and every start would be refused.
fn fit_output_limits(config: &mut Config, budget: u64) {
    let fair = budget / 8;
    for (limits, what) in [
        (&mut config.max_limits, "maximum"),
        (&mut config.default_limits, "default"),
    ] {
        if let Some(bytes) = limits.output_bytes
            && bytes > fair
        {
            tracing::info!(
                from = bytes,
                to = fair,
                budget,
                "the {what} output per job is lowered to an eighth of the output budget (half \
                 the state directory's filesystem)"
            );
            limits.output_bytes = Some(fair);
        }
    }
}

/// Half the size of the filesystem holding `path`: the default output budget.
fn half_the_filesystem(path: &Path) -> Result<u64, Error> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(|e| {
        Error::io(
            format!("cannot stat the filesystem of {}", path.display()),
            e.into(),
        )
    })?;
    Ok(stat.blocks() * stat.fragment_size() / 2)
}

/// The init program: the configured one, `jobworker-init` beside this executable or in
/// `../libexec/jobworker/`, or this executable. Opened once, at a descriptor number above the init's own.
fn open_init_program(configured: Option<&Path>) -> Result<OwnedFd, Error> {
    let path = match configured {
        Some(path) => path.to_owned(),
        None => {
            let me = std::env::current_exe()
                .map_err(|e| Error::io("cannot find the running executable", e))?;
            // Beside it (a build tree), or where a package puts helpers (/usr/bin/jobworkerd
            // and /usr/libexec/jobworker/jobworker-init).
            let beside = me.with_file_name(crate::protocol::INIT_ARG0);
            let libexec = me.parent().and_then(Path::parent).map(|prefix| {
                prefix
                    .join("libexec/jobworker")
                    .join(crate::protocol::INIT_ARG0)
            });
            [Some(beside), libexec]
                .into_iter()
                .flatten()
                .find(|path| path.is_file())
                .unwrap_or(me)
        }
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| {
            Error::io(
                format!("cannot open the init program {}", path.display()),
                e,
            )
        })?;
    let raw = nix::fcntl::fcntl(
        &file,
        nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(INIT_FDS as RawFd),
    )
    .map_err(|e| Error::io("cannot duplicate the init program's descriptor", e.into()))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The init of a job recorded as running, if it still runs: a pidfd for the recorded pid, taken
/// *before* checking that the process behind it has the recorded start time and boot and sits
/// in the job's cgroup — so a pid reused by another process is never mistaken for the init.
fn find_init(init: &InitRef, cgroup: &JobCgroup) -> Option<OwnedFd> {
    if init.pid <= 0 || init.boot_id != store::boot_id() {
        return None;
    }
    let pid = rustix::process::Pid::from_raw(init.pid)?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()?;
    let same = store::start_time(init.pid) == Some(init.start_time)
        && cgroup.contains(init.pid).unwrap_or(false);
    same.then_some(pidfd)
}

/// The clone child puts the init's descriptors on fds 0-7; if the worker's own 0-2 were closed,
/// fresh descriptors could land there. Occupying them with /dev/null rules that out.
fn ensure_stdio_open() -> Result<(), Error> {
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| Error::io("cannot open /dev/null", e))?;
    let install: [fn(&File) -> nix::Result<()>; 3] = [
        |f| nix::unistd::dup2_stdin(f),
        |f| nix::unistd::dup2_stdout(f),
        |f| nix::unistd::dup2_stderr(f),
    ];
    for (fd, install) in install.into_iter().enumerate() {
        // SAFETY: the number is only borrowed for one F_GETFD query.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd as RawFd) };
        if nix::fcntl::fcntl(borrowed, nix::fcntl::FcntlArg::F_GETFD).is_err() {
            install(&null)
                .map_err(|e| Error::io("cannot occupy standard descriptors", e.into()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_far_above_the_node_maximum_is_told_that_maximum() {
        let config = Config {
            max_limits: Limits {
                cpus: Some(1.5),
                memory_bytes: Some(1 << 30),
                pids: Some(1000),
                output_bytes: Some(1 << 20),
                ..Limits::default()
            },
            default_limits: Limits::default(),
            ..Config::default()
        };
        let spec = CommandSpec::new("true", Vec::<String>::new());
        let far_above = [
            (
                Limits {
                    cpus: Some(5000.0),
                    ..Limits::default()
                },
                "maximum of 1.5 CPUs",
            ),
            (
                Limits {
                    memory_bytes: Some(u64::MAX),
                    ..Limits::default()
                },
                "maximum of 1073741824 bytes",
            ),
            (
                Limits {
                    pids: Some(5_000_000),
                    ..Limits::default()
                },
                "maximum of 1000",
            ),
            (
                Limits {
                    output_bytes: Some(u64::MAX),
                    ..Limits::default()
                },
                "maximum of 1048576 bytes",
            ),
        ];
        for (limits, maximum) in far_above {
            let err = config
                .check_request(&spec, limits)
                .expect_err("refused")
                .to_string();
            assert!(err.contains(maximum), "{limits:?}: {err}");
        }
    }
}
