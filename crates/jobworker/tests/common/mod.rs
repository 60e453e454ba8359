//! What every library test needs: a real worker as root, its own cgroup parent, state directory
//! and uid range, the test programs visible in the jobs' view, and helpers to run a job to the
//! end and collect its output.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use jobworker::{
    Bind, CommandSpec, Config, Error, IdRange, JobId, JobState, JobStatus, Limits, ListQuery,
    StateLock, Stream, StreamFilter, Worker,
};

/// The test workload program (see tests/bin/testprog.rs).
pub const TESTPROG: &str = env!("CARGO_BIN_EXE_jobworker-testprog");
/// The small init program the library's tests use (their harness owns `main`).
pub const INIT: &str = env!("CARGO_BIN_EXE_jobworker-init");

/// A worker with its own state directory, cgroup parent and uid range, so tests run in
/// parallel safely.
pub struct TestWorker {
    pub worker: Worker,
    pub state_dir: tempfile::TempDir,
    /// What it was started with (a restart reuses it).
    pub config: Config,
    _cleanup: jobworker_testkit::CleanupOnPanic,
}

impl std::ops::Deref for TestWorker {
    type Target = Worker;
    fn deref(&self) -> &Worker {
        &self.worker
    }
}

/// Where the test programs live: made visible, read-only, at the same path in every job.
pub fn test_programs_dir() -> PathBuf {
    Path::new(TESTPROG)
        .parent()
        .expect("the test program has a directory")
        .to_owned()
}

pub fn config(state_dir: &Path, parent: &str) -> Config {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the library tests need root: they create namespaces and cgroups (run them with sudo)"
    );
    let mut config = Config {
        state_dir: state_dir.to_owned(),
        init_program: Some(PathBuf::from(INIT)),
        cgroup_parent: PathBuf::from(parent),
        stop_grace: Duration::from_secs(5),
        // Every running job reserves its output limit (1 GiB by default) of the budget: the
        // default budget, half the filesystem, would cap the test guest's small scratch disk at
        // one running job. Tests of the budget set their own.
        max_total_output: Some(1 << 40),
        ..Config::default()
    };
    let programs = test_programs_dir();
    config.sandbox.binds.push(Bind {
        source: programs.clone(),
        target: programs,
        writable: false,
    });
    config
}

pub fn unique_parent() -> String {
    format!("jobworker-test-{}", uuid::Uuid::new_v4())
}

/// Starts a worker on `config`, in a uid range no other test worker or daemon (in any test
/// process running now) holds: 64 ids, or as many as `config.job_ids` has if fewer, at a place
/// picked at random. Returns the worker and the config it runs with.
pub async fn start_worker(mut config: Config) -> (Worker, Config) {
    let size = config.job_ids.len().min(64) as u32;
    for _ in 0..200 {
        let block = u32::from(rand_u16());
        let first = 1_000_000_000 + block * 64;
        config.job_ids = IdRange::new(first, first + size - 1).expect("range");
        let lock = StateLock::acquire(&config.state_dir).expect("lock the state dir");
        match Worker::new(config.clone(), lock).await {
            Err(Error::IdRangeBusy { .. }) => continue,
            other => return (other.expect("worker starts"), config),
        }
    }
    panic!("no free uid range for a test worker");
}

