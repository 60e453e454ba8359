//! start, status, list, stop and run, end to end: the real jobctl against a real jobworkerd.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{
    TestServer, announced_job, interrupt, read_until, stderr_of, stdout_of, wait_with_timeout,
};

#[test]
fn start_prints_only_the_job_id_and_status_shows_it_running() {
    let server = TestServer::start();

    let id = server.start_job(&["sleep", "600"]);
    let status = server.ok(&["status", &id]);

    let fields = fields(&status);
    let keys: Vec<&str> = fields.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "ID",
            "Owner",
            "Command",
            "Working dir",
            "State",
            "Started",
            "Limits"
        ],
        "{status}"
    );
    assert_eq!(fields[0].1, id, "{status}");
    assert!(fields[1].1.starts_with("alice (uid "), "{status}");
    assert_eq!(fields[2].1, "sleep 600", "{status}");
    assert_eq!(fields[3].1, "/", "{status}");
    assert_eq!(fields[4].1, "running", "{status}");
}

/// The `Key: value` lines of `status` output.
fn fields(status: &str) -> Vec<(String, String)> {
    status
        .lines()
        .map(|line| {
            let (key, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("not a `Key: value` line: {line:?}"));
            (key.to_owned(), value.trim().to_owned())
        })
        .collect()
}

#[test]
fn list_shows_the_callers_jobs_as_a_table() {
    let server = TestServer::start();
    let running = server.start_job(&["sleep", "600"]);
    let exited = server.start_job(&["sh", "-c", "exit 3"]);
    server.wait_for_end(&exited);

    let table = server.ok(&["list"]);

    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|line| {
            line.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 3, "a header and two jobs:\n{table}");
    assert_eq!(
        rows[0],
        ["ID", "OWNER", "STATE", "STARTED", "COMMAND"],
        "{table}"
    );
    let row = |id: &str| {
        rows.iter()
            .find(|row| row[0] == id)
            .unwrap_or_else(|| panic!("job {id} missing from:\n{table}"))
            .clone()
    };
    let running_row = row(&running);
    assert_eq!(running_row[1..3], ["alice", "running"], "{table}");
    assert_eq!(running_row[4], "sleep 600", "{table}");
    let exited_row = row(&exited);
    assert_eq!(exited_row[1..3], ["alice", "exited(3)"], "{table}");
    assert_eq!(exited_row[4], "sh -c 'exit 3'", "{table}");
}

#[test]
fn another_users_jobs_are_not_listed() {
    let server = TestServer::start();
    server.start_job(&["sleep", "600"]);

    let out = server
        .jobctl()
        .args(["--user", "bob", "list", "--output", "json"])
        .output()
        .expect("run jobctl");

    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(stdout_of(&out), "[]\n");
}

#[test]
fn stop_ends_the_job_and_prints_its_final_status() {
    let server = TestServer::start();
    let id = server.start_job(&["sleep", "600"]);

    let stopped = server.ok(&["stop", &id]);

    let fields = fields(&stopped);
    assert_eq!(fields[0], ("ID".to_owned(), id.clone()), "{stopped}");
    assert_eq!(
        fields[4],
        ("State".to_owned(), "signaled(SIGTERM) (stopped)".to_owned()),
        "{stopped}"
    );
    let status = server.status_json(&id);
    assert_eq!(status["state"], "signaled", "{status}");
    assert_eq!(status["signal"], "SIGTERM", "{status}");
    assert_eq!(status["stop_requested"], true, "{status}");
}

#[test]
fn stopping_an_ended_job_is_not_an_error() {
    let server = TestServer::start();
    let id = server.start_job(&["true"]);
    server.wait_for_end(&id);

    let out = server.ok(&["stop", "--output", "json", &id]);

    let status: serde_json::Value = serde_json::from_str(&out).expect("stop JSON");
    assert_eq!(status["state"], "exited", "{status}");
    assert_eq!(status["exit_code"], 0, "{status}");
}

