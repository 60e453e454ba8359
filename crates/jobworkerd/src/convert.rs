//! Every conversion between the API (`jobworker.v1`) and the library, and the one mapping of
//! library errors to gRPC status codes. The handlers in `service.rs` call these and nothing
//! else of the proto's shape.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jobworker::{
    Chunk, CommandSpec, Error, JobId, JobState, JobStatus, Limits, ListCursor, ListQuery,
    OutputError, Quota, StateKind, StreamFilter,
};
use jobworker_api::pb;
use tonic::{Code, Status};

use crate::authz::{self, Caller};

/// Jobs per List page when the request names no size.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The most jobs per List page. List rows are shortened (see `JobStatus.command_shortened`), so
/// a full page stays far below the 4 MiB message limit; the handler also stops a page early
/// should its encoded size still approach it.
pub const MAX_PAGE_SIZE: usize = 1000;

/// The command and limits of a Start request (the library validates them).
pub fn start_request(req: pb::StartRequest) -> (CommandSpec, Limits) {
    let mut env: Vec<(String, String)> = req.env.into_iter().collect();
    env.sort();
    let spec = CommandSpec {
        program: req.command,
        args: req.args,
        env,
        working_dir: (!req.working_dir.is_empty()).then(|| req.working_dir.into()),
    };
    (spec, req.limits.map(limits_from_pb).unwrap_or_default())
}

/// A job id from a request.
pub fn job_id(text: &str) -> Result<JobId, Status> {
    text.parse()
        .map_err(|e: jobworker::ParseJobIdError| Status::invalid_argument(e.to_string()))
}

/// The NOT_FOUND of a job the caller may not see, worded exactly as for a job that does not
/// exist: ids cannot be probed.
pub fn not_found(id: JobId) -> Status {
    Status::not_found(format!("job {id} not found"))
}

fn limits_from_pb(l: pb::Limits) -> Limits {
    Limits {
        cpus: l.cpus,
        memory_bytes: l.memory_bytes,
        io_read_bps: l.io_read_bps,
        io_write_bps: l.io_write_bps,
        io_read_iops: l.io_read_iops,
        io_write_iops: l.io_write_iops,
        pids: l.pids,
        output_bytes: l.output_bytes,
    }
}

fn limits_to_pb(l: &Limits) -> pb::Limits {
    pb::Limits {
        cpus: l.cpus,
        memory_bytes: l.memory_bytes,
        io_read_bps: l.io_read_bps,
        io_write_bps: l.io_write_bps,
        io_read_iops: l.io_read_iops,
        io_write_iops: l.io_write_iops,
        pids: l.pids,
        output_bytes: l.output_bytes,
    }
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: since.subsec_nanos() as i32,
    }
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

/// A job's status for the API.
pub fn status_to_pb(s: &JobStatus) -> pb::JobStatus {
    let (state, exit_code, signal) = match s.state {
        JobState::Running => (pb::JobState::Running, None, None),
        JobState::Exited(code) => (pb::JobState::Exited, Some(code), None),
        JobState::Signaled(sig) => (pb::JobState::Signaled, None, Some(sig)),
        // The OOM killer ends processes with SIGKILL (9 on every Linux architecture); the
        // proto documents it so.
        JobState::OomKilled => (pb::JobState::OomKilled, None, Some(9)),
        JobState::Lost => (pb::JobState::Lost, None, None),
    };
    pb::JobStatus {
        job_id: s.id.to_string(),
        owner: s.owner.clone(),
        command: s.spec.program.clone(),
        args: s.spec.args.clone(),
        command_shortened: s.spec_shortened,
        env: s.spec.env.iter().cloned().collect(),
        working_dir: s
            .spec
            .working_dir
            .as_ref()
            .map_or_else(|| "/".to_owned(), |d| d.to_string_lossy().into_owned()),
        limits: Some(limits_to_pb(&s.limits)),
        uid: s.uid,
        state: state as i32,
        exit_code,
        signal,
        stop_requested: s.stop_requested,
        started_at: Some(timestamp(s.started_at)),
        ended_at: s.ended_at.map(timestamp),
        cpu_time: s.usage.map(|u| duration(u.cpu_time)),
        peak_memory_bytes: s.usage.and_then(|u| u.peak_memory_bytes),
        output: s.output.map(|o| pb::OutputSummary {
            bytes: o.bytes,
            dropped_bytes: o.dropped_bytes,
            lost_bytes: o.lost_bytes,
        }),
        note: s.note.clone().unwrap_or_default(),
    }
}

