//! cgroup v1: each controller lives in a hierarchy of its own (or shares one with the
//! controllers co-mounted with it, e.g. `cpu,cpuacct`), and the daemon has a separate cgroup
//! path in each. A job therefore gets one directory per hierarchy, each carrying the limits of
//! the controllers mounted there.
//!
//! Memory hierarchy: v1 once let a cgroup opt out of hierarchical accounting
//! (`memory.use_hierarchy` = 0), in which case a parent's limit did not bound its children and
//! their usage was not charged to it. Since Linux 5.11 the flag is always 1 (writes of 0 fail),
//! which is what the worker assumes: a job's memory is charged to every ancestor, so the
//! daemon's supervisor sees it, and the effective limit is the smallest along the path. On
//! older kernels with the flag cleared on an ancestor, that ancestor's limits ignore the jobs.
//!
//! IO: blkio throttling only sees IO the job submits itself (direct IO, or writeback it forces
//! with fsync). Buffered writes are flushed later by kernel threads charged to the root cgroup
//! and are not throttled; only v2 `io.max` with cgroup writeback limits them.
//!
//! CPU: unlike v2, v1 checks CFS quotas down the tree: the kernel refuses (EINVAL) a cgroup a
//! larger quota (in CPUs) than its parent's, and a parent a smaller one than any child's. So
//! with an aggregate cpu limit on the parent, every job's cpus must stay at or below it, and
//! the parent cannot be lowered below a running job's cpus; both are reported as typed errors.
//!
//! Memory limits keep `memory.limit_in_bytes` <= `memory.memsw.limit_in_bytes` after every
//! write (the kernel refuses anything else), so the order of the two writes depends on whether
//! a limit goes up or down. Lowering a limit below what the cgroup holds makes the kernel
//! reclaim; when it cannot (anonymous memory, no swap) the write fails with EBUSY.

use std::path::Path;
use std::time::Duration;

use super::device::DevNum;
use super::error::{CgroupError, io_error, parse_error};
use super::files::{read, read_keyed, read_u64, write};
use super::hierarchy::{CgroupDir, Controller, Mount, ProcCgroup, resolve_parent};
use super::limits::{CPU_PERIOD_US, CgroupUsage, ParentLimits, cpu_quota_us};
use crate::spec::Limits;

/// The controllers jobs need and their v1 names; all are required.
const CONTROLLERS: [(Controller, &str); 5] = [
    (Controller::Cpu, "cpu"),
    (Controller::Cpuacct, "cpuacct"),
    (Controller::Memory, "memory"),
    (Controller::Io, "blkio"),
    (Controller::Pids, "pids"),
];

/// Present only with swap accounting (CONFIG_MEMCG_SWAP and swap accounting enabled).
const MEMSW_LIMIT: &str = "memory.memsw.limit_in_bytes";

/// Finds each controller's hierarchy and creates the parent of job cgroups in each; co-mounted
/// controllers share one directory.
pub(super) fn prepare(
    parent: &Path,
    mounts: &[Mount],
    own: &[ProcCgroup],
) -> Result<Vec<CgroupDir>, CgroupError> {
    let mut parents: Vec<CgroupDir> = Vec::new();
    // Resolve everything before creating anything, so a missing controller leaves nothing behind.
    for (controller, name) in CONTROLLERS {
        // The first mount wins when a hierarchy is mounted more than once (bind mounts).
        let mount = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == name))
            .ok_or(CgroupError::MissingController(name))?;
        let own_path = &own
            .iter()
            .find(|c| c.has_controller(name))
            .ok_or_else(|| parse_error("/proc/self/cgroup", format!("no {name} hierarchy")))?
            .path;
        let dir = mount.dir_of(&resolve_parent(parent, own_path)?)?;
        match parents.iter_mut().find(|p| p.path == dir) {
            Some(shared) => shared.controllers.push(controller),
            None => parents.push(CgroupDir {
                path: dir,
                controllers: vec![controller],
            }),
        }
    }
    for p in &parents {
        std::fs::create_dir_all(&p.path).map_err(|e| io_error("create", &p.path, e))?;
    }
    Ok(parents)
}

