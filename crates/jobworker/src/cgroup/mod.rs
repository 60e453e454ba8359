//! Job cgroups: one directory per job (one per hierarchy on cgroup v1) that carries the job's
//! limits, accounts what it used and lets the worker kill everything the job started.
//!
//! Layout: this file holds what both cgroup versions share: detection, the job cgroup's life
//! (create, kill, remove), clean-up of cgroups left by a crashed run, the block device lookup
//! for IO limits, and the file helpers. `v1.rs` and `v2.rs` hold what differs: where the parent
//! lives and how it is prepared, which files limits go to, and which files usage comes from.
//! [`CgroupVersion`] is the one abstraction: a few `match`es on it pick the version's function.
//!
//! Everything here blocks (file I/O on cgroupfs, waits bounded to a few seconds); async callers
//! run it on a blocking thread.

mod v1;
mod v2;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};

use crate::spec::Limits;

/// Where every cgroup hierarchy is mounted on the hosts we support.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// The CFS period jobs get, in microseconds (the kernel's default): quotas are fractions of it.
const CPU_PERIOD_US: u64 = 100_000;
/// How long to wait for a cgroup's last processes to exit before giving up.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// First pause between re-checks while waiting for a cgroup to empty; it doubles from there.
const FIRST_DELAY: Duration = Duration::from_millis(1);
/// Longest pause between those re-checks.
const MAX_DELAY: Duration = Duration::from_millis(50);

/// Which cgroup hierarchy the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Legacy: one hierarchy per controller (or per group of co-mounted controllers).
    V1,
    /// Unified: one hierarchy for every controller.
    V2,
}

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
    /// IO limits were requested without the block device they apply to.
    #[error("io limits need the block device of the job's working directory, and none was given")]
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
    /// True when a write failed with EBUSY (on v2: the "no internal processes" rule).
    fn is_busy(&self) -> bool {
        matches!(self, CgroupError::Write { source, .. } if source.raw_os_error() == Some(libc::EBUSY))
    }
}

/// The controllers jobs use; each version's module maps them to its own names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Controller {
    /// CFS bandwidth (v1 `cpu`, v2 `cpu`).
    Cpu,
    /// CPU time accounting (v1 `cpuacct`; v2 reports it in every cgroup's `cpu.stat`).
    Cpuacct,
    /// Memory limit and OOM accounting (`memory`).
    Memory,
    /// Block IO throttling (v1 `blkio`, v2 `io`).
    Io,
    /// Process count limit (`pids`).
    Pids,
}

/// A cgroup directory and the controllers whose files it carries (on v1 each hierarchy has
/// different ones; on v2 there is one directory with all).
#[derive(Debug, Clone)]
struct CgroupDir {
    /// The directory under the cgroup mount.
    path: PathBuf,
    /// Controllers whose interface files it has.
    controllers: Vec<Controller>,
}