/// What a List request by `caller` asks for: every field checked, the owner filter against
/// who may see whose jobs.
pub fn list_query(caller: &Caller, req: &pb::ListRequest) -> Result<ListQuery, Status> {
    Ok(ListQuery {
        owner: authz::list_owner(caller, &req.owner)?,
        states: states(&req.states)?,
        after: page_token(&req.page_token)?,
        limit: page_size(req.page_size)?,
    })
}

/// The states a List request filters on.
pub fn states(states: &[i32]) -> Result<Vec<StateKind>, Status> {
    states
        .iter()
        .map(|&s| match pb::JobState::try_from(s) {
            Ok(pb::JobState::Running) => Ok(StateKind::Running),
            Ok(pb::JobState::Exited) => Ok(StateKind::Exited),
            Ok(pb::JobState::Signaled) => Ok(StateKind::Signaled),
            Ok(pb::JobState::OomKilled) => Ok(StateKind::OomKilled),
            Ok(pb::JobState::Lost) => Ok(StateKind::Lost),
            Ok(pb::JobState::Unspecified) | Err(_) => Err(Status::invalid_argument(format!(
                "unknown job state {s} in the list filter"
            ))),
        })
        .collect()
}

/// A List request's page size.
pub fn page_size(size: u32) -> Result<usize, Status> {
    match size as usize {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n <= MAX_PAGE_SIZE => Ok(n),
        n => Err(Status::invalid_argument(format!(
            "page_size {n} is above the maximum of {MAX_PAGE_SIZE}"
        ))),
    }
}

/// Where a List page starts.
pub fn page_token(token: &str) -> Result<Option<ListCursor>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .parse()
        .map(Some)
        .map_err(|e: jobworker::ParseCursorError| Status::invalid_argument(e.to_string()))
}

/// Which streams a StreamOutput request wants.
pub fn stream_filter(streams: &[i32]) -> Result<StreamFilter, Status> {
    let mut stdout = false;
    let mut stderr = false;
    for &s in streams {
        match pb::OutputStream::try_from(s) {
            Ok(pb::OutputStream::Stdout) => stdout = true,
            Ok(pb::OutputStream::Stderr) => stderr = true,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "unknown output stream {s}"
                )));
            }
        }
    }
    Ok(match (stdout, stderr) {
        (true, false) => StreamFilter::Stdout,
        (false, true) => StreamFilter::Stderr,
        _ => StreamFilter::Both,
    })
}

/// An output chunk as a stream message.
pub fn chunk_to_pb(chunk: Chunk) -> pb::StreamOutputResponse {
    let stream = match chunk.stream {
        jobworker::Stream::Stdout => pb::OutputStream::Stdout,
        jobworker::Stream::Stderr => pb::OutputStream::Stderr,
    };
    pb::StreamOutputResponse {
        frame: Some(pb::stream_output_response::Frame::Chunk(pb::OutputChunk {
            stream: stream as i32,
            offset: chunk.offset,
            data: chunk.data,
        })),
    }
}

/// The last message of an output stream: the job's final status.
pub fn end_to_pb(status: &JobStatus) -> pb::StreamOutputResponse {
    let truncated = status.output.is_some_and(|o| o.dropped_bytes > 0);
    pb::StreamOutputResponse {
        frame: Some(pb::stream_output_response::Frame::End(Box::new(
            pb::OutputEnd {
                status: Some(status_to_pb(status)),
                truncated,
            },
        ))),
    }
}

