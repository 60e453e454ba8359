//! Figures 1, 2 and 6: how long starting a job takes, over a warm connection and as a whole
//! `jobctl start` process, next to the cost of creating a process with and without the
//! isolation every job gets, the library's own start without the daemon, and bubblewrap; and
//! what fsync'ing every job record costs a Start.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use jobworker_api::pb;

use crate::Context;
use crate::direct::{self, Direct};
use crate::floors::{FloorSamples, ProcessFloors};
use crate::jobs::{self, Client};
use crate::report::{Report, Row};
use crate::server::{Daemon, Options};
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

/// The same limits, as the library takes them.
fn library_limits() -> jobworker::Limits {
    jobworker::Limits {
        cpus: Some(1.0),
        memory_bytes: Some(256 << 20),
        pids: Some(64),
        ..jobworker::Limits::default()
    }
}

/// The goal: a Start over a warm connection within this factor of the direct-sandbox floor.
const DIRECT_FACTOR: f64 = 1.5;

/// The goal for durability: fsync'd records cost a Start at most this much more.
const DURABILITY_FACTOR: f64 = 1.10;

/// What the interleaved rounds measured.
struct Measured {
    floors: FloorSamples,
    /// The library in this process: until `Worker::start` returned, and until the job's end.
    direct_start: Samples,
    direct_end: Samples,
    /// Start over a warm connection, to the daemon with default settings (records fsync'd).
    start: Samples,
    /// The same to a daemon started with `--unsafe-no-fsync`.
    start_no_fsync: Samples,
}

/// Measures figure 1 with its floors and figure 6 (two daemons and an in-process worker side
/// by side, interleaved), then figure 2 against the default daemon.
pub async fn measure(context: &Context, report: &mut Report) -> anyhow::Result<()> {
    let (bins, pki) = (&context.bins, &context.pki);
    let durable = Daemon::start(bins, pki)?;
    let no_fsync = Daemon::start_with(bins, pki, &Options::with_args(&["--unsafe-no-fsync"]))?;
    let direct = Direct::new(bins, pki, library_limits()).await?;
    let measured = async {
        let measured = start_latency(context, &durable, &no_fsync, &direct).await?;
        report_start(report, &measured);
        report_durability(report, &measured);
        let (connects, cli) = cli_latency(context, &durable).await?;
        report_cli(report, &connects, &cli, &measured.start);
        anyhow::Ok(())
    }
    .await;
    // Every guard is shut down, whatever happened above; the first error is reported.
    let direct_stopped = direct.shutdown().await;
    let no_fsync_stopped = no_fsync.stop().await;
    let durable_stopped = durable.stop().await;
    measured?;
    direct_stopped?;
    no_fsync_stopped?;
    durable_stopped
}

fn report_cli(report: &mut Report, connects: &Samples, cli: &Samples, start: &Samples) {
    report.row(Row {
        figure: "2",
        what: "reference: a new connection from a running process (TCP, mTLS 1.3 handshake, \
               HTTP/2)"
            .to_owned(),
        n: connects.len().to_string(),
        result: connects.summary(),
        ..Row::default()
    });
    report.row(Row {
        figure: "2",
        what: "**`jobctl start -- /bin/true`**, the whole process (exec, TLS handshake, Start)"
            .to_owned(),
        n: cli.len().to_string(),
        result: cli.summary(),
        reference: format!(
            "Start over a warm connection p50 {}; new connection p50 {}",
            ms(start.p50()),
            ms(connects.p50())
        ),
        ratio: times(ratio(cli.p50(), start.p50())),
        target: "median ≤ 6 ms".to_owned(),
        met: Some(cli.p50() <= Duration::from_millis(6)),
    });
}

fn report_start(report: &mut Report, m: &Measured) {
    let floors = &m.floors;
    let n = m.start.len().to_string();
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
        reference: format!("plain fork+exec p50 {}", ms(floors.plain.p50())),
        ratio: times(ratio(floors.cgroup.p50(), floors.plain.p50())),
        ..Row::default()
    });
    report.row(Row {
        figure: "1",
        what: "floor: `bwrap --unshare-all --die-with-parent` with the jobs' view (read-only \
               /bin /etc /lib /lib32 /lib64 /sbin /usr where they exist, tmpfs /tmp /var/tmp \
               /run /dev/shm, `--dev /dev`, `--proc /proc`) running `/bin/true`, whole process"
            .to_owned(),
        n: floors.bwrap.as_ref().map_or("-".to_owned(), |_| n.clone()),
        result: floors.bwrap.as_ref().map_or(
            "not installed (`apt-get install bubblewrap`)".to_owned(),
            Samples::summary,
        ),
        reference: format!("plain fork+exec p50 {}", ms(floors.plain.p50())),
        ratio: floors.bwrap.as_ref().map_or(String::new(), |bwrap| {
            times(ratio(bwrap.p50(), floors.plain.p50()))
        }),
        ..Row::default()
    });
    if let Some(init) = &floors.init {
        report.row(Row {
            figure: "1",
            what: "floor: fork+exec+wait of the jobs' init program alone (run without \
                   arguments it exits at once): the load and start-up of a start's second exec"
                .to_owned(),
            n: n.clone(),
            result: init.summary(),
            reference: format!("plain fork+exec p50 {}", ms(floors.plain.p50())),
            ratio: times(ratio(init.p50(), floors.plain.p50())),
            ..Row::default()
        });
    }
    report.row(Row {
        figure: "1",
        what: "floor, **direct sandbox**: the library's `Worker::start` of `/bin/true` in this \
               process with the daemon's default configuration (same view, cgroup limits, \
               syscall filter, init program, job record fsync'd); no daemon, no RPC"
            .to_owned(),
        n: n.clone(),
        result: format!(
            "{}; to the job's end p50 {}",
            m.direct_start.summary(),
            ms(m.direct_end.p50())
        ),
        reference: format!("plain fork+exec p50 {}", ms(floors.plain.p50())),
        ratio: times(ratio(m.direct_start.p50(), floors.plain.p50())),
        ..Row::default()
    });

    let direct_ratio = ratio(m.start.p50(), m.direct_start.p50());
    let mut reference = format!("direct sandbox p50 {}", ms(m.direct_start.p50()));
    let mut ratios = format!("{} direct", times(direct_ratio));
    // Without bubblewrap that half of the goal cannot be judged; the other half can.
    let mut below_bwrap = true;
    if let Some(bwrap) = &floors.bwrap {
        reference.push_str(&format!("; bwrap p50 {}", ms(bwrap.p50())));
        ratios.push_str(&format!(
            "; {} bwrap",
            times(ratio(m.start.p50(), bwrap.p50()))
        ));
        below_bwrap = m.start.p50() < bwrap.p50();
    }
    report.row(Row {
        figure: "1",
        what: "**Start** `/bin/true` over a warm mTLS connection, full sandbox, default daemon \
               settings, limits cpus 1, memory 256M, pids 64"
            .to_owned(),
        n,
        result: m.start.summary(),
        reference,
        ratio: ratios,
        target: format!("p50 ≤ {DIRECT_FACTOR}× direct sandbox, < bwrap"),
        met: Some(direct_ratio <= DIRECT_FACTOR && below_bwrap),
    });
}

