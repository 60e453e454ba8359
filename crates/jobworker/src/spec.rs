//! What a job runs and the resources it may use, validated before anything is created.

use std::path::PathBuf;

use crate::Error;

/// The largest request pieces accepted, so a caller cannot make the worker allocate without bound.
const MAX_ARGS: usize = 4096;
const MAX_ENV: usize = 1024;
const MAX_TOTAL_BYTES: usize = 1 << 20;
const MAX_PATH_BYTES: usize = 4096;

/// What to run: an executable, its arguments, its environment and working directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandSpec {
    /// An absolute path, or a name looked up in the job's `PATH`.
    pub program: String,
    /// Arguments after the program name (`argv[1..]`).
    pub args: Vec<String>,
    /// The job's whole environment; a minimal `PATH` is added when absent. Nothing is
    /// inherited from the worker's own environment.
    pub env: Vec<(String, String)>,
    /// Working directory inside the job; `/` when `None`.
    pub working_dir: Option<PathBuf>,
}

impl CommandSpec {
    /// A spec for `program` with `args`, no environment and the default working directory.
    pub fn new(
        program: impl Into<String>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        CommandSpec {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            ..CommandSpec::default()
        }
    }

    /// Rejects what cannot be exec'd at all: an empty program, NUL bytes, oversized input.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let bad = |why: String| Err(Error::InvalidCommand(why));
        if self.program.is_empty() {
            return bad("the command is empty".into());
        }
        if self.program.len() > MAX_PATH_BYTES {
            return bad(format!("the command is longer than {MAX_PATH_BYTES} bytes"));
        }
        if self.args.len() > MAX_ARGS {
            return bad(format!("more than {MAX_ARGS} arguments"));
        }
        if self.env.len() > MAX_ENV {
            return bad(format!("more than {MAX_ENV} environment variables"));
        }
        let strings = std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .chain(self.env.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]));
        let mut total = 0usize;
        for s in strings {
            if s.contains('\0') {
                return bad(format!("{s:?} contains a NUL byte"));
            }
            total += s.len() + 1;
        }
        if total > MAX_TOTAL_BYTES {
            return bad(format!(
                "command, arguments and environment exceed {MAX_TOTAL_BYTES} bytes"
            ));
        }
        for (key, _) in &self.env {
            if key.is_empty() || key.contains('=') {
                return bad(format!(
                    "environment variable name {key:?} is empty or contains '='"
                ));
            }
        }
        if let Some(dir) = &self.working_dir {
            let bytes = dir.as_os_str().as_encoded_bytes();
            if !dir.is_absolute() {
                return bad(format!(
                    "working directory {} is not an absolute path",
                    dir.display()
                ));
            }
            if bytes.len() > MAX_PATH_BYTES || bytes.contains(&0) {
                return bad("working directory is too long or contains a NUL byte".into());
            }
        }
        Ok(())
    }
}

/// Resource limits of one job. `None` means "the worker's default" (which may itself be none).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// CPUs the job may use (0.5 = half of one CPU), enforced as a CFS bandwidth quota.
    pub cpus: Option<f64>,
    /// Memory in bytes; swap is not allowed, so this bounds memory + swap.
    pub memory_bytes: Option<u64>,
    /// Bytes per second read from the device backing the working directory.
    pub io_read_bps: Option<u64>,
    /// Bytes per second written to the device backing the working directory.
    pub io_write_bps: Option<u64>,
    /// Read operations per second on that device.
    pub io_read_iops: Option<u64>,
    /// Write operations per second on that device.
    pub io_write_iops: Option<u64>,
    /// Maximum number of processes (and threads) in the job.
    pub pids: Option<u64>,
}

/// Below this a job cannot even start its init (the cgroup charges page tables, stacks, libc).
pub const MIN_MEMORY_BYTES: u64 = 4 << 20;
/// The kernel's smallest CFS quota is 1 ms per 100 ms period.
pub const MIN_CPUS: f64 = 0.01;
/// The init and the command are two processes.
pub const MIN_PIDS: u64 = 2;
/// Anything larger is a typo, not a limit (and would overflow the kernel's fields).
const MAX_REASONABLE: u64 = 1 << 62;

impl Limits {
    /// Each field of `self`, or of `defaults` where `self` has none.
    pub fn or(self, defaults: Limits) -> Limits {
        Limits {
            cpus: self.cpus.or(defaults.cpus),
            memory_bytes: self.memory_bytes.or(defaults.memory_bytes),
            io_read_bps: self.io_read_bps.or(defaults.io_read_bps),
            io_write_bps: self.io_write_bps.or(defaults.io_write_bps),
            io_read_iops: self.io_read_iops.or(defaults.io_read_iops),
            io_write_iops: self.io_write_iops.or(defaults.io_write_iops),
            pids: self.pids.or(defaults.pids),
        }
    }

    /// True when any disk IO limit is set (these need a block device to apply to).
    pub fn has_io(&self) -> bool {
        self.io_read_bps.is_some()
            || self.io_write_bps.is_some()
            || self.io_read_iops.is_some()
            || self.io_write_iops.is_some()
    }

    /// Rejects zero, negative, non-finite and absurd values with a message naming the limit.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |why: String| Err(Error::InvalidLimit(why));
        if let Some(cpus) = self.cpus {
            let max = 1024.0;
            if !cpus.is_finite() || !(MIN_CPUS..=max).contains(&cpus) {
                return bad(format!(
                    "cpus must be between {MIN_CPUS} and {max}, got {cpus}"
                ));
            }
        }
        if let Some(memory) = self.memory_bytes
            && !(MIN_MEMORY_BYTES..=MAX_REASONABLE).contains(&memory)
        {
            return bad(format!(
                "memory must be at least {} MiB, got {memory} bytes",
                MIN_MEMORY_BYTES >> 20
            ));
        }
        let io = [
            ("io read bps", self.io_read_bps),
            ("io write bps", self.io_write_bps),
            ("io read iops", self.io_read_iops),
            ("io write iops", self.io_write_iops),
        ];
        for (name, value) in io {
            if let Some(v) = value
                && (v == 0 || v > MAX_REASONABLE)
            {
                return bad(format!("{name} must be a positive number, got {v}"));
            }
        }
        if let Some(pids) = self.pids
            && !(MIN_PIDS..=MAX_REASONABLE).contains(&pids)
        {
            return bad(format!("pids must be at least {MIN_PIDS}, got {pids}"));
        }
        Ok(())
    }
}
