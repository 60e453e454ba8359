//! jobworker-bench: measures a real `jobworkerd` over mutual TLS, and the machine's floors for
//! the same work in the same run, and prints the figures as a markdown table.
//!
//! ```text
//! sudo apt-get install bubblewrap                     # the sandboxing anchor of figure 1
//! cargo build --release --workspace --locked          # the daemon and jobctl it drives
//! sudo cargo run --release --locked -p jobworker-bench -- [--quick] [--out docs/benchmarks.md]
//! ```
//!
//! Machines are shared and noisy, so every figure is reported next to a floor measured in the
//! same run (latencies interleaved round by round), and compared by ratio. Targets are goals, never asserts: only errors (a failed
//! call, a wrong byte count, a daemon that logs a warning or does not shut down cleanly) make
//! the program exit non-zero. `--quick` runs the same code with small sizes, for CI.
//!
//! # Layout
//!
//! - [`server`]: the development PKI, and a real `jobworkerd` process per figure, guarded so that
//!   no daemon, job or cgroup outlives the run.
//! - [`jobs`]: the client calls the figures make (start, wait, remove, list, read output, stop).
//! - [`floors`]: fork+exec, namespaces, a cgroup, bubblewrap, and plain loopback TLS.
//! - [`direct`]: the library's own start in this process, without daemon or RPC.
//! - [`start`]: figures 1, 2 and 6, start latency over a warm connection and through `jobctl`,
//!   and what fsync'ing job records costs it.
//! - [`throughput`]: figure 3, one client reading a job's output after and while it is written.
//! - [`fanout`]: figure 4, many clients following one job.
//! - [`footprint`]: figure 5, the daemon's memory at rest and at scale.
//! - [`reload`]: figure 7, a daemon starting on a state directory of many ended jobs.
//! - [`output_cpu`]: figure 8, who pays for storing a CPU-limited job's output.
//! - [`noisy`]: figure 9, one user's starts and streams while another makes all the noise he
//!   can, and the daemon's bounds meanwhile.
//! - [`stats`]: percentiles, rates and how they are printed.
//! - [`report`]: the table, the errors, and the markdown file.
//! - [`machine`]: what the numbers were measured on.

mod direct;
mod fanout;
mod floors;
mod footprint;
mod jobs;
mod machine;
mod noisy;
mod output_cpu;
mod reload;
mod report;
mod server;
mod start;
mod stats;
mod throughput;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;

use crate::report::Report;
use crate::server::{Binaries, Pki};

/// The command line.
#[derive(Parser)]
#[command(
    name = "jobworker-bench",
    about = "Benchmarks a real jobworkerd against the machine's floors (run as root)",
    after_help = "Build the daemon and the CLI first: cargo build --release --workspace --locked\n\
                  Install bubblewrap (apt-get install bubblewrap): figure 1 compares with it."
)]
struct Args {
    /// Small sizes, for CI: checks that every figure still runs without errors.
    #[arg(long)]
    quick: bool,
    /// Also write the table, the machine and the command into this markdown file: a new file,
    /// or only the generated section of an existing one (a file without one is refused).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Run only these figures (repeatable), e.g. to profile one of them.
    #[arg(long, value_enum, value_name = "FIGURE")]
    only: Vec<Figure>,
}

/// The figures, as `--only` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Figure {
    /// Figures 1, 2 and 6: start latency, warm and through jobctl, and durability's cost.
    Start,
    /// Figure 3: one client's throughput, replay and live.
    Throughput,
    /// Figure 4: many clients following one job.
    Fanout,
    /// Figure 5: the daemon's memory at rest and at scale.
    Footprint,
    /// Figure 7: a daemon's start-up on a state directory of many ended jobs.
    Reload,
    /// Figure 8: the daemon's CPU per GB of a CPU-limited job's output.
    OutputCpu,
    /// Figure 9: a noisy neighbour.
    Noisy,
}

/// How much each figure measures: the issue's sizes, or small ones for CI.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Untimed starts before the timed ones (connection, caches, allocator warm).
    pub warmup: usize,
    /// Timed starts, and iterations of each process floor.
    pub starts: usize,
    /// Runs of the `jobctl start` process.
    pub cli_runs: usize,
    /// Bytes a single client streams (figure 3).
    pub stream_bytes: u64,
    /// Repetitions of each throughput measurement; the median is reported.
    pub stream_reps: usize,
    /// Clients following one job (figure 4).
    pub fanout_clients: usize,
    /// Bytes the followed job writes (figure 4).
    pub fanout_bytes: u64,
    /// Jobs, finished jobs and streams held at once (figure 5).
    pub footprint_items: usize,
    /// Output of each finished job, and what each held stream has read (figure 5).
    pub footprint_output: u64,
    /// Ended jobs in the reloaded state directory (figure 7).
    pub reload_jobs: usize,
    /// Restarts of each kind (figure 7).
    pub reload_reps: usize,
    /// Output of the CPU-limited job (figure 8).
    pub throttled_bytes: u64,
    /// Alice's timed starts in each phase (figure 9).
    pub noisy_starts: usize,
    /// Alice's stream (figure 9).
    pub noisy_stream_bytes: u64,
    /// Mallory's short jobs (figure 9).
    pub noisy_short_jobs: usize,
    /// Mallory's idle followers (figure 9).
    pub noisy_followers: usize,
}

