//! Figure 7: how long a daemon takes to start on a state directory holding many ended jobs
//! (every record is read back at start-up), next to a daemon starting on an empty one.
//!
//! The jobs are made through the API by a first daemon allowed to keep them all
//! (`--max-jobs`, `--max-jobs-per-user`), which is then stopped with SIGTERM. Each repetition
//! then starts a daemon on that directory twice — with the directory's pages in the page cache
//! (a restart), and with them evicted (`posix_fadvise(DONTNEED)` on each of its files, which
//! leaves other programs' cache alone; directory entries and inodes stay cached, so a reboot is
//! colder still) — and once on an empty directory, interleaved.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use futures::{StreamExt, stream};
use jobworker_api::pb;

use crate::Context;
use crate::jobs;
use crate::report::{Report, Row};
use crate::server::{self, Daemon, Options};
use crate::stats::{Samples, ms, times};

/// Starts in flight at once while filling the directory.
const FILL_CONCURRENCY: usize = 8;

/// The goal for a daemon reloading 10,000 ended jobs.
const TARGET: Duration = Duration::from_secs(1);

/// How long a restarted daemon took, two ways.
#[derive(Default)]
struct Restarts {
    /// From the exec to the line saying it listens.
    listening: Vec<Duration>,
    /// From the exec to the first GetStatus answered over a new connection.
    answered: Vec<Duration>,
}

impl Restarts {
    fn samples(&self) -> (Samples, Samples) {
        (
            Samples::new(self.listening.clone()),
            Samples::new(self.answered.clone()),
        )
    }
}

/// Measures figure 7.
pub async fn measure(context: &Context, report: &mut Report) -> anyhow::Result<()> {
    let (bins, pki) = (&context.bins, &context.pki);
    let count = context.plan.reload_jobs;
    let state = server::state_dir()?;
    let room = (count + 1).to_string();
    let options = Options {
        state_dir: Some(state.path().to_owned()),
        cgroup_parent: Some(format!("bench-{}", uuid::Uuid::new_v4())),
        args: ["--max-jobs", &room, "--max-jobs-per-user", &room]
            .map(str::to_owned)
            .to_vec(),
    };

    let began = Instant::now();
    let filler = Daemon::start_with(bins, pki, &options)?;
    let filled = fill(context, &filler, count).await;
    filler.stop().await?;
    let ids = filled?;
    let fill_time = began.elapsed();
    report.note(format!(
        "7: {count} jobs (`/bin/true`) started, ended and recorded through the API in {:.1} s \
         ({:.0} per second, {FILL_CONCURRENCY} in flight); state directory {}.",
        fill_time.as_secs_f64(),
        count as f64 / fill_time.as_secs_f64(),
        crate::stats::size(server::du(state.path())?)
    ));

    let (mut warm, mut cold, mut empty) = (
        Restarts::default(),
        Restarts::default(),
        Restarts::default(),
    );
    for rep in 0..context.plan.reload_reps {
        // The first restart also proves that every job came back, page by page.
        restart(context, &options, &ids, rep == 0, &mut warm).await?;
        evict(state.path())?;
        restart(context, &options, &ids, false, &mut cold).await?;
        restart(context, &Options::default(), &[], false, &mut empty).await?;
    }

    let (empty_listening, empty_answered) = empty.samples();
    report.row(Row {
        figure: "7",
        what: "floor: a daemon starting on an empty state directory (exec to `listening`; to \
               the first GetStatus answered)"
            .to_owned(),
        n: empty_listening.len().to_string(),
        result: format!(
            "p50 {}; {}",
            ms(empty_listening.p50()),
            ms(empty_answered.p50())
        ),
        ..Row::default()
    });
    for (kind, restarts) in [
        ("in the page cache", &warm),
        (
            "evicted from the page cache (fadvise; inodes stay cached)",
            &cold,
        ),
    ] {
        let (listening, answered) = restarts.samples();
        report.row(Row {
            figure: "7",
            what: format!(
                "**reload**: a daemon starting on a state directory of {count} ended jobs, \
                 {kind} (exec to `listening`; to the first GetStatus answered)"
            ),
            n: listening.len().to_string(),
            result: format!("p50 {}; {}", ms(listening.p50()), ms(answered.p50())),
            reference: format!("empty directory p50 {}", ms(empty_listening.p50())),
            ratio: times(listening.p50().as_secs_f64() / empty_listening.p50().as_secs_f64()),
            target: format!("≤ {} s for 10,000 jobs", TARGET.as_secs()),
            // The goal is stated for 10,000 jobs: a smaller (quick) run cannot meet it.
            met: (count >= 10_000).then(|| answered.p50() <= TARGET),
        });
    }
    Ok(())
}

