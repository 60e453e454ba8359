//! Start, status, stop, list and clean-up, including every way a start can fail.

mod common;

use std::time::{Duration, Instant};

use common::{TESTPROG, processes_with, sh, worker, worker_with};
use jobworker::{CommandSpec, Error, JobState, Limits};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_exit_code_signal_times_and_usage() {
    let w = worker().await;
    let (_, status) = w.run_with(sh("exit 3"), Limits::default()).await;
    assert_eq!(status.state, JobState::Exited(3));
    assert!(!status.stop_requested);
    let ended = status.ended_at.expect("ended_at");
    assert!(ended >= status.started_at);
    assert!(status.usage.is_some(), "usage once ended");
    assert_eq!(status.owner, "tester");
    assert_eq!(status.spec.program, "/bin/sh");
    assert_eq!(status.spec.args, ["-c", "exit 3"]);

    let (_, status) = w.run_with(sh("kill -USR1 $$"), Limits::default()).await;
    assert_eq!(status.state, JobState::Signaled(libc::SIGUSR1));

    let id = w.start("/bin/sleep", &["1000"]).await;
    let status = w.status(id).expect("status");
    assert_eq!(status.state, JobState::Running);
    assert!(status.ended_at.is_none() && status.usage.is_none());
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_leaves_no_process_of_the_job_behind() {
    let w = worker().await;
    let marker = "1000.123456";
    let id = w
        .start_with(
            sh(&format!(
                "sleep {marker} & sleep {marker} & sleep {marker} & echo ready; wait"
            )),
            Limits::default(),
        )
        .await;
    w.wait_for_line(id, "ready").await;
    // Count the sleeps themselves (whether the shell execs the last one depends on the shell),
    // once each has been exec'd: "ready" can come before the forks have.
    let sleeps = || {
        processes_with(marker)
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while sleeps() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sleeps(), 3, "the job's three sleeps before the stop");
    let status = w.stop(id).await.expect("stop");
    assert!(status.stop_requested);
    assert_ne!(status.state, JobState::Running);
    assert_eq!(
        processes_with(marker),
        Vec::<u32>::new(),
        "processes left after stop"
    );
    assert!(
        w.job_cgroups().is_empty(),
        "cgroups left after stop: {:?}",
        w.job_cgroups()
    );
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_ends_by_sigterm_within_the_grace_period() {
    let w = worker_with(|c| c.stop_grace = Duration::from_secs(20)).await;
    let id = w.start("/bin/sleep", &["1000"]).await;
    let started = Instant::now();
    let status = w.stop(id).await.expect("stop");
    assert_eq!(status.state, JobState::Signaled(libc::SIGTERM));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "stop took {:?}",
        started.elapsed()
    );
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_ignoring_sigterm_is_killed_after_the_grace_period() {
    let grace = Duration::from_millis(1500);
    let w = worker_with(|c| c.stop_grace = grace).await;
    let id = w.start(TESTPROG, &["ignore-term"]).await;
    w.wait_for_line(id, "ready").await;
    let started = Instant::now();
    let status = w.stop(id).await.expect("stop");
    let took = started.elapsed();
    // The init SIGKILLs every process of the job at the end of the grace period.
    assert_eq!(status.state, JobState::Signaled(libc::SIGKILL));
    assert!(status.stop_requested);
    assert!(
        took >= grace,
        "SIGKILL came before the grace period ended: {took:?}"
    );
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_an_ended_job_is_not_an_error_and_changes_nothing() {
    let w = worker().await;
    let (_, before) = w.run("/bin/true", &[]).await;
    let after = w.stop(before.id).await.expect("stop of an ended job");
    assert_eq!(after, before);
    assert!(!after.stop_requested);
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_then_stop_a_hundred_times_leaves_nothing() {
    let w = worker_with(|c| c.stop_grace = Duration::from_secs(5)).await;
    let marker = "1000.654321";
    let pidfds_before = pidfds();
    for i in 0..100 {
        let id = w
            .worker
            .start(
                "tester",
                CommandSpec::new("/bin/sleep", [marker]),
                Limits::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("start #{i}: {e}"));
        let status = w
            .stop(id)
            .await
            .unwrap_or_else(|e| panic!("stop #{i}: {e}"));
        assert_ne!(status.state, JobState::Running, "#{i}");
    }
    assert_eq!(processes_with(marker), Vec::<u32>::new());
    assert!(
        w.job_cgroups().is_empty(),
        "cgroups left: {:?}",
        w.job_cgroups()
    );
    assert_eq!(w.all(None).len(), 100);
    // An ended job holds no descriptor in the worker (its pidfd is closed when it ends): with
    // one per ended job, 100 more. Other tests' running jobs hold a few at a time.
    let grown = pidfds().saturating_sub(pidfds_before);
    assert!(grown < 50, "{grown} more pidfds after 100 ended jobs");
    w.finish().await;
}

/// Pidfds this process holds.
fn pidfds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains("pidfd"))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_returns_all_jobs_or_one_owners() {
    let w = worker().await;
    let a = w
        .worker
        .start(
            "alice",
            CommandSpec::new("/bin/true", [""; 0]),
            Limits::default(),
        )
        .await
        .expect("start");
    let b = w
        .worker
        .start(
            "bob",
            CommandSpec::new("/bin/true", [""; 0]),
            Limits::default(),
        )
        .await
        .expect("start");
    let all: Vec<_> = w.all(None).into_iter().map(|s| s.id).collect();
    assert_eq!(all.len(), 2);
    assert!(all.contains(&a) && all.contains(&b));
    let alice: Vec<_> = w.all(Some("alice")).into_iter().map(|s| s.id).collect();
    assert_eq!(alice, [a]);
    assert!(w.all(Some("carol")).is_empty());
    w.finish().await;
}

/// Asserts the start failed as expected and left no job, log or cgroup.
async fn assert_start_fails(
    w: &common::TestWorker,
    spec: CommandSpec,
    limits: Limits,
    expect: &str,
) {
    let program = spec.program.clone();
    let err = w
        .worker
        .start("tester", spec, limits)
        .await
        .expect_err("start must fail");
    let text = err.to_string();
    assert!(
        text.contains(expect),
        "start of {program:?}: expected an error containing {expect:?}, got {text:?}"
    );
    assert!(w.all(None).is_empty(), "a failed start left a job");
    assert!(
        w.job_dirs().is_empty(),
        "a failed start left files: {:?}",
        w.job_dirs()
    );
    assert!(
        w.job_cgroups().is_empty(),
        "a failed start left a cgroup: {:?}",
        w.job_cgroups()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_failures_name_the_cause_and_leave_nothing() {
    let w = worker().await;
    let none = Limits::default();
    let cases: [(CommandSpec, &str); 6] = [
        (
            CommandSpec::new("/nonexistent/prog", [""; 0]),
            "\"/nonexistent/prog\": no such file in the job's filesystem view",
        ),
        (
            CommandSpec::new("no-such-command-xyz", [""; 0]),
            "executable not found in PATH",
        ),
        (
            CommandSpec::new("/etc/passwd", [""; 0]),
            "permission denied",
        ),
        (CommandSpec::new("/tmp", [""; 0]), "is a directory"),
        (
            CommandSpec {
                working_dir: Some("/nonexistent-dir".into()),
                ..CommandSpec::new("/bin/true", [""; 0])
            },
            "working directory /nonexistent-dir does not exist in the job's filesystem view",
        ),
        (CommandSpec::new("", [""; 0]), "the command is empty"),
    ];
    for (spec, expect) in cases {
        assert_start_fails(&w, spec, none, expect).await;
    }
    let err = w
        .worker
        .start("t", CommandSpec::new("", [""; 0]), none)
        .await
        .expect_err("empty");
    assert!(matches!(err, Error::InvalidCommand(_)));
    let err = w
        .worker
        .start("t", CommandSpec::new("/etc/passwd", [""; 0]), none)
        .await
        .expect_err("not exec");
    assert!(matches!(err, Error::Spawn { .. }), "{err:?}");
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_limits_are_rejected_and_leave_nothing() {
    let w = worker().await;
    let spec = || CommandSpec::new("/bin/true", [""; 0]);
    let cases = [
        (
            Limits {
                cpus: Some(0.0),
                ..Limits::default()
            },
            "cpus",
        ),
        (
            Limits {
                cpus: Some(-1.0),
                ..Limits::default()
            },
            "cpus",
        ),
        (
            Limits {
                cpus: Some(f64::NAN),
                ..Limits::default()
            },
            "cpus",
        ),
        (
            Limits {
                cpus: Some(1e9),
                ..Limits::default()
            },
            "cpus",
        ),
        (
            Limits {
                memory_bytes: Some(0),
                ..Limits::default()
            },
            "memory",
        ),
        (
            Limits {
                memory_bytes: Some(1024),
                ..Limits::default()
            },
            "memory",
        ),
        (
            Limits {
                pids: Some(0),
                ..Limits::default()
            },
            "pids",
        ),
        (
            Limits {
                pids: Some(1),
                ..Limits::default()
            },
            "pids",
        ),
        (
            Limits {
                io_write_bps: Some(0),
                ..Limits::default()
            },
            "io write bps",
        ),
        (
            Limits {
                io_read_iops: Some(0),
                ..Limits::default()
            },
            "io read iops",
        ),
        (
            Limits {
                memory_bytes: Some(u64::MAX),
                ..Limits::default()
            },
            // However far above, the caller is told the maximum it can have.
            "above this node's maximum of",
        ),
        (
            Limits {
                pids: Some(5_000_000),
                ..Limits::default()
            },
            "above this node's maximum of",
        ),
        (
            Limits {
                cpus: Some(512.0),
                ..Limits::default()
            },
            "above this node's maximum",
        ),
        (
            Limits {
                memory_bytes: Some(1 << 61),
                ..Limits::default()
            },
            "above this node's maximum",
        ),
    ];
    for (limits, expect) in cases {
        let err = w
            .worker
            .start("t", spec(), limits)
            .await
            .expect_err("invalid limit");
        assert!(
            matches!(err, Error::InvalidLimit(_)),
            "{limits:?} gave {err:?}"
        );
        assert_start_fails(&w, spec(), limits, expect).await;
    }
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_limits_are_refused_when_the_view_has_no_block_device() {
    // A view of nothing but the (tmpfs-backed) private space: nothing to throttle.
    let w = worker_with(|c| {
        c.sandbox.ro_paths.clear();
        c.sandbox.binds.clear();
    })
    .await;
    let limits = Limits {
        io_write_bps: Some(1 << 20),
        ..Limits::default()
    };
    let err = w
        .worker
        .start("t", CommandSpec::new("/bin/true", [""; 0]), limits)
        .await
        .expect_err("no block device");
    assert!(matches!(err, Error::InvalidLimit(_)), "{err:?}");
    assert!(err.to_string().contains("block device"), "{err}");
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_line_that_does_not_fit_execve_is_an_invalid_argument() {
    let w = worker().await;
    let huge = "x".repeat(200 * 1024);
    let err = w
        .worker
        .start(
            "t",
            CommandSpec::new("/bin/echo", [huge]),
            Limits::default(),
        )
        .await
        .expect_err("too long");
    assert!(matches!(err, Error::InvalidCommand(_)), "{err:?}");
    assert!(err.to_string().contains("131071"), "{err}");
    w.finish().await;
}
