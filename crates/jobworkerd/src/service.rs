//! The gRPC handlers: authenticate the caller, authorize, call the worker, map the result.
//!
//! Each handler records its outcome in the audit log ([`AuditLog::begin`] /
//! [`crate::audit::AuditEntry::finish`], before answering) and in the metrics.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures::Stream;
use jobworker::{
    Chunk, CommandSpec, JobId, JobState, JobStatus, Limits, ListQuery, OutputReader, StreamFilter,
    Worker,
};
use jobworker_api::codec::MAX_OUTPUT_CHUNK;
use jobworker_api::pb::{self, job_worker_server::JobWorker};
use tokio::sync::watch;
use tonic::{Code, Request, Response, Status};

use crate::audit::{AuditLog, Rpc};
use crate::authz::{self, Caller, Peer};
use crate::metrics::{Metrics, OpenGuard};

/// The service behind the API: a worker plus what the server needs to end streams cleanly,
/// count and audit.
pub struct JobService {
    worker: Arc<Worker>,
    /// Flips to true when the server shuts down; every open stream then ends with UNAVAILABLE.
    shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    audit: AuditLog,
}

impl JobService {
    /// A service over `worker`; `shutdown` turning true ends every output stream.
    pub fn new(
        worker: Arc<Worker>,
        shutdown: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
        audit: AuditLog,
    ) -> JobService {
        JobService {
            worker,
            shutdown,
            metrics,
            audit,
        }
    }

    /// The job, if it exists and the caller may act on it. Another user's job is NOT_FOUND,
    /// exactly like a missing one, so ids cannot be probed.
    fn authorized(&self, caller: &Caller, job_id: &str) -> Result<JobStatus, Status> {
        let id: JobId = job_id
            .parse()
            .map_err(|e: jobworker::ParseJobIdError| Status::invalid_argument(e.to_string()))?;
        match self.worker.status(id) {
            Ok(status) if authz::may_access(caller, &status.owner) => Ok(status),
            Ok(_) | Err(jobworker::Error::NotFound(_)) => Err(not_found(id)),
            Err(e) => Err(to_status(e)),
        }
    }

    /// StreamOutput without the bookkeeping: authenticate, authorize, open a reader.
    fn open_output(
        &self,
        peer: &Peer,
        req: &pb::StreamOutputRequest,
    ) -> Result<OutputReader, Status> {
        let caller = peer.caller()?;
        let status = self.authorized(caller, &req.job_id)?;
        let filter = filter_from_pb(&req.streams)?;
        self.worker.output(status.id, filter, 0).map_err(to_status)
    }

    /// Start without the bookkeeping: authenticate, run (the library validates).
    async fn start_job(&self, peer: &Peer, req: pb::StartRequest) -> Result<JobId, Status> {
        let caller = peer.caller()?;
        let mut env: Vec<(String, String)> = req.env.into_iter().collect();
        env.sort();
        let spec = CommandSpec {
            program: req.command,
            args: req.args,
            env,
            working_dir: (!req.working_dir.is_empty()).then(|| req.working_dir.into()),
        };
        let limits = req.limits.map(limits_from_pb).unwrap_or_default();
        let program = spec.program.clone();
        let id = self
            .worker
            .start(&caller.user, spec, limits)
            .await
            .map_err(to_status)?;
        tracing::info!(job = %id, user = %caller.user, %program, "job started");
        Ok(id)
    }
}

