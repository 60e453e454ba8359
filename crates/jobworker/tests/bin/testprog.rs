//! Workloads for the library's tests, run as jobs. One static-ish binary so the same tests run on
//! the host and in the cgroup v2 guest (which has only busybox).
//!
//! Usage: `jobworker-testprog COMMAND [ARGS]`:
//! - `hog MIB`: allocate and touch MIB mebibytes, then exit 0.
//! - `hog-hold MIB`: allocate and touch MIB mebibytes, print "allocated MIB MiB", sleep forever.
//! - `spin SECS`: busy-loop for SECS seconds of wall time, then exit 0.
//! - `write-direct PATH MIB`: write MIB mebibytes with O_DIRECT|O_SYNC, print "bytes_per_sec N".
//! - `write-fsync PATH MIB`: buffered writes followed by fsync, print "bytes_per_sec N".
//! - `fork MAX`: fork up to MAX sleeping children, print "forked N errno E".
//! - `bytes REPS PAUSE_MS`: write REPS copies of the 256 byte values to stdout, pausing PAUSE_MS
//!   after each, then exit 0.
//! - `ignore-term`: ignore SIGTERM, print "ready", sleep forever.
//! - `pause`: print "ready", sleep forever.
//! - `probe`: try the system calls the job's filter refuses, and those it must allow; print one
//!   "NAME RESULT" line each (RESULT is "ok" or the errno's number).
//! - `threads N`: start N threads (pthread_create underneath), join them, print "threads N".
//! - `connect PATH`: connect to the UNIX socket at PATH; print "connected" or "errno E".

use std::io::Write;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let num = |i: usize| arg(i).parse::<u64>().unwrap_or_else(|_| usage());
    match arg(0) {
        "hog" => drop(hog(num(1))),
        "hog-hold" => {
            let blocks = hog(num(1));
            ready_and_hold(blocks)
        }
        "spin" => spin(Duration::from_secs(num(1))),
        "write-direct" => write(arg(1), num(2), true),
        "write-fsync" => write(arg(1), num(2), false),
        "fork" => fork(num(1)),
        "bytes" => bytes(num(1), Duration::from_millis(num(2))),
        "ignore-term" => {
            // SAFETY: setting a signal disposition.
            unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
            ready_and_sleep()
        }
        "pause" => ready_and_sleep(),
        "probe" => probe(),
        "threads" => threads(num(1)),
        "connect" => connect(arg(1)),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: jobworker-testprog hog|spin|write-direct|write-fsync|fork|bytes|ignore-term|pause|probe|threads|connect ..."
    );
    std::process::exit(2)
}

fn ready_and_sleep() -> ! {
    println!("ready");
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn hog(mib: u64) -> Vec<Vec<u8>> {
    let mut blocks = Vec::new();
    for _ in 0..mib {
        // Touch every page so the memory is really charged.
        blocks.push(vec![1u8; 1 << 20]);
    }
    println!("allocated {} MiB", blocks.len());
    let _ = std::io::stdout().flush();
    blocks
}

/// Keeps `blocks` allocated until killed.
fn ready_and_hold(blocks: Vec<Vec<u8>>) -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
        std::hint::black_box(&blocks);
    }
}

