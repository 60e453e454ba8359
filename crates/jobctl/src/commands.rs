//! What each subcommand does: the calls it makes and the exit status it ends with.

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use jobworker_api::pb;
use tokio::signal::unix::Signal;
use tokio::task::JoinHandle;
use tonic::Status;

use crate::cli::{JobCommand, LimitArgs, LogsArgs, OutputFormat, RunArgs, StartArgs};
use crate::connection::Connection;
use crate::error::{self, Failure};
use crate::output;
use crate::settings::Settings;
use crate::status::State;
use crate::stream::{self, Ending, Sink};

/// Exit status after Ctrl-C: 128 + SIGINT, what a shell reports for an interrupted command.
const INTERRUPTED: u8 = 130;

/// Exit status when our output was closed: 128 + SIGPIPE, what a shell reports for a command
/// killed writing into a closed pipe. Rust ignores SIGPIPE, so we end ourselves, quietly.
const BROKEN_PIPE: u8 = 141;

/// Backoff between status checks while waiting for a job whose output is complete to end.
const END_POLL_FIRST: Duration = Duration::from_millis(5);
const END_POLL_MAX: Duration = Duration::from_millis(250);

/// Connects and runs the subcommand.
pub async fn execute(settings: &Settings, command: JobCommand) -> Result<ExitCode, Failure> {
    let connection = Connection::open(settings).await?;
    match command {
        JobCommand::Start(args) => start(&connection, args).await,
        JobCommand::Stop { job_id, output } => stop(&connection, job_id, output).await,
        JobCommand::Status { job_id, output } => status(&connection, job_id, output).await,
        JobCommand::List { output } => list(&connection, output).await,
        JobCommand::Logs(args) => logs(&connection, args).await,
        JobCommand::Run(args) => run(&connection, args).await,
    }
}

async fn start(connection: &Connection, args: StartArgs) -> Result<ExitCode, Failure> {
    let id = start_job(connection, args).await?;
    print(|out| writeln!(out, "{id}"))
}

async fn stop(
    connection: &Connection,
    job_id: String,
    format: OutputFormat,
) -> Result<ExitCode, Failure> {
    let status = stop_job(connection, job_id)
        .await
        .map_err(|s| connection.failure(&s))?;
    print(|out| output::print_status(out, &status, format))
}

async fn status(
    connection: &Connection,
    job_id: String,
    format: OutputFormat,
) -> Result<ExitCode, Failure> {
    let status = get_status(connection, job_id)
        .await
        .map_err(|s| connection.failure(&s))?;
    print(|out| output::print_status(out, &status, format))
}

async fn list(connection: &Connection, format: OutputFormat) -> Result<ExitCode, Failure> {
    let jobs = connection
        .client
        .clone()
        .list(pb::ListRequest {})
        .await
        .map_err(|s| connection.failure(&s))?
        .into_inner()
        .jobs;
    print(|out| output::print_list(out, &jobs, format))
}

/// Follows the output; Ctrl-C only stops following, the job is not touched.
async fn logs(connection: &Connection, args: LogsArgs) -> Result<ExitCode, Failure> {
    let mut interrupts = stream::interrupts()?;
    let streams = match (args.stdout, args.stderr) {
        (true, false) => vec![pb::OutputStream::Stdout as i32],
        (false, true) => vec![pb::OutputStream::Stderr as i32],
        // Empty means both; clap already refuses both flags at once.
        _ => Vec::new(),
    };
    let mut output = connection
        .client
        .clone()
        .stream_output(pb::StreamOutputRequest {
            job_id: args.job_id,
            streams,
        })
        .await
        .map_err(|s| connection.failure(&s))?
        .into_inner();
    let mut sink = Sink::new()?;
    let ending = stream::follow(&mut output, &mut sink, &mut interrupts, connection).await?;
    Ok(match ending {
        Ending::Complete => ExitCode::SUCCESS,
        Ending::Interrupted => ExitCode::from(INTERRUPTED),
        Ending::BrokenPipe => ExitCode::from(BROKEN_PIPE),
    })
}

/// Start, follow, and exit with the job's status.
///
/// The job belongs to this invocation the way a foreground process belongs to a shell: Ctrl-C
/// stops it (a second one stops waiting), and so does our stdout being closed.
async fn run(connection: &Connection, args: RunArgs) -> Result<ExitCode, Failure> {
    let mut interrupts = stream::interrupts()?;
    let id = start_job(connection, args.start).await?;
    if !args.quiet {
        // On stderr, so that stdout stays the job's own; before any of the job's output, so
        // that it is the first line there. Not eprintln!, which panics on a closed stderr.
        let _ = writeln!(io::stderr(), "jobctl: started job {id}");
    }
    let mut run = Run {
        connection,
        id,
        stopping: None,
    };

    let mut output = match connection
        .client
        .clone()
        .stream_output(pb::StreamOutputRequest {
            job_id: run.id.clone(),
            streams: Vec::new(),
        })
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => {
            // Nobody would see this job's output or status: do not leave it running.
            let _ = stop_job(connection, run.id.clone()).await;
            return Err(connection.failure(&status));
        }
    };
    let mut sink = Sink::new()?;
    loop {
        match stream::follow(&mut output, &mut sink, &mut interrupts, connection).await? {
            Ending::Complete => break,
            Ending::Interrupted => {
                if run.interrupt() {
                    return Ok(ExitCode::from(INTERRUPTED));
                }
            }
            Ending::BrokenPipe => {
                // Like a local pipeline, `jobctl run -- yes | head` must not leave `yes`
                // running. Errors are moot: nobody reads our output anymore.
                let _ = stop_job(connection, run.id.clone()).await;
                return Ok(ExitCode::from(BROKEN_PIPE));
            }
        }
    }
    drop(sink);
    run.finish(&mut interrupts).await
}

