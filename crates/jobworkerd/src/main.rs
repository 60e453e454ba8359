//! jobworkerd: run commands as isolated, resource-limited jobs for clients authenticated by
//! mutual TLS.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use jobworker::{Config, StateLock, Worker};
use jobworkerd::Server;
use tokio::signal::unix::{SignalKind, signal};

const AFTER_HELP: &str = "\
Quick start (development PKI in ./dev-pki, server on 127.0.0.1:50051):
  jobworkerd certs init --user alice --user bob --admin admin
  sudo jobworkerd serve
  jobctl run -- echo hello";

#[derive(Parser)]
#[command(name = "jobworkerd", version, about = "Runs commands as isolated, resource-limited jobs for mTLS-authenticated clients",
          after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the job API (needs root: it creates namespaces and cgroups).
    #[command(after_help = "\
Every job is a tenant of its own: its own PID, mount, network (only lo), UTS and IPC namespaces; its
own filesystem view (--ro-paths read-only, private /tmp, /var/tmp, /run and /dev/shm, a minimal /dev,
--bind-ro/--bind-rw); its own uid and gid from --job-ids; no capabilities; a syscall filter; and a
cgroup with its limits. Limits a request leaves unset take the --default-* values.

IO limits apply to the block devices behind the job's filesystem view. On cgroup v1 hosts the kernel
throttles only direct (O_DIRECT) and fsync'd writes: buffered writeback escapes the limit. cgroup v2
throttles buffered writes too.

SIGTERM or SIGINT: stop accepting, end open output streams, stop every job (SIGTERM, --stop-grace,
SIGKILL), remove their cgroups, exit 0.

Examples:
  sudo jobworkerd serve
  sudo jobworkerd serve --listen 0.0.0.0:50051 --ca /etc/jobworker/ca.pem \\
      --cert /etc/jobworker/server.pem --key /etc/jobworker/server.key --default-memory 1G")]
    Serve(Box<ServeArgs>),
    /// Manage a development PKI.
    #[command(subcommand)]
    Certs(CertsCommand),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (loopback by default).
    #[arg(long, env = "JOBWORKER_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// CA certificate (PEM) that client certificates must chain to.
    #[arg(long, env = "JOBWORKER_CA", default_value = "dev-pki/ca.pem")]
    ca: PathBuf,
    /// Server certificate chain (PEM), with EKU serverAuth.
    #[arg(long, env = "JOBWORKER_CERT", default_value = "dev-pki/server.pem")]
    cert: PathBuf,
    /// Server private key (PEM).
    #[arg(long, env = "JOBWORKER_KEY", default_value = "dev-pki/server.key")]
    key: PathBuf,
    /// Where job output logs are kept. Logs do not survive a restart.
    #[arg(
        long,
        env = "JOBWORKER_STATE_DIR",
        default_value = "/var/lib/jobworker"
    )]
    state_dir: PathBuf,
    /// User and group ids for jobs, FIRST-LAST: each running job gets one of its own. The range
    /// must not hold any account or group of this machine, nor systemd's DynamicUser range.
    #[arg(long, env = "JOBWORKER_JOB_IDS", default_value_t = jobworker::IdRange::DEFAULT)]
    job_ids: jobworker::IdRange,
    /// Host paths every job sees read-only at the same path, where they exist (comma-separated;
    /// replaces the default list).
    #[arg(
        long,
        env = "JOBWORKER_RO_PATHS",
        value_delimiter = ',',
        default_value = "/bin,/etc,/lib,/lib32,/lib64,/sbin,/usr"
    )]
    ro_paths: Vec<PathBuf>,
    /// A further host path every job sees read-only: SRC, or SRC:DST to show it at DST
    /// (repeatable).
    #[arg(long = "bind-ro", value_name = "SRC[:DST]", env = "JOBWORKER_BIND_RO", value_delimiter = ',', value_parser = parse_bind)]
    bind_ro: Vec<(PathBuf, PathBuf)>,
    /// A host path every job may write to: SRC or SRC:DST (repeatable). Shared by all jobs and
    /// users: use it for data meant to be shared.
    #[arg(long = "bind-rw", value_name = "SRC[:DST]", env = "JOBWORKER_BIND_RW", value_delimiter = ',', value_parser = parse_bind)]
    bind_rw: Vec<(PathBuf, PathBuf)>,
    /// Parent of job cgroups: relative to the daemon's own cgroup, or absolute.
    #[arg(long, env = "JOBWORKER_CGROUP_PARENT", default_value = "jobs")]
    cgroup_parent: PathBuf,
    /// Time between SIGTERM and SIGKILL when a job is stopped.
    #[arg(long, env = "JOBWORKER_STOP_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    stop_grace: Duration,
    /// Default CPU limit, in CPUs (e.g. 0.5).
    #[arg(long, env = "JOBWORKER_DEFAULT_CPUS")]
    default_cpus: Option<f64>,
    /// Default memory limit, binary units (e.g. 512M = 512 MiB).
    #[arg(long, env = "JOBWORKER_DEFAULT_MEMORY", value_parser = parse_bytes)]
    default_memory: Option<u64>,
    /// Default limit on processes and threads per job (a fork-bomb guard).
    #[arg(long, env = "JOBWORKER_DEFAULT_PIDS")]
    default_pids: Option<u64>,
    /// Most jobs (running or ended) kept at once.
    #[arg(long, env = "JOBWORKER_MAX_JOBS", default_value_t = 10_000)]
    max_jobs: usize,
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a development CA, a server certificate for localhost, and one client certificate per
    /// user. Keys are written 0600. Not for production.
    #[command(after_help = "\
