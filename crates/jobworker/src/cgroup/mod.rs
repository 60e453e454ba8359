//! Job cgroups: one directory per job (one per hierarchy on cgroup v1) that carries the job's
//! limits, accounts what it used and lets the worker kill everything the job started; all of
//! them below one parent, whose own limits bound the jobs together.
//!
//! # Layout
//! - `mod.rs` (this file): what the rest of the crate uses. [`Cgroups`] is the parent of job
//!   cgroups (detect and limit it, create, list and open job cgroups, remove it when empty);
//!   [`JobCgroup`] is one job's cgroup (placing the first process, membership, usage, kill,
//!   removal). [`CgroupVersion`] is the one abstraction: a few `match`es on it pick the
//!   version's function.
//! - `v1.rs`, `v2.rs`: what differs between the versions: where the parent lives and how it is
//!   prepared, which files limits go to, and which files usage comes from.
//! - `hierarchy.rs`: where the hierarchies are mounted, this process's own cgroups, and the
//!   parent resolved from the configured one.
//! - `limits.rs`: [`ParentLimits`], [`CgroupUsage`] and the CPU quota arithmetic.
//! - `files.rs`: reading and writing cgroupfs files.
//! - `kill.rs`: killing every process of a cgroup, and removing a cgroup once it is empty.
//! - `device.rs`: [`DevNum`] and [`block_device_of`], the disks IO limits apply to.
//! - `error.rs`: [`CgroupError`].
//! - `tests.rs`: the test helpers (a private parent per test) and the kernel tests of the
//!   façade.
//!
//! The lower modules never call back up into this file or into `v1.rs`/`v2.rs`.
//!
//! # Lifetime
//! A job cgroup outlives its [`JobCgroup`] handle: dropping the handle neither kills nor
//! removes anything, so jobs keep running (and stay accounted) across a daemon restart. Which
//! cgroups to adopt, kill or remove is the worker's decision; this module provides
//! [`Cgroups::child_names`], [`Cgroups::open`], [`JobCgroup::contains`], [`JobCgroup::kill`]
//! and [`JobCgroup::remove`] for it. Only a [`Cgroups::create`] that fails part-way cleans up
//! after itself.
//!
//! Everything here blocks (file I/O on cgroupfs, waits bounded to a few seconds); async callers
//! run it on a blocking thread.

mod device;
mod error;
mod files;
mod hierarchy;
mod kill;
mod limits;
#[cfg(test)]
mod tests;
mod v1;
mod v2;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};

pub(crate) use self::device::{DevNum, block_device_of};
pub use self::error::CgroupError;
pub(crate) use self::limits::CgroupUsage;
pub use self::limits::ParentLimits;

use self::error::io_error;
use self::files::{child_dir_names, read, read_pids};
use self::hierarchy::{CGROUP_MOUNT, CgroupDir, Controller, parse_mountinfo, parse_proc_cgroup};
use self::kill::{Backoff, kill_until_empty, remove_dirs};
use crate::spec::Limits;

/// Which cgroup hierarchy the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Legacy: one hierarchy per controller (or per group of co-mounted controllers).
    V1,
    /// Unified: one hierarchy for every controller.
    V2,
}

/// The job cgroups' parent, detected once when the worker starts.
#[derive(Debug)]
pub(crate) struct Cgroups {
    /// Which hierarchy the host runs; picks the version's files.
    version: CgroupVersion,
    /// Where job cgroups are created: one directory per v1 hierarchy, one on v2.
    parents: Vec<CgroupDir>,
}

