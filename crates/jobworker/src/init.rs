//! The job's init: PID 1 of the job's PID namespace.
//!
//! The worker clones a child into fresh PID, mount, network, UTS and IPC namespaces and has it
//! exec the worker's own binary with [`INIT_ARG0`] as `argv[0]`. That program calls
//! [`run_if_requested`] first thing in `main`, and ends up here: a fresh, single-threaded process,
//! so it may allocate and do ordinary I/O, unlike code between fork and exec in the threaded
//! daemon. It
//!
//! 1. finishes the isolation: private mount propagation, a fresh `/proc` (only the job's
//!    processes), a fresh `/sys` (only the job's network devices), a private `/dev/shm`, the
//!    hostname, `lo` up;
//! 2. forks the command, which drops to the job user (no capabilities, `no_new_privs`), changes
//!    to the working directory and execs — any failure travels back with its errno;
//! 3. reports "ready", then forwards termination signals to every process in the namespace,
//!    reaps orphans, and reports the command's exact exit code or signal before exiting. Its
//!    exit takes down whatever the command left behind: the kernel kills a PID namespace whose
//!    init is gone.
//!
//! The command is never PID 1 itself: PID 1 ignores signals it has no handler for, so a plain
//! `sleep` would not stop on SIGTERM.
//!
//! Arguments (positional): `argv = [INIT_ARG0, hostname, uid, gid, working_dir, program, args...]`.
//! The environment is the job's environment, passed on to the command unchanged. File
//! descriptors: 0 is /dev/null, 1 and 2 are the output pipes, 3 the status pipe.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::protocol::{self, STATUS_FD, Stage};

/// `argv[0]` that makes [`run_if_requested`] run the init instead of the program's `main`.
pub const INIT_ARG0: &str = "jobworker-init";

/// Signals the init passes on to every process of the job; the rest keep their defaults.
const FORWARDED: [libc::c_int; 8] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGCONT,
    libc::SIGWINCH,
];

/// Runs the job init and exits if this process was started as one; returns otherwise.
///
/// Call it at the very start of `main` of any program used as the worker's init program
/// (by default the worker re-executes its own binary), before any thread is started.
pub fn run_if_requested() {
    if std::env::args_os().next().as_deref() == Some(OsStr::new(INIT_ARG0)) {
        std::process::exit(run());
    }
}

/// What the init was told to do.
struct Plan {
    hostname: OsString,
    uid: libc::uid_t,
    gid: libc::gid_t,
    working_dir: CString,
    program: CString,
    argv: Vec<CString>,
}

/// A failed step: which one and the errno it failed with.
type StepError = (Stage, i32);

