//! Figures 1 and 2: how long starting a job takes, over a warm connection and as a whole
//! `jobctl start` process, next to the cost of creating a process with and without the
//! isolation every job gets.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use jobworker_api::pb;

use crate::Context;
use crate::floors::{FloorSamples, ProcessFloors};
use crate::jobs;
use crate::report::{Report, Row};
use crate::server::{Daemon, with_daemon};
use crate::stats::{Samples, ms, times};

/// The limits every timed start carries: a job is always isolated, and limits cost cgroup
/// writes, so the figure includes them.
fn limits() -> pb::Limits {
    pb::Limits {
        cpus: Some(1.0),
        memory_bytes: Some(256 << 20),
        pids: Some(64),
        ..pb::Limits::default()
    }
}

/// Measures figure 1 with its floors, then figure 2, with one daemon.
pub async fn measure(context: &Context, report: &mut Report) -> anyhow::Result<()> {
    with_daemon(&context.bins, &context.pki, async |daemon| {
        let (floors, start) = start_latency(context, daemon).await?;
        report_start(report, &floors, &start);
        let (connects, cli) = cli_latency(context, daemon).await?;
        report.row(Row {
            figure: "2",
            what: "reference: a new connection from a running process (TCP, mTLS 1.3 \
                   handshake, HTTP/2)"
                .to_owned(),
            n: connects.len().to_string(),
            result: connects.summary(),
            ..Row::default()
        });
        report.row(Row {
            figure: "2",
            what: "**`jobctl start -- /bin/true`**, the whole process (exec, TLS handshake, \
                   Start)"
                .to_owned(),
            n: cli.len().to_string(),
            result: cli.summary(),
            reference: format!("Start over a warm connection p50 {}", ms(start.p50())),
            ratio: times(ratio(cli.p50(), start.p50())),
            target: "median ≤ 6 ms".to_owned(),
            met: Some(cli.p50() <= Duration::from_millis(6)),
        });
        Ok(())
    })
    .await
}

fn report_start(report: &mut Report, floors: &FloorSamples, start: &Samples) {
    let n = start.len().to_string();
    report.row(Row {
        figure: "1",
        what: "floor: fork+exec+wait `/bin/true` (clone3, no flags)".to_owned(),
        n: n.clone(),
        result: floors.plain.summary(),
        ..Row::default()
    });
    report.row(Row {
        figure: "1",
        what: "floor: the same in new PID, mount, net, UTS, IPC namespaces (no cgroup)".to_owned(),
        n: n.clone(),
        result: floors.namespaces.summary(),
        reference: format!("plain fork+exec p50 {}", ms(floors.plain.p50())),
        ratio: times(ratio(floors.namespaces.p50(), floors.plain.p50())),
        ..Row::default()
    });
    report.row(Row {
        figure: "1",
        what: "floor: the same plus a new cgroup in each hierarchy with the limits below \
               (mkdir, limits, join before exec; removal untimed)"
            .to_owned(),
        n: n.clone(),
        result: floors.cgroup.summary(),
        reference: format!("namespaces floor p50 {}", ms(floors.namespaces.p50())),
        ratio: times(ratio(floors.cgroup.p50(), floors.namespaces.p50())),
        ..Row::default()
    });
    report.row(Row {
        figure: "1",
        what: "floor: `bwrap --unshare-all --dev-bind / / true` (whole process)".to_owned(),
        n: floors.bwrap.as_ref().map_or("-".to_owned(), |_| n.clone()),
        result: floors
            .bwrap
            .as_ref()
            .map_or("not installed".to_owned(), Samples::summary),
        ..Row::default()
    });

    let ns_ratio = ratio(start.p50(), floors.namespaces.p50());
    let mut reference = format!(
        "namespaces floor p50 {}; + cgroup p50 {}",
        ms(floors.namespaces.p50()),
        ms(floors.cgroup.p50())
    );
    let mut ratios = format!(
        "{} namespaces floor; {} namespaces + cgroup",
        times(ns_ratio),
        times(ratio(start.p50(), floors.cgroup.p50()))
    );
    // Without bubblewrap that half of the goal cannot be judged; the other half can.
    let mut below_bwrap = true;
    if let Some(bwrap) = &floors.bwrap {
        reference.push_str(&format!("; bwrap p50 {}", ms(bwrap.p50())));
        ratios.push_str(&format!(
            "; {} bwrap",
            times(ratio(start.p50(), bwrap.p50()))
        ));
        below_bwrap = start.p50() < bwrap.p50();
    }
    report.row(Row {
        figure: "1",
        what: "**Start** `/bin/true` over a warm mTLS connection, isolated, limits cpus 1, \
               memory 256M, pids 64"
            .to_owned(),
        n,
        result: start.summary(),
        reference,
        ratio: ratios,
        target: "p50 ≤ 1.5× namespaces floor, < bwrap".to_owned(),
        met: Some(ns_ratio <= 1.5 && below_bwrap),
    });
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-12)
}

