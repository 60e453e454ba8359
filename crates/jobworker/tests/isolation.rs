//! Isolation: each job has its own PID, mount, network, UTS and IPC namespaces and runs as an
//! unprivileged user without capabilities.

mod common;

use common::{exited, sh, worker};
use jobworker::{CommandSpec, Limits};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proc_shows_only_the_jobs_processes() {
    let w = worker();
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
    let w = worker();
    let (out, _) = w
        .run_with(sh("echo $$; cat /proc/1/comm"), Limits::default())
        .await;
    assert_eq!(out, "2\njobworker-init\n");
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_has_only_loopback_and_it_is_up() {
    let w = worker();
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
    let w = worker();
    let before = host_mounts();
    // The job's init has mounted /proc, /sys and /dev/shm in its namespace; the command tries too.
    let id = w
        .start_with(
            sh("mount -t tmpfs none /mnt 2>&1 && echo MOUNTED; echo ready; exec sleep 1000"),
            Limits::default(),
        )
        .await;
    w.wait_for_line(id, "ready").await;
    let during = host_mounts();
    w.stop(id).await.expect("stop");
    let out = w.output(id, jobworker::StreamFilter::Stdout).await;
    let out = String::from_utf8_lossy(&out);
    assert!(
        !out.contains("MOUNTED"),
        "an unprivileged job must not mount: {out}"
    );
    assert_eq!(
        before, during,
        "the host's mount table changed while the job ran"
    );
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_runs_unprivileged_and_cannot_read_root_only_files() {
    let w = worker();
    let dir = tempfile::tempdir().expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let secret = dir.path().join("server.key");
    std::fs::write(&secret, "secret").expect("write");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let script = format!(
        "id -u; id -g; grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status; cat {} && echo READ",
        secret.display()
    );
    let (out, status) = w.run_with(sh(&script), Limits::default()).await;
    assert_ne!(exited(&status), 0, "cat of a 0600 root file must fail");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "65534", "uid of the job: {out}");
    assert_eq!(lines[1], "65534", "gid of the job: {out}");
    for line in &lines[2..7] {
        let value = line.split_whitespace().nth(1).unwrap_or("?");
        assert!(
            value.chars().all(|c| c == '0'),
            "capabilities must be empty: {line}"
        );
    }
    assert_eq!(
        lines[7].split_whitespace().nth(1),
        Some("1"),
        "no_new_privs: {out}"
    );
    assert!(
        !out.contains("READ"),
        "the job read a root-only file: {out}"
    );
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostname_is_the_job_id() {
    let w = worker();
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
    let w = worker();
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
            &format!("PATH={}", jobworker::worker::DEFAULT_PATH)
        ],
    );
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipc_namespace_is_private() {
    let w = worker();
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
