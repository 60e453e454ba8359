//! The façade against the real kernel, as root, and the helpers every cgroup test uses.
//!
//! Each test makes its own parent (`jobworker-test-<uuid>` below the test process's cgroup) and
//! removes it, so tests run in parallel. `JOBWORKER_EXPECT_CGROUP=v1|v2` turns "this host runs
//! the other version" from a skip of version-specific tests into a failure of every kernel test.

use std::ffi::OsStr;
use std::io;
use std::ops::Deref;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use super::files::write;
use super::*;

/// How long a test waits for the kernel to do something it must do (a kill, an OOM kill, a
/// process touching its memory) before failing: generous, the machines are loaded.
const DEADLINE: Duration = Duration::from_secs(60);
/// Pause between polls while waiting for such a change.
const POLL: Duration = Duration::from_millis(10);

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
    /// Detects the hierarchy with a fresh `jobworker-test-<uuid>` parent without limits.
    pub(super) fn new() -> TestParent {
        TestParent::with_limits(&ParentLimits::default())
    }

    /// Detects the hierarchy with a fresh `jobworker-test-<uuid>` parent limited to `limits`.
    pub(super) fn with_limits(limits: &ParentLimits) -> TestParent {
        if let Some(expected) = expected_version() {
            assert_eq!(
                host_version().expect("statfs"),
                expected,
                "JOBWORKER_EXPECT_CGROUP"
            );
        }
        let name = format!("jobworker-test-{}", uuid::Uuid::new_v4());
        let cgroups = Cgroups::detect(Path::new(&name), limits)
            .unwrap_or_else(|e| panic!("detect({name}): {e}"));
        TestParent { cgroups, name }
    }

    /// Detects the same parent again, as a restarted daemon does.
    fn detect_again(&self, limits: &ParentLimits) -> Result<Cgroups, CgroupError> {
        Cgroups::detect(Path::new(&self.name), limits)
    }

    /// The content of `file` in whichever parent directory has it, trimmed.
    fn file(&self, file: &str) -> String {
        let path = self
            .parent_dirs()
            .into_iter()
            .map(|d| d.join(file))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no parent directory has {file}"));
        read(&path).expect("read parent file").trim().to_owned()
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
        let names = self.cgroups.child_names().unwrap_or_else(|e| {
            eprintln!("cannot list test parent {}: {e}", self.name);
            Vec::new()
        });
        for name in names {
            if let Ok(Some(job)) = self.cgroups.open(&name) {
                let killed = job.kill();
                if let Err(e) = killed.and(job.remove()) {
                    eprintln!("cannot clean {name} in test parent {}: {e}", self.name);
                }
            }
        }
        match self.cgroups.remove_parent() {
            Ok(true) => {}
            Ok(false) => eprintln!("test parent {} is not empty", self.name),
            Err(e) => eprintln!("cannot remove test parent {}: {e}", self.name),
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
        output_bytes: None,
    }
}

/// Up to `n` distinct whole disks for IO-limit tests: the one under `/` first, then others
/// from /sys/block (a QEMU guest whose root is an initramfs has its scratch disk there; the
/// host has loop devices, which accept throttles even when unbound).
fn test_disks(n: usize) -> Vec<DevNum> {
    let mut disks: Vec<DevNum> = block_device_of(Path::new("/")).into_iter().collect();
    let mut entries: Vec<PathBuf> = fs::read_dir("/sys/block")
        .expect("list /sys/block")
        .map(|e| e.expect("list /sys/block").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        // RAM-backed disks may refuse throttles.
        if ["ram", "zram"].iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let dev =
            DevNum::parse(&read(path.join("dev")).expect("read dev"), &path).expect("parse dev");
        if !disks.contains(&dev) {
            disks.push(dev);
        }
    }
    assert!(!disks.is_empty(), "no block device for io limit tests");
    disks.truncate(n);
    disks
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

impl Reaped {
    /// Waits for the child to end, failing the test after [`DEADLINE`].
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the child did not end in time");
            thread::sleep(POLL);
        }
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        // Already reaped by the test in the common case: both calls then fail harmlessly.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process forked from the test process (no exec); killed and reaped when the test ends.
pub(super) struct Forked(pub(super) i32);

impl Forked {
    /// Waits for the child to end, failing the test after [`DEADLINE`]: the signal that killed
    /// it, or `None` if it exited.
    pub(super) fn wait(&mut self) -> Option<i32> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(signal) = self.try_wait() {
                return signal;
            }
            assert!(Instant::now() < deadline, "process {} did not end", self.0);
            thread::sleep(POLL);
        }
    }

    /// `Some(how it ended)` once the child has ended (see [`Forked::wait`]), else `None`.
    fn try_wait(&mut self) -> Option<Option<i32>> {
        let mut status = 0;
        // SAFETY: waitpid on our own child, with a valid pointer for the status.
        let ret = unsafe { libc::waitpid(self.0, &mut status, libc::WNOHANG) };
        assert!(ret >= 0, "waitpid: {}", io::Error::last_os_error());
        if ret == 0 {
            return None;
        }
        self.0 = 0;
        Some(libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)))
    }
}