fn run() -> i32 {
    // SAFETY: fd 3 is the status pipe by contract with the spawner; marking it close-on-exec
    // keeps it out of the command.
    unsafe { libc::fcntl(STATUS_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    let outcome = parse_args()
        .and_then(|plan| isolate(&plan).map(|()| plan))
        .and_then(|plan| start_command(&plan));
    match outcome {
        Ok(command) => supervise(command),
        Err((stage, errno)) => {
            report(protocol::ERROR, stage as u8, errno);
            1
        }
    }
}

fn report(tag: u8, stage: u8, value: i32) {
    let rec = protocol::record(tag, stage, value);
    // SAFETY: writing a stack buffer to a descriptor we own. A failed write means the worker is
    // gone; there is no one left to tell.
    unsafe { libc::write(STATUS_FD, rec.as_ptr().cast(), rec.len()) };
}

fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Turns a libc return value into a step result.
fn check(ret: libc::c_int, stage: Stage) -> Result<(), StepError> {
    if ret == -1 {
        Err((stage, last_errno()))
    } else {
        Ok(())
    }
}

fn cstring(s: impl Into<Vec<u8>>) -> Result<CString, StepError> {
    CString::new(s).map_err(|_| (Stage::InitArgs, libc::EINVAL))
}

fn parse_args() -> Result<Plan, StepError> {
    let bad = (Stage::InitArgs, libc::EINVAL);
    let mut args = std::env::args_os().skip(1);
    let mut next = || args.next().ok_or(bad);
    let hostname = next()?;
    let uid = next()?.to_str().and_then(|s| s.parse().ok()).ok_or(bad)?;
    let gid = next()?.to_str().and_then(|s| s.parse().ok()).ok_or(bad)?;
    let working_dir = cstring(next()?.into_vec())?;
    let program = cstring(next()?.into_vec())?;
    let mut argv = vec![program.clone()];
    for arg in args {
        argv.push(cstring(arg.into_vec())?);
    }
    Ok(Plan {
        hostname,
        uid,
        gid,
        working_dir,
        program,
        argv,
    })
}

/// The namespaces exist already (the spawner created them); fill them in.
fn isolate(plan: &Plan) -> Result<(), StepError> {
    let name = c"jobworker-init";
    // SAFETY: PR_SET_NAME copies at most 16 bytes from a valid C string.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };

    // Private propagation first, or every mount below would show up on the host.
    mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    let hidden = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(Some(c"proc"), c"/proc", Some(c"proc"), hidden, None)?;
    // sysfs shows the network devices of the namespace that mounts it: a fresh one shows only `lo`
    // (and hides the host's cgroup tree beneath /sys/fs/cgroup).
    mount(
        Some(c"sysfs"),
        c"/sys",
        Some(c"sysfs"),
        hidden | libc::MS_RDONLY,
        None,
    )?;
    // POSIX shared memory lives in /dev/shm, which the IPC namespace does not cover.
    if std::path::Path::new("/dev/shm").is_dir() {
        mount(
            Some(c"tmpfs"),
            c"/dev/shm",
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(c"mode=1777"),
        )?;
    }

    let host = plan.hostname.as_bytes();
    // SAFETY: pointer and length describe a live byte slice.
    check(
        unsafe { libc::sethostname(host.as_ptr().cast(), host.len()) },
        Stage::Hostname,
    )?;
    loopback_up().map_err(|errno| (Stage::Loopback, errno))
}

fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> Result<(), StepError> {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: all pointers are null or valid C strings that outlive the call.
    let ret = unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    };
    check(ret, Stage::Mount)
}

/// `ip link set lo up`, with the two ioctls it boils down to.
fn loopback_up() -> Result<(), i32> {
    // SAFETY: plain socket creation; the descriptor is closed below on every path.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock == -1 {
        return Err(last_errno());
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: the ioctls read and write the ifreq we own; the union field used is the flags.
    let result = unsafe {
        if libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) == -1 {
            Err(last_errno())
        } else {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) == -1 {
                Err(last_errno())
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(sock) };
    result
}

fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before sigaddset uses it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// The signals the init waits for: the forwarded ones and SIGCHLD.
fn waited_signals() -> libc::sigset_t {
    let mut all = FORWARDED.to_vec();
    all.push(libc::SIGCHLD);
    sigset(&all)
}

/// Forks the command and waits until it has exec'd (or failed to). Returns its pid.
fn start_command(plan: &Plan) -> Result<libc::pid_t, StepError> {
    // Blocked before the fork so that no SIGCHLD or SIGTERM is lost; a blocked signal is never
    // discarded, even by PID 1, and sigwaitinfo collects it later.
    let waited = waited_signals();
    // SAFETY: changing this thread's mask; the old mask is not needed.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &waited, std::ptr::null_mut()) };

    // The command reports an exec failure on this pipe; a successful exec closes it (CLOEXEC).
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    check(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) },
        Stage::Fork,
    )?;
    let [err_r, err_w] = fds;
    // Everything the child needs is built before the fork: the init is single-threaded, but
    // keeping the child's path short keeps it obviously correct.
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            CString::new(kv).ok()
        })
        .collect();
    let candidates = exec_candidates(&plan.program, &env);

    // SAFETY: the init is single-threaded, so the child may run ordinary code.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        return Err((Stage::Fork, last_errno()));
    }
    if pid == 0 {
        // SAFETY: closing the read end inherited by the child.
        unsafe { libc::close(err_r) };
        let (stage, errno) = exec_command(plan, &candidates, &env);
        let rec = protocol::record(protocol::ERROR, stage as u8, errno);
        // SAFETY: report and leave without running any of the parent's cleanup.
        unsafe {
            libc::write(err_w, rec.as_ptr().cast(), rec.len());
            libc::_exit(127);
        }
    }
    // SAFETY: the parent keeps only the read end.
    unsafe { libc::close(err_w) };
    let mut rec = [0u8; protocol::RECORD_LEN];
    let n = read_full(err_r, &mut rec);
    // SAFETY: closing our read end.
    unsafe { libc::close(err_r) };
    if n == rec.len() {
        let (_, stage, errno) = protocol::parse(&rec);
        let mut status = 0;
        // SAFETY: reaping the failed child we forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err((Stage::from_byte(stage).unwrap_or(Stage::ExecCommand), errno));
    }
    Ok(pid)
}

fn read_full(fd: libc::c_int, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reading into the unfilled tail of `buf`.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ if last_errno() == libc::EINTR => continue,
            _ => break,
        }
    }
    got
}

