//! What each subcommand does: the calls it makes and the exit status it ends with.

use std::io::{self, Write};
use std::process::ExitCode;

use jobworker_api::pb;
use tokio::task::JoinHandle;
use tonic::Status;

use crate::cli::{JobCommand, LimitArgs, LogsArgs, OutputFormat, RunArgs, StartArgs, StateFilter};
use crate::connection::{Connection, Reconnect};
use crate::error::{self, Failure};
use crate::output;
use crate::settings::Settings;
use crate::status::State;
use crate::stream::{self, Ending, Follower, Sink};

/// Exit status after Ctrl-C: 128 + SIGINT, what a shell reports for an interrupted command.
const INTERRUPTED: u8 = 130;

/// Exit status when our output was closed: 128 + SIGPIPE, what a shell reports for a command
/// killed writing into a closed pipe. Rust ignores SIGPIPE, so we end ourselves, quietly.
const BROKEN_PIPE: u8 = 141;

/// Jobs asked for per `List` page: the most the server allows, fewest round trips.
const LIST_PAGE: u32 = 1000;

/// Connects and runs the subcommand.
pub async fn execute(settings: &Settings, command: JobCommand) -> Result<ExitCode, Failure> {
    let connection = Connection::open(settings).await?;
    match command {
        JobCommand::Start(args) => start(&connection, args).await,
        JobCommand::Stop { job_id, output } => stop(&connection, job_id, output).await,
        JobCommand::Status { job_id, output } => status(&connection, job_id, output).await,
        JobCommand::List {
            state,
            owner,
            output,
        } => list(&connection, &state, owner, output).await,
        JobCommand::Wait { job_id, output } => wait(&connection, job_id, output).await,
        JobCommand::Rm { job_ids, force } => remove(&connection, job_ids, force).await,
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
    let response = connection
        .client
        .clone()
        .get_status(pb::GetStatusRequest { job_id })
        .await
        .map_err(|s| connection.failure(&s))?;
    let status = response.into_inner().status.unwrap_or_default();
    print(|out| output::print_status(out, &status, format))
}

/// Every page of the list, printed at once: the table's columns are as wide as their widest
/// row. The server's quotas bound how many jobs there are.
async fn list(
    connection: &Connection,
    states: &[StateFilter],
    owner: Option<String>,
    format: OutputFormat,
) -> Result<ExitCode, Failure> {
    let mut request = pb::ListRequest {
        page_size: LIST_PAGE,
        page_token: String::new(),
        states: states.iter().map(|s| job_state(*s) as i32).collect(),
        owner: owner.unwrap_or_default(),
    };
    let mut jobs = Vec::new();
    loop {
        let page = connection
            .client
            .clone()
            .list(request.clone())
            .await
            .map_err(|s| connection.failure(&s))?
            .into_inner();
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    print(|out| output::print_list(out, &jobs, format))
}

fn job_state(filter: StateFilter) -> pb::JobState {
    match filter {
        StateFilter::Running => pb::JobState::Running,
        StateFilter::Exited => pb::JobState::Exited,
        StateFilter::Signaled => pb::JobState::Signaled,
        StateFilter::OomKilled => pb::JobState::OomKilled,
        StateFilter::Lost => pb::JobState::Lost,
    }
}

/// Waits for the job's end, across server restarts, and exits with its status.
async fn wait(
    connection: &Connection,
    job_id: String,
    format: OutputFormat,
) -> Result<ExitCode, Failure> {
    let mut interrupts = stream::interrupts()?;
    let mut reconnect = Reconnect::new();
    let status = loop {
        let mut client = connection.client.clone();
        let call = client.wait(pb::WaitRequest {
            job_id: job_id.clone(),
        });
        let failed = tokio::select! {
            _ = interrupts.recv() => return Ok(ExitCode::from(INTERRUPTED)),
            answer = call => match answer {
                Ok(response) => break response.into_inner().status.unwrap_or_default(),
                Err(status) => status,
            },
        };
        let pause = reconnect.failed(&failed, connection)?;
        tokio::select! {
            _ = interrupts.recv() => return Ok(ExitCode::from(INTERRUPTED)),
            () = tokio::time::sleep(pause) => {}
        }
    };
    reconnect.succeeded(None);
    let printed = print(|out| output::print_status(out, &status, format))?;
    if printed != ExitCode::SUCCESS {
        return Ok(printed);
    }
    Ok(exit_status(&status))
}

/// Removes each job, like `docker rm`: every id removed is printed, every failure reported,
/// and the exit status is 1 if any failed.
async fn remove(
    connection: &Connection,
    job_ids: Vec<String>,
    force: bool,
) -> Result<ExitCode, Failure> {
    let mut failed = false;
    for job_id in job_ids {
        let request = pb::RemoveRequest {
            job_id: job_id.clone(),
            force,
        };
        match connection.client.clone().remove(request).await {
            Ok(_) => {
                if print(|out| writeln!(out, "{job_id}"))? != ExitCode::SUCCESS {
                    return Ok(ExitCode::from(BROKEN_PIPE));
                }
            }
            Err(status) => {
                failed = true;
                let mut failure = connection.failure(&status);
                if status.code() == tonic::Code::FailedPrecondition {
                    failure = failure.hint("stop it first, or remove it with --force");
                }
                // Not eprintln!, which panics when stderr is a closed pipe.
                let _ = writeln!(io::stderr(), "{failure}");
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
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
    let mut follower = Follower::new(args.job_id, streams);
    follower
        .open(connection)
        .await
        .map_err(|s| connection.failure(&s))?;
    let mut sink = Sink::new()?;
    let ending = follower
        .follow(&mut sink, &mut interrupts, connection)
        .await?;
    Ok(match ending {
        Ending::Complete(status) => {
            note_dropped(&status);
            ExitCode::SUCCESS
        }
        Ending::Interrupted => ExitCode::from(INTERRUPTED),
        Ending::BrokenPipe => ExitCode::from(BROKEN_PIPE),
    })
}

/// Start, follow, and exit with the job's status, which the end of the output carries.
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
    let mut follower = Follower::new(id.clone(), Vec::new());
    if let Err(status) = follower.open(connection).await {
        // Nobody would see this job's output or status: do not leave it running.
        let _ = stop_job(connection, id).await;
        return Err(connection.failure(&status));
    }
    let mut stopping: Option<JoinHandle<()>> = None;
    let mut sink = Sink::new()?;
    loop {
        match follower
            .follow(&mut sink, &mut interrupts, connection)
            .await?
        {
            Ending::Complete(status) => {
                note_dropped(&status);
                return Ok(if stopping.is_some() {
                    ExitCode::from(INTERRUPTED)
                } else {
                    exit_status(&status)
                });
            }
            Ending::Interrupted => {
                if stopping.is_some() {
                    // The second Ctrl-C: stop waiting; the server finishes stopping the job.
                    return Ok(ExitCode::from(INTERRUPTED));
                }
                let _ = writeln!(
                    io::stderr(),
                    "jobctl: stopping job {id} (press Ctrl-C again to stop waiting)"
                );
                // The Stop call runs while we keep showing output; the end of the output
                // tells us the job has ended. Its error, if any, is moot: the job's end
                // (or the second Ctrl-C) is what we wait for.
                let mut client = connection.client.clone();
                let job_id = id.clone();
                stopping = Some(tokio::spawn(async move {
                    let _ = client.stop(pb::StopRequest { job_id }).await;
                }));
            }
            Ending::BrokenPipe => {
                // Like a local pipeline, `jobctl run -- yes | head` must not leave `yes`
                // running. Errors are moot: nobody reads our output anymore.
                let _ = stop_job(connection, id).await;
                return Ok(ExitCode::from(BROKEN_PIPE));
            }
        }
    }
}

/// Tells on stderr, after the output, that the job wrote more than it was allowed to keep:
/// otherwise the output would look complete.
fn note_dropped(status: &pb::JobStatus) {
    let dropped = status.output.as_ref().map_or(0, |o| o.dropped_bytes);
    if dropped > 0 {
        let _ = writeln!(
            io::stderr(),
            "jobctl: the job's output was cut at its limit: {dropped} more bytes were dropped \
             (see --max-output)"
        );
    }
}

/// The exit status a shell would give a local process that ended as the job did.
fn exit_status(status: &pb::JobStatus) -> ExitCode {
    match State::of(status) {
        State::Ended { outcome, .. } => ExitCode::from(outcome.exit_status()),
        // A final status always says how the job ended; anything else is not a success.
        State::Running | State::Stopping | State::Unknown(_) => ExitCode::FAILURE,
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
        output_bytes: args.max_output,
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