/// Writes `limits` on the parent of job cgroups, in each hierarchy whose controller has one;
/// an unset limit is written as the kernel's "no limit".
pub(super) fn write_parent_limits(
    parents: &[CgroupDir],
    limits: &ParentLimits,
) -> Result<(), CgroupError> {
    for dir in parents {
        let memsw = dir.path.join(MEMSW_LIMIT);
        let current_memsw = if dir.controllers.contains(&Controller::Memory) && memsw.exists() {
            Some(read_number(&memsw)?)
        } else {
            None
        };
        for (file, value) in parent_limit_writes(&dir.controllers, limits, current_memsw) {
            let path = dir.path.join(file);
            write(&path, &value).map_err(|e| match (e.write_errno(), file) {
                (Some(libc::EBUSY), "memory.limit_in_bytes" | MEMSW_LIMIT) => {
                    CgroupError::ParentMemoryBelowUsage {
                        path: dir.path.clone(),
                        limit: limits.memory_bytes.unwrap_or(u64::MAX),
                    }
                }
                (Some(libc::EINVAL), "cpu.cfs_quota_us") => CgroupError::ParentCpuBelowJob {
                    path: dir.path.clone(),
                    cpus: limits.cpus.unwrap_or(f64::INFINITY),
                },
                _ => e,
            })?;
        }
    }
    Ok(())
}

/// The writes, in order, that set the parent's limits in a directory carrying `controllers`.
/// `current_memsw` is the directory's `memory.memsw.limit_in_bytes` if it has one (swap
/// accounting on): it decides which of the two memory limits moves first.
fn parent_limit_writes(
    controllers: &[Controller],
    limits: &ParentLimits,
    current_memsw: Option<u64>,
) -> Vec<(&'static str, String)> {
    /// The kernel's "no limit" for v1 byte and quota files.
    const UNLIMITED: &str = "-1";
    let mut writes = Vec::new();
    for controller in controllers {
        match controller {
            Controller::Cpu => {
                let quota = limits
                    .cpus
                    .map_or(UNLIMITED.to_owned(), |c| cpu_quota_us(c).to_string());
                // The period first: the quota is checked against it.
                writes.push(("cpu.cfs_period_us", CPU_PERIOD_US.to_string()));
                writes.push(("cpu.cfs_quota_us", quota));
            }
            Controller::Memory => {
                let value = limits
                    .memory_bytes
                    .map_or(UNLIMITED.to_owned(), |b| b.to_string());
                match current_memsw {
                    // Going down (or staying): the memory limit first, so it never exceeds memsw.
                    Some(memsw) if limits.memory_bytes.is_some_and(|b| b <= memsw) => {
                        writes.push(("memory.limit_in_bytes", value.clone()));
                        writes.push((MEMSW_LIMIT, value));
                    }
                    // Going up (or to no limit): memsw first, so it is never below the limit.
                    Some(_) => {
                        writes.push((MEMSW_LIMIT, value.clone()));
                        writes.push(("memory.limit_in_bytes", value));
                    }
                    None => {
                        writes.push(("memory.limit_in_bytes", value));
                        // As for a job: keep anonymous memory out of swap. Without a limit
                        // swappiness limits nothing, so it is left as it is.
                        if limits.memory_bytes.is_some() {
                            writes.push(("memory.swappiness", "0".to_owned()));
                        }
                    }
                }
            }
            Controller::Pids => {
                let max = limits.pids.map_or("max".to_owned(), |p| p.to_string());
                writes.push(("pids.max", max));
            }
            Controller::Cpuacct | Controller::Io => {}
        }
    }
    writes
}

/// A number from a single-value limit file, for decisions that must not guess.
fn read_number(path: &Path) -> Result<u64, CgroupError> {
    let text = read(path)?;
    text.trim()
        .parse()
        .map_err(|_| parse_error(path, format!("expected a number, got {text:?}")))
}

/// Writes `limits` into a new job directory; IO limits apply to each device of `io`.
pub(super) fn write_limits(
    dir: &CgroupDir,
    limits: &Limits,
    io: &[DevNum],
) -> Result<(), CgroupError> {
    let has_memsw = dir.path.join(MEMSW_LIMIT).exists();
    for (file, value) in limit_writes(&dir.controllers, limits, io, has_memsw) {
        write(&dir.path.join(file), &value).map_err(|e| match (e.write_errno(), file) {
            (Some(libc::EINVAL), "cpu.cfs_quota_us") => CgroupError::JobCpuAboveParent {
                path: dir.path.clone(),
                cpus: limits.cpus.unwrap_or(f64::INFINITY),
            },
            _ => e,
        })?;
    }
    Ok(())
}