/// Starts `count` jobs that end at once, `FILL_CONCURRENCY` at a time, and returns their ids.
async fn fill(context: &Context, daemon: &Daemon, count: usize) -> anyhow::Result<Vec<String>> {
    let client = daemon.connect(context.pki.client_config()?).await?;
    let request = jobs::request(&["/bin/true"], None);
    let started: Vec<anyhow::Result<String>> = stream::iter(0..count)
        .map(|_| {
            let (mut client, request) = (client.clone(), request.clone());
            async move {
                let id = jobs::start(&mut client, request).await?;
                jobs::wait_ended(&mut client, &id).await?;
                anyhow::Ok(id)
            }
        })
        .buffer_unordered(FILL_CONCURRENCY)
        .collect()
        .await;
    started.into_iter().collect()
}

/// Starts a daemon with `options`, times it to its `listening` line and to the first GetStatus
/// answered, optionally checks that `List` returns exactly `ids`, and stops it.
async fn restart(
    context: &Context,
    options: &Options,
    ids: &[String],
    check_all: bool,
    into: &mut Restarts,
) -> anyhow::Result<()> {
    let daemon = Daemon::start_with(&context.bins, &context.pki, options)?;
    let checked = async {
        let mut client = daemon.connect(context.pki.client_config()?).await?;
        match ids.first() {
            Some(id) => {
                let status = client
                    .get_status(pb::GetStatusRequest { job_id: id.clone() })
                    .await
                    .with_context(|| format!("GetStatus of reloaded job {id} failed"))?
                    .into_inner()
                    .status
                    .context("GetStatus returned no status")?;
                jobs::check_exit_zero(&status)?;
            }
            // An empty directory: any call proves the daemon answers.
            None => {
                client
                    .list(pb::ListRequest::default())
                    .await
                    .context("List failed")?;
            }
        }
        let answered = daemon.spawned().elapsed();
        if check_all {
            let mut listed: Vec<String> = jobs::list_all(&mut client)
                .await?
                .into_iter()
                .map(|job| job.job_id)
                .collect();
            let mut expected = ids.to_vec();
            listed.sort_unstable();
            expected.sort_unstable();
            ensure!(
                listed == expected,
                "the reloaded daemon lists {} jobs, {} were recorded",
                listed.len(),
                expected.len()
            );
        }
        anyhow::Ok(answered)
    }
    .await;
    let listening = daemon.startup();
    let stopped = daemon.stop().await;
    let answered = checked?;
    stopped?;
    into.listening.push(listening);
    into.answered.push(answered);
    Ok(())
}

/// Drops the page-cache pages of every file under `dir`, and only those: other programs on the
/// machine keep their cache. The files are clean (records are fsync'd, logs were flushed when
/// their jobs ended), so nothing is lost and nothing waits for writeback.
fn evict(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            evict(&path)?;
        } else if kind.is_file() {
            let file = std::fs::File::open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            nix::fcntl::posix_fadvise(
                file.as_fd(),
                0,
                0,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            )
            .with_context(|| format!("cannot evict {} from the page cache", path.display()))?;
        }
    }
    Ok(())
}