impl CgroupDir {
    /// The child `name` of this directory, carrying the same controllers.
    fn child(&self, name: &OsStr) -> CgroupDir {
        CgroupDir {
            path: self.path.join(name),
            controllers: self.controllers.clone(),
        }
    }
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
    /// Detects v1 or v2 and prepares the parent of job cgroups.
    ///
    /// A relative `parent` is taken relative to this process's own cgroup (per hierarchy on v1),
    /// an absolute one relative to each hierarchy's root. Either way it must not be the daemon's
    /// own cgroup or one of its ancestors: clean-up kills everything below the parent. On v2 this
    /// enables the controllers on every ancestor of the parent and may move this process into
    /// `<own cgroup>/daemon` (see `v2.rs`). Meant to be called once per process.
    pub(crate) fn detect(parent: &Path) -> Result<Cgroups, CgroupError> {
        let version = host_version()?;
        let mounts = parse_mountinfo(&read("/proc/self/mountinfo")?);
        let own = parse_proc_cgroup(&read("/proc/self/cgroup")?)?;
        let parents = match version {
            CgroupVersion::V1 => v1::prepare(parent, &mounts, &own)?,
            CgroupVersion::V2 => v2::prepare(parent, &mounts, &own)?,
        };
        tracing::debug!(?version, parents = ?parents, "job cgroup parent ready");
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
            let entries =
                fs::read_dir(&parent.path).map_err(|e| io_error("list", &parent.path, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| io_error("list", &parent.path, e))?;
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    names.insert(entry.file_name());
                }
            }
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
    /// `cgroup.procs` files the spawner moves the job with. On any failure whatever was created
    /// is removed before the error is returned.
    pub(crate) fn create(
        &self,
        name: &str,
        limits: &Limits,
        io_device: Option<DevNum>,
    ) -> Result<JobCgroup, CgroupError> {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(CgroupError::InvalidName(name.to_owned()));
        }
        if limits.has_io() {
            if io_device.is_none() {
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
            let dir = parent.child(OsStr::new(name));
            // create_dir, not create_dir_all: an existing cgroup is not ours to reuse or remove.
            fs::create_dir(&dir.path).map_err(|e| io_error("create", &dir.path, e))?;
            job.dirs.push(dir);
        }
        for dir in &job.dirs {
            match self.version {
                CgroupVersion::V1 => v1::write_limits(dir, limits, io_device)?,
                CgroupVersion::V2 => v2::write_limits(dir, limits, io_device)?,
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

/// A block device number, whole disk (not a partition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DevNum {
    /// The device's major number.
    pub major: u32,
    /// The device's minor number.
    pub minor: u32,
}

impl fmt::Display for DevNum {
    /// The `MAJ:MIN` form cgroup files and sysfs use.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl DevNum {
    /// Parses sysfs's `MAJ:MIN` (a `dev` file), for `path`'s error message.
    fn parse(text: &str, path: &Path) -> Result<DevNum, CgroupError> {
        let parsed = text.trim().split_once(':').and_then(|(major, minor)| {
            Some(DevNum {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
            })
        });
        parsed.ok_or_else(|| parse_error(path, format!("expected MAJ:MIN, got {text:?}")))
    }
}

/// The whole-disk device backing the filesystem that holds `path`, for IO limits.
///
/// Both v1 blkio throttling and v2 `io.max` apply to whole disks, not partitions: a partition
/// is mapped to its disk through sysfs.
pub(crate) fn block_device_of(path: &Path) -> Result<DevNum, CgroupError> {
    let dev = fs::metadata(path)
        .map_err(|e| io_error("stat", path, e))?
        .st_dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    // Filesystems without a device (tmpfs, overlay, proc) get anonymous major-0 numbers,
    // which have no sysfs block entry.
    if major == 0 || !sys.exists() {
        return Err(CgroupError::NoBlockDevice {
            path: path.to_owned(),
            major,
            minor,
        });
    }
    if !sys.join("partition").exists() {
        return Ok(DevNum { major, minor });
    }
    // A partition's sysfs directory lives inside its disk's (…/block/vda/vda1).
    let real = fs::canonicalize(&sys).map_err(|e| io_error("read", &sys, e))?;
    let disk_dev = real.with_file_name("dev");
    DevNum::parse(&read(&disk_dev)?, &disk_dev)
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
        remove_dirs(&dirs)
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
        if let Err(e) = remove_dirs(&dirs) {
            tracing::warn!(error = %e, "cannot remove a dropped job cgroup");
        }
    }
}

/// What a job used, for its status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CgroupUsage {
    /// CPU time of all its processes (user + system).
    pub cpu_time: Duration,
    /// Highest memory use; `None` where the kernel does not track it (v2 before 5.19).
    pub peak_memory_bytes: Option<u64>,
    /// Processes of the job killed by the OOM killer.
    pub oom_kills: u64,
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

/// A cgroup mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    /// The cgroup shown at the mount point, as a path inside its hierarchy (not `/` when a
    /// container runtime bind-mounted a subtree).
    root: PathBuf,
    /// Where it is mounted.
    mount_point: PathBuf,
    /// `cgroup` (v1) or `cgroup2`.
    fstype: String,
    /// Superblock options; on v1 they name the hierarchy's controllers (`rw,cpu,cpuacct`).
    super_options: String,
}

impl Mount {
    /// The directory of `cgroup` (a path inside this hierarchy) under the mount point.
    fn dir_of(&self, cgroup: &Path) -> Result<PathBuf, CgroupError> {
        let below = cgroup
            .strip_prefix(&self.root)
            .ok()
            .filter(|rest| rest.components().all(|c| matches!(c, Component::Normal(_))));
        match below {
            // Joining "" would append a trailing slash to the path shown in logs.
            Some(rest) if rest.as_os_str().is_empty() => Ok(self.mount_point.clone()),
            Some(rest) => Ok(self.mount_point.join(rest)),
            None => Err(CgroupError::NotVisible {
                cgroup: cgroup.to_owned(),
                mount_point: self.mount_point.clone(),
            }),
        }
    }
}

/// The cgroup mounts listed in mountinfo text (see proc(5)); other mounts are skipped.
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            // "ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS"
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let super_options = right.nth(1)?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some(Mount {
                root: PathBuf::from(unescape_octal(left.get(3)?)),
                mount_point: PathBuf::from(unescape_octal(left.get(4)?)),
                fstype: fstype.to_owned(),
                super_options: super_options.to_owned(),
            })
        })
        .collect()
}

/// Undoes mountinfo's escaping of space, tab, newline and backslash as `\NNN` (octal).
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes
            .get(i + 1..i + 4)
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match code {
            Some(byte) if bytes[i] == b'\\' => {
                out.push(byte);
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of `/proc/self/cgroup`: this process's cgroup in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProcCgroup {
    /// Hierarchy id; 0 is the v2 hierarchy.
    hierarchy: u32,
    /// The hierarchy's controllers, comma-separated (v1), or empty (v2).
    controllers: String,
    /// The cgroup, as a path inside the hierarchy.
    path: PathBuf,
}

impl ProcCgroup {
    /// True for the v1 hierarchy carrying `controller`.
    fn has_controller(&self, controller: &str) -> bool {
        self.controllers.split(',').any(|c| c == controller)
    }
}

/// Parses `/proc/self/cgroup` ("ID:CONTROLLERS:PATH" per line; see cgroups(7)).
fn parse_proc_cgroup(text: &str) -> Result<Vec<ProcCgroup>, CgroupError> {
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            parse_proc_cgroup_line(line)
                .ok_or_else(|| parse_error("/proc/self/cgroup", format!("malformed line {line:?}")))
        })
        .collect()
}