/// The writes, in order, that apply `limits` in a new directory carrying `controllers`.
fn limit_writes(
    controllers: &[Controller],
    limits: &Limits,
    io: &[DevNum],
    has_memsw: bool,
) -> Vec<(&'static str, String)> {
    let mut writes = Vec::new();
    for controller in controllers {
        match controller {
            Controller::Cpu => {
                if let Some(cpus) = limits.cpus {
                    // The period first: the quota is checked against it.
                    writes.push(("cpu.cfs_period_us", CPU_PERIOD_US.to_string()));
                    writes.push(("cpu.cfs_quota_us", cpu_quota_us(cpus).to_string()));
                }
            }
            Controller::Cpuacct => {}
            Controller::Memory => {
                if let Some(bytes) = limits.memory_bytes {
                    // A new cgroup starts with both at "max": the memory limit goes down
                    // first, so it never exceeds memsw; equal values leave no room for swap.
                    writes.push(("memory.limit_in_bytes", bytes.to_string()));
                    if has_memsw {
                        writes.push((MEMSW_LIMIT, bytes.to_string()));
                    } else {
                        // Without swap accounting the best available is to keep the job's
                        // anonymous memory out of swap when the cgroup reclaims.
                        writes.push(("memory.swappiness", "0".to_owned()));
                    }
                }
            }
            Controller::Io => {
                // The throttle files take one device per write.
                for dev in io {
                    let throttles = [
                        ("blkio.throttle.read_bps_device", limits.io_read_bps),
                        ("blkio.throttle.write_bps_device", limits.io_write_bps),
                        ("blkio.throttle.read_iops_device", limits.io_read_iops),
                        ("blkio.throttle.write_iops_device", limits.io_write_iops),
                    ];
                    for (file, value) in throttles {
                        if let Some(value) = value {
                            writes.push((file, format!("{dev} {value}")));
                        }
                    }
                }
            }
            Controller::Pids => {
                if let Some(max) = limits.pids {
                    writes.push(("pids.max", max.to_string()));
                }
            }
        }
    }
    writes
}

