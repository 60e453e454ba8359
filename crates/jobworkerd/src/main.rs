//! jobworkerd: run commands as isolated, resource-limited jobs for clients authenticated by
//! mutual TLS.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use jobworker::{Config, Limits, Worker};
use jobworkerd::{AuditLog, Options, Server};
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
    /// Log format on stderr: human-readable text, or one JSON object per line.
    #[arg(long, global = true, value_enum, env = "JOBWORKER_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the job API (needs root: it creates namespaces and cgroups).
    #[command(after_help = "\
Every job gets its own PID, mount, network, UTS and IPC namespaces and a cgroup; it runs as --job-user
with no capabilities. Limits a request leaves unset take the --default-* values.

IO limits apply to the block device backing the job's working directory. On cgroup v1 hosts the kernel
throttles only direct (O_DIRECT) and fsync'd writes: buffered writeback escapes the limit. cgroup v2
throttles buffered writes too.

SIGTERM or SIGINT: report NOT_SERVING on grpc.health.v1.Health, stop accepting, end open output
streams, stop every job (SIGTERM, --stop-grace, SIGKILL), remove their cgroups, exit 0.

Besides the job API, the listener serves grpc.health.v1.Health and server reflection (v1 and v1alpha),
under the same mutual TLS. --metrics-listen serves Prometheus metrics over plain HTTP, without
authentication: bind it to loopback (or a private network only the scraper reaches).
--audit-log appends one JSON line per Start/Stop and per refused request.

Examples:
  sudo jobworkerd serve
  sudo jobworkerd serve --listen 0.0.0.0:50051 --ca /etc/jobworker/ca.pem \\
      --cert /etc/jobworker/server.pem --key /etc/jobworker/server.key --default-memory 1G \\
      --metrics-listen 127.0.0.1:9464 --audit-log /var/log/jobworker-audit.log --log-format json")]
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
    /// Unprivileged user that jobs run as.
    #[arg(long, env = "JOBWORKER_JOB_USER", default_value = "nobody")]
    job_user: String,
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
    #[arg(long, env = "JOBWORKER_DEFAULT_PIDS", default_value_t = 1024)]
    default_pids: u64,
    /// Most jobs (running or ended) kept at once.
    #[arg(long, env = "JOBWORKER_MAX_JOBS", default_value_t = 10_000)]
    max_jobs: usize,
    /// Most client connections open at once, TLS handshakes included; more are closed at once.
    #[arg(long, env = "JOBWORKER_MAX_CONNECTIONS", default_value_t = jobworkerd::server::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Serve Prometheus metrics at http://ADDR/metrics: plain HTTP, no authentication, so meant
    /// for loopback (e.g. 127.0.0.1:9464). Off by default.
    #[arg(long, env = "JOBWORKER_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Append an audit record (one JSON object per line) for every Start and Stop and every
    /// refused request to FILE, created 0600 if missing.
    #[arg(long, env = "JOBWORKER_AUDIT_LOG", value_name = "FILE")]
    audit_log: Option<PathBuf>,
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
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
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
    let audit = match &args.audit_log {
        Some(path) => AuditLog::open(path)?,
        None => AuditLog::disabled(),
    };
    raise_open_file_limit();
    let config = Config {
        state_dir: args.state_dir,
        job_user: args.job_user,
        cgroup_parent: args.cgroup_parent,
        stop_grace: args.stop_grace,
        max_jobs: args.max_jobs,
        default_limits: Limits {
            cpus: args.default_cpus,
            memory_bytes: args.default_memory,
            pids: Some(args.default_pids),
            ..Limits::default()
        },
        ..Config::default()
    };
    // Before the runtime starts threads: detection may move this process between cgroups.
    let worker = Arc::new(Worker::new(config).context("cannot prepare the worker")?);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let metrics_listener = match args.metrics_listen {
            Some(addr) => {
                if !addr.ip().is_loopback() {
                    tracing::warn!(%addr, "metrics are served over plain HTTP without authentication on a non-loopback address");
                }
                Some(
                    tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("cannot listen for metrics on {addr}"))?,
                )
            }
            None => None,
        };
        let options = Options {
            max_connections: args.max_connections as usize,
            metrics_listener,
            audit,
            ..Options::default()
        };
        let server = Server::start(listener, tls, worker.clone(), options).await?;
        tracing::info!(
            listen = %server.local_addr(),
            metrics = ?server.metrics_addr(),
            audit_log = ?args.audit_log,
            max_connections = args.max_connections,
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

/// Raises the soft limit on open files to the hard limit: every connection, job pipe and log
/// is a file descriptor, and the usual soft limit of 1024 would refuse work long before
/// `--max-connections` or `--max-jobs` do. Jobs inherit the raised soft limit, which gives them
/// nothing new: any process may raise its own soft limit up to the hard one.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-file limit");
            return;
        }
    };
    if soft >= hard {
        tracing::info!(soft, hard, "open-file limit already at the hard limit");
        return;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => tracing::info!(
            from = soft,
            to = hard,
            "raised the open-file limit to the hard limit"
        ),
        Err(error) => tracing::warn!(soft, hard, %error, "cannot raise the open-file limit"),
    }
}
