//! The job's own filesystem view, assembled in its mount namespace and pivoted into.
//!
//! ```text
//! /                 tmpfs, read-only once assembled
//! /usr /etc ...     read-only binds of the allow-listed host paths (symlinks such as
//!                   /bin -> usr/bin are recreated as symlinks)
//! /tmp /var/tmp     the job's private space: one tmpfs shared by these four places, with one
//! /run /dev/shm     size cap (3/4 of the job's memory limit); its pages are charged to the
//!                   job's memory cgroup. /run belongs to the job's user, the rest is 1777.
//! /dev              null zero full random urandom tty (binds of the host's nodes), a private
//!                   devpts (/dev/pts, /dev/ptmx), fd/std* symlinks
//! /proc             a fresh procfs of the job's PID namespace, with Docker's masked and
//!                   read-only paths
//! /sys              a fresh sysfs (only the job's network devices), read-only, firmware and
//!                   powercap masked
//! extra binds       the operator's --bind-ro/--bind-rw
//! ```
//!
//! Nothing else of the host is reachable: not the daemon's state directory, not `/root`,
//! `/home` or `/var/lib`, not a host socket under `/run` or `/tmp` (a read-only mount does not
//! stop `connect(2)` to a socket; not being in the view does). Every mount is made after the
//! whole tree was made private, so none of it propagates to the host.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::protocol::{Bind, InitArgs};

/// Files under /proc that Docker masks (bind /dev/null over them): kernel memory, keys, timer
/// and scheduler internals.
const PROC_MASKED_FILES: [&str; 6] = [
    "kcore",
    "keys",
    "latency_stats",
    "timer_list",
    "timer_stats",
    "sched_debug",
];
/// Directories under /proc that Docker masks (an empty read-only tmpfs over them).
const PROC_MASKED_DIRS: [&str; 2] = ["acpi", "scsi"];
/// Paths under /proc that Docker makes read-only.
const PROC_READ_ONLY: [&str; 5] = ["bus", "fs", "irq", "sys", "sysrq-trigger"];
/// Directories under /sys masked with an empty read-only tmpfs.
const SYS_MASKED_DIRS: [&str; 2] = ["firmware", "devices/virtual/powercap"];
/// Host device nodes bound into the job's /dev.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
/// Symlinks of the job's /dev.
const DEV_LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// Assembles the view on `args.root_mount` and makes it the root. Any failure leaves the init
/// to report and exit; its mount namespace, and everything mounted here, dies with it.
pub(super) fn build(args: &InitArgs) -> Result<(), Errno> {
    // Private propagation first, or every mount below would show up on the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    let root = args.root_mount.as_path();
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount_fs(
        "tmpfs",
        root,
        nosuid_nodev,
        Some("mode=0755,size=1m,nr_inodes=4096"),
    )?;
    let mut read_only = Vec::new();
    for path in &args.ro_paths {
        add_host_path(root, path, path, false, &mut read_only)?;
    }
    dev(root)?;
    private_space(root, args)?;
    for Bind {
        source,
        target,
        writable,
    } in &args.binds
    {
        add_host_path(root, source, target, *writable, &mut read_only)?;
    }
    // Recursive binds bring the host's submounts along, still writable: make them read-only.
    remount_submounts_read_only(&read_only)?;
    for hidden in &args.hidden {
        let at = inside(root, hidden);
        if at.is_dir() {
            mount_fs(
                "tmpfs",
                &at,
                nosuid_nodev | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
                Some("mode=0000,size=4k,nr_inodes=1"),
            )?;
        }
    }
    proc(root)?;
    sys(root)?;
    // Nothing may be created at the top of the view.
    remount(root, MsFlags::MS_RDONLY | nosuid_nodev, None)?;
    pivot(root)
}

/// Mounts a new filesystem of type `fstype` (its source name is the type too) at `target`.
fn mount_fs(fstype: &str, target: &Path, flags: MsFlags, data: Option<&str>) -> Result<(), Errno> {
    mount(Some(fstype), target, Some(fstype), flags, data)
}

/// Binds `source` at `target`.
fn bind(source: &Path, target: &Path, flags: MsFlags) -> Result<(), Errno> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | flags,
        None::<&str>,
    )
}