/// The one place where library errors become gRPC status codes, with messages that say what
/// to do (quota messages name the daemon's flag and the client's way out).
pub fn to_status(err: Error) -> Status {
    use jobworker::Error::*;
    match err {
        InvalidCommand(_) | InvalidLimit(_) | Spawn { .. } => {
            Status::invalid_argument(err.to_string())
        }
        NotFound(id) => not_found(id),
        JobRunning(id) => Status::failed_precondition(format!(
            "job {id} is still running: stop it first, or remove it with force \
             (jobctl rm --force)"
        )),
        Quota(quota) => Status::resource_exhausted(quota_message(quota)),
        ShuttingDown => {
            Status::unavailable("the server is shutting down; retry against a running server")
        }
        Output(OutputError::Incomplete(_) | OutputError::Corrupt { .. }) => {
            Status::data_loss(err.to_string())
        }
        Output(OutputError::OffsetPastEnd { .. }) => Status::out_of_range(err.to_string()),
        Output(OutputError::Closed) => Status::unavailable(err.to_string()),
        Config(_)
        | StateDirBusy { .. }
        | IdRangeBusy { .. }
        | Seccomp(_)
        | Cgroup(_)
        | Io { .. }
        | Output(OutputError::Read { .. }) => {
            // The cause names host paths and kernel errors: for the operator's log, not for
            // the client, who gets a reference to it.
            let incident = uuid::Uuid::new_v4().simple().to_string();
            let incident = incident.get(..12).unwrap_or_default();
            tracing::error!(incident, "internal error: {err}");
            Status::internal(format!(
                "the server failed (incident {incident}); its operator finds the cause in the \
                 server's log"
            ))
        }
    }
}

fn quota_message(quota: Quota) -> String {
    match quota {
        Quota::RunningPerUser { limit } => format!(
            "you have {limit} running jobs, the most this server allows per user \
             (--max-running-per-user); wait for one to end, or stop one (jobctl stop ID)"
        ),
        Quota::JobsPerUser { limit } => format!(
            "you have {limit} jobs, running or ended, the most this server keeps per user \
             (--max-jobs-per-user); remove ended ones with `jobctl rm ID...`"
        ),
        Quota::NodeJobs { limit } => format!(
            "this server holds {limit} jobs, its maximum (--max-jobs); ended jobs are removed \
             by their owners (jobctl rm) or after --retain-finished"
        ),
        Quota::OutputBudget { budget } => format!(
            "this server's output storage ({budget} bytes, --max-total-output) is taken by \
             running jobs' output limits and kept output; remove your ended jobs \
             (jobctl rm), or ask for a smaller output limit (--max-output)"
        ),
        Quota::JobIds { limit } => format!(
            "all {limit} user ids this server runs jobs as (--job-ids) are taken by running \
             jobs; retry when some have ended"
        ),
    }
}

/// A gRPC code in snake case, as metrics labels and the audit log name it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_tell_the_client_no_host_detail() {
        let err = Error::Io {
            context: "cannot create /var/lib/jobworker/jobs/x".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        let status = to_status(err);
        assert_eq!(status.code(), Code::Internal);
        assert!(
            status.message().contains("incident"),
            "{}",
            status.message()
        );
        assert!(
            !status.message().contains("/var/lib"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(page_size(0).ok(), Some(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(1000).ok(), Some(1000));
        assert_eq!(
            page_size(1001).map_err(|s| s.code()),
            Err(Code::InvalidArgument)
        );
    }

    #[test]
    fn a_forged_page_token_is_an_invalid_argument() {
        for token in [
            "x",
            "12.not-a-uuid",
            "-1.67e55044-10b1-426f-9247-bb680e5fe0c8",
        ] {
            assert_eq!(
                page_token(token).map_err(|s| s.code()),
                Err(Code::InvalidArgument),
                "{token}"
            );
        }
    }

    #[test]
    fn timestamps_keep_nanoseconds() {
        let t = UNIX_EPOCH + Duration::new(1_764_500_000, 123_456_789);
        assert_eq!(
            timestamp(t),
            prost_types::Timestamp {
                seconds: 1_764_500_000,
                nanos: 123_456_789
            }
        );
    }
}
