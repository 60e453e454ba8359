//! [`CgroupError`]: why a cgroup operation failed, in words that say what to do about it, and
//! the shorthands the other cgroup modules build it with.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Reading, creating, listing or removing a file or directory failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was attempted: "read", "create", "remove", "list", "stat" or "open".
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused a value written to a cgroup file.
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        /// The cgroup file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The underlying error (its errno says why).
        #[source]
        source: io::Error,
    },
    /// Sending SIGKILL to a process of a cgroup failed.
    #[error("cannot kill process {pid} of {path}: {source}")]
    Kill {
        /// The process.
        pid: i32,
        /// The cgroup directory it was listed in.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A kernel file did not have the expected format.
    #[error("unexpected content in {path}: {what}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// A cgroup v1 controller the worker needs is not mounted.
    #[error(
        "the cgroup v1 {0} controller is not mounted (no cgroup mount with it in \
         /proc/self/mountinfo); jobs need cpu, cpuacct, memory, blkio and pids"
    )]
    MissingController(&'static str),
    /// A cgroup v2 controller is not offered to the cgroup that needs it.
    #[error(
        "the {controller} controller is not available in {path} (not listed in its \
         cgroup.controllers: the cgroup above does not delegate it)"
    )]
    ControllerUnavailable {
        /// The controller.
        controller: &'static str,
        /// The cgroup directory lacking it.
        path: PathBuf,
    },
    /// The configured parent of job cgroups cannot be used.
    #[error("invalid cgroup parent {parent:?}: {reason}")]
    InvalidParent {
        /// The parent as configured.
        parent: PathBuf,
        /// Why it is refused.
        reason: &'static str,
    },
    /// An aggregate limit for the parent of job cgroups is out of range.
    #[error("invalid limit for the job cgroup parent: {0}")]
    InvalidParentLimit(String),
    /// cgroup v1 could not bring the parent's memory use under a lower limit: what its jobs
    /// hold cannot be reclaimed (the kernel answered EBUSY). The earlier limit stays.
    #[error(
        "cannot lower the memory limit of {path} to {limit} bytes: its jobs use more than that \
         and the kernel cannot reclaim it; stop jobs or choose a higher limit"
    )]
    ParentMemoryBelowUsage {
        /// The parent's directory in the memory hierarchy.
        path: PathBuf,
        /// The limit asked for.
        limit: u64,
    },
    /// cgroup v1 refuses a parent a smaller CFS quota than one of its children has (EINVAL).
    #[error(
        "cannot limit {path} to {cpus} cpus: a job cgroup below it has a larger cpu limit, which \
         cgroup v1 refuses; stop that job or give the parent more cpus"
    )]
    ParentCpuBelowJob {
        /// The parent's directory in the cpu hierarchy.
        path: PathBuf,
        /// The parent's limit asked for.
        cpus: f64,
    },
    /// cgroup v1 refuses a job a larger CFS quota than its parent's (EINVAL).
    #[error(
        "cannot limit {path} to {cpus} cpus: that is more than the cpu limit of the job cgroup \
         parent, which cgroup v1 refuses; ask for at most the parent's cpus"
    )]
    JobCpuAboveParent {
        /// The job's directory in the cpu hierarchy.
        path: PathBuf,
        /// The job's limit asked for.
        cpus: f64,
    },
    /// A job cgroup name is not a single plain path component.
    #[error("invalid job cgroup name {0:?}: it must be one path component without '/'")]
    InvalidName(String),
    /// A cgroup path lies outside the part of the hierarchy mounted in this mount namespace.
    #[error("cgroup {cgroup} is outside the part of its hierarchy mounted at {mount_point}")]
    NotVisible {
        /// The cgroup, as a path inside its hierarchy.
        cgroup: PathBuf,
        /// Where the hierarchy is mounted.
        mount_point: PathBuf,
    },
    /// On v2, controllers cannot be enabled in the daemon's cgroup because other processes
    /// live there (the "no internal processes" rule).
    #[error(
        "cannot enable controllers in {path}: other processes share the daemon's cgroup; run \
         the daemon in a cgroup of its own (systemd: Delegate=yes) or pass an absolute cgroup parent"
    )]
    OwnCgroupBusy {
        /// The daemon's cgroup directory.
        path: PathBuf,
    },
    /// IO limits were requested without a block device they apply to.
    #[error(
        "io limits need the block devices of the job's filesystem view, and none was given; \
         derive them from the job's paths (block_device_of)"
    )]
    NoIoDevice,
    /// The filesystem holding a path has no block device to throttle.
    #[error(
        "{path} is on a filesystem without a block device (device {major}:{minor}, e.g. tmpfs or \
         overlay); io limits need a working directory on a block device"
    )]
    NoBlockDevice {
        /// The path asked about.
        path: PathBuf,
        /// Major number of its filesystem's device.
        major: u32,
        /// Minor number of its filesystem's device.
        minor: u32,
    },
    /// Processes (or child cgroups) were still in a cgroup when the bounded wait ended.
    #[error("{path} still holds processes or child cgroups after {waited:?}")]
    NotEmpty {
        /// The cgroup directory.
        path: PathBuf,
        /// How long the worker waited.
        waited: Duration,
    },
}

impl CgroupError {
    /// The errno of a refused write, if this is one.
    pub(super) fn write_errno(&self) -> Option<i32> {
        match self {
            CgroupError::Write { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Shorthand for [`CgroupError::Io`].
pub(super) fn io_error(op: &'static str, path: &Path, source: io::Error) -> CgroupError {
    CgroupError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Shorthand for [`CgroupError::Parse`].
pub(super) fn parse_error(path: impl AsRef<Path>, what: impl Into<String>) -> CgroupError {
    CgroupError::Parse {
        path: path.as_ref().to_owned(),
        what: what.into(),
    }
}
