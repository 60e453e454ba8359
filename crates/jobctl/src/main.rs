//! jobctl: the command-line client of jobworkerd.
//!
//! # Layout
//!
//! - [`cli`]: flags, subcommands, help texts; every value is validated while parsing.
//! - [`connection`]: which certificate files to use, and the mutual-TLS connection.
//! - [`commands`]: what each subcommand does and which exit status it ends with.
//! - [`stream`]: a job's output copied byte for byte to stdout and stderr.
//! - [`status`]: a job's state as one enum, its display and its shell exit status.
//! - [`output`]: statuses as tables and JSON.
//! - [`error`]: every failure as one `jobctl: error:` line plus an optional hint.
//!
//! Exit statuses: 0 success, 1 error, 2 usage error (clap's own), and for `run` the job's
//! status; 130 after Ctrl-C, 141 when stdout was closed.

mod cli;
mod commands;
mod connection;
mod error;
mod output;
mod status;
mod stream;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::error::Failure;

fn main() -> ExitCode {
    // Usage errors print clap's message and exit 2; --help and --version exit 0.
    let cli = cli::Cli::parse();
    // One thread is plenty for one connection, and keeps blocking writes to stdout ordered
    // with everything else.
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| error::system("cannot start the async runtime", &e))
        .and_then(|runtime| runtime.block_on(commands::execute(cli)));
    match result {
        Ok(code) => code,
        Err(failure) => report(&failure),
    }
}

fn report(failure: &Failure) -> ExitCode {
    // Not eprintln!, which panics when stderr is a closed pipe: the exit status still tells.
    let _ = writeln!(std::io::stderr(), "{failure}");
    ExitCode::FAILURE
}
