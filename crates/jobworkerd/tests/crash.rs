//! Crash consistency, tested rather than assumed (issue 11): the real daemon is SIGKILLed at
//! random points of starts, output appends, stops and job ends, hundreds of times, and a new
//! daemon on the same state directory must each time find everything it promised.
//!
//! After every restart:
//! - the state directory loads (the daemon starts and serves);
//! - every job whose Start returned an id is listed;
//! - every output byte a reader had received is still there, unchanged, at the same offset;
//! - no job is shown running without a process, and no job cgroup or job process exists that
//!   no running job's record owns.
//!
//! Some rounds also SIGKILL every process of a running job, its init (the keeper writing the
//! log) included. The keeper appends each frame with one write(2), which a SIGKILL does not
//! split; what a power cut can leave, the first part of a frame, is then appended to that job's
//! log while no daemon runs: the next daemon must cut it off, say so in the job's note, and keep
//! everything before it. Rounds alternate at random between `--live-restore` and not.
//!
//! `JOBWORKER_CRASH_ITERATIONS` (default 200) and `JOBWORKER_CRASH_SEED` (default: the clock,
//! printed) replay a run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jobworker_api::pb::{self, job_worker_client::JobWorkerClient};
use jobworker_testkit::{Daemon, Pki, cgroups_named, eventually, job_cgroups, random_job_ids};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::Channel;

const DEFAULT_ITERATIONS: usize = 200;

/// Output of a job that ends within milliseconds: a start, appends and an end.
const BURST: &str = "i=0; while [ $i -lt 400 ]; do echo burst line $i; i=$((i+1)); done";
/// A job still running across a crash or two: live appends, adoption, stops.
const SLOW: &str = "i=0; while [ $i -lt 40 ]; do echo slow tick $i; i=$((i+1)); sleep 0.03; done";

/// xorshift64*: reproducible from its seed, good enough to pick fault points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        items.get(self.below(items.len() as u64) as usize)
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Bytes a reader task received so far.
type Shared = Arc<Mutex<Vec<u8>>>;

/// What the test knows each job must still have: the bytes a reader received from offset 0.
type Received = BTreeMap<String, Vec<u8>>;

struct Node {
    pki: Pki,
    state: tempfile::TempDir,
    parent: String,
    job_ids: String,
}

impl Node {
    fn start(&self, live_restore: bool) -> Daemon {
        let mut options = Daemon::options(self.pki.dir())
            .state_dir(self.state.path())
            .cgroup_parent(&self.parent)
            .job_ids(&self.job_ids);
        if live_restore {
            options = options.arg("--live-restore");
        }
        options.start()
    }
}

async fn connect(daemon: &Daemon, pki: &Pki) -> JobWorkerClient<Channel> {
    jobworker_api::connect(&daemon.endpoint(), pki.client_config("alice"))
        .await
        .expect("connect")
}

fn start_request(script: &str) -> pb::StartRequest {
    pb::StartRequest {
        command: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        ..Default::default()
    }
}

/// Streams `id` from offset 0 into `into` until the stream ends or breaks.
async fn stream_into(mut client: JobWorkerClient<Channel>, id: String, into: Shared) {
    let request = pb::StreamOutputRequest {
        job_id: id,
        streams: vec![],
        offset: 0,
    };
    let Ok(response) = client.stream_output(request).await else {
        return;
    };
    let mut stream = response.into_inner();
    while let Ok(Some(message)) = stream.message().await {
        if let Some(pb::stream_output_response::Frame::Chunk(chunk)) = message.frame {
            let mut bytes = into.lock().expect("lock");
            assert_eq!(
                chunk.offset,
                bytes.len() as u64,
                "chunks arrive contiguous from 0"
            );
            bytes.extend_from_slice(&chunk.data);
        }
    }
}

/// Every job of alice, through every page.
async fn list_all(client: &mut JobWorkerClient<Channel>) -> Vec<pb::JobStatus> {
    let mut request = pb::ListRequest {
        page_size: 1000,
        ..Default::default()
    };
    let mut jobs = Vec::new();
    loop {
        let page = client
            .list(request.clone())
            .await
            .expect("list")
            .into_inner();
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return jobs;
        }
        request.page_token = page.next_page_token;
    }
}

/// The whole output of `id` as the daemon serves it now (following it to its end).
async fn read_all(client: &mut JobWorkerClient<Channel>, id: &str) -> Vec<u8> {
    let into = Arc::new(Mutex::new(Vec::new()));
    let read = stream_into(client.clone(), id.to_owned(), into.clone());
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .unwrap_or_else(|_| panic!("job {id}: its output did not end within 60 s"));
    into.lock().expect("lock").clone()
}

