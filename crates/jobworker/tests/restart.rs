//! Restart without loss: what a worker leaves in its state directory, the next one reloads —
//! ended jobs with their output, and (with live restore) running jobs, re-adopted. What is not
//! the worker's is left alone; what is torn is cut off and reported.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{eventually, processes_with, sh, worker, worker_with};
use jobworker::{Error, JobState, Limits, StateLock, StreamFilter};

/// Kills every process of the cgroup directory `dir` (as if the job's init died, say by an
/// operator's `kill -9`) and waits until it is empty.
async fn kill_cgroup(dir: &Path) {
    let procs = dir.join("cgroup.procs");
    let emptied = eventually(Duration::from_secs(10), || {
        let pids = std::fs::read_to_string(&procs).unwrap_or_default();
        for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        pids.trim().is_empty()
    })
    .await;
    assert!(emptied, "{} still has processes", dir.display());
}

fn job_file(state: &Path, id: jobworker::JobId, name: &str) -> PathBuf {
    state.join("jobs").join(id.to_string()).join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_jobs_are_reloaded_with_their_status_and_output() {
    let w = worker().await;
    let (_, before) = w
        .run_with(sh("echo hello; echo oops >&2; exit 4"), Limits::default())
        .await;
    let id = before.id;
    let w = w.restart(true).await;
    let after = w.details(id).await.expect("status after restart");
    assert_eq!(after.state, JobState::Exited(4));
    assert_eq!(after.started_at, before.started_at);
    assert_eq!(after.ended_at, before.ended_at);
    assert_eq!(after.output, before.output);
    assert_eq!(after.usage, before.usage);
    assert_eq!(after.spec.args, ["-c", "echo hello; echo oops >&2; exit 4"]);
    let (out, err) = w.output_split(id).await;
    assert_eq!((&out[..], &err[..]), (&b"hello\n"[..], &b"oops\n"[..]));
    assert_eq!(w.all(None).len(), 1);
    w.remove(id, false)
        .await
        .expect("removable after a restart");
    assert!(w.job_dirs().is_empty(), "files left: {:?}", w.job_dirs());
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_live_restore_running_jobs_survive_and_are_adopted_by_the_next_worker() {
    let w = worker_with(|c| c.live_restore = true).await;
    let ticker = w
        .start_with(
            sh("for i in $(seq 1 40); do echo $i; sleep 0.05; done"),
            Limits::default(),
        )
        .await;
    let sleeper = w.start("/bin/sleep", &["1000.2468"]).await;
    w.wait_for_line(ticker, "1").await;
    let log = job_file(w.state_dir.path(), ticker, "output.log");
    let size_at_shutdown = std::fs::metadata(&log).expect("log").len();
    w.worker.shutdown().await;
    // No worker: the job's init keeps capturing its output.
    assert!(
        eventually(Duration::from_secs(10), || std::fs::metadata(&log)
            .is_ok_and(|m| m.len() > size_at_shutdown))
        .await,
        "the log did not grow while no worker ran"
    );
    let w = w.restart(false).await;
    assert_eq!(w.status(sleeper).expect("status").state, JobState::Running);
    let out = w.output(ticker, StreamFilter::Both).await;
    let expected: String = (1..=40).map(|i| format!("{i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&out), expected);
    assert_eq!(
        w.wait(ticker).await.expect("wait").state,
        JobState::Exited(0)
    );
    let stopped = w.stop(sleeper).await.expect("stop an adopted job");
    assert_eq!(stopped.state, JobState::Signaled(libc::SIGTERM));
    assert!(processes_with("1000.2468").is_empty());
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_ends_while_no_worker_runs_is_reloaded_with_its_exact_outcome() {
    let w = worker_with(|c| c.live_restore = true).await;
    let id = w
        .start_with(
            sh("echo ready; sleep 0.3; echo bye; exit 7"),
            Limits::default(),
        )
        .await;
    w.wait_for_line(id, "ready").await;
    w.worker.shutdown().await;
    let exit = job_file(w.state_dir.path(), id, "exit");
    assert!(
        eventually(Duration::from_secs(10), || exit.exists()).await,
        "the job's init left no exit record"
    );
    let w = w.restart(false).await;
    let status = w.status(id).expect("status");
    assert_eq!(status.state, JobState::Exited(7));
    assert_eq!(status.note, None);
    assert_eq!(w.output(id, StreamFilter::Both).await, b"ready\nbye\n");
    assert!(w.job_cgroups().is_empty(), "{:?}", w.job_cgroups());
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_live_restore_jobs_die_with_the_worker_and_come_back_as_lost() {
    let w = worker().await;
    let marker = "1000.1357";
    let id = w
        .start_with(
            sh(&format!("echo ready; exec sleep {marker}")),
            Limits::default(),
        )
        .await;
    w.wait_for_line(id, "ready").await;
    // The worker goes away without a shutdown, as a crashed daemon does.
    let w = w.restart(false).await;
    let status = w.status(id).expect("status");
    assert_eq!(status.state, JobState::Lost, "{status:?}");
    assert!(
        status.note.as_deref().unwrap_or("").contains("went away"),
        "{status:?}"
    );
    assert_eq!(w.output(id, StreamFilter::Both).await, b"ready\n");
    assert!(
        processes_with(marker).is_empty(),
        "the job outlived its worker"
    );
    assert!(w.job_cgroups().is_empty(), "{:?}", w.job_cgroups());
    w.finish().await;
}

/// Rewrites a field of the init's reference in a job's record.
fn rewrite_init(state: &Path, id: jobworker::JobId, pid: i32, start_time: Option<u64>) {
    let path = job_file(state, id, "job.json");
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read record")).expect("json");
    record["init"]["pid"] = pid.into();
    if let Some(start) = start_time {
        record["init"]["start_time"] = start.into();
    }
    std::fs::write(&path, serde_json::to_vec(&record).expect("json")).expect("write record");
}

fn start_time_of(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &stat[stat.rfind(')').expect(")") + 2..];
    rest.split(' ')
        .nth(19)
        .expect("field 22")
        .parse()
        .expect("number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_pid_is_never_taken_for_a_jobs_init() {
    let w = worker_with(|c| c.live_restore = true).await;
    let id = w.start("/bin/sleep", &["1000.9753"]).await;
    let job_dirs = w.job_cgroups();
    w.worker.shutdown().await;
    // The init dies while no worker runs, without leaving an exit record...
    for dir in &job_dirs {
        kill_cgroup(dir).await;
    }
    // ...and its pid now names an unrelated process, even with the recorded start time.
    let mut unrelated = std::process::Command::new("/bin/sleep")
        .arg("1000.8642")
        .spawn()
        .expect("spawn");
    rewrite_init(
        w.state_dir.path(),
        id,
        unrelated.id() as i32,
        Some(start_time_of(unrelated.id())),
    );
    let w = w.restart(false).await;
    let status = w.status(id).expect("status");
    assert_eq!(status.state, JobState::Lost, "{status:?}");
    assert!(
        unrelated.try_wait().expect("try_wait").is_none(),
        "the worker signalled a process that is not the job's"
    );
    let _ = unrelated.kill();
    let _ = unrelated.wait();
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_log_is_cut_off_and_a_damaged_record_reported_never_fatal() {
    let w = worker_with(|c| c.live_restore = true).await;
    let writer = w
        .start_with(
            sh("i=0; while :; do i=$((i+1)); echo line $i; sleep 0.01; done"),
            Limits::default(),
        )
        .await;
    w.wait_for_line(writer, "line 3").await;
    let (_, ended) = w.run_with(sh("echo kept"), Limits::default()).await;
    let job_dirs = w.job_cgroups();
    w.worker.shutdown().await;
    for dir in &job_dirs {
        kill_cgroup(dir).await;
    }
    let state = w.state_dir.path().to_owned();
    // Half a frame at the end of the log, as a write cut short leaves it.
    let log = job_file(&state, writer, "output.log");
    let valid = std::fs::metadata(&log).expect("log").len();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("log");
    std::io::Write::write_all(&mut file, &[1, 200, 0, 0, 0, 9, 9]).expect("append");
    drop(file);
    // And a record that is not JSON any more.
    std::fs::write(
        job_file(&state, ended.id, "job.json"),
        b"{\"version\": 1, \"id",
    )
    .expect("write");

    let w = w.restart(false).await;
    let status = w.status(writer).expect("status");
    assert_eq!(status.state, JobState::Lost);
    let note = status.note.clone().unwrap_or_default();
    assert!(note.contains("torn write"), "{note}");
    assert_eq!(
        std::fs::metadata(&log).expect("log").len(),
        valid,
        "cut back to whole frames"
    );
    let out = String::from_utf8(w.output(writer, StreamFilter::Both).await).expect("text");
    assert!(
        out.starts_with("line 1\nline 2\nline 3\n") && out.ends_with('\n'),
        "{out}"
    );

    let damaged = w.status(ended.id).expect("a damaged job is still listed");
    assert_eq!(damaged.state, JobState::Lost);
    assert!(
        damaged.note.unwrap_or_default().contains("unreadable"),
        "the damage is reported"
    );
    w.remove(ended.id, false).await.expect("and removable");
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_removes_unfinished_starts_and_leaves_everything_else_alone() {
    let w = worker().await;
    let parents = w.cgroup_parents();
    let w = {
        let config = w.config.clone();
        let state = w.state_dir;
        w.worker.shutdown().await;
        drop(w.worker);
        (config, state)
    };
    let (config, state) = w;
    // What a start interrupted before its record was written leaves: a job directory without a
    // record, and a cgroup of that name with a process in it.
    let unfinished = uuid::Uuid::new_v4().to_string();
    std::fs::create_dir_all(state.path().join("jobs").join(&unfinished)).expect("mkdir");
    let mut victim = std::process::Command::new("/bin/sleep")
        .arg("1000.1111")
        .spawn()
        .expect("spawn");
    // Not the worker's: a file among the jobs, and a sibling cgroup with a process.
    std::fs::write(state.path().join("jobs/important.log"), "keep").expect("write");
    let mut bystander = std::process::Command::new("/bin/sleep")
        .arg("1000.2222")
        .spawn()
        .expect("spawn");
    for parent in &parents {
        for (name, pid) in [
            (&unfinished[..], victim.id()),
            ("other-service", bystander.id()),
        ] {
            let dir = parent.join(name);
            std::fs::create_dir_all(&dir).expect("mkdir cgroup");
            std::fs::write(dir.join("cgroup.procs"), pid.to_string()).expect("move");
        }
    }
    let w = common::reopen(&config).await;
    assert!(!state.path().join("jobs").join(&unfinished).exists());
    for parent in &parents {
        assert!(
            !parent.join(&unfinished).exists(),
            "the unfinished start's cgroup is gone"
        );
        assert!(
            parent.join("other-service").exists(),
            "a sibling cgroup was removed"
        );
    }
    let status = victim.wait().expect("wait");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert!(
        bystander.try_wait().expect("try_wait").is_none(),
        "a bystander was killed"
    );
    assert_eq!(
        std::fs::read_to_string(state.path().join("jobs/important.log")).expect("kept"),
        "keep"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
    for parent in &parents {
        let _ = std::fs::remove_dir(parent.join("other-service"));
    }
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_on_the_same_state_directory_is_refused_and_changes_nothing() {
    let w = worker().await;
    let id = w.start("/bin/sleep", &["1000"]).await;
    match StateLock::acquire(w.state_dir.path()) {
        Err(Error::StateDirBusy { holder, .. }) => assert_eq!(holder, Some(std::process::id())),
        other => panic!("a second worker took the state directory: {other:?}"),
    }
    assert_eq!(w.status(id).expect("status").state, JobState::Running);
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_job_s_record_keeps_both_its_stop_request_and_its_end() {
    // A stop records the request while the job's end is being recorded: the two writes of the
    // same record must neither undo nor break each other, however they interleave.
    // As many as the test's uid range allows: the more stops at once, the slower each fsync.
    let w = std::sync::Arc::new(worker_with(|c| c.max_running_per_user = 64).await);
    let mut ids = Vec::new();
    for _ in 0..60 {
        ids.push(w.start("sleep", &["1000"]).await);
    }
    let mut stops = tokio::task::JoinSet::new();
    for &id in &ids {
        let w = w.clone();
        stops.spawn(async move { w.worker.stop(id).await });
    }
    while let Some(stopped) = stops.join_next().await {
        stopped.expect("task").expect("stop");
    }
    for &id in &ids {
        let text = std::fs::read_to_string(job_file(w.state_dir.path(), id, "job.json"))
            .expect("the job's record");
        let record: serde_json::Value = serde_json::from_str(&text).expect("a JSON record");
        assert!(
            !record["end"].is_null(),
            "job {id}'s record lost its end: {text}"
        );
        assert_eq!(
            record["stop_requested"],
            serde_json::Value::Bool(true),
            "job {id}'s record lost its stop request: {text}"
        );
    }
    let w = std::sync::Arc::into_inner(w).expect("one owner");
    w.finish().await;
}
