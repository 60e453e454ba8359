//! The API over a real mTLS connection: authorization, streaming, errors, shutdown.

mod common;

use std::time::Duration;

use common::{TestServer, eventually};
use jobworker_api::pb::{self, job_worker_client::JobWorkerClient};
use tonic::Code;
use tonic::transport::Channel;

fn start_req(command: &str, args: &[&str]) -> pb::StartRequest {
    pb::StartRequest {
        command: command.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    }
}

async fn start(client: &mut JobWorkerClient<Channel>, command: &str, args: &[&str]) -> String {
    client
        .start(start_req(command, args))
        .await
        .unwrap_or_else(|e| panic!("start {command}: {e}"))
        .into_inner()
        .job_id
}

async fn status(
    client: &mut JobWorkerClient<Channel>,
    id: &str,
) -> Result<pb::JobStatus, tonic::Status> {
    client
        .get_status(pb::GetStatusRequest { job_id: id.into() })
        .await
        .map(|r| r.into_inner().status.expect("status in response"))
}

/// Reads a whole output stream; returns the bytes and how the stream ended.
async fn read_stream(
    client: &mut JobWorkerClient<Channel>,
    id: &str,
) -> (Vec<u8>, Result<(), tonic::Status>) {
    let mut stream = match client
        .stream_output(pb::StreamOutputRequest {
            job_id: id.into(),
            streams: vec![],
            offset: 0,
        })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(e) => return (Vec::new(), Err(e)),
    };
    let mut all = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(msg)) => all.extend_from_slice(msg.data()),
            Ok(None) => return (all, Ok(())),
            Err(e) => return (all, Err(e)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_cannot_see_or_touch_each_others_jobs_but_admins_can() {
    let t = TestServer::start().await;
    let mut alice = t.client("alice").await;
    let mut bob = t.client("bob").await;
    let mut admin = t.client("admin").await;
    let id = start(&mut alice, "/bin/sleep", &["1000"]).await;

    let err = status(&mut bob, &id)
        .await
        .expect_err("bob reads alice's job");
    assert_eq!(err.code(), Code::NotFound);
    let unknown_id = uuid::Uuid::new_v4().to_string();
    let unknown = status(&mut bob, &unknown_id).await.expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(
        err.message().replace(&id, "ID"),
        unknown.message().replace(&unknown_id, "ID"),
        "another user's job must be indistinguishable from a missing one"
    );
    let err = bob
        .stop(pb::StopRequest { job_id: id.clone() })
        .await
        .expect_err("bob stops");
    assert_eq!(err.code(), Code::NotFound);
    let (_, ended) = read_stream(&mut bob, &id).await;
    assert_eq!(ended.expect_err("bob streams").code(), Code::NotFound);
    let bobs = bob
        .list(pb::ListRequest::default())
        .await
        .expect("list")
        .into_inner()
        .jobs;
    assert!(bobs.is_empty(), "bob sees {bobs:?}");

    let alices = alice
        .list(pb::ListRequest::default())
        .await
        .expect("list")
        .into_inner()
        .jobs;
    assert_eq!(alices.len(), 1);
    assert_eq!(alices[0].owner, "alice");

    let seen = status(&mut admin, &id).await.expect("admin reads");
    assert_eq!(seen.owner, "alice");
    let bob_job = start(&mut bob, "/bin/true", &[]).await;
    let all = admin
        .list(pb::ListRequest::default())
        .await
        .expect("list")
        .into_inner()
        .jobs;
    let owners: Vec<(&str, &str)> = all
        .iter()
        .map(|j| (j.job_id.as_str(), j.owner.as_str()))
        .collect();
    assert!(
        owners.contains(&(id.as_str(), "alice")) && owners.contains(&(bob_job.as_str(), "bob")),
        "{owners:?}"
    );
    let stopped = admin
        .stop(pb::StopRequest { job_id: id.clone() })
        .await
        .expect("admin stops")
        .into_inner()
        .status
        .expect("status");
    assert!(stopped.stop_requested);
    assert_eq!(stopped.state, pb::JobState::Signaled as i32);
    assert_eq!(stopped.signal, Some(libc::SIGTERM));
    let (_, ended) = read_stream(&mut admin, &id).await;
    ended.expect("admin streams");
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_invalid_argument_or_not_found_with_a_useful_message() {
    let t = TestServer::start().await;
    let mut alice = t.client("alice").await;

    let err = status(&mut alice, "not-a-uuid")
        .await
        .expect_err("malformed");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("not a job id"), "{}", err.message());

    let err = status(&mut alice, &uuid::Uuid::new_v4().to_string())
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);

    let err = alice
        .start(start_req("no-such-program-xyz", &[]))
        .await
        .expect_err("nonexistent");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("executable not found in PATH"),
        "{}",
        err.message()
    );

    let err = alice.start(start_req("", &[])).await.expect_err("empty");
    assert_eq!(err.code(), Code::InvalidArgument);

    let big = "x".repeat(600 * 1024);
    let err = alice
        .start(start_req("/bin/echo", &[&big, &big]))
        .await
        .expect_err("oversize");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());

    let mut limits = pb::Limits {
        cpus: Some(-1.0),
        ..Default::default()
    };
    let req = |limits: pb::Limits| pb::StartRequest {
        limits: Some(limits),
        ..start_req("/bin/true", &[])
    };
    let err = alice.start(req(limits)).await.expect_err("bad cpus");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("cpus"), "{}", err.message());
    limits.cpus = None;
    limits.memory_bytes = Some(0);
    let err = alice.start(req(limits)).await.expect_err("bad memory");
    assert_eq!(err.code(), Code::InvalidArgument);

    let err = alice
        .stream_output(pb::StreamOutputRequest {
            job_id: uuid::Uuid::new_v4().to_string(),
            streams: vec![7],
            offset: 0,
        })
        .await
        .expect_err("bad stream");
    assert!(matches!(err.code(), Code::NotFound | Code::InvalidArgument));

    // The server is still fine.
    let id = start(&mut alice, "/bin/true", &[]).await;
    status(&mut alice, &id)
        .await
        .expect("status after bad requests");
    let all = jobworker::ListQuery {
        limit: usize::MAX,
        ..jobworker::ListQuery::default()
    };
    assert!(
        t.worker.list(&all).jobs.len() == 1,
        "failed starts left jobs"
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_streaming_a_running_job_get_identical_bytes_from_byte_zero() {
    let t = TestServer::start().await;
    let mut alice = t.client("alice").await;
    let script = "i=0; while [ $i -lt 300 ]; do echo line $i; echo err $i >&2; i=$((i+1)); sleep 0.005; done";
    let id = start(&mut alice, "/bin/sh", &["-c", script]).await;
    let mut second = t.client("alice").await;
    let (a, b) = tokio::join!(read_stream(&mut alice, &id), read_stream(&mut second, &id));
    a.1.expect("first stream ends cleanly");
    b.1.expect("second stream ends cleanly");
    assert_eq!(a.0, b.0, "both readers got the same bytes");
    let text = String::from_utf8(a.0).expect("utf-8");
    assert!(
        text.starts_with("line 0\n"),
        "from the first byte: {:?}",
        &text[..20]
    );
    assert_eq!(text.lines().count(), 600);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_streams_of_one_job_all_get_everything() {
    let t = TestServer::start().await;
    let mut alice = t.client("alice").await;
    let id = start(
        &mut alice,
        "/bin/sh",
        &["-c", "seq 1 50000; sleep 0.5; seq 50001 100000"],
    )
    .await;
    let expected: String = (1..=100000).map(|i| format!("{i}\n")).collect();
    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..100 {
        // Share one connection: 100 HTTP/2 streams over it.
        let mut client = alice.clone();
        let id = id.clone();
        streams.spawn(async move { read_stream(&mut client, &id).await });
    }
    let mut n = 0;
    while let Some(done) = streams.join_next().await {
        let (bytes, ended) = done.expect("stream task");
        ended.expect("stream ends cleanly");
        assert!(
            bytes == expected.as_bytes(),
            "a stream got {} bytes, expected {}",
            bytes.len(),
            expected.len()
        );
        n += 1;
    }
    assert_eq!(n, 100);
    assert!(eventually(Duration::from_secs(1), || t.server.active_streams() == 0).await);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_mid_stream_ends_its_server_stream() {
    let t = TestServer::start().await;
    let mut alice = t.client("alice").await;
    // A silent job: the stream has nothing to send, so only the disconnect can end it.
    let id = start(
        &mut alice,
        "/bin/sh",
        &["-c", "echo first; exec sleep 1000"],
    )
    .await;
    let endpoint = t.endpoint();
    let config = t.pki.client_config("alice");
    let (got_first, first) = tokio::sync::oneshot::channel();
    let client_task = tokio::spawn(async move {
        // Its own connection, closed when this task is aborted: a killed client.
        let mut client = jobworker_api::connect(&endpoint, config)
            .await
            .expect("connect");
        let mut stream = client
            .stream_output(pb::StreamOutputRequest {
                job_id: id,
                streams: vec![],
                offset: 0,
            })
            .await
            .expect("stream")
            .into_inner();
        let msg = stream
            .message()
            .await
            .expect("message")
            .expect("first chunk");
        let _ = got_first.send(msg.data().to_vec());
        std::future::pending::<()>().await;
    });
    assert_eq!(&first.await.expect("first chunk arrives")[..], b"first\n");
    assert_eq!(t.server.active_streams(), 1);
    client_task.abort();
    let _ = client_task.await;
    assert!(
        eventually(Duration::from_secs(1), || t.server.active_streams() == 0).await,
        "the server's stream for a vanished client is still open after 1 s"
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_with_a_status_and_stops_jobs() {
    let t = TestServer::start().await;
    let mut alice = t.client("alice").await;
    let id = start(&mut alice, "/bin/sh", &["-c", "echo hi; exec sleep 1000"]).await;
    let mut stream = alice
        .stream_output(pb::StreamOutputRequest {
            job_id: id.clone(),
            streams: vec![],
            offset: 0,
        })
        .await
        .expect("stream")
        .into_inner();
    let first = stream.message().await.expect("message").expect("chunk");
    assert_eq!(first.data(), b"hi\n");
    let worker = t.worker.clone();
    let parents = worker.cgroup_parents();
    let started = std::time::Instant::now();
    let shutdown = tokio::spawn(t.server.shutdown());
    let end = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let status = end.expect_err("the stream ends with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("shutting down"),
        "{}",
        status.message()
    );
    shutdown.await.expect("shutdown task");
    assert!(
        started.elapsed() < Duration::from_secs(3 + 5),
        "shutdown took {:?}",
        started.elapsed()
    );
    let job = worker.status(id.parse().expect("id")).expect("job");
    assert!(job.stop_requested && job.ended_at.is_some(), "{job:?}");
    for dir in parents {
        assert!(!dir.exists(), "{} left after shutdown", dir.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_travels_in_messages_small_enough_not_to_pin_memory_in_idle_streams() {
    let t = TestServer::start().await;
    let mut alice = t.client("alice").await;
    let size = 1 << 20;
    let id = start(
        &mut alice,
        "/bin/sh",
        &["-c", &format!("head -c {size} /dev/urandom")],
    )
    .await;
    let mut stream = alice
        .stream_output(pb::StreamOutputRequest {
            job_id: id,
            streams: vec![],
            offset: 0,
        })
        .await
        .expect("stream")
        .into_inner();
    let (mut total, mut largest) = (0, 0);
    while let Some(message) = stream.message().await.expect("message") {
        total += message.data().len();
        largest = largest.max(message.data().len());
    }
    assert_eq!(total, size, "every byte arrives");
    assert!(
        largest <= jobworker_api::codec::MAX_OUTPUT_CHUNK,
        "a {largest}-byte message: the log's 64 KiB chunks must be split"
    );
    assert!(
        largest > jobworker_api::codec::MAX_OUTPUT_CHUNK / 2,
        "messages of at most {largest} bytes: chunks split more than needed"
    );
    t.finish().await;
}

/// What a whole output stream carried: each chunk's offset and bytes, and its last frame.
struct Streamed {
    chunks: Vec<(u64, Vec<u8>)>,
    end: Option<pb::OutputEnd>,
    error: Option<tonic::Status>,
}

impl Streamed {
    fn bytes(&self) -> Vec<u8> {
        self.chunks.iter().flat_map(|(_, d)| d.clone()).collect()
    }
}

async fn stream_from(
    client: &mut JobWorkerClient<Channel>,
    id: &str,
    offset: u64,
    streams: Vec<i32>,
) -> Result<Streamed, tonic::Status> {
    let mut stream = client
        .stream_output(pb::StreamOutputRequest {
            job_id: id.into(),
            streams,
            offset,
        })
        .await?
        .into_inner();
    let mut streamed = Streamed {
        chunks: Vec::new(),
        end: None,
        error: None,
    };
    loop {
        match stream.message().await {
            Ok(Some(message)) => {
                assert!(streamed.end.is_none(), "a frame after OutputEnd");
                match message.frame {
                    Some(pb::stream_output_response::Frame::Chunk(c)) => {
                        streamed.chunks.push((c.offset, c.data.to_vec()))
                    }
                    Some(pb::stream_output_response::Frame::End(end)) => streamed.end = Some(*end),
                    None => panic!("an empty frame"),
                }
            }
            Ok(None) => return Ok(streamed),
            Err(e) => {
                streamed.error = Some(e);
                return Ok(streamed);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_resume_at_any_offset_and_end_with_the_final_status() {
    let t = TestServer::start().await;
    let mut alice = t.client("alice").await;
    // Both streams interleaved, several chunks' worth.
    let script =
        "i=0; while [ $i -lt 3000 ]; do echo out $i; echo err $i >&2; i=$((i+1)); done; exit 7";
    let id = start(&mut alice, "/bin/sh", &["-c", script]).await;

    let whole = stream_from(&mut alice, &id, 0, vec![])
        .await
        .expect("stream");
    assert!(whole.error.is_none(), "{:?}", whole.error);
    let mut expected_offset = 0;
    for (offset, data) in &whole.chunks {
        assert_eq!(*offset, expected_offset, "chunks are contiguous");
        expected_offset += data.len() as u64;
    }
    let end = whole.end.clone().expect("the last frame is OutputEnd");
    assert!(!end.truncated);
    let status = end.status.expect("final status");
    assert_eq!(status.state, pb::JobState::Exited as i32);
    assert_eq!(status.exit_code, Some(7));
    assert_eq!(status.signal, None);
    let output = status.output.expect("output summary");
    assert_eq!(output.bytes, expected_offset, "{output:?}");
    assert_eq!(output.dropped_bytes, 0);
    let all = whole.bytes();
    let text = String::from_utf8(all.clone()).expect("text");
    assert!(text.contains("out 2999\n") && text.contains("err 2999\n"));

    // From any offset: exactly the rest, no gap, no duplicate.
    for from in [
        1,
        4095,
        4096,
        12 * 1024 + 3,
        all.len() as u64 - 1,
        all.len() as u64,
    ] {
        let rest = stream_from(&mut alice, &id, from, vec![])
            .await
            .expect("stream");
        assert!(rest.error.is_none(), "from {from}: {:?}", rest.error);
        assert_eq!(rest.bytes(), all[from as usize..], "from {from}");
        if let Some((first, _)) = rest.chunks.first() {
            assert_eq!(*first, from);
        }
        assert!(rest.end.is_some(), "from {from}: no OutputEnd");
    }
    let past = stream_from(&mut alice, &id, all.len() as u64 + 1, vec![])
        .await
        .map(|s| s.error)
        .unwrap_or_else(Some)
        .expect("an offset past the end is refused");
    assert_eq!(past.code(), Code::OutOfRange, "{past:?}");

    // One stream: its bytes, at their positions in the whole output.
    let stderr = stream_from(&mut alice, &id, 0, vec![pb::OutputStream::Stderr as i32])
        .await
        .expect("stream");
    for (offset, data) in &stderr.chunks {
        let at = *offset as usize;
        assert_eq!(
            &all[at..at + data.len()],
            &data[..],
            "stderr chunk at {offset}"
        );
    }
    let stderr_text = String::from_utf8(stderr.bytes()).expect("text");
    assert!(stderr_text.lines().all(|l| l.starts_with("err ")));
    assert_eq!(stderr_text.lines().count(), 3000);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_returns_the_final_status_once_the_job_ends() {
    let t = TestServer::start().await;
    let mut alice = t.client("alice").await;
    let mut bob = t.client("bob").await;
    // The job's own short sleep makes Wait actually wait; the test syncs on Wait alone.
    let id = start(&mut alice, "/bin/sh", &["-c", "sleep 0.3; exit 4"]).await;
    let err = bob
        .wait(pb::WaitRequest { job_id: id.clone() })
        .await
        .expect_err("bob waits for alice's job");
    assert_eq!(err.code(), Code::NotFound);

    let status = alice
        .wait(pb::WaitRequest { job_id: id.clone() })
        .await
        .expect("wait")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(status.state, pb::JobState::Exited as i32);
    assert_eq!(status.exit_code, Some(4));
    let started = status.started_at.expect("started_at");
    let ended = status.ended_at.expect("ended_at");
    assert!(
        (ended.seconds, ended.nanos) > (started.seconds, started.nanos),
        "{started:?} {ended:?}"
    );
    assert!(status.cpu_time.is_some(), "cpu_time once ended");
    // Waiting for an ended job answers at once.
    let again = alice
        .wait(pb::WaitRequest { job_id: id })
        .await
        .expect("wait again")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(again.exit_code, Some(4));
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_refuses_running_jobs_unless_forced_and_forgets_the_job() {
    let t = TestServer::start().await;
    let mut alice = t.client("alice").await;
    let mut bob = t.client("bob").await;
    let mut admin = t.client("admin").await;
    let running = start(&mut alice, "/bin/sleep", &["1000"]).await;
    let ended = start(&mut alice, "/bin/sh", &["-c", "echo bye"]).await;
    alice
        .wait(pb::WaitRequest {
            job_id: ended.clone(),
        })
        .await
        .expect("wait");

    let remove = |id: &str, force: bool| pb::RemoveRequest {
        job_id: id.to_owned(),
        force,
    };
    let err = alice
        .remove(remove(&running, false))
        .await
        .expect_err("a running job");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("--force"), "{}", err.message());
    let err = bob
        .remove(remove(&ended, true))
        .await
        .expect_err("bob removes alice's job");
    assert_eq!(err.code(), Code::NotFound);

    // A reader of the job being removed gets everything and a normal end.
    let mut reader = alice
        .stream_output(pb::StreamOutputRequest {
            job_id: running.clone(),
            streams: vec![],
            offset: 0,
        })
        .await
        .expect("stream")
        .into_inner();
    admin
        .remove(remove(&running, true))
        .await
        .expect("admin force-removes");
    let last = loop {
        match reader.message().await {
            Ok(Some(message)) if message.end().is_some() => break message,
            Ok(Some(_)) => continue,
            other => panic!("the reader of a removed job ended with {other:?}"),
        }
    };
    let last = last.end().and_then(|e| e.status.clone()).expect("status");
    assert!(last.stop_requested, "{last:?}");
    assert_eq!(last.state, pb::JobState::Signaled as i32);

    alice
        .remove(remove(&ended, false))
        .await
        .expect("remove an ended job");
    for id in [&running, &ended] {
        let err = status(&mut alice, id).await.expect_err("removed");
        assert_eq!(err.code(), Code::NotFound);
        let dir = t.state_dir.path().join("jobs").join(id);
        assert!(!dir.exists(), "{} left after removal", dir.display());
    }
    t.finish().await;
}

/// Every page of `request`, following the tokens.
async fn list_all(
    client: &mut JobWorkerClient<Channel>,
    mut request: pb::ListRequest,
) -> Result<(Vec<pb::JobStatus>, usize), tonic::Status> {
    let mut jobs = Vec::new();
    let mut pages = 0;
    loop {
        let page = client.list(request.clone()).await?.into_inner();
        pages += 1;
        assert!(
            request.page_size == 0 || page.jobs.len() <= request.page_size as usize,
            "a page larger than asked"
        );
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return Ok((jobs, pages));
        }
        request.page_token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_through_every_job_once_oldest_first_and_filters() {
    let t = TestServer::start().await;
    let mut alice = t.client("alice").await;
    let mut bob = t.client("bob").await;
    let mut admin = t.client("admin").await;
    let mut ended = Vec::new();
    for _ in 0..7 {
        let id = start(&mut alice, "/bin/true", &[]).await;
        alice
            .wait(pb::WaitRequest { job_id: id.clone() })
            .await
            .expect("wait");
        ended.push(id);
    }
    let running = start(&mut alice, "/bin/sleep", &["1000"]).await;
    let bobs = start(&mut bob, "/bin/sleep", &["1000"]).await;

    let (jobs, pages) = list_all(
        &mut alice,
        pb::ListRequest {
            page_size: 3,
            ..Default::default()
        },
    )
    .await
    .expect("list");
    let ids: Vec<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
    let mut expected: Vec<&str> = ended.iter().map(String::as_str).collect();
    expected.push(&running);
    assert_eq!(ids, expected, "every job once, oldest first");
    assert_eq!(pages, 3);

    let running_only = pb::ListRequest {
        states: vec![pb::JobState::Running as i32],
        ..Default::default()
    };
    let (jobs, _) = list_all(&mut alice, running_only.clone())
        .await
        .expect("list");
    let ids: Vec<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(ids, [running.as_str()]);
    let (jobs, _) = list_all(
        &mut alice,
        pb::ListRequest {
            states: vec![pb::JobState::Exited as i32],
            ..Default::default()
        },
    )
    .await
    .expect("list");
    assert_eq!(jobs.len(), 7);

    let (jobs, _) = list_all(
        &mut admin,
        pb::ListRequest {
            owner: "bob".into(),
            ..Default::default()
        },
    )
    .await
    .expect("admin lists bob's");
    let ids: Vec<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(ids, [bobs.as_str()]);

    let refused = |request: pb::ListRequest| {
        let mut client = alice.clone();
        async move { client.list(request).await.expect_err("refused").code() }
    };
    assert_eq!(
        refused(pb::ListRequest {
            owner: "bob".into(),
            ..Default::default()
        })
        .await,
        Code::PermissionDenied
    );
    assert_eq!(
        refused(pb::ListRequest {
            page_size: 1001,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument
    );
    assert_eq!(
        refused(pb::ListRequest {
            page_token: "forged".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument
    );
    assert_eq!(
        refused(pb::ListRequest {
            states: vec![42],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_rows_shorten_huge_command_lines_so_a_page_always_fits() {
    let t = TestServer::start().await;
    let mut bob = t.client("bob").await;
    let mut admin = t.client("admin").await;
    // Five jobs with nearly 1 MiB of arguments each: 5 MiB of command lines, more than a
    // message may carry (4 MiB).
    let arg = "a".repeat(100 * 1024);
    let args: Vec<&str> = std::iter::repeat_n(arg.as_str(), 9).collect();
    for _ in 0..5 {
        let mut request = start_req("/bin/true", &args);
        request.env.insert("BIG".into(), "e".repeat(64 * 1024));
        bob.start(request).await.expect("start");
    }
    for client in [&mut bob, &mut admin] {
        let (jobs, _) = list_all(client, pb::ListRequest::default())
            .await
            .expect("list");
        assert_eq!(jobs.len(), 5);
        for job in &jobs {
            assert!(job.command_shortened, "{}", job.job_id);
            assert!(job.env.is_empty());
            let size: usize = job.args.iter().map(String::len).sum();
            assert!(size <= 1024, "{size} bytes of arguments in a list row");
        }
        let whole = status(client, &jobs[0].job_id).await.expect("status");
        assert!(!whole.command_shortened);
        assert_eq!(whole.args.len(), 9);
        assert_eq!(whole.args[8], arg);
        assert_eq!(whole.env["BIG"].len(), 64 * 1024);
    }
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_cannot_open_more_than_128_streams_at_once() {
    let t = TestServer::start().await;
    let mut alice = t.client("alice").await;
    let id = start(&mut alice, "/bin/sleep", &["1000"]).await;

    // The attack: 300 streams on one connection that never read.
    let (opened_tx, mut opened) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let mut client = alice.clone();
        let id = id.clone();
        let opened_tx = opened_tx.clone();
        tasks.spawn(async move {
            let stream = client
                .stream_output(pb::StreamOutputRequest {
                    job_id: id,
                    streams: vec![],
                    offset: 0,
                })
                .await;
            let _ = opened_tx.send(());
            // Held open, never read.
            let _stream = stream;
            std::future::pending::<()>().await;
        });
    }
    let mut count = 0;
    while count < jobworkerd::MAX_CONCURRENT_STREAMS {
        tokio::time::timeout(Duration::from_secs(30), opened.recv())
            .await
            .expect("the first 128 streams open")
            .expect("sender alive");
        count += 1;
    }
    // The rest wait for the connection's stream slots; none of them reaches the server.
    let more = tokio::time::timeout(Duration::from_millis(500), opened.recv()).await;
    assert!(more.is_err(), "a 129th stream opened on one connection");
    assert_eq!(
        t.server.active_streams(),
        jobworkerd::MAX_CONCURRENT_STREAMS as usize
    );

    // Another connection is not held up by the first one's streams.
    let mut other = t.client("alice").await;
    let (_, ended) = tokio::time::timeout(Duration::from_secs(10), async {
        let id = start(&mut other, "/bin/true", &[]).await;
        read_stream(&mut other, &id).await
    })
    .await
    .expect("a second connection is served");
    ended.expect("its stream ends normally");
    tasks.abort_all();
    t.finish().await;
}
