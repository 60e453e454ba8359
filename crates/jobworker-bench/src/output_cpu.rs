//! Figure 8: who pays for storing a job's output. A job limited to `--cpus 0.1` writes zeros as
//! fast as its limit lets it; the daemon's CPU is measured while nobody reads the output, and
//! while one client follows it live; the job's own CPU (its command and its init, which copies
//! the output into the log inside the job's cgroup) comes from its final status.
//!
//! Before the init kept the log, the daemon copied every job's pipe itself, outside any limit:
//! a `--cpus 0.01` job used 0.2 s of CPU while the daemon spent 2.85 s storing its output.

use std::time::{Duration, Instant};

use anyhow::ensure;
use jobworker_api::pb;

use crate::Context;
use crate::jobs;
use crate::report::{Report, Row};
use crate::server::with_daemon;
use crate::stats::{per_gb, size, times};

/// The job's CPU limit.
const CPUS: f64 = 0.1;

/// What one run measured.
struct Run {
    /// The daemon's CPU time while the job ran (and, with a follower, was followed).
    daemon: Duration,
    /// The job's cgroup's CPU time.
    job: Duration,
    /// From the Start to the job's end (or the follower's last byte).
    elapsed: Duration,
}

/// Measures figure 8.
pub async fn measure(context: &Context, report: &mut Report) -> anyhow::Result<()> {
    let bytes = context.plan.throttled_bytes;
    with_daemon(&context.bins, &context.pki, async |daemon| {
        let mut client = daemon.connect(context.pki.client_config()?).await?;
        let limits = pb::Limits {
            cpus: Some(CPUS),
            ..pb::Limits::default()
        };
        let request = jobs::zeros_limited(bytes, Some(limits));

        // No reader: the daemon only learns (inotify) that the log grows.
        let daemon_before = daemon.cpu_time()?;
        let began = Instant::now();
        let id = jobs::start(&mut client, request.clone()).await?;
        let status = jobs::wait_ended(&mut client, &id).await?;
        let unread = Run {
            daemon: daemon.cpu_time()?.saturating_sub(daemon_before),
            job: jobs::cpu_time(&status),
            elapsed: began.elapsed(),
        };
        let stored = status.output.as_ref().map_or(0, |o| o.bytes);
        ensure!(
            stored == bytes,
            "the throttled job stored {stored} bytes, not {bytes}"
        );
        jobs::remove(&mut client, &id).await?;

        // One follower, from the first byte, while the job writes.
        let daemon_before = daemon.cpu_time()?;
        let began = Instant::now();
        let id = jobs::start(&mut client, request).await?;
        let output = jobs::read_all(&mut client, &id, bytes).await?;
        jobs::check_exit_zero(&output.end)?;
        let followed = Run {
            daemon: daemon.cpu_time()?.saturating_sub(daemon_before),
            job: jobs::cpu_time(&output.end),
            elapsed: began.elapsed(),
        };
        jobs::remove(&mut client, &id).await?;

        for (figure, what, run) in [
            ("8a", "nobody reads it", &unread),
            ("8b", "one client follows it live", &followed),
        ] {
            report.row(Row {
                figure,
                what: format!(
                    "**daemon CPU per GB** of a `--cpus {CPUS}` job's output (`head -c N \
                     /dev/zero`); {what}"
                ),
                n: size(bytes),
                result: format!(
                    "daemon {:.3} CPU-s/GB ({:.3} s in {:.1} s)",
                    per_gb(run.daemon, bytes),
                    run.daemon.as_secs_f64(),
                    run.elapsed.as_secs_f64()
                ),
                reference: format!(
                    "the job's cgroup {:.2} CPU-s/GB ({:.2} s)",
                    per_gb(run.job, bytes),
                    run.job.as_secs_f64()
                ),
                ratio: times(run.daemon.as_secs_f64() / run.job.as_secs_f64().max(1e-9)),
                ..Row::default()
            });
        }
        Ok(())
    })
    .await
}
