//! Contexts: `jobctl config ...` edits the config file, `--context` picks one, and flags and
//! environment variables still win over it.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Pki, TestServer, closed_port, jobctl, stderr_of, stdout_of};

/// jobctl using the config file `config` (through JOBCTL_CONFIG), run in `cwd`.
fn with_config(config: &Path, cwd: &Path) -> Command {
    let mut command = jobctl();
    command.env("JOBCTL_CONFIG", config).current_dir(cwd);
    command
}

fn run(mut command: Command, args: &[&str]) -> Output {
    command.args(args).output().expect("run jobctl")
}

/// Runs `args`, asserts success, returns stdout.
fn ok(command: Command, args: &[&str]) -> String {
    let out = run(command, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "jobctl {args:?}: {}",
        stderr_of(&out)
    );
    stdout_of(&out)
}

/// The rows of `get-contexts`, split on the column gaps.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|line| {
            line.split("   ")
                .map(|cell| cell.trim().to_owned())
                .filter(|cell| !cell.is_empty())
                .collect()
        })
        .collect()
}

#[test]
fn contexts_are_set_listed_chosen_and_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    let path = |file: &str| dir.path().join(file).display().to_string();
    let jobctl = || with_config(&config, dir.path());

    let created = ok(
        jobctl(),
        &[
            "config",
            "set-context",
            "node1",
            "--server",
            "node1:50051",
            "--ca",
            "ca.pem",
            "--cert",
            "alice.pem",
            "--key",
            "alice.key",
        ],
    );
    assert_eq!(
        created,
        format!("context node1 created in {}\n", config.display())
    );
    ok(
        jobctl(),
        &[
            "config",
            "set-context",
            "dev",
            "--pki-dir",
            "pki",
            "--user",
            "bob",
        ],
    );
    let none = run(jobctl(), &["config", "current-context"]);
    assert_eq!(none.status.code(), Some(1));
    assert_eq!(
        stderr_of(&none),
        format!(
            "jobctl: error: no current context is set in {}\n\
             hint: choose one with `jobctl config use-context NAME`\n",
            config.display()
        )
    );

    assert_eq!(
        ok(jobctl(), &["config", "use-context", "node1"]),
        "current context: node1\n"
    );
    assert_eq!(ok(jobctl(), &["config", "current-context"]), "node1\n");
    let updated = ok(
        jobctl(),
        &["config", "set-context", "node1", "--server", "node1:6000"],
    );
    assert!(
        updated.starts_with("context node1 updated in "),
        "{updated}"
    );
    assert_eq!(
        rows(&ok(jobctl(), &["config", "get-contexts"])),
        [
            ["CURRENT", "NAME", "SERVER", "IDENTITY"]
                .map(String::from)
                .to_vec(),
            vec![
                "dev".to_owned(),
                "(default)".to_owned(),
                format!("bob in {}", path("pki")),
            ],
            vec![
                "*".to_owned(),
                "node1".to_owned(),
                "node1:6000".to_owned(),
                path("alice.pem"),
            ],
        ],
        "relative paths are stored as absolute ones; an update keeps the other settings"
    );
    let mode = fs::metadata(&config).expect("config").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the config file names private keys");

    ok(jobctl(), &["config", "delete-context", "node1"]);
    let after = ok(jobctl(), &["config", "get-contexts"]);
    assert_eq!(rows(&after).len(), 2, "{after}");
    assert_eq!(
        run(jobctl(), &["config", "current-context"]).status.code(),
        Some(1),
        "deleting the current context unsets it"
    );
    let missing = run(jobctl(), &["config", "use-context", "node1"]);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        stderr_of(&missing),
        format!(
            "jobctl: error: no context named \"node1\" in {}\n\
             hint: `jobctl config get-contexts` lists the contexts\n",
            config.display()
        )
    );
}

#[test]
fn set_context_without_settings_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");

    let out = run(
        with_config(&config, dir.path()),
        &["config", "set-context", "empty"],
    );

    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).starts_with("error: set-context needs at least one of --server"),
        "{}",
        stderr_of(&out)
    );
    assert!(!config.exists(), "nothing written");
}

