//! The real `jobworkerd` binary: the dev PKI command and an orderly shutdown on SIGTERM.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::JOBWORKERD;
use jobworker_api::pb;
use jobworker_api::pb::job_worker_client::JobWorkerClient;
use jobworker_testkit::{Daemon, Pki, eventually};
use tonic::Code;
use tonic::transport::Channel;

#[test]
fn certs_init_writes_private_keys_0600_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    let run = |extra: &[&str]| {
        Command::new(JOBWORKERD)
            .args(["certs", "init", "--dir"])
            .arg(&pki)
            .args(["--user", "alice", "--admin", "root"])
            .args(extra)
            .output()
            .expect("run jobworkerd certs init")
    };
    let first = run(&[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    for name in ["ca", "server", "alice", "root"] {
        assert!(pki.join(format!("{name}.pem")).exists(), "{name}.pem");
        let mode = std::fs::metadata(pki.join(format!("{name}.key")))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}.key mode {mode:o}");
    }
    let before = std::fs::read(pki.join("alice.key")).expect("key");
    let second = run(&[]);
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("jobworkerd: error:") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(pki.join("alice.key")).expect("key"),
        before,
        "a refused init changed a key"
    );
    let forced = run(&["--force"]);
    assert!(forced.status.success());
    assert_ne!(std::fs::read(pki.join("alice.key")).expect("key"), before);
}

/// A development PKI, a daemon with its own state directory and cgroup parent, and a client
/// connected as alice.
struct Setup {
    pki: Pki,
    daemon: Daemon,
    client: JobWorkerClient<Channel>,
}

async fn setup() -> Setup {
    let pki = Pki::dev();
    let daemon = Daemon::start(pki.dir());
    let client = connect(&daemon, &pki, "alice").await;
    Setup {
        pki,
        daemon,
        client,
    }
}

