//! What a job runs and the resources it may use, validated before anything is created.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The most arguments a command may have.
pub const MAX_ARGS: usize = 4096;
/// The most environment variables a job may be given.
pub const MAX_ENV: usize = 1024;
/// The most bytes of program, arguments and environment together (each with its NUL).
pub const MAX_TOTAL_BYTES: usize = 1 << 20;
/// The longest single argument or `KEY=VALUE` environment entry, NUL included: the kernel's
/// `MAX_ARG_STRLEN` (32 pages), above which `execve` fails with E2BIG.
pub const MAX_ARG_BYTES: usize = 128 * 1024;
/// The longest program or working directory path.
pub const MAX_PATH_BYTES: usize = 4096;

/// What to run: an executable, its arguments, its environment and working directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSpec {
    /// An absolute path, or a name looked up in the job's `PATH`.
    pub program: String,
    /// Arguments after the program name (`argv[1..]`).
    pub args: Vec<String>,
    /// The job's whole environment; a minimal `PATH` is added when absent. Nothing is
    /// inherited from the worker's own environment.
    pub env: Vec<(String, String)>,
    /// Working directory inside the job's filesystem view; `/` when `None`.
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

    /// Rejects what cannot be exec'd: an empty program, NUL bytes, an argument or variable the
    /// kernel would refuse, oversized input, a relative or non-normal working directory.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |why: String| Err(Error::InvalidCommand(why));
        if self.program.is_empty() {
            return bad("the command is empty".into());
        }
        if self.program.len() >= MAX_PATH_BYTES {
            return bad(format!(
                "the command is {} bytes long; the limit is {} bytes",
                self.program.len(),
                MAX_PATH_BYTES - 1
            ));
        }
        if self.args.len() > MAX_ARGS {
            return bad(format!(
                "{} arguments; the limit is {MAX_ARGS}",
                self.args.len()
            ));
        }
        if self.env.len() > MAX_ENV {
            return bad(format!(
                "{} environment variables; the limit is {MAX_ENV}",
                self.env.len()
            ));
        }
        let mut total = self.program.len() + 1;
        for (i, arg) in self.args.iter().enumerate() {
            if arg.contains('\0') {
                return bad(format!("argument {} contains a NUL byte", i + 1));
            }
            if arg.len() >= MAX_ARG_BYTES {
                return bad(format!(
                    "argument {} is {} bytes long; the kernel's limit for one argument is {} bytes",
                    i + 1,
                    arg.len(),
                    MAX_ARG_BYTES - 1
                ));
            }
            total += arg.len() + 1;
        }
        if self.program.contains('\0') {
            return bad("the command contains a NUL byte".into());
        }
        for (key, value) in &self.env {
            let shown: String = key.chars().take(64).collect();
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return bad(format!(
                    "environment variable name {shown:?} is empty or contains '=' or a NUL byte"
                ));
            }
            if value.contains('\0') {
                return bad(format!(
                    "environment variable {shown:?} contains a NUL byte"
                ));
            }
            let entry = key.len() + 1 + value.len();
            if entry >= MAX_ARG_BYTES {
                return bad(format!(
                    "environment variable {shown:?} is {entry} bytes long; the kernel's limit \
                     for one entry is {} bytes",
                    MAX_ARG_BYTES - 1
                ));
            }
            total += entry + 1;
        }
        if total > MAX_TOTAL_BYTES {
            return bad(format!(
                "command, arguments and environment take {total} bytes; the limit is \
                 {MAX_TOTAL_BYTES}"
            ));
        }
        if let Some(dir) = &self.working_dir {
            let bytes = dir.as_os_str().as_encoded_bytes();
            if bytes.len() >= MAX_PATH_BYTES || bytes.contains(&0) {
                return bad(format!(
                    "the working directory is longer than {} bytes or contains a NUL byte",
                    MAX_PATH_BYTES - 1
                ));
            }
            // The bytes, not `Path::components`, which drops "." silently ("/a/./b" has the
            // components of "/a/b").
            let dotted = bytes
                .split(|&b| b == b'/')
                .any(|part| part == b"." || part == b"..");
            if !dir.is_absolute() || dotted {
                // Quoted and shortened like names above: the message goes back to the caller's
                // terminal, and a long path would bury the rule.
                let shown: String = dir.to_string_lossy().chars().take(64).collect();
                return bad(format!(
                    "working directory {shown:?} must be an absolute path without '.' or '..'"
                ));
            }
        }
        Ok(())
    }
}

/// Resource limits of one job. `None` means "the worker's default".
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// CPUs the job may use (0.5 = half of one CPU), enforced as a CFS bandwidth quota.
    pub cpus: Option<f64>,
    /// Memory in bytes; swap is not allowed, so this bounds memory + swap. The job's private
    /// tmpfs mounts (/tmp, ...) are charged to it too.
    pub memory_bytes: Option<u64>,
    /// Bytes per second read from the block devices behind the job's filesystem view.
    pub io_read_bps: Option<u64>,
    /// Bytes per second written to those devices.
    pub io_write_bps: Option<u64>,
    /// Read operations per second on those devices.
    pub io_read_iops: Option<u64>,
    /// Write operations per second on those devices.
    pub io_write_iops: Option<u64>,
    /// Maximum number of processes (and threads) in the job.
    pub pids: Option<u64>,
    /// Most bytes of output the job's log keeps (9 bytes of framing per chunk included);
    /// output past it is counted and dropped.
    pub output_bytes: Option<u64>,
}