fn not_found(id: JobId) -> Status {
    Status::not_found(format!("job {id} not found"))
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

/// The one place where library errors become gRPC status codes.
pub fn to_status(err: jobworker::Error) -> Status {
    use jobworker::Error::*;
    match err {
        InvalidCommand(_) | InvalidLimit(_) | Spawn { .. } => {
            Status::invalid_argument(err.to_string())
        }
        NotFound(id) => not_found(id),
        JobRunning(_) => Status::failed_precondition(err.to_string()),
        Quota(_) => Status::resource_exhausted(err.to_string()),
        ShuttingDown => {
            Status::unavailable("the server is shutting down; retry against a running server")
        }
        Output(jobworker::OutputError::Incomplete(_)) => Status::data_loss(err.to_string()),
        Output(jobworker::OutputError::OffsetPastEnd { .. }) => {
            Status::out_of_range(err.to_string())
        }
        Config(_)
        | StateDirBusy { .. }
        | IdRangeBusy { .. }
        | Seccomp(_)
        | Cgroup(_)
        | Io { .. }
        | Output(_) => {
            tracing::error!("internal error: {err}");
            Status::internal(format!("the server failed: {err}"))
        }
    }
}

type OutputStream = Pin<Box<dyn Stream<Item = Result<pb::StreamOutputResponse, Status>> + Send>>;

#[tonic::async_trait]
impl JobWorker for JobService {
    async fn start(
        &self,
        request: Request<pb::StartRequest>,
    ) -> Result<Response<pb::StartResponse>, Status> {
        let received = Instant::now();
        let peer = authz::peer(&request)?;
        let mut audit = self.audit.begin(&peer, Rpc::Start, None);
        let result = self.start_job(&peer, request.into_inner()).await;
        self.metrics.record_start(received.elapsed(), &result);
        if let Ok(id) = &result {
            audit.set_job(id);
        }
        audit.finish(&result).await;
        Ok(Response::new(pb::StartResponse {
            job_id: result?.to_string(),
        }))
    }

    async fn stop(
        &self,
        request: Request<pb::StopRequest>,
    ) -> Result<Response<pb::StopResponse>, Status> {
        let peer = authz::peer(&request)?;
        let job_id = &request.get_ref().job_id;
        let audit = self.audit.begin(&peer, Rpc::Stop, Some(job_id));
        let result = async {
            let caller = peer.caller()?;
            let status = self.authorized(caller, job_id)?;
            let status = self.worker.stop(status.id).await.map_err(to_status)?;
            tracing::info!(job = %status.id, user = %caller.user, "job stopped");
            Ok(status)
        }
        .await;
        audit.finish(&result).await;
        Ok(Response::new(pb::StopResponse {
            status: Some(status_to_pb(&result?)),
        }))
    }

    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let peer = authz::peer(&request)?;
        let job_id = &request.get_ref().job_id;
        let audit = self.audit.begin(&peer, Rpc::GetStatus, Some(job_id));
        let result = peer
            .caller()
            .and_then(|caller| self.authorized(caller, job_id));
        audit.finish(&result).await;
        Ok(Response::new(pb::GetStatusResponse {
            status: Some(status_to_pb(&result?)),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let peer = authz::peer(&request)?;
        let audit = self.audit.begin(&peer, Rpc::List, None);
        let result = peer.caller().map(|caller| {
            let owner = (!caller.is_admin()).then_some(caller.user.as_str());
            let query = ListQuery {
                owner: owner.map(str::to_owned),
                limit: usize::MAX,
                ..ListQuery::default()
            };
            self.worker.list(&query).jobs
        });
        audit.finish(&result).await;
        let jobs = result?.iter().map(status_to_pb).collect();
        Ok(Response::new(pb::ListResponse { jobs }))
    }

    type StreamOutputStream = OutputStream;

    async fn stream_output(
        &self,
        request: Request<pb::StreamOutputRequest>,
    ) -> Result<Response<OutputStream>, Status> {
        let peer = authz::peer(&request)?;
        let req = request.get_ref();
        let audit = self
            .audit
            .begin(&peer, Rpc::StreamOutput, Some(&req.job_id));
        let result = self.open_output(&peer, req);
        audit.finish(&result).await;
        Ok(Response::new(output_stream(
            result?,
            self.shutdown.clone(),
            self.metrics.clone(),
        )))
    }
}

/// The response stream of StreamOutput. No task of ours: hyper polls the stream from the task it
/// runs for the request, so when the client resets the stream or its connection goes, hyper
/// drops the stream, and with it the reader and the open-stream count. A slow client slows only
/// its own stream: HTTP/2 flow control stops polling it, and the reader holds one chunk.
///
/// Each library chunk (up to 64 KiB) goes out as messages of at most [`MAX_OUTPUT_CHUNK`]
/// bytes, slices of it without a copy: see `jobworker_api::codec` for why.
fn output_stream(
    reader: OutputReader,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> OutputStream {
    struct State {
        reader: OutputReader,
        shutdown: watch::Receiver<bool>,
        /// What is left of the chunk being sent.
        rest: Option<Chunk>,
        done: bool,
        _open: OpenGuard,
        metrics: Arc<Metrics>,
    }
    let state = State {
        reader,
        shutdown,
        rest: None,
        done: false,
        _open: metrics.stream_opened(),
        metrics,
    };
    Box::pin(futures::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let item = tokio::select! {
            // Prefer the shutdown: a server going down must not keep streaming.
            biased;
            _ = s.shutdown.wait_for(|down| *down) => {
                Err(Status::unavailable("the server is shutting down and stops every job"))
            }
            next = next_message(&mut s.reader, &mut s.rest) => match next {
                Ok(Some(message)) => {
                    s.metrics.streamed(message.data.len());
                    Ok(message)
                }
                Ok(None) => return None,
                Err(e) => Err(to_status(e.into())),
            },
        };
        s.done = item.is_err();
        Some((item, s))
    }))
}

/// The next message: the next piece of `rest`, or of the reader's next chunk.
async fn next_message(
    reader: &mut OutputReader,
    rest: &mut Option<Chunk>,
) -> Result<Option<pb::StreamOutputResponse>, jobworker::OutputError> {
    let mut chunk = match rest.take() {
        Some(chunk) => chunk,
        None => match reader.next().await? {
            Some(chunk) => chunk,
            None => return Ok(None),
        },
    };
    if chunk.data.len() > MAX_OUTPUT_CHUNK {
        let piece = Chunk {
            stream: chunk.stream,
            offset: chunk.offset,
            data: chunk.data.split_to(MAX_OUTPUT_CHUNK),
        };
        chunk.offset += MAX_OUTPUT_CHUNK as u64;
        *rest = Some(chunk);
        chunk = piece;
    }
    Ok(Some(chunk_to_pb(chunk)))
}

fn chunk_to_pb(chunk: Chunk) -> pb::StreamOutputResponse {
    let stream = match chunk.stream {
        jobworker::Stream::Stdout => pb::OutputStream::Stdout,
        jobworker::Stream::Stderr => pb::OutputStream::Stderr,
    };
    pb::StreamOutputResponse {
        stream: stream as i32,
        data: chunk.data,
    }
}

fn filter_from_pb(streams: &[i32]) -> Result<StreamFilter, Status> {
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

/// Proto limits to library limits; validation happens in the library.
pub fn limits_from_pb(l: pb::Limits) -> Limits {
    Limits {
        cpus: l.cpus,
        memory_bytes: l.memory_bytes,
        io_read_bps: l.io_read_bps,
        io_write_bps: l.io_write_bps,
        io_read_iops: l.io_read_iops,
        io_write_iops: l.io_write_iops,
        pids: l.pids,
        output_bytes: None,
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
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn status_to_pb(s: &JobStatus) -> pb::JobStatus {
    let (state, exit_code, signal) = match s.state {
        JobState::Running => (pb::JobState::Running, None, None),
        JobState::Exited(code) => (pb::JobState::Exited, Some(code), None),
        JobState::Signaled(sig) => (pb::JobState::Signaled, None, Some(sig)),
        // The OOM killer ends processes with SIGKILL.
        JobState::OomKilled => (pb::JobState::OomKilled, None, Some(9)),
        JobState::Lost => (pb::JobState::Lost, None, None),
    };
    pb::JobStatus {
        job_id: s.id.to_string(),
        owner: s.owner.clone(),
        command: s.spec.program.clone(),
        args: s.spec.args.clone(),
        state: state as i32,
        exit_code,
        signal,
        stop_requested: s.stop_requested,
        started_at_unix_ms: unix_ms(s.started_at),
        ended_at_unix_ms: s.ended_at.map(unix_ms),
        cpu_time_usec: s
            .usage
            .map(|u| u64::try_from(u.cpu_time.as_micros()).unwrap_or(u64::MAX)),
        peak_memory_bytes: s.usage.and_then(|u| u.peak_memory_bytes),
        limits: Some(limits_to_pb(&s.limits)),
    }
}