/// One "ID:CONTROLLERS:PATH" line (the path may itself contain ':').
fn parse_proc_cgroup_line(line: &str) -> Option<ProcCgroup> {
    let mut fields = line.splitn(3, ':');
    Some(ProcCgroup {
        hierarchy: fields.next()?.parse().ok()?,
        controllers: fields.next()?.to_owned(),
        path: PathBuf::from(fields.next()?),
    })
}

/// The parent of job cgroups as a path inside a hierarchy, from the configured `parent` and the
/// daemon's own cgroup `own` in that hierarchy.
fn resolve_parent(parent: &Path, own: &Path) -> Result<PathBuf, CgroupError> {
    let invalid = |reason| CgroupError::InvalidParent {
        parent: parent.to_owned(),
        reason,
    };
    let mut resolved = if parent.is_absolute() {
        PathBuf::from("/")
    } else {
        own.to_owned()
    };
    let mut named = false;
    for component in parent.components() {
        match component {
            Component::Normal(name) => {
                resolved.push(name);
                named = true;
            }
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(invalid("it must not contain \"..\""));
            }
        }
    }
    if !named {
        return Err(invalid(
            "it names no cgroup below the root; use a dedicated one such as \"jobs\"",
        ));
    }
    // Clean-up kills everything below the parent: it must never contain the daemon itself.
    if own.starts_with(&resolved) {
        return Err(invalid(
            "it contains the daemon's own cgroup; use a dedicated one such as \"jobs\"",
        ));
    }
    Ok(resolved)
}

/// Reads a whole (small) kernel file.
fn read(path: impl AsRef<Path>) -> Result<String, CgroupError> {
    let path = path.as_ref();
    fs::read_to_string(path).map_err(|e| io_error("read", path, e))
}

/// Writes `value` to an existing cgroup file in one `write(2)`, as cgroupfs expects.
fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    // No O_CREAT: a missing file must fail with ENOENT, not be "created" on cgroupfs.
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut file| file.write_all(value.as_bytes()))
        .map_err(|source| CgroupError::Write {
            path: path.to_owned(),
            value: value.to_owned(),
            source,
        })
}

/// Creates a directory unless it exists.
fn create_dir_if_missing(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io_error("create", path, e)),
        _ => Ok(()),
    }
}

/// A number from a single-value cgroup file; `None` (logged at debug) if it is missing or odd.
fn read_u64(path: &Path) -> Option<u64> {
    let value = fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    if value.is_none() {
        tracing::debug!(path = %path.display(), "usage file missing or unreadable");
    }
    value
}

/// The value of `key` in a flat-keyed cgroup file ("key value" per line); `None` (logged at
/// debug) if the file or the key is missing.
fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok();
    let value = text.as_deref().and_then(|t| keyed_value(t, key));
    if value.is_none() {
        tracing::debug!(path = %path.display(), key, "usage file or key missing");
    }
    value
}

/// The value of `key` in flat-keyed text.
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// The pids listed in a cgroup directory's `cgroup.procs`.
fn read_pids(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    let path = dir.join("cgroup.procs");
    read(&path)?
        .lines()
        .map(|line| {
            line.trim()
                .parse()
                .map_err(|_| parse_error(&path, format!("bad pid {line:?}")))
        })
        .collect()
}

/// SIGKILLs every process listed in `dir` until none is listed, within `backoff`'s deadline.
fn kill_until_empty(dir: &Path, backoff: &mut Backoff) -> Result<(), CgroupError> {
    while kill_listed(dir)? {
        if !backoff.wait() {
            return Err(CgroupError::NotEmpty {
                path: dir.to_owned(),
                waited: SETTLE_TIMEOUT,
            });
        }
    }
    Ok(())
}

/// SIGKILLs the processes listed in `dir`'s `cgroup.procs`; false if none was listed.
///
/// A listed pid may exit and be reused by an unrelated process before it is signalled. A pidfd
/// pins whichever process has the pid when it is opened, and it is signalled only if the pid is
/// still listed afterwards: then the pidfd's process is the one in this cgroup.
fn kill_listed(dir: &Path) -> Result<bool, CgroupError> {
    let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    let listed = read_pids(dir)?;
    if listed.is_empty() {
        return Ok(false);
    }
    let mut pinned = Vec::with_capacity(listed.len());
    for &pid in listed.iter().filter(|&&pid| pid > 0 && pid != me) {
        match pidfd_open(pid) {
            Ok(fd) => pinned.push((pid, Some(fd))),
            // Kernels before 5.3 have no pidfds: plain kill(2), with the reuse race.
            Err(Errno::ENOSYS) => pinned.push((pid, None)),
            // ESRCH: already gone.
            Err(_) => {}
        }
    }
    let still_listed = read_pids(dir)?;
    for (pid, fd) in pinned.iter().filter(|(pid, _)| still_listed.contains(pid)) {
        let sent = match fd {
            Some(fd) => pidfd_kill(fd),
            None => kill_pid(*pid),
        };
        match sent {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => {
                return Err(CgroupError::Kill {
                    pid: *pid,
                    path: dir.to_owned(),
                    source: e.into(),
                });
            }
        }
    }
    Ok(true)
}

