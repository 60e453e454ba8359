//! jobworkerd: run commands as isolated, resource-limited jobs for clients authenticated by
//! mutual TLS.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use jobworker::{Config, StateLock, Worker};
use jobworker_api::paths::{self, DEFAULT_PKI_DIR_HELP};
use jobworker_api::pki::{self, PkiError};
use jobworkerd::notify::Notifier;
use jobworkerd::{AuditLog, Options, Server};
use tokio::signal::unix::{SignalKind, signal};

const AFTER_HELP: &str = "\
Quick start, as root (development PKI in ~/.local/share/jobworker/dev-pki, server on
127.0.0.1:50051; jobctl finds the same PKI by default):
  jobworkerd certs init
  jobworkerd serve &
  jobctl run -- echo hello

As a service: the Debian package installs jobworkerd.service; its settings are in
/etc/default/jobworkerd (every serve flag has a JOBWORKER_* variable).";

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
Every job is a tenant of its own: its own PID, mount, network (only lo), UTS and IPC namespaces; its
own filesystem view (--ro-paths read-only, private /tmp, /var/tmp, /run and /dev/shm, a minimal /dev,
--bind-ro/--bind-rw); its own uid and gid from --job-ids; no capabilities; a syscall filter; and a
cgroup with its limits. Limits a request leaves unset take the --default-* values.

IO limits apply to the block devices behind the job's filesystem view. On cgroup v1 hosts the kernel
throttles only direct (O_DIRECT) and fsync'd writes: buffered writeback escapes the limit. cgroup v2
throttles buffered writes too.

Jobs outlive the daemon's restarts: their records and output are kept in --state-dir (for
--retain-finished after they end) and reloaded at start-up. SIGTERM or SIGINT: report NOT_SERVING
on grpc.health.v1.Health, stop accepting, end open output streams (clients resume from where they
stopped), then stop every job (SIGTERM, --stop-grace, SIGKILL) and remove their cgroups, exit 0.
With --live-restore the jobs are left running instead, for the next daemon to adopt; without it, a
crashed daemon's jobs are killed and listed as lost by the next one.

Besides the job API, the listener serves grpc.health.v1.Health and server reflection (v1 and v1alpha),
under the same mutual TLS. --metrics-listen serves Prometheus metrics over plain HTTP, without
authentication: bind it to loopback (or a private network only the scraper reaches).
--audit-log appends one JSON line per mutating request and per refused request.

