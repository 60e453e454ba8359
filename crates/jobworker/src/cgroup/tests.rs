//! The façade against the real kernel, as root, and the helpers every cgroup test uses.
//!
//! Each test makes its own parent (`jobworker-test-<uuid>` below the test process's cgroup) and
//! removes it, so tests run in parallel. `JOBWORKER_EXPECT_CGROUP=v1|v2` turns "this host runs
//! the other version" from a skip of version-specific tests into a failure of every kernel test.

use std::ffi::OsStr;
use std::io;
use std::ops::Deref;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command};
use std::time::Duration;

use super::files::{read_pids, write};
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
pub(super) fn host_runs(version: CgroupVersion) -> bool {
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
pub(super) struct TestParent {
    /// The detected hierarchy with the private parent.
    cgroups: Cgroups,
    /// The parent as given to `detect` (relative).
    name: String,
}

impl TestParent {
    /// Detects the hierarchy with a fresh `jobworker-test-<uuid>` parent.
    pub(super) fn new() -> TestParent {
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
pub(super) struct Reaped(pub(super) Child);

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
    let tracks_peak = job
        .dirs()
        .iter()
        .any(|d| d.join("memory.max_usage_in_bytes").exists() || d.join("memory.peak").exists());
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
