//! Resource limits against the real kernel: memory, CPU, disk IO and pids.
//!
//! Bounds are what the limit guarantees (upper bounds, the kernel's own counters); lower bounds
//! are loose because the machines are shared and noisy.

mod common;

/// The limit tests measure rates and shares: they run one at a time, whatever the harness's
/// thread count, so that they are not each other's noisy neighbour.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

use std::time::Instant;

use common::{TESTPROG, exited, worker, worker_with, writable_scratch_dir};
use jobworker::{Bind, CgroupVersion, CommandSpec, JobState, Limits};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_detected_cgroup_backend_is_the_expected_one() {
    let w = worker().await;
    let detected = w.cgroup_version();
    match std::env::var("JOBWORKER_EXPECT_CGROUP").as_deref() {
        Ok("v1") => assert_eq!(detected, CgroupVersion::V1),
        Ok("v2") => assert_eq!(detected, CgroupVersion::V2),
        Ok(other) => panic!("JOBWORKER_EXPECT_CGROUP must be v1 or v2, not {other:?}"),
        // Without an expectation, at least agree with the filesystem.
        Err(_) => {
            let v2 = nix::sys::statfs::statfs("/sys/fs/cgroup")
                .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
                .unwrap_or(false);
            assert_eq!(detected == CgroupVersion::V2, v2);
        }
    }
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_is_oom_killed_and_reported_so() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let w = worker().await;
    let limits = Limits {
        memory_bytes: Some(32 << 20),
        ..Limits::default()
    };
    let (_, status) = w
        .run_with(CommandSpec::new(TESTPROG, ["hog", "128"]), limits)
        .await;
    assert_eq!(status.state, JobState::OomKilled, "status: {status:?}");
    let peak = status
        .usage
        .and_then(|u| u.peak_memory_bytes)
        .expect("peak memory reported");
    eprintln!(
        "measured: 128 MiB hog under 32 MiB limit -> {:?}, peak {} KiB",
        status.state,
        peak >> 10
    );
    assert!(
        peak <= 33 << 20,
        "peak memory {peak} above the 32 MiB limit"
    );
    // Within the limit, the same program is fine.
    let (out, status) = w
        .run_with(CommandSpec::new(TESTPROG, ["hog", "8"]), limits)
        .await;
    assert_eq!(exited(&status), 0, "8 MiB under a 32 MiB limit: {out}");
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_cpu_limits_a_busy_loop_to_half_a_cpu() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let w = worker().await;
    let limits = Limits {
        cpus: Some(0.5),
        ..Limits::default()
    };
    let started = Instant::now();
    let (_, status) = w
        .run_with(CommandSpec::new(TESTPROG, ["spin", "4"]), limits)
        .await;
    let wall = started.elapsed().as_secs_f64();
    assert_eq!(exited(&status), 0);
    let cpu = status.usage.expect("usage").cpu_time.as_secs_f64();
    let share = cpu / wall;
    eprintln!("measured: cpu limit 0.5 -> {share:.3} CPU ({cpu:.2} s CPU in {wall:.2} s wall)");
    assert!(
        (0.35..=0.65).contains(&share),
        "a busy loop under a 0.5 CPU limit used {share:.2} CPU ({cpu:.2} s CPU in {wall:.2} s)"
    );
    w.finish().await;
}

fn rate_from(out: &str) -> f64 {
    out.lines()
        .find_map(|l| l.strip_prefix("bytes_per_sec "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rate in {out:?}"))
}

async fn measured_write_rate(mode: &str, limit: u64, mib: u64) -> f64 {
    // A directory on a block device, which the operator binds writable into every job's view.
    let dir = writable_scratch_dir();
    let w = worker_with(|c| {
        c.sandbox.binds.push(Bind {
            source: dir.path().to_owned(),
            target: "/scratch".into(),
            writable: true,
        })
    })
    .await;
    let spec = CommandSpec {
        working_dir: Some("/scratch".into()),
        ..CommandSpec::new(TESTPROG, [mode, "/scratch/data", &mib.to_string()])
    };
    let limits = Limits {
        io_write_bps: Some(limit),
        ..Limits::default()
    };
    let (out, status) = w.run_with(spec, limits).await;
    assert_eq!(exited(&status), 0, "writer failed: {out}");
    w.finish().await;
    rate_from(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_writes_are_throttled_to_the_write_bps_limit() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let limit = 8u64 << 20;
    let rate = measured_write_rate("write-direct", limit, 32).await;
    let ratio = rate / limit as f64;
    eprintln!(
        "measured: O_DIRECT write at 8 MiB/s limit -> {:.2} MiB/s (ratio {ratio:.3})",
        rate / (1 << 20) as f64
    );
    assert!(
        (0.75..=1.25).contains(&ratio),
        "O_DIRECT writes ran at {:.2} MiB/s under an 8 MiB/s limit (ratio {ratio:.2})",
        rate / (1 << 20) as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_writes_with_fsync_are_throttled_to_the_write_bps_limit() {
    let _serial = ONE_AT_A_TIME.lock().await;
    // fsync makes the writer itself submit the IO, so even v1 blkio (which cannot see the
    // flusher's writeback) charges it to the job.
    let limit = 8u64 << 20;
    let rate = measured_write_rate("write-fsync", limit, 32).await;
    let ratio = rate / limit as f64;
    eprintln!(
        "measured: buffered+fsync write at 8 MiB/s limit -> {:.2} MiB/s (ratio {ratio:.3})",
        rate / (1 << 20) as f64
    );
    assert!(
        (0.75..=1.25).contains(&ratio),
        "buffered+fsync writes ran at {:.2} MiB/s under an 8 MiB/s limit (ratio {ratio:.2})",
        rate / (1 << 20) as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_loop_stops_at_the_pids_limit() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let w = worker().await;
    let limits = Limits {
        pids: Some(20),
        ..Limits::default()
    };
    let (out, status) = w
        .run_with(CommandSpec::new(TESTPROG, ["fork", "200"]), limits)
        .await;
    assert_eq!(exited(&status), 0, "output: {out}");
    let fields: Vec<&str> = out.split_whitespace().collect();
    let forked: u32 = fields[1].parse().expect("count");
    let errno: i32 = fields[3].parse().expect("errno");
    eprintln!("measured: fork loop under pids 20 -> {forked} children, then errno {errno}");
    // 20 pids: the init, the fork loop itself, and at most 18 children.
    assert!(
        forked <= 18,
        "forked {forked} children under a pids limit of 20"
    );
    assert_eq!(
        errno,
        libc::EAGAIN,
        "fork must fail with EAGAIN at the limit: {out}"
    );
    w.finish().await;
}