/// The pids in a job's cgroup (any hierarchy has them all).
fn job_pids(parent: &str, id: &str) -> Vec<i32> {
    cgroups_named(parent)
        .iter()
        .filter_map(|dir| std::fs::read_to_string(dir.join(id).join("cgroup.procs")).ok())
        .flat_map(|procs| {
            procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Pids of processes running as a uid of `range` (`FIRST-LAST`), with their cgroup lines.
fn job_processes(range: &str) -> Vec<(String, String)> {
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
            let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
            found.push((entry.file_name().to_string_lossy().into_owned(), cgroup));
        }
    }
    found
}

/// The invariants, checked against a freshly started daemon.
async fn verify(
    client: &mut JobWorkerClient<Channel>,
    node: &Node,
    received: &Received,
    reread: &BTreeSet<String>,
) {
    let jobs = list_all(client).await;
    let listed: BTreeMap<&str, &pb::JobStatus> =
        jobs.iter().map(|j| (j.job_id.as_str(), j)).collect();
    for id in received.keys() {
        assert!(
            listed.contains_key(id.as_str()),
            "job {id}, whose Start returned, is not listed"
        );
    }
    for job in &jobs {
        if job.state == pb::JobState::Running as i32 {
            assert!(
                !job_pids(&node.parent, &job.job_id).is_empty(),
                "job {} is shown running but has no process",
                job.job_id
            );
        }
    }
    for id in reread {
        let had = &received[id];
        let now = read_all(client, id).await;
        assert!(
            now.len() >= had.len() && now[..had.len()] == had[..],
            "job {id}: a reader had {} bytes, the daemon now serves {} that differ",
            had.len(),
            now.len()
        );
    }

    // Nothing without a record: every job cgroup and job process belongs to a running job.
    // A job that has just ended removes its cgroup a moment later, hence `eventually`.
    let mut stray = (BTreeSet::new(), Vec::new());
    let clean = eventually(Duration::from_secs(15), || {
        let cgroups = job_cgroups(&node.parent);
        let processes = job_processes(&node.job_ids);
        let running: BTreeSet<String> = cgroups
            .iter()
            .filter(|id| {
                listed
                    .get(id.as_str())
                    .is_some_and(|j| j.state == pb::JobState::Running as i32)
            })
            .cloned()
            .collect();
        let stray_cgroups: BTreeSet<String> = cgroups.difference(&running).cloned().collect();
        let stray_processes: Vec<(String, String)> = processes
            .into_iter()
            .filter(|(_, cgroup)| !running.iter().any(|id| cgroup.contains(id.as_str())))
            .collect();
        let done = stray_cgroups.is_empty() && stray_processes.is_empty();
        stray = (stray_cgroups, stray_processes);
        done
    })
    .await;
    assert!(
        clean,
        "cgroups or processes that no running job owns: {:?}",
        stray
    );
}

/// Appends the first half of a stdout frame to `id`'s log, as a write cut short by a power
/// loss leaves it, unless the job's end is already recorded. Returns whether it did.
fn tear(state: &Path, id: &str) -> bool {
    let dir = state.join("jobs").join(id);
    if dir.join("exit").exists() {
        return false;
    }
    let mut torn = vec![1u8];
    torn.extend_from_slice(&100u32.to_le_bytes());
    torn.extend_from_slice(&0xdead_beef_u32.to_le_bytes());
    torn.extend_from_slice(b"half ");
    let appended = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("output.log"))
        .and_then(|mut log| std::io::Write::write_all(&mut log, &torn));
    appended.is_ok()
}

