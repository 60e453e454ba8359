//! The worker: the table of jobs, and the operations on it.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::cgroup::{self, CgroupError, CgroupVersion, Cgroups, ParentLimits};
use crate::init::INIT_ARG0;
use crate::job::{self, Job, JobId, JobStatus, Launch};
use crate::output::{OutputReader, StreamFilter};
use crate::spawn::InitCommand;
use crate::{CommandSpec, Error, Limits};

/// `PATH` given to jobs whose environment sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How a worker runs jobs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where output logs are kept (created 0700 if missing).
    pub state_dir: PathBuf,
    /// The unprivileged user jobs run as.
    pub job_user: String,
    /// The program exec'd as each job's init; it must call [`crate::init::run_if_requested`]
    /// first thing. The running binary itself by default.
    pub init_program: PathBuf,
    /// Parent of the job cgroups: relative to the worker's own cgroup, or absolute within each
    /// hierarchy.
    pub cgroup_parent: PathBuf,
    /// Limits for whatever a request leaves unset.
    pub default_limits: Limits,
    /// How long a stopped job has between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// The most jobs, running or ended, the worker keeps.
    pub max_jobs: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from("/var/lib/jobworker"),
            job_user: "nobody".to_owned(),
            init_program: PathBuf::from("/proc/self/exe"),
            cgroup_parent: PathBuf::from("jobs"),
            default_limits: Limits::default(),
            stop_grace: Duration::from_secs(10),
            max_jobs: 10_000,
        }
    }
}

/// Runs jobs and keeps track of them. Share it behind an `Arc`.
///
/// Dropping a worker kills its running jobs at once; call [`Worker::shutdown`] for a graceful
/// stop.
pub struct Worker {
    config: Config,
    uid: u32,
    gid: u32,
    init_program: CString,
    cgroups: Arc<Cgroups>,
    /// The only shared mutable state. Held for map operations only: never across `.await` or
    /// blocking I/O.
    jobs: Mutex<HashMap<JobId, Arc<Job>>>,
    shutting_down: AtomicBool,
}