impl Drop for Forked {
    fn drop(&mut self) {
        if self.0 > 0 {
            // SAFETY: kill and waitpid on our own unreaped child.
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
                libc::waitpid(self.0, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// Spawns `program args` so that it joins the job's cgroup before exec, as the worker does.
/// The job's `cgroup.procs` files, opened for a test process to join the job by writing "0"
/// (what the spawner does on v1; v2 jobs are cloned into their cgroup instead).
fn join_files(job: &JobCgroup) -> Vec<std::fs::File> {
    job.dirs()
        .iter()
        .map(|dir| {
            OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
                .expect("open cgroup.procs")
        })
        .collect()
}

fn spawn_in(job: &JobCgroup, program: &str, args: &[&str]) -> Reaped {
    let files = join_files(job);
    let fds: Vec<RawFd> = files.iter().map(AsRawFd::as_raw_fd).collect();
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
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    drop(files);
    Reaped(child)
}

/// Forks a process into `job` that touches `bytes` of anonymous memory, then waits to be
/// killed; returns once the job is charged for them. Its memory cannot be reclaimed (no swap),
/// which is what memory limit tests need.
fn fork_holding(job: &JobCgroup, bytes: usize) -> Forked {
    let child = fork_touching(job, bytes);
    let deadline = Instant::now() + DEADLINE;
    while memory_charged(job) < bytes as u64 {
        assert!(
            Instant::now() < deadline,
            "the job never held {bytes} bytes"
        );
        thread::sleep(POLL);
    }
    child
}

/// Forks a process into `job` that touches `bytes` of anonymous memory, then waits to be
/// killed; returns at once.
fn fork_touching(job: &JobCgroup, bytes: usize) -> Forked {
    let files = join_files(job);
    let fds: Vec<RawFd> = files.iter().map(AsRawFd::as_raw_fd).collect();
    // SAFETY: an anonymous private mapping; checked below.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(
        mem,
        libc::MAP_FAILED,
        "mmap: {}",
        io::Error::last_os_error()
    );
    // SAFETY: the child only calls write, pause and _exit (async-signal-safe) and stores to the
    // mapping made above; it reads a Vec allocated before the fork.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: see above; the pages are touched only after joining, so the job pays for them.
        unsafe {
            for &fd in &fds {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    libc::_exit(1);
                }
            }
            let base = mem.cast::<u8>();
            for offset in (0..bytes).step_by(4096) {
                base.add(offset).write_volatile(1);
            }
            loop {
                libc::pause();
            }
        }
    }
    // SAFETY: our own mapping; the parent never touched it.
    unsafe { libc::munmap(mem, bytes) };
    assert!(pid > 0, "fork: {}", io::Error::last_os_error());
    Forked(pid)
}

/// The memory the job is charged for now.
fn memory_charged(job: &JobCgroup) -> u64 {
    ["memory.usage_in_bytes", "memory.current"]
        .iter()
        .flat_map(|f| job.dirs().into_iter().map(move |d| d.join(f)))
        .find(|p| p.exists())
        .map(|p| {
            read(&p)
                .expect("read memory usage")
                .trim()
                .parse()
                .expect("a number")
        })
        .expect("no memory usage file")
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

/// True for values the kernel shows for "no limit" in v1 byte files (PAGE_COUNTER_MAX pages).
fn is_unlimited_bytes(value: &str) -> bool {
    value.parse::<u64>().is_ok_and(|v| v >= 1 << 62)
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
        match Cgroups::detect(Path::new(&parent), &ParentLimits::default()) {
            Err(CgroupError::InvalidParent { .. }) => {}
            other => panic!("parent {parent:?} gave {other:?}"),
        }
    }
}

#[test]
fn parent_limits_are_written_to_the_parent() {
    let limits = ParentLimits {
        memory_bytes: Some(256 << 20),
        cpus: Some(1.5),
        pids: Some(100),
    };
    let parent = TestParent::with_limits(&limits);
    let expected: Vec<(&str, &str)> = match parent.version() {
        CgroupVersion::V1 => {
            let swap = if parent
                .parent_dirs()
                .iter()
                .any(|d| d.join("memory.memsw.limit_in_bytes").exists())
            {
                ("memory.memsw.limit_in_bytes", "268435456")
            } else {
                ("memory.swappiness", "0")
            };
            vec![
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "150000"),
                ("memory.limit_in_bytes", "268435456"),
                swap,
                ("pids.max", "100"),
            ]
        }
        CgroupVersion::V2 => {
            let mut expected = vec![
                ("cpu.max", "150000 100000"),
                ("memory.max", "268435456"),
                ("pids.max", "100"),
            ];
            if parent.parent_dirs()[0].join("memory.swap.max").exists() {
                expected.push(("memory.swap.max", "0"));
            }
            expected
        }
    };
    for (file, value) in expected {
        assert_eq!(parent.file(file), value, "{file}");
    }
}

