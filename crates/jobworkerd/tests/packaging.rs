//! The files in packaging/ stay true to the daemon they configure.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const JOBWORKERD: &str = env!("CARGO_BIN_EXE_jobworkerd");

fn packaging_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../packaging")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The `JOBWORKER_*` variables `jobworkerd serve` reads, from its `--help`.
fn serve_variables() -> BTreeSet<String> {
    let mut command = Command::new(JOBWORKERD);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("JOBWORKER_") {
            command.env_remove(name);
        }
    }
    let out = command
        .args(["serve", "--help"])
        .output()
        .expect("run jobworkerd serve --help");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).expect("UTF-8 help");
    help.split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split('=').next())
        .map(str::to_owned)
        .collect()
}

/// `JOBWORKER_*` names at the start of a line (after an optional `#`), as assigned in an
/// environment file or a unit's `Environment=`.
fn assigned_variables(text: &str, prefix: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.trim_start_matches('#').strip_prefix(prefix))
        .filter(|rest| rest.starts_with("JOBWORKER_"))
        .filter_map(|rest| rest.split('=').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_default_settings_file_covers_exactly_the_serve_flags() {
    let file = assigned_variables(&packaging_file("jobworkerd.default"), "");
    let serve = serve_variables();

    assert!(serve.len() >= 10, "serve's variables: {serve:?}");
    assert_eq!(
        file, serve,
        "packaging/jobworkerd.default must list every `serve` flag's variable, and no other"
    );
}

#[test]
fn the_unit_runs_serve_and_sets_only_real_variables() {
    let unit = packaging_file("jobworkerd.service");
    let set = assigned_variables(&unit, "Environment=");

    assert!(
        unit.lines()
            .any(|l| l == "ExecStart=/usr/bin/jobworkerd serve"),
        "{unit}"
    );
    assert!(!set.is_empty());
    assert!(
        set.is_subset(&serve_variables()),
        "unknown variables in {set:?}"
    );
    for line in [
        "Type=notify",
        "Delegate=yes",
        "KillMode=process",
        "TasksMax=infinity",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
}