/// Figure 1 and its floors, interleaved: every round takes one sample of each floor and one
/// Start, so that load from elsewhere on the machine hits them alike.
async fn start_latency(
    context: &Context,
    daemon: &Daemon,
) -> anyhow::Result<(FloorSamples, Samples)> {
    let plan = context.plan;
    let mut floors = ProcessFloors::new(daemon.cgroup_parents())?;
    let mut client = daemon.connect(context.pki.client_config()?).await?;
    let request = jobs::request(&["/bin/true"], Some(limits()));
    let mut starts = Vec::with_capacity(plan.starts);
    for round in 0..plan.warmup + plan.starts {
        let keep = round >= plan.warmup;
        // Blocking system calls, right here: nothing else runs on the runtime meanwhile.
        floors.sample(round, keep)?;
        let request = request.clone();
        let began = Instant::now();
        let id = jobs::start(&mut client, request).await?;
        let elapsed = began.elapsed();
        // Untimed: the job ends (and its cgroup goes) before the next round, so each start
        // pays for itself only, and jobs never pile up.
        jobs::wait_ended(&mut client, &id).await?;
        if keep {
            starts.push(elapsed);
        }
    }
    Ok((floors.finish(), Samples::new(starts)))
}

/// Figure 2, interleaved with its reference: a fresh connection from a running process, and a
/// whole `jobctl start -- /bin/true` process.
async fn cli_latency(context: &Context, daemon: &Daemon) -> anyhow::Result<(Samples, Samples)> {
    let plan = context.plan;
    let tls = context.pki.client_config()?;
    let mut client = daemon.connect(tls.clone()).await?;
    let (cert, key) = context.pki.client_files();
    let (mut connects, mut runs) = (Vec::new(), Vec::new());
    for round in 0..plan.warmup + plan.cli_runs {
        let keep = round >= plan.warmup;
        let began = Instant::now();
        let fresh = daemon.connect(tls.clone()).await?;
        let connected = began.elapsed();
        drop(fresh);

        let mut command = Command::new(&context.bins.jobctl);
        command
            .arg("--server")
            .arg(daemon.address())
            .arg("--ca")
            .arg(context.pki.file("ca.pem"))
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .args(["start", "--", "/bin/true"])
            // No JOBCTL_* setting of the caller's shell may change what is measured.
            .env_clear()
            .stdin(Stdio::null());
        let began = Instant::now();
        // Blocking, like the shell that would run it; nothing else runs on the runtime now.
        let output = command
            .output()
            .with_context(|| format!("cannot run {}", context.bins.jobctl.display()))?;
        let ran = began.elapsed();
        ensure!(
            output.status.success(),
            "jobctl start failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        let id = String::from_utf8(output.stdout).context("jobctl printed non-UTF-8")?;
        jobs::wait_ended(&mut client, id.trim()).await?;
        if keep {
            connects.push(connected);
            runs.push(ran);
        }
    }
    Ok((Samples::new(connects), Samples::new(runs)))
}
