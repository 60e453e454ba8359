//! The block devices IO limits apply to: [`DevNum`], and [`block_device_of`], which finds the
//! whole disk behind the filesystem holding a path (both v1 blkio throttling and v2 `io.max`
//! apply to whole disks, never partitions).

use std::fmt;
use std::fs;
use std::os::linux::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::error::{CgroupError, io_error, parse_error};
use super::files::read;

/// A block device number, whole disk (not a partition).
/// Ordered so that a list of devices can be sorted and deduplicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct DevNum {
    /// The device's major number.
    pub major: u32,
    /// The device's minor number.
    pub minor: u32,
}

impl fmt::Display for DevNum {
    /// The `MAJ:MIN` form cgroup files and sysfs use.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl DevNum {
    /// Parses sysfs's `MAJ:MIN` (a `dev` file), for `path`'s error message.
    pub(super) fn parse(text: &str, path: &Path) -> Result<DevNum, CgroupError> {
        let parsed = text.trim().split_once(':').and_then(|(major, minor)| {
            Some(DevNum {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
            })
        });
        parsed.ok_or_else(|| parse_error(path, format!("expected MAJ:MIN, got {text:?}")))
    }
}

/// The whole-disk device backing the filesystem that holds `path`, for IO limits.
///
/// Both v1 blkio throttling and v2 `io.max` apply to whole disks, not partitions: a partition
/// is mapped to its disk through sysfs.
pub(crate) fn block_device_of(path: &Path) -> Result<DevNum, CgroupError> {
    let dev = fs::metadata(path)
        .map_err(|e| io_error("stat", path, e))?
        .st_dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    // Filesystems without a device (tmpfs, overlay, proc) get anonymous major-0 numbers,
    // which have no sysfs block entry.
    if major == 0 || !sys.exists() {
        return Err(CgroupError::NoBlockDevice {
            path: path.to_owned(),
            major,
            minor,
        });
    }
    if !sys.join("partition").exists() {
        return Ok(DevNum { major, minor });
    }
    // A partition's sysfs directory lives inside its disk's (…/block/vda/vda1).
    let real = fs::canonicalize(&sys).map_err(|e| io_error("read", &sys, e))?;
    let disk_dev = real.with_file_name("dev");
    DevNum::parse(&read(&disk_dev)?, &disk_dev)
}

#[cfg(test)]
mod tests {
    use nix::sys::statfs::{TMPFS_MAGIC, statfs};

    use super::*;

    #[test]
    fn block_device_of_root_is_the_whole_disk_holding_it() {
        let dev = fs::metadata("/").expect("stat /").st_dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        if major == 0 {
            // e.g. an initramfs root in a test VM.
            let result = block_device_of(Path::new("/"));
            assert!(
                matches!(result, Err(CgroupError::NoBlockDevice { .. })),
                "{result:?}"
            );
            return;
        }
        // Found top-down, unlike block_device_of: the disk listing it or one of its partitions.
        let mut owner = None;
        for disk in fs::read_dir("/sys/block").expect("list /sys/block") {
            let disk = disk.expect("list /sys/block").path();
            let disk_dev =
                DevNum::parse(&read(disk.join("dev")).expect("read"), &disk).expect("parse");
            let mut devs = vec![disk_dev];
            for part in fs::read_dir(&disk).expect("list disk").flatten() {
                if part.path().join("partition").exists() {
                    devs.push(
                        DevNum::parse(&read(part.path().join("dev")).expect("read"), &disk)
                            .expect("parse"),
                    );
                }
            }
            if devs.contains(&DevNum { major, minor }) {
                owner = Some(disk_dev);
            }
        }
        let owner = owner.expect("no disk in /sys/block holds /");
        assert_eq!(
            block_device_of(Path::new("/")).expect("block_device_of /"),
            owner
        );
    }

    #[test]
    fn block_device_of_a_tmpfs_is_refused() {
        let tmpfs = ["/dev/shm", "/run", "/tmp"]
            .into_iter()
            .find(|p| statfs(*p).is_ok_and(|s| s.filesystem_type() == TMPFS_MAGIC))
            .expect("no tmpfs at /dev/shm, /run or /tmp");
        let err = block_device_of(Path::new(tmpfs)).expect_err("tmpfs accepted");
        assert!(
            matches!(err, CgroupError::NoBlockDevice { major: 0, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("io limits need a working directory on a block device"),
            "{err}"
        );
    }
}
