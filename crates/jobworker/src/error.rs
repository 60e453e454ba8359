//! The library's one error type: every variant says what went wrong in words a caller can act on.

use std::io;

use crate::cgroup::CgroupError;
use crate::job::JobId;

/// Why a worker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command spec cannot be run at all (empty, NUL bytes, too large).
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    /// A limit is zero, negative, non-finite or absurd.
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
    /// The worker holds as many jobs as it is configured to.
    #[error("too many jobs: the limit of {0} jobs is reached; remove finished jobs or stop some")]
    TooManyJobs(usize),
    /// The worker cannot run jobs as the configured user.
    #[error("job user {0:?} does not exist on this machine")]
    NoSuchUser(String),
    /// The worker is shutting down and accepts no new jobs.
    #[error("the worker is shutting down")]
    ShuttingDown,
    /// Reading a job's output failed.
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    /// Creating, limiting or removing a cgroup failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
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

impl Error {
    /// Wraps an I/O error with what the worker was doing when it happened.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
