//! The command line: flags, subcommands and their help texts.
//!
//! Parsing only: every value is checked here (sizes, CPUs, `KEY=VALUE`), so a malformed flag is
//! a usage error (exit 2) before anything touches the network.

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// Shown under `jobctl --help`.
const EXAMPLES: &str = "\
Examples:
  jobctl run -- echo hello                   run a job and wait for it, like `docker run`
  id=$(jobctl start --memory 256M -- sleep 600)
  jobctl logs \"$id\"                          follow its output
  jobctl status \"$id\"
  jobctl stop \"$id\"
  jobctl wait \"$id\"                          wait for it to end, exit with its status
  jobctl rm \"$id\"                            delete its record and output
  jobctl list --state running --output json

Connection: by default jobctl connects to https://127.0.0.1:50051 as user alice of the development
PKI in $XDG_DATA_HOME/jobworker/dev-pki (~/.local/share/jobworker/dev-pki; created by
`jobworkerd certs init`). Use --user bob or --user admin for the PKI's other identities, or
--ca/--cert/--key for certificates kept elsewhere. For several servers, save each as a context:
  jobctl config set-context node1 --server node1:50051 --ca ca.pem --cert me.pem --key me.key
  jobctl --context node1 list                or: jobctl config use-context node1

Each connection setting is taken from the first of, strongest first:
  1. its flag (--server, --ca, --cert, --key, --pki-dir, --user)
  2. its environment variable (JOBCTL_SERVER, JOBCTL_CA, ...)
  3. the selected context: --context NAME, else JOBCTL_CONTEXT, else the config file's
     current-context
  4. the default shown for the flag

--ca, --cert and --key default to ca.pem, USER.pem and USER.key in the PKI directory; a stronger
--pki-dir or --user overrides a weaker --ca, --cert or --key. The config file is
$XDG_CONFIG_HOME/jobctl/config.toml (~/.config/jobctl/config.toml), or JOBCTL_CONFIG.

Exit status: 0 success, 1 error (one line on stderr: `jobctl: error: ...`), 2 usage error;
`jobctl run` exits with the job's status.";

const START_EXAMPLES: &str = "\
Prints only the job's id, so that scripts can capture it.

Examples:
  jobctl start -- sleep 600
  id=$(jobctl start --cpus 0.5 --memory 256M -- sh -c 'while true; do date; sleep 1; done')
  jobctl start --env GREETING=hello --workdir /tmp -- sh -c 'echo $GREETING from $PWD'";

const STOP_EXAMPLES: &str = "\
Sends SIGTERM to every process of the job, waits for the server's grace period, then SIGKILLs
whatever is left. Returns once the job has ended and prints its final status. Stopping a job
that has already ended is not an error.

Examples:
  jobctl stop 7f9c1e2a-3b4d-4e5f-8a6b-9c0d1e2f3a4b
  jobctl stop --output json \"$id\"";

const STATUS_EXAMPLES: &str = "\
States: running, stopping, exited(CODE), signaled(SIGNAL), oom-killed, lost (the server died
under the job and its outcome is unknown); \"(stopped)\" marks a job ended by `jobctl stop`.

Examples:
  jobctl status \"$id\"
  jobctl status --output json \"$id\" | jq -r .state";

const LIST_EXAMPLES: &str = "\
Lists your jobs, running and ended, oldest first; members of the group admin see every user's
jobs. Long command lines are cut (`jobctl status ID` shows them whole). The server keeps ended
jobs for its retention period (7 days by default); `jobctl rm` deletes one sooner.

Examples:
  jobctl list
  jobctl list --state running
  jobctl list --state exited --state signaled --output json | jq -r '.[].id'
  jobctl list --owner bob                    (admins only)";

const WAIT_EXAMPLES: &str = "\
Waits until the job has ended, prints its final status, and exits with the job's status as
`jobctl run` does: its exit code, 128+N when killed by signal N, 137 when the OOM killer ended it,
1 when its outcome is unknown (lost). If the server restarts meanwhile, jobctl reconnects.

Examples:
  jobctl wait \"$id\" && echo \"the job succeeded\"
  jobctl wait --output json \"$id\" | jq .exit_code";

const RM_EXAMPLES: &str = "\
Deletes ended jobs: their records and their output. A running job is refused unless --force is
given, which stops it first (SIGTERM, grace period, SIGKILL). Prints each id removed.

