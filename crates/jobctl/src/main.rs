//! jobctl: the command-line client of jobworkerd.
//!
//! # Layout
//!
//! - [`cli`]: flags, subcommands, help texts; every value is validated while parsing.
//! - [`config`]: the config file of named contexts (server and certificates each).
//! - [`settings`]: which server and certificate files to use: flags, environment, context,
//!   defaults.
//! - [`connection`]: the mutual-TLS connection the settings describe.
//! - [`commands`]: what each job subcommand does and which exit status it ends with.
//! - [`contexts`]: `jobctl config ...`, listing and editing contexts.
//! - [`docs`]: shell completion scripts and manual pages, generated from [`cli`].
//! - [`stream`]: a job's output copied byte for byte to stdout and stderr.
//! - [`status`]: a job's state as one enum, its display and its shell exit status.
//! - [`output`]: statuses as tables and JSON.
//! - [`error`]: every failure as one `jobctl: error:` line plus an optional hint.
//!
//! Data flows one way: `cli` → `config` → `settings` → `error` → `connection` → `commands`.
//!
//! Exit statuses: 0 success, 1 error, 2 usage error (clap's own), and for `run` the job's
//! status; 130 after Ctrl-C, 141 when stdout was closed.

mod cli;
mod commands;
mod config;
mod connection;
mod contexts;
mod docs;
mod error;
mod output;
mod settings;
mod status;
mod stream;

use std::io::Write;
use std::process::ExitCode;

use crate::cli::{Cli, Command, ConnectionArgs, JobCommand};
use crate::error::Failure;
use crate::settings::Settings;

fn main() -> ExitCode {
    // Usage errors print clap's message and exit 2; --help and --version exit 0.
    let cli = Cli::parse_with_sources();
    let result = match cli.command {
        Command::Job(command) => job(&cli.connection, command),
        Command::Config(command) => contexts::execute(command, &cli.connection),
        Command::Completion { shell } => docs::completion(shell),
        Command::ManPages { dir } => docs::man_pages(&dir),
    };
    match result {
        Ok(code) => code,
        Err(failure) => report(&failure),
    }
}

/// Decides where to connect, connects, and runs a job subcommand.
fn job(args: &ConnectionArgs, command: JobCommand) -> Result<ExitCode, Failure> {
    let settings = Settings::resolve(args).map_err(|e| error::settings(&e))?;
    // One thread is plenty for one connection, and keeps blocking writes to stdout ordered
    // with everything else.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| error::system("cannot start the async runtime", &e))
        .and_then(|runtime| runtime.block_on(commands::execute(&settings, command)))
}

fn report(failure: &Failure) -> ExitCode {
    // Not eprintln!, which panics when stderr is a closed pipe: the exit status still tells.
    let _ = writeln!(std::io::stderr(), "{failure}");
    ExitCode::FAILURE
}