fn report_durability(report: &mut Report, m: &Measured) {
    let cost = ratio(m.start.p50(), m.start_no_fsync.p50());
    report.row(Row {
        figure: "6",
        what: "reference: Start as in 1, to a daemon with `--unsafe-no-fsync` (records \
               written, not fsync'd)"
            .to_owned(),
        n: m.start_no_fsync.len().to_string(),
        result: m.start_no_fsync.summary(),
        ..Row::default()
    });
    report.row(Row {
        figure: "6",
        what: "**durability cost**: Start (records fsync'd, the default) against the daemon \
               without fsync, interleaved round by round"
            .to_owned(),
        n: m.start.len().to_string(),
        result: m.start.summary(),
        reference: format!("no fsync p50 {}", ms(m.start_no_fsync.p50())),
        ratio: format!("{} ({:+.0}%)", times(cost), (cost - 1.0) * 100.0),
        target: format!("≤ +{:.0}%", (DURABILITY_FACTOR - 1.0) * 100.0),
        met: Some(cost <= DURABILITY_FACTOR),
    });
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-12)
}

/// One Start over `client`, timed until it answers; then (untimed) the job's end and its
/// removal, so that each start pays for itself only and jobs never pile up.
async fn timed_start(client: &mut Client, request: &pb::StartRequest) -> anyhow::Result<Duration> {
    let began = Instant::now();
    let id = jobs::start(client, request.clone()).await?;
    let elapsed = began.elapsed();
    jobs::wait_ended(client, &id).await?;
    jobs::remove(client, &id).await?;
    Ok(elapsed)
}

/// Figures 1 and 6 with their floors, interleaved: every round takes one sample of each floor,
/// of the direct sandbox and of each daemon's Start, the last three in a rotating order, so
/// that load from elsewhere on the machine hits them alike.
async fn start_latency(
    context: &Context,
    durable: &Daemon,
    no_fsync: &Daemon,
    direct: &Direct,
) -> anyhow::Result<Measured> {
    let plan = context.plan;
    let mut floors = ProcessFloors::new(durable.cgroup_parents(), Some(&context.bins.init))?;
    let tls = context.pki.client_config()?;
    let mut durable_client = durable.connect(tls.clone()).await?;
    let mut no_fsync_client = no_fsync.connect(tls).await?;
    let request = jobs::request(&["/bin/true"], Some(limits()));
    let (mut direct_samples, mut starts, mut no_fsync_starts) = (
        Vec::with_capacity(plan.starts),
        Vec::with_capacity(plan.starts),
        Vec::with_capacity(plan.starts),
    );
    for round in 0..plan.warmup + plan.starts {
        let keep = round >= plan.warmup;
        // Blocking system calls, right here: nothing else runs on the runtime meanwhile.
        floors.sample(round, keep)?;
        let (mut sample, mut start, mut no_fsync_start) = (None, None, None);
        for turn in 0..3 {
            match (round + turn) % 3 {
                0 => sample = Some(direct.sample().await?),
                1 => start = Some(timed_start(&mut durable_client, &request).await?),
                _ => no_fsync_start = Some(timed_start(&mut no_fsync_client, &request).await?),
            }
        }
        if keep {
            direct_samples.extend(sample);
            starts.extend(start);
            no_fsync_starts.extend(no_fsync_start);
        }
    }
    let direct_start = direct_samples.iter().map(|s: &direct::Sample| s.start);
    let direct_end = direct_samples.iter().map(|s| s.to_end);
    Ok(Measured {
        floors: floors.finish(),
        direct_start: Samples::new(direct_start.collect()),
        direct_end: Samples::new(direct_end.collect()),
        start: Samples::new(starts),
        start_no_fsync: Samples::new(no_fsync_starts),
    })
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
        jobs::remove(&mut client, id.trim()).await?;
        if keep {
            connects.push(connected);
            runs.push(ran);
        }
    }
    Ok((Samples::new(connects), Samples::new(runs)))
}
