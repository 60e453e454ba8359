//! Figure 3: one client reading a job's output, (a) replayed after the job ended and (b)
//! followed live while the job writes it, next to the same bytes over plain loopback TLS.
//!
//! The three measurements are interleaved (floor, replay, live, floor, …) so that a burst of
//! other work on the machine hits all three alike; the median of the repetitions is reported.
//! The CPU each side used is reported per GB: the daemon's (which only reads the log: the
//! job's init copies the output into it, charged to the job's cgroup), this process's (the
//! client), and the job's own, from its final status.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::jobs::{self, Client};
use crate::report::{Report, Row};
use crate::server::{Daemon, cpu_time, with_daemon};
use crate::stats::{self, Transfer, gbps, mb, median_rate, per_gb, size, times};
use crate::{Context, floors};

/// CPU time used during the measurements of one kind, by the daemon and by this process
/// (the client, or both ends of the floor).
#[derive(Debug, Default)]
struct Cpu {
    server: Duration,
    client: Duration,
}

/// Runs `measure`, adding the CPU time the daemon and this process used meanwhile to `cpu`.
async fn metered(
    daemon: &Daemon,
    cpu: &mut Cpu,
    measure: impl AsyncFnOnce() -> anyhow::Result<Transfer>,
) -> anyhow::Result<Transfer> {
    let (server, client) = (daemon.cpu_time()?, cpu_time("self")?);
    let transfer = measure().await?;
    cpu.server += daemon.cpu_time()?.saturating_sub(server);
    cpu.client += cpu_time("self")?.saturating_sub(client);
    Ok(transfer)
}

