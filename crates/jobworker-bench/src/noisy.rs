//! Figure 9: a noisy neighbour. User `alice` starts jobs and streams her output while user
//! `mallory` runs an output flood, a fork bomb, a memory hog, a thousand short jobs and hundreds
//! of idle followers on the same daemon; her figures are compared with the same figures on the
//! quiet node, measured in the same run before mallory starts and again after he stopped.
//! Meanwhile the daemon's descriptors, memory, job cgroups and state directory, and the jobs'
//! parent cgroup, are sampled and compared with the bounds the daemon is configured with.
//!
//! The daemon runs with its defaults except for output: `--max-job-output 300M` (alice's 256 MiB
//! stream plus its framing fits) and `--max-total-output 40G`, which is at least what both
//! users' running jobs may reserve together (2 × 64 running × 300M): the budget counts each
//! running job's whole output limit, so a smaller one would let one user's running jobs refuse
//! the other's starts. Mallory's quotas refuse some of his jobs: they are counted, not errors.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use futures::{StreamExt, stream};
use jobworker_api::pb;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::floors::ProcessFloors;
use crate::jobs::{self, Client};
use crate::report::{Report, Row};
use crate::server::{self, ALICE, Daemon, MALLORY, Options, with_daemon_options};
use crate::stats::{Samples, Transfer, gbps, mb, ms, size, times};
use crate::{Context, Plan};

/// `--max-job-output`: alice's stream and its framing fit.
const MAX_JOB_OUTPUT: &str = "300M";
/// `--max-total-output`, and the same in bytes.
const BUDGET: &str = "40G";
const BUDGET_BYTES: u64 = 40 << 30;
/// The daemon's default `--max-running-per-user`.
const MAX_RUNNING_PER_USER: usize = 64;
/// Users with jobs on the daemon.
const USERS: usize = 2;

/// Mallory's short jobs in flight at once (each waits for its job's end).
const SHORT_CONCURRENCY: usize = 16;
/// Idle followers per connection: below the daemon's 128 streams per connection.
const STREAMS_PER_CONNECTION: usize = 100;
/// How often the daemon and the cgroups are sampled; the state directory every tenth time.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const DU_EVERY: u32 = 10;
/// Untimed starts at the beginning of each of alice's phases.
const WARMUP: usize = 3;
/// `sleep` jobs alice starts to count the daemon's descriptors per running job.
const PROBE_JOBS: usize = 8;
/// Memory the daemon may add per follower, running job and connection: issue 10's bound for an
/// idle follower.
const RSS_PER_ITEM: u64 = 64 * 1024;

/// The goals: alice's p99 Start at most this factor of the quiet node's; her stream at least
/// this fraction of the quiet node's rate.
const START_FACTOR: f64 = 3.0;
const STREAM_FRACTION: f64 = 0.5;

/// What alice measured in one phase.
struct Alice {
    starts: Vec<Duration>,
    /// The kernel's part of a start, sampled between her starts: fork+exec, the same in new
    /// namespaces, and also in a new cgroup in each of the daemon's hierarchies.
    plain: Vec<Duration>,
    namespaces: Vec<Duration>,
    cgroup: Vec<Duration>,
    /// Her stream followed live while her job writes it.
    live: Transfer,
    /// The same output replayed once the job ended.
    replay: Transfer,
}