/// Changes the flags of the mount at `target`.
fn remount(target: &Path, flags: MsFlags, data: Option<&str>) -> Result<(), Errno> {
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_REMOUNT | flags,
        data,
    )
}

/// `path` (absolute, in the job's view) under the root being assembled.
fn inside(root: &Path, path: &Path) -> PathBuf {
    let mut at = root.to_path_buf();
    at.extend(
        path.components()
            .filter(|c| matches!(c, Component::Normal(_))),
    );
    at
}

fn io_errno(e: io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Creates the missing directories of `path` with mode 0755. Only ever called for paths on the
/// tmpfs mounts made here: the worker refuses bind targets inside another bind, and every bind
/// is read-only before the next mount point is made, so this cannot write to a host filesystem.
fn make_dirs(path: &Path) -> Result<(), Errno> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(io_errno)
}

/// Makes host `source` visible at `target` in the view: a directory or file is bound
/// (read-only unless `writable`), a symlink is recreated as a symlink. A missing source is
/// skipped (the allow-list names paths that not every host has, such as /lib32).
fn add_host_path(
    root: &Path,
    source: &Path,
    target: &Path,
    writable: bool,
    read_only: &mut Vec<PathBuf>,
) -> Result<(), Errno> {
    let meta = match fs::symlink_metadata(source) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_errno(e)),
    };
    let at = inside(root, target);
    if let Some(parent) = at.parent() {
        make_dirs(parent)?;
    }
    if meta.file_type().is_symlink() {
        let link = fs::read_link(source).map_err(io_errno)?;
        return std::os::unix::fs::symlink(link, &at).map_err(io_errno);
    }
    if meta.is_dir() {
        make_dirs(&at)?;
    } else {
        fs::File::create(&at).map_err(io_errno)?;
    }
    bind(source, &at, MsFlags::MS_REC)?;
    if !writable {
        remount_read_only(&at)?;
        read_only.push(at);
    }
    Ok(())
}

/// Makes the bind mount at `at` read-only (and nosuid, nodev). A bind mount's flags are its
/// own, so this leaves the host's mount as it was.
fn remount_read_only(at: &Path) -> Result<(), Errno> {
    remount(
        at,
        MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None,
    )
}

/// Every mount below one of `tops` (submounts brought in by a recursive bind) made read-only.
fn remount_submounts_read_only(tops: &[PathBuf]) -> Result<(), Errno> {
    if tops.is_empty() {
        return Ok(());
    }
    let info = fs::read("/proc/self/mountinfo").map_err(io_errno)?;
    for line in info.split(|&b| b == b'\n') {
        // "ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS ..."; the mount point is octal-escaped.
        let Some(field) = line.split(|&b| b == b' ').nth(4) else {
            continue;
        };
        let point = PathBuf::from(OsStr::from_bytes(&unescape(field)));
        let options = line.split(|&b| b == b' ').nth(5).unwrap_or(b"");
        let is_rw = options.split(|&b| b == b',').any(|o| o == b"rw");
        if is_rw
            && tops
                .iter()
                .any(|top| point.starts_with(top) && point != *top)
        {
            remount_read_only(&point)?;
        }
    }
    Ok(())
}

/// Undoes mountinfo's escaping of space, tab, newline and backslash as `\NNN` (octal).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let code = field
            .get(i + 1..i + 4)
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match code {
            Some(byte) if field[i] == b'\\' => {
                out.push(byte);
                i += 4;
            }
            _ => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// The job's private writable space: one tmpfs, so that `/tmp`, `/var/tmp`, `/run` and
/// `/dev/shm` share one size cap (a job cannot get around it by filling each), bound at those
/// four places. It is mounted on a staging directory, its four directories are bound, and the
/// staging mount is detached again (the binds keep the filesystem alive).
fn private_space(root: &Path, args: &InitArgs) -> Result<(), Errno> {
    let stage = root.join(".private");
    make_dirs(&stage)?;
    mount_fs(
        "tmpfs",
        &stage,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&format!("mode=0755,size={}", args.tmpfs_bytes.max(1 << 20))),
    )?;
    let owner = (
        Some(nix::unistd::Uid::from_raw(args.uid)),
        Some(nix::unistd::Gid::from_raw(args.gid)),
    );
    for (name, target, mode, owned) in [
        ("tmp", "tmp", 0o1777, false),
        ("var-tmp", "var/tmp", 0o1777, false),
        ("run", "run", 0o755, true),
        ("shm", "dev/shm", 0o1777, false),
    ] {
        let dir = stage.join(name);
        fs::DirBuilder::new()
            .mode(mode)
            .create(&dir)
            .map_err(io_errno)?;
        // The mode without the umask's bits taken away.
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &dir,
            nix::sys::stat::Mode::from_bits_truncate(mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )?;
        if owned {
            nix::unistd::chown(&dir, owner.0, owner.1)?;
        }
        let at = root.join(target);
        make_dirs(&at)?;
        bind(&dir, &at, MsFlags::empty())?;
    }
    umount2(&stage, MntFlags::MNT_DETACH)?;
    fs::remove_dir(&stage).map_err(io_errno)
}

