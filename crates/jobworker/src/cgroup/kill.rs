//! Emptying and removing cgroups: SIGKILL to every listed process until none is listed
//! (pidfd-pinned, so a reused pid is never signalled), removal of a directory once its last
//! process has gone, and the [`Backoff`] both wait with. v2's `cgroup.kill` (in `v2.rs`) falls
//! back on the same loop on kernels before 5.14.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::error::{CgroupError, io_error};
use super::files::read_pids;

/// How long to wait for a cgroup's last processes to exit before giving up.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// First pause between re-checks while waiting for a cgroup to empty; it doubles from there.
const FIRST_DELAY: Duration = Duration::from_millis(1);
/// Longest pause between those re-checks.
const MAX_DELAY: Duration = Duration::from_millis(50);

/// SIGKILLs every process listed in `dir` until none is listed, within `backoff`'s deadline.
pub(super) fn kill_until_empty(dir: &Path, backoff: &mut Backoff) -> Result<(), CgroupError> {
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
pub(super) fn remove_dirs(dirs: &[PathBuf]) -> Result<(), CgroupError> {
    let mut first_error = None;
    let mut backoff = Backoff::new();
    for dir in dirs {
        if let Err(e) = remove_when_empty(dir, &mut backoff) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Removes a cgroup directory, retrying while the kernel says EBUSY (it still has processes,
/// e.g. one between SIGKILL and exit). Zombies do not count: the kernel removes a cgroup whose
/// only members are unreaped zombies.
pub(super) fn remove_when_empty(path: &Path, backoff: &mut Backoff) -> Result<(), CgroupError> {
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
pub(super) struct Backoff {
    /// The next pause.
    delay: Duration,
    /// When to give up.
    deadline: Instant,
}

impl Backoff {
    /// A backoff whose deadline is [`SETTLE_TIMEOUT`] from now.
    pub(super) fn new() -> Backoff {
        Backoff {
            delay: FIRST_DELAY,
            deadline: Instant::now() + SETTLE_TIMEOUT,
        }
    }

    /// Pauses before the next check; false (without pausing) once the deadline has passed.
    pub(super) fn wait(&mut self) -> bool {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        thread::sleep(self.delay.min(left));
        self.delay = (self.delay * 2).min(MAX_DELAY);
        true
    }
}
