//! The client calls the figures make, each checked: a benchmark that counts wrong answers as
//! fast ones measures nothing.

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use jobworker_api::pb::{self, job_worker_client::JobWorkerClient};
use tonic::transport::Channel;

/// A connection to the daemon. Cloning it shares the connection (HTTP/2 multiplexes calls).
pub type Client = JobWorkerClient<Channel>;

/// How long a job the benchmark starts may take to end on its own.
const END_TIMEOUT: Duration = Duration::from_secs(300);

/// The largest page `List` serves.
const PAGE_SIZE: u32 = 1000;

/// The request for `argv` with `limits` (the server's defaults where `None`).
pub fn request(argv: &[&str], limits: Option<pb::Limits>) -> pb::StartRequest {
    pb::StartRequest {
        command: argv.first().copied().unwrap_or_default().to_owned(),
        args: argv.iter().skip(1).map(|&arg| arg.to_owned()).collect(),
        limits,
        ..pb::StartRequest::default()
    }
}

/// Starts a job and returns its id.
pub async fn start(client: &mut Client, request: pb::StartRequest) -> anyhow::Result<String> {
    let command = request.command.clone();
    let response = client
        .start(request)
        .await
        .with_context(|| format!("Start of {command} failed"))?;
    Ok(response.into_inner().job_id)
}

/// Waits (the Wait RPC) until the job has ended and returns its final status.
pub async fn wait(client: &mut Client, id: &str) -> anyhow::Result<pb::JobStatus> {
    let call = client.wait(pb::WaitRequest {
        job_id: id.to_owned(),
    });
    tokio::time::timeout(END_TIMEOUT, call)
        .await
        .with_context(|| format!("job {id} still running after {END_TIMEOUT:?}"))?
        .with_context(|| format!("Wait for job {id} failed"))?
        .into_inner()
        .status
        .with_context(|| format!("Wait for job {id} returned no status"))
}

/// Waits until the job has ended, checks that it exited 0, and returns its final status.
pub async fn wait_ended(client: &mut Client, id: &str) -> anyhow::Result<pb::JobStatus> {
    let status = wait(client, id).await?;
    check_exit_zero(&status)?;
    Ok(status)
}

/// Removes an ended job (its record and output).
pub async fn remove(client: &mut Client, id: &str) -> anyhow::Result<()> {
    client
        .remove(pb::RemoveRequest {
            job_id: id.to_owned(),
            force: false,
        })
        .await
        .with_context(|| format!("Remove of job {id} failed"))?;
    Ok(())
}

/// Every job the caller sees, page by page; also checks that the pages follow each other
/// without repeating a job.
pub async fn list_all(client: &mut Client) -> anyhow::Result<Vec<pb::JobStatus>> {
    let mut jobs: Vec<pb::JobStatus> = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list(pb::ListRequest {
                page_size: PAGE_SIZE,
                page_token: token,
                ..pb::ListRequest::default()
            })
            .await
            .context("List failed")?
            .into_inner();
        ensure!(
            page.jobs.len() <= PAGE_SIZE as usize,
            "List returned {} jobs for a page of {PAGE_SIZE}",
            page.jobs.len()
        );
        if let (Some(last), Some(first)) = (jobs.last(), page.jobs.first()) {
            ensure!(
                last.job_id != first.job_id,
                "List repeated job {} across pages",
                first.job_id
            );
        }
        let empty = page.jobs.is_empty();
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return Ok(jobs);
        }
        ensure!(!empty, "List returned an empty page with a next-page token");
        token = page.next_page_token;
    }
}

/// Fails unless the job exited 0.
pub fn check_exit_zero(status: &pb::JobStatus) -> anyhow::Result<()> {
    ensure!(
        status.state == pb::JobState::Exited as i32 && status.exit_code == Some(0),
        "job {} ({}) ended with state {} exit code {:?} signal {:?}, not exit 0{}",
        status.job_id,
        status.command,
        status.state,
        status.exit_code,
        status.signal,
        if status.note.is_empty() {
            String::new()
        } else {
            format!(" ({})", status.note)
        }
    );
    Ok(())
}

