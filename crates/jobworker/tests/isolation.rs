//! Isolation, written as the attacks that must fail: each job is a tenant of its own — own PID,
//! mount, network, UTS and IPC namespaces, own filesystem view, own uid, a syscall filter — and
//! ordinary programs still work inside.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{TESTPROG, exited, sh, worker, worker_with};
use jobworker::{Bind, CommandSpec, JobState, Limits, StreamFilter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proc_shows_only_the_jobs_processes() {
    let w = worker().await;
    let (out, status) = w.run("/bin/ls", &["/proc"]).await;
    assert_eq!(exited(&status), 0);
    let mut pids: Vec<&str> = out
        .split_whitespace()
        .filter(|e| e.chars().all(|c| c.is_ascii_digit()))
        .collect();
    pids.sort();
    // PID 1 is the job's init, PID 2 is `ls` itself.
    assert_eq!(pids, ["1", "2"], "ls /proc inside the job listed {out:?}");
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_is_not_pid_1() {
    let w = worker().await;
    let (out, _) = w
        .run_with(sh("echo $$; cat /proc/1/comm"), Limits::default())
        .await;
    assert_eq!(out, "2\njobworker-init\n");
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_has_only_loopback_and_it_is_up() {
    let w = worker().await;
    let (out, status) = w
        .run_with(
            sh("ls /sys/class/net; cat /sys/class/net/lo/operstate /sys/class/net/lo/flags"),
            Limits::default(),
        )
        .await;
    assert_eq!(exited(&status), 0, "output: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "lo", "interfaces: {out:?}");
    // operstate of lo is "unknown" even when up; the IFF_UP bit (0x1) in flags is what counts.
    let flags = u32::from_str_radix(lines[2].trim_start_matches("0x"), 16).expect("flags");
    assert_eq!(flags & 1, 1, "lo must be up, flags {:#x}", flags);
    assert_eq!(lines.len(), 3, "only lo: {out:?}");
    w.finish().await;
}

fn host_mounts() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .map(|l| l.split_whitespace().nth(4).unwrap_or("").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_inside_the_job_do_not_reach_the_host_and_the_job_cannot_mount() {
    let w = worker().await;
    let before = host_mounts();
    // The job's init has mounted its whole view in its namespace; the command tries too.
    let id = w
        .start_with(
            sh("mount -t tmpfs none /tmp 2>&1 && echo MOUNTED; echo ready; exec sleep 1000"),
            Limits::default(),
        )
        .await;
    w.wait_for_line(id, "ready").await;
    let during = host_mounts();
    w.stop(id).await.expect("stop");
    let out = String::from_utf8_lossy(&w.output(id, StreamFilter::Stdout).await).into_owned();
    assert!(!out.contains("MOUNTED"), "a job must not mount: {out}");
    assert_eq!(
        before, during,
        "the host's mount table changed while the job ran"
    );
    w.finish().await;
}

/// `id -u`, capabilities, no_new_privs and seccomp mode of a job, as it reports them.
const IDENTITY: &str = "id -u; id -g; id -G; \
    grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; \
    echo ready; exec sleep 1000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_jobs_run_as_distinct_uids_that_no_account_has_without_privileges() {
    let w = worker().await;
    let a = w.start_as("alice", sh(IDENTITY), Limits::default()).await;
    let b = w.start_as("bob", sh(IDENTITY), Limits::default()).await;
    w.wait_for_line(a, "ready").await;
    w.wait_for_line(b, "ready").await;
    let range = w.config().job_ids;
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let mut uids = Vec::new();
    for id in [a, b] {
        let out = {
            let mut reader = w
                .worker
                .output(id, StreamFilter::Stdout, 0)
                .expect("reader");
            let mut text = String::new();
            while !text.contains("ready") {
                let chunk = reader.next().await.expect("read").expect("more");
                text.push_str(&String::from_utf8_lossy(&chunk.data));
            }
            text
        };
        let lines: Vec<&str> = out.lines().collect();
        let uid: u32 = lines[0].parse().expect("uid");
        assert_eq!(lines[1], lines[0], "gid equals uid: {out}");
        assert_eq!(lines[2], lines[0], "no supplementary groups: {out}");
        assert!(
            (range.first()..=range.last()).contains(&uid),
            "uid {uid} outside the worker's range {range}"
        );
        assert!(
            !passwd
                .lines()
                .any(|l| l.split(':').nth(2) == Some(&uid.to_string())),
            "uid {uid} belongs to an account in /etc/passwd"
        );
        for line in lines.iter().filter(|l| l.starts_with("Cap")) {
            let value = line.split_whitespace().nth(1).unwrap_or("?");
            assert!(value.chars().all(|c| c == '0'), "capabilities: {line}");
        }
        assert!(lines.contains(&"NoNewPrivs:\t1"), "no_new_privs: {out}");
        assert!(lines.contains(&"Seccomp:\t2"), "seccomp filter mode: {out}");
        uids.push(uid);
    }
    assert_ne!(uids[0], uids[1], "two running jobs share a uid");
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_jobs_tmp_is_invisible_to_another_and_to_the_host() {
    let w = worker().await;
    let marker = format!("secret-{}", uuid::Uuid::new_v4());
    let alice = w
        .start_as(
            "alice",
            sh(&format!(
                "umask 077; echo alice-data > /tmp/{marker}; echo x > /var/tmp/{marker}; \
                 echo y > /dev/shm/{marker}; echo ready; exec sleep 1000"
            )),
            Limits::default(),
        )
        .await;
    w.wait_for_line(alice, "ready").await;
    let (out, _) = w
        .run_with(
            sh(&format!(
                "cat /tmp/{marker} /var/tmp/{marker} /dev/shm/{marker} 2>&1; \
                 echo bob > /tmp/{marker} && cat /tmp/{marker}"
            )),
            Limits::default(),
        )
        .await;
    assert!(!out.contains("alice-data"), "bob read alice's /tmp: {out}");
    assert!(out.contains("No such file"), "bob saw alice's files: {out}");
    assert!(out.ends_with("bob\n"), "bob's own /tmp is writable: {out}");
    for dir in ["/tmp", "/var/tmp", "/dev/shm"] {
        assert!(
            !std::path::Path::new(dir).join(&marker).exists(),
            "a job's file reached the host's {dir}"
        );
    }
    w.stop(alice).await.expect("stop");
    let (alice_out, _) = w.collect(alice).await;
    assert_eq!(alice_out, "ready\n", "alice's file was untouched by bob");
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cannot_store_more_in_tmp_than_its_memory_limit() {
    let w = worker().await;
    let limit = 32u64 << 20;
    let limits = Limits {
        memory_bytes: Some(limit),
        ..Limits::default()
    };
    // 64 MiB into /tmp under a 32 MiB limit: the write must stop (a full tmpfs, or the OOM
    // killer), and what it stored is bounded by the limit.
    let (out, status) = w
        .run_with(
            sh("head -c 67108864 /dev/zero > /tmp/fill; echo rc=$?; \
                wc -c < /tmp/fill"),
            limits,
        )
        .await;
    eprintln!(
        "measured: 64 MiB into /tmp under a 32 MiB limit -> {:?}, output {out:?}",
        status.state
    );
    match status.state {
        JobState::OomKilled => {}
        JobState::Exited(_) => {
            let stored: u64 = out
                .lines()
                .find_map(|l| l.trim().parse().ok())
                .unwrap_or_else(|| panic!("no size in {out:?}"));
            assert!(out.contains("rc=1"), "the write did not fail: {out}");
            assert!(
                stored <= limit,
                "{stored} bytes stored under a {limit} limit"
            );
        }
        other => panic!("unexpected end {other:?}: {out}"),
    }
    let peak = status.usage.and_then(|u| u.peak_memory_bytes).unwrap_or(0);
    assert!(
        peak <= limit + (1 << 20),
        "peak memory {peak} above the limit"
    );
    w.finish().await;
}

/// The probe's results, by call.
fn probe_results(out: &str) -> std::collections::HashMap<String, String> {
    out.lines()
        .filter_map(|l| {
            let (name, result) = l.split_once(' ')?;
            Some((name.to_owned(), result.to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_syscall_filter_refuses_namespaces_mounts_keyrings_and_kernel_attack_surface() {
    let w = worker().await;
    let (out, status) = w.run(TESTPROG, &["probe"]).await;
    assert_eq!(exited(&status), 0, "{out}");
    let got = probe_results(&out);
    let eperm = libc::EPERM.to_string();
    let refused = [
        "unshare-user",
        "unshare-net",
        "mount",
        "setns",
        "add_key",
        "keyctl",
        "bpf",
        "io_uring_setup",
        "perf_event_open",
        "userfaultfd",
    ];
    for call in refused {
        assert_eq!(got.get(call), Some(&eperm), "{call}: {out}");
    }
    assert_eq!(
        got.get("clone3"),
        Some(&libc::ENOSYS.to_string()),
        "clone3 must look unimplemented: {out}"
    );
    let no_family = libc::EAFNOSUPPORT.to_string();
    for call in ["socket-packet", "socket-vsock", "socket-netfilter"] {
        assert_eq!(got.get(call), Some(&no_family), "{call}: {out}");
    }
    for call in [
        "socket-route",
        "socket-inet",
        "socket-unix",
        "fork",
        "thread",
        "ptrace",
    ] {
        assert_eq!(
            got.get(call).map(String::as_str),
            Some("ok"),
            "{call}: {out}"
        );
    }
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_added_by_one_job_is_invisible_to_a_concurrent_job() {
    let w = worker().await;
    // Keyrings are per uid and not namespaced: the filter refuses them, so neither the add nor
    // the read can happen, whatever the uids.
    let first = w.start(TESTPROG, &["probe"]).await;
    let second = w.start(TESTPROG, &["probe"]).await;
    for id in [first, second] {
        let (out, _) = w.collect(id).await;
        let got = probe_results(&out);
        assert_eq!(got.get("add_key"), Some(&libc::EPERM.to_string()), "{out}");
        assert_eq!(got.get("keyctl"), Some(&libc::EPERM.to_string()), "{out}");
    }
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_owned_world_writable_socket_on_the_host_is_unreachable() {
    let w = worker().await;
    // Sockets where host services put them (/run) and where anyone can (/tmp), mode 0666.
    let run_dir = tempfile::tempdir_in("/run").expect("dir in /run");
    let tmp_dir = tempfile::tempdir().expect("dir in /tmp");
    let mut paths = Vec::new();
    let mut listeners = Vec::new();
    for dir in [run_dir.path(), tmp_dir.path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let path = dir.join("service.sock");
        listeners.push(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        paths.push(path);
    }
    for path in &paths {
        let (out, _) = w
            .run(TESTPROG, &["connect", path.to_str().expect("utf-8")])
            .await;
        assert_eq!(
            out.trim(),
            format!("errno {}", libc::ENOENT),
            "the job reached {}",
            path.display()
        );
    }
    // The host can, so the sockets were there to be reached.
    for path in &paths {
        std::os::unix::net::UnixStream::connect(path).expect("host connects");
    }
    drop(listeners);
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_stdout_and_dev_stderr_open_as_in_any_shell() {
    let w = worker().await;
    let id = w
        .start_with(
            sh(
                "echo to-stderr > /dev/stderr && echo via-tee | tee /dev/stdout \
                && echo fd > /proc/self/fd/1",
            ),
            Limits::default(),
        )
        .await;
    let (out, err) = w.output_split(id).await;
    let status = w.wait(id).await.expect("wait");
    assert_eq!(exited(&status), 0, "{}", String::from_utf8_lossy(&err));
    // tee writes its input to its stdout and to /dev/stdout: twice.
    assert_eq!(String::from_utf8_lossy(&out), "via-tee\nvia-tee\nfd\n");
    assert_eq!(String::from_utf8_lossy(&err), "to-stderr\n");
    w.finish().await;
}

/// The host pid of the job's command (the process in its cgroup that is not the init).
fn command_pid(w: &common::TestWorker, marker: &str) -> u32 {
    common::processes_with(marker)
        .into_iter()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() != "jobworker-init")
        })
        .unwrap_or_else(|| panic!("no command process with {marker} ({:?})", w.job_cgroups()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_ends_when_its_command_ends_even_if_its_pipe_is_held_elsewhere() {
    let grace = Duration::from_secs(3);
    let w = worker_with(|c| c.stop_grace = grace).await;
    // A copy of the job's stdout held outside the job (as a process of another job could hold
    // one received over SCM_RIGHTS): the job must not wait for it to close.
    let marker = "1.4242";
    let id = w
        .start_with(
            sh(&format!("echo ready; exec sleep {marker}")),
            Limits::default(),
        )
        .await;
    w.wait_for_line(id, "ready").await;
    let pid = command_pid(&w, marker);
    let held = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/fd/1"))
        .expect("open the job's stdout pipe from outside");
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(10), w.wait(id))
        .await
        .expect("the job ended although its pipe is held")
        .expect("wait");
    assert_eq!(exited(&status), 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    // And a stop finishes within the grace period plus a small constant.
    let marker = "1000.4343";
    let id = w
        .start_with(
            sh(&format!("echo ready; exec sleep {marker}")),
            Limits::default(),
        )
        .await;
    w.wait_for_line(id, "ready").await;
    let pid = command_pid(&w, marker);
    let held_too = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/fd/1"))
        .expect("open the job's stdout pipe from outside");
    let started = Instant::now();
    let status = w.stop(id).await.expect("stop");
    assert_eq!(status.state, JobState::Signaled(libc::SIGTERM));
    assert!(
        started.elapsed() < grace + Duration::from_secs(2),
        "stop took {:?}",
        started.elapsed()
    );
    drop((held, held_too));
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemons_state_directory_and_key_files_are_not_in_the_view() {
    // A key in a directory the operator made visible (as /etc/jobworker is under /etc).
    let visible = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(visible.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let keys = visible.path().join("keys");
    std::fs::create_dir(&keys).expect("mkdir");
    std::fs::write(keys.join("server.key"), "PRIVATE").expect("write key");
    std::fs::write(visible.path().join("public.txt"), "public").expect("write");
    let w = worker_with(|c| {
        c.sandbox.binds.push(Bind {
            source: visible.path().to_owned(),
            target: "/srv/config".into(),
            writable: false,
        });
        c.secrets.push(keys.join("server.key"));
    })
    .await;
    let state = w.state_dir.path().display().to_string();
    let (out, _) = w
        .run_with(
            sh(&format!(
                "cat /srv/config/public.txt; echo; \
                 test -e {state} && echo STATE-VISIBLE; \
                 test -e /srv/config/keys/server.key && echo KEY-VISIBLE; \
                 ls -A /srv/config/keys 2>&1 | grep -c server.key; \
                 for d in /root /home /var/lib /run/systemd; do test -e $d && echo $d-VISIBLE; done; \
                 echo done"
            )),
            Limits::default(),
        )
        .await;
    assert!(out.starts_with("public\n"), "the bind works: {out}");
    for leak in ["STATE-VISIBLE", "KEY-VISIBLE", "-VISIBLE"] {
        assert!(!out.contains(leak), "{leak}: {out}");
    }
    assert!(out.contains("\n0\n"), "the key directory is empty: {out}");
    assert!(out.ends_with("done\n"));
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_is_read_only_except_the_private_tmpfs_mounts() {
    let w = worker().await;
    let (out, _) = w
        .run_with(
            sh("for d in / /usr /etc /bin /dev /sys /proc/sys; do \
                  touch $d/jobworker-probe 2>/dev/null && echo $d-WRITABLE; done; \
                for d in /tmp /var/tmp /run /dev/shm; do \
                  touch $d/probe && echo $d-ok; done"),
            Limits::default(),
        )
        .await;
    assert!(!out.contains("WRITABLE"), "{out}");
    assert_eq!(out, "/tmp-ok\n/var/tmp-ok\n/run-ok\n/dev/shm-ok\n");
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_programs_work_in_the_sandbox() {
    let w = worker().await;
    let (out, status) = w
        .run_with(
            sh("ls /usr/bin | grep -c . >/dev/null && echo ls-ok; \
                date +%Y | grep -q '^20' && echo date-ok; \
                echo b a c | tr ' ' '\\n' | sort | tr -d '\\n'; echo; \
                cat /etc/passwd | head -1 | cut -d: -f1; \
                echo hi > /tmp/f && cat /tmp/f"),
            Limits::default(),
        )
        .await;
    assert_eq!(exited(&status), 0, "{out}");
    assert_eq!(out, "ls-ok\ndate-ok\nabc\nroot\nhi\n");
    let (out, _) = w.run(TESTPROG, &["threads", "16"]).await;
    assert_eq!(out, "threads 16\n", "a program with threads");
    w.finish().await;
}

/// Needs python3 on the host (the cgroup v2 test guest has none: scripts/test skips this test
/// there by name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_runs_in_the_sandbox() {
    let w = worker().await;
    let spec = CommandSpec::new(
        "python3",
        [
            "-c",
            "import os, threading; t = threading.Thread(target=print, args=(os.getuid() > 0,)); t.start(); t.join()",
        ],
    );
    let (out, status) = w.run_with(spec, Limits::default()).await;
    assert_eq!(exited(&status), 0, "{out}");
    assert_eq!(out, "True\n");
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostname_is_the_job_id() {
    let w = worker().await;
    let id = w.start("/bin/hostname", &[]).await;
    let (out, _) = w.collect(id).await;
    let host = nix::unistd::gethostname().expect("hostname");
    assert_eq!(out.trim(), id.to_string());
    assert_ne!(out.trim(), host.to_string_lossy());
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_is_only_what_the_request_gives_plus_path() {
    // SAFETY: tests in this binary do not read the environment concurrently.
    unsafe { std::env::set_var("JOBWORKER_SECRET_OF_THE_DAEMON", "leak") };
    let w = worker().await;
    let spec = CommandSpec {
        env: vec![("GREETING".into(), "hello world".into())],
        ..CommandSpec::new("/usr/bin/env", Vec::<String>::new())
    };
    let (out, _) = w.run_with(spec, Limits::default()).await;
    let mut vars: Vec<&str> = out.lines().collect();
    vars.sort();
    assert_eq!(
        vars,
        [
            "GREETING=hello world",
            &format!("PATH={}", jobworker::DEFAULT_PATH)
        ],
    );
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipc_namespace_is_private() {
    let w = worker().await;
    // The host's SysV message queues, semaphores and shared memory are invisible.
    let (out, _) = w
        .run_with(
            sh("cat /proc/sysvipc/shm /proc/sysvipc/msg | grep -cv key"),
            Limits::default(),
        )
        .await;
    assert_eq!(out.trim(), "0");
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_starts_with_the_usual_open_file_limit_whatever_the_daemons() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    // The daemon raises its own soft limit to the hard one at start-up; do the same here.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raise the soft limit");
    let w = worker().await;

    let (out, status) = w
        .run_with(sh("ulimit -Sn; ulimit -Hn"), Limits::default())
        .await;

    assert_eq!(exited(&status), 0, "{status:?}");
    assert_eq!(
        out,
        format!("{}\n{hard}\n", 1024.min(hard)),
        "soft, then hard"
    );
    w.finish().await;
}