#[test]
fn status_json_has_every_documented_field() {
    let server = TestServer::start();
    let id = server.ok(&[
        "start", "--memory", "64M", "--cpus", "0.5", "--", "sh", "-c", "exit 3",
    ]);
    let id = id.trim_end();
    server.wait_for_end(id);

    let status = server.status_json(id);

    assert_eq!(status["id"], id);
    assert_eq!(status["owner"], "alice");
    assert_eq!(status["command"], "sh");
    assert_eq!(status["args"], serde_json::json!(["-c", "exit 3"]));
    assert_eq!(status["state"], "exited");
    assert_eq!(status["exit_code"], 3);
    assert_eq!(status["signal"], serde_json::Value::Null);
    assert_eq!(status["stop_requested"], false);
    assert!(
        status["started_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{status}"
    );
    assert!(
        status["ended_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{status}"
    );
    assert!(status["cpu_time_seconds"].is_f64(), "{status}");
    assert_eq!(status["working_dir"], "/", "{status}");
    assert!(status["env"].is_object(), "{status}");
    assert!(status["uid"].is_u64(), "{status}");
    assert_eq!(status["output"]["bytes"], 0, "{status}");
    assert_eq!(status["output"]["dropped_bytes"], 0, "{status}");
    assert_eq!(status["note"], serde_json::Value::Null, "{status}");
    assert!(status.get("peak_memory_bytes").is_some(), "{status}");
    assert_eq!(
        status["limits"]["memory_bytes"],
        64 << 20,
        "binary units: {status}"
    );
    assert_eq!(status["limits"]["cpus"], 0.5, "{status}");
    assert_eq!(
        status["limits"]["output_bytes"],
        1 << 30,
        "the server's default output limit: {status}"
    );
}

#[test]
fn list_json_is_an_array_of_statuses() {
    let server = TestServer::start();
    let first = server.start_job(&["sleep", "600"]);
    let second = server.start_job(&["sleep", "600"]);

    let out = server.ok(&["list", "--output", "json"]);

    let jobs: Vec<serde_json::Value> = serde_json::from_str(&out).expect("list JSON");
    let ids: Vec<&str> = jobs.iter().filter_map(|job| job["id"].as_str()).collect();
    assert_eq!(
        ids,
        [first.as_str(), second.as_str()],
        "oldest first: {out}"
    );
    for job in &jobs {
        assert_eq!(job["state"], "running", "{job}");
        assert_eq!(job["owner"], "alice", "{job}");
        assert_eq!(job["command"], "sleep", "{job}");
    }
}

#[test]
fn run_streams_the_output_and_exits_0_on_success() {
    let server = TestServer::start();

    let out = server
        .jobctl()
        .args(["run", "--", "sh", "-c", "echo hello; echo oops >&2"])
        .output()
        .expect("run jobctl");

    assert_eq!(stdout_of(&out), "hello\n");
    let (_, rest) = announced_job(&stderr_of(&out));
    assert_eq!(rest, "oops\n");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn run_announces_the_job_id_on_stderr_for_later_commands() {
    let server = TestServer::start();

    let out = server
        .jobctl()
        .args(["run", "--", "sh", "-c", "exit 3"])
        .output()
        .expect("run jobctl");

    let (id, rest) = announced_job(&stderr_of(&out));
    assert_eq!(rest, "", "nothing else on stderr");
    assert_eq!(stdout_of(&out), "");
    assert_eq!(
        server.status_json(&id)["exit_code"],
        3,
        "the announced id is the job's"
    );
}

#[test]
fn run_quiet_prints_no_job_id() {
    let server = TestServer::start();

    let out = server
        .jobctl()
        .args([
            "run",
            "--quiet",
            "--",
            "sh",
            "-c",
            "echo hello; echo oops >&2",
        ])
        .output()
        .expect("run jobctl");

    assert_eq!(stdout_of(&out), "hello\n");
    assert_eq!(stderr_of(&out), "oops\n");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn run_exits_with_the_jobs_exit_code() {
    let server = TestServer::start();

    let out = server
        .jobctl()
        .args(["run", "--", "sh", "-c", "exit 3"])
        .output()
        .expect("run jobctl");

    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr_of(&out));
    assert_eq!(announced_job(&stderr_of(&out)).1, "");
}

#[test]
fn run_exits_137_when_the_job_is_killed() {
    let server = TestServer::start();

    let out = server
        .jobctl()
        .args(["run", "--", "sh", "-c", "kill -9 $$"])
        .output()
        .expect("run jobctl");

    assert_eq!(out.status.code(), Some(137), "stderr: {}", stderr_of(&out));
    assert_eq!(announced_job(&stderr_of(&out)).1, "");
}

#[test]
fn run_exits_137_when_the_oom_killer_ends_the_job() {
    let server = TestServer::start();

    // tail keeps the current line in memory; /dev/zero has no newline, so it grows until the
    // memory limit bites.
    let out = server
        .jobctl()
        .args(["run", "--memory", "32M", "--", "tail", "/dev/zero"])
        .output()
        .expect("run jobctl");

    assert_eq!(out.status.code(), Some(137), "stderr: {}", stderr_of(&out));
    let jobs: Vec<serde_json::Value> =
        serde_json::from_str(&server.ok(&["list", "--output", "json"])).expect("list JSON");
    assert_eq!(jobs[0]["state"], "oom-killed", "{}", jobs[0]);
}

#[test]
fn run_passes_environment_and_working_directory() {
    let server = TestServer::start();

    let out = server
        .jobctl()
        .args([
            "run",
            "--env",
            "GREETING=hi there",
            "--workdir",
            "/tmp",
            "--",
        ])
        .args(["sh", "-c", "echo \"$GREETING from $PWD\""])
        .output()
        .expect("run jobctl");

    assert_eq!(
        stdout_of(&out),
        "hi there from /tmp\n",
        "stderr: {}",
        stderr_of(&out)
    );
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn ctrl_c_during_run_stops_the_job_and_exits_130() {
    let server = TestServer::start();
    let mut run = server
        .jobctl()
        .args(["run", "--", "sh", "-c", "echo started; exec sleep 600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn jobctl run");
    let stdout = run.stdout.take().expect("stdout");
    let (seen, _stdout) = read_until(stdout, b"started\n", Duration::from_secs(10));
    assert_eq!(seen, b"started\n");

    interrupt(&run);
    let status = wait_with_timeout(&mut run, Duration::from_secs(20));

    assert_eq!(status.code(), Some(130));
    let jobs: Vec<serde_json::Value> =
        serde_json::from_str(&server.ok(&["list", "--output", "json"])).expect("list JSON");
    assert_eq!(jobs[0]["state"], "signaled", "{}", jobs[0]);
    assert_eq!(jobs[0]["stop_requested"], true, "{}", jobs[0]);
}

#[test]
fn run_waits_for_a_job_that_closes_its_output_early() {
    let server = TestServer::start();

    // The output ends long before the job does: run must still report how the job ended.
    let out = server
        .jobctl()
        .args([
            "run",
            "--",
            "sh",
            "-c",
            "echo bye; exec >&- 2>&-; sleep 1; exit 4",
        ])
        .output()
        .expect("run jobctl");

    assert_eq!(stdout_of(&out), "bye\n");
    assert_eq!(out.status.code(), Some(4), "stderr: {}", stderr_of(&out));
}

#[test]
fn wait_prints_the_final_status_and_exits_with_the_jobs_status() {
    let server = TestServer::start();
    let id = server.start_job(&["sh", "-c", "sleep 0.2; exit 5"]);

    let out = server
        .jobctl()
        .args(["wait", "--output", "json", &id])
        .output()
        .expect("run jobctl");

    assert_eq!(out.status.code(), Some(5), "{}", stderr_of(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("wait JSON");
    assert_eq!(status["state"], "exited", "{status}");
    assert_eq!(status["exit_code"], 5, "{status}");
}

#[test]
fn rm_refuses_a_running_job_without_force_and_removes_it_with_force() {
    let server = TestServer::start();
    let running = server.start_job(&["sleep", "600"]);
    let ended = server.start_job(&["true"]);
    server.wait_for_end(&ended);

    let out = server
        .jobctl()
        .args(["rm", &running, &ended])
        .output()
        .expect("run jobctl");

    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert_eq!(stdout_of(&out), format!("{ended}\n"), "the ended one goes");
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains(&format!("jobctl: error: job {running} is still running"))
            && stderr.contains("--force"),
        "{stderr}"
    );
    let removed = server.ok(&["rm", "--force", &running]);
    assert_eq!(removed, format!("{running}\n"));
    for id in [&running, &ended] {
        let out = server
            .jobctl()
            .args(["status", id])
            .output()
            .expect("run jobctl");
        assert_eq!(out.status.code(), Some(1), "{id} still there");
    }
}

#[test]
fn list_state_filters_select_jobs_by_state() {
    let server = TestServer::start();
    let running = server.start_job(&["sleep", "600"]);
    let exited = server.start_job(&["sh", "-c", "exit 3"]);
    server.wait_for_end(&exited);

    let ids = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["list", "--output", "json"];
        all.extend_from_slice(args);
        let out = server.ok(&all);
        let jobs: Vec<serde_json::Value> = serde_json::from_str(&out).expect("list JSON");
        jobs.iter()
            .filter_map(|j| j["id"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(ids(&["--state", "running"]), std::slice::from_ref(&running));
    assert_eq!(ids(&["--state", "exited"]), std::slice::from_ref(&exited));
    assert_eq!(
        ids(&["--state", "exited", "--state", "running"]),
        [running, exited]
    );
    assert!(ids(&["--state", "oom-killed"]).is_empty());
}