/// `pidfd_open(2)`: a handle on the process `pid` names now.
fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: a plain system call with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(Errno::result(fd)?).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this new fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_send_signal(2)` with SIGKILL.
fn pidfd_kill(fd: &OwnedFd) -> Result<(), Errno> {
    // SAFETY: a valid fd, a signal number and a null siginfo, as the call allows.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    Errno::result(ret).map(drop)
}

/// `kill(pid, SIGKILL)`, for kernels without pidfds.
fn kill_pid(pid: i32) -> Result<(), Errno> {
    // SAFETY: kill(2) takes plain integers.
    Errno::result(unsafe { libc::kill(pid, libc::SIGKILL) }).map(drop)
}

/// Removes the directories, each once its last process has exited; all are tried and the
/// first error is returned.
fn remove_dirs(dirs: &[CgroupDir]) -> Result<(), CgroupError> {
    let mut first_error = None;
    let mut backoff = Backoff::new();
    for dir in dirs {
        if let Err(e) = remove_when_empty(&dir.path, &mut backoff) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Removes a cgroup directory, retrying while the kernel says EBUSY (it still has processes,
/// e.g. one between SIGKILL and exit). Zombies do not count: the kernel removes a cgroup whose
/// only members are unreaped zombies.
fn remove_when_empty(path: &Path, backoff: &mut Backoff) -> Result<(), CgroupError> {
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if !backoff.wait() {
                    return Err(CgroupError::NotEmpty {
                        path: path.to_owned(),
                        waited: SETTLE_TIMEOUT,
                    });
                }
            }
            Err(e) => return Err(io_error("remove", path, e)),
        }
    }
}

/// Paces re-checks of a state the kernel changes asynchronously: short pauses that double up to
/// [`MAX_DELAY`], until [`SETTLE_TIMEOUT`] after creation.
#[derive(Debug)]
struct Backoff {
    /// The next pause.
    delay: Duration,
    /// When to give up.
    deadline: Instant,
}

impl Backoff {
    /// A backoff whose deadline is [`SETTLE_TIMEOUT`] from now.
    fn new() -> Backoff {
        Backoff {
            delay: FIRST_DELAY,
            deadline: Instant::now() + SETTLE_TIMEOUT,
        }
    }

    /// Pauses before the next check; false (without pausing) once the deadline has passed.
    fn wait(&mut self) -> bool {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        thread::sleep(self.delay.min(left));
        self.delay = (self.delay * 2).min(MAX_DELAY);
        true
    }
}

/// The CFS quota for `cpus` CPUs per [`CPU_PERIOD_US`], in microseconds.
fn cpu_quota_us(cpus: f64) -> u64 {
    // `Limits::validate` bounds cpus to [0.01, 1024]: the product is a small positive number,
    // so the float-to-integer conversion is exact after rounding.
    (cpus * CPU_PERIOD_US as f64).round() as u64
}

/// Shorthand for [`CgroupError::Io`].
fn io_error(op: &'static str, path: &Path, source: io::Error) -> CgroupError {
    CgroupError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Shorthand for [`CgroupError::Parse`].
fn parse_error(path: impl AsRef<Path>, what: impl Into<String>) -> CgroupError {
    CgroupError::Parse {
        path: path.as_ref().to_owned(),
        what: what.into(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    //! Against the real kernel, as root. Each test makes its own parent
    //! (`jobworker-test-<uuid>` below the test process's cgroup) and removes it, so tests run in
    //! parallel. `JOBWORKER_EXPECT_CGROUP=v1|v2` turns "this host runs the other version" from a
    //! skip of version-specific tests into a failure of every kernel test.

    use std::ops::Deref;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Child, Command};

    use nix::sys::statfs::TMPFS_MAGIC;

    use super::*;

    /// The version `JOBWORKER_EXPECT_CGROUP` says the host runs, if set.
    fn expected_version() -> Option<CgroupVersion> {
        match std::env::var("JOBWORKER_EXPECT_CGROUP").as_deref() {
            Ok("v1") => Some(CgroupVersion::V1),
            Ok("v2") => Some(CgroupVersion::V2),
            Ok(other) => panic!("JOBWORKER_EXPECT_CGROUP must be v1 or v2, not {other:?}"),
            Err(_) => None,
        }
    }

    /// Whether a test written for `version` runs: true on such a host; a panic when
    /// `JOBWORKER_EXPECT_CGROUP` names a version the host does not run; false (skip) otherwise.
    pub(in crate::cgroup) fn host_runs(version: CgroupVersion) -> bool {
        let actual = host_version().expect("statfs /sys/fs/cgroup");
        if let Some(expected) = expected_version() {
            assert_eq!(
                actual, expected,
                "JOBWORKER_EXPECT_CGROUP names another version than the host runs"
            );
        }
        if actual != version {
            eprintln!("skipped: written for cgroup {version:?}, the host runs {actual:?}");
        }
        actual == version
    }

    /// A parent of job cgroups private to one test; dropping it kills and removes whatever is
    /// left below it, then the parent itself.
    pub(in crate::cgroup) struct TestParent {
        /// The detected hierarchy with the private parent.
        cgroups: Cgroups,
        /// The parent as given to `detect` (relative).
        name: String,
    }

    impl TestParent {
        /// Detects the hierarchy with a fresh `jobworker-test-<uuid>` parent.
        pub(in crate::cgroup) fn new() -> TestParent {
            if let Some(expected) = expected_version() {
                assert_eq!(
                    host_version().expect("statfs"),
                    expected,
                    "JOBWORKER_EXPECT_CGROUP"
                );
            }
            let name = format!("jobworker-test-{}", uuid::Uuid::new_v4());
            let cgroups =
                Cgroups::detect(Path::new(&name)).unwrap_or_else(|e| panic!("detect({name}): {e}"));
            TestParent { cgroups, name }
        }
    }

    impl Deref for TestParent {
        type Target = Cgroups;

        fn deref(&self) -> &Cgroups {
            &self.cgroups
        }
    }

    impl Drop for TestParent {
        fn drop(&mut self) {
            if let Err(e) = self.cgroups.remove_stale() {
                eprintln!("cannot clean test parent {}: {e}", self.name);
            }
            for dir in self.cgroups.parent_dirs() {
                if let Err(e) = fs::remove_dir(&dir) {
                    eprintln!("cannot remove test parent {}: {e}", dir.display());
                }
            }
        }
    }

    /// Every limit, with values the kernel keeps as written (the memory is page-aligned).
    fn all_limits() -> Limits {
        Limits {
            cpus: Some(0.5),
            memory_bytes: Some(64 << 20),
            io_read_bps: Some(1 << 20),
            io_write_bps: Some(2 << 20),
            io_read_iops: Some(100),
            io_write_iops: Some(200),
            pids: Some(42),
        }
    }

    /// A whole disk for IO-limit tests: the one under `/`, else the first disk in /sys/block
    /// (a QEMU guest whose root is an initramfs has its scratch disk there).
    fn test_disk() -> DevNum {
        if let Ok(disk) = block_device_of(Path::new("/")) {
            return disk;
        }
        for entry in fs::read_dir("/sys/block").expect("list /sys/block") {
            let path = entry.expect("list /sys/block").path();
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if ["loop", "ram", "zram"].iter().all(|p| !name.starts_with(p)) {
                return DevNum::parse(&read(path.join("dev")).expect("read dev"), &path)
                    .expect("parse dev");
            }
        }
        panic!("no block device for io limit tests: attach a disk");
    }

    /// The content of `file` in whichever of the job's directories has it, trimmed.
    fn job_file(job: &JobCgroup, file: &str) -> String {
        let path = job
            .dirs()
            .into_iter()
            .map(|d| d.join(file))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no job directory has {file}"));
        read(&path).expect("read job file").trim().to_owned()
    }

    /// A child process killed and reaped when the test ends, passed or not.
    pub(in crate::cgroup) struct Reaped(pub(in crate::cgroup) Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            // Already reaped by the test in the common case: both calls then fail harmlessly.
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Spawns `program args` so that it joins the job's cgroup before exec, as the worker does.
    fn spawn_in(job: &JobCgroup, program: &str, args: &[&str]) -> Reaped {
        let fds = job.procs_fds();
        let mut cmd = Command::new(program);
        cmd.args(args);
        // SAFETY: the hook only calls write(2) on fds opened before the fork (async-signal-safe)
        // and reads a Vec allocated before it.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &fds {
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Reaped(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("spawn {program}: {e}")),
        )
    }

    /// The process's pid as cgroup.procs lists it.
    fn pid(child: &Reaped) -> i32 {
        i32::try_from(child.0.id()).expect("pid fits i32")
    }

    /// Waits (bounded) until `dir` lists at least `n` processes.
    fn wait_for_members(dir: &Path, n: usize) {
        let mut backoff = Backoff::new();
        while read_pids(dir).expect("read cgroup.procs").len() < n {
            assert!(backoff.wait(), "{} never had {n} processes", dir.display());
        }
    }

    #[test]
    fn detect_reports_the_version_mounted_at_sys_fs_cgroup() {
        let mounts = parse_mountinfo(&read("/proc/self/mountinfo").expect("read mountinfo"));
        let cgroup2 = mounts
            .iter()
            .any(|m| m.mount_point == Path::new(CGROUP_MOUNT) && m.fstype == "cgroup2");
        let mounted = if cgroup2 {
            CgroupVersion::V2
        } else {
            CgroupVersion::V1
        };
        if let Some(expected) = expected_version() {
            assert_eq!(mounted, expected, "JOBWORKER_EXPECT_CGROUP");
        }
        assert_eq!(TestParent::new().version(), mounted);
    }

    #[test]
    fn parents_live_directly_below_the_daemons_own_cgroups() {
        let parent = TestParent::new();
        let dirs = parent.parent_dirs();
        match parent.version() {
            // cpu and cpuacct may share a hierarchy.
            CgroupVersion::V1 => assert!((4..=5).contains(&dirs.len()), "{dirs:?}"),
            CgroupVersion::V2 => assert_eq!(dirs.len(), 1, "{dirs:?}"),
        }
        let me = i32::try_from(std::process::id()).expect("pid fits i32");
        for dir in dirs {
            assert_eq!(
                dir.file_name(),
                Some(OsStr::new(&parent.name)),
                "{}",
                dir.display()
            );
            assert!(dir.is_dir(), "{} was not created", dir.display());
            let own = dir.parent().expect("parent has a parent");
            // On v2 the test process may have moved into the leaf "daemon" of its cgroup.
            let members = [own.to_owned(), own.join("daemon")]
                .iter()
                .filter(|d| d.is_dir())
                .flat_map(|d| read_pids(d).expect("read cgroup.procs"))
                .collect::<Vec<_>>();
            assert!(
                members.contains(&me),
                "{} is not this process's cgroup",
                own.display()
            );
        }
    }

    #[test]
    fn parents_at_or_above_the_own_cgroup_are_refused() {
        let mut refused = vec![
            String::new(),
            "/".into(),
            ".".into(),
            "..".into(),
            "jobs/../..".into(),
        ];
        // The daemon's own cgroups, as absolute parents.
        let own = parse_proc_cgroup(&read("/proc/self/cgroup").expect("read")).expect("parse");
        refused.extend(own.iter().map(|c| c.path.to_string_lossy().into_owned()));
        for parent in refused {
            match Cgroups::detect(Path::new(&parent)) {
                Err(CgroupError::InvalidParent { .. }) => {}
                other => panic!("parent {parent:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn create_writes_every_limit() {
        let parent = TestParent::new();
        let disk = test_disk();
        let job = parent
            .create("job", &all_limits(), Some(disk))
            .expect("create");
        let expected: Vec<(&str, String)> = match parent.version() {
            CgroupVersion::V1 => {
                let swap = if job
                    .dirs()
                    .iter()
                    .any(|d| d.join("memory.memsw.limit_in_bytes").exists())
                {
                    ("memory.memsw.limit_in_bytes", "67108864".to_owned())
                } else {
                    ("memory.swappiness", "0".to_owned())
                };
                vec![
                    ("cpu.cfs_period_us", "100000".into()),
                    ("cpu.cfs_quota_us", "50000".into()),
                    ("memory.limit_in_bytes", "67108864".into()),
                    swap,
                    ("blkio.throttle.read_bps_device", format!("{disk} 1048576")),
                    ("blkio.throttle.write_bps_device", format!("{disk} 2097152")),
                    ("blkio.throttle.read_iops_device", format!("{disk} 100")),
                    ("blkio.throttle.write_iops_device", format!("{disk} 200")),
                    ("pids.max", "42".into()),
                ]
            }
            CgroupVersion::V2 => {
                let mut expected = vec![
                    ("cpu.max", "50000 100000".to_owned()),
                    ("memory.max", "67108864".into()),
                    (
                        "io.max",
                        format!("{disk} rbps=1048576 wbps=2097152 riops=100 wiops=200"),
                    ),
                    ("pids.max", "42".into()),
                ];
                if job.dirs()[0].join("memory.swap.max").exists() {
                    expected.push(("memory.swap.max", "0".into()));
                }
                expected
            }
        };
        for (file, value) in expected {
            assert_eq!(job_file(&job, file), value, "{file}");
        }
        job.remove().expect("remove");
    }

    #[test]
    fn create_without_limits_keeps_the_kernel_defaults() {
        let parent = TestParent::new();
        let job = parent
            .create("job", &Limits::default(), None)
            .expect("create");
        let expected = match parent.version() {
            CgroupVersion::V1 => [
                ("cpu.cfs_quota_us", "-1"),
                ("pids.max", "max"),
                ("blkio.throttle.read_bps_device", ""),
            ],
            CgroupVersion::V2 => [
                ("cpu.max", "max 100000"),
                ("pids.max", "max"),
                ("memory.max", "max"),
            ],
        };
        for (file, value) in expected {
            assert_eq!(job_file(&job, file), value, "{file}");
        }
        job.remove().expect("remove");
    }

    #[test]
    fn writing_0_to_the_procs_fds_joins_every_job_directory() {
        let parent = TestParent::new();
        let job = parent
            .create("job", &Limits::default(), None)
            .expect("create");
        let mut child = spawn_in(&job, "sleep", &["1000"]);
        for dir in job.dirs() {
            let members = read_pids(&dir).expect("read cgroup.procs");
            assert_eq!(members, [pid(&child)], "{}", dir.display());
        }
        job.kill().expect("kill");
        assert_eq!(child.0.wait().expect("wait").signal(), Some(libc::SIGKILL));
        job.remove().expect("remove");
    }

    #[test]
    fn kill_then_remove_leaves_no_directory() {
        let parent = TestParent::new();
        let job = parent
            .create("job", &Limits::default(), None)
            .expect("create");
        let mut child = spawn_in(&job, "sh", &["-c", "sleep 1000 & sleep 1000 & wait"]);
        let dirs = job.dirs();
        wait_for_members(&dirs[0], 3);
        job.kill().expect("kill");
        assert_eq!(child.0.wait().expect("wait").signal(), Some(libc::SIGKILL));
        job.remove().expect("remove");
        for dir in dirs {
            assert!(!dir.exists(), "{} is left", dir.display());
        }
    }

    #[test]
    fn dropping_a_job_cgroup_kills_and_removes_it() {
        let parent = TestParent::new();
        let job = parent
            .create("job", &Limits::default(), None)
            .expect("create");
        let mut child = spawn_in(&job, "sleep", &["1000"]);
        let dirs = job.dirs();
        drop(job);
        assert_eq!(child.0.wait().expect("wait").signal(), Some(libc::SIGKILL));
        for dir in dirs {
            assert!(!dir.exists(), "{} is left", dir.display());
        }
    }

    #[test]
    fn remove_stale_kills_leftover_processes_and_removes_their_cgroups() {
        let parent = TestParent::new();
        let mut child = Reaped(
            Command::new("sleep")
                .arg("1000")
                .spawn()
                .expect("spawn sleep"),
        );
        // What a crashed daemon leaves: a job directory in each hierarchy, with a live process.
        let leftovers: Vec<PathBuf> = parent
            .parent_dirs()
            .iter()
            .map(|d| d.join("crashed-job"))
            .collect();
        for dir in &leftovers {
            fs::create_dir(dir).expect("create leftover");
            write(&dir.join("cgroup.procs"), &pid(&child).to_string()).expect("attach");
        }
        let restarted = Cgroups::detect(Path::new(&parent.name)).expect("detect again");
        assert_eq!(restarted.remove_stale().expect("remove_stale"), 1);
        assert_eq!(child.0.wait().expect("wait").signal(), Some(libc::SIGKILL));
        for dir in leftovers {
            assert!(!dir.exists(), "{} is left", dir.display());
        }
    }

    #[test]
    fn a_limit_the_kernel_rejects_leaves_no_directory() {
        let parent = TestParent::new();
        let no_such_disk = DevNum { major: 0, minor: 0 };
        let err = parent
            .create("job", &all_limits(), Some(no_such_disk))
            .expect_err("device 0:0 accepted");
        match &err {
            CgroupError::Write { path, value, .. } => {
                assert!(value.starts_with("0:0 "), "{err}");
                let file = path.file_name().unwrap_or_default().to_string_lossy();
                assert!(
                    file.starts_with("blkio.throttle.") || file == "io.max",
                    "{err}"
                );
            }
            other => panic!("expected a write error, got {other:?}"),
        }
        for dir in parent.parent_dirs() {
            assert!(
                !dir.join("job").exists(),
                "{} has a leftover job",
                dir.display()
            );
        }
    }

    #[test]
    fn io_limits_without_a_device_are_refused_before_anything_is_created() {
        let parent = TestParent::new();
        let err = parent
            .create("job", &all_limits(), None)
            .expect_err("accepted");
        assert!(matches!(err, CgroupError::NoIoDevice), "{err:?}");
        for dir in parent.parent_dirs() {
            assert!(
                !dir.join("job").exists(),
                "{} has a leftover job",
                dir.display()
            );
        }
    }

    #[test]
    fn job_names_must_be_one_plain_component() {
        let parent = TestParent::new();
        for name in ["", ".", "..", "a/b", "../escape"] {
            let result = parent.create(name, &Limits::default(), None);
            assert!(
                matches!(result, Err(CgroupError::InvalidName(_))),
                "{name:?}: {result:?}"
            );
        }
    }

    #[test]
    fn an_existing_job_cgroup_is_neither_reused_nor_removed() {
        let parent = TestParent::new();
        let first = parent
            .create("job", &Limits::default(), None)
            .expect("create");
        let second = parent.create("job", &Limits::default(), None);
        assert!(
            matches!(second, Err(CgroupError::Io { op: "create", .. })),
            "{second:?}"
        );
        for dir in first.dirs() {
            assert!(dir.exists(), "the failed create removed {}", dir.display());
        }
        first.remove().expect("remove");
    }

    #[test]
    fn usage_reports_cpu_time_and_peak_memory() {
        let parent = TestParent::new();
        let job = parent
            .create("job", &Limits::default(), None)
            .expect("create");
        let script = "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done";
        let mut child = spawn_in(&job, "sh", &["-c", script]);
        assert!(child.0.wait().expect("wait").success());
        let usage = job.usage();
        assert!(usage.cpu_time >= Duration::from_millis(20), "{usage:?}");
        assert!(usage.cpu_time < Duration::from_secs(60), "{usage:?}");
        let tracks_peak = job.dirs().iter().any(|d| {
            d.join("memory.max_usage_in_bytes").exists() || d.join("memory.peak").exists()
        });
        if tracks_peak {
            assert!(usage.peak_memory_bytes.is_some_and(|b| b > 0), "{usage:?}");
        } else {
            assert_eq!(usage.peak_memory_bytes, None);
        }
        assert_eq!(usage.oom_kills, 0);
        job.remove().expect("remove");
    }

    #[test]
    fn an_oom_kill_is_counted() {
        let parent = TestParent::new();
        let limits = Limits {
            memory_bytes: Some(16 << 20),
            ..Limits::default()
        };
        let job = parent.create("job", &limits, None).expect("create");
        // tail keeps the last lines, and /dev/zero has no line end: it grows until killed.
        let mut child = spawn_in(&job, "tail", &["/dev/zero"]);
        assert_eq!(child.0.wait().expect("wait").signal(), Some(libc::SIGKILL));
        let usage = job.usage();
        assert_eq!(usage.oom_kills, 1, "{usage:?}");
        assert!(
            usage.peak_memory_bytes.is_none_or(|b| b <= 16 << 20),
            "{usage:?}"
        );
        job.remove().expect("remove");
    }

    #[test]
    fn block_device_of_root_is_the_whole_disk_holding_it() {
        let dev = fs::metadata("/").expect("stat /").st_dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        if major == 0 {
            // e.g. an initramfs root in a test VM.
            let result = block_device_of(Path::new("/"));
            assert!(
                matches!(result, Err(CgroupError::NoBlockDevice { .. })),
                "{result:?}"
            );
            return;
        }
        // Found top-down, unlike block_device_of: the disk listing it or one of its partitions.
        let mut owner = None;
        for disk in fs::read_dir("/sys/block").expect("list /sys/block") {
            let disk = disk.expect("list /sys/block").path();
            let disk_dev =
                DevNum::parse(&read(disk.join("dev")).expect("read"), &disk).expect("parse");
            let mut devs = vec![disk_dev];
            for part in fs::read_dir(&disk).expect("list disk").flatten() {
                if part.path().join("partition").exists() {
                    devs.push(
                        DevNum::parse(&read(part.path().join("dev")).expect("read"), &disk)
                            .expect("parse"),
                    );
                }
            }
            if devs.contains(&DevNum { major, minor }) {
                owner = Some(disk_dev);
            }
        }
        let owner = owner.expect("no disk in /sys/block holds /");
        assert_eq!(
            block_device_of(Path::new("/")).expect("block_device_of /"),
            owner
        );
    }

    #[test]
    fn block_device_of_a_tmpfs_is_refused() {
        let tmpfs = ["/dev/shm", "/run", "/tmp"]
            .into_iter()
            .find(|p| statfs(*p).is_ok_and(|s| s.filesystem_type() == TMPFS_MAGIC))
            .expect("no tmpfs at /dev/shm, /run or /tmp");
        let err = block_device_of(Path::new(tmpfs)).expect_err("tmpfs accepted");
        assert!(
            matches!(err, CgroupError::NoBlockDevice { major: 0, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("io limits need a working directory on a block device"),
            "{err}"
        );
    }

    #[test]
    fn mountinfo_yields_cgroup_mounts_with_their_controllers() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
41 31 0:38 /docker/abc /sys/fs/cgroup/with\\040space rw - cgroup2 cgroup2 rw,nsdelegate
";
        let mounts = parse_mountinfo(text);
        assert_eq!(
            mounts,
            [
                Mount {
                    root: "/".into(),
                    mount_point: "/sys/fs/cgroup/cpu,cpuacct".into(),
                    fstype: "cgroup".into(),
                    super_options: "rw,cpu,cpuacct".into(),
                },
                Mount {
                    root: "/docker/abc".into(),
                    mount_point: "/sys/fs/cgroup/with space".into(),
                    fstype: "cgroup2".into(),
                    super_options: "rw,nsdelegate".into(),
                },
            ]
        );
    }

    #[test]
    fn cgroup_paths_map_through_the_mounted_subtree() {
        let mount = Mount {
            root: "/docker/abc".into(),
            mount_point: "/sys/fs/cgroup".into(),
            fstype: "cgroup2".into(),
            super_options: String::new(),
        };
        assert_eq!(
            mount.dir_of(Path::new("/docker/abc")).expect("root"),
            Path::new("/sys/fs/cgroup")
        );
        assert_eq!(
            mount.dir_of(Path::new("/docker/abc/jobs")).expect("child"),
            Path::new("/sys/fs/cgroup/jobs")
        );
        for outside in ["/docker", "/other/jobs", "/docker/abc/../x"] {
            let result = mount.dir_of(Path::new(outside));
            assert!(
                matches!(result, Err(CgroupError::NotVisible { .. })),
                "{outside}: {result:?}"
            );
        }
    }

    #[test]
    fn proc_cgroup_lines_give_each_hierarchy_its_path() {
        let parsed = parse_proc_cgroup("4:memory:/a/b\n2:cpu,cpuacct:/\n0::/svc:with:colons\n")
            .expect("parse");
        assert_eq!(parsed.len(), 3);
        assert!(parsed[1].has_controller("cpuacct") && !parsed[1].has_controller("cpuset"));
        assert_eq!(parsed[0].path, Path::new("/a/b"));
        assert_eq!(
            (parsed[2].hierarchy, parsed[2].path.as_path()),
            (0, Path::new("/svc:with:colons"))
        );
        assert!(parse_proc_cgroup("garbage\n").is_err());
    }

    #[test]
    fn relative_parents_go_below_the_own_cgroup_and_absolute_ones_below_the_root() {
        let own = Path::new("/system.slice/jobworkerd.service");
        assert_eq!(
            resolve_parent(Path::new("jobs"), own).expect("relative"),
            Path::new("/system.slice/jobworkerd.service/jobs")
        );
        assert_eq!(
            resolve_parent(Path::new("/jobworker/jobs"), own).expect("absolute"),
            Path::new("/jobworker/jobs")
        );
        for refused in [
            "",
            "/",
            ".",
            "../jobs",
            "/system.slice",
            "/system.slice/jobworkerd.service",
        ] {
            let result = resolve_parent(Path::new(refused), own);
            assert!(
                matches!(result, Err(CgroupError::InvalidParent { .. })),
                "{refused:?}: {result:?}"
            );
        }
    }

    #[test]
    fn keyed_values_are_found_by_exact_key() {
        let text = "usage_usec 1500\nuser_usec 1000\noom_kill 3\noom_group_kill 1\n";
        assert_eq!(keyed_value(text, "usage_usec"), Some(1500));
        assert_eq!(keyed_value(text, "oom_kill"), Some(3));
        assert_eq!(keyed_value(text, "oom"), None);
    }
}