/// A worker on exactly `config` (same state directory, cgroup parent and uid range), once the
/// previous worker on the state directory has let go of it.
pub async fn reopen(config: &Config) -> Worker {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match StateLock::acquire(&config.state_dir) {
            Ok(lock) => match Worker::new(config.clone(), lock).await {
                Err(Error::IdRangeBusy { .. }) if std::time::Instant::now() < deadline => {}
                other => return other.expect("worker restarts"),
            },
            Err(Error::StateDirBusy { .. }) if std::time::Instant::now() < deadline => {}
            Err(e) => panic!("cannot lock the state directory again: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rand_u16() -> u16 {
    let id = uuid::Uuid::new_v4();
    u16::from_le_bytes([id.as_bytes()[0], id.as_bytes()[1]])
}

pub async fn worker() -> TestWorker {
    worker_with(|_| {}).await
}

pub async fn worker_with(tweak: impl FnOnce(&mut Config)) -> TestWorker {
    let state_dir = tempfile::tempdir().expect("temp state dir");
    let mut config = config(state_dir.path(), &unique_parent());
    tweak(&mut config);
    let (worker, config) = start_worker(config).await;
    let _cleanup = jobworker_testkit::CleanupOnPanic::new(worker.cgroup_parents());
    TestWorker {
        worker,
        state_dir,
        config,
        _cleanup,
    }
}

impl TestWorker {
    /// Replaces the worker by a new one on the same state directory, as a daemon restart does:
    /// after a graceful shutdown (`graceful`), or after the worker just went away.
    pub async fn restart(self, graceful: bool) -> TestWorker {
        let TestWorker {
            worker,
            state_dir,
            config,
            _cleanup,
        } = self;
        if graceful {
            worker.shutdown().await;
        }
        drop(worker);
        let worker = reopen(&config).await;
        TestWorker {
            worker,
            state_dir,
            config,
            _cleanup,
        }
    }

    /// Stops everything and checks that the worker left nothing behind: no job cgroup, and
    /// (after removing them) no parent directories.
    pub async fn finish(self) {
        self.worker.shutdown().await;
        for dir in self.worker.cgroup_parents() {
            assert!(
                !dir.exists(),
                "cgroup parent {} left behind after shutdown",
                dir.display()
            );
        }
    }

    /// Job cgroup directories currently under this worker's parents.
    pub fn job_cgroups(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for dir in self.worker.cgroup_parents() {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                found.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
        }
        found
    }

    /// Job directories currently in the state directory.
    pub fn job_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.state_dir.path().join("jobs"))
            .expect("read state dir")
            .flatten()
            .map(|e| e.path())
            .collect()
    }

    /// Every job, or one owner's.
    pub fn all(&self, owner: Option<&str>) -> Vec<JobStatus> {
        self.worker
            .list(&ListQuery {
                owner: owner.map(str::to_owned),
                limit: usize::MAX,
                ..ListQuery::default()
            })
            .jobs
    }

    pub async fn start(&self, program: &str, args: &[&str]) -> JobId {
        self.start_with(
            CommandSpec::new(program, args.iter().copied()),
            Limits::default(),
        )
        .await
    }

    pub async fn start_with(&self, spec: CommandSpec, limits: Limits) -> JobId {
        self.start_as("tester", spec, limits).await
    }

    pub async fn start_as(&self, owner: &str, spec: CommandSpec, limits: Limits) -> JobId {
        let program = spec.program.clone();
        self.worker
            .start(owner, spec, limits)
            .await
            .unwrap_or_else(|e| panic!("start {program}: {e}"))
    }

    /// Everything the job writes to the selected streams, until it ends.
    pub async fn output(&self, id: JobId, filter: StreamFilter) -> Vec<u8> {
        let mut reader = self.worker.output(id, filter, 0).expect("output reader");
        let mut all = Vec::new();
        while let Some(chunk) = reader.next().await.expect("read output") {
            all.extend_from_slice(&chunk.data);
        }
        all
    }

    /// Output per stream, read through one reader of both streams.
    pub async fn output_split(&self, id: JobId) -> (Vec<u8>, Vec<u8>) {
        let mut reader = self
            .worker
            .output(id, StreamFilter::Both, 0)
            .expect("output reader");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(chunk) = reader.next().await.expect("read output") {
            match chunk.stream {
                Stream::Stdout => out.extend_from_slice(&chunk.data),
                Stream::Stderr => err.extend_from_slice(&chunk.data),
            }
        }
        (out, err)
    }

    /// Runs a job to its end; returns its stdout and stderr as text and its final status.
    pub async fn run(&self, program: &str, args: &[&str]) -> (String, JobStatus) {
        let id = self.start(program, args).await;
        self.collect(id).await
    }

    pub async fn run_with(&self, spec: CommandSpec, limits: Limits) -> (String, JobStatus) {
        let id = self.start_with(spec, limits).await;
        self.collect(id).await
    }

    /// Stdout (and, after it, stderr) of a job that runs to its end, and its final status.
    pub async fn collect(&self, id: JobId) -> (String, JobStatus) {
        let (out, err) = self.output_split(id).await;
        let status = self.worker.wait(id).await.expect("wait");
        let mut text = String::from_utf8_lossy(&out).into_owned();
        if !err.is_empty() {
            text.push_str(&String::from_utf8_lossy(&err));
        }
        (text, status)
    }

    /// Reads stdout until a line equal to `line` arrives (the job's own "I am ready" signal).
    pub async fn wait_for_line(&self, id: JobId, line: &str) {
        let mut reader = self
            .worker
            .output(id, StreamFilter::Stdout, 0)
            .expect("output reader");
        let mut seen = Vec::new();
        while let Some(chunk) = reader.next().await.expect("read output") {
            seen.extend_from_slice(&chunk.data);
            if String::from_utf8_lossy(&seen).lines().any(|l| l == line) {
                return;
            }
        }
        panic!(
            "job ended without printing {line:?}; it printed {:?}",
            String::from_utf8_lossy(&seen)
        );
    }
}

pub fn sh(script: &str) -> CommandSpec {
    CommandSpec::new("/bin/sh", ["-c", script])
}

pub fn exited(status: &JobStatus) -> i32 {
    match status.state {
        JobState::Exited(code) => code,
        other => panic!("expected the job to exit, it ended as {other:?} ({status:?})"),
    }
}

/// Host processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(marker)
        {
            pids.push(pid);
        }
    }
    pids
}

/// A directory on a block device, for IO tests: the VM's scratch disk, or a fresh directory
/// under the system temp dir. Jobs see it (writable) at `/scratch` when a test binds it there.
pub fn writable_scratch_dir() -> tempfile::TempDir {
    let base = std::env::var_os("JOBWORKER_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).expect("scratch dir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod scratch dir");
    dir
}

/// Polls `check` until it holds or `deadline` passes.
pub async fn eventually(deadline: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + deadline;
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