/// A job started by `run`, and whether Ctrl-C has asked it to stop.
struct Run<'a> {
    connection: &'a Connection,
    id: String,
    /// The Stop call started by the first Ctrl-C; it runs while we keep showing output.
    stopping: Option<JoinHandle<Result<pb::JobStatus, Status>>>,
}

impl Run<'_> {
    /// Handles Ctrl-C: the first one stops the job, the second gives up waiting. Returns
    /// whether to give up.
    fn interrupt(&mut self) -> bool {
        if self.stopping.is_some() {
            return true;
        }
        // Not eprintln!, which panics when stderr is a closed pipe.
        let _ = writeln!(
            io::stderr(),
            "jobctl: stopping job {} (press Ctrl-C again to stop waiting)",
            self.id
        );
        let connection = self.connection.client.clone();
        let id = self.id.clone();
        self.stopping = Some(tokio::spawn(async move {
            let mut client = connection;
            client
                .stop(pb::StopRequest { job_id: id })
                .await
                .map(|r| r.into_inner().status.unwrap_or_default())
        }));
        false
    }

    /// The output is complete; waits for the job's final status and turns it into our exit
    /// status.
    ///
    /// The output ends when the job's stdout and stderr close, which is normally a moment
    /// before the server has reaped the job, but can be much earlier (a command may close its
    /// output and carry on). Hence short, growing pauses between status checks.
    async fn finish(mut self, interrupts: &mut Signal) -> Result<ExitCode, Failure> {
        let mut pause = END_POLL_FIRST;
        loop {
            if let Some(stopping) = self.stopping.take() {
                return tokio::select! {
                    _ = interrupts.recv() => Ok(ExitCode::from(INTERRUPTED)),
                    stopped = stopping => match stopped {
                        Ok(Ok(_status)) => Ok(ExitCode::from(INTERRUPTED)),
                        Ok(Err(status)) => Err(self.connection.failure(&status)),
                        Err(join) => Err(Failure::new(format!("stopping the job failed: {join}"))),
                    },
                };
            }
            let status = get_status(self.connection, self.id.clone())
                .await
                .map_err(|s| self.connection.failure(&s))?;
            if let State::Ended { outcome, .. } = State::of(&status) {
                return Ok(ExitCode::from(outcome.exit_status()));
            }
            tokio::select! {
                _ = interrupts.recv() => {
                    if self.interrupt() {
                        return Ok(ExitCode::from(INTERRUPTED));
                    }
                }
                () = tokio::time::sleep(pause) => pause = (pause * 2).min(END_POLL_MAX),
            }
        }
    }
}

async fn start_job(connection: &Connection, args: StartArgs) -> Result<String, Failure> {
    let mut words = args.command.into_iter();
    // clap requires at least one word (`required = true`); an empty command is still sent
    // as-is and refused by the server, which explains why.
    let command = words.next().unwrap_or_default();
    let request = pb::StartRequest {
        command,
        args: words.collect(),
        env: args.env.into_iter().collect(),
        working_dir: args.workdir.unwrap_or_default(),
        limits: Some(limits(&args.limits)),
    };
    let response = connection
        .client
        .clone()
        .start(request)
        .await
        .map_err(|s| connection.failure(&s))?;
    Ok(response.into_inner().job_id)
}

fn limits(args: &LimitArgs) -> pb::Limits {
    pb::Limits {
        cpus: args.cpus,
        memory_bytes: args.memory,
        io_read_bps: args.io_read_bps,
        io_write_bps: args.io_write_bps,
        io_read_iops: args.io_read_iops,
        io_write_iops: args.io_write_iops,
        pids: args.pids,
    }
}

async fn stop_job(connection: &Connection, job_id: String) -> Result<pb::JobStatus, Status> {
    let response = connection
        .client
        .clone()
        .stop(pb::StopRequest { job_id })
        .await?;
    Ok(response.into_inner().status.unwrap_or_default())
}

async fn get_status(connection: &Connection, job_id: String) -> Result<pb::JobStatus, Status> {
    let response = connection
        .client
        .clone()
        .get_status(pb::GetStatusRequest { job_id })
        .await?;
    Ok(response.into_inner().status.unwrap_or_default())
}

/// Writes a command's answer to stdout. A closed stdout ends jobctl quietly, as it would end
/// any command in a pipeline.
fn print(
    write: impl FnOnce(&mut io::StdoutLock<'static>) -> io::Result<()>,
) -> Result<ExitCode, Failure> {
    let mut out = io::stdout().lock();
    match write(&mut out).and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::from(BROKEN_PIPE)),
        Err(e) => Err(error::write(&e)),
    }
}
