//! Run commands as isolated, resource-limited jobs whose output can be followed from the first
//! byte.
//!
//! ```no_run
//! # async fn demo() -> Result<(), jobworker::Error> {
//! use jobworker::{CommandSpec, Config, Limits, StreamFilter, Worker};
//!
//! let worker = Worker::new(Config::default())?;
//! let limits = Limits { memory_bytes: Some(64 << 20), cpus: Some(0.5), ..Limits::default() };
//! let id = worker.start("alice", CommandSpec::new("echo", ["hello"]), limits).await?;
//! let mut output = worker.output(id, StreamFilter::Both)?;
//! while let Some(chunk) = output.next().await? {
//!     print!("{}", String::from_utf8_lossy(&chunk.data));
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`worker`]: the [`Worker`], a table of jobs and the operations on it.
//! - `job`: one job — its state, its stop, and the supervisor thread that runs it.
//! - `spawn`: the one `clone3` into new namespaces and the job's cgroup, then exec of the init.
//! - [`init`]: the job's PID 1 — mounts, hostname, network, privilege drop, exec of the command,
//!   signal forwarding and reaping.
//! - `protocol`: the status records the init sends back to the worker.
//! - `output`: the per-job append-only log, its writer and its readers.
//! - `cgroup`: the job cgroups, on v1 and v2 hierarchies.
//! - `spec`: what to run ([`CommandSpec`]) and its [`Limits`].
//!
//! Programs that use a [`Worker`] must call [`init::run_if_requested`] at the start of `main`:
//! each job's init is the program itself, re-executed.

mod cgroup;
mod error;
pub mod init;
mod job;
mod output;
mod protocol;
mod spawn;
mod spec;
pub mod worker;

pub use cgroup::{CgroupError, CgroupVersion};
pub use error::Error;
pub use job::{JobId, JobState, JobStatus, ParseJobIdError, Usage};
pub use output::{Chunk, OutputError, OutputReader, Stream, StreamFilter};
pub use spec::{CommandSpec, Limits};
pub use worker::{Config, Worker};