/// Measures figure 9.
pub async fn measure(context: &Context, report: &mut Report) -> anyhow::Result<()> {
    let options = Options::with_args(&[
        "--max-job-output",
        MAX_JOB_OUTPUT,
        "--max-total-output",
        BUDGET,
    ]);
    let plan = context.plan;
    with_daemon_options(&context.bins, &context.pki, &options, async |daemon| {
        let mut alice = daemon
            .connect(context.pki.client_config_for(ALICE)?)
            .await?;
        let mut floors = ProcessFloors::new(daemon.cgroup_parents(), None)?;
        let quiet_before = alice_measures(&mut alice, &mut floors, &plan).await?;
        let per_job_fds = fds_per_running_job(&mut alice, daemon).await?;
        let (quiet_fds, quiet_rss) = (daemon.open_fds()?, daemon.memory()?.rss);

        let (stop_sampling, sampling) = watch::channel(false);
        let sampler = tokio::spawn(sample(
            daemon.pid()?,
            daemon.cgroup_parents().to_vec(),
            daemon.state_dir().to_owned(),
            sampling,
        ));
        let noise = Noise::begin(context, daemon, &plan).await?;
        let noisy_began = Instant::now();
        let noisy = alice_measures(&mut alice, &mut floors, &plan).await;
        let alice_took = noisy_began.elapsed();
        let ended = noise.end().await;
        let _ = stop_sampling.send(true);
        let peaks = sampler.await.context("the sampler panicked")??;
        let (noisy, mallory) = (noisy?, ended?);
        let quiet_after = alice_measures(&mut alice, &mut floors, &plan).await?;

        let mut quiet_starts = quiet_before.starts.clone();
        quiet_starts.extend(&quiet_after.starts);
        let quiet = Samples::new(quiet_starts);
        let starts = Samples::new(noisy.starts.clone());
        let start_ratio = ratio(starts.p99(), quiet.p99());
        report.row(Row {
            figure: "9",
            what: "quiet node: alice's Start of `/bin/true` (before mallory starts and after \
                   he stopped)"
                .to_owned(),
            n: quiet.len().to_string(),
            result: quiet.summary(),
            ..Row::default()
        });
        report.row(Row {
            figure: "9",
            what: format!(
                "**noisy neighbour**: alice's Start while mallory runs an output flood, a fork \
                 bomb, a memory hog, {} short jobs and {} idle followers",
                plan.noisy_short_jobs, plan.noisy_followers
            ),
            n: starts.len().to_string(),
            result: starts.summary(),
            reference: format!("quiet p50 {}, p99 {}", ms(quiet.p50()), ms(quiet.p99())),
            ratio: format!(
                "p50 {}; p99 {}",
                times(ratio(starts.p50(), quiet.p50())),
                times(start_ratio)
            ),
            target: format!("p99 ≤ {START_FACTOR}× quiet"),
            met: Some(start_ratio <= START_FACTOR),
        });
        let both = |pick: fn(&Alice) -> &Vec<Duration>| {
            let mut all = pick(&quiet_before).clone();
            all.extend(pick(&quiet_after));
            Samples::new(all)
        };
        for (what, quiet, noisy) in [
            (
                "fork+exec+wait `/bin/true`",
                both(|a| &a.plain),
                Samples::new(noisy.plain.clone()),
            ),
            (
                "the same in new PID, mount, net, UTS, IPC namespaces",
                both(|a| &a.namespaces),
                Samples::new(noisy.namespaces.clone()),
            ),
            (
                "the same also in a new cgroup per hierarchy, under the jobs' parent (where \
                 mallory's jobs run)",
                both(|a| &a.cgroup),
                Samples::new(noisy.cgroup.clone()),
            ),
        ] {
            report.row(Row {
                figure: "9",
                what: format!(
                    "floor, noisy against quiet, interleaved with alice's starts: {what}"
                ),
                n: noisy.len().to_string(),
                result: noisy.summary(),
                reference: format!("quiet p50 {}, p99 {}", ms(quiet.p50()), ms(quiet.p99())),
                ratio: format!(
                    "p50 {}; p99 {}",
                    times(ratio(noisy.p50(), quiet.p50())),
                    times(ratio(noisy.p99(), quiet.p99()))
                ),
                ..Row::default()
            });
        }
        let quiet_replay = (quiet_before.replay.rate() + quiet_after.replay.rate()) / 2.0;
        let quiet_live = (quiet_before.live.rate() + quiet_after.live.rate()) / 2.0;
        let replay_ratio = noisy.replay.rate() / quiet_replay;
        report.row(Row {
            figure: "9",
            what: format!(
                "**noisy neighbour**: alice reads her finished job's {} output (replay)",
                size(plan.noisy_stream_bytes)
            ),
            n: size(plan.noisy_stream_bytes),
            result: gbps(noisy.replay.rate()),
            reference: format!("quiet {} (mean of before and after)", gbps(quiet_replay)),
            ratio: times(replay_ratio),
            target: format!("≥ {STREAM_FRACTION}× quiet"),
            met: Some(replay_ratio >= STREAM_FRACTION),
        });
        report.row(Row {
            figure: "9",
            what: "noisy neighbour: alice follows the same output live while her job writes \
                   it (her job shares the jobs' CPUs with mallory's)"
                .to_owned(),
            n: size(plan.noisy_stream_bytes),
            result: gbps(noisy.live.rate()),
            reference: format!("quiet {}", gbps(quiet_live)),
            ratio: times(noisy.live.rate() / quiet_live),
            ..Row::default()
        });
        report_bounds(
            report,
            &Bounds {
                quiet_fds,
                quiet_rss,
                per_job_fds,
                connections: mallory.connections + 1,
                followers: mallory.followers,
            },
            &peaks,
        );
        report.note(format!(
            "9: mallory made {} starts ({} short jobs ended, {} refused by a quota: {}); his \
             memory hog was started {} times and OOM-killed {} times; {} followers held, each \
             ended by its OutputEnd frame once the followed job was stopped. His short jobs \
             took {:.1} s, alice's noisy phase {:.1} s.",
            mallory.starts,
            mallory.short_ended,
            mallory.refused.values().sum::<usize>(),
            describe_refusals(&mallory.refused),
            mallory.hog_runs,
            mallory.hog_oom_kills,
            mallory.followers,
            mallory.short_took.as_secs_f64(),
            alice_took.as_secs_f64(),
        ));
        Ok(())
    })
    .await
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-12)
}

