//! Figure 4: many clients, each on its own connection, following one job's output from its
//! first byte while the job writes it.

use std::time::Instant;

use anyhow::Context as _;

use crate::Context;
use crate::jobs;
use crate::report::{Report, Row};
use crate::server::{cpu_time, with_daemon};
use crate::stats::{gbps, mb, size, times};

/// The most peak memory the issue allows the daemon for this figure.
const PEAK_RSS_TARGET: u64 = 64_000_000;

/// Measures figure 4; `tls_floor` (bytes per second) is figure 3's floor, for comparison.
pub async fn measure(
    context: &Context,
    report: &mut Report,
    tls_floor: Option<f64>,
) -> anyhow::Result<()> {
    let plan = context.plan;
    let (readers, bytes) = (plan.fanout_clients, plan.fanout_bytes);
    with_daemon(&context.bins, &context.pki, async |daemon| {
        let tls = context.pki.client_config()?;
        // Connected beforehand: the figure is about streaming, not handshakes.
        let mut clients = Vec::with_capacity(readers);
        for _ in 0..readers {
            clients.push(daemon.connect(tls.clone()).await?);
        }
        let mut starter = daemon.connect(tls).await?;
        let (server_cpu, client_cpu) = (daemon.cpu_time()?, cpu_time("self")?);
        let id = jobs::start(&mut starter, jobs::zeros(bytes)).await?;
        let began = Instant::now();
        // A task per reader, so that they are spread over the runtime's threads.
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|mut client| {
                let id = id.clone();
                tokio::spawn(async move {
                    anyhow::Ok(jobs::read_all(&mut client, &id, bytes).await?.bytes)
                })
            })
            .collect();
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(task.await.context("a reader task panicked").and_then(|r| r));
        }
        let elapsed = began.elapsed();
        let server_cpu = daemon.cpu_time()?.saturating_sub(server_cpu);
        let client_cpu = cpu_time("self")?.saturating_sub(client_cpu);
        let failed = report.errors_in("a fan-out reader", &results);
        jobs::wait_ended(&mut starter, &id).await?;
        let memory = daemon.memory()?;

        let total: u64 = results.iter().flatten().sum();
        let rate = total as f64 / elapsed.as_secs_f64();
        report.row(Row {
            figure: "4",
            what: format!(
                "**fan-out**: {readers} clients follow one job writing {}; aggregate rate, \
                 daemon peak RSS",
                size(bytes)
            ),
            n: format!("{readers} × {}", size(bytes)),
            result: format!("{}; peak RSS {}", gbps(rate), mb(memory.peak)),
            reference: tls_floor.map_or(String::new(), |floor| {
                format!("one-connection TLS floor {}", gbps(floor))
            }),
            ratio: tls_floor.map_or(String::new(), |floor| times(rate / floor)),
            target: "≥ 1 GB/s, peak RSS ≤ 64 MB".to_owned(),
            met: Some(failed == 0 && rate >= 1e9 && memory.peak <= PEAK_RSS_TARGET),
        });
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        report.note(format!(
            "4: in {:.1} s the daemon used {:.1} CPU-seconds and the {readers} clients (this \
             process) {:.1}, of the {:.0} CPU-seconds {cpus} CPUs offer.",
            elapsed.as_secs_f64(),
            server_cpu.as_secs_f64(),
            client_cpu.as_secs_f64(),
            cpus as f64 * elapsed.as_secs_f64(),
        ));
        Ok(())
    })
    .await
}
