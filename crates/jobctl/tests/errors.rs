//! What jobctl says when something is wrong: one `jobctl: error:` line, a hint where one
//! helps, exit 1 — and clap's usage errors with exit 2. Plus examples in every --help.

mod common;

use std::net::TcpListener;

use common::{Pki, TestServer, assert_failure, closed_port, jobctl, stderr_of, stdout_of};

#[test]
fn an_unreachable_server_is_reported_with_a_hint() {
    let pki = Pki::dev();
    let port = closed_port();

    let out = jobctl()
        .arg("--pki-dir")
        .arg(pki.dir())
        .args(["--server", &format!("127.0.0.1:{port}"), "list"])
        .output()
        .expect("run jobctl");

    assert_failure(
        &out,
        &format!(
            "jobctl: error: cannot connect to 127.0.0.1:{port}: Connection refused (os error 111)\n\
             hint: is jobworkerd running and listening there? Choose the server with --server or \
             JOBCTL_SERVER\n"
        ),
    );
}

#[test]
fn a_missing_certificate_file_is_reported_with_the_flag_that_named_it() {
    let pki = Pki::dev();
    let missing = pki.path("nobody-here.pem");

    let out = jobctl()
        .arg("--pki-dir")
        .arg(pki.dir())
        .arg("--cert")
        .arg(&missing)
        .arg("list")
        .output()
        .expect("run jobctl");

    assert_failure(
        &out,
        &format!(
            "jobctl: error: cannot read certificate {}: No such file or directory (os error 2)\n\
             hint: check the file given with --cert (JOBCTL_CERT)\n",
            missing.display()
        ),
    );
}

#[test]
fn a_missing_dev_pki_suggests_creating_one() {
    let data = tempfile::tempdir().expect("tempdir");

    // The defaults: ca.pem, alice.pem, alice.key in $XDG_DATA_HOME/jobworker/dev-pki.
    let out = jobctl()
        .env("XDG_DATA_HOME", data.path())
        .arg("list")
        .output()
        .expect("run jobctl");

    assert_failure(
        &out,
        &format!(
            "jobctl: error: cannot read CA certificate {}/jobworker/dev-pki/ca.pem: No such file \
             or directory (os error 2)\n\
             hint: create a development PKI with `jobworkerd certs init`, or pass --ca, --cert \
             and --key\n",
            data.path().display()
        ),
    );
}

#[test]
fn the_dev_pki_is_found_in_the_xdg_data_dir_without_flags() {
    let server = TestServer::start();
    let data = tempfile::tempdir().expect("tempdir");
    let dev_pki = data.path().join("jobworker/dev-pki");
    std::fs::create_dir_all(dev_pki.parent().expect("parent")).expect("mkdir");
    std::os::unix::fs::symlink(server.pki.dir(), &dev_pki).expect("symlink");

    let out = jobctl()
        .env("XDG_DATA_HOME", data.path())
        .args(["--server", &server.address(), "list", "--output", "json"])
        .output()
        .expect("run jobctl");

    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(stdout_of(&out), "[]\n");
}

#[test]
fn a_certificate_from_another_ca_is_refused_by_the_server() {
    let server = TestServer::start();
    let other = Pki::new("some other CA");
    let (cert, key) = other.write("mallory", &other.client("alice", &[]));

    let out = server
        .jobctl()
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg("list")
        .output()
        .expect("run jobctl");

    assert_failure(
        &out,
        &format!(
            "jobctl: error: the server refused the client certificate {} (TLS alert: UnknownCA)\n\
             hint: the certificate must be issued by the CA the server trusts for clients (its \
             --ca) and be valid now\n",
            cert.display()
        ),
    );
}

#[test]
fn an_unknown_job_is_not_found_with_a_hint_to_list() {
    let server = TestServer::start();
    let unknown = uuid::Uuid::new_v4().to_string();

    for command in ["status", "stop", "logs"] {
        let out = server
            .jobctl()
            .args([command, &unknown])
            .output()
            .expect("run jobctl");

        let stderr = stderr_of(&out);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(
            lines.len(),
            2,
            "{command}: an error line and a hint: {stderr}"
        );
        assert!(
            lines[0].starts_with(&format!("jobctl: error: job {unknown} not found")),
            "{command}: {stderr}"
        );
        assert_eq!(
            lines[1], "hint: `jobctl list` shows the jobs you can see",
            "{command}"
        );
        assert_eq!(out.status.code(), Some(1), "{command}");
        assert_eq!(stdout_of(&out), "", "{command}");
    }
}

