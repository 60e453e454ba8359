//! Starting a job's init: one `clone3` into fresh namespaces and the job's cgroup, then exec.
//!
//! The worker runs inside a multi-threaded async runtime, so between clone and exec the child may
//! only make async-signal-safe system calls on values prepared beforehand: no allocation, no
//! locks, no Rust runtime. Everything else — the filesystem view, hostname, network, the
//! command — happens in the init after exec (see [`crate::init`]). The child:
//!
//! 1. on cgroup v1, writes `0` to each of the job cgroup's `cgroup.procs` files (which moves the
//!    writer itself); on v2 the kernel already placed it with `CLONE_INTO_CGROUP` — either way
//!    the job is limited before its first instruction;
//! 2. installs /dev/null and the init's descriptors on fds 0 to 7 ([`crate::protocol`]);
//! 3. execs the init program through the descriptor the worker opened at start-up
//!    (`execveat(AT_EMPTY_PATH)`), so every job runs the very binary the worker started with,
//!    even if a package upgrade replaced the file since.
//!
//! A failure in the child is reported on the status pipe like any other start failure.
//!
//! This is the only place in the crate with raw `libc` calls between fork and exec.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::protocol::{INIT_FDS, STATUS_FD, Stage, StatusRecord};

/// The running init, as seen by the worker.
pub(crate) struct Spawned {
    /// Refers to the init process for as long as we hold it, immune to PID reuse.
    pub(crate) pidfd: OwnedFd,
    /// Its pid on the host, for the job's record.
    pub(crate) pid: i32,
    /// Read end of the status pipe ([`StatusRecord`]s).
    pub(crate) status: File,
}

/// How the new process joins the job's cgroup.
pub(crate) enum CgroupJoin<'a> {
    /// cgroup v1: the child writes "0" to each of these `cgroup.procs` files.
    Procs(Vec<RawFd>),
    /// cgroup v2: `CLONE_INTO_CGROUP` with this directory.
    Into(BorrowedFd<'a>),
}

/// Everything the init is started with. Built before the clone, read-only after it.
pub(crate) struct InitLaunch<'a> {
    /// The init program, opened once by the worker.
    pub(crate) program: BorrowedFd<'a>,
    pub(crate) argv: &'a [CString],
    pub(crate) envp: &'a [CString],
    /// The job's log, open for writing.
    pub(crate) log: BorrowedFd<'a>,
    /// The job's directory.
    pub(crate) job_dir: BorrowedFd<'a>,
    /// The sealed memfd with the syscall filter.
    pub(crate) seccomp: BorrowedFd<'a>,
    /// The lifeline's read end, when the job dies with the daemon.
    pub(crate) lifeline: Option<BorrowedFd<'a>>,
    pub(crate) cgroup: CgroupJoin<'a>,
}

/// Namespaces every job gets. `CLONE_NEWPID` makes the init PID 1 of the new namespace.
const NAMESPACES: u64 = (libc::CLONE_NEWPID
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC) as u64;
/// `CLONE_INTO_CGROUP` (Linux 5.7), not in every libc binding.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Layout of the kernel's `struct clone_args` (version 2, 88 bytes, with `cgroup`).
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
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// A descriptor numbered at least [`INIT_FDS`], so that installing fds 0..INIT_FDS in the child
/// can never overwrite a source before it is used. `None` when `fd` already is.
fn above_init_fds(fd: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    if fd.as_raw_fd() >= INIT_FDS as RawFd {
        return Ok(None);
    }
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(INIT_FDS as RawFd))
        .map(|raw| {
            // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
            Some(unsafe { OwnedFd::from_raw_fd(raw) })
        })
        .map_err(io::Error::from)
}

/// Clones the init into new namespaces and its cgroup and execs it.
pub(crate) fn spawn(launch: &InitLaunch<'_>) -> io::Result<Spawned> {
    let (status, status_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let null = File::open("/dev/null")?;
    let mut sources: [BorrowedFd<'_>; INIT_FDS] = [
        null.as_fd(),
        null.as_fd(),
        null.as_fd(),
        status_w.as_fd(),
        launch.log,
        launch.job_dir,
        launch.seccomp,
        launch.lifeline.unwrap_or(null.as_fd()),
    ];
    // Keeps the duplicates alive until after the clone.
    let mut moved = Vec::new();
    for source in &mut sources {
        if let Some(dup) = above_init_fds(*source)? {
            moved.push(dup);
            let last = moved.len() - 1;
            // SAFETY: the duplicate lives in `moved` until this function returns.
            *source = unsafe { BorrowedFd::borrow_raw(moved[last].as_raw_fd()) };
        }
    }
    let sources: [RawFd; INIT_FDS] = sources.map(|fd| fd.as_raw_fd());
    if launch.program.as_raw_fd() < INIT_FDS as RawFd {
        return Err(io::Error::other(
            "the init program's descriptor is below the init's fds",
        ));
    }
    let argv: Vec<*const libc::c_char> = launch
        .argv
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = launch
        .envp
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let (procs, into) = match &launch.cgroup {
        CgroupJoin::Procs(fds) => (fds.as_slice(), None),
        CgroupJoin::Into(fd) => (&[][..], Some(fd.as_raw_fd())),
    };

    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: NAMESPACES | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let Some(dir) = into {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = dir as u64;
    }
    let program = launch.program.as_raw_fd();
    let status_raw = status_w.as_raw_fd();
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
        unsafe { child(program, &argv, &envp, &sources, procs, status_raw) }
    }
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    // The child's ends are dropped here, so our read end sees end of file once the init is gone.
    drop((status_w, null, moved));
    // SAFETY: the kernel stored a fresh pidfd for the child.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Spawned {
        pidfd,
        pid: ret as i32,
        status: File::from(status),
    })
}

/// The child between clone and exec. Only async-signal-safe system calls on prepared values.
///
/// # Safety
/// Must only be called in the child of a fork-like clone.
unsafe fn child(
    program: RawFd,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    sources: &[RawFd; INIT_FDS],
    cgroup_procs: &[RawFd],
    status: RawFd,
) -> ! {
    // SAFETY (whole body): raw system calls on descriptors and buffers prepared by the parent.
    unsafe {
        for &fd in cgroup_procs {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                fail(status, Stage::CgroupAttach);
            }
        }
        for (to, &from) in sources.iter().enumerate() {
            // Every source is >= INIT_FDS > to: dup2 never sees equal numbers, and clears
            // close-on-exec on the copy.
            if libc::dup2(from, to as RawFd) == -1 {
                fail(status, Stage::ExecInit);
            }
        }
        libc::syscall(
            libc::SYS_execveat,
            program,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
        fail(STATUS_FD, Stage::ExecInit)
    }
}

/// Reports `stage` with the current errno on `fd` and exits. Async-signal-safe.
unsafe fn fail(fd: RawFd, stage: Stage) -> ! {
    // SAFETY: __errno_location, write and _exit are async-signal-safe.
    unsafe {
        let errno = *libc::__errno_location();
        let record = StatusRecord::Failed {
            stage,
            errno: errno.max(1),
        }
        .encode();
        libc::write(fd, record.as_ptr().cast(), record.len());
        libc::_exit(127)
    }
}