async fn connect(daemon: &Daemon, pki: &Pki, user: &str) -> JobWorkerClient<Channel> {
    jobworker_api::connect(&daemon.endpoint(), pki.client_config(user))
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_stops_jobs_removes_cgroups_and_exits_zero() {
    let Setup {
        pki: _pki,
        mut daemon,
        mut client,
    } = setup().await;
    let parent = daemon.cgroup_parent().to_owned();
    // A job that ignores SIGTERM: the daemon must wait the grace period, then kill it.
    let id = client
        .start(pb::StartRequest {
            command: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "trap '' TERM; echo started; while :; do sleep 1; done".into(),
            ],
            ..Default::default()
        })
        .await
        .expect("start")
        .into_inner()
        .job_id;
    let mut stream = client
        .stream_output(pb::StreamOutputRequest {
            job_id: id,
            streams: vec![],
            offset: 0,
        })
        .await
        .expect("stream")
        .into_inner();
    let first = stream.message().await.expect("message").expect("chunk");
    assert_eq!(first.data(), b"started\n");
    let cgroup_dirs: Vec<std::path::PathBuf> = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.contains(" - cgroup"))
        .filter_map(|l| l.split_whitespace().nth(4).map(std::path::PathBuf::from))
        .collect();

    let sent = Instant::now();
    nix::sys::signal::kill(daemon.pid(), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let end = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let status = end.expect_err("the stream ends with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let exit = daemon
        .wait(Duration::from_secs(2 + 5).saturating_sub(sent.elapsed()))
        .unwrap_or_else(|| {
            panic!(
                "jobworkerd still running {:?} after SIGTERM",
                sent.elapsed()
            )
        });
    assert_eq!(exit.code(), Some(0), "jobworkerd exit status");
    let logs = daemon.log();
    assert!(logs.contains("shut down"), "{logs}");
    // No job cgroup and no parent are left in any hierarchy.
    for mount in cgroup_dirs {
        let found = Command::new("find")
            .arg(&mount)
            .args(["-maxdepth", "4", "-name", &parent])
            .output()
            .expect("find");
        assert!(
            found.stdout.is_empty(),
            "left behind: {}",
            String::from_utf8_lossy(&found.stdout)
        );
    }
}

/// Host processes whose command line contains `marker`.
fn processes_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_die_with_a_killed_daemon_and_the_next_lists_them_as_lost_and_removes_their_cgroups() {
    let pki = Pki::dev();
    let state = tempfile::tempdir().expect("state dir");
    let mut daemon = Daemon::options(pki.dir()).state_dir(state.path()).start();
    let parent = daemon.cgroup_parent().to_owned();
    let mut client = connect(&daemon, &pki, "alice").await;
    let marker = "1000.424242";
    let id = client
        .start(pb::StartRequest {
            command: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                format!("echo before the crash; exec sleep {marker}"),
            ],
            ..Default::default()
        })
        .await
        .expect("start")
        .into_inner()
        .job_id;
    assert!(processes_with(marker) > 0, "the job runs");

    // A crash: no chance to stop anything.
    daemon.kill();
    assert!(
        eventually(Duration::from_secs(10), || processes_with(marker) == 0).await,
        "the job outlived its daemon"
    );

    // Its cgroup is still there (nobody removed it) until the next daemon starts.
    let find = |name: &str| {
        let out = Command::new("find")
            .args([
                "/sys/fs/cgroup",
                "-mindepth",
                "2",
                "-maxdepth",
                "6",
                "-type",
                "d",
                "-path",
            ])
            .arg(format!("*{name}*"))
            .output()
            .expect("find");
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert!(
        find(&parent) > 0,
        "the crashed daemon's cgroups are expected to remain"
    );
    let mut next = Daemon::options(pki.dir())
        .state_dir(state.path())
        .cgroup_parent(&parent)
        .start();
    // The job is remembered, as lost, never as running; its output is kept.
    let mut client = connect(&next, &pki, "alice").await;
    let status = client
        .get_status(pb::GetStatusRequest { job_id: id.clone() })
        .await
        .expect("the job survives in the history")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(status.state, pb::JobState::Lost as i32, "{status:?}");
    assert!(status.note.contains("daemon"), "{}", status.note);
    assert_eq!((status.exit_code, status.signal), (None, None));
    let mut stream = client
        .stream_output(pb::StreamOutputRequest {
            job_id: id,
            streams: vec![],
            offset: 0,
        })
        .await
        .expect("stream")
        .into_inner();
    let first = stream.message().await.expect("message").expect("chunk");
    assert_eq!(first.data(), b"before the crash\n");
    drop(client);
    let exit = next.terminate();
    assert_eq!(exit.code(), Some(0));
    assert_eq!(
        find(&parent),
        0,
        "the next daemon removed the stale job cgroups and its parent"
    );
}

/// `jobworkerd ARGS` with `env`, and nothing of the developer's XDG or HOME settings.
fn jobworkerd(args: &[&str], env: &[(&str, &Path)]) -> Output {
    Command::new(JOBWORKERD)
        .args(args)
        .env_remove("XDG_DATA_HOME")
        .env_remove("HOME")
        .envs(env.iter().copied())
        .output()
        .expect("run jobworkerd")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn certs_init_writes_to_the_xdg_data_dir_by_default_and_says_where() {
    let data = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            vec![("XDG_DATA_HOME", data.path()), ("HOME", home.path())],
            data.path().join("jobworker/dev-pki"),
        ),
        (
            vec![("HOME", home.path())],
            home.path().join(".local/share/jobworker/dev-pki"),
        ),
    ];
    for (env, expected) in cases {
        let out = jobworkerd(&["certs", "init"], &env);

        assert!(out.status.success(), "{env:?}: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert_eq!(
            stdout.lines().next(),
            Some(
                format!(
                    "wrote a development PKI (not for production) to {}:",
                    expected.display()
                )
                .as_str()
            ),
            "{stdout}"
        );
        for file in ["ca.pem", "ca.key", "server.pem", "alice.key", "admin.pem"] {
            assert!(expected.join(file).is_file(), "{file} missing: {stdout}");
        }
    }
}

