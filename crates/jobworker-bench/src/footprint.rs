//! Figure 5: the daemon's resident memory idle, with many running jobs, with many finished jobs
//! holding output, and with many open output streams.
//!
//! Each state is measured in a fresh daemon against that daemon's own baseline (one client
//! connected, one call made), so memory an earlier state left in the allocator never counts
//! for a later one. Every start, stop and stream is checked: a single error fails the run.
//!
//! The daemons here allow one user as many jobs as the figure holds (`--max-running-per-user`,
//! `--max-jobs-per-user`; their defaults, 64 and 1000, are the noisy-neighbour figure's
//! business), and `List`, paged, must return every one of them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use futures::{StreamExt, stream};
use jobworker_api::pb;
use tokio::sync::{Semaphore, mpsc};

use crate::Context;
use crate::jobs::{self, Client};
use crate::report::{Report, Row};
use crate::server::{Daemon, Memory, Options, with_daemon, with_daemon_options};
use crate::stats::{mb, size};

/// Starts in flight at once: enough to keep both CPUs busy, few enough not to flood them.
const START_CONCURRENCY: usize = 8;

/// Stops in flight at once: a stop mostly waits for the job to end.
const STOP_CONCURRENCY: usize = 64;

/// Connections being set up at once for the streams state (handshakes are CPU-bound).
const CONNECT_CONCURRENCY: usize = 16;

/// How long all streams may take to read what the job has written.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(300);

/// The goal for what one finished job may cost the daemon.
const PER_FINISHED_JOB_TARGET: u64 = 64 * 1024;

/// A daemon that lets one user hold `jobs` jobs, all running.
fn roomy(jobs: usize) -> Options {
    // One more than the figure needs: the baseline's call and the stream state's job.
    let jobs = (jobs + 1).to_string();
    Options::with_args(&[
        "--max-running-per-user",
        &jobs,
        "--max-jobs-per-user",
        &jobs,
    ])
}

/// Checks that `List`, page by page, returns exactly `ids`.
async fn check_listed(client: &mut Client, ids: &[String]) -> anyhow::Result<()> {
    let listed = jobs::list_all(client).await?;
    let mut listed: Vec<String> = listed.into_iter().map(|job| job.job_id).collect();
    let mut expected = ids.to_vec();
    listed.sort_unstable();
    expected.sort_unstable();
    ensure!(
        listed == expected,
        "List returned {} jobs, {} were started",
        listed.len(),
        expected.len()
    );
    Ok(())
}

/// Measures every state of figure 5.
pub async fn measure(context: &Context, report: &mut Report) -> anyhow::Result<()> {
    idle(context, report).await?;
    running(context, report).await?;
    finished(context, report).await?;
    streams(context, report).await
}

/// A connected client, and the daemon's memory once that client has made one call.
async fn baseline(context: &Context, daemon: &Daemon) -> anyhow::Result<(Client, Memory)> {
    let mut client = daemon.connect(context.pki.client_config()?).await?;
    client
        .list(pb::ListRequest::default())
        .await
        .context("List failed")?;
    Ok((client, daemon.memory()?))
}

/// What `items` things added to the daemon, per thing.
fn per_item(loaded: Memory, baseline: Memory, items: usize) -> u64 {
    loaded.rss.saturating_sub(baseline.rss) / items.max(1) as u64
}

async fn idle(context: &Context, report: &mut Report) -> anyhow::Result<()> {
    with_daemon(&context.bins, &context.pki, async |daemon| {
        let unconnected = daemon.memory()?;
        let (_client, connected) = baseline(context, daemon).await?;
        report.row(Row {
            figure: "5",
            what: "server RSS idle: just started; then with one client connected".to_owned(),
            result: format!("{}; {}", mb(unconnected.rss), mb(connected.rss)),
            ..Row::default()
        });
        Ok(())
    })
    .await
}

async fn running(context: &Context, report: &mut Report) -> anyhow::Result<()> {
    let jobs = context.plan.footprint_items;
    let options = roomy(jobs);
    with_daemon_options(&context.bins, &context.pki, &options, async |daemon| {
        let (mut client, baseline) = baseline(context, daemon).await?;
        // Each running job reserves its output limit in --max-total-output: a small one lets a
        // thousand run at once, as an operator's idle jobs would.
        let limits = pb::Limits {
            output_bytes: Some(1 << 20),
            ..pb::Limits::default()
        };
        let request = jobs::request(&["sleep", "1000"], Some(limits));
        let started: Vec<anyhow::Result<String>> = stream::iter(0..jobs)
            .map(|_| {
                let (mut client, request) = (client.clone(), request.clone());
                async move { jobs::start(&mut client, request).await }
            })
            .buffer_unordered(START_CONCURRENCY)
            .collect()
            .await;
        let failed = report.errors_in("starting a `sleep 1000` job", &started);
        let loaded = daemon.memory()?;
        let ids: Vec<String> = started.into_iter().flatten().collect();
        check_listed(&mut client, &ids).await?;
        let stopped: Vec<anyhow::Result<pb::JobStatus>> = stream::iter(ids)
            .map(|id| {
                let mut client = client.clone();
                async move { jobs::stop(&mut client, &id).await }
            })
            .buffer_unordered(STOP_CONCURRENCY)
            .collect()
            .await;
        let failed = failed + report.errors_in("stopping a `sleep 1000` job", &stopped);
        report.row(Row {
            figure: "5",
            what: format!("server RSS with {jobs} running jobs (`sleep 1000`), then stopped"),
            n: jobs.to_string(),
            result: mb(loaded.rss),
            reference: format!("one client connected {}", mb(baseline.rss)),
            ratio: format!("+{} per job", size(per_item(loaded, baseline, jobs))),
            met: (failed > 0).then_some(false),
            ..Row::default()
        });
        Ok(())
    })
    .await
}