Examples:
  sudo jobworkerd serve
  sudo jobworkerd serve --listen 0.0.0.0:50051 --ca /etc/jobworker/ca.pem \\
      --cert /etc/jobworker/server.pem --key /etc/jobworker/server.key --default-memory 1G \\
      --metrics-listen 127.0.0.1:9464 --audit-log /var/log/jobworker/audit.log --log-format json")]
    Serve(Box<ServeArgs>),
    /// Manage a development PKI.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Write the manual pages (jobworkerd.8, jobworkerd-serve.8, ...) into a directory; used
    /// by the packaging script.
    #[command(hide = true)]
    ManPages {
        /// Where to write them (created if missing).
        dir: PathBuf,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (loopback by default).
    #[arg(long, env = "JOBWORKER_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// CA certificate (PEM) that client certificates must chain to [default: ca.pem of the
    /// development PKI, see `certs init`].
    #[arg(long, env = "JOBWORKER_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Server certificate chain (PEM), with EKU serverAuth [default: server.pem of the
    /// development PKI].
    #[arg(long, env = "JOBWORKER_CERT", value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Server private key (PEM) [default: server.key of the development PKI].
    #[arg(long, env = "JOBWORKER_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
    /// Where job records and output logs are kept (made 0700). One daemon per directory: a
    /// second one exits at start-up, naming the first.
    #[arg(
        long,
        env = "JOBWORKER_STATE_DIR",
        default_value = "/var/lib/jobworker"
    )]
    state_dir: PathBuf,
    /// Leave jobs running when the daemon stops or dies, for the next daemon on the same state
    /// directory to adopt (their output keeps being captured meanwhile). Without it, SIGTERM
    /// stops every job and a crashed daemon's jobs die with it.
    #[arg(long, env = "JOBWORKER_LIVE_RESTORE")]
    live_restore: bool,
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
    /// CPUs of a job whose request sets none [default: 1, or --max-cpus if lower].
    #[arg(long, env = "JOBWORKER_DEFAULT_CPUS")]
    default_cpus: Option<f64>,
    /// Memory of a job whose request sets none, binary units (512M = 512 MiB) [default: 512M,
    /// or --max-memory if lower].
    #[arg(long, env = "JOBWORKER_DEFAULT_MEMORY", value_parser = parse_bytes)]
    default_memory: Option<u64>,
    /// Processes and threads of a job whose request sets none [default: 1024, or --max-pids if
    /// lower].
    #[arg(long, env = "JOBWORKER_DEFAULT_PIDS")]
    default_pids: Option<u64>,
    /// The most CPUs a request may ask for [default: --jobs-cpus].
    #[arg(long, env = "JOBWORKER_MAX_CPUS")]
    max_cpus: Option<f64>,
    /// The most memory a request may ask for [default: --jobs-memory].
    #[arg(long, env = "JOBWORKER_MAX_MEMORY", value_parser = parse_bytes)]
    max_memory: Option<u64>,
    /// The most processes a request may ask for [default: --jobs-pids].
    #[arg(long, env = "JOBWORKER_MAX_PIDS")]
    max_pids: Option<u64>,
    /// Output a job keeps; requests may ask for less. Output past it is counted and dropped
    /// while the job runs on. Without --max-total-output, lowered to an eighth of the default
    /// budget on a small state filesystem (under 16 GiB).
    #[arg(long, env = "JOBWORKER_MAX_JOB_OUTPUT", default_value = "1G", value_parser = parse_bytes)]
    max_job_output: u64,
    /// CPUs of all jobs together, a bound on the jobs' parent cgroup [default: this machine's
    /// CPUs minus half a CPU for the daemon and the system (a quarter on a one-CPU machine)].
    #[arg(long, env = "JOBWORKER_JOBS_CPUS")]
    jobs_cpus: Option<f64>,
    /// Memory of all jobs together, a bound on the jobs' parent cgroup [default: this machine's
    /// memory minus 10% (at least 512 MiB) for the daemon and the system].
    #[arg(long, env = "JOBWORKER_JOBS_MEMORY", value_parser = parse_bytes)]
    jobs_memory: Option<u64>,
    /// Processes and threads of all jobs together [default: half of kernel.pid_max].
    #[arg(long, env = "JOBWORKER_JOBS_PIDS")]
    jobs_pids: Option<u64>,
    /// Most jobs (running or ended) kept at once, all users together.
    #[arg(long, env = "JOBWORKER_MAX_JOBS", default_value_t = 10_000)]
    max_jobs: usize,
    /// Most jobs (running or ended) one user keeps at once.
    #[arg(long, env = "JOBWORKER_MAX_JOBS_PER_USER", default_value_t = 1_000)]
    max_jobs_per_user: usize,
    /// Most running jobs of one user at once.
    #[arg(long, env = "JOBWORKER_MAX_RUNNING_PER_USER", default_value_t = 64)]
    max_running_per_user: usize,
    /// Bytes of output logs kept in all; a running job counts its output limit. When full, a
    /// start first removes the starting user's oldest ended jobs (then those of users over
    /// their fair share), else is refused [default: half of the state directory's filesystem].
    #[arg(long, env = "JOBWORKER_MAX_TOTAL_OUTPUT", value_parser = parse_bytes)]
    max_total_output: Option<u64>,
    /// Ended jobs (record and output) are removed this long after they ended; "forever" keeps
    /// them.
    #[arg(long, env = "JOBWORKER_RETAIN_FINISHED", default_value = "7d", value_parser = parse_retention)]
    retain_finished: Retention,
    /// Do not fsync job records: faster starts, but a power loss may forget recent jobs. For
    /// measuring what durability costs; not for production.
    #[arg(long, env = "JOBWORKER_UNSAFE_NO_FSYNC")]
    unsafe_no_fsync: bool,
    /// Most client connections open at once, TLS handshakes included; more are closed at once.
    #[arg(long, env = "JOBWORKER_MAX_CONNECTIONS", default_value_t = jobworkerd::server::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Serve Prometheus metrics at http://ADDR/metrics: plain HTTP, no authentication, so meant
    /// for loopback (e.g. 127.0.0.1:9464). Off by default.
    #[arg(long, env = "JOBWORKER_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Append an audit record (one JSON object per line) for every mutating request and every
    /// refused request to FILE, created 0600 if missing.
    #[arg(long, env = "JOBWORKER_AUDIT_LOG", value_name = "FILE")]
    audit_log: Option<PathBuf>,
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a development CA, a server certificate for localhost, and one client certificate per
    /// user. Keys are written 0600. Not for production.
    #[command(after_help = "\
The PKI goes to $XDG_DATA_HOME/jobworker/dev-pki (~/.local/share/jobworker/dev-pki when
XDG_DATA_HOME is unset), outside any repository; `jobworkerd serve` and jobctl look there by
default.

