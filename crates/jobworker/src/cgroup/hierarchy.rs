//! Where the cgroup hierarchies are and where this process sits in them: the cgroup mounts
//! from `/proc/self/mountinfo`, this process's cgroup per hierarchy from `/proc/self/cgroup`,
//! and the parent of job cgroups resolved from the configured one. Also the two shapes both
//! versions describe a cgroup directory with ([`Controller`], [`CgroupDir`]).
//!
//! Pure parsing and path arithmetic: nothing here writes to cgroupfs.

use std::path::{Component, Path, PathBuf};

use super::error::{CgroupError, parse_error};

/// Where every cgroup hierarchy is mounted on the hosts we support.
pub(super) const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// The controllers jobs use; each version's module maps them to its own names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Controller {
    /// CFS bandwidth (v1 `cpu`, v2 `cpu`).
    Cpu,
    /// CPU time accounting (v1 `cpuacct`; v2 reports it in every cgroup's `cpu.stat`).
    Cpuacct,
    /// Memory limit and OOM accounting (`memory`).
    Memory,
    /// Block IO throttling (v1 `blkio`, v2 `io`).
    Io,
    /// Process count limit (`pids`).
    Pids,
}

/// A cgroup directory and the controllers whose files it carries (on v1 each hierarchy has
/// different ones; on v2 there is one directory with all).
#[derive(Debug, Clone)]
pub(super) struct CgroupDir {
    /// The directory under the cgroup mount.
    pub(super) path: PathBuf,
    /// Controllers whose interface files it has.
    pub(super) controllers: Vec<Controller>,
}

impl CgroupDir {
    /// The child `name` of this directory, carrying the same controllers.
    pub(super) fn child(&self, name: &str) -> CgroupDir {
        CgroupDir {
            path: self.path.join(name),
            controllers: self.controllers.clone(),
        }
    }
}

/// A cgroup mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mount {
    /// The cgroup shown at the mount point, as a path inside its hierarchy (not `/` when a
    /// container runtime bind-mounted a subtree).
    pub(super) root: PathBuf,
    /// Where it is mounted.
    pub(super) mount_point: PathBuf,
    /// `cgroup` (v1) or `cgroup2`.
    pub(super) fstype: String,
    /// Superblock options; on v1 they name the hierarchy's controllers (`rw,cpu,cpuacct`).
    pub(super) super_options: String,
}

impl Mount {
    /// The directory of `cgroup` (a path inside this hierarchy) under the mount point.
    pub(super) fn dir_of(&self, cgroup: &Path) -> Result<PathBuf, CgroupError> {
        let below = cgroup
            .strip_prefix(&self.root)
            .ok()
            .filter(|rest| rest.components().all(|c| matches!(c, Component::Normal(_))));
        match below {
            // Joining "" would append a trailing slash to the path shown in logs.
            Some(rest) if rest.as_os_str().is_empty() => Ok(self.mount_point.clone()),
            Some(rest) => Ok(self.mount_point.join(rest)),
            None => Err(CgroupError::NotVisible {
                cgroup: cgroup.to_owned(),
                mount_point: self.mount_point.clone(),
            }),
        }
    }
}

/// The cgroup mounts listed in mountinfo text (see proc(5)); other mounts are skipped.
pub(super) fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            // "ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS"
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let super_options = right.nth(1)?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some(Mount {
                root: PathBuf::from(unescape_octal(left.get(3)?)),
                mount_point: PathBuf::from(unescape_octal(left.get(4)?)),
                fstype: fstype.to_owned(),
                super_options: super_options.to_owned(),
            })
        })
        .collect()
}

/// Undoes mountinfo's escaping of space, tab, newline and backslash as `\NNN` (octal).
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes
            .get(i + 1..i + 4)
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match code {
            Some(byte) if bytes[i] == b'\\' => {
                out.push(byte);
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of `/proc/self/cgroup`: this process's cgroup in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ProcCgroup {
    /// Hierarchy id; 0 is the v2 hierarchy.
    pub(super) hierarchy: u32,
    /// The hierarchy's controllers, comma-separated (v1), or empty (v2).
    pub(super) controllers: String,
    /// The cgroup, as a path inside the hierarchy.
    pub(super) path: PathBuf,
}

impl ProcCgroup {
    /// True for the v1 hierarchy carrying `controller`.
    pub(super) fn has_controller(&self, controller: &str) -> bool {
        self.controllers.split(',').any(|c| c == controller)
    }
}

/// Parses `/proc/self/cgroup` ("ID:CONTROLLERS:PATH" per line; see cgroups(7)).
pub(super) fn parse_proc_cgroup(text: &str) -> Result<Vec<ProcCgroup>, CgroupError> {
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            parse_proc_cgroup_line(line)
                .ok_or_else(|| parse_error("/proc/self/cgroup", format!("malformed line {line:?}")))
        })
        .collect()
}

