//! What the numbers were measured on: without it, a number means nothing.

use std::path::Path;

/// The machine, as far as it bounds the figures.
pub struct Machine {
    /// CPUs this process may run on.
    pub cpus: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// `MemTotal` from `/proc/meminfo`, in bytes.
    pub memory: u64,
    /// The kernel release.
    pub kernel: String,
    /// Which cgroup hierarchy the daemon will use.
    pub cgroup: String,
    /// The 1-minute load average when the run began: other work on a shared machine.
    pub load_at_start: String,
    /// The file system the daemons' state directories are on, e.g. "ext4 on /dev/vda": what
    /// an fsync and a cold read cost depends on it.
    pub state_fs: String,
}

impl Machine {
    /// Reads the description from `/proc` and `/sys`; unknown parts say "unknown".
    pub fn describe() -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let memory = read("/proc/meminfo")
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kib| kib.trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024);
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            memory,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            cgroup: cgroup_version(),
            load_at_start: load_average(),
            state_fs: file_system_of(Path::new(crate::server::STATE_PARENT)),
        }
    }
}

/// "TYPE on DEVICE" of the mount holding `path` (the longest mount point that contains it).
fn file_system_of(path: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (device, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(point)
                .then(|| (point.len(), format!("{kind} on {device}")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".to_owned(), |(_, fs)| fs)
}

/// The 1-minute load average now.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// v2 when `/sys/fs/cgroup` is a cgroup2 file system (as the daemon decides), else v1,
/// "hybrid" when a v2 tree is mounted beside the v1 controllers.
fn cgroup_version() -> String {
    match nix::sys::statfs::statfs("/sys/fs/cgroup") {
        Ok(fs) if fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => "v2".to_owned(),
        Ok(_) if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() => {
            "v1 (hybrid: controllers on v1, an empty v2 tree at /sys/fs/cgroup/unified)".to_owned()
        }
        Ok(_) => "v1".to_owned(),
        Err(e) => format!("unknown ({e})"),
    }
}