Examples:
  jobctl rm \"$id\"
  jobctl rm --force \"$id\"
  jobctl list --state exited --output json | jq -r '.[].id' | xargs jobctl rm";

const LOGS_EXAMPLES: &str = "\
Streams the job's output from its first byte and follows it until the job ends. The job's
stdout goes to stdout and its stderr to stderr, byte for byte (binary output is safe to redirect).
Ctrl-C stops following (exit 130); the job keeps running. If the connection breaks (e.g. the
server restarts), jobctl says so on stderr and reconnects, resuming at the exact byte where it
stopped, for up to 2 minutes.

Examples:
  jobctl logs \"$id\"
  jobctl logs --stderr \"$id\"
  jobctl logs --stdout \"$id\" > output.bin";

const RUN_EXAMPLES: &str = "\
Starts the job, prints its id on stderr (\"jobctl: started job ID\"; --quiet leaves it out),
streams its output as `jobctl logs` does, and exits with the job's status: its exit code, 128+N
when killed by signal N, 137 when the OOM killer ended it.

Ctrl-C stops the job (like `docker run`, which passes the signal on): its remaining output is
still shown, then jobctl exits 130. A second Ctrl-C stops waiting at once, while the server
finishes stopping the job. If stdout is closed early (e.g. `| head`), the job is stopped too.

Examples:
  jobctl run -- uname -a
  jobctl run --memory 64M -- sh -c 'head -c 128M /dev/zero | tail'; echo \"exit $?\"
  jobctl run --cpus 0.5 --pids 64 -- make -j8";

const CONFIG_HELP: &str = "\
A context names a server and the certificates to use with it, so that several servers (one
jobworkerd per node) are one --context away. The config file is $XDG_CONFIG_HOME/jobctl/config.toml
(~/.config/jobctl/config.toml when XDG_CONFIG_HOME is unset), or JOBCTL_CONFIG; it is written
with mode 0600.

Examples:
  jobctl config set-context node1 --server node1.example.com:50051 \\
      --ca node1/ca.pem --cert node1/alice.pem --key node1/alice.key
  jobctl config set-context dev --server 127.0.0.1:50051 --pki-dir ~/.local/share/jobworker/dev-pki --user bob
  jobctl config use-context node1
  jobctl config get-contexts
  jobctl --context dev list";

const SET_CONTEXT_HELP: &str = "\
Stores the connection flags given on this command line (--server, --ca, --cert, --key, --pki-dir,
--user) in context NAME, creating it if needed; its other settings stay. Relative paths are
stored as absolute ones. The environment is not read.

Examples:
  jobctl config set-context node1 --server node1.example.com:50051 \\
      --ca node1/ca.pem --cert node1/alice.pem --key node1/alice.key
  jobctl config set-context dev --pki-dir ~/.local/share/jobworker/dev-pki --user bob";

const COMPLETION_HELP: &str = "\
Prints a completion script for the shell on stdout.

Examples:
  jobctl completion bash > ~/.local/share/bash-completion/completions/jobctl
  jobctl completion zsh > \"${fpath[1]}/_jobctl\"
  jobctl completion fish > ~/.config/fish/completions/jobctl.fish
The Debian package installs all three.";

/// The command line of `jobctl`.
#[derive(Debug, Parser)]
#[command(
    name = "jobctl",
    version,
    about = "Run and manage jobs on a jobworkerd server",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// Where and as whom to connect; global so that it may follow the subcommand too.
    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// What is done on the server; listed first in `--help`.
    #[command(flatten)]
    Job(JobCommand),
    /// Show and edit contexts: named servers with their certificates.
    #[command(subcommand, after_help = CONFIG_HELP)]
    Config(ConfigCommand),
    /// Print a shell completion script.
    #[command(after_help = COMPLETION_HELP)]
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (jobctl.1, jobctl-run.1, ...) into a directory; used by the
    /// packaging script.
    #[command(hide = true)]
    ManPages {
        /// Where to write them (created if missing).
        dir: PathBuf,
    },
}

