//! The client calls the figures make, each checked: a benchmark that counts wrong answers as
//! fast ones measures nothing.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use jobworker_api::pb::{self, job_worker_client::JobWorkerClient};
use tonic::transport::Channel;

/// A connection to the daemon. Cloning it shares the connection (HTTP/2 multiplexes calls).
pub type Client = JobWorkerClient<Channel>;

/// How long a job the benchmark starts may take to end on its own.
const END_TIMEOUT: Duration = Duration::from_secs(120);

/// How often [`wait_ended`] asks: short against a job's life, long against a status call.
const POLL_INTERVAL: Duration = Duration::from_millis(2);

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

/// Waits until the job has ended and checks that it exited 0.
pub async fn wait_ended(client: &mut Client, id: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + END_TIMEOUT;
    loop {
        let status = status(client, id).await?;
        if status.state != pb::JobState::Running as i32 {
            return check_exit_zero(&status);
        }
        if Instant::now() >= deadline {
            bail!("job {id} still running after {END_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn status(client: &mut Client, id: &str) -> anyhow::Result<pb::JobStatus> {
    client
        .get_status(pb::GetStatusRequest {
            job_id: id.to_owned(),
        })
        .await
        .with_context(|| format!("GetStatus of job {id} failed"))?
        .into_inner()
        .status
        .with_context(|| format!("GetStatus of job {id} returned no status"))
}

fn check_exit_zero(status: &pb::JobStatus) -> anyhow::Result<()> {
    ensure!(
        status.state == pb::JobState::Exited as i32 && status.exit_code == Some(0),
        "job {} ({}) ended with state {} exit code {:?} signal {:?}, not exit 0",
        status.job_id,
        status.command,
        status.state,
        status.exit_code,
        status.signal
    );
    Ok(())
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

/// Reads `stream` to its end and returns how many bytes of output it carried.
pub async fn count(
    stream: &mut tonic::Streaming<pb::StreamOutputResponse>,
    id: &str,
) -> anyhow::Result<u64> {
    let mut bytes = 0;
    while let Some(message) = stream
        .message()
        .await
        .with_context(|| format!("the output stream of job {id} failed"))?
    {
        bytes += message.data().len() as u64;
    }
    Ok(bytes)
}

/// Reads the job's whole output and checks that it is `expected` bytes long.
pub async fn read_all(client: &mut Client, id: &str, expected: u64) -> anyhow::Result<u64> {
    let mut stream = open_output(client, id).await?;
    let bytes = count(&mut stream, id).await?;
    ensure!(
        bytes == expected,
        "job {id}'s output was {bytes} bytes, expected {expected}"
    );
    Ok(bytes)
}

/// Stops a job and checks that it has ended.
pub async fn stop(client: &mut Client, id: &str) -> anyhow::Result<()> {
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
    Ok(())
}

/// A job that writes `bytes` zero bytes to stdout and exits 0.
pub fn zeros(bytes: u64) -> pb::StartRequest {
    request(&["head", "-c", &bytes.to_string(), "/dev/zero"], None)
}