Identity: a client certificate's CN is the user; its O values are groups. Members of group \"admin\"
see and act on every job.

Example:
  jobworkerd certs init --dir dev-pki --user alice --user bob --admin admin")]
    Init(CertsInitArgs),
}

#[derive(Args)]
struct CertsInitArgs {
    /// Directory to write the PKI to.
    #[arg(long, default_value = "dev-pki")]
    dir: PathBuf,
    /// A user to issue a client certificate for (repeatable).
    #[arg(long = "user", value_name = "NAME", default_values_t = ["alice".to_string(), "bob".to_string()])]
    users: Vec<String>,
    /// An admin to issue a client certificate for, with O=admin (repeatable).
    #[arg(long = "admin", value_name = "NAME", default_values_t = ["admin".to_string()])]
    admins: Vec<String>,
    /// Validity of every certificate, in days.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

fn parse_bind(s: &str) -> Result<(PathBuf, PathBuf), String> {
    let (source, target) = s.split_once(':').unwrap_or((s, s));
    if source.is_empty() || target.is_empty() {
        return Err(format!("{s:?} is not SRC or SRC:DST"));
    }
    Ok((PathBuf::from(source), PathBuf::from(target)))
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("{s:?} is not a size such as 512M or 2G: {e}"))
}

fn main() -> ExitCode {
    // Each job's init is this binary re-executed: it must take over before anything else runs.
    jobworker::init::run_if_requested();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Certs(CertsCommand::Init(args)) => certs_init(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jobworkerd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn certs_init(args: CertsInitArgs) -> anyhow::Result<()> {
    let written =
        jobworker_api::pki::init(&args.dir, &args.users, &args.admins, args.days, args.force)
            .map_err(|e| match e {
                jobworker_api::pki::PkiError::Exists { .. } => {
                    anyhow::anyhow!("{e} (pass --force to replace the whole development PKI)")
                }
                other => other.into(),
            })?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        anyhow::bail!(
            "jobworkerd serve needs root to create namespaces and cgroups (try: sudo jobworkerd serve)"
        );
    }
    let tls = jobworker_api::tls::server_config(&args.ca, &args.cert, &args.key)
        .context("cannot load the server's TLS configuration (create a development PKI with `jobworkerd certs init`)")?;
    let mut config = Config {
        state_dir: args.state_dir,
        job_ids: args.job_ids,
        cgroup_parent: args.cgroup_parent,
        stop_grace: args.stop_grace,
        max_jobs: args.max_jobs,
        secrets: vec![args.key.clone()],
        ..Config::default()
    };
    config.sandbox.ro_paths = args.ro_paths;
    for (binds, writable) in [(args.bind_ro, false), (args.bind_rw, true)] {
        for (source, target) in binds {
            config.sandbox.binds.push(jobworker::Bind {
                source,
                target,
                writable,
            });
        }
    }
    let defaults = &mut config.default_limits;
    defaults.cpus = args.default_cpus.or(defaults.cpus);
    defaults.memory_bytes = args.default_memory.or(defaults.memory_bytes);
    defaults.pids = args.default_pids.or(defaults.pids);
    // Taken before anything else: a second daemon on this directory stops here, changing nothing.
    let lock = StateLock::acquire(&config.state_dir).context("cannot use the state directory")?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        // Listen before preparing the worker: a failed bind changes nothing.
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let worker = Arc::new(
            Worker::new(config, lock)
                .await
                .context("cannot prepare the worker")?,
        );
        let server = Server::start(listener, tls, worker.clone())?;
        tracing::info!(
            listen = %server.local_addr(),
            cgroup = ?worker.cgroup_version(),
            cgroup_parents = ?worker.cgroup_parents(),
            "jobworkerd listening (mutual TLS 1.3)"
        );
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
        server.shutdown().await;
        anyhow::Ok(())
    })
}