/// Measures figure 3 and returns the floor's rate (bytes per second), for figure 4.
pub async fn measure(context: &Context, report: &mut Report) -> anyhow::Result<f64> {
    let plan = context.plan;
    let bytes = plan.stream_bytes;
    with_daemon(&context.bins, &context.pki, async |daemon| {
        let idle = daemon.memory()?;
        let mut client = daemon.connect(context.pki.client_config()?).await?;
        // The replayed job: written once, read back in every repetition.
        let finished = jobs::start(&mut client, jobs::zeros(bytes)).await?;
        let replayed = jobs::wait_ended(&mut client, &finished).await?;
        // The jobs' own CPU (`head` and the init's copy into the log), from their final status.
        let mut job_cpu = jobs::cpu_time(&replayed);

        let (mut floor, mut replay, mut live) = (Vec::new(), Vec::new(), Vec::new());
        let (mut floor_cpu, mut replay_cpu, mut live_cpu) =
            (Cpu::default(), Cpu::default(), Cpu::default());
        for _ in 0..plan.stream_reps {
            floor.push(
                metered(daemon, &mut floor_cpu, async || {
                    floors::loopback_tls(&context.pki, bytes).await
                })
                .await?,
            );
            replay.push(
                metered(daemon, &mut replay_cpu, async || {
                    Ok(timed_read(&mut client, &finished, bytes).await?.0)
                })
                .await?,
            );
            let writing = jobs::start(&mut client, jobs::zeros(bytes)).await?;
            let mut end = None;
            live.push(
                metered(daemon, &mut live_cpu, async || {
                    let (transfer, status) = timed_read(&mut client, &writing, bytes).await?;
                    end = Some(status);
                    Ok(transfer)
                })
                .await?,
            );
            let end = end.context("the live read returned no final status")?;
            jobs::check_exit_zero(&end)?;
            job_cpu += jobs::cpu_time(&end);
            jobs::remove(&mut client, &writing).await?;
        }
        jobs::remove(&mut client, &finished).await?;
        let peak = daemon.memory()?.peak;

        let (Some(floor), Some(replay), Some(live)) = (
            median_rate(&floor),
            median_rate(&replay),
            median_rate(&live),
        ) else {
            anyhow::bail!("no repetitions were run");
        };
        let n = format!("{} ×{}", size(bytes), plan.stream_reps);
        report.row(Row {
            figure: "3",
            what: "floor: loopback TLS 1.3, the same rustls configurations, 64 KiB writes"
                .to_owned(),
            n: n.clone(),
            result: gbps(floor.rate()),
            ..Row::default()
        });
        let replay_ratio = replay.rate() / floor.rate();
        report.row(Row {
            figure: "3a",
            what: "**replay**: StreamOutput of a job that has ended".to_owned(),
            n: n.clone(),
            result: gbps(replay.rate()),
            reference: format!("TLS floor {}", gbps(floor.rate())),
            ratio: times(replay_ratio),
            target: "≥ 1 GB/s and ≥ 0.7× floor".to_owned(),
            met: Some(replay.rate() >= 1e9 && replay_ratio >= 0.7),
        });
        let live_ratio = live.rate() / replay.rate();
        report.row(Row {
            figure: "3b",
            what: "**live follow**: StreamOutput while the job writes (`head -c N /dev/zero`)"
                .to_owned(),
            n,
            result: gbps(live.rate()),
            reference: format!("replay {}", gbps(replay.rate())),
            ratio: times(live_ratio),
            target: "≥ 0.8× replay".to_owned(),
            met: Some(live_ratio >= 0.8),
        });
        let total = bytes * plan.stream_reps as u64;
        report.row(Row {
            figure: "3c",
            what: "**daemon CPU per GB of live output** (following it live; the job's init \
                   copies it into the log, in the job's cgroup)"
                .to_owned(),
            n: format!("{} ×{}", size(bytes), plan.stream_reps),
            result: format!("{:.2} CPU-s/GB", per_gb(live_cpu.server, total)),
            reference: format!(
                "replay {:.2}; TLS floor {:.2} (both ends)",
                per_gb(replay_cpu.server, total),
                per_gb(floor_cpu.client, total)
            ),
            ratio: times(live_cpu.server.as_secs_f64() / replay_cpu.server.as_secs_f64().max(1e-9)),
            ..Row::default()
        });
        report.note(format!(
            "3: CPU seconds per GB moved: TLS floor {:.2} (both ends, one process); replay \
             {:.2} daemon + {:.2} client; live {:.2} daemon + {:.2} client; the jobs' cgroups \
             (`head` plus the init copying into the log) {:.2} per GB written ({} jobs).",
            per_gb(floor_cpu.client, total),
            per_gb(replay_cpu.server, total),
            per_gb(replay_cpu.client, total),
            per_gb(live_cpu.server, total),
            per_gb(live_cpu.client, total),
            per_gb(job_cpu, total + bytes),
            plan.stream_reps + 1,
        ));
        report.row(Row {
            figure: "5",
            what: format!(
                "server peak RSS over figure 3: {} jobs writing {} each, {} replays, {} live \
                 follows",
                plan.stream_reps + 1,
                size(bytes),
                plan.stream_reps,
                plan.stream_reps
            ),
            n: size(bytes),
            result: mb(peak),
            reference: format!("idle {}", mb(idle.rss)),
            ratio: format!("+{}", stats::size(peak.saturating_sub(idle.rss))),
            target: "independent of output size".to_owned(),
            // Independent: what the daemon adds is a small fraction of one output.
            met: Some(peak.saturating_sub(idle.rss) < bytes / 16),
        });
        Ok(floor.rate())
    })
    .await
}

/// Reads the job's whole output, timed from the request to its last byte (the closing
/// `OutputEnd` frame, which follows the last byte at once, included); returns the final status.
async fn timed_read(
    client: &mut Client,
    id: &str,
    bytes: u64,
) -> anyhow::Result<(Transfer, jobworker_api::pb::JobStatus)> {
    let began = Instant::now();
    let read = jobs::read_all(client, id, bytes).await?;
    let transfer = Transfer {
        bytes: read.bytes,
        elapsed: began.elapsed(),
    };
    Ok((transfer, read.end))
}
