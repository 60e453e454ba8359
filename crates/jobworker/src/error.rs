//! The library's one error type: every variant says what went wrong in words a caller can act on.

use std::io;
use std::path::PathBuf;

use crate::cgroup::CgroupError;
use crate::job::JobId;

/// A bound on what jobs may hold, reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// The owner already has this many running jobs.
    RunningPerUser {
        /// The bound.
        limit: usize,
    },
    /// The owner already has this many jobs, running or ended.
    JobsPerUser {
        /// The bound.
        limit: usize,
    },
    /// The worker holds this many jobs, running or ended.
    NodeJobs {
        /// The bound.
        limit: usize,
    },
    /// The output logs (and running jobs' output limits) fill the output budget, and no ended
    /// job may be removed to make room.
    OutputBudget {
        /// The budget, in bytes.
        budget: u64,
    },
    /// Every user id of the worker's range runs a job.
    JobIds {
        /// The size of the range.
        limit: u64,
    },
}

/// Why a worker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command spec cannot be run at all (empty, NUL bytes, too large).
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    /// A limit is zero, negative, non-finite, or outside the allowed range.
    #[error("invalid limit: {0}")]
    InvalidLimit(String),
    /// The command could not be started; nothing was left behind.
    #[error("cannot start {program:?}: {reason}")]
    Spawn {
        /// The program as the caller gave it.
        program: String,
        /// What failed, e.g. "executable not found in PATH".
        reason: String,
    },
    /// No job has this id.
    #[error("job {0} not found")]
    NotFound(JobId),
    /// The job is running, and the operation needs it ended.
    #[error("job {0} is still running")]
    JobRunning(JobId),
    /// A bound on jobs is reached.
    #[error("{}", quota_message(.0))]
    Quota(Quota),
    /// The worker's configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Another process holds the state directory.
    #[error(
        "the state directory {} is in use by another jobworkerd{}; stop it first or use another --state-dir",
        .path.display(),
        .holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    StateDirBusy {
        /// The state directory.
        path: PathBuf,
        /// The pid recorded by the holder, if readable.
        holder: Option<u32>,
    },
    /// Another running worker on this machine uses job ids of this range.
    #[error(
        "job id range {range} overlaps the range {other} of another running jobworkerd on this \
         machine; give each daemon its own --job-ids"
    )]
    IdRangeBusy {
        /// This worker's range.
        range: crate::uids::IdRange,
        /// The other worker's range.
        other: crate::uids::IdRange,
    },
    /// The worker is shutting down and accepts no new jobs.
    #[error("the worker is shutting down")]
    ShuttingDown,
    /// Reading a job's output failed.
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    /// Creating, limiting or removing a cgroup failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The syscall filter could not be built.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// A system call or file operation of the worker itself failed.
    #[error("{context}: {source}")]
    Io {
        /// What the worker was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn quota_message(quota: &Quota) -> String {
    match quota {
        Quota::RunningPerUser { limit } => {
            format!("you already have {limit} running jobs, the most allowed per user")
        }
        Quota::JobsPerUser { limit } => {
            format!("you already have {limit} jobs (running or ended), the most allowed per user")
        }
        Quota::NodeJobs { limit } => {
            format!("this node already holds {limit} jobs, its maximum")
        }
        Quota::OutputBudget { budget } => format!(
            "this node's output storage ({budget} bytes) is taken by running jobs' output \
             limits and recent output"
        ),
        Quota::JobIds { limit } => {
            format!("all {limit} user ids reserved for jobs are in use by running jobs")
        }
    }
}

impl Error {
    /// Wraps an I/O error with what the worker was doing when it happened.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