/// The subcommands that talk to the server.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Start a job and print its id.
    #[command(after_help = START_EXAMPLES, override_usage = "jobctl start [OPTIONS] -- COMMAND [ARGS]...")]
    Start(StartArgs),
    /// Stop a job and print its final status.
    #[command(after_help = STOP_EXAMPLES)]
    Stop {
        /// The job's id, as printed by `jobctl start`.
        #[arg(value_name = "ID", value_parser = parse_job_id)]
        job_id: String,
        /// How to print the final status.
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Show a job's status.
    #[command(after_help = STATUS_EXAMPLES)]
    Status {
        /// The job's id, as printed by `jobctl start`.
        #[arg(value_name = "ID", value_parser = parse_job_id)]
        job_id: String,
        /// How to print the status.
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// List jobs.
    #[command(after_help = LIST_EXAMPLES)]
    List {
        /// Only jobs in this state (repeatable).
        #[arg(long, value_enum, value_name = "STATE")]
        state: Vec<StateFilter>,
        /// Only this user's jobs; naming another user needs the group admin.
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
        /// How to print the jobs.
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Wait for a job to end and exit with its status.
    #[command(after_help = WAIT_EXAMPLES)]
    Wait {
        /// The job's id, as printed by `jobctl start`.
        #[arg(value_name = "ID", value_parser = parse_job_id)]
        job_id: String,
        /// How to print the final status.
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Delete jobs: their records and output.
    #[command(after_help = RM_EXAMPLES)]
    Rm {
        /// The jobs' ids.
        #[arg(value_name = "ID", required = true, value_parser = parse_job_id)]
        job_ids: Vec<String>,
        /// Stop running jobs first instead of refusing them.
        #[arg(short, long)]
        force: bool,
    },
    /// Stream a job's output until it ends.
    #[command(after_help = LOGS_EXAMPLES)]
    Logs(LogsArgs),
    /// Start a job, stream its output, and exit with its status.
    #[command(after_help = RUN_EXAMPLES, override_usage = "jobctl run [OPTIONS] -- COMMAND [ARGS]...")]
    Run(RunArgs),
}

/// The subcommands of `jobctl config`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// List the contexts; `*` marks the current one.
    GetContexts,
    /// Print the name of the current context.
    CurrentContext,
    /// Make a context the current one: used whenever --context and JOBCTL_CONTEXT are not given.
    UseContext {
        /// The context.
        name: String,
    },
    /// Create or update a context from the connection flags on this command line.
    #[command(after_help = SET_CONTEXT_HELP)]
    SetContext {
        /// The context.
        name: String,
    },
    /// Delete a context (and stop using it, if it is the current one).
    DeleteContext {
        /// The context.
        name: String,
    },
}

/// Where the server is and which certificates identify us to it.
#[derive(Debug, Args)]
#[command(next_help_heading = "Connection")]
pub struct ConnectionArgs {
    /// The context of the config file to use [default: the file's current-context].
    #[arg(long, global = true, env = "JOBCTL_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,

    /// The server: https://HOST:PORT or HOST:PORT.
    #[arg(
        long,
        global = true,
        env = "JOBCTL_SERVER",
        default_value = "https://127.0.0.1:50051",
        value_name = "URL"
    )]
    pub server: String,

    /// Directory of a development PKI (from `jobworkerd certs init`): supplies ca.pem,
    /// USER.pem and USER.key for whichever of --ca, --cert, --key is not given
    /// [default: $XDG_DATA_HOME/jobworker/dev-pki, or ~/.local/share/jobworker/dev-pki].
    #[arg(long, global = true, env = "JOBCTL_PKI_DIR", value_name = "DIR")]
    pub pki_dir: Option<PathBuf>,

    /// The identity to use from --pki-dir: its USER.pem and USER.key.
    #[arg(
        long,
        global = true,
        env = "JOBCTL_USER",
        default_value = "alice",
        value_name = "USER"
    )]
    pub user: String,

    /// CA certificate (PEM) the server's certificate must chain to [default: PKI_DIR/ca.pem].
    #[arg(long, global = true, env = "JOBCTL_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Client certificate (PEM) [default: PKI_DIR/USER.pem].
    #[arg(long, global = true, env = "JOBCTL_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,

    /// Client private key (PEM) [default: PKI_DIR/USER.key].
    #[arg(long, global = true, env = "JOBCTL_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// How long to wait for the server to accept the connection (TCP, TLS handshake, HTTP/2),
    /// e.g. 5s or 500ms: long enough for a loaded server, short enough that a wrong --server
    /// is noticed quickly.
    #[arg(
        long,
        global = true,
        env = "JOBCTL_CONNECT_TIMEOUT",
        default_value = "5s",
        value_name = "DURATION",
        value_parser = parse_duration
    )]
    pub connect_timeout: std::time::Duration,

    /// Where each of the values above came from: a stronger source wins over a context.
    #[arg(skip)]
    pub given: Given,
}