/// Usage from the job's directories: `cpuacct.usage` (ns), `memory.max_usage_in_bytes` and the
/// `oom_kill` line of `memory.oom_control` (Linux 4.13+).
pub(super) fn usage(dirs: &[CgroupDir]) -> CgroupUsage {
    let dir_with = |c: Controller| {
        dirs.iter()
            .find(|d| d.controllers.contains(&c))
            .map(|d| &d.path)
    };
    let memory = dir_with(Controller::Memory);
    CgroupUsage {
        cpu_time: dir_with(Controller::Cpuacct)
            .and_then(|d| read_u64(&d.join("cpuacct.usage")))
            .map(Duration::from_nanos)
            .unwrap_or_default(),
        peak_memory_bytes: memory.and_then(|d| read_u64(&d.join("memory.max_usage_in_bytes"))),
        oom_kills: memory
            .and_then(|d| read_keyed(&d.join("memory.oom_control"), "oom_kill"))
            .unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every limit, for the planning tests.
    fn all_limits() -> Limits {
        Limits {
            cpus: Some(1.5),
            memory_bytes: Some(64 << 20),
            io_read_bps: Some(1000),
            io_write_bps: Some(2000),
            io_read_iops: Some(30),
            io_write_iops: Some(40),
            pids: Some(42),
            output_bytes: None,
        }
    }

    const VDA: DevNum = DevNum {
        major: 254,
        minor: 0,
    };

    const LOOP0: DevNum = DevNum { major: 7, minor: 0 };

    /// Every parent limit, for the planning tests.
    fn parent_limits() -> ParentLimits {
        ParentLimits {
            memory_bytes: Some(64 << 20),
            cpus: Some(1.5),
            pids: Some(100),
        }
    }

    /// What `memory.memsw.limit_in_bytes` reads when unlimited (PAGE_COUNTER_MAX pages).
    const MEMSW_MAX: u64 = 9_223_372_036_854_771_712;

    #[test]
    fn memory_limit_precedes_memsw_limit() {
        let writes = limit_writes(&[Controller::Memory], &all_limits(), &[], true);
        assert_eq!(
            writes,
            [
                ("memory.limit_in_bytes", "67108864".to_owned()),
                ("memory.memsw.limit_in_bytes", "67108864".to_owned()),
            ]
        );
    }

    #[test]
    fn swappiness_is_zeroed_without_swap_accounting() {
        let writes = limit_writes(&[Controller::Memory], &all_limits(), &[], false);
        assert_eq!(
            writes,
            [
                ("memory.limit_in_bytes", "67108864".to_owned()),
                ("memory.swappiness", "0".to_owned()),
            ]
        );
    }

    #[test]
    fn co_mounted_cpu_and_cpuacct_get_period_then_quota() {
        let writes = limit_writes(
            &[Controller::Cpu, Controller::Cpuacct],
            &all_limits(),
            &[],
            true,
        );
        assert_eq!(
            writes,
            [
                ("cpu.cfs_period_us", "100000".to_owned()),
                ("cpu.cfs_quota_us", "150000".to_owned()),
            ]
        );
    }

    #[test]
    fn io_throttles_name_the_device_and_skip_unset_limits() {
        let limits = Limits {
            io_write_bps: None,
            ..all_limits()
        };
        let writes = limit_writes(&[Controller::Io], &limits, &[VDA], true);
        assert_eq!(
            writes,
            [
                ("blkio.throttle.read_bps_device", "254:0 1000".to_owned()),
                ("blkio.throttle.read_iops_device", "254:0 30".to_owned()),
                ("blkio.throttle.write_iops_device", "254:0 40".to_owned()),
            ]
        );
    }

    #[test]
    fn no_limits_means_no_writes() {
        let every = [
            Controller::Cpu,
            Controller::Cpuacct,
            Controller::Memory,
            Controller::Io,
            Controller::Pids,
        ];
        assert!(limit_writes(&every, &Limits::default(), &[VDA], true).is_empty());
    }

    #[test]
    fn io_throttles_get_one_line_per_device() {
        let limits = Limits {
            io_read_bps: Some(1000),
            ..Limits::default()
        };
        let writes = limit_writes(&[Controller::Io], &limits, &[VDA, LOOP0], true);
        assert_eq!(
            writes,
            [
                ("blkio.throttle.read_bps_device", "254:0 1000".to_owned()),
                ("blkio.throttle.read_bps_device", "7:0 1000".to_owned()),
            ]
        );
    }

    #[test]
    fn lowering_the_parent_memory_limit_moves_the_memory_limit_before_memsw() {
        let writes = parent_limit_writes(&[Controller::Memory], &parent_limits(), Some(MEMSW_MAX));
        assert_eq!(
            writes,
            [
                ("memory.limit_in_bytes", "67108864".to_owned()),
                ("memory.memsw.limit_in_bytes", "67108864".to_owned()),
            ]
        );
    }

    #[test]
    fn raising_the_parent_memory_limit_moves_memsw_before_the_memory_limit() {
        let writes = parent_limit_writes(&[Controller::Memory], &parent_limits(), Some(32 << 20));
        assert_eq!(
            writes,
            [
                ("memory.memsw.limit_in_bytes", "67108864".to_owned()),
                ("memory.limit_in_bytes", "67108864".to_owned()),
            ]
        );
        let unlimited = ParentLimits::default();
        let writes = parent_limit_writes(&[Controller::Memory], &unlimited, Some(32 << 20));
        assert_eq!(
            writes,
            [
                ("memory.memsw.limit_in_bytes", "-1".to_owned()),
                ("memory.limit_in_bytes", "-1".to_owned()),
            ]
        );
    }

    #[test]
    fn parent_without_swap_accounting_zeroes_swappiness_only_when_limited() {
        let writes = parent_limit_writes(&[Controller::Memory], &parent_limits(), None);
        assert_eq!(
            writes,
            [
                ("memory.limit_in_bytes", "67108864".to_owned()),
                ("memory.swappiness", "0".to_owned()),
            ]
        );
        let writes = parent_limit_writes(&[Controller::Memory], &ParentLimits::default(), None);
        assert_eq!(writes, [("memory.limit_in_bytes", "-1".to_owned())]);
    }

    #[test]
    fn unset_parent_limits_are_written_as_no_limit() {
        let every = [
            Controller::Cpu,
            Controller::Cpuacct,
            Controller::Memory,
            Controller::Io,
            Controller::Pids,
        ];
        let writes = parent_limit_writes(&every, &ParentLimits::default(), Some(MEMSW_MAX));
        assert_eq!(
            writes,
            [
                ("cpu.cfs_period_us", "100000".to_owned()),
                ("cpu.cfs_quota_us", "-1".to_owned()),
                ("memory.memsw.limit_in_bytes", "-1".to_owned()),
                ("memory.limit_in_bytes", "-1".to_owned()),
                ("pids.max", "max".to_owned()),
            ]
        );
        let writes =
            parent_limit_writes(&[Controller::Cpu, Controller::Pids], &parent_limits(), None);
        assert_eq!(
            writes,
            [
                ("cpu.cfs_period_us", "100000".to_owned()),
                ("cpu.cfs_quota_us", "150000".to_owned()),
                ("pids.max", "100".to_owned()),
            ]
        );
    }
}
