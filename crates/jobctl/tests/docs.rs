//! Documentation generated from the command line: completion scripts and manual pages.

mod common;

use common::{jobctl, stderr_of, stdout_of};

#[test]
fn completion_scripts_know_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let out = jobctl()
            .args(["completion", shell])
            .output()
            .expect("run jobctl");

        assert_eq!(out.status.code(), Some(0), "{shell}: {}", stderr_of(&out));
        let script = stdout_of(&out);
        for word in [
            "start",
            "stop",
            "status",
            "list",
            "logs",
            "run",
            "config",
            "use-context",
            // Flags: `--server` in bash and zsh, `-l server` in fish.
            "server",
            "pki-dir",
        ] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
        assert!(
            !script.contains("man-pages"),
            "{shell}: hidden commands stay hidden"
        );
    }
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    let out = jobctl()
        .args(["completion", "cmd.exe"])
        .output()
        .expect("run jobctl");

    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn man_pages_are_written_for_every_visible_command() {
    let dir = tempfile::tempdir().expect("tempdir");

    let out = jobctl()
        .arg("man-pages")
        .arg(dir.path())
        .output()
        .expect("run jobctl");

    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
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
            "jobctl-completion.1",
            "jobctl-config-current-context.1",
            "jobctl-config-delete-context.1",
            "jobctl-config-get-contexts.1",
            "jobctl-config-set-context.1",
            "jobctl-config-use-context.1",
            "jobctl-config.1",
            "jobctl-list.1",
            "jobctl-logs.1",
            "jobctl-rm.1",
            "jobctl-run.1",
            "jobctl-start.1",
            "jobctl-status.1",
            "jobctl-stop.1",
            "jobctl-wait.1",
            "jobctl.1",
        ]
    );
    let main = std::fs::read_to_string(dir.path().join("jobctl.1")).expect("read");
    assert!(main.contains(".TH jobctl 1"), "{main}");
    for word in ["JOBCTL_SERVER", "jobctl\\-config(1)", "strongest first"] {
        assert!(main.contains(word), "jobctl.1 lacks {word}");
    }
}