impl Cgroups {
    /// Detects v1 or v2, prepares the parent of job cgroups and writes `limits` on it.
    ///
    /// A relative `parent` is taken relative to this process's own cgroup (per hierarchy on v1),
    /// an absolute one relative to each hierarchy's root. Either way it must not be the daemon's
    /// own cgroup or one of its ancestors: the worker kills what it finds below the parent. On
    /// v2 this enables the controllers on every ancestor of the parent and may move this process
    /// into `<own cgroup>/daemon` (see `v2.rs`).
    ///
    /// The parent may already exist, with jobs of an earlier run still in it: it is reused and
    /// `limits` are applied again, every one of them (an unset limit is written as "max"), so
    /// nothing set by an earlier run with other settings sticks. What the kernel refuses while
    /// jobs run is a typed error: on v1 a memory limit below what the jobs hold
    /// ([`CgroupError::ParentMemoryBelowUsage`]) or cpus below a job's
    /// ([`CgroupError::ParentCpuBelowJob`]). On v2 a lower memory limit makes the kernel reclaim
    /// and then OOM-kill jobs until their usage fits.
    pub(crate) fn detect(parent: &Path, limits: &ParentLimits) -> Result<Cgroups, CgroupError> {
        limits.validate()?;
        let version = host_version()?;
        let mounts = parse_mountinfo(&read("/proc/self/mountinfo")?);
        let own = parse_proc_cgroup(&read("/proc/self/cgroup")?)?;
        let parents = match version {
            CgroupVersion::V1 => v1::prepare(parent, &mounts, &own)?,
            CgroupVersion::V2 => v2::prepare(parent, &mounts, &own)?,
        };
        match version {
            CgroupVersion::V1 => v1::write_parent_limits(&parents, limits)?,
            CgroupVersion::V2 => v2::write_parent_limits(&parents, limits)?,
        }
        tracing::debug!(?version, parents = ?parents, ?limits, "job cgroup parent ready");
        Ok(Cgroups { version, parents })
    }

    /// Which hierarchy the host runs.
    pub(crate) fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The parent directories (one per v1 hierarchy, one on v2), for logs and tests.
    pub(crate) fn parent_dirs(&self) -> Vec<PathBuf> {
        self.parents.iter().map(|p| p.path.clone()).collect()
    }

    /// The names of the cgroups below the parent, sorted, each once: on v1 the union over the
    /// hierarchies (a job cut short while being created may lack some). For the worker to match
    /// against its job records.
    pub(crate) fn child_names(&self) -> Result<Vec<String>, CgroupError> {
        let mut names = BTreeSet::new();
        for parent in &self.parents {
            names.extend(child_dir_names(&parent.path)?);
        }
        Ok(names.into_iter().collect())
    }

    /// A handle on the existing job cgroup `name`, made of its directories in whichever
    /// hierarchies have one; `None` if none has. The handle cannot place new processes (no
    /// `procs_fds`, no `clone_into_fd`): its job runs already.
    pub(crate) fn open(&self, name: &str) -> Result<Option<JobCgroup>, CgroupError> {
        check_name(name)?;
        let mut dirs = Vec::new();
        for parent in &self.parents {
            let dir = parent.child(name);
            if is_dir(&dir.path)? {
                dirs.push(dir);
            }
        }
        if dirs.is_empty() {
            return Ok(None);
        }
        Ok(Some(JobCgroup {
            version: self.version,
            name: name.to_owned(),
            dirs,
            procs: Vec::new(),
            clone_into: None,
        }))
    }

    /// Creates `<parent>/<name>` (in each hierarchy on v1), writes the limits, and opens what the
    /// spawner places the job with. IO limits apply to each distinct device of `io_devices`
    /// (whole disks, see [`block_device_of`]); IO limits without a device are refused.
    ///
    /// On v1 a job's cpus must not exceed the parent's ([`CgroupError::JobCpuAboveParent`]).
    /// On any failure whatever was created is removed before the error is returned.
    pub(crate) fn create(
        &self,
        name: &str,
        limits: &Limits,
        io_devices: &[DevNum],
    ) -> Result<JobCgroup, CgroupError> {
        check_name(name)?;
        let mut devices = io_devices.to_vec();
        devices.sort_unstable();
        devices.dedup();
        if limits.has_io() {
            if devices.is_empty() {
                return Err(CgroupError::NoIoDevice);
            }
            // Only v2 can lack it (v1 requires blkio at detection).
            if !self
                .parents
                .iter()
                .any(|p| p.controllers.contains(&Controller::Io))
            {
                return Err(CgroupError::ControllerUnavailable {
                    controller: "io",
                    path: self
                        .parents
                        .first()
                        .map(|p| p.path.clone())
                        .unwrap_or_default(),
                });
            }
        }
        let mut unfinished = Unfinished { dirs: Vec::new() };
        let mut dirs = Vec::with_capacity(self.parents.len());
        for parent in &self.parents {
            let dir = parent.child(name);
            // create_dir, not create_dir_all: an existing cgroup is not ours to reuse or remove.
            fs::create_dir(&dir.path).map_err(|e| io_error("create", &dir.path, e))?;
            unfinished.dirs.push(dir.path.clone());
            dirs.push(dir);
        }
        for dir in &dirs {
            match self.version {
                CgroupVersion::V1 => v1::write_limits(dir, limits, &devices)?,
                CgroupVersion::V2 => v2::write_limits(dir, limits, &devices)?,
            }
        }
        // v2 starts the job in its cgroup with CLONE_INTO_CGROUP; only v1 needs the procs files.
        let mut procs = Vec::with_capacity(dirs.len());
        for dir in dirs.iter().filter(|_| self.version == CgroupVersion::V1) {
            let path = dir.path.join("cgroup.procs");
            // std opens with O_CLOEXEC, so the fds do not leak into other children.
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io_error("open", &path, e))?;
            procs.push(file);
        }
        let clone_into = match (self.version, dirs.first()) {
            (CgroupVersion::V2, Some(dir)) => Some(open_dir(&dir.path)?),
            _ => None,
        };
        unfinished.dirs.clear();
        Ok(JobCgroup {
            version: self.version,
            name: name.to_owned(),
            dirs,
            procs,
            clone_into,
        })
    }

    /// Removes the parent directories if they are empty, for a clean shutdown. Returns false,
    /// leaving them, when some still hold job cgroups or processes (jobs left running on
    /// purpose); every directory is tried.
    pub(crate) fn remove_parent(&self) -> Result<bool, CgroupError> {
        let mut all_gone = true;
        let mut first_error = None;
        for parent in &self.parents {
            match fs::remove_dir(&parent.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // cgroupfs answers EBUSY for a cgroup with children or processes.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::ENOTEMPTY)) => {
                    all_gone = false;
                }
                Err(e) => {
                    all_gone = false;
                    first_error.get_or_insert(io_error("remove", &parent.path, e));
                }
            }
        }
        first_error.map_or(Ok(all_gone), Err)
    }
}

