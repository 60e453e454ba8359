//! The floors: the same work done the cheapest way this machine allows, measured in the same
//! run as the figure it bounds.
//!
//! - Process floors: create a process, exec `/bin/true`, reap it, with the same `clone3` the
//!   daemon uses (without flags it is a plain fork); the same in the five namespaces every job
//!   gets; the same also in a fresh cgroup per run with the start figure's limits (the kernel
//!   work of an isolated, limited start, without our daemon); and `bwrap` as the best-known
//!   sandboxing tool, with the same filesystem view our jobs get ([`bwrap_args`]). They are
//!   sampled a round at a time, so that a figure can interleave them with its own samples and a
//!   burst of other work on the machine hits all of them alike. The library's own sandbox,
//!   driven in-process, is the direct floor of [`crate::direct`].
//! - The byte-moving floor: one loopback TLS 1.3 connection with the daemon's and the client's
//!   rustls configurations, 64 KiB writes, no gRPC.

use std::ffi::{CString, c_char};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::server::Pki;
use crate::stats::{Samples, Transfer};

/// The namespaces the daemon gives every job.
const NAMESPACES: u64 = (libc::CLONE_NEWPID
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC) as u64;

/// The size of each write of the TLS floor, as the daemon's output chunks.
const CHUNK: usize = 64 * 1024;

/// The limits the start figure asks for, as each cgroup version spells them; a file is written
/// only where the hierarchy has it (e.g. `memory.memsw.*` needs swap accounting).
const LIMIT_FILES: [(&str, &str); 9] = [
    // v1
    ("cpu.cfs_period_us", "100000"),
    ("cpu.cfs_quota_us", "100000"),
    ("memory.limit_in_bytes", "268435456"),
    ("memory.memsw.limit_in_bytes", "268435456"),
    ("pids.max", "64"),
    // v2 (pids.max is shared)
    ("cpu.max", "100000 100000"),
    ("memory.max", "268435456"),
    ("memory.swap.max", "0"),
    // v1 without swap accounting, as the daemon does
    ("memory.swappiness", "0"),
];

/// The process floors, and their samples so far.
pub struct ProcessFloors {
    true_: Exec,
    /// `None` if bubblewrap is not installed.
    bwrap: Option<Exec>,
    /// The jobs' init program run without arguments (it refuses and exits 2): what its load
    /// and start-up cost, the second exec of every start. `None` when not asked for.
    init: Option<Exec>,
    /// The daemon's job cgroup parents (one per v1 hierarchy), and the limit files each has.
    cgroup_parents: Vec<(PathBuf, Vec<(&'static str, &'static str)>)>,
    plain: Vec<Duration>,
    namespaces: Vec<Duration>,
    cgroup: Vec<Duration>,
    bwrap_runs: Vec<Duration>,
    init_runs: Vec<Duration>,
}

/// What the process floors measured.
pub struct FloorSamples {
    /// fork+exec+wait.
    pub plain: Samples,
    /// The same in the five namespaces.
    pub namespaces: Samples,
    /// The same also in a fresh, limited cgroup.
    pub cgroup: Samples,
    /// The whole `bwrap` process with our jobs' view ([`bwrap_args`]); `None` if not installed.
    pub bwrap: Option<Samples>,
    /// fork+exec+wait of the init program alone; `None` if not asked for.
    pub init: Option<Samples>,
}