Identity: a client certificate's CN is the user; its O values are groups. Members of group \"admin\"
see and act on every job.

Examples:
  jobworkerd certs init
  jobworkerd certs init --dir /tmp/pki --user alice --user bob --admin admin --days 7")]
    Init(CertsInitArgs),
    /// Issue a client certificate for one more user from the existing development CA.
    #[command(after_help = "\
Signs with the CA key (ca.key) in the PKI directory; the CA, the server certificate and the other
users' files are left as they are, so a running jobworkerd accepts the new user at once. The
certificate never outlives the CA.

Examples:
  jobworkerd certs add-user carol
  jobworkerd certs add-user --admin dave
  jobctl --user carol list")]
    AddUser(CertsAddUserArgs),
}

#[derive(Args)]
struct CertsInitArgs {
    /// Directory to write the PKI to [default: $XDG_DATA_HOME/jobworker/dev-pki].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
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

#[derive(Args)]
struct CertsAddUserArgs {
    /// The user: the certificate's CN, and the name of its files (NAME.pem, NAME.key).
    #[arg(value_name = "NAME")]
    name: String,
    /// Make the user an admin (O=admin): they see and act on every job.
    #[arg(long)]
    admin: bool,
    /// The PKI directory made by `certs init` [default: $XDG_DATA_HOME/jobworker/dev-pki].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Validity in days (capped at the CA's own).
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Replace the user's existing certificate and key.
    #[arg(long)]
    force: bool,
}

/// How long ended jobs are kept.
#[derive(Debug, Clone, Copy)]
struct Retention(Option<Duration>);

fn parse_retention(s: &str) -> Result<Retention, String> {
    if s == "forever" {
        return Ok(Retention(None));
    }
    humantime::parse_duration(s)
        .map(|d| Retention(Some(d)))
        .map_err(|e| format!("{s:?} is not a duration such as 7d or 12h, nor \"forever\": {e}"))
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
        Command::Certs(CertsCommand::AddUser(args)) => certs_add_user(args),
        Command::ManPages { dir } => man_pages(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jobworkerd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `dir`, or the development PKI's default directory.
fn pki_dir(dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match dir {
        Some(dir) => Ok(dir),
        None => paths::default_pki_dir().with_context(|| {
            format!(
                "cannot locate the development PKI ({DEFAULT_PKI_DIR_HELP}): neither XDG_DATA_HOME nor HOME \
                 is set; pass --dir"
            )
        }),
    }
}

fn certs_init(args: CertsInitArgs) -> anyhow::Result<()> {
    let dir = pki_dir(args.dir)?;
    let written =
        pki::init(&dir, &args.users, &args.admins, args.days, args.force).map_err(|e| match e {
            PkiError::Exists { .. } => anyhow::anyhow!(
                "{e} (pass --force to replace the whole development PKI, or add users with \
                 `jobworkerd certs add-user NAME`)"
            ),
            other => other.into(),
        })?;
    print_written(&dir, &written, "a development PKI (not for production)")
}

fn certs_add_user(args: CertsAddUserArgs) -> anyhow::Result<()> {
    let dir = pki_dir(args.dir)?;
    let written = pki::add_user(&dir, &args.name, args.admin, args.days, args.force).map_err(
        |e| match e {
            PkiError::Exists { .. } => {
                anyhow::anyhow!(
                    "{e} (pass --force to issue {} a new certificate)",
                    args.name
                )
            }
            PkiError::Read { .. } => {
                anyhow::anyhow!("{e:#} (create the PKI first with `jobworkerd certs init`)")
            }
            other => other.into(),
        },
    )?;
    let what = if args.admin {
        format!("a certificate for {} (group admin)", args.name)
    } else {
        format!("a certificate for {}", args.name)
    };
    print_written(&dir, &written, &what)
}

/// Says where files went: the directory first, then each file, so that both people and scripts
/// (`tail -n +2`) can read it.
fn print_written(dir: &Path, written: &[PathBuf], what: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "wrote {what} to {}:", dir.display())?;
    for path in written {
        writeln!(out, "{}", path.display())?;
    }
    Ok(())
}

/// The manual pages of every visible (sub)command, in section 8 (system administration: a
/// daemon run by root).
fn man_pages(dir: &Path) -> anyhow::Result<()> {
    fn write(command: clap::Command, dir: &Path) -> std::io::Result<()> {
        for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
            write(sub.clone(), dir)?;
        }
        clap_mangen::Man::new(command)
            .section("8")
            .generate_to(dir)?;
        Ok(())
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Built once from the top, so that subcommands are named `jobworkerd-serve` and so on.
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    write(command, dir).with_context(|| format!("cannot write manual pages to {}", dir.display()))
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        anyhow::bail!(
            "jobworkerd serve needs root to create namespaces and cgroups (try: sudo jobworkerd serve)"
        );
    }
    // Before any thread exists, and from the main process: systemd accepts notifications only
    // from the service's main PID.
    let notifier = Notifier::from_env()?;
    let (ca, cert, key) = match (args.ca.clone(), args.cert.clone(), args.key.clone()) {
        (Some(ca), Some(cert), Some(key)) => (ca, cert, key),
        (ca, cert, key) => {
            let dir = paths::default_pki_dir().with_context(|| {
                format!(
                    "cannot locate the development PKI ({DEFAULT_PKI_DIR_HELP}): neither \
                     XDG_DATA_HOME nor HOME is set; pass --ca, --cert and --key"
                )
            })?;
            (
                ca.unwrap_or_else(|| dir.join("ca.pem")),
                cert.unwrap_or_else(|| dir.join("server.pem")),
                key.unwrap_or_else(|| dir.join("server.key")),
            )
        }
    };
    let tls = jobworker_api::tls::server_config(&ca, &cert, &key)
        .context("cannot load the server's TLS configuration (create a development PKI with `jobworkerd certs init`)")?;
    let config = worker_config(&args, &key)?;
    // Taken before anything changes: a second daemon on this directory stops here, changing
    // nothing.
    let lock = StateLock::acquire(&config.state_dir).context("cannot use the state directory")?;
    let audit = match &args.audit_log {
        Some(path) => AuditLog::open(path)?,
        None => AuditLog::disabled(),
    };
    raise_open_file_limit();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        // Listen before preparing the worker: a failed bind changes nothing.
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
        // Listening first: a failed bind has changed nothing; the worker's preparation (which
        // cleans up what an earlier run left) comes after.
        let worker = Arc::new(
            Worker::new(config, lock)
                .await
                .context("cannot prepare the worker")?,
        );
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
        notifier.ready(&format!("listening on {}", server.local_addr()));
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
        notifier.stopping("stopping jobs");
        server.shutdown().await;
        anyhow::Ok(())
    })
}