#[test]
fn serve_without_tls_flags_reads_the_development_pki() {
    let data = tempfile::tempdir().expect("tempdir");

    let out = jobworkerd(&["serve"], &[("XDG_DATA_HOME", data.path())]);

    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let expected = data.path().join("jobworker/dev-pki/ca.pem");
    assert!(
        stderr.contains(&expected.display().to_string()) && stderr.contains("certs init"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_add_user_issues_certificates_the_running_daemon_accepts() {
    let pki = Pki::dev();
    let daemon = Daemon::start(pki.dir());
    let unchanged: Vec<(String, Vec<u8>)> = ["ca.pem", "ca.key", "server.pem", "alice.pem"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(pki.path(f)).expect("read")))
        .collect();
    let dir = pki.dir().to_str().expect("UTF-8 path");

    for args in [
        &["certs", "add-user", "carol", "--dir", dir][..],
        &["certs", "add-user", "--admin", "dave", "--dir", dir],
    ] {
        let out = jobworkerd(args, &[]);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }

    for (file, before) in unchanged {
        assert_eq!(
            std::fs::read(pki.path(&file)).expect("read"),
            before,
            "{file} changed"
        );
    }
    let mut carol = connect(&daemon, &pki, "carol").await;
    let id = carol
        .start(pb::StartRequest {
            command: "/bin/true".into(),
            ..Default::default()
        })
        .await
        .expect("the daemon accepts carol's new certificate")
        .into_inner()
        .job_id;
    let mut alice = connect(&daemon, &pki, "alice").await;
    alice
        .start(pb::StartRequest {
            command: "/bin/true".into(),
            ..Default::default()
        })
        .await
        .expect("start as alice");
    let owners = |jobs: Vec<pb::JobStatus>| {
        let mut owners: Vec<String> = jobs.into_iter().map(|job| job.owner).collect();
        owners.sort();
        owners
    };
    let mut dave = connect(&daemon, &pki, "dave").await;
    let all = dave
        .list(pb::ListRequest::default())
        .await
        .expect("list as dave");
    assert_eq!(
        owners(all.into_inner().jobs),
        ["alice", "carol"],
        "dave (--admin) sees every job"
    );
    let own = carol
        .list(pb::ListRequest::default())
        .await
        .expect("list as carol");
    let own = own.into_inner().jobs;
    assert_eq!(owners(own.clone()), ["carol"], "carol is no admin");
    assert_eq!(own[0].job_id, id);
}

#[test]
fn certs_add_user_refuses_to_replace_a_user_unless_forced() {
    let pki = Pki::dev();
    let dir = pki.dir().to_str().expect("UTF-8 path");
    let before = std::fs::read(pki.path("alice.key")).expect("read");

    let refused = jobworkerd(&["certs", "add-user", "alice", "--dir", dir], &[]);

    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.starts_with("jobworkerd: error: refusing to overwrite")
            && stderr.contains("alice.pem")
            && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(pki.path("alice.key")).expect("read"), before);

    let forced = jobworkerd(
        &["certs", "add-user", "alice", "--dir", dir, "--force"],
        &[],
    );
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    assert_ne!(std::fs::read(pki.path("alice.key")).expect("read"), before);
}

#[test]
fn certs_add_user_without_a_pki_says_to_create_one() {
    let data = tempfile::tempdir().expect("tempdir");

    let out = jobworkerd(
        &["certs", "add-user", "carol"],
        &[("XDG_DATA_HOME", data.path())],
    );

    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let ca = data.path().join("jobworker/dev-pki/ca.pem");
    assert!(
        stderr.contains(&format!("cannot read {}", ca.display()))
            && stderr.contains("jobworkerd certs init"),
        "{stderr}"
    );
}

/// The next datagram on `socket`, as text; fails the test after `within`.
fn next_notification(socket: &UnixDatagram, within: Duration) -> String {
    socket.set_read_timeout(Some(within)).expect("timeout");
    let mut buffer = [0u8; 4096];
    let n = socket
        .recv(&mut buffer)
        .unwrap_or_else(|e| panic!("no notification within {within:?}: {e}"));
    String::from_utf8_lossy(&buffer[..n]).into_owned()
}

#[test]
fn serve_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let pki = Pki::dev();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notification socket");

    let mut daemon = Daemon::options(pki.dir())
        .env("NOTIFY_SOCKET", &path)
        .start();

    let ready = next_notification(&socket, Duration::from_secs(10));
    assert_eq!(
        ready,
        format!("READY=1\nSTATUS=listening on {}", daemon.address())
    );
    nix::sys::signal::kill(daemon.pid(), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let stopping = next_notification(&socket, Duration::from_secs(10));
    assert!(stopping.starts_with("STOPPING=1\n"), "{stopping:?}");
    assert_eq!(daemon.terminate().code(), Some(0));
}

#[test]
fn serve_notifies_an_abstract_socket_too() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::SocketAddr;
    let pki = Pki::dev();
    let name = format!("jobworkerd-test-{}", uuid::Uuid::new_v4());
    let address = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
    let socket = UnixDatagram::bind_addr(&address).expect("bind the notification socket");

    let daemon = Daemon::options(pki.dir())
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .start();

    let ready = next_notification(&socket, Duration::from_secs(10));
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    drop(daemon);
}