impl Worker {
    /// Prepares a worker: resolves the job user, detects the cgroup hierarchy, and removes what a
    /// crashed run left behind (job cgroups with their processes, output logs).
    ///
    /// Blocking; call it before serving.
    pub fn new(config: Config) -> Result<Worker, Error> {
        ensure_stdio_open()?;
        let user = nix::unistd::User::from_name(&config.job_user)
            .map_err(|e| {
                Error::io(
                    format!("cannot look up user {:?}", config.job_user),
                    e.into(),
                )
            })?
            .ok_or_else(|| Error::NoSuchUser(config.job_user.clone()))?;
        config.default_limits.validate()?;
        let init_program = CString::new(config.init_program.as_os_str().as_bytes())
            .map_err(|_| Error::InvalidCommand("init program path contains a NUL byte".into()))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.state_dir)
            .map_err(|e| {
                Error::io(
                    format!(
                        "cannot create state directory {}",
                        config.state_dir.display()
                    ),
                    e,
                )
            })?;
        remove_stale_logs(&config.state_dir)?;
        let cgroups = Cgroups::detect(&config.cgroup_parent, &ParentLimits::default())?;
        let stale = remove_stale_cgroups(&cgroups)?;
        if stale > 0 {
            tracing::warn!(count = stale, "removed job cgroups left by an earlier run");
        }
        tracing::info!(
            version = ?cgroups.version(),
            parents = ?cgroups.parent_dirs(),
            user = %config.job_user,
            "worker ready"
        );
        Ok(Worker {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            init_program,
            cgroups: Arc::new(cgroups),
            jobs: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            config,
        })
    }

    /// The cgroup hierarchy this worker detected.
    pub fn cgroup_version(&self) -> CgroupVersion {
        self.cgroups.version()
    }

    /// The directories job cgroups are created in (one per v1 hierarchy).
    pub fn cgroup_parents(&self) -> Vec<PathBuf> {
        self.cgroups.parent_dirs()
    }

    /// The configuration the worker runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn jobs(&self) -> MutexGuard<'_, HashMap<JobId, Arc<Job>>> {
        // A panic while holding this lock cannot leave the map half-updated (single inserts and
        // lookups only), so a poisoned lock is still safe to use.
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts `spec` for `owner` with `limits` (unset fields take the worker's defaults).
    ///
    /// Returns once the command has been exec'd in its isolation and cgroup. If it cannot be,
    /// the error names the cause and no job, process, cgroup or log is left behind.
    pub async fn start(
        &self,
        owner: &str,
        spec: CommandSpec,
        limits: Limits,
    ) -> Result<JobId, Error> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        spec.validate()?;
        let limits = limits.or(self.config.default_limits);
        limits.validate()?;
        if self.jobs().len() >= self.config.max_jobs {
            return Err(Error::TooManyJobs(self.config.max_jobs));
        }
        let working_dir = spec
            .working_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/"));
        let io_device = if limits.has_io() {
            Some(
                cgroup::block_device_of(&working_dir)
                    .map_err(|e| Error::InvalidLimit(e.to_string()))?,
            )
        } else {
            None
        };
        let id = JobId::new();
        let launch = Launch {
            id,
            owner: owner.to_owned(),
            init: self.init_command(id, &spec, &working_dir)?,
            spec,
            limits,
            io_device,
            log_path: self.config.state_dir.join(format!("{id}.log")),
            cgroups: self.cgroups.clone(),
        };
        let job = job::launch(launch)?.await.map_err(|_| {
            Error::io(
                "the job's supervisor thread ended unexpectedly",
                std::io::ErrorKind::Other.into(),
            )
        })??;
        self.jobs().insert(id, job.clone());
        // Either `shutdown` saw this job in the table, or we see its flag here: no job outlives it.
        if self.shutting_down.load(Ordering::SeqCst) {
            job.kill();
            return Err(Error::ShuttingDown);
        }
        Ok(id)
    }

    fn init_command(
        &self,
        id: JobId,
        spec: &CommandSpec,
        working_dir: &Path,
    ) -> Result<InitCommand, Error> {
        let c = |bytes: &[u8]| {
            CString::new(bytes).map_err(|_| Error::InvalidCommand("NUL byte in the command".into()))
        };
        let mut argv = vec![
            c(INIT_ARG0.as_bytes())?,
            c(id.to_string().as_bytes())?,
            c(self.uid.to_string().as_bytes())?,
            c(self.gid.to_string().as_bytes())?,
            c(working_dir.as_os_str().as_bytes())?,
            c(spec.program.as_bytes())?,
        ];
        for arg in &spec.args {
            argv.push(c(arg.as_bytes())?);
        }
        let mut envp = Vec::with_capacity(spec.env.len() + 1);
        for (key, value) in &spec.env {
            envp.push(c(format!("{key}={value}").as_bytes())?);
        }
        if !spec.env.iter().any(|(key, _)| key == "PATH") {
            envp.push(c(format!("PATH={DEFAULT_PATH}").as_bytes())?);
        }
        Ok(InitCommand {
            program: self.init_program.clone(),
            argv,
            envp,
        })
    }

    fn job(&self, id: JobId) -> Result<Arc<Job>, Error> {
        self.jobs().get(&id).cloned().ok_or(Error::NotFound(id))
    }

    /// Stops a job: SIGTERM to all its processes, the configured grace period, then SIGKILL.
    /// Returns its status once it has ended. Stopping an ended job is not an error.
    pub async fn stop(&self, id: JobId) -> Result<JobStatus, Error> {
        let job = self.job(id)?;
        job.stop(self.config.stop_grace).await?;
        Ok(job.status())
    }

    /// The job's current status.
    pub fn status(&self, id: JobId) -> Result<JobStatus, Error> {
        Ok(self.job(id)?.status())
    }

    /// Every job, or those of one owner, oldest first.
    pub fn list(&self, owner: Option<&str>) -> Vec<JobStatus> {
        let jobs: Vec<Arc<Job>> = self
            .jobs()
            .values()
            .filter(|job| owner.is_none_or(|o| job.owner == o))
            .cloned()
            .collect();
        let mut statuses: Vec<JobStatus> = jobs.iter().map(|job| job.status()).collect();
        statuses.sort_by_key(|s| (s.started_at, s.id));
        statuses
    }

    /// A reader of the job's output from its first byte.
    pub fn output(&self, id: JobId, filter: StreamFilter) -> Result<OutputReader, Error> {
        let job = self.job(id)?;
        Ok(job.log.reader(filter)?)
    }

    /// Waits until the job has ended and returns its final status.
    pub async fn wait(&self, id: JobId) -> Result<JobStatus, Error> {
        let job = self.job(id)?;
        job.wait().await;
        Ok(job.status())
    }

    /// Refuses new jobs, then stops every running job (grace, then kill) and waits for them.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let running: Vec<Arc<Job>> = self
            .jobs()
            .values()
            .filter(|j| j.is_running())
            .cloned()
            .collect();
        let grace = self.config.stop_grace;
        let mut stops = tokio::task::JoinSet::new();
        for job in running {
            stops.spawn(async move {
                if let Err(e) = job.stop(grace).await {
                    tracing::error!(job = %job.id, "cannot stop job: {e}");
                }
            });
        }
        while stops.join_next().await.is_some() {}
        // Every job has ended, and a job's supervisor removes its cgroup before publishing that,
        // so the parents are empty now.
        match self.cgroups.remove_parent() {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                parents = ?self.cgroups.parent_dirs(),
                "the job cgroup parent still holds cgroups; left in place"
            ),
            Err(e) => tracing::warn!("cannot remove the job cgroup parent: {e}"),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        for job in self.jobs().values() {
            job.kill();
        }
    }
}

/// The clone child puts the job's pipes on fds 0-3; if the worker's own 0-2 were closed, fresh
/// pipes could land there and be overwritten. Occupying them with /dev/null rules that out.
fn ensure_stdio_open() -> Result<(), Error> {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            let null = std::fs::File::open("/dev/null")
                .map_err(|e| Error::io("cannot open /dev/null", e))?;
            // SAFETY: duplicating a descriptor we own onto a free slot.
            unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) };
        }
    }
    Ok(())
}

/// Jobs do not survive a restart: kills every process in every cgroup below the parent (left by
/// a crashed run) and removes those cgroups. Returns how many were removed; when some could not
/// be, each is logged and the first error is returned after all were tried.
fn remove_stale_cgroups(cgroups: &Cgroups) -> Result<usize, CgroupError> {
    let mut removed = 0;
    let mut first_error = None;
    for name in cgroups.child_names()? {
        let result = cgroups.open(&name).and_then(|stale| match stale {
            Some(stale) => stale.kill().and_then(|()| stale.remove()),
            None => Ok(()),
        });
        match result {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(cgroup = name, error = %e, "cannot remove stale job cgroup");
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(removed), Err)
}

/// Jobs do not survive a restart, so their logs cannot be read any more: remove them.
fn remove_stale_logs(dir: &Path) -> Result<(), Error> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::io(format!("cannot read state directory {}", dir.display()), e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "log")
            && let Err(e) = std::fs::remove_file(&path)
        {
            tracing::warn!(path = %path.display(), "cannot remove stale log: {e}");
        }
    }
    Ok(())
}
