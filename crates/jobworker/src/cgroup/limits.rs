//! What cgroups are asked to enforce and what they report, before either version turns it into
//! files: the CFS period and quota arithmetic both versions share, and [`CgroupUsage`]. A job's
//! limits are [`crate::spec::Limits`].

use std::time::Duration;

/// The CFS period jobs get, in microseconds (the kernel's default): quotas are fractions of it.
pub(super) const CPU_PERIOD_US: u64 = 100_000;

/// The CFS quota for `cpus` CPUs per [`CPU_PERIOD_US`], in microseconds.
pub(super) fn cpu_quota_us(cpus: f64) -> u64 {
    // `Limits::validate` bounds cpus to [0.01, 1024]: the product is a small positive number,
    // so the float-to-integer conversion is exact after rounding.
    (cpus * CPU_PERIOD_US as f64).round() as u64
}

/// What a job used, for its status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CgroupUsage {
    /// CPU time of all its processes (user + system).
    pub cpu_time: Duration,
    /// Highest memory use; `None` where the kernel does not track it (v2 before 5.19).
    pub peak_memory_bytes: Option<u64>,
    /// Processes of the job killed by the OOM killer.
    pub oom_kills: u64,
}
