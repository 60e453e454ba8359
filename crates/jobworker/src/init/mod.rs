//! The job's init: PID 1 of the job's PID namespace, and the keeper of the job.
//!
//! The worker clones a child into fresh PID, mount, network, UTS and IPC namespaces (and the
//! job's cgroup) and has it exec the init program with [`INIT_ARG0`] as `argv[0]` and the
//! [`InitArgs`] as the rest. That program calls [`run_if_requested`] first thing in `main` and
//! ends up here: a fresh, single-threaded process, so it may allocate and do ordinary I/O,
//! unlike code between fork and exec in the threaded daemon. It
//!
//! 1. assembles the job's filesystem view and pivots into it ([`root`]), sets the hostname,
//!    brings `lo` up;
//! 2. forks the command, which becomes the job's own user, drops every privilege, installs the
//!    syscall filter and execs ([`command`]) — any failure travels back with its errno;
//! 3. reports "ready", then keeps the job ([`keeper`]): copies its stdout and stderr into the
//!    log (within the output limit), forwards signals, reaps orphans, and when the command has
//!    ended, ends the rest of the job, drains what is still buffered and leaves the
//!    [`ExitRecord`](crate::protocol::ExitRecord) in the job's directory.
//!
//! Because the init holds the pipes and writes the log itself, the job's output keeps being
//! captured while no daemon runs, and the copy is charged to the job's own cgroup.
//!
//! The command is never PID 1 itself: PID 1 ignores signals it has no handler for, so a plain
//! `sleep` would not stop on SIGTERM.

mod command;
mod keeper;
mod root;

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::output::LogWriter;
use crate::protocol::{
    INIT_ARG0, INIT_FDS, InitArgs, JOB_DIR_FD, LIFELINE_FD, LOG_FD, SECCOMP_FD, STATUS_FD, Stage,
    StatusRecord,
};

/// Signals the init passes on to every process of the job; the rest keep their defaults.
const FORWARDED: [Signal; 8] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGCONT,
    Signal::SIGWINCH,
];

/// The signal the worker sends the init to end the job at once (the end of a stop's grace
/// period): the init SIGKILLs every process of the job, then finishes as usual, so the output
/// still buffered is kept and the outcome recorded. SIGPWR, which tells a system's init to shut
/// the system down, is the one a job never needs forwarded. Only root can send it to the init:
/// the job's processes run as another user.
pub(crate) const KILL_REQUEST: Signal = Signal::SIGPWR;

/// A failed step: which one and the errno it failed with.
type StepError = (Stage, Errno);

/// Runs the job init and exits if this process was started as one; returns otherwise.
///
/// Call it at the very start of `main` of any program used as the worker's init program, before
/// any thread is started.
pub fn run_if_requested() {
    if std::env::args_os().next().as_deref() == Some(std::ffi::OsStr::new(INIT_ARG0)) {
        std::process::exit(run());
    }
}

/// The descriptors the spawner installed (see [`crate::protocol`]).
struct Fds {
    status: File,
    log: File,
    job_dir: OwnedFd,
    seccomp: OwnedFd,
    lifeline: Option<OwnedFd>,
}

fn take_fds(lifeline: bool) -> Result<Fds, Errno> {
    for fd in STATUS_FD..INIT_FDS as i32 {
        if fd == LIFELINE_FD && !lifeline {
            continue;
        }
        // Keep them out of the command: it gets only stdin, stdout and stderr.
        fcntl(
            // SAFETY: a descriptor the spawner installed at this number; borrowed for one call.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC),
        )?;
    }
    // SAFETY (each): the spawner installed exactly these descriptors before exec'ing this
    // fresh process, and nothing else in it owns them.
    Ok(unsafe {
        Fds {
            status: File::from_raw_fd(STATUS_FD),
            log: File::from_raw_fd(LOG_FD),
            job_dir: OwnedFd::from_raw_fd(JOB_DIR_FD),
            seccomp: OwnedFd::from_raw_fd(SECCOMP_FD),
            lifeline: lifeline.then(|| OwnedFd::from_raw_fd(LIFELINE_FD)),
        }
    })
}