impl ProcessFloors {
    /// Prepares the floors; the cgroup floor uses `cgroup_parents` (the daemon's), so that it
    /// works in the same hierarchies with the same controllers. With `init`, the jobs' init
    /// program is sampled too.
    pub fn new(cgroup_parents: &[PathBuf], init: Option<&Path>) -> anyhow::Result<ProcessFloors> {
        ensure!(
            !cgroup_parents.is_empty(),
            "the daemon reported no cgroup parents"
        );
        let bwrap = match find_in_path("bwrap") {
            Some(path) => {
                let program = path.to_str().context("the path of bwrap is not UTF-8")?;
                let args = bwrap_args()?;
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                Some(Exec::new(program, &args)?)
            }
            None => None,
        };
        let cgroup_parents = cgroup_parents
            .iter()
            .map(|parent| (parent.clone(), limit_files(parent)))
            .collect();
        let init = match init {
            Some(path) => {
                let program = path
                    .to_str()
                    .context("the init program's path is not UTF-8")?;
                let mut exec = Exec::new(program, &[])?;
                // Run under another name it is not an init: it says so on stderr and exits 2.
                exec.exit_code = 2;
                exec.stderr = Some(File::options().write(true).open("/dev/null")?);
                Some(exec)
            }
            None => None,
        };
        Ok(ProcessFloors {
            true_: Exec::new("/bin/true", &[])?,
            bwrap,
            init,
            cgroup_parents,
            plain: Vec::new(),
            namespaces: Vec::new(),
            cgroup: Vec::new(),
            bwrap_runs: Vec::new(),
            init_runs: Vec::new(),
        })
    }

    /// The samples taken.
    pub fn finish(self) -> FloorSamples {
        FloorSamples {
            plain: Samples::new(self.plain),
            namespaces: Samples::new(self.namespaces),
            cgroup: Samples::new(self.cgroup),
            bwrap: self.bwrap.map(|_| Samples::new(self.bwrap_runs)),
            init: self.init.map(|_| Samples::new(self.init_runs)),
        }
    }

    /// One run of every floor; the times are kept only if `keep` (false while warming up).
    pub fn sample(&mut self, round: usize, keep: bool) -> anyhow::Result<()> {
        let plain = self.true_.run(0, &[])?;
        let namespaces = self.true_.run(NAMESPACES, &[])?;
        let cgroup = self.in_new_cgroups(round)?;
        let bwrap = self
            .bwrap
            .as_ref()
            .map(|bwrap| bwrap.run(0, &[]))
            .transpose()?;
        let init = self
            .init
            .as_ref()
            .map(|init| init.run(0, &[]))
            .transpose()?;
        if keep {
            self.plain.push(plain);
            self.namespaces.push(namespaces);
            self.cgroup.push(cgroup);
            self.bwrap_runs.extend(bwrap);
            self.init_runs.extend(init);
        }
        Ok(())
    }

    /// Only the kernel's floors, for figures that need no more: plain fork+exec, the same in
    /// the namespaces, and also in fresh cgroups. Returns them in that order.
    pub fn sample_kernel(&mut self, round: usize) -> anyhow::Result<[Duration; 3]> {
        let plain = self.true_.run(0, &[])?;
        let namespaces = self.true_.run(NAMESPACES, &[])?;
        let cgroup = self.in_new_cgroups(round)?;
        Ok([plain, namespaces, cgroup])
    }

    /// `/bin/true` in the namespaces and in a fresh cgroup in every hierarchy, made as the
    /// daemon makes a job's: mkdir, limits, the child joins before exec. Timed from the first
    /// mkdir to the reaping; the removal is not timed (the daemon removes a job's cgroup after
    /// the job ended, off the Start path).
    fn in_new_cgroups(&self, round: usize) -> anyhow::Result<Duration> {
        let name = format!("floor-{}-{round}", std::process::id());
        let dirs: Vec<PathBuf> = self
            .cgroup_parents
            .iter()
            .map(|(parent, _)| parent.join(&name))
            .collect();
        let timed = self.join_new_cgroups(&dirs);
        // Even after a failure: nothing is left behind.
        let removed = dirs.iter().try_for_each(|dir| remove_cgroup(dir));
        let elapsed = timed?;
        removed?;
        Ok(elapsed)
    }