fn describe_refusals(refused: &BTreeMap<String, usize>) -> String {
    if refused.is_empty() {
        return "none".to_owned();
    }
    let parts: Vec<String> = refused
        .iter()
        .map(|(reason, count)| format!("{count} × {reason}"))
        .collect();
    parts.join(", ")
}

/// Alice's starts (each waited for and removed, untimed), interleaved with the kernel floors,
/// then one job writing her stream, followed live and then replayed.
async fn alice_measures(
    client: &mut Client,
    floors: &mut ProcessFloors,
    plan: &Plan,
) -> anyhow::Result<Alice> {
    let request = jobs::request(&["/bin/true"], None);
    let (mut starts, mut plain, mut namespaces, mut cgroup) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..WARMUP + plan.noisy_starts {
        let floor = floors.sample_kernel(round)?;
        let began = Instant::now();
        let id = jobs::start(client, request.clone()).await?;
        let elapsed = began.elapsed();
        jobs::wait_ended(client, &id).await?;
        jobs::remove(client, &id).await?;
        if round >= WARMUP {
            starts.push(elapsed);
            plain.push(floor[0]);
            namespaces.push(floor[1]);
            cgroup.push(floor[2]);
        }
    }
    let bytes = plan.noisy_stream_bytes;
    let began = Instant::now();
    let id = jobs::start(client, jobs::zeros(bytes)).await?;
    let output = jobs::read_all(client, &id, bytes).await?;
    let live = Transfer {
        bytes: output.bytes,
        elapsed: began.elapsed(),
    };
    jobs::check_exit_zero(&output.end)?;
    let began = Instant::now();
    let replayed = jobs::read_all(client, &id, bytes).await?;
    let replay = Transfer {
        bytes: replayed.bytes,
        elapsed: began.elapsed(),
    };
    jobs::remove(client, &id).await?;
    Ok(Alice {
        starts,
        plain,
        namespaces,
        cgroup,
        live,
        replay,
    })
}

/// The daemon's descriptors per running job, counted with a few `sleep` jobs of alice's.
async fn fds_per_running_job(client: &mut Client, daemon: &Daemon) -> anyhow::Result<f64> {
    let before = daemon.open_fds()?;
    let mut ids = Vec::with_capacity(PROBE_JOBS);
    for _ in 0..PROBE_JOBS {
        ids.push(jobs::start(client, jobs::request(&["sleep", "1000"], None)).await?);
    }
    let during = daemon.open_fds()?;
    for id in &ids {
        jobs::stop(client, id).await?;
        jobs::remove(client, id).await?;
    }
    Ok(during.saturating_sub(before) as f64 / PROBE_JOBS as f64)
}

