//! Run commands as isolated, resource-limited jobs whose output can be followed from the first
//! byte, and which survive the restart of the program that started them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), jobworker::Error> {
//! use jobworker::{CommandSpec, Config, Limits, StateLock, StreamFilter, Worker};
//!
//! let config = Config::default();
//! let lock = StateLock::acquire(&config.state_dir)?;
//! let worker = Worker::new(config, lock).await?;
//! let limits = Limits { memory_bytes: Some(64 << 20), cpus: Some(0.5), ..Limits::default() };
//! let id = worker.start("alice", CommandSpec::new("echo", ["hello"]), limits).await?;
//! let mut output = worker.output(id, StreamFilter::Both, 0)?;
//! while let Some(chunk) = output.next().await? {
//!     print!("{}", String::from_utf8_lossy(&chunk.data));
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`worker`]: the [`Worker`]: the table of jobs, quotas, start, stop, list, remove, and
//!   re-adoption of running jobs after a restart.
//! - `job`: one job — its state, its stop, and how its end is concluded.
//! - `store`: the state directory — lock, per-job records written atomically.
//! - `spawn`: the one `clone3` into new namespaces and the job's cgroup, then exec of the init.
//! - [`init`]: the job's PID 1 and keeper — its filesystem view (`init/root.rs`), the command's
//!   privilege drop and exec (`init/command.rs`), and the loop that copies output into the log,
//!   forwards signals and records the end (`init/keeper.rs`).
//! - `protocol`: the typed contracts between the worker and the init (arguments, status
//!   records, exit record).
//! - `sandbox`: the operator's filesystem-view configuration, validated; `uids`: the uid range
//!   jobs run as; `seccomp`: the syscall filter table.
//! - `output`: the framed log format, its writer (in the init) and readers; `follow`: inotify
//!   notifications that a log grew.
//! - `cgroup`: the job cgroups, on v1 and v2 hierarchies.
//! - `spec`: what to run ([`CommandSpec`]) and its [`Limits`].
//!
//! Programs that use a [`Worker`] must call [`init::run_if_requested`] at the start of `main`
//! if they may serve as the init program (see [`Config::init_program`]).

mod cgroup;
mod error;
mod follow;
pub mod init;
mod job;
mod output;
mod protocol;
mod sandbox;
mod seccomp;
mod spawn;
mod spec;
mod store;
mod uids;
pub mod worker;

pub use cgroup::{CgroupError, CgroupVersion, ParentLimits};
pub use error::{Error, Quota};
pub use job::{JobId, JobState, JobStatus, OutputSummary, ParseJobIdError, StateKind, Usage};
pub use output::{Chunk, OutputError, OutputReader, Stream, StreamFilter};
pub use protocol::Bind;
pub use sandbox::{DEFAULT_RO_PATHS, SandboxConfig};
pub use spec::{CommandSpec, Limits};
pub use uids::IdRange;
pub use worker::{
    Config, DEFAULT_PATH, JobOutput, ListCursor, ListPage, ListQuery, ParseCursorError, StateLock,
    Stats, Worker,
};