#[test]
fn detecting_again_reapplies_every_parent_limit_including_unset_ones() {
    let first = ParentLimits {
        memory_bytes: Some(256 << 20),
        cpus: Some(1.5),
        pids: Some(100),
    };
    let parent = TestParent::with_limits(&first);
    // A restart with other settings: a higher memory limit, fewer cpus, no pids limit.
    let second = ParentLimits {
        memory_bytes: Some(512 << 20),
        cpus: Some(0.5),
        pids: None,
    };
    parent
        .detect_again(&second)
        .expect("detect with new limits");
    match parent.version() {
        CgroupVersion::V1 => {
            assert_eq!(parent.file("memory.limit_in_bytes"), "536870912");
            if parent
                .parent_dirs()
                .iter()
                .any(|d| d.join("memory.memsw.limit_in_bytes").exists())
            {
                assert_eq!(parent.file("memory.memsw.limit_in_bytes"), "536870912");
            }
            assert_eq!(parent.file("cpu.cfs_quota_us"), "50000");
        }
        CgroupVersion::V2 => {
            assert_eq!(parent.file("memory.max"), "536870912");
            assert_eq!(parent.file("cpu.max"), "50000 100000");
        }
    }
    assert_eq!(parent.file("pids.max"), "max");
    // And with nothing set, nothing of the earlier runs sticks.
    parent
        .detect_again(&ParentLimits::default())
        .expect("detect without limits");
    match parent.version() {
        CgroupVersion::V1 => {
            let memory = parent.file("memory.limit_in_bytes");
            assert!(
                is_unlimited_bytes(&memory),
                "memory.limit_in_bytes {memory}"
            );
            if parent
                .parent_dirs()
                .iter()
                .any(|d| d.join("memory.memsw.limit_in_bytes").exists())
            {
                let memsw = parent.file("memory.memsw.limit_in_bytes");
                assert!(is_unlimited_bytes(&memsw), "memsw {memsw}");
            }
            assert_eq!(parent.file("cpu.cfs_quota_us"), "-1");
        }
        CgroupVersion::V2 => {
            assert_eq!(parent.file("memory.max"), "max");
            assert_eq!(parent.file("cpu.max"), "max 100000");
            if parent.parent_dirs()[0].join("memory.swap.max").exists() {
                assert_eq!(parent.file("memory.swap.max"), "max");
            }
        }
    }
    assert_eq!(parent.file("pids.max"), "max");
}

