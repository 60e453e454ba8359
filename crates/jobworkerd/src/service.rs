//! The gRPC handlers: who is calling, may they, what the worker says — and the record of it.
//!
//! Each handler records its outcome in the audit log ([`AuditLog::begin`] /
//! [`crate::audit::AuditEntry::finish`], before answering) and in the metrics. Conversions to
//! and from the proto live in [`crate::convert`], the policy in [`crate::authz`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use jobworker::{Chunk, JobId, JobOutput, OutputReader, Worker};
use jobworker_api::codec::MAX_OUTPUT_CHUNK;
use jobworker_api::pb::{self, job_worker_server::JobWorker};
use prost::Message;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::audit::{AuditLog, Rpc};
use crate::authz::{self, Caller, Peer};
use crate::convert::{self, to_status};
use crate::metrics::{Metrics, OpenGuard};

/// The most bytes of job statuses one List page carries; a page is cut short (with a token for
/// the rest) before it would grow past this, whatever its rows hold: well under the 4 MiB that
/// gRPC clients accept by default.
const PAGE_BYTES: usize = 2 << 20;

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
    fn authorized(&self, caller: &Caller, job_id: &str) -> Result<JobId, Status> {
        let id = convert::job_id(job_id)?;
        match self.worker.status(id) {
            Ok(status) if authz::may_access(caller, &status.owner) => Ok(id),
            Ok(_) | Err(jobworker::Error::NotFound(_)) => Err(convert::not_found(id)),
            Err(e) => Err(to_status(e)),
        }
    }

    /// The job named by `job_id`, once `peer` is known and allowed.
    fn job_for(&self, peer: &Peer, job_id: &str) -> Result<(JobId, Caller), Status> {
        let caller = peer.caller()?;
        Ok((self.authorized(caller, job_id)?, caller.clone()))
    }

    async fn start_job(&self, peer: &Peer, req: pb::StartRequest) -> Result<JobId, Status> {
        let caller = peer.caller()?;
        let (spec, limits) = convert::start_request(req);
        let program = spec.program.clone();
        let id = self
            .worker
            .start(&caller.user, spec, limits)
            .await
            .map_err(to_status)?;
        tracing::info!(job = %id, user = %caller.user, %program, "job started");
        Ok(id)
    }

    fn list_jobs(&self, peer: &Peer, req: &pb::ListRequest) -> Result<pb::ListResponse, Status> {
        let query = convert::list_query(peer.caller()?, req)?;
        let page = self.worker.list(&query);
        let mut jobs = Vec::with_capacity(page.jobs.len());
        let mut bytes = 0;
        let mut next = page.next;
        for status in &page.jobs {
            let job = convert::status_to_pb(status);
            bytes += job.encoded_len();
            if bytes > PAGE_BYTES && !jobs.is_empty() {
                // The rest of the page goes on the next one.
                next = page
                    .jobs
                    .get(jobs.len() - 1)
                    .map(jobworker::ListCursor::after);
                break;
            }
            jobs.push(job);
        }
        Ok(pb::ListResponse {
            jobs,
            next_page_token: next.map(|c| c.to_string()).unwrap_or_default(),
        })
    }

    fn open_output(&self, peer: &Peer, req: &pb::StreamOutputRequest) -> Result<JobOutput, Status> {
        let (id, _) = self.job_for(peer, &req.job_id)?;
        let filter = convert::stream_filter(&req.streams)?;
        self.worker
            .follow(id, filter, req.offset)
            .map_err(to_status)
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
            let (id, caller) = self.job_for(&peer, job_id)?;
            let status = self.worker.stop(id).await.map_err(to_status)?;
            tracing::info!(job = %id, user = %caller.user, "job stopped");
            Ok(status)
        }
        .await;
        audit.finish(&result).await;
        Ok(Response::new(pb::StopResponse {
            status: Some(convert::status_to_pb(&result?)),
        }))
    }

    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let peer = authz::peer(&request)?;
        let job_id = &request.get_ref().job_id;
        let audit = self.audit.begin(&peer, Rpc::GetStatus, Some(job_id));
        let result = async {
            let (id, _) = self.job_for(&peer, job_id)?;
            self.worker.details(id).await.map_err(to_status)
        }
        .await;
        audit.finish(&result).await;
        Ok(Response::new(pb::GetStatusResponse {
            status: Some(convert::status_to_pb(&result?)),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let peer = authz::peer(&request)?;
        let audit = self.audit.begin(&peer, Rpc::List, None);
        let result = self.list_jobs(&peer, request.get_ref());
        audit.finish(&result).await;
        Ok(Response::new(result?))
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

    async fn wait(
        &self,
        request: Request<pb::WaitRequest>,
    ) -> Result<Response<pb::WaitResponse>, Status> {
        let peer = authz::peer(&request)?;
        let job_id = &request.get_ref().job_id;
        let audit = self.audit.begin(&peer, Rpc::Wait, Some(job_id));
        let authorized = self.job_for(&peer, job_id);
        // Only a refusal is audited for reads; the wait itself may last long.
        audit.finish(&authorized).await;
        let (id, _) = authorized?;
        let mut shutdown = self.shutdown.clone();
        let status = tokio::select! {
            status = self.worker.wait(id) => status.map_err(to_status)?,
            _ = shutdown.wait_for(|down| *down) => {
                return Err(Status::unavailable("the server is shutting down; wait again against a running server"));
            }
        };
        Ok(Response::new(pb::WaitResponse {
            status: Some(convert::status_to_pb(&status)),
        }))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        let peer = authz::peer(&request)?;
        let req = request.get_ref();
        let audit = self.audit.begin(&peer, Rpc::Remove, Some(&req.job_id));
        let result = async {
            let (id, caller) = self.job_for(&peer, &req.job_id)?;
            self.worker.remove(id, req.force).await.map_err(to_status)?;
            tracing::info!(job = %id, user = %caller.user, force = req.force, "job removed");
            Ok(())
        }
        .await;
        audit.finish(&result).await;
        result?;
        Ok(Response::new(pb::RemoveResponse {}))
    }
}

/// The response stream of StreamOutput. No task of ours: hyper polls the stream from the task it
/// runs for the request, so when the client resets the stream or its connection goes, hyper
/// drops the stream, and with it the reader and the open-stream count. A slow client slows only
/// its own stream: HTTP/2 flow control stops polling it, and the reader holds one chunk.
///
/// Each library chunk (up to 64 KiB) goes out as messages of at most [`MAX_OUTPUT_CHUNK`]
/// bytes, slices of it without a copy: see `jobworker_api::codec` for why. After the last byte
/// comes one [`pb::OutputEnd`] with the job's final status, then the stream ends.
fn output_stream(
    output: JobOutput,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> OutputStream {
    struct State {
        output: JobOutput,
        shutdown: watch::Receiver<bool>,
        /// What is left of the chunk being sent.
        rest: Option<Chunk>,
        /// Set once the end (or an error) was sent.
        done: bool,
        _open: OpenGuard,
        metrics: Arc<Metrics>,
    }
    let state = State {
        output,
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
            next = next_message(&mut s.output.reader, &mut s.rest) => match next {
                Ok(Some((message, bytes))) => {
                    s.metrics.streamed(bytes);
                    Ok(message)
                }
                Ok(None) => {
                    // The reader ends only once the job's end is published: this is final,
                    // and at hand even if the job was removed meanwhile.
                    s.done = true;
                    Ok(convert::end_to_pb(&s.output.status()))
                }
                Err(e) => Err(to_status(e.into())),
            },
        };
        s.done |= item.is_err();
        Some((item, s))
    }))
}

/// The next message and its output bytes: the next piece of `rest`, or of the reader's next
/// chunk. `None` at the end of the output.
async fn next_message(
    reader: &mut OutputReader,
    rest: &mut Option<Chunk>,
) -> Result<Option<(pb::StreamOutputResponse, usize)>, jobworker::OutputError> {
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
    let bytes = chunk.data.len();
    Ok(Some((convert::chunk_to_pb(chunk), bytes)))
}