/// Where a connection setting's value came from on the command line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// Not given: clap's default, or nothing.
    #[default]
    Default,
    /// Its `JOBCTL_*` environment variable.
    Environment,
    /// Its flag.
    Flag,
}

/// The [`Source`] of each connection setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Given {
    /// Of `--server`.
    pub server: Source,
    /// Of `--pki-dir`.
    pub pki_dir: Source,
    /// Of `--user`.
    pub user: Source,
    /// Of `--ca`.
    pub ca: Source,
    /// Of `--cert`.
    pub cert: Source,
    /// Of `--key`.
    pub key: Source,
}

impl Given {
    fn of(matches: &ArgMatches) -> Given {
        let source = |id: &str| match matches.value_source(id) {
            Some(ValueSource::CommandLine) => Source::Flag,
            Some(ValueSource::EnvVariable) => Source::Environment,
            _ => Source::Default,
        };
        Given {
            server: source("server"),
            pki_dir: source("pki_dir"),
            user: source("user"),
            ca: source("ca"),
            cert: source("cert"),
            key: source("key"),
        }
    }
}

impl Cli {
    /// Parses our command line, noting where each connection setting came from. A usage error
    /// is reported by clap, which exits 2 (and `--help` exits 0).
    pub fn parse_with_sources() -> Cli {
        let matches = Cli::command().get_matches();
        Cli::from_matches(&matches).unwrap_or_else(|error| error.exit())
    }

    /// [`Cli::parse_with_sources`] of `args`, returning the usage error.
    #[cfg(test)]
    pub fn try_parse_with_sources<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Cli::command().try_get_matches_from(args)?;
        Cli::from_matches(&matches)
    }

    fn from_matches(matches: &ArgMatches) -> Result<Cli, clap::Error> {
        let mut cli = Cli::from_arg_matches(matches)?;
        cli.connection.given = Given::of(matches);
        Ok(cli)
    }
}

/// The arguments of `start` and `run`: what to run and within which limits.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// Set an environment variable in the job (repeatable). The job inherits nothing else
    /// besides a default PATH.
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// Working directory inside the job [default: /].
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,

    /// The command and its arguments: an absolute path or a name looked up in the job's PATH.
    #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<String>,

    /// Resource limits; declared last because their help heading applies to what follows.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// The arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Do not print the job's id on stderr.
    #[arg(short, long)]
    pub quiet: bool,

    /// What to run, as for `start`.
    #[command(flatten)]
    pub start: StartArgs,
}

/// Per-job resource limits, as Docker spells them.
#[derive(Debug, Args)]
#[command(next_help_heading = "Limits (unset ones take the server's defaults)")]
pub struct LimitArgs {
    /// CPUs the job may use, e.g. 0.5 or 2.
    #[arg(long, value_name = "CPUS", value_parser = parse_cpus)]
    pub cpus: Option<f64>,

    /// Memory limit in binary units, e.g. 256M (= 256 MiB) or 1G; swap is not allowed.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory: Option<u64>,

    /// Read rate limit, bytes per second (e.g. 10M), on the device of the working directory.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub io_read_bps: Option<u64>,

    /// Write rate limit, bytes per second (e.g. 10M). On cgroup v1 hosts only direct (O_DIRECT)
    /// and fsync'd writes are throttled: buffered writeback escapes the limit.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub io_write_bps: Option<u64>,

    /// Read operations per second on the device of the working directory.
    #[arg(long, value_name = "IOPS")]
    pub io_read_iops: Option<u64>,

    /// Write operations per second. On cgroup v1 hosts only direct (O_DIRECT) and fsync'd
    /// writes are throttled.
    #[arg(long, value_name = "IOPS")]
    pub io_write_iops: Option<u64>,

    /// Maximum number of processes and threads in the job.
    #[arg(long, value_name = "N")]
    pub pids: Option<u64>,

    /// Output kept, e.g. 100M; past it output is counted and dropped, the job runs on.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_output: Option<u64>,
}

