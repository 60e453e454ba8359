//! Forking the command: in the child, become the job's user with no privileges at all, change to
//! the working directory, install the syscall filter and exec. A failure in the child travels
//! back to the init on a close-on-exec pipe (a successful exec closes it), with the step and its
//! errno, so the worker can tell the caller "executable not found in PATH".

use std::ffi::{CStr, CString, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, sigprocmask};
use nix::unistd::{ForkResult, Gid, Pid, Uid};
use rustix::thread::{CapabilitySet, CapabilitySets};

use super::StepError;
use crate::protocol::{InitArgs, Stage, StatusRecord};

/// Forks the command with `stdout`/`stderr` as its fds 1 and 2 (fd 0 is already /dev/null) and
/// waits until it has exec'd or failed to. Returns its pid.
pub(super) fn spawn(
    args: &InitArgs,
    stdout: OwnedFd,
    stderr: OwnedFd,
    filter: &[libc::sock_filter],
) -> Result<Pid, StepError> {
    let (report_r, report_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| (Stage::Fork, e))?;
    // Everything the child needs is built before the fork: the init is single-threaded, so the
    // child could allocate, but keeping its path short keeps it obviously correct.
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(key, value)| {
            let mut kv = key.into_vec();
            kv.push(b'=');
            kv.extend(value.into_vec());
            CString::new(kv).ok()
        })
        .collect();
    let argv: Vec<CString> = std::iter::once(&args.program)
        .chain(&args.args)
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| (Stage::InitArgs, Errno::EINVAL))?;
    let candidates = exec_candidates(&args.program, &env);
    let working_dir = CString::new(OsString::from(args.working_dir.clone()).into_vec())
        .map_err(|_| (Stage::InitArgs, Errno::EINVAL))?;

    // SAFETY: the init is single-threaded, so the child inherits a consistent address space and
    // may run ordinary code until it execs.
    match unsafe { nix::unistd::fork() }.map_err(|e| (Stage::Fork, e))? {
        ForkResult::Child => {
            drop(report_r);
            let (stage, errno) = become_command(
                args,
                &stdout,
                &stderr,
                filter,
                &working_dir,
                &argv,
                &env,
                &candidates,
            );
            let mut report = File::from(report_w);
            let _ = report.write_all(
                &StatusRecord::Failed {
                    stage,
                    errno: errno as i32,
                }
                .encode(),
            );
            // Leave without running the init's destructors or atexit handlers.
            // SAFETY: _exit ends this process at once; nothing of it is used afterwards.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            drop(report_w);
            drop((stdout, stderr));
            let mut report = File::from(report_r);
            let mut record = [0u8; StatusRecord::LEN];
            match read_record(&mut report, &mut record) {
                // End of file: the exec succeeded and closed the pipe.
                Ok(false) => Ok(child),
                Ok(true) => {
                    let _ = nix::sys::wait::waitpid(child, None);
                    match StatusRecord::decode(&record) {
                        Ok(StatusRecord::Failed { stage, errno }) => {
                            Err((stage, Errno::from_raw(errno)))
                        }
                        _ => Err((Stage::ExecCommand, Errno::EIO)),
                    }
                }
                Err(errno) => Err((Stage::Fork, errno)),
            }
        }
    }
}

