//! The state directory: everything about jobs that must survive the daemon.
//!
//! ```text
//! <state>/
//!   jobworkerd.lock   flock(2)ed by the one daemon using the directory; holds its pid
//!   root/             always empty on the host: each job's view is assembled on it, inside the
//!                     job's own mount namespace
//!   jobs/<id>/        one directory per job; only names that are job ids are the worker's
//!     job.json        the job's record, replaced atomically at start, at a stop request and
//!                     at the end
//!     output.log      the output, framed (written by the job's init)
//!     exit            the init's exit record (see `protocol::ExitRecord`)
//! ```
//!
//! Records are written to a temporary file, fsynced, renamed over the old one, and the directory
//! is fsynced: a crash leaves the old record or the new one, never a torn one. Start returns a
//! job id only once its record is durable.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::job::{JobId, JobState, OutputSummary, Usage};
use crate::protocol::{EXIT_FILE, ExitRecord};
use crate::{CommandSpec, Error, Limits};

/// The record's format version; a record of another version is reported as damaged.
const VERSION: u32 = 1;
const RECORD: &str = "job.json";
const RECORD_TMP: &str = "job.json.tmp";
/// Threads that read the records at start-up.
const SCAN_THREADS: usize = 8;

/// Where the job's init process is, so that a later daemon can find it again and be sure it is
/// the same process: a pid alone could have been reused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InitRef {
    /// Its pid on the host.
    pub(crate) pid: i32,
    /// Its start time (field 22 of /proc/PID/stat, clock ticks since boot).
    pub(crate) start_time: u64,
    /// The boot it belongs to (/proc/sys/kernel/random/boot_id).
    pub(crate) boot_id: String,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct EndRecord {
    pub(crate) state: JobState,
    pub(crate) ended_at: SystemTime,
    pub(crate) usage: Usage,
    pub(crate) output: OutputSummary,
    /// What was wrong when the job ended, if anything.
    #[serde(default)]
    pub(crate) note: Option<String>,
}

/// A job as the state directory keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct JobRecord {
    pub(crate) version: u32,
    pub(crate) id: JobId,
    pub(crate) owner: String,
    pub(crate) spec: CommandSpec,
    /// The limits in force (request merged with the worker's defaults).
    pub(crate) limits: Limits,
    pub(crate) uid: u32,
    pub(crate) init: InitRef,
    pub(crate) started_at: SystemTime,
    pub(crate) stop_requested: bool,
    pub(crate) end: Option<EndRecord>,
}

impl JobRecord {
    pub(crate) fn new(
        id: JobId,
        owner: String,
        spec: CommandSpec,
        limits: Limits,
        uid: u32,
        init: InitRef,
        started_at: SystemTime,
    ) -> JobRecord {
        JobRecord {
            version: VERSION,
            id,
            owner,
            spec,
            limits,
            uid,
            init,
            started_at,
            stop_requested: false,
            end: None,
        }
    }
}

/// An entry of `jobs/` found at start-up.
pub(crate) enum Found {
    /// A job directory with a readable record.
    Job(Box<JobRecord>),
    /// A job directory without a record: a start that never returned an id to anyone.
    Unfinished(JobId),
    /// A job directory whose record cannot be read.
    Damaged(JobId, String),
}

/// The state directory, locked for this worker.
#[derive(Debug)]
pub(crate) struct StateDir {
    path: PathBuf,
    jobs: PathBuf,
    /// Whether records are fsynced (off only for measuring what durability costs).
    sync: bool,
    /// Held for the worker's lifetime: released (by the kernel, even on a crash) when it ends.
    _lock: Flock<File>,
}

