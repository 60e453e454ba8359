//! Job cgroups: one directory per job (one per hierarchy on cgroup v1) that carries the job's
//! limits, accounts what it used and lets the worker kill everything the job started; all of
//! them below one parent, whose own limits bound the jobs together.
//!
//! # Layout
//! - `mod.rs` (this file): what the rest of the crate uses. [`Cgroups`] is the parent of job
//!   cgroups (detect and limit it, create job cgroups, remove those a crashed run left); [`JobCgroup`] is
//!   one job's cgroup (placing the first process, usage, kill, removal). [`CgroupVersion`] is
//!   the one abstraction: a few `match`es on it pick the version's function.
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
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};

pub(crate) use self::device::{DevNum, block_device_of};
pub use self::error::CgroupError;
pub(crate) use self::limits::{CgroupUsage, ParentLimits};

use self::error::io_error;
use self::files::{child_dir_names, read};
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

    /// Kills every process in every child cgroup of the parent (left by a crashed run) and
    /// removes those cgroups. Returns how many were removed; when some could not be, each is
    /// logged and the first error is returned after all were tried.
    pub(crate) fn remove_stale(&self) -> Result<usize, CgroupError> {
        // On v1 one job has a directory in each hierarchy: gather the names across them.
        let mut names = BTreeSet::new();
        for parent in &self.parents {
            names.extend(child_dir_names(&parent.path)?);
        }
        let mut removed = 0;
        let mut first_error = None;
        for name in names {
            let stale = JobCgroup {
                version: self.version,
                dirs: self
                    .parents
                    .iter()
                    .map(|p| p.child(&name))
                    .filter(|d| d.path.is_dir())
                    .collect(),
                procs: Vec::new(),
            };
            let killed = stale.kill();
            match killed.and(stale.remove()) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(cgroup = ?name, error = %e, "cannot remove stale job cgroup");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    /// Creates `<parent>/<name>` (in each hierarchy on v1), writes the limits and opens the
    /// `cgroup.procs` files the spawner moves the job with. IO limits apply to each distinct
    /// device of `io_devices` (whole disks, see [`block_device_of`]); IO limits without a device
    /// are refused.
    ///
    /// On v1 a job's cpus must not exceed the parent's ([`CgroupError::JobCpuAboveParent`]).
    /// On any failure whatever was created is removed before the error is returned.
    pub(crate) fn create(
        &self,
        name: &str,
        limits: &Limits,
        io_devices: &[DevNum],
    ) -> Result<JobCgroup, CgroupError> {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(CgroupError::InvalidName(name.to_owned()));
        }
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
        // Dropping `job` on an early return removes the directories made so far (they are
        // still empty, so removal is immediate).
        let mut job = JobCgroup {
            version: self.version,
            dirs: Vec::with_capacity(self.parents.len()),
            procs: Vec::with_capacity(self.parents.len()),
        };
        for parent in &self.parents {
            let dir = parent.child(name);
            // create_dir, not create_dir_all: an existing cgroup is not ours to reuse or remove.
            fs::create_dir(&dir.path).map_err(|e| io_error("create", &dir.path, e))?;
            job.dirs.push(dir);
        }
        for dir in &job.dirs {
            match self.version {
                CgroupVersion::V1 => v1::write_limits(dir, limits, &devices)?,
                CgroupVersion::V2 => v2::write_limits(dir, limits, &devices)?,
            }
        }
        for dir in &job.dirs {
            let path = dir.path.join("cgroup.procs");
            // std opens with O_CLOEXEC, so the fds do not leak into other children.
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io_error("open", &path, e))?;
            job.procs.push(file);
        }
        Ok(job)
    }
}

/// One job's cgroup (one directory per hierarchy on v1).
///
/// Dropping it without calling [`JobCgroup::remove`] kills whatever still runs in it and
/// removes it (best effort, failures logged), so an early return never leaks a cgroup.
#[derive(Debug)]
pub(crate) struct JobCgroup {
    /// Which hierarchy the host runs; picks the version's files.
    version: CgroupVersion,
    /// The job's directories; emptied by `remove` so that `Drop` knows it has nothing to do.
    dirs: Vec<CgroupDir>,
    /// Each directory's `cgroup.procs`, opened before the fork so that the child needs only
    /// a `write(2)` to join (no allocation or path lookup after fork).
    procs: Vec<File>,
}

impl JobCgroup {
    /// The `cgroup.procs` fds of the job's directories (O_WRONLY|O_CLOEXEC).
    ///
    /// Call before forking. The child writes "0" to each before exec: "0" moves the writing
    /// process itself (v1 and v2), so the job is in its cgroup before its first instruction. The
    /// write must happen while the child still has the privileges of the worker (before it
    /// drops its user or enters a user namespace).
    pub(crate) fn procs_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
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
    pub(crate) fn remove(mut self) -> Result<(), CgroupError> {
        let dirs = std::mem::take(&mut self.dirs);
        self.procs.clear();
        remove_dirs(&paths(&dirs))
    }

    /// The job's directories, for tests and logs.
    pub(crate) fn dirs(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.path.clone()).collect()
    }
}

impl Drop for JobCgroup {
    /// Kills what is left and removes the directories when `remove` was not called.
    fn drop(&mut self) {
        if self.dirs.is_empty() {
            return;
        }
        if let Err(e) = self.kill() {
            tracing::warn!(error = %e, "cannot kill the processes of a dropped job cgroup");
        }
        let dirs = std::mem::take(&mut self.dirs);
        if let Err(e) = remove_dirs(&paths(&dirs)) {
            tracing::warn!(error = %e, "cannot remove a dropped job cgroup");
        }
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

/// The directories' paths.
fn paths(dirs: &[CgroupDir]) -> Vec<PathBuf> {
    dirs.iter().map(|d| d.path.clone()).collect()
}
