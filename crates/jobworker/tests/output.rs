//! Output: from the first byte, to any number of readers, binary-safe, with bounded memory.

mod common;

use common::{TESTPROG, sh, worker};
use jobworker::{JobState, StreamFilter};

/// One test at a time: one of them measures this process's memory, which the others' buffers
/// would inflate.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_reader_gets_everything_from_byte_zero() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let w = worker().await;
    let id = w.start("/bin/sh", &["-c", "seq 1 20000"]).await;
    let status = w.wait(id).await.expect("wait");
    assert_eq!(status.state, JobState::Exited(0));
    // The job has ended before this reader exists.
    let out = w.output(id, StreamFilter::Both).await;
    let expected: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert_eq!(String::from_utf8(out).expect("utf-8"), expected);
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_readers_of_a_running_job_get_identical_bytes() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let w = std::sync::Arc::new(worker().await);
    // 2000 rounds of all 256 byte values, paced so the job is still writing while readers attach.
    let reps = 2000;
    let id = w.start(TESTPROG, &["bytes", &reps.to_string(), "1"]).await;
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let w = w.clone();
        readers.spawn(async move { w.output(id, StreamFilter::Both).await });
    }
    assert_eq!(
        w.status(id).expect("status").state,
        JobState::Running,
        "the job must still be writing while the readers attach"
    );
    let expected: Vec<u8> = (0..reps).flat_map(|_| 0..=255u8).collect();
    let mut count = 0;
    while let Some(got) = readers.join_next().await {
        let got = got.expect("reader task");
        assert_eq!(got.len(), expected.len(), "reader got a different length");
        assert!(got == expected, "reader got different bytes");
        count += 1;
    }
    assert_eq!(count, 50);
    let w = std::sync::Arc::into_inner(w).expect("no other owner");
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_select_stdout_stderr_or_both() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let w = worker().await;
    let script = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done";
    let id = w.start_with(sh(script), Default::default()).await;
    let stdout = w.output(id, StreamFilter::Stdout).await;
    let stderr = w.output(id, StreamFilter::Stderr).await;
    let (both_out, both_err) = w.output_split(id).await;
    assert_eq!(
        String::from_utf8_lossy(&stdout),
        "out1\nout2\nout3\nout4\nout5\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&stderr),
        "err1\nerr2\nerr3\nerr4\nerr5\n"
    );
    assert_eq!(both_out, stdout, "stdout chunks of a both-streams reader");
    assert_eq!(both_err, stderr, "stderr chunks of a both-streams reader");
    w.finish().await;
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gib_of_output_keeps_memory_bounded() {
    // 1 GiB; the emulated cgroup v2 guest of scripts/test, 50 times slower, sets less.
    let size: u64 = std::env::var("JOBWORKER_TEST_BIG_OUTPUT_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(1 << 30, |mib| mib << 20);
    let _serial = ONE_AT_A_TIME.lock().await;
    let w = worker().await;
    let before = rss_bytes();
    let id = w
        .start("/bin/sh", &["-c", &format!("head -c {size} /dev/zero")])
        .await;
    // Follow it live, counting bytes without keeping them.
    let mut reader = w.worker.output(id, StreamFilter::Both, 0).expect("reader");
    let mut total = 0u64;
    let mut peak = before;
    while let Some(chunk) = reader.next().await.expect("read") {
        total += chunk.data.len() as u64;
        if total % (64 << 20) < chunk.data.len() as u64 {
            peak = peak.max(rss_bytes());
        }
    }
    drop(reader);
    let status = w.wait(id).await.expect("wait");
    assert_eq!(status.state, JobState::Exited(0));
    assert_eq!(total, size, "every byte arrives");
    let after = rss_bytes();
    peak = peak.max(after);
    let grown = peak.saturating_sub(before);
    assert!(
        grown < 32 << 20,
        "RSS grew by {} MiB while {} MiB of output went through (before {} MiB, peak {} MiB)",
        grown >> 20,
        size >> 20,
        before >> 20,
        peak >> 20
    );
    println!(
        "measured: {} MiB followed live, RSS grew by {} KiB",
        size >> 20,
        grown >> 10
    );
    w.finish().await;
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallFs(tempfile::TempDir);

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_that_cannot_be_stored_is_reported_not_silently_truncated() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = SmallFs(tempfile::tempdir().expect("tempdir"));
    nix::mount::mount(
        Some("tmpfs"),
        dir.0.path(),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .expect("mount a 1 MiB tmpfs");
    let w = common::worker_with(|c| {
        c.state_dir = dir.0.path().join("state");
        // The point is a disk that fills up, not the budget that would prevent it.
        c.max_total_output = Some(1 << 40);
    })
    .await;
    let id = w
        .start("/bin/sh", &["-c", "head -c 4194304 /dev/zero"])
        .await;
    let mut reader = w.worker.output(id, StreamFilter::Both, 0).expect("reader");
    let mut got = 0usize;
    let err = loop {
        match reader.next().await {
            Ok(Some(chunk)) => got += chunk.data.len(),
            Ok(None) => panic!("the reader ended normally after {got} of 4194304 bytes"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, jobworker::OutputError::Incomplete(_)),
        "{err:?}"
    );
    assert!(
        got > 0 && got < 1 << 20,
        "the stored prefix is delivered: {got} bytes"
    );
    let status = w.wait(id).await.expect("wait");
    assert_eq!(
        status.state,
        JobState::Exited(0),
        "the job itself is unaffected"
    );
    drop(reader);
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_resumes_at_the_offset_it_was_given_without_gap_or_duplicate() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let w = worker().await;
    let id = w
        .start("/bin/sh", &["-c", "seq 1 100000; seq 1 10 >&2"])
        .await;
    let all = w.output(id, StreamFilter::Both).await;
    for from in [0usize, 1, 4095, 65_536, 300_000, all.len() - 1, all.len()] {
        let mut reader = w
            .worker
            .output(id, StreamFilter::Both, from as u64)
            .expect("reader");
        let mut got = Vec::new();
        let mut expected_offset = from as u64;
        while let Some(chunk) = reader.next().await.expect("read") {
            assert_eq!(
                chunk.offset, expected_offset,
                "chunk positions are contiguous"
            );
            expected_offset += chunk.data.len() as u64;
            got.extend_from_slice(&chunk.data);
        }
        assert!(
            got == all[from..],
            "resuming at {from} gave different bytes"
        );
    }
    let past = w
        .worker
        .output(id, StreamFilter::Both, all.len() as u64 + 1)
        .expect("reader")
        .next()
        .await;
    assert!(
        matches!(past, Err(jobworker::OutputError::OffsetPastEnd { .. })),
        "{past:?}"
    );
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_past_the_limit_is_counted_and_dropped_while_the_job_runs_on() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let w = worker().await;
    let limit = 100 * 1024;
    let limits = jobworker::Limits {
        output_bytes: Some(limit),
        ..jobworker::Limits::default()
    };
    // 1 MiB of output, then a line on stderr and an exit code the job only reaches if writing
    // past the limit never blocked or failed it.
    let id = w
        .start_with(
            sh("head -c 1048576 /dev/zero; echo finished >&2; exit 3"),
            limits,
        )
        .await;
    let all = w.output(id, StreamFilter::Both).await;
    let status = w.wait(id).await.expect("wait");
    assert_eq!(status.state, JobState::Exited(3), "the job ran to its end");
    let output = status.output.expect("output summary");
    assert_eq!(
        output.bytes,
        all.len() as u64,
        "readers get every stored byte"
    );
    assert_eq!(output.bytes, limit, "exactly the limit is stored");
    assert_eq!(
        output.bytes + output.dropped_bytes,
        1048576 + "finished\n".len() as u64,
        "every byte is stored or counted"
    );
    assert!(
        all.iter().all(|&b| b == 0),
        "the stored prefix is the job's first bytes"
    );
    w.finish().await;
}
