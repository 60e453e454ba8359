//! An upgrade with `--live-restore`, end to end (issue 11): the daemon is SIGKILLed under three
//! jobs and a `jobctl logs` follower, a new daemon process takes over the same state directory
//! and address, and nothing is lost.
//!
//! Runs on the host (cgroup v1 here) and, through `scripts/test`, in the cgroup v2 guest.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Pki, jobctl, read_until, stderr_of, stdout_of, wait_with_timeout};
use jobworker_testkit::{Daemon, eventually_blocking, job_cgroups};

/// The ticker: a line every 100 ms until the test creates /data/stop, then a last line.
const TICKER: &str = "i=0; while [ ! -e /data/stop ]; do echo tick $i; i=$((i+1)); sleep 0.1; \
                      done; echo last";

/// `jobctl ARGS` against `daemon` as alice; asserts success (with the daemon's log if not).
fn ok(daemon: &Daemon, pki: &Pki, args: &[&str]) -> String {
    let out = jobctl()
        .env("JOBCTL_SERVER", daemon.address().to_string())
        .env("JOBCTL_PKI_DIR", pki.dir())
        .args(args)
        .output()
        .expect("run jobctl");
    assert_eq!(
        out.status.code(),
        Some(0),
        "jobctl {args:?}: {}\nthe daemon's log:\n{}",
        stderr_of(&out),
        daemon.log()
    );
    stdout_of(&out)
}

fn status(daemon: &Daemon, pki: &Pki, id: &str) -> serde_json::Value {
    let out = ok(daemon, pki, &["status", "--output", "json", id]);
    serde_json::from_str(&out).expect("status JSON")
}