/// The paths to try for `program`: itself when it has a slash, else each `PATH` entry.
fn exec_candidates(program: &CStr, env: &[CString]) -> Vec<CString> {
    let program = program.to_bytes();
    if program.contains(&b'/') {
        return CString::new(program).into_iter().collect();
    }
    let path = env
        .iter()
        .find_map(|kv| kv.to_bytes().strip_prefix(b"PATH="))
        .unwrap_or(b"");
    path.split(|&b| b == b':')
        .filter(|dir| !dir.is_empty())
        .filter_map(|dir| {
            let mut full = dir.to_vec();
            full.push(b'/');
            full.extend_from_slice(program);
            CString::new(full).ok()
        })
        .collect()
}

/// In the forked child: become the job user and exec. Returns only on failure.
fn exec_command(plan: &Plan, candidates: &[CString], env: &[CString]) -> StepError {
    // SAFETY: resetting this process's signal state before exec; handlers and masks are
    // inherited by exec (ignored ones too: Rust ignores SIGPIPE at start-up).
    unsafe {
        let none = sigset(&[]);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        libc::setsid();
    }
    if let Err(e) = drop_privileges(plan.uid, plan.gid) {
        return e;
    }
    // After dropping privileges, so the job user's permissions decide.
    // SAFETY: a valid C string.
    if unsafe { libc::chdir(plan.working_dir.as_ptr()) } == -1 {
        return (Stage::Chdir, last_errno());
    }
    let argv = null_terminated(&plan.argv);
    let envp = null_terminated(env);
    let mut errno = libc::ENOENT;
    for path in candidates {
        // SAFETY: path, argv and envp are valid and NULL-terminated.
        unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        match last_errno() {
            // Keep looking, like execvp, but remember that something was there.
            libc::EACCES => {
                errno = if is_dir(path) {
                    libc::EISDIR
                } else {
                    libc::EACCES
                }
            }
            libc::ENOENT | libc::ENOTDIR => {}
            other => return (Stage::ExecCommand, other),
        }
    }
    (Stage::ExecCommand, errno)
}

fn is_dir(path: &CStr) -> bool {
    // SAFETY: stat into a zeroed buffer we own.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::stat(path.as_ptr(), &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFDIR
    }
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// No capabilities (even for uid 0), no supplementary groups but the job user's primary one,
/// and `no_new_privs` so that no setuid binary can hand any of it back.
fn drop_privileges(uid: libc::uid_t, gid: libc::gid_t) -> Result<(), StepError> {
    let stage = Stage::DropPrivileges;
    // Dropping from the bounding set needs CAP_SETPCAP, so it comes before setuid. The loop ends
    // at the first capability this kernel does not know (EINVAL).
    for cap in 0..64 {
        // SAFETY: plain prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } == -1 {
            break;
        }
    }
    // SAFETY: plain syscalls with integer or small-array arguments.
    unsafe {
        check(libc::setgroups(1, &gid), stage)?;
        check(libc::setresgid(gid, gid, gid), stage)?;
        check(libc::setresuid(uid, uid, uid), stage)?;
    }
    // setuid to a non-root user clears the capability sets already; this also covers uid 0.
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads a version-3 header and two data structs, which we pass.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    check(ret as libc::c_int, stage)?;
    // SAFETY: plain prctl with integer arguments.
    check(
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
        stage,
    )
}

/// Reports "ready", then forwards signals and reaps until the command ends; returns the exit
/// code for the init's own exit.
fn supervise(command: libc::pid_t) -> i32 {
    // The init must not hold the output pipes: the worker's end of file comes when the job's
    // processes are gone.
    // SAFETY: opening /dev/null and duplicating it over our stdout and stderr.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            libc::close(null);
        }
    }
    report(protocol::READY, 0, 0);
    let waited = waited_signals();
    loop {
        // SAFETY: siginfo is plain data the kernel fills in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waiting on a set of signals this thread has blocked.
        let sig = unsafe { libc::sigwaitinfo(&waited, &mut info) };
        if sig == libc::SIGCHLD {
            if let Some(code) = reap(command) {
                return code;
            }
        } else if sig > 0 {
            // -1: every process in the namespace but the init itself.
            // SAFETY: sending a signal.
            unsafe { libc::kill(-1, sig) };
        }
    }
}

/// Reaps every exited child; when the command is among them, reports its outcome and returns
/// the init's exit code.
fn reap(command: libc::pid_t) -> Option<i32> {
    loop {
        let mut status = 0;
        // SAFETY: non-blocking wait for any child of the init (orphans are re-parented to it).
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return None;
        }
        if pid != command {
            continue;
        }
        if libc::WIFEXITED(status) {
            let code = libc::WEXITSTATUS(status);
            report(protocol::EXITED, 0, code);
            return Some(code);
        }
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            report(protocol::KILLED, 0, sig);
            return Some(128 + sig);
        }
    }
}
