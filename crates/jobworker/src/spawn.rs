//! Starting a job's init: one `clone3` into fresh namespaces, then exec.
//!
//! The worker runs inside a multi-threaded async runtime, so between clone and exec the child may
//! only make async-signal-safe system calls on values prepared beforehand: no allocation, no
//! locks, no Rust runtime. Everything else — mounts, hostname, network, privileges — happens in
//! the init after exec (see [`crate::init`]). The child:
//!
//! 1. asks for SIGKILL when its parent dies (so a crashed worker takes its jobs along), and
//!    writes `0` to each of the job cgroup's `cgroup.procs` files (which moves the writer
//!    itself), so the job is limited before its first instruction;
//! 2. puts /dev/null, the two output pipes and the status pipe on fds 0-3;
//! 3. execs the init program.
//!
//! A failure in the child is reported on the status pipe like any other start failure.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::protocol::{self, STATUS_FD, Stage};

/// The running init, as seen by the worker.
pub(crate) struct Spawned {
    /// Refers to the init process for as long as we hold it, immune to PID reuse.
    pub(crate) pidfd: OwnedFd,
    /// Read ends of the command's stdout and stderr.
    pub(crate) stdout: File,
    pub(crate) stderr: File,
    /// Read end of the status pipe (see [`crate::protocol`]).
    pub(crate) status: File,
}

/// What the init is exec'd with. Built before the clone, read-only after it.
pub(crate) struct InitCommand {
    pub(crate) program: CString,
    pub(crate) argv: Vec<CString>,
    pub(crate) envp: Vec<CString>,
}

/// Namespaces every job gets. `CLONE_NEWPID` makes the init PID 1 of the new namespace.
const NAMESPACES: u64 = (libc::CLONE_NEWPID
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC) as u64;

/// Layout of the kernel's `struct clone_args` (first version, 64 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

fn pipe() -> io::Result<(File, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array; both ends are owned right after.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors that nothing else owns.
    unsafe { Ok((File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))) }
}

/// Clones the init into new namespaces and the given cgroups and execs it.
pub(crate) fn spawn(init: &InitCommand, cgroup_procs: &[RawFd]) -> io::Result<Spawned> {
    let (stdout, stdout_w) = pipe()?;
    let (stderr, stderr_w) = pipe()?;
    let (status, status_w) = pipe()?;
    let null = File::open("/dev/null")?;

    let argv: Vec<*const libc::c_char> = init
        .argv
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = init
        .envp
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // Sources for fds 0..=3, in order. A source may itself be a low number (if the worker's own
    // stdio is closed, which Worker::new rules out) — see `install`.
    let targets = [
        null.as_raw_fd(),
        stdout_w.as_raw_fd(),
        stderr_w.as_raw_fd(),
        status_w.as_raw_fd(),
    ];

    let mut pidfd: RawFd = -1;
    let args = CloneArgs {
        flags: NAMESPACES | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM and without a stack behaves like fork: the child gets a
    // copy of this address space. The child only calls `child`, which is async-signal-safe.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret == 0 {
        // SAFETY: in the child; never returns.
        unsafe { child(init, &argv, &envp, &targets, cgroup_procs) }
    }
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    // The child's ends are dropped here, so our read ends see end of file once the job is gone.
    drop((stdout_w, stderr_w, status_w, null));
    // SAFETY: the kernel stored a fresh pidfd for the child.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Spawned {
        pidfd,
        stdout,
        stderr,
        status,
    })
}

/// The child between clone and exec. Only async-signal-safe system calls on prepared values.
///
/// # Safety
/// Must only be called in the child of a fork-like clone.
unsafe fn child(
    init: &InitCommand,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    targets: &[RawFd; 4],
    cgroup_procs: &[RawFd],
) -> ! {
    // SAFETY (whole body): raw system calls on descriptors and buffers prepared by the parent.
    unsafe {
        // If the worker dies (even by SIGKILL), the kernel kills the init and so the whole job:
        // no job outlives its owner. The "parent" here is the supervisor thread that cloned us,
        // which lives until it has reaped the init.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
            fail(targets[3], Stage::ExecInit);
        }
        for &fd in cgroup_procs {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                fail(targets[3], Stage::CgroupAttach);
            }
        }
        for (to, &from) in targets.iter().enumerate() {
            let to = to as RawFd;
            let ok = if from == to {
                // dup2 onto itself would keep close-on-exec set.
                libc::fcntl(to, libc::F_SETFD, 0) != -1
            } else {
                libc::dup2(from, to) != -1
            };
            if !ok {
                // The status pipe may not be in place yet; exit status 127 still tells.
                libc::_exit(127);
            }
        }
        libc::execve(init.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(STATUS_FD, Stage::ExecInit)
    }
}

/// Reports `stage` with the current errno on `fd` and exits. Async-signal-safe.
unsafe fn fail(fd: RawFd, stage: Stage) -> ! {
    // SAFETY: __errno_location, write and _exit are async-signal-safe.
    unsafe {
        let errno = *libc::__errno_location();
        let rec = protocol::record(protocol::ERROR, stage as u8, errno);
        libc::write(fd, rec.as_ptr().cast(), rec.len());
        libc::_exit(127)
    }
}

/// Sends `signal` to the process behind `pidfd`. A process that has already exited is not an
/// error.
pub(crate) fn signal(pidfd: &OwnedFd, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a valid pidfd and no siginfo.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if ret == -1 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err);
        }
    }
    Ok(())
}

/// Waits for the process behind `pidfd` to exit and reaps it. Blocking.
pub(crate) fn wait(pidfd: &OwnedFd) -> io::Result<libc::siginfo_t> {
    loop {
        // SAFETY: siginfo is plain data the kernel fills in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on a pidfd we own.
        let ret = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED,
            )
        };
        if ret == 0 {
            return Ok(info);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}
