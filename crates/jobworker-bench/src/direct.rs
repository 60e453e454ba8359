//! The direct-sandbox floor: the library's own start, driven in this process — no daemon, no
//! RPC, no TLS.
//!
//! A [`jobworker::Worker`] configured as `jobworkerd serve` configures its own with default
//! flags (same sandbox view, default and parent cgroup limits, syscall filter, uid range size,
//! init program, records fsync'd), so that what it costs is exactly the part of a Start the
//! daemon cannot avoid: the job's directory, log and record (written and fsync'd while the init
//! builds the view), the cgroup with its limits, the `clone3` into the namespaces, the init's
//! exec, its filesystem view, hostname and loopback, the fork, uid change, seccomp load and
//! exec of the command, and the init's "ready".

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use jobworker::{CommandSpec, Config, IdRange, JobState, Limits, StateLock, Worker};
use tempfile::TempDir;

use crate::server::{self, Binaries, Pki};

/// The owner of the floor's jobs (the library takes any string).
const OWNER: &str = "bench";

/// The daemon's grace period, as the benchmark's daemons get it.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// One sample of the floor.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// `Worker::start`: until the command has been exec'd and the record is durable — the
    /// moment a Start RPC answers.
    pub start: Duration,
    /// From the start until `Worker::wait` saw the job's end (the init reaped `/bin/true`,
    /// recorded the exit and exited; the worker concluded the job).
    pub to_end: Duration,
}

/// A worker in this process with its own state directory, cgroup parent and uid range.
pub struct Direct {
    worker: Worker,
    limits: Limits,
    /// Removed on drop, after the worker (field order).
    _state: TempDir,
}

impl Direct {
    /// Prepares the worker as `jobworkerd serve` would with default flags; its jobs get
    /// `limits`.
    pub async fn new(bins: &Binaries, pki: &Pki, limits: Limits) -> anyhow::Result<Direct> {
        let state = server::state_dir()?;
        let (first, last) = server::random_job_ids();
        let config = Config {
            state_dir: state.path().to_owned(),
            init_program: Some(bins.init.clone()),
            cgroup_parent: PathBuf::from(format!("bench-direct-{}", uuid::Uuid::new_v4())),
            job_ids: IdRange::new(first, last)?,
            stop_grace: STOP_GRACE,
            // As the daemon: its private key's directory is hidden from jobs.
            secrets: vec![pki.file("server.key")],
            ..Config::default()
        };
        let lock = StateLock::acquire(&config.state_dir)
            .context("cannot lock the direct floor's state directory")?;
        let worker = Worker::new(config, lock)
            .await
            .context("cannot prepare the direct floor's worker")?;
        Ok(Direct {
            worker,
            limits,
            _state: state,
        })
    }

    /// Starts `/bin/true`, waits for its end and removes it (untimed), so that every sample
    /// pays for itself only.
    pub async fn sample(&self) -> anyhow::Result<Sample> {
        let spec = CommandSpec::new("/bin/true", Vec::<String>::new());
        let began = Instant::now();
        let id = self
            .worker
            .start(OWNER, spec, self.limits)
            .await
            .context("the direct floor's start failed")?;
        let start = began.elapsed();
        let status = self.worker.wait(id).await?;
        let to_end = began.elapsed();
        ensure!(
            status.state == JobState::Exited(0),
            "the direct floor's /bin/true ended with {:?} ({:?})",
            status.state,
            status.note
        );
        self.worker.remove(id, false).await?;
        Ok(Sample { start, to_end })
    }

    /// Stops the worker (it has no running jobs left) and checks that its cgroup parents are
    /// gone.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let parents = self.worker.cgroup_parents();
        self.worker.shutdown().await;
        let left: Vec<&PathBuf> = parents.iter().filter(|dir| dir.exists()).collect();
        ensure!(
            left.is_empty(),
            "the direct floor's worker left its cgroup parents behind: {left:?}"
        );
        Ok(())
    }
}
