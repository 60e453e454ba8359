//! What jobctl says when something is wrong: one `jobctl: error:` line, a hint where one
//! helps, exit 1 — and clap's usage errors with exit 2. Plus examples in every --help.

mod common;

use common::{Pki, TestServer, assert_failure, closed_port, jobctl, stderr_of, stdout_of};
use jobworker_api::pki::{Ca, Validity};

#[test]
fn an_unreachable_server_is_reported_with_a_hint() {
    let pki = Pki::new();
    let port = closed_port();

    let out = jobctl()
        .arg("--pki-dir")
        .arg(pki.path())
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
    let pki = Pki::new();
    let missing = pki.file("nobody-here.pem");

    let out = jobctl()
        .arg("--pki-dir")
        .arg(pki.path())
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
    let empty = tempfile::tempdir().expect("tempdir");

    // The defaults: ./dev-pki/ca.pem, alice.pem, alice.key relative to the working directory.
    let out = jobctl()
        .current_dir(empty.path())
        .arg("list")
        .output()
        .expect("run jobctl");

    assert_failure(
        &out,
        "jobctl: error: cannot read CA certificate dev-pki/ca.pem: No such file or directory \
         (os error 2)\n\
         hint: create a development PKI with `jobworkerd certs init`, or pass --ca, --cert and \
         --key\n",
    );
}

#[test]
fn a_certificate_from_another_ca_is_refused_by_the_server() {
    let server = TestServer::start();
    let other = Ca::generate("some other CA", Validity::days_from_now(1)).expect("CA");
    let mallory = other
        .issue_client("alice", &[], Validity::days_from_now(1))
        .expect("client certificate");
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("mallory.pem");
    let key = dir.path().join("mallory.key");
    std::fs::write(&cert, &mallory.cert_pem).expect("write cert");
    std::fs::write(&key, &mallory.key_pem).expect("write key");

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
fn every_subcommand_help_shows_examples() {
    for subcommand in ["start", "stop", "status", "list", "logs", "run"] {
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
