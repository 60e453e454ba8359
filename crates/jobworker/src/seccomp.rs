//! The job's syscall filter: one table, compiled once per worker with libseccomp.
//!
//! Modelled on Docker's default profile, as a deny list over an allow-by-default filter: the
//! calls below are refused, everything else runs. Refused calls fail with an errno — they never
//! kill the process — so programs that probe for a feature (glibc falling back from `clone3` to
//! `clone`, a tool trying `io_uring` first) keep working.
//!
//! The worker compiles the table to classic BPF when it starts ([`compile`]) and hands the
//! program to every job's init in a sealed memfd; the init installs it in the command's process
//! after `no_new_privs`, just before `execve`. Filters are inherited by every child and cannot
//! be removed.
//!
//! Architectures: the filter is for the native ABI. A call through another ABI of the same
//! kernel (i386 `int 0x80`, x32) fails with ENOSYS: libseccomp checks the architecture and the
//! x32 bit itself, so the numbers below cannot be bypassed through a second syscall table.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;

use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

/// Calls refused with EPERM, each with the reason.
const DENIED: &[(&str, &str)] = &[
    // New namespaces would give the job a user namespace in which it is root: the gateway to
    // most kernel privilege escalations (and to mounting anything).
    ("unshare", "creates namespaces"),
    ("setns", "enters other namespaces"),
    // The job's filesystem view is assembled for it and fixed.
    ("mount", "changes the mount table"),
    ("umount2", "changes the mount table"),
    ("pivot_root", "changes the root"),
    ("move_mount", "new mount API"),
    ("open_tree", "new mount API"),
    ("fsopen", "new mount API"),
    ("fsconfig", "new mount API"),
    ("fsmount", "new mount API"),
    ("fspick", "new mount API"),
    ("mount_setattr", "new mount API"),
    // Keyrings are not namespaced: a key is visible to every process of the same uid.
    ("keyctl", "kernel keyrings are shared across namespaces"),
    ("add_key", "kernel keyrings are shared across namespaces"),
    (
        "request_key",
        "kernel keyrings are shared across namespaces",
    ),
    // Large kernel attack surfaces that jobs do not need.
    ("bpf", "eBPF programs and maps"),
    (
        "perf_event_open",
        "performance counters: side channels, kernel attack surface",
    ),
    ("userfaultfd", "a tool for winning kernel races"),
    (
        "io_uring_setup",
        "io_uring: a frequent source of kernel exploits",
    ),
    ("io_uring_enter", "io_uring"),
    ("io_uring_register", "io_uring"),
    ("fanotify_init", "filesystem-wide event monitoring"),
    // Whole-machine operations (most need capabilities the job lacks; refusing them here also
    // holds if a kernel bug grants one).
    ("init_module", "loads kernel modules"),
    ("finit_module", "loads kernel modules"),
    ("delete_module", "unloads kernel modules"),
    ("kexec_load", "replaces the running kernel"),
    ("kexec_file_load", "replaces the running kernel"),
    ("reboot", "reboots the machine"),
    ("swapon", "changes swap"),
    ("swapoff", "changes swap"),
    ("acct", "process accounting for the whole machine"),
    ("clock_settime", "sets the machine's clock"),
    ("clock_adjtime", "adjusts the machine's clock"),
    ("settimeofday", "sets the machine's clock"),
    ("adjtimex", "adjusts the machine's clock"),
    ("syslog", "reads the kernel log"),
    ("quotactl", "disk quotas of the host's filesystems"),
    ("quotactl_fd", "disk quotas of the host's filesystems"),
    ("lookup_dcookie", "kernel profiling"),
    ("iopl", "raw I/O port access"),
    ("ioperm", "raw I/O port access"),
    // Opening files by handle bypasses the path walk, and so the job's view.
    ("open_by_handle_at", "bypasses the filesystem view"),
    ("name_to_handle_at", "companion of open_by_handle_at"),
];