fn run() -> i32 {
    let args: Vec<OsString> = std::env::args_os().collect();
    let parsed = InitArgs::parse(args);
    let lifeline = parsed.as_ref().is_ok_and(|a| a.lifeline);
    let mut fds = match take_fds(lifeline) {
        Ok(fds) => fds,
        // Without its descriptors the init cannot even report; the worker sees end of file.
        Err(_) => return 1,
    };
    let started = parsed
        .map_err(|_| (Stage::InitArgs, Errno::EINVAL))
        .and_then(|args| start(&args, &mut fds).map(|job| (args, job)));
    match started {
        Ok((args, job)) => {
            report(&mut fds.status, StatusRecord::Ready);
            // The worker reads no more from the status pipe; closing it tells nothing new.
            drop(fds.status);
            let log = LogWriter::new(fds.log, args.output_limit);
            keeper::keep(job, log, fds.job_dir, fds.lifeline)
        }
        Err((stage, errno)) => {
            report(
                &mut fds.status,
                StatusRecord::Failed {
                    stage,
                    errno: errno as i32,
                },
            );
            1
        }
    }
}

fn report(status: &mut File, record: StatusRecord) {
    // A failed write means the worker is gone; there is no one left to tell.
    let _ = status.write_all(&record.encode());
}

/// The running command, as the keeper needs it.
struct Started {
    /// The command's pid (2 in the job's PID namespace).
    command: nix::unistd::Pid,
    /// Read ends of its stdout and stderr.
    stdout: OwnedFd,
    stderr: OwnedFd,
    /// The signals the init handles, readable as they arrive.
    signals: SignalFd,
    /// The keeper's frame buffer, already charged to the job's memory.
    frame: Vec<u8>,
}

/// Everything up to the command's exec.
fn start(args: &InitArgs, fds: &mut Fds) -> Result<Started, StepError> {
    let _ = nix::sys::prctl::set_name(c"jobworker-init");
    root::build(args).map_err(|e| (Stage::Root, e))?;
    nix::unistd::sethostname(&args.hostname).map_err(|e| (Stage::Hostname, e))?;
    loopback_up().map_err(|e| (Stage::Loopback, e))?;
    let program = fds
        .seccomp
        .try_clone()
        .and_then(crate::seccomp::read_program)
        .map_err(|e| (Stage::Seccomp, errno_of(e)))?;

    // Pipes for the command's stdout and stderr. Their write ends belong to the job's user, so
    // `/dev/stdout`, `/dev/stderr` and `/proc/self/fd/N` open as on any shell (pipes are created
    // mode 0600 for their creator, root).
    let pipes = |e| (Stage::Pipes, e);
    let (stdout, stdout_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(pipes)?;
    let (stderr, stderr_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(pipes)?;
    let owner = Some(nix::unistd::Uid::from_raw(args.uid));
    let group = Some(nix::unistd::Gid::from_raw(args.gid));
    for w in [&stdout_w, &stderr_w] {
        nix::unistd::fchown(w, owner, group).map_err(|e| (Stage::Pipes, e))?;
    }

    // Blocked before the fork so that no SIGCHLD or SIGTERM is lost: a blocked signal stays
    // pending (even for PID 1, which the kernel otherwise spares unhandled signals) until the
    // signalfd hands it over.
    let mut handled = SigSet::empty();
    for signal in FORWARDED.into_iter().chain([Signal::SIGCHLD, KILL_REQUEST]) {
        handled.add(signal);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&handled), None).map_err(|e| (Stage::Fork, e))?;
    let signals = SignalFd::with_flags(&handled, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| (Stage::Fork, e))?;

    // The keeper must outlive a job that runs out of memory, to record its end: the OOM killer
    // picks among the job's processes, never the init (the command resets its own score), and
    // the keeper's buffer is charged now, not when memory may be gone. Lowering the score needs
    // CAP_SYS_RESOURCE, which some containers withhold even from root: then the keeper relies on
    // being small, and on the private tmpfs leaving a quarter of the job's memory to processes.
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    let frame = LogWriter::frame_buffer();
    let command = command::spawn(args, stdout_w, stderr_w, &program)?;
    Ok(Started {
        command,
        stdout,
        stderr,
        signals,
        frame,
    })
}

fn errno_of(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// `ip link set lo up`, with the two ioctls it boils down to (no safe wrapper exists for
/// SIOCGIFFLAGS/SIOCSIFFLAGS).
fn loopback_up() -> Result<(), Errno> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    use std::os::fd::AsRawFd;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: the ioctl reads the name from and writes the flags into the ifreq we own.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: the flags member is the one SIOCGIFFLAGS just filled in.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: the ioctl reads the ifreq we own.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })?;
    Ok(())
}
