//! cgroup v2: one hierarchy, so a job is one directory carrying every limit.
//!
//! Preparing the parent follows two kernel rules (Documentation/admin-guide/cgroup-v2.rst):
//! - Top-down: a cgroup can enable a controller for its children only if its own parent
//!   enabled it, so controllers are enabled in `cgroup.subtree_control` on every ancestor from
//!   the mount's root down to and including the parent of job cgroups.
//! - No internal processes: a non-root cgroup that has processes cannot enable domain
//!   controllers (memory, io) for its children; the write fails with EBUSY. With the default
//!   relative parent the daemon's own cgroup is on that path, so the daemon first moves itself
//!   into a leaf `<own>/daemon`, as a service with systemd's `Delegate=yes` is expected to.
//!
//! Limits on the parent of job cgroups bound all jobs together. Unlike v1, the kernel does not
//! compare a child's `cpu.max` with its parent's (the smaller one simply wins), and lowering
//! `memory.max` below what the subtree holds does not fail: the kernel reclaims, then OOM-kills
//! in the subtree until the usage fits.

use std::io;
use std::path::Path;
use std::time::Duration;

use super::device::DevNum;
use super::error::{CgroupError, parse_error};
use super::files::{create_dir_if_missing, read, read_keyed, read_u64, write};
use super::hierarchy::{CGROUP_MOUNT, CgroupDir, Controller, Mount, ProcCgroup, resolve_parent};
use super::kill::{Backoff, kill_until_empty};
use super::limits::{CPU_PERIOD_US, CgroupUsage, ParentLimits, cpu_quota_us};
use crate::spec::Limits;

/// The controllers jobs use and their v2 names. io is optional: some hosts do not offer it, and
/// only jobs with IO limits need it.
const CONTROLLERS: [(Controller, &str); 4] = [
    (Controller::Cpu, "cpu"),
    (Controller::Memory, "memory"),
    (Controller::Io, "io"),
    (Controller::Pids, "pids"),
];

/// The leaf the daemon moves into when its own cgroup must delegate controllers.
const DAEMON_LEAF: &str = "daemon";

/// Enables the controllers from the hierarchy's root down to the parent of job cgroups,
/// creating the missing directories, and returns that parent.
pub(super) fn prepare(
    parent: &Path,
    mounts: &[Mount],
    own: &[ProcCgroup],
) -> Result<Vec<CgroupDir>, CgroupError> {
    let mount = mounts
        .iter()
        .find(|m| m.fstype == "cgroup2" && m.mount_point == Path::new(CGROUP_MOUNT))
        .ok_or_else(|| parse_error("/proc/self/mountinfo", "no cgroup2 mount at /sys/fs/cgroup"))?;
    let current = &own
        .iter()
        .find(|c| c.hierarchy == 0)
        .ok_or_else(|| parse_error("/proc/self/cgroup", "no cgroup v2 entry (0::PATH)"))?
        .path;
    // A process that already moved into its leaf (an earlier `detect`) counts the leaf's parent,
    // its service cgroup, as its own: repeated calls then agree instead of nesting leaves.
    let own_path = match current.file_name() {
        Some(name) if name == DAEMON_LEAF => current.parent().unwrap_or(current),
        _ => current,
    };
    let parent_path = resolve_parent(parent, own_path)?;
    if parent_path.starts_with(own_path.join(DAEMON_LEAF)) {
        return Err(CgroupError::InvalidParent {
            parent: parent.to_owned(),
            reason: "it is inside the leaf \"daemon\" that the daemon may move itself into",
        });
    }
    let own_dir = mount.dir_of(own_path)?;
    let parent_dir = mount.dir_of(&parent_path)?;
    let controllers = offered_controllers(&mount.mount_point)?;
    let mut chain: Vec<&Path> = parent_dir
        .ancestors()
        .take_while(|dir| dir.starts_with(&mount.mount_point))
        .collect();
    chain.reverse();
    for dir in chain {
        create_dir_if_missing(dir)?;
        enable(dir, &controllers, &own_dir)?;
    }
    Ok(vec![CgroupDir {
        path: parent_dir,
        controllers,
    }])
}

/// The controllers jobs use that the top of the visible hierarchy offers; an error names a
/// missing required one.
fn offered_controllers(top: &Path) -> Result<Vec<Controller>, CgroupError> {
    let offered = read(top.join("cgroup.controllers"))?;
    let mut controllers = Vec::new();
    for (controller, name) in CONTROLLERS {
        if offered.split_whitespace().any(|o| o == name) {
            controllers.push(controller);
        } else if controller == Controller::Io {
            tracing::info!(path = %top.display(), "no io controller: jobs with io limits will be refused");
        } else {
            return Err(CgroupError::ControllerUnavailable {
                controller: name,
                path: top.to_owned(),
            });
        }
    }
    Ok(controllers)
}