fn spin(wall: Duration) {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < wall {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    println!("{x}");
}

fn write(path: &str, mib: u64, direct: bool) {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = if direct {
        libc::O_DIRECT | libc::O_SYNC
    } else {
        0
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(flags)
        .open(path)
        .unwrap_or_else(|e| fail(&format!("open {path}: {e}")));
    // O_DIRECT needs an aligned buffer.
    let layout = std::alloc::Layout::from_size_align(1 << 20, 4096).unwrap_or_else(|_| usage());
    // SAFETY: a non-zero-sized layout; the buffer is freed at exit.
    let buf = unsafe {
        let ptr = std::alloc::alloc_zeroed(layout);
        if ptr.is_null() {
            fail("out of memory");
        }
        std::slice::from_raw_parts(ptr, 1 << 20)
    };
    let start = Instant::now();
    for _ in 0..mib {
        file.write_all(buf)
            .unwrap_or_else(|e| fail(&format!("write: {e}")));
    }
    if !direct {
        file.sync_all()
            .unwrap_or_else(|e| fail(&format!("fsync: {e}")));
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(path);
    println!("bytes_per_sec {}", ((mib << 20) as f64 / secs) as u64);
}

fn fork(max: u64) {
    let mut forked = 0;
    let mut errno = 0;
    for _ in 0..max {
        // SAFETY: the child only sleeps and exits (async-signal-safe calls).
        match unsafe { libc::fork() } {
            -1 => {
                errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                break;
            }
            0 => unsafe {
                libc::sleep(1000);
                libc::_exit(0);
            },
            _ => forked += 1,
        }
    }
    println!("forked {forked} errno {errno}");
}

fn bytes(reps: u64, pause: Duration) {
    let all: Vec<u8> = (0..=255u8).collect();
    let mut out = std::io::stdout().lock();
    for _ in 0..reps {
        out.write_all(&all)
            .unwrap_or_else(|e| fail(&format!("write: {e}")));
        if !pause.is_zero() {
            out.flush().unwrap_or_else(|e| fail(&format!("write: {e}")));
            std::thread::sleep(pause);
        }
    }
}

/// "ok" for a non-negative result, else the errno.
fn result(ret: i64) -> String {
    if ret >= 0 {
        "ok".to_owned()
    } else {
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(0)
            .to_string()
    }
}

fn probe() {
    let mut out = String::new();
    // The errno is read by `result` right after each call, before anything else can change it.
    let mut record = |name: &str, ret: i64| {
        let r = result(ret);
        out.push_str(&format!("{name} {r}\n"));
    };
    let null = std::ptr::null::<u8>();
    // SAFETY (each call below): probing system calls with arguments the kernel validates; none
    // writes to memory of this process.
    unsafe {
        record("unshare-user", libc::unshare(libc::CLONE_NEWUSER) as i64);
        record("unshare-net", libc::unshare(libc::CLONE_NEWNET) as i64);
        record(
            "mount",
            libc::mount(
                c"none".as_ptr(),
                c"/tmp".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            ) as i64,
        );
        record("setns", libc::setns(0, 0) as i64);
        record(
            "add_key",
            libc::syscall(
                libc::SYS_add_key,
                c"user".as_ptr(),
                c"jobworker-probe".as_ptr(),
                c"secret".as_ptr(),
                6usize,
                -4i32, // KEY_SPEC_USER_KEYRING
            ),
        );
        record("keyctl", libc::syscall(libc::SYS_keyctl, 0, -4i32, 0));
        record("bpf", libc::syscall(libc::SYS_bpf, 0, null, 0));
        record(
            "io_uring_setup",
            libc::syscall(libc::SYS_io_uring_setup, 1, null),
        );
        record(
            "perf_event_open",
            libc::syscall(libc::SYS_perf_event_open, null, 0, -1, -1, 0),
        );
        record("userfaultfd", libc::syscall(libc::SYS_userfaultfd, 0));
        record("clone3", libc::syscall(libc::SYS_clone3, null, 0));
        record(
            "socket-packet",
            libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) as i64,
        );
        record(
            "socket-vsock",
            libc::socket(40, libc::SOCK_STREAM, 0) as i64,
        );
        record(
            "socket-netfilter",
            libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_NETFILTER) as i64,
        );
        record(
            "socket-route",
            libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE) as i64,
        );
        record(
            "socket-inet",
            libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) as i64,
        );
        record(
            "socket-unix",
            libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) as i64,
        );
    }
    out.push_str(&format!("fork {}\n", fork_and_wait()));
    out.push_str(&format!(
        "thread {}\n",
        std::thread::spawn(|| "ok").join().unwrap_or("panicked")
    ));
    out.push_str(&format!("ptrace {}\n", ptrace_a_child()));
    print!("{out}");
}

fn fork_and_wait() -> String {
    // SAFETY: the child exits at once with an async-signal-safe call.
    match unsafe { libc::fork() } {
        -1 => result(-1),
        0 => unsafe { libc::_exit(7) },
        child => {
            let mut status = 0;
            // SAFETY: waiting for the child just forked.
            unsafe { libc::waitpid(child, &mut status, 0) };
            if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7 {
                "ok".into()
            } else {
                format!("status {status}")
            }
        }
    }
}

/// Attaches to a child, as a debugger would, and lets it go.
fn ptrace_a_child() -> String {
    // SAFETY: the child only pauses (async-signal-safe) until it is killed.
    let child = match unsafe { libc::fork() } {
        -1 => return result(-1),
        0 => unsafe {
            libc::pause();
            libc::_exit(0)
        },
        child => child,
    };
    // SAFETY: ptrace of our own child, then its end.
    unsafe {
        let attached = libc::ptrace(libc::PTRACE_ATTACH, child, 0, 0);
        let outcome = result(attached as i64);
        let mut status = 0;
        if attached == 0 {
            libc::waitpid(child, &mut status, 0);
            libc::ptrace(libc::PTRACE_DETACH, child, 0, 0);
        }
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, &mut status, 0);
        outcome
    }
}

fn threads(n: u64) {
    let handles: Vec<_> = (0..n).map(|i| std::thread::spawn(move || i)).collect();
    let joined = handles.into_iter().filter_map(|h| h.join().ok()).count();
    println!("threads {joined}");
}

fn connect(path: &str) {
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => println!("connected"),
        Err(e) => println!("errno {}", e.raw_os_error().unwrap_or(0)),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("jobworker-testprog: {msg}");
    std::process::exit(1)
}