/// `clone` flags that create namespaces (`CLONE_NEWTIME` cannot be passed to `clone`).
const CLONE_NEW: [(u64, &str); 7] = [
    (libc::CLONE_NEWNS as u64, "CLONE_NEWNS"),
    (libc::CLONE_NEWCGROUP as u64, "CLONE_NEWCGROUP"),
    (libc::CLONE_NEWUTS as u64, "CLONE_NEWUTS"),
    (libc::CLONE_NEWIPC as u64, "CLONE_NEWIPC"),
    (libc::CLONE_NEWUSER as u64, "CLONE_NEWUSER"),
    (libc::CLONE_NEWPID as u64, "CLONE_NEWPID"),
    (libc::CLONE_NEWNET as u64, "CLONE_NEWNET"),
];

/// Socket families a job may use: local sockets, IPv4, IPv6 and route netlink (which `ip`
/// and `getifaddrs` need). Everything else — packet sockets, AF_VSOCK to the hypervisor, the
/// kernel crypto API, netfilter and audit netlink, ... — fails with EAFNOSUPPORT, the errno a
/// program expects for a family this kernel does not offer (systemd's
/// `RestrictAddressFamilies=` answers the same).
const ALLOWED_FAMILIES: [u64; 4] = [
    libc::AF_UNIX as u64,
    libc::AF_INET as u64,
    libc::AF_INET6 as u64,
    libc::AF_NETLINK as u64,
];

/// Why the filter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// libseccomp refused part of the table.
    #[error("cannot build the job syscall filter ({what}): {source}")]
    Build {
        /// The rule being added.
        what: String,
        /// libseccomp's reason.
        #[source]
        source: libseccomp::error::SeccompError,
    },
    /// Writing the compiled program into its memfd failed.
    #[error("cannot store the compiled syscall filter: {0}")]
    Store(#[source] std::io::Error),
}

fn build_error(
    what: impl Into<String>,
) -> impl FnOnce(libseccomp::error::SeccompError) -> SeccompError {
    let what = what.into();
    move |source| SeccompError::Build { what, source }
}

/// Builds the filter from the table.
fn filter() -> Result<ScmpFilterContext, SeccompError> {
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).map_err(build_error("context"))?;
    // Other ABIs of this kernel (i386, x32) get ENOSYS for everything.
    ctx.set_act_badarch(ScmpAction::Errno(libc::ENOSYS))
        .map_err(build_error("foreign architectures"))?;
    let eperm = ScmpAction::Errno(libc::EPERM);
    for (name, _why) in DENIED {
        let call = ScmpSyscall::from_name(name).map_err(build_error(*name))?;
        ctx.add_rule(eperm, call).map_err(build_error(*name))?;
    }
    // clone3 passes its flags behind a pointer, which a filter cannot read: refuse it as
    // unimplemented, and libc falls back to clone, whose flags it can.
    let clone3 = ScmpSyscall::from_name("clone3").map_err(build_error("clone3"))?;
    ctx.add_rule(ScmpAction::Errno(libc::ENOSYS), clone3)
        .map_err(build_error("clone3"))?;
    let clone = ScmpSyscall::from_name("clone").map_err(build_error("clone"))?;
    for (flag, name) in CLONE_NEW {
        let has_flag = ScmpArgCompare::new(0, ScmpCompareOp::MaskedEqual(flag), flag);
        ctx.add_rule_conditional(eperm, clone, &[has_flag])
            .map_err(build_error(format!("clone with {name}")))?;
    }
    let socket = ScmpSyscall::from_name("socket").map_err(build_error("socket"))?;
    let family = ScmpAction::Errno(libc::EAFNOSUPPORT);
    let highest = ALLOWED_FAMILIES.iter().copied().max().unwrap_or(0);
    for refused in (0..highest).filter(|f| !ALLOWED_FAMILIES.contains(f)) {
        let is = ScmpArgCompare::new(0, ScmpCompareOp::Equal, refused);
        ctx.add_rule_conditional(family, socket, &[is])
            .map_err(build_error(format!("socket family {refused}")))?;
    }
    let above = ScmpArgCompare::new(0, ScmpCompareOp::Greater, highest);
    ctx.add_rule_conditional(family, socket, &[above])
        .map_err(build_error("socket families above AF_NETLINK"))?;
    // Netlink only for routing (protocol 0, NETLINK_ROUTE).
    let netlink = ScmpArgCompare::new(0, ScmpCompareOp::Equal, libc::AF_NETLINK as u64);
    let not_route = ScmpArgCompare::new(2, ScmpCompareOp::NotEqual, libc::NETLINK_ROUTE as u64);
    ctx.add_rule_conditional(family, socket, &[netlink, not_route])
        .map_err(build_error("netlink protocols"))?;
    Ok(ctx)
}