#[test]
fn out_of_range_parent_limits_are_refused_before_anything_is_written() {
    let limits = ParentLimits {
        cpus: Some(0.0),
        ..ParentLimits::default()
    };
    let result = Cgroups::detect(Path::new("jobworker-test-never-created"), &limits);
    assert!(
        matches!(result, Err(CgroupError::InvalidParentLimit(_))),
        "{result:?}"
    );
}

#[test]
fn jobs_together_are_bounded_by_the_parent_memory_limit() {
    let limit: u64 = 48 << 20;
    let parent = TestParent::with_limits(&ParentLimits {
        memory_bytes: Some(limit),
        ..ParentLimits::default()
    });
    // Each job alone fits under the parent's limit and has none of its own; together they
    // do not fit.
    let a = parent
        .create("a", &Limits::default(), &[])
        .expect("create a");
    let b = parent
        .create("b", &Limits::default(), &[])
        .expect("create b");
    let mut first = fork_holding(&a, 32 << 20);
    // The second cannot finish touching its memory: whichever the OOM killer picks dies.
    let mut second = fork_touching(&b, 32 << 20);
    let deadline = Instant::now() + DEADLINE;
    let killed = loop {
        if let Some(how) = first.try_wait() {
            break how;
        }
        if let Some(how) = second.try_wait() {
            break how;
        }
        assert!(
            Instant::now() < deadline,
            "two 32 MiB jobs ran together under a {limit} byte parent"
        );
        thread::sleep(POLL);
    };
    assert_eq!(killed, Some(libc::SIGKILL), "a holder ended otherwise");
    // Neither job has a limit of its own: only the parent's can have OOM-killed one.
    let kills = a.usage().oom_kills + b.usage().oom_kills;
    // One kill frees enough; a second is possible only under a race with the first's exit.
    assert!(
        (1..=2).contains(&kills),
        "OOM kills counted by the jobs: {kills}"
    );
    let memory_dir = parent
        .parent_dirs()
        .into_iter()
        .find(|d| d.join("memory.stat").exists())
        .expect("a parent directory with memory files");
    let peak = match parent.version() {
        CgroupVersion::V1 => files::read_u64(&memory_dir.join("memory.max_usage_in_bytes")),
        CgroupVersion::V2 => {
            // v2 also counts the kill in the parent (events are hierarchical; v1's are not).
            let events = memory_dir.join("memory.events");
            let parent_kills = files::read_keyed(&events, "oom_kill");
            assert!(
                parent_kills >= Some(1),
                "parent memory.events: {parent_kills:?}"
            );
            // memory.peak arrived in Linux 5.19.
            files::read_u64(&memory_dir.join("memory.peak"))
        }
    };
    if let Some(peak) = peak {
        assert!(peak <= limit, "the jobs together used {peak} bytes");
    }
    eprintln!("measured: parent peak {peak:?} of {limit} bytes, {kills} OOM kill");
}

