//! Workloads for the library's tests, run as jobs. One static-ish binary so the same tests run on
//! the host and in the cgroup v2 guest (which has only busybox).
//!
//! Usage: `jobworker-testprog COMMAND [ARGS]`:
//! - `hog MIB`: allocate and touch MIB mebibytes, then exit 0.
//! - `spin SECS`: busy-loop for SECS seconds of wall time, then exit 0.
//! - `write-direct PATH MIB`: write MIB mebibytes with O_DIRECT|O_SYNC, print "bytes_per_sec N".
//! - `write-fsync PATH MIB`: buffered writes followed by fsync, print "bytes_per_sec N".
//! - `fork MAX`: fork up to MAX sleeping children, print "forked N errno E".
//! - `bytes REPS PAUSE_MS`: write REPS copies of the 256 byte values to stdout, pausing PAUSE_MS
//!   after each, then exit 0.
//! - `ignore-term`: ignore SIGTERM, print "ready", sleep forever.
//! - `pause`: print "ready", sleep forever.

use std::io::Write;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let num = |i: usize| arg(i).parse::<u64>().unwrap_or_else(|_| usage());
    match arg(0) {
        "hog" => hog(num(1)),
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
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: jobworker-testprog hog|spin|write-direct|write-fsync|fork|bytes|ignore-term|pause ..."
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

fn hog(mib: u64) {
    let mut blocks = Vec::new();
    for _ in 0..mib {
        // Touch every page so the memory is really charged.
        blocks.push(vec![1u8; 1 << 20]);
    }
    println!("allocated {} MiB", blocks.len());
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

fn fail(msg: &str) -> ! {
    eprintln!("jobworker-testprog: {msg}");
    std::process::exit(1)
}