/// The arguments of `logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The job's id, as printed by `jobctl start`.
    #[arg(value_name = "ID", value_parser = parse_job_id)]
    pub job_id: String,

    /// Only the job's stdout.
    #[arg(long, conflicts_with = "stderr")]
    pub stdout: bool,

    /// Only the job's stderr.
    #[arg(long)]
    pub stderr: bool,
}

/// A job state `list --state` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateFilter {
    /// Running (including stopping).
    Running,
    /// Exited with a code.
    Exited,
    /// Killed by a signal.
    Signaled,
    /// Ended by the OOM killer.
    OomKilled,
    /// Ended without a recorded outcome.
    Lost,
}

/// How `status`, `stop` and `list` print jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// JSON with stable field names, for programs.
    Json,
}

/// `KEY=VALUE`, split at the first `=`; the value may be empty, the key may not.
fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// A job id as the server issues them (a UUID), in its canonical form. Checked here so that a
/// mistyped id is a usage error before any connection is made.
fn parse_job_id(text: &str) -> Result<String, String> {
    uuid::Uuid::try_parse(text)
        .map(|id| id.hyphenated().to_string())
        .map_err(|_| {
            "expected a job id such as 7f9c1e2a-3b4d-4e5f-8a6b-9c0d1e2f3a4b, as printed by \
             `jobctl start`"
                .to_owned()
        })
}

/// A positive duration such as 5s, 500ms or 1m.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        _ => Err(format!(
            "expected a duration such as 5s or 500ms, got {text:?}"
        )),
    }
}

/// A positive, finite number of CPUs.
fn parse_cpus(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(cpus) if cpus.is_finite() && cpus > 0.0 => Ok(cpus),
        _ => Err(format!(
            "expected a positive number of CPUs such as 0.5 or 2, got {text:?}"
        )),
    }
}

/// A size in bytes with binary units, as Docker reads them: 256M is 256 MiB.
fn parse_size(text: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(text)
        .map_err(|error| format!("expected a size such as 512K, 256M or 1G, got {text:?}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_use_binary_units_like_docker() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("10m"), Ok(10 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn cpus_must_be_positive_and_finite() {
        assert_eq!(parse_cpus("0.5"), Ok(0.5));
        for bad in ["0", "-1", "inf", "NaN", "half"] {
            assert!(parse_cpus(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn env_splits_at_the_first_equals_sign() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_env("EMPTY="), Ok(("EMPTY".into(), String::new())));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("NOVALUE").is_err());
    }

    #[test]
    fn the_command_keeps_its_own_flags() {
        let cli = Cli::try_parse_from(["jobctl", "run", "--cpus", "1", "--", "ls", "-l", "--all"])
            .expect("parse");
        let Command::Job(JobCommand::Run(args)) = cli.command else {
            panic!("expected run, got {:?}", cli.command);
        };
        assert_eq!(args.start.command, ["ls", "-l", "--all"]);
        assert_eq!(args.start.limits.cpus, Some(1.0));
    }

    #[test]
    fn connection_flags_may_follow_the_subcommand() {
        let cli = Cli::try_parse_from(["jobctl", "list", "--user", "bob"]).expect("parse");
        assert_eq!(cli.connection.user, "bob");
    }

    #[test]
    fn flags_are_told_apart_from_defaults_wherever_they_stand() {
        let cli = Cli::try_parse_with_sources(["jobctl", "--ca", "c.pem", "list", "--user", "bob"])
            .expect("parse");
        let given = cli.connection.given;
        assert_eq!(given.ca, Source::Flag);
        assert_eq!(
            given.user,
            Source::Flag,
            "a global flag after the subcommand"
        );
        assert_eq!(given.server, Source::Default, "clap's default is no flag");
        assert_eq!(given.pki_dir, Source::Default);
    }

    #[test]
    fn job_ids_are_uuids_in_canonical_form() {
        assert_eq!(
            parse_job_id("7F9C1E2A-3B4D-4E5F-8A6B-9C0D1E2F3A4B"),
            Ok("7f9c1e2a-3b4d-4e5f-8a6b-9c0d1e2f3a4b".to_owned())
        );
        for bad in ["", "42", "7f9c1e2a-3b4d-4e5f-8a6b", "not-a-job-id"] {
            assert!(parse_job_id(bad).is_err(), "{bad:?} accepted");
        }
    }
}