/// Removes the directories of a job cgroup that [`Cgroups::create`] has not finished, unless
/// emptied first. Nothing has been placed in them yet, so removal is immediate.
struct Unfinished {
    /// The directories created so far.
    dirs: Vec<PathBuf>,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        for dir in &self.dirs {
            if let Err(e) = fs::remove_dir(dir) {
                tracing::warn!(dir = %dir.display(), "cannot remove a half-created job cgroup: {e}");
            }
        }
    }
}

/// One job's cgroup (one directory per hierarchy on v1).
///
/// A plain handle: dropping it leaves the cgroup and its processes alone (see the module docs).
#[derive(Debug)]
pub(crate) struct JobCgroup {
    /// Which hierarchy the host runs; picks the version's files.
    version: CgroupVersion,
    /// The job cgroup's name below the parent.
    name: String,
    /// The job's directories.
    dirs: Vec<CgroupDir>,
    /// Each directory's `cgroup.procs`, opened by `create` before the fork so that the child
    /// needs only a `write(2)` to join (no allocation or path lookup after fork). Empty on a
    /// handle from `open`.
    procs: Vec<File>,
    /// v2, from `create` only: the job directory, for `clone3(CLONE_INTO_CGROUP)`.
    clone_into: Option<OwnedFd>,
}