/// Compiles the filter and stores the BPF program in a sealed memfd (read-only for good), to be
/// passed to each job's init.
pub(crate) fn compile() -> Result<OwnedFd, SeccompError> {
    let ctx = filter()?;
    let fd = memfd_create(
        "jobworker-seccomp",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(|e| SeccompError::Store(e.into()))?;
    ctx.export_bpf(&fd).map_err(build_error("export"))?;
    let seals = SealFlag::F_SEAL_WRITE
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_SEAL;
    fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).map_err(|e| SeccompError::Store(e.into()))?;
    Ok(fd)
}

/// Reads a compiled program back (in the init). Classic BPF instructions are 8 bytes each.
///
/// Every job's init holds a duplicate of the worker's one memfd descriptor, so they all share
/// one file offset: the program is read at explicit positions (`pread`), never through that
/// offset, or inits starting at the same time would read parts of each other's reads.
pub(crate) fn read_program(fd: OwnedFd) -> std::io::Result<Vec<libc::sock_filter>> {
    let file = File::from(fd);
    let len = file.metadata()?.len();
    let malformed = || std::io::Error::other("the syscall filter program is malformed");
    if len == 0 || len % 8 != 0 || len / 8 > u64::from(u16::MAX) {
        return Err(malformed());
    }
    let mut bytes = vec![0; usize::try_from(len).map_err(|_| malformed())?];
    file.read_exact_at(&mut bytes, 0)?;
    Ok(bytes
        .chunks_exact(8)
        .map(|i| libc::sock_filter {
            code: u16::from_ne_bytes([i[0], i[1]]),
            jt: i[2],
            jf: i[3],
            k: u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
        })
        .collect())
}

/// Installs `program` for this thread and its future children. `no_new_privs` must be set.
/// Called in the command's process just before `execve`.
pub(crate) fn install(program: &[libc::sock_filter]) -> std::io::Result<()> {
    let len = u16::try_from(program.len()).map_err(std::io::Error::other)?;
    let prog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points to `len` valid instructions that outlive the call; the kernel copies
    // them. Neither nix nor rustix wraps seccomp(2).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    if ret == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_compiles_and_names_only_calls_this_kernel_table_knows() {
        let fd = compile().expect("compile");
        let program = read_program(fd).expect("read back");
        assert!(
            program.len() > DENIED.len(),
            "{} instructions",
            program.len()
        );
    }

    #[test]
    fn inits_reading_the_program_at_the_same_time_each_read_it_whole() {
        // Every init holds a duplicate of one descriptor: one shared file offset.
        let fd = compile().expect("compile");
        let whole = read_program(fd.try_clone().expect("dup"))
            .expect("read back")
            .len();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let fd = &fd;
                s.spawn(move || {
                    for _ in 0..20_000 {
                        let read = read_program(fd.try_clone().expect("dup"));
                        assert_eq!(
                            read.map(|p| p.len()).map_err(|e| e.to_string()),
                            Ok(whole),
                            "a concurrent read saw another read's offset"
                        );
                    }
                });
            }
        });
    }

    #[test]
    fn every_denied_call_has_a_reason_and_appears_once() {
        let mut names: Vec<&str> = DENIED.iter().map(|(n, _)| *n).collect();
        assert!(DENIED.iter().all(|(_, why)| !why.is_empty()));
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a call is listed twice");
    }
}