/// What mallory keeps running, and the tasks that drive the rest.
struct Noise {
    client: Client,
    stop: watch::Sender<bool>,
    /// The flood, the fork bomb and the followed `sleep`: stopped at the end.
    long_jobs: Vec<String>,
    followed: String,
    hog: JoinHandle<anyhow::Result<Hog>>,
    short: JoinHandle<anyhow::Result<(usize, Duration)>>,
    followers: Vec<JoinHandle<anyhow::Result<usize>>>,
    connections: usize,
    counts: Arc<Counts>,
}

/// Mallory's starts and the quotas that refused some of them.
#[derive(Default)]
struct Counts {
    starts: Mutex<usize>,
    refused: Mutex<BTreeMap<String, usize>>,
}

/// What mallory did, once he stopped.
struct Mallory {
    starts: usize,
    refused: BTreeMap<String, usize>,
    short_ended: usize,
    short_took: Duration,
    hog_runs: usize,
    hog_oom_kills: usize,
    followers: usize,
    connections: usize,
}

impl Counts {
    /// A Start of mallory's: the job's id, or `None` if a quota refused it (counted by reason).
    async fn start(
        &self,
        client: &mut Client,
        request: pb::StartRequest,
    ) -> anyhow::Result<Option<String>> {
        *self.starts.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        match client.start(request).await {
            Ok(response) => Ok(Some(response.into_inner().job_id)),
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                let reason = quota_flag(status.message());
                let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
                *refused.entry(reason).or_default() += 1;
                Ok(None)
            }
            Err(status) => Err(anyhow::Error::new(status).context("a Start of mallory's failed")),
        }
    }
}

/// The flag a quota refusal names, e.g. `--max-jobs-per-user` in "you have 1000 jobs, ...
/// (--max-jobs-per-user); remove ...", else the start of the message.
fn quota_flag(message: &str) -> String {
    message
        .split_once("(--")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(flag, _)| format!("--{flag}"))
        .unwrap_or_else(|| message.chars().take(60).collect())
}

impl Noise {
    /// Starts every kind of noise and returns once all of it is running: the long jobs
    /// started, the followers' streams open, the drivers of the short jobs and the hog going.
    async fn begin(context: &Context, daemon: &Daemon, plan: &Plan) -> anyhow::Result<Noise> {
        let tls = context.pki.client_config_for(MALLORY)?;
        let mut client = daemon.connect(tls.clone()).await?;
        let counts = Arc::new(Counts::default());
        let (stop, stopped) = watch::channel(false);
        let mut long_jobs = Vec::new();
        for argv in [
            // The output flood: dropped past its output limit, the job runs on.
            &["cat", "/dev/zero"][..],
            // The fork bomb: busy children until the job's pids limit refuses more forks.
            &["sh", "-c", "while :; do sh -c 'while :; do :; done' & done"][..],
        ] {
            let id = counts
                .start(&mut client, jobs::request(argv, None))
                .await?
                .with_context(|| format!("mallory's {argv:?} was refused"))?;
            long_jobs.push(id);
        }
        let followed = counts
            .start(&mut client, jobs::request(&["sleep", "100000"], None))
            .await?
            .context("mallory's followed job was refused")?;

        let connections = plan.noisy_followers.div_ceil(STREAMS_PER_CONNECTION);
        let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel::<()>(plan.noisy_followers);
        let mut followers = Vec::with_capacity(connections);
        for connection in 0..connections {
            let streams = STREAMS_PER_CONNECTION
                .min(plan.noisy_followers - connection * STREAMS_PER_CONNECTION);
            let mut follower = daemon.connect(tls.clone()).await?;
            let (id, opened) = (followed.clone(), opened_tx.clone());
            followers.push(tokio::spawn(async move {
                let mut open = Vec::with_capacity(streams);
                for _ in 0..streams {
                    open.push(jobs::open_output(&mut follower, &id).await?);
                    let _ = opened.send(()).await;
                }
                // Held, unread, until the followed job is stopped; then each must end with
                // its final frame, having carried nothing.
                let mut ended = 0;
                for mut stream in open {
                    let output = jobs::count(&mut stream, &id, 0).await?;
                    ensure!(output.bytes == 0, "an idle follower received output");
                    ended += 1;
                }
                anyhow::Ok(ended)
            }));
        }
        drop(opened_tx);
        for _ in 0..plan.noisy_followers {
            if opened_rx.recv().await.is_none() {
                // A follower task failed; its error is reported by `end`.
                break;
            }
        }

        let hog = tokio::spawn(hog(client.clone(), counts.clone(), stopped));
        let short = tokio::spawn(short_jobs(
            client.clone(),
            counts.clone(),
            plan.noisy_short_jobs,
        ));
        Ok(Noise {
            client,
            stop,
            long_jobs,
            followed,
            hog,
            short,
            followers,
            connections: connections + 1,
            counts,
        })
    }