#[test]
fn man_pages_are_written_for_every_visible_command() {
    let dir = tempfile::tempdir().expect("tempdir");

    let out = Command::new(JOBWORKERD)
        .arg("man-pages")
        .arg(dir.path())
        .output()
        .expect("run jobworkerd man-pages");

    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    pages.sort();
    assert_eq!(
        pages,
        [
            "jobworkerd-certs-add-user.8",
            "jobworkerd-certs-init.8",
            "jobworkerd-certs.8",
            "jobworkerd-serve.8",
            "jobworkerd.8"
        ]
    );
    let serve = std::fs::read_to_string(dir.path().join("jobworkerd-serve.8")).expect("read");
    assert!(
        serve.starts_with(".ie") || serve.contains(".TH jobworkerd-serve 8"),
        "{serve}"
    );
    assert!(
        serve.contains("JOBWORKER_LISTEN"),
        "env variables are documented"
    );
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let pki = Pki::dev();
    let mut daemon = Daemon::options(pki.dir())
        .arg("--log-format")
        .arg("json")
        .start();
    assert_eq!(daemon.terminate().code(), Some(0));
    let log = daemon.log();
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
        })
        .collect();
    let listening = records
        .iter()
        .find(|record| record["fields"]["message"] == "jobworkerd listening (mutual TLS 1.3)")
        .unwrap_or_else(|| panic!("no listening record in {log}"));
    assert_eq!(listening["level"], "INFO");
    assert_eq!(
        listening["fields"]["listen"],
        daemon.address().to_string().as_str()
    );
}

#[test]
fn serve_raises_the_soft_open_file_limit_to_the_hard_limit() {
    let hard = std::fs::read_to_string("/proc/self/limits")
        .expect("limits")
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(4).map(str::to_owned))
        .expect("hard open-file limit");
    let pki = Pki::dev();
    // Started with a low soft limit (prlimit execs the daemon, keeping its pid).
    let mut daemon = Daemon::options(pki.dir())
        .wrapped_by("prlimit", &["--nofile=256:"])
        .start();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.pid()))
        .expect("the daemon's limits");
    let open_files = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("open-file limit");
    assert_eq!(
        open_files.split_whitespace().nth(3),
        Some(hard.as_str()),
        "{open_files}"
    );
    assert_eq!(daemon.terminate().code(), Some(0));
}