async fn finished(context: &Context, report: &mut Report) -> anyhow::Result<()> {
    let (jobs, output) = (context.plan.footprint_items, context.plan.footprint_output);
    let options = roomy(jobs);
    with_daemon_options(&context.bins, &context.pki, &options, async |daemon| {
        let (mut client, baseline) = baseline(context, daemon).await?;
        let ended: Vec<anyhow::Result<String>> = stream::iter(0..jobs)
            .map(|_| {
                let mut client = client.clone();
                async move {
                    let id = jobs::start(&mut client, jobs::zeros(output)).await?;
                    jobs::wait_ended(&mut client, &id).await?;
                    Ok(id)
                }
            })
            .buffer_unordered(START_CONCURRENCY)
            .collect()
            .await;
        let failed = report.errors_in("a job writing its output", &ended);
        let loaded = daemon.memory()?;
        // Proof that the finished jobs are all there and still hold their output: all of it
        // reads back.
        let ids: Vec<String> = ended.into_iter().flatten().collect();
        check_listed(&mut client, &ids).await?;
        let read: Vec<anyhow::Result<u64>> = stream::iter(ids)
            .map(|id| {
                let mut client = client.clone();
                async move { anyhow::Ok(jobs::read_all(&mut client, &id, output).await?.bytes) }
            })
            .buffer_unordered(START_CONCURRENCY)
            .collect()
            .await;
        let failed = failed + report.errors_in("reading a finished job's output", &read);
        let per_job = per_item(loaded, baseline, jobs);
        report.row(Row {
            figure: "5",
            what: format!(
                "server RSS with {jobs} finished jobs holding {} each",
                size(output)
            ),
            n: jobs.to_string(),
            result: mb(loaded.rss),
            reference: format!("one client connected {}", mb(baseline.rss)),
            ratio: format!("+{} per job", size(per_job)),
            target: "≤ 64 KiB per finished job".to_owned(),
            met: Some(failed == 0 && per_job <= PER_FINISHED_JOB_TARGET),
        });
        Ok(())
    })
    .await
}

async fn streams(context: &Context, report: &mut Report) -> anyhow::Result<()> {
    let (streams, output) = (context.plan.footprint_items, context.plan.footprint_output);
    with_daemon(&context.bins, &context.pki, async |daemon| {
        let (mut client, _) = baseline(context, daemon).await?;
        // Writes its output, then keeps running: every stream reads it all and then follows.
        let script = format!("head -c {output} /dev/zero; exec sleep 1000");
        let id = jobs::start(&mut client, jobs::request(&["sh", "-c", &script], None)).await?;
        let job_running = daemon.memory()?;

        let tls = context.pki.client_config()?;
        let connecting = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
        // Each reader reports once whether it caught up; then it holds its stream open.
        let (caught_up_tx, mut caught_up_rx) = mpsc::channel::<bool>(streams);
        let readers: Vec<_> = (0..streams)
            .map(|_| {
                let (address, tls, id) = (daemon.address().to_owned(), tls.clone(), id.clone());
                let (connecting, caught_up) = (connecting.clone(), caught_up_tx.clone());
                tokio::spawn(async move {
                    let caught = async {
                        let _permit = connecting.acquire().await?;
                        let mut client = jobworker_api::connect(&address, tls).await?;
                        let mut stream = jobs::open_output(&mut client, &id).await?;
                        let mut read = 0;
                        while read < output {
                            match stream.message().await? {
                                Some(message) => read += message.data().len() as u64,
                                None => bail!("the stream ended after {read} of {output} bytes"),
                            }
                        }
                        anyhow::Ok((client, stream, read))
                    }
                    .await;
                    let _ = caught_up.send(caught.is_ok()).await;
                    let (_client, mut stream, read) = caught?;
                    let total = jobs::count(&mut stream, &id, read).await?.bytes;
                    ensure!(
                        total == output,
                        "a stream carried {total} bytes, not {output}"
                    );
                    anyhow::Ok(total)
                })
            })
            .collect();
        drop(caught_up_tx);

        let mut caught_up = 0;
        let waited = tokio::time::timeout(CATCH_UP_TIMEOUT, async {
            for _ in 0..streams {
                match caught_up_rx.recv().await {
                    Some(true) => caught_up += 1,
                    Some(false) => {}
                    None => break,
                }
            }
        })
        .await;
        let loaded = daemon.memory()?;
        // The job's end ends every stream; each must then have carried exactly the output.
        jobs::stop(&mut client, &id).await?;
        let mut results = Vec::with_capacity(readers.len());
        for reader in readers {
            results.push(
                reader
                    .await
                    .context("a reader task panicked")
                    .and_then(|r| r),
            );
        }
        let failed = report.errors_in("a held output stream", &results);
        if waited.is_err() {
            report.error(format!(
                "only {caught_up} of {streams} streams caught up within {CATCH_UP_TIMEOUT:?}"
            ));
        }
        report.row(Row {
            figure: "5",
            what: format!(
                "server RSS with {streams} concurrent output streams of one running job \
                 ({streams} clients, one stream each, each caught up after {})",
                size(output)
            ),
            n: caught_up.to_string(),
            result: mb(loaded.rss),
            reference: format!("one client, job running {}", mb(job_running.rss)),
            ratio: format!(
                "+{} per stream",
                size(per_item(loaded, job_running, streams))
            ),
            met: (failed > 0 || waited.is_err()).then_some(false),
            ..Row::default()
        });
        Ok(())
    })
    .await
}
