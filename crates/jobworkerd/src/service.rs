//! The gRPC handlers: authenticate the caller, authorize, call the worker, map the result.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::Stream;
use jobworker::{
    Chunk, CommandSpec, JobId, JobState, JobStatus, Limits, ListQuery, OutputReader, StreamFilter,
    Worker,
};
use jobworker_api::pb::{self, job_worker_server::JobWorker};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::authz::{self, Caller};

/// The service behind the API: a worker plus what the server needs to end streams cleanly.
pub struct JobService {
    worker: Arc<Worker>,
    /// Open output streams, so tests and shutdown can see that a gone client's stream ended.
    active_streams: Arc<AtomicUsize>,
    /// Flips to true when the server shuts down; every open stream then ends with UNAVAILABLE.
    shutdown: watch::Receiver<bool>,
}

impl JobService {
    /// A service over `worker`; `shutdown` turning true ends every output stream.
    pub fn new(worker: Arc<Worker>, shutdown: watch::Receiver<bool>) -> JobService {
        JobService {
            worker,
            active_streams: Arc::new(AtomicUsize::new(0)),
            shutdown,
        }
    }

    /// A counter of the output streams open right now.
    pub fn active_streams(&self) -> Arc<AtomicUsize> {
        self.active_streams.clone()
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
}

fn not_found(id: JobId) -> Status {
    Status::not_found(format!("job {id} not found"))
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
        let caller = authz::caller(&request)?;
        let req = request.into_inner();
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
        Ok(Response::new(pb::StartResponse {
            job_id: id.to_string(),
        }))
    }

    async fn stop(
        &self,
        request: Request<pb::StopRequest>,
    ) -> Result<Response<pb::StopResponse>, Status> {
        let caller = authz::caller(&request)?;
        let status = self.authorized(&caller, &request.get_ref().job_id)?;
        let status = self.worker.stop(status.id).await.map_err(to_status)?;
        tracing::info!(job = %status.id, user = %caller.user, "job stopped");
        Ok(Response::new(pb::StopResponse {
            status: Some(status_to_pb(&status)),
        }))
    }

    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let caller = authz::caller(&request)?;
        let status = self.authorized(&caller, &request.get_ref().job_id)?;
        Ok(Response::new(pb::GetStatusResponse {
            status: Some(status_to_pb(&status)),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let caller = authz::caller(&request)?;
        let owner = (!caller.is_admin()).then_some(caller.user.as_str());
        let query = ListQuery {
            owner: owner.map(str::to_owned),
            limit: usize::MAX,
            ..ListQuery::default()
        };
        let jobs = self
            .worker
            .list(&query)
            .jobs
            .iter()
            .map(status_to_pb)
            .collect();
        Ok(Response::new(pb::ListResponse { jobs }))
    }

    type StreamOutputStream = OutputStream;

    async fn stream_output(
        &self,
        request: Request<pb::StreamOutputRequest>,
    ) -> Result<Response<OutputStream>, Status> {
        let caller = authz::caller(&request)?;
        let req = request.into_inner();
        let status = self.authorized(&caller, &req.job_id)?;
        let filter = filter_from_pb(&req.streams)?;
        let reader = self
            .worker
            .output(status.id, filter, 0)
            .map_err(to_status)?;
        Ok(Response::new(output_stream(
            reader,
            self.shutdown.clone(),
            StreamGuard::new(self.active_streams.clone()),
        )))
    }
}

/// Counts an open stream for as long as it exists.
struct StreamGuard(Arc<AtomicUsize>);

impl StreamGuard {
    fn new(count: Arc<AtomicUsize>) -> StreamGuard {
        count.fetch_add(1, Ordering::SeqCst);
        StreamGuard(count)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The response stream of StreamOutput. No task is spawned: the stream is polled by the
/// connection that carries it, so when the client goes away the connection drops the stream,
/// and with it the reader and the guard. A slow client slows only its own stream: HTTP/2 flow
/// control stops polling it, and the reader holds one chunk.
fn output_stream(
    reader: OutputReader,
    shutdown: watch::Receiver<bool>,
    guard: StreamGuard,
) -> OutputStream {
    struct State {
        reader: OutputReader,
        shutdown: watch::Receiver<bool>,
        done: bool,
        _guard: StreamGuard,
    }
    let state = State {
        reader,
        shutdown,
        done: false,
        _guard: guard,
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
            next = s.reader.next() => match next {
                Ok(Some(chunk)) => Ok(chunk_to_pb(chunk)),
                Ok(None) => return None,
                Err(e) => Err(to_status(e.into())),
            },
        };
        s.done = item.is_err();
        Some((item, s))
    }))
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
