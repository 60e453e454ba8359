//! What the jobworker crates' tests share, in one place instead of a copy per crate.
//!
//! Tests only (`publish = false`, a dev-dependency of jobworker-api, jobworkerd and jobctl).
//! Panicking is this crate's error handling: a set-up that fails must fail the test, with a
//! message that says what was being set up.
//!
//! # Layout
//!
//! - [`Pki`]: a throw-away PKI in a temporary directory, made by the same code as
//!   `jobworkerd certs init`, with the TLS configurations built from it.
//! - [`Daemon`]: the real `jobworkerd serve` on a free loopback port, stopped and cleaned up
//!   when dropped, so a failing test leaves no server, job or cgroup behind.
//! - [`eventually`], [`eventually_blocking`]: polling for state that another process or task
//!   changes, instead of sleeping a fixed time.

mod daemon;
mod pki;
mod poll;

pub use daemon::{
    CleanupOnPanic, Daemon, DaemonOptions, cgroups_named, job_cgroups, jobworkerd, random_job_ids,
    remove_cgroup_trees,
};
pub use pki::{Pki, chain_and_key, client_leaf};
pub use poll::{eventually, eventually_blocking};