/// Reads one whole record; false at end of file before any byte.
fn read_record(from: &mut File, record: &mut [u8; StatusRecord::LEN]) -> Result<bool, Errno> {
    let mut got = 0;
    while got < record.len() {
        match from.read(&mut record[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
        }
    }
    Ok(true)
}

/// In the forked child: everything from the init's state to the command. Returns only on
/// failure.
#[allow(clippy::too_many_arguments)]
fn become_command(
    args: &InitArgs,
    stdout: &OwnedFd,
    stderr: &OwnedFd,
    filter: &[libc::sock_filter],
    working_dir: &CStr,
    argv: &[CString],
    env: &[CString],
    candidates: &[CString],
) -> StepError {
    if let Err(e) = reset_signals() {
        return (Stage::Fork, e);
    }
    // The init made itself unkillable by the OOM killer (where it may); the job must not
    // inherit that. Raising a score needs no privilege.
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "0") {
        return (
            Stage::Fork,
            Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        );
    }
    // The daemon raises its soft limit on open files to the hard one; a job starts with the
    // usual 1024 instead, as a login shell or a systemd service would: select() cannot use
    // descriptors above 1023, and some programs close every possible descriptor before
    // exec, which takes seconds at half a million. The job may raise it up to the hard limit.
    if let Err(e) = usual_open_file_limit() {
        return (Stage::Fork, e);
    }
    // Its own session: no controlling terminal to inject input into, and the init's
    // kill(-1) reaches it like any other process of the job.
    if let Err(e) = nix::unistd::setsid() {
        return (Stage::Fork, e);
    }
    if let Err(e) = nix::unistd::dup2_stdout(stdout).and_then(|()| nix::unistd::dup2_stderr(stderr))
    {
        return (Stage::Pipes, e);
    }
    if let Err(e) = drop_privileges(Uid::from_raw(args.uid), Gid::from_raw(args.gid)) {
        return (Stage::DropPrivileges, e);
    }
    // After dropping privileges, so that the job's own permissions decide.
    if let Err(e) = nix::unistd::chdir(working_dir) {
        return (Stage::Chdir, e);
    }
    // Last, so that nothing above runs under the filter (it needs no_new_privs, set above).
    if let Err(e) = crate::seccomp::install(filter) {
        return (
            Stage::Seccomp,
            Errno::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL)),
        );
    }
    let mut errno = Errno::ENOENT;
    for path in candidates {
        let Err(e) = nix::unistd::execve(path, argv, env);
        match e {
            // Keep looking, like execvp, but remember that something was there.
            Errno::EACCES => {
                errno = if is_dir(path) {
                    Errno::EISDIR
                } else {
                    Errno::EACCES
                }
            }
            Errno::ENOENT | Errno::ENOTDIR => {}
            other => return (Stage::ExecCommand, other),
        }
    }
    (Stage::ExecCommand, errno)
}

/// The soft RLIMIT_NOFILE at 1024 (or the hard limit, if lower); the hard limit unchanged.
fn usual_open_file_limit() -> Result<(), Errno> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    const USUAL: u64 = 1024;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft <= USUAL {
        return Ok(());
    }
    setrlimit(Resource::RLIMIT_NOFILE, USUAL.min(hard), hard)
}

/// Signal state as a fresh process has it: nothing blocked, every disposition the default
/// (handlers and ignored signals survive exec; Rust ignores SIGPIPE at start-up).
fn reset_signals() -> Result<(), Errno> {
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    for signal in Signal::iterator() {
        if signal == Signal::SIGKILL || signal == Signal::SIGSTOP {
            continue;
        }
        // SAFETY: installing the default disposition runs no code of ours in signal context.
        unsafe { nix::sys::signal::signal(signal, SigHandler::SigDfl) }?;
    }
    Ok(())
}

/// No capabilities in any set, not even in the bounding set, no supplementary groups, the job's
/// own uid and gid, and `no_new_privs` so that no setuid binary can hand any of it back.
fn drop_privileges(uid: Uid, gid: Gid) -> Result<(), Errno> {
    let rustix_errno = |e: rustix::io::Errno| Errno::from_raw(e.raw_os_error());
    // Dropping from the bounding set needs CAP_SETPCAP, so it comes before setuid. The loop ends
    // at the first capability this kernel does not know (EINVAL).
    for bit in 0..64 {
        let cap = CapabilitySet::from_bits_retain(1 << bit);
        match rustix::thread::remove_capability_from_bounding_set(cap) {
            Ok(()) => {}
            Err(rustix::io::Errno::INVAL) => break,
            Err(e) => return Err(rustix_errno(e)),
        }
    }
    nix::unistd::setgroups(&[])?;
    nix::unistd::setresgid(gid, gid, gid)?;
    nix::unistd::setresuid(uid, uid, uid)?;
    // setuid away from root clears the permitted and effective sets already; clearing all three
    // explicitly also holds if the job ever ran as uid 0.
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    )
    .map_err(rustix_errno)?;
    nix::sys::prctl::set_no_new_privs()
}

/// The paths to try for `program`: itself when it has a slash, else each `PATH` entry.
fn exec_candidates(program: &str, env: &[CString]) -> Vec<CString> {
    if program.contains('/') {
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
            full.extend_from_slice(program.as_bytes());
            CString::new(full).ok()
        })
        .collect()
}

fn is_dir(path: &CStr) -> bool {
    nix::sys::stat::stat(path).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_with_a_slash_is_tried_as_is() {
        let env = [CString::new("PATH=/bin:/usr/bin").expect("env")];
        assert_eq!(exec_candidates("./run", &env), [c"./run".to_owned()]);
    }

    #[test]
    fn a_bare_name_is_looked_up_in_path_in_order() {
        let env = [CString::new("PATH=/usr/local/bin::/bin").expect("env")];
        assert_eq!(
            exec_candidates("ls", &env),
            [c"/usr/local/bin/ls".to_owned(), c"/bin/ls".to_owned()]
        );
    }
}