/// A minimal /dev, as systemd's `PrivateDevices=` and bubblewrap's `--dev` make it. Its `shm`
/// is the mount point for part of the private space (see `private_space`): POSIX shared memory
/// lives there, which the IPC namespace does not cover.
fn dev(root: &Path) -> Result<(), Errno> {
    let dev = root.join("dev");
    make_dirs(&dev)?;
    // Device nodes are binds of the host's (each a mount of its own, so `nodev` on this tmpfs
    // does not affect them): no mknod, and no other device is reachable.
    mount_fs(
        "tmpfs",
        &dev,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k,nr_inodes=64"),
    )?;
    for name in DEVICES {
        let at = dev.join(name);
        fs::File::create(&at).map_err(io_errno)?;
        bind(&Path::new("/dev").join(name), &at, MsFlags::empty())?;
    }
    for (name, target) in DEV_LINKS {
        std::os::unix::fs::symlink(target, dev.join(name)).map_err(io_errno)?;
    }
    make_dirs(&dev.join("shm"))?;
    let pts = dev.join("pts");
    make_dirs(&pts)?;
    // A private devpts instance: the job's terminals only, none of the host's.
    mount_fs(
        "devpts",
        &pts,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    remount(
        &dev,
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k,nr_inodes=64"),
    )
}

/// A fresh /proc of the job's PID namespace (the init is its PID 1), with Docker's masks.
fn proc(root: &Path) -> Result<(), Errno> {
    let proc = root.join("proc");
    make_dirs(&proc)?;
    let hidden = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", &proc, hidden, None)?;
    for name in PROC_MASKED_FILES {
        let at = proc.join(name);
        if at.exists() {
            bind(Path::new("/dev/null"), &at, MsFlags::empty())?;
        }
    }
    for name in PROC_MASKED_DIRS {
        mask_dir(&proc.join(name))?;
    }
    for name in PROC_READ_ONLY {
        let at = proc.join(name);
        if at.exists() {
            bind(&at, &at, MsFlags::MS_REC)?;
            remount_read_only(&at)?;
        }
    }
    Ok(())
}

/// A fresh sysfs: it shows the network devices of the mounting namespace (only `lo`) and not
/// the host's cgroup tree. Read-only, firmware tables and energy counters masked.
fn sys(root: &Path) -> Result<(), Errno> {
    let sys = root.join("sys");
    make_dirs(&sys)?;
    mount_fs(
        "sysfs",
        &sys,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        None,
    )?;
    for name in SYS_MASKED_DIRS {
        mask_dir(&sys.join(name))?;
    }
    Ok(())
}

/// An empty read-only tmpfs over `at`, if it exists.
fn mask_dir(at: &Path) -> Result<(), Errno> {
    if !at.is_dir() {
        return Ok(());
    }
    mount_fs(
        "tmpfs",
        at,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        Some("size=4k,nr_inodes=1"),
    )
}

/// Makes `root` the root: `pivot_root(".", ".")` stacks the old root on top of the new one,
/// and detaching it leaves only the new (pivot_root(2) documents the idiom). Unlike `chroot`,
/// nothing of the old root remains reachable through `..` or open directories.
fn pivot(root: &Path) -> Result<(), Errno> {
    nix::unistd::chdir(root)?;
    nix::unistd::pivot_root(".", ".")?;
    umount2(".", MntFlags::MNT_DETACH)?;
    nix::unistd::chdir("/")
}
