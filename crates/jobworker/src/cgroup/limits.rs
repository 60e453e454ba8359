//! What cgroups are asked to enforce and what they report, before either version turns it into
//! files: [`ParentLimits`] (the aggregate bound on all jobs together), the CFS period and quota
//! arithmetic both versions share, and [`CgroupUsage`]. A job's own limits are
//! [`crate::spec::Limits`].

use std::time::Duration;

use super::error::CgroupError;
use crate::spec::{MIN_CPUS, MIN_MEMORY_BYTES, MIN_PIDS};

/// The CFS period jobs and their parent get, in microseconds (the kernel's default): quotas
/// are fractions of it.
pub(super) const CPU_PERIOD_US: u64 = 100_000;
/// More CPUs than any machine this runs on has; a larger value is a typo.
const MAX_CPUS: f64 = 1024.0;
/// Larger memory limits are typos (and overflow the kernel's signed fields).
const MAX_MEMORY_BYTES: u64 = 1 << 62;

/// Aggregate limits on the parent of job cgroups: every job's usage is charged to the parent
/// too, so these bound all jobs together, whatever each job's own limits say.
///
/// A `None` field means no limit: the kernel's "max" is written explicitly, so that a limit left
/// by an earlier run with other settings does not stick.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ParentLimits {
    /// Memory of all jobs together, in bytes; swap is turned off with it, as for a job.
    pub memory_bytes: Option<u64>,
    /// CPUs all jobs together may use. On cgroup v1 no job may have more than this (the kernel
    /// refuses a child a larger CFS quota than its parent's).
    pub cpus: Option<f64>,
    /// Processes and threads of all jobs together.
    pub pids: Option<u64>,
}

impl ParentLimits {
    /// Rejects values the kernel would refuse or that cannot be meant, naming the limit.
    pub(super) fn validate(&self) -> Result<(), CgroupError> {
        let bad = |why: String| Err(CgroupError::InvalidParentLimit(why));
        if let Some(cpus) = self.cpus
            && (!cpus.is_finite() || !(MIN_CPUS..=MAX_CPUS).contains(&cpus))
        {
            return bad(format!(
                "cpus must be between {MIN_CPUS} and {MAX_CPUS}, got {cpus}"
            ));
        }
        if let Some(memory) = self.memory_bytes
            && !(MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES).contains(&memory)
        {
            return bad(format!(
                "memory must be at least {} MiB, got {memory} bytes",
                MIN_MEMORY_BYTES >> 20
            ));
        }
        if let Some(pids) = self.pids
            && pids < MIN_PIDS
        {
            return bad(format!("pids must be at least {MIN_PIDS}, got {pids}"));
        }
        Ok(())
    }
}

/// The CFS quota for `cpus` CPUs per [`CPU_PERIOD_US`], in microseconds.
pub(super) fn cpu_quota_us(cpus: f64) -> u64 {
    // `Limits::validate` and `ParentLimits::validate` bound cpus to [0.01, 1024]: the product is
    // a small positive number, so the float-to-integer conversion is exact after rounding.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_limits_out_of_range_are_refused_with_the_limit_named() {
        let cases = [
            (
                ParentLimits {
                    cpus: Some(f64::NAN),
                    ..ParentLimits::default()
                },
                "cpus",
            ),
            (
                ParentLimits {
                    cpus: Some(0.001),
                    ..ParentLimits::default()
                },
                "cpus",
            ),
            (
                ParentLimits {
                    memory_bytes: Some(1 << 20),
                    ..ParentLimits::default()
                },
                "memory",
            ),
            (
                ParentLimits {
                    pids: Some(1),
                    ..ParentLimits::default()
                },
                "pids",
            ),
        ];
        for (limits, named) in cases {
            match limits.validate() {
                Err(e @ CgroupError::InvalidParentLimit(_)) => {
                    assert!(e.to_string().contains(named), "{e}")
                }
                other => panic!("{limits:?} gave {other:?}"),
            }
        }
        let fine = ParentLimits {
            memory_bytes: Some(1 << 30),
            cpus: Some(1.5),
            pids: Some(1000),
        };
        assert!(fine.validate().is_ok());
        assert!(ParentLimits::default().validate().is_ok());
    }
}