/// Reads a whole output stream; returns the bytes and the final status.
async fn read_to_end(
    client: &mut JobWorkerClient<Channel>,
    id: &str,
) -> (Vec<u8>, Option<pb::JobStatus>) {
    let mut stream = client
        .stream_output(pb::StreamOutputRequest {
            job_id: id.into(),
            streams: vec![],
            offset: 0,
        })
        .await
        .expect("stream")
        .into_inner();
    let (mut bytes, mut end) = (Vec::new(), None);
    while let Some(message) = stream.message().await.expect("message") {
        bytes.extend_from_slice(message.data());
        if let Some(last) = message.end() {
            end = last.status.clone();
        }
    }
    (bytes, end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_history_survives_a_restart_and_stays_removable() {
    let pki = Pki::dev();
    let state = tempfile::tempdir().expect("state dir");
    let mut first = Daemon::options(pki.dir()).state_dir(state.path()).start();
    let mut client = connect(&first, &pki, "alice").await;
    let start = |script: &str| pb::StartRequest {
        command: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        ..Default::default()
    };
    let ended = client
        .start(start("head -c 300000 /dev/urandom | od -An -tx1; exit 6"))
        .await
        .expect("start")
        .into_inner()
        .job_id;
    let (before, status_before) = read_to_end(&mut client, &ended).await;
    let status_before = status_before.expect("final status");
    let running = client
        .start(start("echo up; exec sleep 1000"))
        .await
        .expect("start")
        .into_inner()
        .job_id;
    drop(client);
    // Without --live-restore, SIGTERM stops the running job before the daemon exits.
    assert_eq!(first.terminate().code(), Some(0), "{}", first.log());

    let second = Daemon::options(pki.dir())
        .state_dir(state.path())
        .cgroup_parent(first.cgroup_parent())
        .start();
    let mut client = connect(&second, &pki, "alice").await;
    let listed = client
        .list(pb::ListRequest::default())
        .await
        .expect("list")
        .into_inner()
        .jobs;
    let ids: Vec<&str> = listed.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(
        ids,
        [ended.as_str(), running.as_str()],
        "both, oldest first"
    );

    let (after, status_after) = read_to_end(&mut client, &ended).await;
    assert_eq!(after, before, "the output, byte for byte, from byte 0");
    let status_after = status_after.expect("final status");
    assert_eq!(status_after.exit_code, Some(6));
    for (name, a, b) in [
        (
            "started_at",
            &status_before.started_at,
            &status_after.started_at,
        ),
        ("ended_at", &status_before.ended_at, &status_after.ended_at),
    ] {
        assert_eq!(a, b, "{name} is the one recorded");
    }
    assert_eq!(status_before.cpu_time, status_after.cpu_time);
    assert_eq!(status_before.output, status_after.output);

    let stopped = client
        .get_status(pb::GetStatusRequest {
            job_id: running.clone(),
        })
        .await
        .expect("status")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(stopped.state, pb::JobState::Signaled as i32, "{stopped:?}");
    assert!(
        stopped.stop_requested,
        "stopped by the shutdown: {stopped:?}"
    );
    let (up, _) = read_to_end(&mut client, &running).await;
    assert_eq!(up, b"up\n");

    for id in [&ended, &running] {
        client
            .remove(pb::RemoveRequest {
                job_id: id.clone(),
                force: false,
            })
            .await
            .expect("remove after the restart");
    }
    let left = client
        .list(pb::ListRequest::default())
        .await
        .expect("list")
        .into_inner()
        .jobs;
    assert!(left.is_empty(), "{left:?}");
    drop(client);
    drop(second);
    drop(first);
}

#[test]
fn failed_handshakes_are_summarised_not_logged_one_by_one() {
    use std::io::Write;
    let pki = Pki::dev();
    let daemon = Daemon::start(pki.dir());

    // The attack: 200 connections that send anything but a TLS handshake.
    for _ in 0..200 {
        let mut tcp = std::net::TcpStream::connect(daemon.address()).expect("connect");
        let _ = tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    }

    let summaries = || -> u64 {
        daemon
            .log()
            .lines()
            .filter_map(|l| l.split(" TLS handshakes failed in the last").next())
            .filter_map(|head| head.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert!(
        jobworker_testkit::eventually_blocking(Duration::from_secs(30), || summaries() >= 200),
        "no summary of the failed handshakes; the log:\n{}",
        daemon.log()
    );
    let log = daemon.log();
    let warnings = log.lines().filter(|l| l.contains("WARN")).count();
    assert!(
        warnings <= 3,
        "{warnings} WARN lines for 200 failed handshakes:\n{log}"
    );
}

/// `jobworkerd serve` with `args` and the dev PKI's TLS files, run to its exit.
fn serve_once(pki: &Pki, args: &[&str]) -> Output {
    Command::new(JOBWORKERD)
        .arg("serve")
        .arg("--ca")
        .arg(pki.path("ca.pem"))
        .arg("--cert")
        .arg(pki.path("server.pem"))
        .arg("--key")
        .arg(pki.path("server.key"))
        .args(["--job-ids", &jobworker_testkit::random_job_ids()])
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .expect("run jobworkerd serve")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_state_directory_exits_naming_the_first_and_changes_nothing() {
    let pki = Pki::dev();
    let state = tempfile::tempdir().expect("state dir");
    let first = Daemon::options(pki.dir()).state_dir(state.path()).start();
    let mut client = connect(&first, &pki, "alice").await;
    let id = client
        .start(pb::StartRequest {
            command: "/bin/sh".into(),
            args: vec!["-c".into(), "echo kept; exec sleep 1000".into()],
            ..Default::default()
        })
        .await
        .expect("start")
        .into_inner()
        .job_id;

    let state_arg = state.path().to_string_lossy().into_owned();
    let second = tokio::task::block_in_place(|| {
        serve_once(
            &pki,
            &[
                "--listen",
                "127.0.0.1:0",
                "--state-dir",
                &state_arg,
                "--cgroup-parent",
                first.cgroup_parent(),
            ],
        )
    });

    let stderr = text(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(
        stderr.contains(&first.pid().to_string()),
        "the refusal names the first daemon's pid {}: {stderr}",
        first.pid()
    );
    let status = client
        .get_status(pb::GetStatusRequest { job_id: id.clone() })
        .await
        .expect("the first daemon still serves")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(status.state, pb::JobState::Running as i32, "{status:?}");
    let log = state.path().join("jobs").join(&id).join("output.log");
    assert!(log.exists(), "the job's log is still there");
}

#[test]
fn a_failed_bind_changes_nothing() {
    let pki = Pki::dev();
    let state = tempfile::tempdir().expect("state dir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let parent = format!("jobworker-test-{}", uuid::Uuid::new_v4());
    let state_arg = state.path().join("state").to_string_lossy().into_owned();

    let out = serve_once(
        &pki,
        &[
            "--listen",
            &address,
            "--state-dir",
            &state_arg,
            "--cgroup-parent",
            &parent,
        ],
    );

    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&address), "names the address: {stderr}");
    assert!(
        jobworker_testkit::cgroups_named(&parent).is_empty(),
        "a cgroup parent was left behind"
    );
    let jobs = std::path::Path::new(&state_arg).join("jobs");
    assert!(!jobs.exists(), "the state directory was set up anyway");
}