impl JobCgroup {
    /// The job cgroup's name below the parent.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The `cgroup.procs` fds of the job's directories (O_WRONLY|O_CLOEXEC); empty on a handle
    /// from [`Cgroups::open`].
    ///
    /// Call before forking. The child writes "0" to each before exec: "0" moves the writing
    /// process itself (v1 and v2), so the job is in its cgroup before its first instruction. The
    /// write must happen while the child still has the privileges of the worker (before it
    /// drops its user or enters a user namespace). On v2 a child cloned into
    /// [`JobCgroup::clone_into_fd`] is in its cgroup from the start and needs none of these.
    pub(crate) fn procs_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// v2: the job directory (O_RDONLY|O_DIRECTORY|O_CLOEXEC), for `clone3` with
    /// `CLONE_INTO_CGROUP`, which starts the child in the job cgroup without the costly
    /// migration a write to `cgroup.procs` is. `None` on v1 (the kernel accepts only a v2
    /// directory) and on a handle from [`Cgroups::open`].
    pub(crate) fn clone_into_fd(&self) -> Option<RawFd> {
        self.clone_into.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Whether process `pid` (as this process's PID namespace numbers it) is a member of the
    /// job cgroup, e.g. to prove that a pidfd opened by pid refers to the job's init. A cgroup
    /// that no longer exists has no members.
    pub(crate) fn contains(&self, pid: i32) -> Result<bool, CgroupError> {
        Ok(self.pids()?.binary_search(&pid).is_ok())
    }

    /// The processes in the job cgroup, sorted, from `cgroup.procs` of the pids hierarchy (the
    /// one directory on v2); empty once the cgroup is gone.
    pub(crate) fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        // Every process is in every v1 hierarchy; pids and memory are always mounted.
        let dir = self
            .dirs
            .iter()
            .find(|d| d.controllers.contains(&Controller::Pids))
            .or_else(|| {
                self.dirs
                    .iter()
                    .find(|d| d.controllers.contains(&Controller::Memory))
            })
            .or(self.dirs.first());
        let Some(dir) = dir else {
            return Ok(Vec::new());
        };
        match read_pids(&dir.path) {
            Ok(mut pids) => {
                pids.sort_unstable();
                pids.dedup();
                Ok(pids)
            }
            Err(CgroupError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    /// What the job used, read once it has ended. Never fails: a missing or unreadable file
    /// gives zero or `None` (logged at debug).
    pub(crate) fn usage(&self) -> CgroupUsage {
        match self.version {
            CgroupVersion::V1 => v1::usage(&self.dirs),
            CgroupVersion::V2 => v2::usage(&self.dirs),
        }
    }

    /// Sends SIGKILL to every process in the cgroup.
    ///
    /// v2 writes `cgroup.kill`, which the kernel applies atomically against concurrent forks.
    /// v1 has no such file: it signals each listed pid and repeats until the cgroup lists none
    /// (bounded), since a process may fork between the listing and the signal. The v1 freezer
    /// would close that window too, at the cost of a sixth hierarchy and a wait for FROZEN; the
    /// loop suffices because a job's processes share a PID namespace whose init's death makes
    /// the kernel kill the rest, and pidfds rule out signalling a reused pid.
    pub(crate) fn kill(&self) -> Result<(), CgroupError> {
        let mut backoff = Backoff::new();
        for dir in &self.dirs {
            match self.version {
                CgroupVersion::V1 => kill_until_empty(&dir.path, &mut backoff)?,
                CgroupVersion::V2 => v2::kill(&dir.path, &mut backoff)?,
            }
        }
        Ok(())
    }

    /// Removes the directories. A cgroup can only be removed once its last process has exited,
    /// which may lag the job's end slightly: EBUSY is retried with backoff for a few seconds.
    /// Processes still running are not killed: call [`JobCgroup::kill`] first for that.
    pub(crate) fn remove(self) -> Result<(), CgroupError> {
        let JobCgroup {
            dirs,
            procs,
            clone_into,
            ..
        } = self;
        // Closed first: nothing can place a process in a cgroup being removed.
        drop((procs, clone_into));
        let paths: Vec<PathBuf> = dirs.into_iter().map(|d| d.path).collect();
        remove_dirs(&paths)
    }

    /// The job's directories, for tests.
    #[cfg(test)]
    pub(crate) fn dirs(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.path.clone()).collect()
    }
}

/// Which hierarchy the host runs: cgroup2 mounted at `/sys/fs/cgroup` means v2; anything else
/// (a tmpfs holding v1 mounts, possibly with a controller-less cgroup2 at `unified`) means v1.
fn host_version() -> Result<CgroupVersion, CgroupError> {
    let fs =
        statfs(CGROUP_MOUNT).map_err(|e| io_error("stat", Path::new(CGROUP_MOUNT), e.into()))?;
    Ok(if fs.filesystem_type() == CGROUP2_SUPER_MAGIC {
        CgroupVersion::V2
    } else {
        CgroupVersion::V1
    })
}

/// Refuses a job cgroup name that is not one plain path component.
fn check_name(name: &str) -> Result<(), CgroupError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(CgroupError::InvalidName(name.to_owned()));
    }
    Ok(())
}

/// Whether `path` is a directory; false if it does not exist.
fn is_dir(path: &Path) -> Result<bool, CgroupError> {
    match fs::metadata(path) {
        Ok(meta) => Ok(meta.is_dir()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error("stat", path, e)),
    }
}

/// Opens a directory as O_RDONLY|O_DIRECTORY|O_CLOEXEC (std adds O_CLOEXEC).
fn open_dir(path: &Path) -> Result<OwnedFd, CgroupError> {
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(path)
        .map_err(|e| io_error("open", path, e))?;
    Ok(OwnedFd::from(dir))
}