#[test]
fn the_config_file_lives_in_the_xdg_config_dir() {
    let xdg = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let cases: [(&[(&str, &Path)], PathBuf); 2] = [
        (
            &[("XDG_CONFIG_HOME", xdg.path()), ("HOME", home.path())],
            xdg.path().join("jobctl/config.toml"),
        ),
        (
            &[("HOME", home.path())],
            home.path().join(".config/jobctl/config.toml"),
        ),
    ];
    for (env, expected) in cases {
        let mut command = jobctl();
        command.envs(env.iter().copied());

        let out = ok(command, &["config", "set-context", "a", "--server", "a:1"]);

        assert_eq!(
            out,
            format!("context a created in {}\n", expected.display())
        );
        let mode = fs::metadata(&expected)
            .expect("config")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn the_current_context_connects_without_flags_and_context_picks_another() {
    let server = TestServer::start();
    server.start_job(&["sleep", "600"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    let jobctl = || with_config(&config, dir.path());
    let address = server.address();
    let pki = server.pki.dir().to_str().expect("UTF-8 path");
    ok(
        jobctl(),
        &[
            "config",
            "set-context",
            "alice",
            "--server",
            &address,
            "--pki-dir",
            pki,
        ],
    );
    ok(
        jobctl(),
        &[
            "config",
            "set-context",
            "bob",
            "--server",
            &address,
            "--pki-dir",
            pki,
            "--user",
            "bob",
        ],
    );
    ok(jobctl(), &["config", "use-context", "alice"]);

    let alices = ok(jobctl(), &["list", "--output", "json"]);
    let bobs = ok(jobctl(), &["--context", "bob", "list", "--output", "json"]);
    let mut by_env = jobctl();
    by_env.env("JOBCTL_CONTEXT", "bob");
    let bobs_by_env = ok(by_env, &["list", "--output", "json"]);

    assert!(alices.contains("\"owner\": \"alice\""), "{alices}");
    assert_eq!(bobs, "[]\n", "--context bob connects as bob");
    assert_eq!(bobs_by_env, "[]\n", "JOBCTL_CONTEXT=bob connects as bob");
}

#[test]
fn flags_beat_the_environment_which_beats_the_context() {
    let pki = Pki::dev();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    let jobctl = || with_config(&config, dir.path());
    let [from_context, from_env, from_flag] = [closed_port(), closed_port(), closed_port()];
    let pki_dir = pki.dir().to_str().expect("UTF-8 path");
    ok(
        jobctl(),
        &[
            "config",
            "set-context",
            "node",
            "--server",
            &format!("127.0.0.1:{from_context}"),
            "--pki-dir",
            pki_dir,
        ],
    );
    ok(jobctl(), &["config", "use-context", "node"]);
    // Which server jobctl tried shows in its error: nothing listens on any of them.
    let tried = |out: Output| {
        let stderr = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let port = stderr
            .strip_prefix("jobctl: error: cannot connect to 127.0.0.1:")
            .and_then(|rest| rest.split(':').next())
            .unwrap_or_else(|| panic!("not a connection error: {stderr}"));
        port.parse::<u16>().expect("a port")
    };

    let context_only = run(jobctl(), &["list"]);
    let mut env = jobctl();
    env.env("JOBCTL_SERVER", format!("127.0.0.1:{from_env}"));
    let env_over_context = run(env, &["list"]);
    let mut both = jobctl();
    both.env("JOBCTL_SERVER", format!("127.0.0.1:{from_env}"));
    let flag_over_env = run(
        both,
        &["--server", &format!("127.0.0.1:{from_flag}"), "list"],
    );

    assert_eq!(tried(context_only), from_context, "the context's server");
    assert_eq!(
        tried(env_over_context),
        from_env,
        "JOBCTL_SERVER beats the context"
    );
    assert_eq!(
        tried(flag_over_env),
        from_flag,
        "--server beats JOBCTL_SERVER"
    );
}

#[test]
fn a_stronger_user_or_certificate_beats_the_contexts_identity() {
    let server = TestServer::start();
    server.start_job(&["sleep", "600"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    let jobctl = || with_config(&config, dir.path());
    let file = |name: &str| server.pki.path(name).display().to_string();
    // Alice by named files in one context, by PKI directory in the other.
    ok(
        jobctl(),
        &[
            "config",
            "set-context",
            "files",
            "--server",
            &server.address(),
            "--ca",
            &file("ca.pem"),
            "--cert",
            &file("alice.pem"),
            "--key",
            &file("alice.key"),
        ],
    );
    ok(
        jobctl(),
        &[
            "config",
            "set-context",
            "dir",
            "--server",
            &server.address(),
            "--pki-dir",
            &file(""),
        ],
    );
    let owners = |command: Command, args: &[&str]| -> Vec<String> {
        let jobs: Vec<serde_json::Value> =
            serde_json::from_str(&ok(command, args)).expect("list JSON");
        jobs.iter()
            .map(|job| job["owner"].as_str().expect("owner").to_owned())
            .collect()
    };
    let list = ["list", "--output", "json"];

    assert_eq!(
        owners(
            jobctl(),
            &["--context", "files", "list", "--output", "json"]
        ),
        ["alice"]
    );
    assert_eq!(
        owners(jobctl(), &["--context", "dir", "list", "--output", "json"]),
        ["alice"]
    );
    let mut bob_by_flags = jobctl();
    bob_by_flags.args([
        "--context",
        "files",
        "--pki-dir",
        &file(""),
        "--user",
        "bob",
    ]);
    assert!(
        owners(bob_by_flags, &list).is_empty(),
        "--pki-dir and --user beat the context's named files"
    );
    let mut bob_by_env = jobctl();
    bob_by_env
        .env("JOBCTL_CERT", file("bob.pem"))
        .env("JOBCTL_KEY", file("bob.key"))
        .args(["--context", "dir"]);
    assert!(
        owners(bob_by_env, &list).is_empty(),
        "JOBCTL_CERT and JOBCTL_KEY beat the context's PKI directory"
    );
}

#[test]
fn an_unknown_context_is_an_error_with_a_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");

    let out = run(
        with_config(&config, dir.path()),
        &["--context", "nope", "list"],
    );

    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr_of(&out),
        format!(
            "jobctl: error: no context named \"nope\" in {}\n\
             hint: `jobctl config get-contexts` lists the contexts\n",
            config.display()
        )
    );
}

#[test]
fn a_malformed_config_file_is_reported_with_its_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    fs::write(&config, "[contexts.a]\nsever = \"x\"\n").expect("write");

    let out = run(with_config(&config, dir.path()), &["list"]);

    assert_eq!(out.status.code(), Some(1));
    let stderr = stderr_of(&out);
    assert!(
        stderr.starts_with(&format!(
            "jobctl: error: the config file {} is invalid: unknown field `sever`",
            config.display()
        )) && stderr.contains(" at line 2, column 1\n"),
        "{stderr}"
    );
}