/// Below this a job cannot even start its init (the cgroup charges page tables, stacks, libc).
pub const MIN_MEMORY_BYTES: u64 = 4 << 20;
/// The kernel's smallest CFS quota is 1 ms per 100 ms period.
pub const MIN_CPUS: f64 = 0.01;
/// The most CPUs a limit may name (a sanity bound; the worker's own maximum is lower).
pub const MAX_CPUS: f64 = 1024.0;
/// The init and the command are two processes.
pub const MIN_PIDS: u64 = 2;
/// The kernel's `PID_MAX_LIMIT` on 64-bit machines: no system has more pids than this.
pub const MAX_PIDS: u64 = 4 << 20;
/// Larger byte counts would overflow the kernel's page counters.
pub const MAX_BYTES: u64 = 1 << 62;

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
            output_bytes: self.output_bytes.or(defaults.output_bytes),
        }
    }

    /// True when any disk IO limit is set (these need a block device to apply to).
    pub fn has_io(&self) -> bool {
        self.io_read_bps.is_some()
            || self.io_write_bps.is_some()
            || self.io_read_iops.is_some()
            || self.io_write_iops.is_some()
    }

    /// Rejects zero, negative, non-finite and out-of-range values with a message naming the
    /// limit and its range.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |why: String| Err(Error::InvalidLimit(why));
        if let Some(cpus) = self.cpus
            && (!cpus.is_finite() || !(MIN_CPUS..=MAX_CPUS).contains(&cpus))
        {
            return bad(format!(
                "cpus must be between {MIN_CPUS} and {MAX_CPUS}, got {cpus}"
            ));
        }
        if let Some(memory) = self.memory_bytes
            && !(MIN_MEMORY_BYTES..=MAX_BYTES).contains(&memory)
        {
            return bad(format!(
                "memory must be between {} MiB and {MAX_BYTES} bytes, got {memory} bytes",
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
                && !(1..=MAX_BYTES).contains(&v)
            {
                return bad(format!("{name} must be between 1 and {MAX_BYTES}, got {v}"));
            }
        }
        if let Some(pids) = self.pids
            && !(MIN_PIDS..=MAX_PIDS).contains(&pids)
        {
            return bad(format!(
                "pids must be between {MIN_PIDS} and {MAX_PIDS} (the kernel's maximum), got {pids}"
            ));
        }
        if let Some(output) = self.output_bytes
            && output > MAX_BYTES
        {
            return bad(format!(
                "output must be at most {MAX_BYTES} bytes, got {output}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_argument_at_the_kernel_limit_is_refused_with_the_limit() {
        let ok = CommandSpec::new("true", ["x".repeat(MAX_ARG_BYTES - 1)]);
        assert!(ok.validate().is_ok());
        let too_long = CommandSpec::new("true", ["x".repeat(MAX_ARG_BYTES)]);
        let err = too_long.validate().expect_err("refused").to_string();
        assert!(err.contains("131071"), "{err}");
    }

    #[test]
    fn an_environment_entry_at_the_kernel_limit_is_refused() {
        let spec = CommandSpec {
            env: vec![("K".into(), "v".repeat(MAX_ARG_BYTES))],
            ..CommandSpec::new("true", Vec::<String>::new())
        };
        assert!(matches!(spec.validate(), Err(Error::InvalidCommand(_))));
    }

    #[test]
    fn huge_limits_name_their_range() {
        let memory = Limits {
            memory_bytes: Some(u64::MAX),
            ..Limits::default()
        };
        let err = memory.validate().expect_err("refused").to_string();
        assert!(err.contains("between 4 MiB and"), "{err}");
        let pids = Limits {
            pids: Some(5_000_000),
            ..Limits::default()
        };
        let err = pids.validate().expect_err("refused").to_string();
        assert!(err.contains("4194304"), "{err}");
    }

    #[test]
    fn a_working_directory_with_dot_dot_is_refused() {
        let spec = CommandSpec {
            working_dir: Some("/tmp/../etc".into()),
            ..CommandSpec::new("true", Vec::<String>::new())
        };
        assert!(matches!(spec.validate(), Err(Error::InvalidCommand(_))));
    }

    #[test]
    fn a_working_directory_with_a_dot_anywhere_is_refused() {
        for dir in ["/tmp/./x", "/tmp/.", "/.", "./tmp"] {
            let spec = CommandSpec {
                working_dir: Some(dir.into()),
                ..CommandSpec::new("true", Vec::<String>::new())
            };
            let err = spec.validate().expect_err(dir).to_string();
            assert!(err.contains("without '.' or '..'"), "{dir}: {err}");
        }
        let spec = CommandSpec {
            working_dir: Some("/tmp/.cache/..x/x.".into()),
            ..CommandSpec::new("true", Vec::<String>::new())
        };
        assert!(spec.validate().is_ok(), "dots within names are names");
    }

    #[test]
    fn a_refused_working_directory_is_quoted_shortened_in_the_message() {
        let dir = format!("/x\u{1b}/{}/../y", "€".repeat(1300));
        let spec = CommandSpec {
            working_dir: Some(dir.into()),
            ..CommandSpec::new("true", Vec::<String>::new())
        };
        let err = spec.validate().expect_err("refused").to_string();
        assert!(err.len() < 400, "{} bytes: {err}", err.len());
        assert!(!err.contains('\u{1b}'), "{err}");
    }
}
