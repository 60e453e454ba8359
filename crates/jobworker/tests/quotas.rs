//! Nothing one owner does can exhaust the node or erase another's work: every job is bounded by
//! default, owners have quotas, the node has bounds that hold under concurrent starts, output
//! is capped and its storage budgeted, and ended jobs can be removed (and are, after a while).

mod common;

use std::time::Duration;

use common::{eventually, sh, worker, worker_with};
use jobworker::{CommandSpec, Error, IdRange, JobState, Limits, Quota, StreamFilter};

fn sleep() -> CommandSpec {
    CommandSpec::new("/bin/sleep", ["1000"])
}

fn quota_of(err: Error) -> Quota {
    match err {
        Error::Quota(quota) => quota,
        other => panic!("expected a quota error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_at_the_running_quota_is_refused_and_others_are_not() {
    let w = worker_with(|c| c.max_running_per_user = 2).await;
    for _ in 0..2 {
        w.start_as("mallory", sleep(), Limits::default()).await;
    }
    let err = w
        .worker
        .start("mallory", sleep(), Limits::default())
        .await
        .expect_err("over the quota");
    assert_eq!(quota_of(err), Quota::RunningPerUser { limit: 2 });
    w.start_as("alice", sleep(), Limits::default()).await;
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_at_the_stored_quota_is_refused_until_they_remove_a_job() {
    let w = worker_with(|c| c.max_jobs_per_user = 3).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (_, status) = w.run("/bin/true", &[]).await;
        ids.push(status.id);
    }
    let err = w
        .worker
        .start(
            "tester",
            CommandSpec::new("/bin/true", [""; 0]),
            Limits::default(),
        )
        .await
        .expect_err("over the quota");
    assert_eq!(quota_of(err), Quota::JobsPerUser { limit: 3 });
    w.start_as("bob", sleep(), Limits::default()).await;
    w.remove(ids[0], false).await.expect("remove");
    w.run("/bin/true", &[]).await;
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_bound_holds_under_concurrent_starts() {
    let w = std::sync::Arc::new(
        worker_with(|c| {
            c.max_jobs = 5;
            c.max_running_per_user = 100;
        })
        .await,
    );
    let mut starts = tokio::task::JoinSet::new();
    for i in 0..20 {
        let w = w.clone();
        starts.spawn(async move {
            w.worker
                .start(&format!("user{i}"), sleep(), Limits::default())
                .await
        });
    }
    let mut started = 0;
    while let Some(result) = starts.join_next().await {
        match result.expect("task") {
            Ok(_) => started += 1,
            Err(e) => assert_eq!(quota_of(e), Quota::NodeJobs { limit: 5 }),
        }
    }
    assert_eq!(started, 5, "concurrent starts overshot the node's bound");
    assert_eq!(w.all(None).len(), 5);
    let w = std::sync::Arc::into_inner(w).expect("one owner");
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_jobs_never_share_a_uid_and_the_range_bounds_them() {
    // Two ids: two running jobs at most, whoever starts them.
    let w = worker_with(|c| c.job_ids = IdRange::new(1, 2).expect("range")).await;
    let a = w.start_as("alice", sleep(), Limits::default()).await;
    let b = w.start_as("bob", sleep(), Limits::default()).await;
    let err = w
        .worker
        .start("carol", sleep(), Limits::default())
        .await
        .expect_err("no id left");
    assert_eq!(quota_of(err), Quota::JobIds { limit: 2 });
    assert_ne!(w.status(a).expect("a").uid, w.status(b).expect("b").uid);
    w.stop(a).await.expect("stop");
    // A released id comes back, to a job of anyone.
    let c = w.start_as("carol", sleep(), Limits::default()).await;
    assert_eq!(w.status(c).expect("c").uid, w.status(a).expect("a").uid);
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_is_removed_only_when_forced_and_a_reader_still_ends_with_its_final_status() {
    let w = worker().await;
    let id = w
        .start_with(
            sh("seq 1 1000; echo ready; exec sleep 1000"),
            Limits::default(),
        )
        .await;
    w.wait_for_line(id, "ready").await;
    let err = w.remove(id, false).await.expect_err("running");
    assert!(matches!(err, Error::JobRunning(_)), "{err:?}");
    let mut output = w
        .worker
        .follow(id, StreamFilter::Both, 0)
        .expect("a reader before the removal");
    w.remove(id, true).await.expect("forced removal");
    assert!(matches!(w.status(id), Err(Error::NotFound(_))));
    assert!(w.job_dirs().is_empty(), "files left: {:?}", w.job_dirs());
    let mut got = Vec::new();
    while let Some(chunk) = output.reader.next().await.expect("the reader ends cleanly") {
        got.extend_from_slice(&chunk.data);
    }
    let expected: String = (1..=1000).map(|i| format!("{i}\n")).collect::<String>() + "ready\n";
    assert_eq!(String::from_utf8_lossy(&got), expected);
    // The end of a stream reports the final status (the server's OutputEnd), job removed or not.
    let status = output.status();
    assert!(status.stop_requested, "{status:?}");
    assert!(matches!(status.state, JobState::Signaled(_)), "{status:?}");
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_jobs_are_removed_after_their_retention() {
    let w = worker_with(|c| c.retain_finished = Some(Duration::from_secs(1))).await;
    let (_, ended) = w.run("/bin/true", &[]).await;
    let running = w.start("/bin/sleep", &["1000"]).await;
    let removed = eventually(Duration::from_secs(10), || w.status(ended.id).is_err()).await;
    assert!(removed, "an ended job outlived its retention");
    assert!(
        w.status(running).is_ok(),
        "a running job is never removed by retention"
    );
    let files_gone = eventually(Duration::from_secs(10), || w.job_dirs().len() == 1).await;
    assert!(
        files_gone,
        "the ended job's files remain: {:?}",
        w.job_dirs()
    );
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_budget_makes_room_from_the_starters_own_oldest_output_only() {
    let limit = 20 * 1024;
    let w = worker_with(|c| {
        c.max_total_output = Some(100 * 1024);
        c.max_limits.output_bytes = Some(limit);
        c.default_limits.output_bytes = Some(limit);
    })
    .await;
    let fill = || sh("head -c 20000 /dev/zero");
    let bobs = {
        let id = w.start_as("bob", fill(), Limits::default()).await;
        w.wait(id).await.expect("wait")
    };
    let mut alices = Vec::new();
    for _ in 0..3 {
        let id = w.start_as("alice", fill(), Limits::default()).await;
        alices.push(w.wait(id).await.expect("wait"));
    }
    // Full: 4 logs of ~20 KB; a new start needs room for ~25 KB more.
    let id = w.start_as("alice", fill(), Limits::default()).await;
    w.wait(id).await.expect("wait");
    assert!(
        w.status(alices[0].id).is_err(),
        "alice's oldest output made room"
    );
    assert!(
        w.status(bobs.id).is_ok(),
        "bob's output was erased by alice's start"
    );
    assert_eq!(w.output(bobs.id, StreamFilter::Both).await.len(), 20000);

    // Running jobs' reservations are never taken: a budget full of them refuses.
    let w2 = worker_with(|c| {
        c.max_total_output = Some(60 * 1024);
        c.max_limits.output_bytes = Some(limit);
        c.default_limits.output_bytes = Some(limit);
    })
    .await;
    w2.start_as("alice", sleep(), Limits::default()).await;
    w2.start_as("alice", sleep(), Limits::default()).await;
    let err = w2
        .worker
        .start("bob", sleep(), Limits::default())
        .await
        .expect_err("budget full");
    assert_eq!(quota_of(err), Quota::OutputBudget { budget: 60 * 1024 });
    w2.finish().await;
    w.finish().await;
}

/// The value of `file` in whichever of the job's cgroup directories has it.
fn cgroup_value(w: &common::TestWorker, file: &str) -> Option<String> {
    w.job_cgroups()
        .iter()
        .find_map(|dir| std::fs::read_to_string(dir.join(file)).ok())
        .map(|v| v.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_started_without_limits_is_bounded_by_the_defaults() {
    let w = worker_with(|c| {
        c.default_limits.memory_bytes = Some(256 << 20);
        c.default_limits.cpus = Some(1.5);
        c.default_limits.pids = Some(300);
    })
    .await;
    let id = w.start("/bin/sleep", &["1000"]).await;
    let status = w.status(id).expect("status");
    assert_eq!(status.limits.memory_bytes, Some(256 << 20));
    let memory =
        cgroup_value(&w, "memory.limit_in_bytes").or_else(|| cgroup_value(&w, "memory.max"));
    assert_eq!(memory.as_deref(), Some("268435456"));
    let cpu = cgroup_value(&w, "cpu.cfs_quota_us").or_else(|| cgroup_value(&w, "cpu.max"));
    assert!(
        matches!(cpu.as_deref(), Some("150000") | Some("150000 100000")),
        "{cpu:?}"
    );
    assert_eq!(cgroup_value(&w, "pids.max").as_deref(), Some("300"));
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_above_the_nodes_maximum_is_refused_naming_it() {
    let w = worker_with(|c| {
        c.max_limits.memory_bytes = Some(1 << 30);
        c.max_limits.cpus = Some(1.0);
        c.default_limits.cpus = Some(1.0);
    })
    .await;
    for (limits, expect) in [
        (
            Limits {
                memory_bytes: Some(2 << 30),
                ..Limits::default()
            },
            "memory 2147483648 bytes is above this node's maximum of 1073741824 bytes",
        ),
        (
            Limits {
                cpus: Some(2.0),
                ..Limits::default()
            },
            "cpus 2 is above this node's maximum of 1 CPUs",
        ),
    ] {
        let err = w
            .worker
            .start("t", sleep(), limits)
            .await
            .expect_err("above the maximum");
        assert!(matches!(err, Error::InvalidLimit(_)), "{err:?}");
        assert!(err.to_string().contains(expect), "{err}");
    }
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_parent_bounds_all_jobs_together() {
    let w = worker_with(|c| {
        c.jobs_limits.memory_bytes = Some(48 << 20);
        c.max_limits.memory_bytes = Some(48 << 20);
        c.default_limits.memory_bytes = Some(40 << 20);
    })
    .await;
    // Each alone fits its own limit; together they exceed the parent's. The first holds its
    // memory before the second starts.
    let hog = || CommandSpec::new(common::TESTPROG, ["hog-hold", "32"]);
    let first = w.start_as("alice", hog(), Limits::default()).await;
    w.wait_for_line(first, "allocated 32 MiB").await;
    let second = w.start_as("bob", hog(), Limits::default()).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), w.wait(second)).await;
    let mut states = Vec::new();
    for id in [first, second] {
        let _ = w.stop(id).await;
        states.push(w.status(id).expect("status").state);
    }
    assert!(
        states.contains(&JobState::OomKilled),
        "64 MiB of jobs under a 48 MiB parent: {states:?}"
    );
    w.finish().await;
}