    /// Waits for the short jobs to be done, stops everything else of mallory's, and collects
    /// what happened.
    async fn end(mut self) -> anyhow::Result<Mallory> {
        let short = self
            .short
            .await
            .context("the short jobs' driver panicked")?;
        let _ = self.stop.send(true);
        let hog = self.hog.await.context("the memory hog's driver panicked")?;
        let mut stopped = Vec::new();
        for id in self.long_jobs.iter().chain([&self.followed]) {
            stopped.push(jobs::stop(&mut self.client, id).await);
        }
        let mut followers = 0;
        let mut failures = Vec::new();
        for task in self.followers {
            match task
                .await
                .context("a follower task panicked")
                .and_then(|r| r)
            {
                Ok(ended) => followers += ended,
                Err(e) => failures.push(e),
            }
        }
        let (short_ended, short_took) = short?;
        let hog = hog?;
        for result in stopped {
            result?;
        }
        if let Some(first) = failures.into_iter().next() {
            return Err(first.context("an idle follower failed"));
        }
        let starts = *self.counts.starts.lock().unwrap_or_else(|e| e.into_inner());
        let refused = self
            .counts
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok(Mallory {
            starts,
            refused,
            short_ended,
            short_took,
            hog_runs: hog.runs,
            hog_oom_kills: hog.oom_kills,
            followers,
            connections: self.connections,
        })
    }
}