#[test]
fn another_users_job_looks_exactly_like_an_unknown_one() {
    let server = TestServer::start();
    let id = server.start_job(&["sleep", "600"]);

    let out = server
        .jobctl()
        .args(["--user", "bob", "status", &id])
        .output()
        .expect("run jobctl");

    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).starts_with(&format!("jobctl: error: job {id} not found")),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn a_command_that_cannot_be_started_is_refused_with_the_servers_reason() {
    let server = TestServer::start();

    for subcommand in ["start", "run"] {
        let out = server
            .jobctl()
            .args([subcommand, "--", "no-such-command-here"])
            .output()
            .expect("run jobctl");

        let stderr = stderr_of(&out);
        assert_eq!(
            stderr.lines().count(),
            1,
            "{subcommand}: one line: {stderr}"
        );
        assert!(
            stderr.starts_with("jobctl: error: "),
            "{subcommand}: {stderr}"
        );
        assert!(
            stderr.contains("no-such-command-here"),
            "{subcommand}: {stderr}"
        );
        assert_eq!(out.status.code(), Some(1), "{subcommand}");
        assert_eq!(
            stdout_of(&out),
            "",
            "{subcommand}: no job id for a job that never was"
        );
    }
    assert_eq!(
        server.ok(&["list", "--output", "json"]),
        "[]\n",
        "no job left behind"
    );
}

#[test]
fn requests_above_the_nodes_capacity_are_refused_naming_it() {
    let server = TestServer::start();

    for (flag, value, what) in [("--cpus", "100", "cpus 100"), ("--memory", "1T", "memory")] {
        let out = server
            .jobctl()
            .args(["start", flag, value, "--", "true"])
            .output()
            .expect("run jobctl");

        let stderr = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{flag}: {stderr}");
        assert!(
            stderr.starts_with(&format!("jobctl: error: invalid limit: {what}"))
                && stderr.contains("is above this node's maximum of"),
            "{flag}: {stderr}"
        );
    }
    assert_eq!(server.ok(&["list", "--output", "json"]), "[]\n");
}

#[test]
fn usage_errors_exit_2_without_contacting_a_server() {
    let cases: [&[&str]; 6] = [
        &["start"],
        &["--bogus", "list"],
        &["run", "--memory", "lots", "--", "true"],
        &["run", "--cpus", "0", "--", "true"],
        &["logs", "--stdout", "--stderr", "some-id"],
        &["list", "--output", "yaml"],
    ];
    for args in cases {
        // No server and no PKI: parsing fails before either is needed.
        let out = jobctl().args(args).output().expect("run jobctl");

        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr_of(&out));
        assert!(
            stderr_of(&out).starts_with("error: "),
            "{args:?}: {}",
            stderr_of(&out)
        );
        assert_eq!(stdout_of(&out), "", "{args:?}");
    }
}

#[test]
fn a_malformed_job_id_is_a_usage_error_before_any_connection() {
    // A server that would notice being contacted: a listener nobody accepts on.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let server = listener.local_addr().expect("address").to_string();

    for args in [
        &["status", "not-a-job-id"][..],
        &["stop", "42"],
        &["logs", "7f9c1e2a-3b4d-4e5f-8a6b"],
    ] {
        let out = jobctl()
            .args(["--server", &server])
            .args(args)
            .output()
            .expect("run jobctl");

        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr_of(&out));
        assert!(
            stderr_of(&out).starts_with(&format!(
                "error: invalid value '{}' for '<ID>': expected a job id such as",
                args[1]
            )),
            "{args:?}: {}",
            stderr_of(&out)
        );
        assert_eq!(stdout_of(&out), "", "{args:?}");
    }
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("jobctl connected to the server: {other:?}"),
    }
}

#[test]
fn every_subcommand_help_shows_examples() {
    for subcommand in [
        "start",
        "stop",
        "status",
        "list",
        "logs",
        "run",
        "config",
        "completion",
    ] {
        let out = jobctl()
            .args([subcommand, "--help"])
            .output()
            .expect("run jobctl");

        assert_eq!(out.status.code(), Some(0), "{subcommand}");
        let help = stdout_of(&out);
        assert!(
            help.contains("\nExamples:\n  jobctl "),
            "{subcommand} --help:\n{help}"
        );
    }
    let help = stdout_of(&jobctl().arg("--help").output().expect("run jobctl"));
    assert!(help.contains("\nExamples:\n"), "jobctl --help:\n{help}");
}

#[test]
fn io_limit_help_warns_about_cgroup_v1() {
    let help = stdout_of(
        &jobctl()
            .args(["run", "--help"])
            .output()
            .expect("run jobctl"),
    );

    for flag in ["--io-write-bps", "--io-write-iops"] {
        let line = help
            .lines()
            .find(|line| line.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("{flag} missing from:\n{help}"));
        assert!(
            line.contains("On cgroup v1 hosts only direct (O_DIRECT) and fsync'd"),
            "{line}"
        );
    }
}