/// The worker's configuration from the flags: the machine's defaults (`Config::default`) where a
/// flag is not given. Maxima follow the all-jobs bounds, defaults the maxima.
fn worker_config(args: &ServeArgs, key: &Path) -> anyhow::Result<Config> {
    let mut config = Config {
        state_dir: args.state_dir.clone(),
        job_ids: args.job_ids,
        cgroup_parent: args.cgroup_parent.clone(),
        stop_grace: args.stop_grace,
        max_jobs: args.max_jobs,
        max_jobs_per_user: args.max_jobs_per_user,
        max_running_per_user: args.max_running_per_user,
        max_total_output: args.max_total_output,
        retain_finished: args.retain_finished.0,
        secrets: vec![key.to_owned()],
        live_restore: args.live_restore,
        sync_records: !args.unsafe_no_fsync,
        ..Config::default()
    };
    config.sandbox.ro_paths = args.ro_paths.clone();
    for (binds, writable) in [(&args.bind_ro, false), (&args.bind_rw, true)] {
        for (source, target) in binds {
            config.sandbox.binds.push(jobworker::Bind {
                source: source.clone(),
                target: target.clone(),
                writable,
            });
        }
    }
    let jobs = &mut config.jobs_limits;
    jobs.cpus = args.jobs_cpus.or(jobs.cpus);
    jobs.memory_bytes = args.jobs_memory.or(jobs.memory_bytes);
    jobs.pids = args.jobs_pids.or(jobs.pids);
    let jobs = config.jobs_limits;
    let max = &mut config.max_limits;
    max.cpus = args.max_cpus.or(jobs.cpus);
    max.memory_bytes = args.max_memory.or(jobs.memory_bytes);
    max.pids = args.max_pids.or(jobs.pids);
    max.output_bytes = Some(args.max_job_output);
    let max = config.max_limits;
    let lower = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let defaults = &mut config.default_limits;
    defaults.cpus = args.default_cpus.or(match (defaults.cpus, max.cpus) {
        (Some(d), Some(m)) => Some(d.min(m)),
        (d, m) => d.or(m),
    });
    defaults.memory_bytes = args
        .default_memory
        .or(lower(defaults.memory_bytes, max.memory_bytes));
    defaults.pids = args.default_pids.or(lower(defaults.pids, max.pids));
    defaults.output_bytes = Some(args.max_job_output);
    Ok(config)
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