#[test]
fn create_writes_every_limit() {
    let parent = TestParent::new();
    let [disk] = test_disks(1).try_into().expect("one disk");
    let job = parent
        .create("job", &all_limits(), &[disk])
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
        .create("job", &Limits::default(), &[])
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
fn io_limits_apply_to_each_distinct_device_once() {
    let parent = TestParent::new();
    let disks = test_disks(2);
    // The same disk twice (two bind mounts of one filesystem) must give one line.
    let mut given = disks.clone();
    given.push(disks[0]);
    let limits = Limits {
        io_read_bps: Some(1 << 20),
        ..Limits::default()
    };
    let job = parent.create("job", &limits, &given).expect("create");
    let (file, per_disk): (&str, fn(&DevNum) -> String) = match parent.version() {
        CgroupVersion::V1 => ("blkio.throttle.read_bps_device", |d| format!("{d} 1048576")),
        // The kernel lists every key of a device's line, the unset ones as "max".
        CgroupVersion::V2 => ("io.max", |d| {
            format!("{d} rbps=1048576 wbps=max riops=max wiops=max")
        }),
    };
    let mut lines: Vec<String> = job_file(&job, file).lines().map(str::to_owned).collect();
    lines.sort();
    let mut expected: Vec<String> = disks.iter().map(per_disk).collect();
    expected.sort();
    assert_eq!(lines, expected, "{file} with disks {disks:?}");
    if disks.len() < 2 {
        eprintln!("only one disk here ({disks:?}): checked de-duplication only");
    }
    job.remove().expect("remove");
}

#[test]
fn a_process_writing_0_joins_every_job_directory() {
    let parent = TestParent::new();
    let job = parent
        .create("job", &Limits::default(), &[])
        .expect("create");
    // v1 spawns by these writes; v2 by CLONE_INTO_CGROUP (tested in v2.rs).
    match parent.cgroups.version() {
        CgroupVersion::V1 => assert_eq!(job.procs_fds().len(), job.dirs().len()),
        CgroupVersion::V2 => {
            assert!(job.procs_fds().is_empty());
            assert!(job.clone_into_fd().is_some());
        }
    }
    let mut child = spawn_in(&job, "sleep", &["1000"]);
    for dir in job.dirs() {
        let members = read_pids(&dir).expect("read cgroup.procs");
        assert_eq!(members, [pid(&child)], "{}", dir.display());
    }
    job.kill().expect("kill");
    assert_eq!(child.wait().signal(), Some(libc::SIGKILL));
    job.remove().expect("remove");
}

#[test]
fn contains_and_pids_tell_members_from_other_processes() {
    let parent = TestParent::new();
    let job = parent
        .create("job", &Limits::default(), &[])
        .expect("create");
    let mut child = spawn_in(&job, "sleep", &["1000"]);
    let me = i32::try_from(std::process::id()).expect("pid fits i32");
    assert!(job.contains(pid(&child)).expect("contains"), "child");
    assert!(!job.contains(me).expect("contains"), "the test process");
    assert_eq!(job.pids().expect("pids"), [pid(&child)]);
    job.kill().expect("kill");
    assert_eq!(child.wait().signal(), Some(libc::SIGKILL));
    assert!(
        !job.contains(pid(&child)).expect("contains"),
        "a reaped child"
    );
    job.remove().expect("remove");
}

#[test]
fn kill_then_remove_leaves_no_directory() {
    let parent = TestParent::new();
    let job = parent
        .create("job", &Limits::default(), &[])
        .expect("create");
    let mut child = spawn_in(&job, "sh", &["-c", "sleep 1000 & sleep 1000 & wait"]);
    let dirs = job.dirs();
    wait_for_members(&dirs[0], 3);
    job.kill().expect("kill");
    assert_eq!(child.wait().signal(), Some(libc::SIGKILL));
    job.remove().expect("remove");
    for dir in dirs {
        assert!(!dir.exists(), "{} is left", dir.display());
    }
}

#[test]
fn dropping_a_job_cgroup_leaves_it_and_its_processes_alone() {
    let parent = TestParent::new();
    let job = parent
        .create("job", &Limits::default(), &[])
        .expect("create");
    let mut child = spawn_in(&job, "sleep", &["1000"]);
    let dirs = job.dirs();
    drop(job);
    assert!(
        child.0.try_wait().expect("try_wait").is_none(),
        "dropping the handle ended the job's process"
    );
    for dir in &dirs {
        assert!(
            dir.exists(),
            "dropping the handle removed {}",
            dir.display()
        );
    }
    let job = parent
        .open("job")
        .expect("open")
        .expect("the cgroup is still there");
    assert!(job.contains(pid(&child)).expect("contains"));
    job.kill().expect("kill");
    assert_eq!(child.wait().signal(), Some(libc::SIGKILL));
    job.remove().expect("remove");
}

#[test]
fn a_restarted_detect_finds_leftover_job_cgroups_to_kill_and_remove() {
    let parent = TestParent::new();
    let mut child = Reaped(
        Command::new("sleep")
            .arg("1000")
            .spawn()
            .expect("spawn sleep"),
    );
    // What an earlier run leaves: a job directory in each hierarchy, with a live process.
    let leftovers: Vec<PathBuf> = parent
        .parent_dirs()
        .iter()
        .map(|d| d.join("earlier-job"))
        .collect();
    for dir in &leftovers {
        fs::create_dir(dir).expect("create leftover");
        write(&dir.join("cgroup.procs"), &pid(&child).to_string()).expect("attach");
    }
    let restarted = parent
        .detect_again(&ParentLimits::default())
        .expect("detect again");
    assert_eq!(
        restarted.child_names().expect("child_names"),
        ["earlier-job"]
    );
    let job = restarted.open("earlier-job").expect("open").expect("found");
    assert_eq!(job.name(), "earlier-job");
    assert_eq!(job.dirs(), leftovers);
    assert!(job.contains(pid(&child)).expect("contains"));
    assert_eq!(
        job.procs_fds(),
        Vec::<RawFd>::new(),
        "an adopted job is placed already"
    );
    assert_eq!(job.clone_into_fd(), None);
    job.kill().expect("kill");
    assert_eq!(child.wait().signal(), Some(libc::SIGKILL));
    job.remove().expect("remove");
    for dir in leftovers {
        assert!(!dir.exists(), "{} is left", dir.display());
    }
}

#[test]
fn child_names_is_the_union_over_the_hierarchies_and_open_takes_what_exists() {
    let parent = TestParent::new();
    let a = parent.create("a", &Limits::default(), &[]).expect("a");
    let b = parent.create("b", &Limits::default(), &[]).expect("b");
    // A job cut short while being created by an earlier run: only in the last hierarchy.
    let last = parent.parent_dirs().pop().expect("a parent directory");
    fs::create_dir(last.join("half")).expect("create half");
    assert_eq!(
        parent.child_names().expect("child_names"),
        ["a", "b", "half"]
    );
    let half = parent.open("half").expect("open").expect("half exists");
    assert_eq!(half.dirs(), [last.join("half")]);
    assert_eq!(
        parent.open("b").expect("open").expect("b exists").dirs(),
        b.dirs()
    );
    assert!(parent.open("unknown").expect("open").is_none());
    for name in ["", ".", "..", "a/b", "../escape"] {
        let result = parent.open(name);
        assert!(
            matches!(result, Err(CgroupError::InvalidName(_))),
            "{name:?}: {result:?}"
        );
    }
    for job in [a, b, half] {
        job.remove().expect("remove");
    }
    assert!(parent.child_names().expect("child_names").is_empty());
}

#[test]
fn remove_parent_keeps_a_parent_that_still_has_jobs() {
    let parent = TestParent::new();
    let job = parent
        .create("job", &Limits::default(), &[])
        .expect("create");
    assert!(!parent.remove_parent().expect("remove_parent"), "removed");
    for dir in parent.parent_dirs() {
        assert!(dir.exists(), "{} removed with a job in it", dir.display());
    }
    job.remove().expect("remove");
    assert!(parent.remove_parent().expect("remove_parent"), "kept");
    for dir in parent.parent_dirs() {
        assert!(!dir.exists(), "{} is left", dir.display());
    }
}

#[test]
fn a_limit_the_kernel_rejects_leaves_no_directory() {
    let parent = TestParent::new();
    let no_such_disk = DevNum { major: 0, minor: 0 };
    let err = parent
        .create("job", &all_limits(), &[no_such_disk])
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
fn a_create_failing_in_a_later_hierarchy_removes_the_earlier_directories() {
    let parent = TestParent::new();
    // Someone else's cgroup of that name in the last hierarchy only (the only one on v2).
    let dirs = parent.parent_dirs();
    let (last, earlier) = dirs.split_last().expect("a parent directory");
    fs::create_dir(last.join("job")).expect("create the obstacle");
    let result = parent.create("job", &Limits::default(), &[]);
    assert!(
        matches!(result, Err(CgroupError::Io { op: "create", .. })),
        "{result:?}"
    );
    for dir in earlier {
        assert!(
            !dir.join("job").exists(),
            "{} has a leftover job",
            dir.display()
        );
    }
    assert!(last.join("job").exists(), "the obstacle was removed");
    fs::remove_dir(last.join("job")).expect("remove the obstacle");
}

#[test]
fn io_limits_without_a_device_are_refused_before_anything_is_created() {
    let parent = TestParent::new();
    let err = parent
        .create("job", &all_limits(), &[])
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
        let result = parent.create(name, &Limits::default(), &[]);
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
        .create("job", &Limits::default(), &[])
        .expect("create");
    let second = parent.create("job", &Limits::default(), &[]);
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
        .create("job", &Limits::default(), &[])
        .expect("create");
    let script = "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done";
    let mut child = spawn_in(&job, "sh", &["-c", script]);
    assert!(child.wait().success());
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
    let job = parent.create("job", &limits, &[]).expect("create");
    // tail keeps the last lines, and /dev/zero has no line end: it grows until killed.
    let mut child = spawn_in(&job, "tail", &["/dev/zero"]);
    assert_eq!(child.wait().signal(), Some(libc::SIGKILL));
    let usage = job.usage();
    assert_eq!(usage.oom_kills, 1, "{usage:?}");
    assert!(
        usage.peak_memory_bytes.is_none_or(|b| b <= 16 << 20),
        "{usage:?}"
    );
    job.remove().expect("remove");
}

#[test]
fn lowering_the_parent_memory_below_what_jobs_hold() {
    let parent = TestParent::new();
    let job = parent
        .create("job", &Limits::default(), &[])
        .expect("create");
    let mut holder = fork_holding(&job, 32 << 20);
    let lower = ParentLimits {
        memory_bytes: Some(16 << 20),
        ..ParentLimits::default()
    };
    let result = parent.detect_again(&lower);
    match parent.version() {
        // v1 cannot reclaim anonymous memory without swap: the write fails, nothing changes.
        CgroupVersion::V1 => {
            match &result {
                Err(e @ CgroupError::ParentMemoryBelowUsage { limit, .. }) => {
                    assert_eq!(*limit, 16 << 20);
                    assert!(e.to_string().contains("stop jobs"), "{e}");
                }
                other => panic!("expected ParentMemoryBelowUsage, got {other:?}"),
            }
            let memory = parent.file("memory.limit_in_bytes");
            assert!(is_unlimited_bytes(&memory), "the limit changed: {memory}");
            assert_eq!(holder.try_wait(), None, "the holder died");
        }
        // v2 accepts the limit and OOM-kills in the subtree until the usage fits.
        CgroupVersion::V2 => {
            result.expect("detect with a lower limit");
            assert_eq!(parent.file("memory.max"), "16777216");
            assert_eq!(holder.wait(), Some(libc::SIGKILL));
            assert_eq!(job.usage().oom_kills, 1);
        }
    }
}

#[test]
fn cpu_limits_of_jobs_and_their_parent() {
    let parent = TestParent::with_limits(&ParentLimits {
        cpus: Some(1.0),
        ..ParentLimits::default()
    });
    let more = Limits {
        cpus: Some(2.0),
        ..Limits::default()
    };
    let result = parent.create("greedy", &more, &[]);
    match parent.version() {
        // v1 compares quotas down the tree: more than the parent is refused, and leaves
        // nothing behind.
        CgroupVersion::V1 => {
            assert!(
                matches!(result, Err(CgroupError::JobCpuAboveParent { .. })),
                "{result:?}"
            );
            assert!(parent.child_names().expect("child_names").is_empty());
        }
        // v2 does not: the smaller limit simply wins.
        CgroupVersion::V2 => {
            let job = result.expect("create above the parent's cpus");
            assert_eq!(job_file(&job, "cpu.max"), "200000 100000");
            job.remove().expect("remove");
        }
    }
    let half = Limits {
        cpus: Some(0.5),
        ..Limits::default()
    };
    let job = parent.create("job", &half, &[]).expect("create");
    let below_the_job = ParentLimits {
        cpus: Some(0.25),
        ..ParentLimits::default()
    };
    let result = parent.detect_again(&below_the_job);
    match parent.version() {
        CgroupVersion::V1 => {
            assert!(
                matches!(result, Err(CgroupError::ParentCpuBelowJob { .. })),
                "{result:?}"
            );
            assert_eq!(parent.file("cpu.cfs_quota_us"), "100000");
        }
        CgroupVersion::V2 => {
            result.expect("detect below the job's cpus");
            assert_eq!(parent.file("cpu.max"), "25000 100000");
        }
    }
    job.remove().expect("remove");
}