/// The memory hog: `tail` keeping the last gigabyte of an endless pipe, which the job's memory
/// limit (512 MiB by default) ends first; restarted each time until `stop`. (On `/dev/zero`
/// itself `tail` would seek to the end and hold nothing.)
async fn hog(
    mut client: Client,
    counts: Arc<Counts>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Hog> {
    let request = jobs::request(&["sh", "-c", "cat /dev/zero | tail -c 1G"], None);
    let mut hog = Hog::default();
    while !*stop.borrow() {
        let Some(id) = counts.start(&mut client, request.clone()).await? else {
            // A quota: try again a little later.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        hog.runs += 1;
        let mut waiter = client.clone();
        let status = tokio::select! {
            status = jobs::wait(&mut waiter, &id) => status?,
            _ = stop.changed() => jobs::stop(&mut client, &id).await?,
        };
        if status.state == pb::JobState::OomKilled as i32 {
            hog.oom_kills += 1;
        }
    }
    Ok(hog)
}

/// What the memory hog's driver saw.
#[derive(Debug, Default)]
struct Hog {
    runs: usize,
    oom_kills: usize,
}

/// `count` short jobs (`/bin/true`), `SHORT_CONCURRENCY` in flight, each waited for. Returns
/// how many ran to their end and how long all took.
async fn short_jobs(
    client: Client,
    counts: Arc<Counts>,
    count: usize,
) -> anyhow::Result<(usize, Duration)> {
    let began = Instant::now();
    let request = jobs::request(&["/bin/true"], None);
    let results: Vec<anyhow::Result<bool>> = stream::iter(0..count)
        .map(|_| {
            let (mut client, request, counts) = (client.clone(), request.clone(), counts.clone());
            async move {
                match counts.start(&mut client, request).await? {
                    Some(id) => {
                        jobs::wait_ended(&mut client, &id).await?;
                        Ok(true)
                    }
                    None => Ok(false),
                }
            }
        })
        .buffer_unordered(SHORT_CONCURRENCY)
        .collect()
        .await;
    let mut ended = 0;
    for result in results {
        if result? {
            ended += 1;
        }
    }
    Ok((ended, began.elapsed()))
}

/// The most of everything sampled during the noisy phase.
#[derive(Debug, Default)]
struct Peaks {
    fds: usize,
    rss: u64,
    /// VmHWM at the end: the daemon's peak since it started.
    hwm: u64,
    /// Job cgroups under one parent directory (the most among the hierarchies).
    cgroups: usize,
    state_bytes: u64,
    /// The jobs' parent cgroup: processes and memory, and their limits.
    pids: Option<(u64, u64)>,
    memory: Option<(u64, u64)>,
    /// The jobs' parent cgroup's CPU bandwidth: periods, periods in which it was throttled, and
    /// the time its jobs spent throttled, over the noisy phase.
    throttling: Option<Throttling>,
    samples: u32,
}

/// CFS bandwidth statistics of a cgroup (`cpu.stat`), or their growth over a phase.
#[derive(Debug, Default, Clone, Copy)]
struct Throttling {
    periods: u64,
    throttled_periods: u64,
    throttled: Duration,
}

impl Throttling {
    /// From `cpu.stat` in `dir`, v1 (`throttled_time`, ns) or v2 (`throttled_usec`).
    fn read(dir: &std::path::Path) -> Option<Throttling> {
        let text = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
        let field = |name: &str| -> Option<u64> {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|value| value.trim().parse().ok())
        };
        let throttled = match field("throttled_time") {
            Some(nanos) => Duration::from_nanos(nanos),
            None => Duration::from_micros(field("throttled_usec")?),
        };
        Some(Throttling {
            periods: field("nr_periods")?,
            throttled_periods: field("nr_throttled")?,
            throttled,
        })
    }

    fn since(self, start: Throttling) -> Throttling {
        Throttling {
            periods: self.periods.saturating_sub(start.periods),
            throttled_periods: self
                .throttled_periods
                .saturating_sub(start.throttled_periods),
            throttled: self.throttled.saturating_sub(start.throttled),
        }
    }
}

/// Samples until `stop` turns true.
async fn sample(
    pid: u32,
    parents: Vec<PathBuf>,
    state: PathBuf,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Peaks> {
    let mut peaks = Peaks::default();
    let throttling = |parents: &[PathBuf]| parents.iter().find_map(|p| Throttling::read(p));
    let throttling_before = throttling(&parents);
    loop {
        peaks.fds = peaks.fds.max(server::open_fds(pid)?);
        peaks.rss = peaks.rss.max(server::memory(pid)?.rss);
        for parent in &parents {
            let children = std::fs::read_dir(parent)
                .with_context(|| format!("cannot list {}", parent.display()))?
                .flatten()
                .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
                .count();
            peaks.cgroups = peaks.cgroups.max(children);
            let read = |file: &str| -> Option<u64> {
                std::fs::read_to_string(parent.join(file))
                    .ok()
                    .and_then(|text| text.trim().parse().ok())
            };
            if let (Some(current), Some(max)) = (read("pids.current"), read("pids.max")) {
                let peak = peaks.pids.map_or(0, |(peak, _)| peak).max(current);
                peaks.pids = Some((peak, max));
            }
            // v1 keeps the peak itself; v2 (before 5.19 without memory.peak) the current use.
            let used = read("memory.max_usage_in_bytes")
                .or_else(|| read("memory.peak"))
                .or_else(|| read("memory.current"));
            let limit = read("memory.limit_in_bytes").or_else(|| read("memory.max"));
            if let (Some(used), Some(limit)) = (used, limit) {
                let peak = peaks.memory.map_or(0, |(peak, _)| peak).max(used);
                peaks.memory = Some((peak, limit));
            }
        }
        if peaks.samples % DU_EVERY == 0 {
            peaks.state_bytes = peaks.state_bytes.max(server::du(&state)?);
        }
        peaks.samples += 1;
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            _ = stop.changed() => {}
        }
    }
    peaks.state_bytes = peaks.state_bytes.max(server::du(&state)?);
    peaks.hwm = server::memory(pid)?.peak;
    peaks.throttling = throttling(&parents)
        .zip(throttling_before)
        .map(|(after, before)| after.since(before));
    Ok(peaks)
}

/// What the bounds are computed from.
struct Bounds {
    quiet_fds: usize,
    quiet_rss: u64,
    per_job_fds: f64,
    /// Client connections open during the noisy phase (mallory's and alice's).
    connections: usize,
    followers: usize,
}

fn report_bounds(report: &mut Report, bounds: &Bounds, peaks: &Peaks) {
    let running = MAX_RUNNING_PER_USER * USERS;
    // Each running job, connection and open stream holds descriptors; nothing else grows.
    let fds_bound = bounds.quiet_fds
        + (bounds.per_job_fds * running as f64).ceil() as usize
        + bounds.connections
        + bounds.followers;
    report.row(Row {
        figure: "9",
        what: "noisy neighbour: the daemon's open descriptors, peak".to_owned(),
        n: peaks.samples.to_string(),
        result: peaks.fds.to_string(),
        reference: format!(
            "quiet {} + {:.1} per running job × {running} (quotas) + {} connections + {} \
             streams = {fds_bound}",
            bounds.quiet_fds, bounds.per_job_fds, bounds.connections, bounds.followers
        ),
        ratio: times(peaks.fds as f64 / fds_bound as f64),
        target: "within the bound".to_owned(),
        met: Some(peaks.fds <= fds_bound),
    });
    let items = bounds.followers + running + bounds.connections;
    let rss_bound = bounds.quiet_rss + RSS_PER_ITEM * items as u64;
    report.row(Row {
        figure: "9",
        what: "noisy neighbour: the daemon's RSS, peak sampled (VmRSS) and peak since start \
               (VmHWM)"
            .to_owned(),
        n: peaks.samples.to_string(),
        result: format!("{}; {}", mb(peaks.rss), mb(peaks.hwm)),
        reference: format!(
            "quiet {} + 64 KiB × {items} (followers, running jobs, connections) = {}",
            mb(bounds.quiet_rss),
            mb(rss_bound)
        ),
        ratio: times(peaks.hwm as f64 / rss_bound as f64),
        target: "within the bound".to_owned(),
        met: Some(peaks.hwm <= rss_bound),
    });
    report.row(Row {
        figure: "9",
        what: "noisy neighbour: job cgroups under the daemon's parent, peak".to_owned(),
        n: peaks.samples.to_string(),
        result: peaks.cgroups.to_string(),
        reference: format!("{USERS} users × --max-running-per-user {MAX_RUNNING_PER_USER}"),
        ratio: times(peaks.cgroups as f64 / running as f64),
        target: "within the bound".to_owned(),
        met: Some(peaks.cgroups <= running),
    });
    report.row(Row {
        figure: "9",
        what: "noisy neighbour: the state directory (`du`), peak".to_owned(),
        n: (peaks.samples / DU_EVERY + 1).to_string(),
        result: size(peaks.state_bytes),
        reference: format!("--max-total-output {BUDGET}; --max-job-output {MAX_JOB_OUTPUT}"),
        ratio: times(peaks.state_bytes as f64 / BUDGET_BYTES as f64),
        target: "within the bound".to_owned(),
        met: Some(peaks.state_bytes <= BUDGET_BYTES),
    });
    if let (Some((pids, pids_max)), Some((memory, memory_max))) = (peaks.pids, peaks.memory) {
        report.row(Row {
            figure: "9",
            what: "noisy neighbour: the jobs' parent cgroup, peak processes and memory".to_owned(),
            n: peaks.samples.to_string(),
            result: format!("{pids} processes; {}", size(memory)),
            reference: format!("--jobs-pids {pids_max}; --jobs-memory {}", size(memory_max)),
            ratio: format!(
                "{}; {}",
                times(pids as f64 / pids_max as f64),
                times(memory as f64 / memory_max as f64)
            ),
            target: "within the bound".to_owned(),
            met: Some(pids <= pids_max && memory <= memory_max),
        });
    }
    if let Some(t) = peaks.throttling {
        report.note(format!(
            "9: during the noisy phase the jobs' parent cgroup (`--jobs-cpus`) ran out of its \
             CPU quota in {} of {} CFS periods (its jobs throttled {:.1} s in all).",
            t.throttled_periods,
            t.periods,
            t.throttled.as_secs_f64()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_counted_by_the_flag_it_names() {
        assert_eq!(
            quota_flag(
                "you have 1000 jobs, running or ended, the most this server keeps per user \
                 (--max-jobs-per-user); remove ended ones with `jobctl rm ID...`"
            ),
            "--max-jobs-per-user"
        );
        assert_eq!(quota_flag("no flag here"), "no flag here");
    }
}