impl StateDir {
    /// Creates (0700) and locks the state directory. Fails without changing anything if
    /// another process holds it.
    pub(crate) fn open(path: &Path, sync: bool) -> Result<StateDir, Error> {
        let ctx = |what: &str| format!("cannot {what} state directory {}", path.display());
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| Error::io(ctx("create"), e))?;
        let lock_path = path.join("jobworkerd.lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| Error::io(ctx("lock"), e))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(Error::StateDirBusy {
                    path: path.to_owned(),
                    holder: holder.trim().parse().ok(),
                });
            }
            Err((_, errno)) => return Err(Error::io(ctx("lock"), errno.into())),
        };
        // Locked: from here on this worker owns the directory.
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(ctx("restrict"), e))?;
        lock.set_len(0)
            .and_then(|()| lock.write_all(format!("{}\n", std::process::id()).as_bytes()))
            .map_err(|e| Error::io(ctx("lock"), e))?;
        Ok(StateDir {
            path: path.to_owned(),
            jobs: path.join("jobs"),
            sync,
            _lock: lock,
        })
    }

    /// Creates `jobs/` and `root/` if missing. Separate from [`StateDir::open`], which takes
    /// the lock first thing: the daemon binds its listeners in between, so that a failed bind
    /// leaves nothing but the lock file.
    pub(crate) fn create_layout(&self) -> Result<(), Error> {
        for dir in [&self.jobs, &self.path.join("root")] {
            match fs::DirBuilder::new().mode(0o700).create(dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(Error::io(
                        format!("cannot prepare state directory {}", self.path.display()),
                        e,
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether records are fsynced.
    pub(crate) fn set_sync(&mut self, sync: bool) {
        self.sync = sync;
    }

    /// The directory each job's view is assembled on.
    pub(crate) fn root_mount(&self) -> PathBuf {
        self.path.join("root")
    }

    /// The state directory itself.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A job's directory.
    pub(crate) fn job_dir(&self, id: JobId) -> PathBuf {
        self.jobs.join(id.to_string())
    }

    /// Creates a new job's directory (0700).
    pub(crate) fn create_job_dir(&self, id: JobId) -> io::Result<PathBuf> {
        let dir = self.job_dir(id);
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(dir)
    }

    /// Writes `record` atomically and durably. `new_dir` also makes the job directory's own
    /// entry durable (the first record of a job).
    pub(crate) fn write_record(&self, record: &JobRecord, new_dir: bool) -> io::Result<()> {
        let dir = self.job_dir(record.id);
        let bytes = serde_json::to_vec(record).map_err(io::Error::other)?;
        let tmp = dir.join(RECORD_TMP);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&bytes)?;
        if self.sync {
            file.sync_data()?;
        }
        drop(file);
        fs::rename(&tmp, dir.join(RECORD))?;
        if self.sync {
            File::open(&dir)?.sync_all()?;
            if new_dir {
                File::open(&self.jobs)?.sync_all()?;
            }
        }
        Ok(())
    }

    /// Reads a job's record.
    pub(crate) fn read_record(&self, id: JobId) -> Result<JobRecord, String> {
        let bytes = fs::read(self.job_dir(id).join(RECORD)).map_err(|e| e.to_string())?;
        let record: JobRecord = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if record.version != VERSION || record.id != id {
            return Err(format!(
                "record version {} for job {} (expected version {VERSION} for {id})",
                record.version, record.id
            ));
        }
        Ok(record)
    }

    /// The init's exit record of a job: `None` if the init left none.
    pub(crate) fn read_exit(&self, id: JobId) -> Option<Result<ExitRecord, String>> {
        match fs::read(self.job_dir(id).join(EXIT_FILE)) {
            Ok(bytes) => Some(ExitRecord::decode(&bytes).map_err(|e| e.to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => Some(Err(e.to_string())),
        }
    }

    /// Deletes a job's directory and everything in it.
    pub(crate) fn remove_job(&self, id: JobId) -> io::Result<()> {
        match fs::remove_dir_all(self.job_dir(id)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Every job directory of `jobs/`. Entries that are not job directories were not made by
    /// the worker: they are logged and left alone.
    pub(crate) fn scan(&self) -> Result<Vec<Found>, Error> {
        let entries = fs::read_dir(&self.jobs)
            .map_err(|e| Error::io(format!("cannot list {}", self.jobs.display()), e))?;
        let mut ids = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| Error::io(format!("cannot list {}", self.jobs.display()), e))?;
            let name = entry.file_name();
            let id = name.to_str().and_then(|n| n.parse::<JobId>().ok());
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            match id.filter(|_| is_dir) {
                Some(id) => ids.push(id),
                None => {
                    tracing::warn!(path = %entry.path().display(), "not a job directory; left alone")
                }
            }
        }
        // After a reboot no record is in the page cache: each read waits for the disk, which
        // serves several at once. Reading on a few threads made a cold start on 10,000 jobs
        // several times faster (docs/benchmarks.md, figure 7).
        let chunk = ids.len().div_ceil(SCAN_THREADS).max(1);
        let found = std::thread::scope(|scope| {
            let readers: Vec<_> = ids
                .chunks(chunk)
                .map(|ids| {
                    let read = move || ids.iter().map(|&id| self.examine(id)).collect();
                    // A thread that cannot be made: this chunk is read on the calling thread.
                    let thread = std::thread::Builder::new()
                        .name("scan".to_owned())
                        .spawn_scoped(scope, read);
                    (ids, thread)
                })
                .collect();
            readers
                .into_iter()
                .flat_map(|(ids, thread)| match thread {
                    Ok(thread) => thread.join().unwrap_or_else(|_| {
                        // Invariant: examine does not panic; if it did, the jobs are kept.
                        let why = "reading the record failed unexpectedly".to_owned();
                        ids.iter()
                            .map(|&id| Found::Damaged(id, why.clone()))
                            .collect()
                    }),
                    Err(_) => ids.iter().map(|&id| self.examine(id)).collect::<Vec<_>>(),
                })
                .collect()
        });
        Ok(found)
    }

    /// What a job directory holds.
    fn examine(&self, id: JobId) -> Found {
        if !self.job_dir(id).join(RECORD).exists() {
            return Found::Unfinished(id);
        }
        match self.read_record(id) {
            Ok(record) => Found::Job(Box::new(record)),
            Err(why) => Found::Damaged(id, why),
        }
    }
}

/// Reads the boot id, which tells whether a recorded pid belongs to this boot.
pub(crate) fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The start time of process `pid` (field 22 of /proc/PID/stat), if it exists.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces or parentheses: the
    // fields that follow start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_worker_cannot_take_a_locked_state_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = StateDir::open(dir.path(), false).expect("first");
        match StateDir::open(dir.path(), false) {
            Err(Error::StateDirBusy { holder, .. }) => {
                assert_eq!(holder, Some(std::process::id()))
            }
            other => panic!("expected StateDirBusy, got {other:?}"),
        }
    }

    #[test]
    fn the_state_directory_is_made_private_whatever_it_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let _state = StateDir::open(dir.path(), false).expect("open");
        let mode = fs::metadata(dir.path()).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn start_time_of_this_process_is_stable() {
        let me = std::process::id() as i32;
        let first = start_time(me).expect("own start time");
        assert_eq!(start_time(me), Some(first));
        assert_eq!(start_time(-5), None);
    }

    #[test]
    fn unrelated_entries_are_left_alone_and_records_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::open(dir.path(), true).expect("open");
        state.create_layout().expect("layout");
        fs::write(dir.path().join("jobs/important.log"), "keep me").expect("write");
        fs::create_dir(dir.path().join("jobs/not-a-job")).expect("mkdir");
        let id = JobId::new();
        state.create_job_dir(id).expect("mkdir");
        let record = JobRecord::new(
            id,
            "alice".into(),
            CommandSpec::new("echo", ["hi"]),
            Limits::default(),
            1_879_048_192,
            InitRef {
                pid: 42,
                start_time: 7,
                boot_id: boot_id(),
            },
            SystemTime::UNIX_EPOCH,
        );
        state.write_record(&record, true).expect("write");
        let unfinished = JobId::new();
        state.create_job_dir(unfinished).expect("mkdir");
        let found = state.scan().expect("scan");
        assert_eq!(found.len(), 2);
        for f in found {
            match f {
                Found::Job(r) => assert_eq!(*r, record),
                Found::Unfinished(u) => assert_eq!(u, unfinished),
                Found::Damaged(_, why) => panic!("damaged: {why}"),
            }
        }
        assert!(dir.path().join("jobs/important.log").exists());
        assert!(dir.path().join("jobs/not-a-job").exists());
    }

    #[test]
    fn a_damaged_record_is_reported_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::open(dir.path(), false).expect("open");
        state.create_layout().expect("layout");
        let id = JobId::new();
        state.create_job_dir(id).expect("mkdir");
        fs::write(state.job_dir(id).join(RECORD), b"{\"version\": 1, \"id\"").expect("write");
        let found = state.scan().expect("scan");
        assert!(matches!(found.as_slice(), [Found::Damaged(d, _)] if *d == id));
    }
}
