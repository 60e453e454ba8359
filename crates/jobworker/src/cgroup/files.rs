//! Reading and writing cgroupfs files the way the kernel expects: whole small files read at
//! once, each value written in a single `write(2)` to an existing file, flat-keyed files
//! ("key value" lines) and `cgroup.procs` pid lists parsed, and the child directories of a
//! cgroup listed.
//!
//! Two flavours of reading: [`read`] and [`read_pids`] return errors for callers that must act
//! on them; [`read_u64`] and [`read_keyed`] return `None` (logged at debug) for usage figures,
//! which are reported as missing rather than failing a job's end.

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::path::Path;

use super::error::{CgroupError, io_error, parse_error};

/// Reads a whole (small) kernel file.
pub(super) fn read(path: impl AsRef<Path>) -> Result<String, CgroupError> {
    let path = path.as_ref();
    fs::read_to_string(path).map_err(|e| io_error("read", path, e))
}

/// Writes `value` to an existing cgroup file in one `write(2)`, as cgroupfs expects.
pub(super) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    // No O_CREAT: a missing file must fail with ENOENT, not be "created" on cgroupfs.
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut file| file.write_all(value.as_bytes()))
        .map_err(|source| CgroupError::Write {
            path: path.to_owned(),
            value: value.to_owned(),
            source,
        })
}

/// Creates a directory unless it exists.
pub(super) fn create_dir_if_missing(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io_error("create", path, e)),
        _ => Ok(()),
    }
}

/// The names of the child directories of `dir` (child cgroups, on cgroupfs). Names that are not
/// UTF-8 are skipped with a warning: no job cgroup is named so.
pub(super) fn child_dir_names(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_error("list", dir, e))? {
        let entry = entry.map_err(|e| io_error("list", dir, e))?;
        let is_dir = entry
            .file_type()
            .map_err(|e| io_error("stat", &entry.path(), e))?
            .is_dir();
        if !is_dir {
            continue;
        }
        match entry.file_name().into_string() {
            Ok(name) => names.push(name),
            Err(name) => {
                tracing::warn!(dir = %dir.display(), ?name, "skipping a child cgroup whose name is not UTF-8")
            }
        }
    }
    Ok(names)
}

/// A number from a single-value cgroup file; `None` (logged at debug) if it is missing or odd.
pub(super) fn read_u64(path: &Path) -> Option<u64> {
    let value = fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    if value.is_none() {
        tracing::debug!(path = %path.display(), "usage file missing or unreadable");
    }
    value
}

/// The value of `key` in a flat-keyed cgroup file ("key value" per line); `None` (logged at
/// debug) if the file or the key is missing.
pub(super) fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok();
    let value = text.as_deref().and_then(|t| keyed_value(t, key));
    if value.is_none() {
        tracing::debug!(path = %path.display(), key, "usage file or key missing");
    }
    value
}

/// The value of `key` in flat-keyed text.
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// The pids listed in a cgroup directory's `cgroup.procs`, in the kernel's order (v1 does not
/// promise it free of duplicates).
pub(super) fn read_pids(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    let path = dir.join("cgroup.procs");
    read(&path)?
        .lines()
        .map(|line| {
            line.trim()
                .parse()
                .map_err(|_| parse_error(&path, format!("bad pid {line:?}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_values_are_found_by_exact_key() {
        let text = "usage_usec 1500\nuser_usec 1000\noom_kill 3\noom_group_kill 1\n";
        assert_eq!(keyed_value(text, "usage_usec"), Some(1500));
        assert_eq!(keyed_value(text, "oom_kill"), Some(3));
        assert_eq!(keyed_value(text, "oom"), None);
    }
}