/// SIGKILLs every process of a running job, its init included: a keeper dying mid-write.
fn kill_job(parent: &str, id: &str) -> usize {
    let pids = job_pids(parent, id);
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    pids.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_directory_survives_sigkill_at_any_point() {
    assert!(nix::unistd::Uid::effective().is_root(), "needs root");
    let iterations = env_number("JOBWORKER_CRASH_ITERATIONS").unwrap_or(DEFAULT_ITERATIONS as u64);
    let seed = env_number("JOBWORKER_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    println!("crash test: {iterations} iterations, JOBWORKER_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let node = Node {
        pki: Pki::dev(),
        state: tempfile::tempdir().expect("state dir"),
        parent: format!("jobworker-crash-{}", uuid::Uuid::new_v4()),
        job_ids: random_job_ids(),
    };
    let started = Instant::now();
    let mut received = Received::new();
    let mut reread = BTreeSet::new();
    let (mut starts, mut jobs_killed, mut kill_attempts, mut live_rounds) = (0, 0, 0, 0);
    let mut torn_jobs = BTreeSet::new();

    for round in 0..iterations {
        let live = rng.below(2) == 0;
        live_rounds += usize::from(live);
        let mut daemon = node.start(live);
        let mut client = connect(&daemon, &node.pki).await;
        verify(&mut client, &node, &received, &reread).await;
        reread.clear();
        // One job whose start completes before the fault window, so that every round has
        // running jobs to stop, read and kill.
        let settled = client
            .start(start_request(SLOW))
            .await
            .expect("start before the fault window")
            .into_inner()
            .job_id;
        starts += 1;
        received.entry(settled.clone()).or_default();
        let running_ids: Vec<String> = list_all(&mut client)
            .await
            .into_iter()
            .filter(|j| j.state == pb::JobState::Running as i32)
            .map(|j| j.job_id)
            .collect();

        // The operations, all at once; the kill lands somewhere inside them.
        let mut tasks = Vec::new();
        let streams: Arc<Mutex<Vec<(String, Shared)>>> = Arc::default();
        for script in [BURST, SLOW] {
            let mut c = client.clone();
            let streams = streams.clone();
            tasks.push(tokio::spawn(async move {
                let id = c
                    .start(start_request(script))
                    .await
                    .ok()?
                    .into_inner()
                    .job_id;
                let into = Arc::new(Mutex::new(Vec::new()));
                streams
                    .lock()
                    .expect("lock")
                    .push((id.clone(), into.clone()));
                stream_into(c, id.clone(), into).await;
                Some(id)
            }));
        }
        // Stop an older job; the one just started may be killed with its init below.
        let older: Vec<String> = running_ids
            .iter()
            .filter(|id| **id != settled)
            .cloned()
            .collect();
        if let Some(id) = rng.pick(&older).cloned() {
            let mut c = client.clone();
            tasks.push(tokio::spawn(async move {
                let _ = c.stop(pb::StopRequest { job_id: id }).await;
                None
            }));
        }
        if let Some(id) = rng.pick(&running_ids).cloned() {
            let into = Arc::new(Mutex::new(Vec::new()));
            streams
                .lock()
                .expect("lock")
                .push((id.clone(), into.clone()));
            let c = client.clone();
            tasks.push(tokio::spawn(async move {
                stream_into(c, id, into).await;
                None
            }));
        }
        let kill_a_job = rng.below(4) == 0;
        let victim = Some(settled);

        // Not a wait for anything: the fault lands at a random point of whatever runs.
        tokio::time::sleep(Duration::from_micros(rng.below(150_000))).await;
        if kill_a_job && let Some(id) = &victim {
            kill_attempts += 1;

            jobs_killed += usize::from(kill_job(&node.parent, id) > 0);
        }
        tokio::task::block_in_place(|| daemon.kill());
        if kill_a_job
            && let Some(id) = &victim
            && tear(node.state.path(), id)
        {
            torn_jobs.insert(id.clone());
        }

        for task in tasks {
            let outcome = tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("a call on a killed daemon's connection ends");
            if let Some(id) = outcome.expect("task") {
                starts += 1;
                received.entry(id).or_default();
            }
        }
        for (id, bytes) in streams.lock().expect("lock").iter() {
            let bytes = bytes.lock().expect("lock").clone();
            // A stream opened for a job whose Start had not returned is not a promise.
            let Some(known) = received.get_mut(id) else {
                continue;
            };
            if bytes.len() > known.len() {
                assert_eq!(
                    bytes[..known.len()],
                    known[..],
                    "job {id}: a reader saw bytes change"
                );
                *known = bytes;
            }
            reread.insert(id.clone());
        }
        drop(client);
        if round % 50 == 49 {
            println!(
                "  round {}: {} jobs, {:.0} s",
                round + 1,
                received.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }

    // A last daemon, without live restore: everything is checked, every output read whole,
    // then SIGTERM stops what runs and nothing may be left.
    let mut daemon = node.start(false);
    let mut client = connect(&daemon, &node.pki).await;
    let all: BTreeSet<String> = received.keys().cloned().collect();
    verify(&mut client, &node, &received, &all).await;
    let jobs = list_all(&mut client).await;
    let count = |state: pb::JobState| jobs.iter().filter(|j| j.state == state as i32).count();
    let noted = jobs.iter().filter(|j| !j.note.is_empty()).count();
    let torn = jobs
        .iter()
        .filter(|j| j.note.contains("torn write"))
        .count();
    drop(client);
    let exit = tokio::task::block_in_place(|| daemon.terminate());
    assert_eq!(exit.code(), Some(0), "{}", daemon.log());
    assert!(job_cgroups(&node.parent).is_empty(), "cgroups left");
    assert!(job_processes(&node.job_ids).is_empty(), "processes left");
    assert!(
        Path::new(node.state.path()).join("jobs").is_dir(),
        "the state directory is still there"
    );
    println!(
        "crash test: {iterations} SIGKILLs ({live_rounds} with --live-restore) in {:.0} s, seed \
         {seed}: {starts} starts returned an id, all {} listed after every restart; {jobs_killed} \
         of {kill_attempts} running jobs picked were killed with their init; final states: {} exited, {} signaled, {} lost, {} running; \
         {noted} with a note, {torn} with a torn last frame cut off ({} torn by the test); every byte any reader had received was served again unchanged; no \
         stray cgroup or process after any restart",
        started.elapsed().as_secs_f64(),
        received.len(),
        count(pb::JobState::Exited),
        count(pb::JobState::Signaled),
        count(pb::JobState::Lost),
        count(pb::JobState::Running),
        torn_jobs.len(),
    );
}