/// Enables `controllers` in `dir`'s `cgroup.subtree_control` (those not enabled yet). When
/// `dir` is the daemon's own cgroup and the kernel refuses because processes live there, the
/// daemon moves into its leaf and tries once more.
fn enable(dir: &Path, controllers: &[Controller], own_dir: &Path) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.subtree_control");
    let enabled = read(&file)?;
    let missing: Vec<String> = CONTROLLERS
        .iter()
        .filter(|(c, name)| {
            controllers.contains(c) && !enabled.split_whitespace().any(|e| e == *name)
        })
        .map(|(_, name)| format!("+{name}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // One write: the kernel applies all of them or none.
    let value = missing.join(" ");
    match write(&file, &value) {
        Err(e) if e.write_errno() == Some(libc::EBUSY) && dir == own_dir => {
            move_into_leaf(own_dir)?;
            write(&file, &value).map_err(|e| {
                if e.write_errno() == Some(libc::EBUSY) {
                    CgroupError::OwnCgroupBusy {
                        path: own_dir.to_owned(),
                    }
                } else {
                    e
                }
            })
        }
        result => result,
    }
}

/// Moves this whole process (writing a pid to `cgroup.procs` moves all its threads) into
/// `<own_dir>/daemon`, so that its own cgroup has no processes left.
fn move_into_leaf(own_dir: &Path) -> Result<(), CgroupError> {
    let leaf = own_dir.join(DAEMON_LEAF);
    create_dir_if_missing(&leaf)?;
    write(&leaf.join("cgroup.procs"), &std::process::id().to_string())?;
    tracing::info!(
        leaf = %leaf.display(),
        "moved the daemon into a leaf cgroup so that its own cgroup can delegate controllers to jobs"
    );
    Ok(())
}

/// Writes `limits` on the parent of job cgroups; an unset limit is written as "max".
pub(super) fn write_parent_limits(
    parents: &[CgroupDir],
    limits: &ParentLimits,
) -> Result<(), CgroupError> {
    for dir in parents {
        let has_swap_max = dir.path.join("memory.swap.max").exists();
        for (file, value) in parent_limit_writes(&dir.controllers, limits, has_swap_max) {
            write(&dir.path.join(file), &value)?;
        }
    }
    Ok(())
}

/// The writes that set the parent's limits in a directory carrying `controllers`.
fn parent_limit_writes(
    controllers: &[Controller],
    limits: &ParentLimits,
    has_swap_max: bool,
) -> Vec<(&'static str, String)> {
    let mut writes = Vec::new();
    for controller in controllers {
        match controller {
            Controller::Cpu => {
                let quota = limits
                    .cpus
                    .map_or("max".to_owned(), |c| cpu_quota_us(c).to_string());
                writes.push(("cpu.max", format!("{quota} {CPU_PERIOD_US}")));
            }
            Controller::Memory => {
                let max = limits
                    .memory_bytes
                    .map_or("max".to_owned(), |b| b.to_string());
                writes.push(("memory.max", max));
                if has_swap_max {
                    let swap = if limits.memory_bytes.is_some() {
                        "0"
                    } else {
                        "max"
                    };
                    writes.push(("memory.swap.max", swap.to_owned()));
                }
            }
            Controller::Pids => {
                let max = limits.pids.map_or("max".to_owned(), |p| p.to_string());
                writes.push(("pids.max", max));
            }
            Controller::Cpuacct | Controller::Io => {}
        }
    }
    writes
}

/// Writes `limits` into a new job directory; IO limits apply to each device of `io`.
pub(super) fn write_limits(
    dir: &CgroupDir,
    limits: &Limits,
    io: &[DevNum],
) -> Result<(), CgroupError> {
    // memory.swap.max is missing when swap accounting is off (cgroup.memory=noswap or a kernel
    // without swap support); then there is nothing to limit.
    let has_swap_max = dir.path.join("memory.swap.max").exists();
    for (file, value) in limit_writes(limits, io, has_swap_max) {
        write(&dir.path.join(file), &value)?;
    }
    Ok(())
}

/// The writes that apply `limits` to a new job directory.
fn limit_writes(limits: &Limits, io: &[DevNum], has_swap_max: bool) -> Vec<(&'static str, String)> {
    let mut writes = Vec::new();
    if let Some(cpus) = limits.cpus {
        writes.push(("cpu.max", format!("{} {CPU_PERIOD_US}", cpu_quota_us(cpus))));
    }
    if let Some(bytes) = limits.memory_bytes {
        writes.push(("memory.max", bytes.to_string()));
        if has_swap_max {
            writes.push(("memory.swap.max", "0".to_owned()));
        }
    }
    let keys = [
        ("rbps", limits.io_read_bps),
        ("wbps", limits.io_write_bps),
        ("riops", limits.io_read_iops),
        ("wiops", limits.io_write_iops),
    ];
    // Keys left out keep their current value ("max" in a new cgroup).
    let given: Vec<String> = keys
        .iter()
        .filter_map(|(key, value)| value.map(|v| format!("{key}={v}")))
        .collect();
    if !given.is_empty() {
        // io.max takes one device per write.
        for dev in io {
            writes.push(("io.max", format!("{dev} {}", given.join(" "))));
        }
    }
    if let Some(max) = limits.pids {
        writes.push(("pids.max", max.to_string()));
    }
    writes
}

/// SIGKILLs every process in the cgroup through `cgroup.kill`.
pub(super) fn kill(dir: &Path, backoff: &mut Backoff) -> Result<(), CgroupError> {
    match write(&dir.join("cgroup.kill"), "1") {
        // cgroup.kill arrived in Linux 5.14; before it, signal each listed process.
        Err(CgroupError::Write { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            kill_until_empty(dir, backoff)
        }
        result => result,
    }
}

/// Usage from the job's directory: `cpu.stat` usage_usec (present without the cpu controller
/// too), `memory.peak` (Linux 5.19+) and `memory.events` oom_kill.
pub(super) fn usage(dirs: &[CgroupDir]) -> CgroupUsage {
    let Some(dir) = dirs.first().map(|d| &d.path) else {
        return CgroupUsage::default();
    };
    CgroupUsage {
        cpu_time: read_keyed(&dir.join("cpu.stat"), "usage_usec")
            .map(Duration::from_micros)
            .unwrap_or_default(),
        peak_memory_bytes: read_u64(&dir.join("memory.peak")),
        oom_kills: read_keyed(&dir.join("memory.events"), "oom_kill").unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use super::super::kill::remove_when_empty;
    use super::super::tests::{Forked, Reaped, TestParent, host_runs};
    use super::super::{CgroupVersion, Cgroups};
    use super::*;

    const VDA: DevNum = DevNum {
        major: 254,
        minor: 0,
    };

    #[test]
    fn cpu_max_is_quota_then_period() {
        let limits = Limits {
            cpus: Some(0.5),
            ..Limits::default()
        };
        assert_eq!(
            limit_writes(&limits, &[], true),
            [("cpu.max", "50000 100000".to_owned())]
        );
        let limits = Limits {
            cpus: Some(2.25),
            ..Limits::default()
        };
        assert_eq!(
            limit_writes(&limits, &[], true),
            [("cpu.max", "225000 100000".to_owned())]
        );
    }

    #[test]
    fn memory_limit_turns_swap_off_when_swap_is_accounted() {
        let limits = Limits {
            memory_bytes: Some(32 << 20),
            ..Limits::default()
        };
        assert_eq!(
            limit_writes(&limits, &[], true),
            [
                ("memory.max", "33554432".to_owned()),
                ("memory.swap.max", "0".to_owned()),
            ]
        );
        assert_eq!(
            limit_writes(&limits, &[], false),
            [("memory.max", "33554432".to_owned())]
        );
    }

    #[test]
    fn io_max_lists_only_the_given_limits() {
        let limits = Limits {
            io_read_bps: Some(2097152),
            io_write_iops: Some(120),
            ..Limits::default()
        };
        assert_eq!(
            limit_writes(&limits, &[VDA], true),
            [("io.max", "254:0 rbps=2097152 wiops=120".to_owned())]
        );
    }

    #[test]
    fn no_limits_means_no_writes() {
        assert!(limit_writes(&Limits::default(), &[VDA], true).is_empty());
    }

    #[test]
    fn io_max_gets_one_line_per_device() {
        let limits = Limits {
            io_write_bps: Some(1000),
            ..Limits::default()
        };
        let loop0 = DevNum { major: 7, minor: 0 };
        assert_eq!(
            limit_writes(&limits, &[VDA, loop0], true),
            [
                ("io.max", "254:0 wbps=1000".to_owned()),
                ("io.max", "7:0 wbps=1000".to_owned()),
            ]
        );
    }

    /// The controllers a v2 parent carries when the host offers them all.
    const EVERY: [Controller; 4] = [
        Controller::Cpu,
        Controller::Memory,
        Controller::Io,
        Controller::Pids,
    ];

    #[test]
    fn parent_limits_are_written_with_swap_off() {
        let limits = ParentLimits {
            memory_bytes: Some(64 << 20),
            cpus: Some(1.5),
            pids: Some(100),
        };
        assert_eq!(
            parent_limit_writes(&EVERY, &limits, true),
            [
                ("cpu.max", "150000 100000".to_owned()),
                ("memory.max", "67108864".to_owned()),
                ("memory.swap.max", "0".to_owned()),
                ("pids.max", "100".to_owned()),
            ]
        );
    }

    #[test]
    fn unset_parent_limits_are_written_as_max() {
        assert_eq!(
            parent_limit_writes(&EVERY, &ParentLimits::default(), true),
            [
                ("cpu.max", "max 100000".to_owned()),
                ("memory.max", "max".to_owned()),
                ("memory.swap.max", "max".to_owned()),
                ("pids.max", "max".to_owned()),
            ]
        );
        assert_eq!(
            parent_limit_writes(&[Controller::Memory], &ParentLimits::default(), false),
            [("memory.max", "max".to_owned())]
        );
    }

    #[test]
    fn every_ancestor_of_the_parent_delegates_the_controllers() {
        if !host_runs(CgroupVersion::V2) {
            return;
        }
        let parent = TestParent::new();
        let [dir] = parent
            .parent_dirs()
            .try_into()
            .expect("one parent directory on v2");
        let top = read(Path::new(CGROUP_MOUNT).join("cgroup.controllers"))
            .expect("read root controllers");
        let wanted: Vec<&str> = ["cpu", "memory", "io", "pids"]
            .into_iter()
            .filter(|c| *c != "io" || top.split_whitespace().any(|o| o == "io"))
            .collect();
        for ancestor in dir.ancestors().take_while(|a| a.starts_with(CGROUP_MOUNT)) {
            let enabled =
                read(ancestor.join("cgroup.subtree_control")).expect("read subtree_control");
            for c in &wanted {
                assert!(
                    enabled.split_whitespace().any(|e| e == *c),
                    "{c} not enabled in {}: {enabled:?}",
                    ancestor.display()
                );
            }
        }
    }

    /// Names the helper's mode for the child process running [`leaf_helper`].
    const HELPER_ENV: &str = "JOBWORKER_TEST_LEAF_HELPER";

    /// Not a test on its own: the leaf tests run it in a child process placed in a cgroup of its
    /// own, where it calls `detect` the way a freshly started daemon would.
    #[test]
    #[ignore = "run in a child process by the leaf tests"]
    fn leaf_helper() {
        let Ok(mode) = std::env::var(HELPER_ENV) else {
            return;
        };
        let result = Cgroups::detect(Path::new("jobs"), &ParentLimits::default());
        match mode.as_str() {
            "alone" => {
                let cgroups = result.expect("detect in a cgroup of our own");
                let me = read("/proc/self/cgroup").expect("read /proc/self/cgroup");
                assert!(
                    me.trim_end().ends_with("/daemon"),
                    "not moved into the leaf: {me:?}"
                );
                let [jobs] = cgroups.parent_dirs().try_into().expect("one parent");
                let own = jobs.parent().expect("jobs has a parent");
                let enabled =
                    read(own.join("cgroup.subtree_control")).expect("read subtree_control");
                assert!(
                    enabled.contains("memory"),
                    "memory not enabled in {}: {enabled:?}",
                    own.display()
                );
                // Job cgroups below the delegated parent get the controllers and their limits.
                let limits = crate::spec::Limits {
                    cpus: Some(0.5),
                    memory_bytes: Some(32 << 20),
                    pids: Some(16),
                    ..Default::default()
                };
                let job = cgroups
                    .create("delegated-job", &limits, &[])
                    .expect("create a job cgroup below the delegated parent");
                let [dir] = job.dirs().try_into().expect("one directory on v2");
                assert_eq!(dir, jobs.join("delegated-job"));
                let file = |name: &str| read(dir.join(name)).expect("read limit").trim().to_owned();
                assert_eq!(file("memory.max"), "33554432");
                assert_eq!(file("cpu.max"), "50000 100000");
                assert_eq!(file("pids.max"), "16");
                job.remove().expect("remove the job cgroup");
                // Called again from the leaf, a relative parent still lands beside the leaf.
                let again = Cgroups::detect(Path::new("jobs2"), &ParentLimits::default())
                    .expect("detect again");
                assert_eq!(again.parent_dirs(), [own.join("jobs2")]);
            }
            "shared" => assert!(
                matches!(result, Err(CgroupError::OwnCgroupBusy { .. })),
                "expected OwnCgroupBusy, got {result:?}"
            ),
            other => panic!("unknown helper mode {other:?}"),
        }
    }

    /// Runs [`leaf_helper`] in `mode` in a child process placed in a fresh cgroup below a test
    /// parent, with a `sleep` beside it when `neighbour`; returns the helper's output on failure.
    fn run_leaf_helper(mode: &str, neighbour: bool) {
        let parent = TestParent::new();
        let [parent_dir] = parent
            .parent_dirs()
            .try_into()
            .expect("one parent directory on v2");
        let own = parent_dir.join(format!("own-{mode}"));
        fs::create_dir(&own).expect("create the helper's cgroup");
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(own.join("cgroup.procs"))
            .expect("open cgroup.procs");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&procs);
        let join = move || {
            // SAFETY: write(2) on an fd opened before the fork: async-signal-safe.
            if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } == 1 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        let sleeper = neighbour.then(|| {
            let mut cmd = Command::new("sleep");
            cmd.arg("1000");
            // SAFETY: the hook only calls write(2); see `join`.
            unsafe { cmd.pre_exec(join) };
            Reaped(cmd.spawn().expect("spawn sleep"))
        });
        let test_name = concat!(module_path!(), "::leaf_helper");
        // libtest names tests without the crate name.
        let test_name = test_name
            .split_once("::")
            .map_or(test_name, |(_, rest)| rest);
        let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
        cmd.args(["--exact", test_name, "--ignored", "--nocapture"])
            .env(HELPER_ENV, mode);
        // SAFETY: the hook only calls write(2); see `join`.
        unsafe { cmd.pre_exec(join) };
        let output = cmd.output().expect("run the helper");
        // The neighbour must be gone before its cgroup can be removed.
        drop(sleeper);
        for dir in [
            own.join("jobs"),
            own.join("jobs2"),
            own.join(DAEMON_LEAF),
            own.clone(),
        ] {
            let _ = remove_when_empty(&dir, &mut Backoff::new());
        }
        assert!(
            output.status.success(),
            "helper {mode} failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("1 passed"),
            "the helper did not run: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }

    #[test]
    fn daemon_alone_in_its_cgroup_moves_into_a_leaf() {
        if host_runs(CgroupVersion::V2) {
            run_leaf_helper("alone", false);
        }
    }

    #[test]
    fn daemon_sharing_its_cgroup_gets_a_clear_error() {
        if host_runs(CgroupVersion::V2) {
            run_leaf_helper("shared", true);
        }
    }

    /// `CLONE_INTO_CGROUP` from linux/sched.h (Linux 5.7); libc's constant is a deprecated
    /// `c_int` that cannot hold it.
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

    #[test]
    fn a_child_cloned_into_the_directory_fd_starts_in_the_job_cgroup() {
        if !host_runs(CgroupVersion::V2) {
            return;
        }
        let parent = TestParent::new();
        let job = parent
            .create("job", &Limits::default(), &[])
            .expect("create");
        let fd = job
            .clone_into_fd()
            .expect("a v2 job cgroup made by create has a directory fd");
        // SAFETY: clone_args is plain integers, for which all-zero is valid.
        let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
        args.flags = CLONE_INTO_CGROUP;
        args.exit_signal = libc::SIGCHLD as u64;
        args.cgroup = u64::try_from(fd).expect("fds are not negative");
        // SAFETY: clone3 without CLONE_VM and without a stack behaves like fork; the child only
        // calls pause and _exit, which are async-signal-safe.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const libc::clone_args,
                std::mem::size_of::<libc::clone_args>(),
            )
        };
        if ret == 0 {
            // SAFETY: in the child; it waits to be killed and never returns.
            unsafe {
                libc::pause();
                libc::_exit(0);
            }
        }
        assert!(ret > 0, "clone3: {}", io::Error::last_os_error());
        let mut child = Forked(i32::try_from(ret).expect("pid fits i32"));
        let [dir] = job.dirs().try_into().expect("one directory on v2");
        let relative = dir.strip_prefix(CGROUP_MOUNT).expect("below the mount");
        let expected = format!("0::/{}", relative.display());
        let actual = read(format!("/proc/{}/cgroup", child.0)).expect("read /proc/PID/cgroup");
        assert_eq!(actual.trim_end(), expected, "the child started elsewhere");
        assert!(
            job.contains(child.0).expect("contains"),
            "cgroup.procs lacks the child"
        );
        job.kill().expect("kill");
        assert_eq!(child.wait(), Some(libc::SIGKILL));
        job.remove().expect("remove");
    }
}