impl Plan {
    /// The sizes of issues 6, 9, 10 and 11.
    const FULL: Plan = Plan {
        warmup: 20,
        starts: 500,
        cli_runs: 100,
        stream_bytes: 1 << 30,
        stream_reps: 3,
        fanout_clients: 100,
        fanout_bytes: 256 << 20,
        footprint_items: 1000,
        footprint_output: 1 << 20,
        reload_jobs: 10_000,
        reload_reps: 3,
        throttled_bytes: 256 << 20,
        noisy_starts: 200,
        noisy_stream_bytes: 256 << 20,
        noisy_short_jobs: 1000,
        noisy_followers: 500,
    };

    /// Small enough for CI (about a minute), large enough to exercise every path.
    const QUICK: Plan = Plan {
        warmup: 5,
        starts: 50,
        cli_runs: 10,
        stream_bytes: 64 << 20,
        stream_reps: 1,
        fanout_clients: 10,
        fanout_bytes: 16 << 20,
        footprint_items: 50,
        footprint_output: 1 << 20,
        reload_jobs: 200,
        reload_reps: 1,
        throttled_bytes: 16 << 20,
        noisy_starts: 20,
        noisy_stream_bytes: 32 << 20,
        noisy_short_jobs: 100,
        noisy_followers: 50,
    };
}

/// What every figure needs.
pub struct Context {
    /// The sizes.
    pub plan: Plan,
    /// `jobworkerd` and `jobctl`.
    pub bins: Binaries,
    /// Certificates for the daemon and the clients (users `bench`, `alice`, `mallory`).
    pub pki: Pki,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("jobworker-bench: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("jobworker-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every figure and reports; true when there was no error.
async fn run(args: Args) -> anyhow::Result<bool> {
    if !nix::unistd::Uid::effective().is_root() {
        anyhow::bail!(
            "run as root: jobworkerd creates namespaces and cgroups, and so do the floors"
        );
    }
    let plan = if args.quick { Plan::QUICK } else { Plan::FULL };
    let context = Context {
        plan,
        bins: Binaries::locate()?,
        pki: Pki::create()?,
    };
    let mut report = Report::new(args.quick, machine::Machine::describe());
    let began = Instant::now();

    // On Ctrl-C the figure in progress is dropped, and with it its daemon guard, which stops
    // the daemon, its jobs and its cgroups.
    tokio::select! {
        () = run_figures(&context, &mut report, &args.only) => {}
        interrupted = tokio::signal::ctrl_c() => {
            interrupted.context("cannot wait for Ctrl-C")?;
            report.error("interrupted by Ctrl-C".to_owned());
        }
    }

    report.finish(began.elapsed());
    let markdown = report.markdown();
    println!("{markdown}");
    if let Some(out) = &args.out {
        report::write_file(out, &markdown)?;
        eprintln!("jobworker-bench: wrote {}", out.display());
    }
    let errors = report.error_count();
    if errors > 0 {
        eprintln!("jobworker-bench: {errors} error(s); see the table");
    }
    Ok(errors == 0)
}

/// Each figure runs against its own daemon; one failing does not keep the others from running.
async fn run_figures(context: &Context, report: &mut Report, only: &[Figure]) {
    let wanted = |figure| only.is_empty() || only.contains(&figure);
    if wanted(Figure::Start) {
        let began = announce("figures 1, 2, 6: start latency, durability");
        let result = start::measure(context, report).await;
        finished(report, "figures 1, 2, 6", began, result);
    }
    let mut tls_floor = None;
    if wanted(Figure::Throughput) {
        let began = announce("figure 3: throughput");
        let result = throughput::measure(context, report).await;
        // Figure 4 is compared with the same plain-TLS floor.
        tls_floor = result.as_ref().ok().copied();
        finished(report, "figure 3", began, result);
    }
    if wanted(Figure::Fanout) {
        let began = announce("figure 4: fan-out");
        let result = fanout::measure(context, report, tls_floor).await;
        finished(report, "figure 4", began, result);
    }
    if wanted(Figure::Footprint) {
        let began = announce("figure 5: footprint");
        let result = footprint::measure(context, report).await;
        finished(report, "figure 5", began, result);
    }
    if wanted(Figure::Reload) {
        let began = announce("figure 7: reload");
        let result = reload::measure(context, report).await;
        finished(report, "figure 7", began, result);
    }
    if wanted(Figure::OutputCpu) {
        let began = announce("figure 8: output CPU of a CPU-limited job");
        let result = output_cpu::measure(context, report).await;
        finished(report, "figure 8", began, result);
    }
    if wanted(Figure::Noisy) {
        let began = announce("figure 9: noisy neighbour");
        let result = noisy::measure(context, report).await;
        finished(report, "figure 9", began, result);
    }
}

fn announce(what: &str) -> Instant {
    eprintln!("jobworker-bench: {what}");
    Instant::now()
}

/// Records a figure's failure (its rows so far stay in the report) and how long it took.
fn finished<T>(report: &mut Report, name: &str, began: Instant, result: anyhow::Result<T>) {
    if let Err(e) = result {
        report.error(format!("{name}: {e:#}"));
    }
    eprintln!(
        "jobworker-bench: {name} took {:.1} s",
        began.elapsed().as_secs_f64()
    );
}