/// The CPU time the job's cgroup measured (its command and its init, which copies its output
/// into the log); zero until it has ended.
pub fn cpu_time(status: &pb::JobStatus) -> Duration {
    status.cpu_time.as_ref().map_or(Duration::ZERO, |d| {
        Duration::new(
            u64::try_from(d.seconds).unwrap_or(0),
            u32::try_from(d.nanos).unwrap_or(0),
        )
    })
}

/// Opens the job's output (both streams, from the first byte).
pub async fn open_output(
    client: &mut Client,
    id: &str,
) -> anyhow::Result<tonic::Streaming<pb::StreamOutputResponse>> {
    Ok(client
        .stream_output(pb::StreamOutputRequest {
            job_id: id.to_owned(),
            streams: Vec::new(),
            offset: 0,
        })
        .await
        .with_context(|| format!("StreamOutput of job {id} failed"))?
        .into_inner())
}

/// What a whole output stream carried.
#[derive(Debug, Clone)]
pub struct Output {
    /// Bytes of output (both streams).
    pub bytes: u64,
    /// The final status, from the stream's closing `OutputEnd` frame.
    pub end: pb::JobStatus,
}

/// Reads `stream` to its end and checks its framing: chunks at consecutive offsets, then one
/// `OutputEnd` frame (whose status must be final and count the same bytes), then nothing.
pub async fn count(
    stream: &mut tonic::Streaming<pb::StreamOutputResponse>,
    id: &str,
    mut bytes: u64,
) -> anyhow::Result<Output> {
    use pb::stream_output_response::Frame;
    let failed = || format!("the output stream of job {id} failed");
    loop {
        let Some(message) = stream.message().await.with_context(failed)? else {
            bail!(
                "the output stream of job {id} ended after {bytes} bytes without its OutputEnd frame"
            );
        };
        match message.frame {
            Some(Frame::Chunk(chunk)) => {
                ensure!(
                    chunk.offset == bytes,
                    "job {id}: a chunk at offset {} after {bytes} bytes",
                    chunk.offset
                );
                bytes += chunk.data.len() as u64;
            }
            Some(Frame::End(end)) => {
                let status = end
                    .status
                    .with_context(|| format!("job {id}: an OutputEnd frame without a status"))?;
                ensure!(
                    status.state != pb::JobState::Running as i32,
                    "job {id}: the OutputEnd frame says the job is still running"
                );
                let stored = status.output.as_ref().map_or(0, |o| o.bytes);
                ensure!(
                    stored == bytes,
                    "job {id}: the stream carried {bytes} bytes, its final status says {stored}"
                );
                if let Some(extra) = stream.message().await.with_context(failed)? {
                    bail!("job {id}: a message after the OutputEnd frame: {extra:?}");
                }
                return Ok(Output { bytes, end: status });
            }
            None => bail!("job {id}: a StreamOutput message without a frame"),
        }
    }
}

/// Reads the job's whole output and checks that it is `expected` bytes long.
pub async fn read_all(client: &mut Client, id: &str, expected: u64) -> anyhow::Result<Output> {
    let mut stream = open_output(client, id).await?;
    let output = count(&mut stream, id, 0).await?;
    ensure!(
        output.bytes == expected,
        "job {id}'s output was {} bytes, expected {expected}",
        output.bytes
    );
    Ok(output)
}

/// Stops a job and checks that it has ended.
pub async fn stop(client: &mut Client, id: &str) -> anyhow::Result<pb::JobStatus> {
    let status = client
        .stop(pb::StopRequest {
            job_id: id.to_owned(),
        })
        .await
        .with_context(|| format!("Stop of job {id} failed"))?
        .into_inner()
        .status
        .with_context(|| format!("Stop of job {id} returned no status"))?;
    ensure!(
        status.state != pb::JobState::Running as i32,
        "job {id} still running after Stop returned"
    );
    Ok(status)
}

/// A job that writes `bytes` zero bytes to stdout and exits 0, with `limits`.
pub fn zeros_limited(bytes: u64, limits: Option<pb::Limits>) -> pb::StartRequest {
    request(&["head", "-c", &bytes.to_string(), "/dev/zero"], limits)
}

/// A job that writes `bytes` zero bytes to stdout and exits 0, with the server's defaults.
pub fn zeros(bytes: u64) -> pb::StartRequest {
    zeros_limited(bytes, None)
}