/// Processes running as one of the uids of `range` (`FIRST-LAST`): jobs.
fn job_processes(range: &str) -> Vec<String> {
    let (first, last) = range.split_once('-').expect("FIRST-LAST");
    let (first, last): (u32, u32) = (first.parse().expect("first"), last.parse().expect("last"));
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let uid = text
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse::<u32>().ok());
        if uid.is_some_and(|u| (first..=last).contains(&u)) {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

#[test]
fn live_restore_survives_a_killed_daemon_with_a_follower_attached() {
    common::assert_root();
    let started = Instant::now();
    let pki = Pki::dev();
    let state = tempfile::tempdir().expect("state dir");
    let mut first = Daemon::options(pki.dir())
        .state_dir(state.path())
        .arg("--live-restore")
        .start();

    let start = |args: &[&str]| {
        let mut all = vec!["start", "--"];
        all.extend_from_slice(args);
        ok(&first, &pki, &all).trim_end().to_owned()
    };
    let ticker = start(&["sh", "-c", TICKER]);
    let sleeper = start(&["sleep", "600"]);
    // Ends when the test says so, through the read-only /data bind, while no daemon runs.
    let ender = start(&[
        "sh",
        "-c",
        "while [ ! -e /data/go ]; do sleep 0.05; done; echo bye; exit 3",
    ]);

    let mut follower = jobctl()
        .env("JOBCTL_SERVER", first.address().to_string())
        .env("JOBCTL_PKI_DIR", pki.dir())
        .args(["logs", &ticker])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn jobctl logs");
    let stdout = follower.stdout.take().expect("stdout");
    let (mut seen, mut stdout) = read_until(stdout, b"tick 3\n", Duration::from_secs(30));

    // The crash.
    first.kill();
    let crashed_at = started.elapsed();
    std::fs::write(first.data_dir().join("go"), b"").expect("tell the ender to end");
    let exit_record = state.path().join("jobs").join(&ender).join("exit");
    assert!(
        eventually_blocking(Duration::from_secs(30), || exit_record.exists()),
        "the job that ended without a daemon has no exit record at {}",
        exit_record.display()
    );
    assert!(
        kept_without_daemon(&ticker, state.path()),
        "the ticker must outlive its daemon"
    );

    // The upgrade: a new daemon process, same state directory, cgroup parent, uids, address.
    let second = Daemon::options(pki.dir())
        .state_dir(state.path())
        .cgroup_parent(first.cgroup_parent())
        .job_ids(first.job_ids())
        .listen(first.address())
        .arg("--live-restore")
        .start();
    let restarted_at = started.elapsed();
    // A few more ticks under the new daemon, then the ticker ends.
    for _ in 0..3 {
        assert!(
            kept_without_daemon(&ticker, state.path()),
            "the ticker ticks on"
        );
    }
    std::fs::write(first.data_dir().join("stop"), b"").expect("tell the ticker to end");

    let exit = wait_with_timeout(&mut follower, Duration::from_secs(120));
    stdout
        .read_to_end(&mut seen)
        .expect("the rest of the follower's output");
    let mut follower_stderr = String::new();
    follower
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut follower_stderr)
        .expect("the follower's stderr");
    assert_eq!(exit.code(), Some(0), "follower: {follower_stderr}");
    let ticks = seen.iter().filter(|b| **b == b'\n').count() - 1;
    let expected: String = (0..ticks)
        .map(|i| format!("tick {i}\n"))
        .chain(std::iter::once("last\n".to_owned()))
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&seen),
        expected,
        "the follower's output is every tick once, in order; its stderr: {follower_stderr}"
    );
    assert!(
        follower_stderr.contains("lost the connection") && follower_stderr.contains("reconnected"),
        "the follower says what happened: {follower_stderr:?}; it printed {:?}; crash at {:?}, \
         restart at {:?}\nthe first daemon's log:\n{}\nthe second's:\n{}",
        String::from_utf8_lossy(&seen),
        crashed_at,
        restarted_at,
        first.log(),
        second.log()
    );
    let replay = ok(&second, &pki, &["logs", &ticker]);
    assert_eq!(
        replay.as_bytes(),
        seen,
        "the follower's output is the job's, byte for byte"
    );

    let ticker_status = status(&second, &pki, &ticker);
    assert_eq!(ticker_status["state"], "exited", "{ticker_status}");
    assert_eq!(ticker_status["exit_code"], 0, "{ticker_status}");
    let ender_status = status(&second, &pki, &ender);
    assert_eq!(ender_status["state"], "exited", "{ender_status}");
    assert_eq!(
        ender_status["exit_code"], 3,
        "the exact status of a job that ended while no daemon ran: {ender_status}"
    );
    assert_eq!(ok(&second, &pki, &["logs", &ender]), "bye\n");
    assert_eq!(status(&second, &pki, &sleeper)["state"], "running");

    let stopped = ok(&second, &pki, &["stop", "--output", "json", &sleeper]);
    let stopped: serde_json::Value = serde_json::from_str(&stopped).expect("stop JSON");
    assert_eq!(stopped["state"], "signaled", "{stopped}");
    assert_eq!(stopped["signal"], "SIGTERM", "{stopped}");

    let mut second = second;
    let exit = second.terminate();
    assert_eq!(exit.code(), Some(0), "{}", second.log());
    let cgroups = job_cgroups(first.cgroup_parent());
    assert!(cgroups.is_empty(), "job cgroups left: {cgroups:?}");
    let left = job_processes(first.job_ids());
    assert!(left.is_empty(), "job processes left: {left:?}");

    println!(
        "upgrade: daemon SIGKILLed at {:.1}s under 3 jobs and a follower; new daemon serving at \
         {:.1}s; follower: {} bytes ({} ticks and the last line), identical to the job's \
         output, exit 0; it said: {}; \
         ticker exited(0), ender exited(3) while no daemon ran, sleeper running then stopped \
         (SIGTERM); no cgroup or process left",
        crashed_at.as_secs_f64(),
        restarted_at.as_secs_f64(),
        seen.len(),
        ticks,
        follower_stderr.trim_end().replace('\n', " | "),
    );
    drop(second);
    drop(first);
}

/// While no daemon runs, the job's keeper is alive and copying: its log grows, or the job
/// reaches its end and the keeper records it (on a slow machine the ticks may all be out).
fn kept_without_daemon(id: &str, state: &Path) -> bool {
    let dir = state.join("jobs").join(id);
    let size = || std::fs::metadata(dir.join("output.log")).map_or(0, |m| m.len());
    let before = size();
    eventually_blocking(Duration::from_secs(30), || {
        size() > before || dir.join("exit").exists()
    })
}