    fn join_new_cgroups(&self, dirs: &[PathBuf]) -> anyhow::Result<Duration> {
        let began = Instant::now();
        let mut procs = Vec::with_capacity(dirs.len());
        for (dir, (_, files)) in dirs.iter().zip(&self.cgroup_parents) {
            std::fs::create_dir(dir)
                .with_context(|| format!("cannot create cgroup {}", dir.display()))?;
            for (file, value) in files {
                write_file(&dir.join(file), value)?;
            }
            let path = dir.join("cgroup.procs");
            procs.push(
                File::options()
                    .write(true)
                    .open(&path)
                    .with_context(|| format!("cannot open {}", path.display()))?,
            );
        }
        let fds: Vec<RawFd> = procs.iter().map(AsRawFd::as_raw_fd).collect();
        self.true_.run(NAMESPACES, &fds)?;
        Ok(began.elapsed())
    }
}

/// bubblewrap's arguments for the view a job gets by default: every new namespace, the
/// daemon's default read-only paths where they exist (a symlink such as `/bin -> usr/bin`
/// recreated as a symlink, as the job's init does), private tmpfs on `/tmp`, `/var/tmp`, `/run`
/// and `/dev/shm`, a minimal `/dev` and a fresh `/proc`; then `/bin/true`.
///
/// Left out, so bwrap does a little less than a job's init: the read-only `/sys`, the masked
/// `/proc` paths, the hostname, bringing `lo` up, the uid change and the syscall filter.
pub fn bwrap_args() -> anyhow::Result<Vec<String>> {
    let mut args: Vec<String> = ["--unshare-all", "--die-with-parent"]
        .map(str::to_owned)
        .to_vec();
    for path in jobworker::DEFAULT_RO_PATHS {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(path)
                .with_context(|| format!("cannot read the symlink {path}"))?;
            let target = target
                .to_str()
                .with_context(|| format!("the target of {path} is not UTF-8"))?;
            args.extend(["--symlink", target, path].map(str::to_owned));
        } else {
            args.extend(["--ro-bind", path, path].map(str::to_owned));
        }
    }
    args.extend(["--dev", "/dev", "--proc", "/proc"].map(str::to_owned));
    for tmpfs in ["/tmp", "/var/tmp", "/run", "/dev/shm"] {
        args.extend(["--tmpfs", tmpfs].map(str::to_owned));
    }
    args.push("/bin/true".to_owned());
    Ok(args)
}

/// The limit files a hierarchy has (a parent has the same ones as its children).
fn limit_files(parent: &Path) -> Vec<(&'static str, &'static str)> {
    let mut files: Vec<(&str, &str)> = LIMIT_FILES
        .iter()
        .copied()
        .filter(|(file, _)| parent.join(file).exists())
        .collect();
    // Swappiness is only v1's fallback where memsw is missing.
    if files
        .iter()
        .any(|(file, _)| *file == "memory.memsw.limit_in_bytes")
    {
        files.retain(|(file, _)| *file != "memory.swappiness");
    }
    files
}

fn write_file(path: &Path, value: &str) -> anyhow::Result<()> {
    File::options()
        .write(true)
        .open(path)
        .and_then(|mut file| file.write_all(value.as_bytes()))
        .with_context(|| format!("cannot write {value} to {}", path.display()))
}

/// Removes an empty cgroup; a reaped process may leave it a moment later, so EBUSY is retried.
fn remove_cgroup(dir: &Path) -> anyhow::Result<()> {
    for _ in 0..1000 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_micros(100));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot remove cgroup {}", dir.display()));
            }
        }
    }
    anyhow::bail!("cgroup {} stayed busy", dir.display())
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A program and its arguments, prepared for exec between clone and exec.
struct Exec {
    program: CString,
    argv: Vec<CString>,
    /// bwrap looks its command up in PATH; /bin/true ignores it.
    envp: Vec<CString>,
    /// The exit status that counts as success.
    exit_code: i32,
    /// Where the child's stderr goes, if not to ours.
    stderr: Option<File>,
}

/// The first version of the kernel's `struct clone_args` (64 bytes).
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

