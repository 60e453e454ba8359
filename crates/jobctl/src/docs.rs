//! Documentation generated from the command line's definition, so it cannot drift from it:
//! shell completion scripts and manual pages.

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;
use crate::error::{self, Failure};

/// `jobctl completion SHELL`: the script on stdout.
pub fn completion(shell: Shell) -> Result<ExitCode, Failure> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut visible_command(), "jobctl", &mut script);
    let mut out = io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .map_err(|e| error::write(&e))?;
    Ok(ExitCode::SUCCESS)
}

/// The command line without its hidden subcommands, which the completion generators would
/// otherwise offer like any other. Only what completion needs is kept: the global flags, the
/// visible subcommands (whole, with their own flags and help), the version flag.
fn visible_command() -> clap::Command {
    let full = Cli::command();
    let visible = full
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set())
        .cloned()
        .collect::<Vec<_>>();
    clap::Command::new("jobctl")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .subcommands(visible)
}

/// `jobctl man-pages DIR`: `jobctl.1` and one page per visible subcommand (`jobctl-run.1`,
/// `jobctl-config-use-context.1`, ...).
pub fn man_pages(dir: &Path) -> Result<ExitCode, Failure> {
    fn write(command: clap::Command, dir: &Path) -> io::Result<()> {
        for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
            write(sub.clone(), dir)?;
        }
        clap_mangen::Man::new(command).generate_to(dir)?;
        Ok(())
    }
    let failed = |e: io::Error| {
        error::system(
            &format!("cannot write manual pages to {}", dir.display()),
            &e,
        )
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    // Built once from the top, so that subcommands are named `jobctl-run` and so on.
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    write(command, dir).map_err(failed)?;
    Ok(ExitCode::SUCCESS)
}