/// One "ID:CONTROLLERS:PATH" line (the path may itself contain ':').
fn parse_proc_cgroup_line(line: &str) -> Option<ProcCgroup> {
    let mut fields = line.splitn(3, ':');
    Some(ProcCgroup {
        hierarchy: fields.next()?.parse().ok()?,
        controllers: fields.next()?.to_owned(),
        path: PathBuf::from(fields.next()?),
    })
}

/// The parent of job cgroups as a path inside a hierarchy, from the configured `parent` and the
/// daemon's own cgroup `own` in that hierarchy.
pub(super) fn resolve_parent(parent: &Path, own: &Path) -> Result<PathBuf, CgroupError> {
    let invalid = |reason| CgroupError::InvalidParent {
        parent: parent.to_owned(),
        reason,
    };
    let mut resolved = if parent.is_absolute() {
        PathBuf::from("/")
    } else {
        own.to_owned()
    };
    let mut named = false;
    for component in parent.components() {
        match component {
            Component::Normal(name) => {
                resolved.push(name);
                named = true;
            }
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(invalid("it must not contain \"..\""));
            }
        }
    }
    if !named {
        return Err(invalid(
            "it names no cgroup below the root; use a dedicated one such as \"jobs\"",
        ));
    }
    // Clean-up kills everything below the parent: it must never contain the daemon itself.
    if own.starts_with(&resolved) {
        return Err(invalid(
            "it contains the daemon's own cgroup; use a dedicated one such as \"jobs\"",
        ));
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_yields_cgroup_mounts_with_their_controllers() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
41 31 0:38 /docker/abc /sys/fs/cgroup/with\\040space rw - cgroup2 cgroup2 rw,nsdelegate
";
        let mounts = parse_mountinfo(text);
        assert_eq!(
            mounts,
            [
                Mount {
                    root: "/".into(),
                    mount_point: "/sys/fs/cgroup/cpu,cpuacct".into(),
                    fstype: "cgroup".into(),
                    super_options: "rw,cpu,cpuacct".into(),
                },
                Mount {
                    root: "/docker/abc".into(),
                    mount_point: "/sys/fs/cgroup/with space".into(),
                    fstype: "cgroup2".into(),
                    super_options: "rw,nsdelegate".into(),
                },
            ]
        );
    }

    #[test]
    fn cgroup_paths_map_through_the_mounted_subtree() {
        let mount = Mount {
            root: "/docker/abc".into(),
            mount_point: "/sys/fs/cgroup".into(),
            fstype: "cgroup2".into(),
            super_options: String::new(),
        };
        assert_eq!(
            mount.dir_of(Path::new("/docker/abc")).expect("root"),
            Path::new("/sys/fs/cgroup")
        );
        assert_eq!(
            mount.dir_of(Path::new("/docker/abc/jobs")).expect("child"),
            Path::new("/sys/fs/cgroup/jobs")
        );
        for outside in ["/docker", "/other/jobs", "/docker/abc/../x"] {
            let result = mount.dir_of(Path::new(outside));
            assert!(
                matches!(result, Err(CgroupError::NotVisible { .. })),
                "{outside}: {result:?}"
            );
        }
    }

    #[test]
    fn proc_cgroup_lines_give_each_hierarchy_its_path() {
        let parsed = parse_proc_cgroup("4:memory:/a/b\n2:cpu,cpuacct:/\n0::/svc:with:colons\n")
            .expect("parse");
        assert_eq!(parsed.len(), 3);
        assert!(parsed[1].has_controller("cpuacct") && !parsed[1].has_controller("cpuset"));
        assert_eq!(parsed[0].path, Path::new("/a/b"));
        assert_eq!(
            (parsed[2].hierarchy, parsed[2].path.as_path()),
            (0, Path::new("/svc:with:colons"))
        );
        assert!(parse_proc_cgroup("garbage\n").is_err());
    }

    #[test]
    fn relative_parents_go_below_the_own_cgroup_and_absolute_ones_below_the_root() {
        let own = Path::new("/system.slice/jobworkerd.service");
        assert_eq!(
            resolve_parent(Path::new("jobs"), own).expect("relative"),
            Path::new("/system.slice/jobworkerd.service/jobs")
        );
        assert_eq!(
            resolve_parent(Path::new("/jobworker/jobs"), own).expect("absolute"),
            Path::new("/jobworker/jobs")
        );
        for refused in [
            "",
            "/",
            ".",
            "../jobs",
            "/system.slice",
            "/system.slice/jobworkerd.service",
        ] {
            let result = resolve_parent(Path::new(refused), own);
            assert!(
                matches!(result, Err(CgroupError::InvalidParent { .. })),
                "{refused:?}: {result:?}"
            );
        }
    }
}