impl Exec {
    fn new(program: &str, args: &[&str]) -> anyhow::Result<Exec> {
        let c = |s: &str| CString::new(s).context("NUL byte in an argument");
        let argv = std::iter::once(program)
            .chain(args.iter().copied())
            .map(c)
            .collect::<anyhow::Result<_>>()?;
        Ok(Exec {
            program: c(program)?,
            argv,
            envp: vec![c("PATH=/usr/bin:/bin")?],
            exit_code: 0,
            stderr: None,
        })
    }

    /// One clone3 with `flags`, execve, waitpid; the child first writes "0" to each of
    /// `cgroup_procs` (which moves the writer into that cgroup), as the daemon's child does.
    /// Timed from before the clone to after the reaping.
    fn run(&self, flags: u64, cgroup_procs: &[RawFd]) -> anyhow::Result<Duration> {
        // Everything the child touches is prepared before the clock starts and the clone: in
        // a threaded process the child may only make async-signal-safe calls.
        let argv = null_terminated(&self.argv);
        let envp = null_terminated(&self.envp);
        let args = CloneArgs {
            flags,
            exit_signal: libc::SIGCHLD as u64,
            ..CloneArgs::default()
        };
        let began = Instant::now();
        // SAFETY: clone3 without CLONE_VM and without a stack behaves like fork; the child only
        // calls write, execve and _exit, all async-signal-safe, on memory prepared above.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        let stderr = self.stderr.as_ref().map(AsRawFd::as_raw_fd);
        if pid == 0 {
            // SAFETY: in the child, see above (dup2 is async-signal-safe too).
            unsafe {
                if let Some(fd) = stderr
                    && libc::dup2(fd, 2) == -1
                {
                    libc::_exit(125);
                }
                for &fd in cgroup_procs {
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        libc::_exit(126);
                    }
                }
                libc::execve(self.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
                libc::_exit(127);
            }
        }
        if pid == -1 {
            return Err(io::Error::last_os_error()).context("clone3 failed");
        }
        let pid = libc::pid_t::try_from(pid).context("clone3 returned an impossible pid")?;
        let status = wait(pid)?;
        let elapsed = began.elapsed();
        ensure!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == self.exit_code,
            "{:?} did not exit {} (wait status {status:#x}; 126: cannot join the cgroup)",
            self.program,
            self.exit_code
        );
        Ok(elapsed)
    }
}

fn null_terminated(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn wait(pid: libc::pid_t) -> anyhow::Result<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child; status is a plain int.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            return Ok(status);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error).context("waitpid failed");
        }
    }
}

/// `bytes` over one loopback TLS 1.3 connection with the daemon's and the client's rustls
/// configurations, written in 64 KiB pieces and counted by the reader.
///
/// Timed as the figures are: from the reader's request (one byte, after the handshake) to the
/// last byte.
pub async fn loopback_tls(pki: &Pki, bytes: u64) -> anyhow::Result<Transfer> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on loopback")?;
    let address = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(pki.server_config()?);
    let sender = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let mut tls = acceptor.accept(tcp).await?;
        let mut request = [0u8; 1];
        tls.read_exact(&mut request).await?;
        let chunk = vec![0u8; CHUNK];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            tls.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
        tls.shutdown().await?;
        anyhow::Ok(())
    });

    let connector = TlsConnector::from(pki.client_config()?);
    let tcp = TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    let server_name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let mut tls = connector
        .connect(server_name, tcp)
        .await
        .context("the floor's TLS handshake failed")?;
    let began = Instant::now();
    tls.write_all(b"?").await?;
    tls.flush().await?;
    let mut buffer = vec![0u8; CHUNK];
    let mut received = 0u64;
    loop {
        let n = tls.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        received += n as u64;
    }
    let elapsed = began.elapsed();
    sender.await.context("the floor's sender panicked")??;
    ensure!(
        received == bytes,
        "the TLS floor received {received} bytes, sent {bytes}"
    );
    Ok(Transfer {
        bytes: received,
        elapsed,
    })
}
