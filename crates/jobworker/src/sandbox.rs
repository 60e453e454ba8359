//! What a job's filesystem view is made of, checked once when the worker starts.
//!
//! The view itself is assembled by each job's init (see `init/root.rs`); this module validates
//! the operator's configuration so that a mistake is a start-up error, not a failure of every
//! job: paths absolute and normal, bind targets outside every other bind (so the init never
//! creates a directory on a host filesystem), nothing reserved (/proc, /sys, /dev), and the
//! daemon's secrets out of sight: its state directory must not be visible, and the directories
//! holding its key files are hidden behind an empty tmpfs.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use crate::Error;
use crate::cgroup::{self, DevNum};
use crate::protocol::Bind;

/// Host paths a job sees read-only by default, where they exist: the programs and libraries of
/// the host and its configuration (the same list as Nomad's `chroot_env`, minus
/// `/run/resolvconf`: jobs have no network but `lo`).
pub const DEFAULT_RO_PATHS: [&str; 7] =
    ["/bin", "/etc", "/lib", "/lib32", "/lib64", "/sbin", "/usr"];

/// Paths of the view the init mounts itself.
const RESERVED_TARGETS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// The operator's choices for every job's filesystem view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Host paths visible read-only at the same path (missing ones are skipped).
    pub ro_paths: Vec<PathBuf>,
    /// Further host paths, read-only or writable, at a path of the operator's choosing.
    /// Writable binds are shared by every job: use them for data meant to be shared.
    pub binds: Vec<Bind>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            ro_paths: DEFAULT_RO_PATHS.iter().map(PathBuf::from).collect(),
            binds: Vec::new(),
        }
    }
}

/// A validated configuration, with what the worker derives from it.
#[derive(Debug, Clone)]
pub(crate) struct Sandbox {
    pub(crate) ro_paths: Vec<PathBuf>,
    pub(crate) binds: Vec<Bind>,
    /// Directories of the view to hide (they hold the daemon's key files).
    pub(crate) hidden: Vec<PathBuf>,
    /// The whole-disk block devices behind the view, which IO limits apply to.
    pub(crate) io_devices: Vec<DevNum>,
}

fn config_error(why: String) -> Error {
    Error::Config(why)
}

/// A path that is absolute and has no `.` or `..`, and is not `/` itself.
fn check_path(what: &str, path: &Path) -> Result<(), Error> {
    let normal = path
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !path.is_absolute() || !normal || path.to_str().is_none() {
        return Err(config_error(format!(
            "{what} {} must be an absolute UTF-8 path without '.' or '..'",
            path.display()
        )));
    }
    if path == Path::new("/") {
        return Err(config_error(format!(
            "{what} / would show the whole host filesystem to every job"
        )));
    }
    Ok(())
}

/// Validates `config`. `state_dir` must not be visible to jobs; the directories holding
/// `secrets` (the daemon's key files) are hidden.
pub(crate) fn prepare(
    config: &SandboxConfig,
    state_dir: &Path,
    secrets: &[PathBuf],
) -> Result<Sandbox, Error> {
    // (host path, path in the view) of everything visible.
    let mut visible: Vec<(PathBuf, PathBuf)> = Vec::new();
    for path in &config.ro_paths {
        check_path("read-only path", path)?;
        visible.push((path.clone(), path.clone()));
    }
    for bind in &config.binds {
        check_path("bind source", &bind.source)?;
        check_path("bind target", &bind.target)?;
        if !bind.source.exists() {
            return Err(config_error(format!(
                "bind source {} does not exist",
                bind.source.display()
            )));
        }
        if RESERVED_TARGETS.iter().any(|r| bind.target.starts_with(r)) {
            return Err(config_error(format!(
                "bind target {} is inside /proc, /sys or /dev, which the job's init mounts itself",
                bind.target.display()
            )));
        }
        // The init creates the mount point on its own tmpfs; inside another bind it would
        // have to create it on a host filesystem.
        if let Some((_, other)) = visible
            .iter()
            .find(|(_, view)| bind.target.starts_with(view) || view.starts_with(&bind.target))
        {
            return Err(config_error(format!(
                "bind target {} overlaps {}, which is already in the view",
                bind.target.display(),
                other.display()
            )));
        }
        visible.push((bind.source.clone(), bind.target.clone()));
    }
    let state_dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_owned());
    if let Some((host, _)) = visible.iter().find(|(host, _)| state_dir.starts_with(host)) {
        return Err(config_error(format!(
            "the state directory {} would be visible to jobs through {}; move it or the bind",
            state_dir.display(),
            host.display()
        )));
    }
    let mut hidden = BTreeSet::new();
    for secret in secrets {
        let secret = std::fs::canonicalize(secret).unwrap_or_else(|_| secret.clone());
        let Some(dir) = secret.parent() else { continue };
        for (host, view) in &visible {
            let Ok(rest) = dir.strip_prefix(host) else {
                continue;
            };
            if rest.as_os_str().is_empty() {
                return Err(config_error(format!(
                    "{} would be visible to jobs, and its directory {} is itself part of their \
                     view; keep key files in a directory of their own (e.g. /etc/jobworker)",
                    secret.display(),
                    dir.display()
                )));
            }
            hidden.insert(view.join(rest));
        }
    }
    let mut io_devices = Vec::new();
    for (host, _) in &visible {
        // Symlinks (/bin -> usr/bin) add no device of their own; filesystems without a block
        // device (tmpfs, proc) cannot be throttled.
        let is_link = std::fs::symlink_metadata(host).is_ok_and(|m| m.file_type().is_symlink());
        if is_link || !host.exists() {
            continue;
        }
        if let Ok(dev) = cgroup::block_device_of(host)
            && !io_devices.contains(&dev)
        {
            io_devices.push(dev);
        }
    }
    Ok(Sandbox {
        ro_paths: config.ro_paths.clone(),
        binds: config.binds.clone(),
        hidden: hidden.into_iter().collect(),
        io_devices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(source: &str, target: &str) -> Bind {
        Bind {
            source: source.into(),
            target: target.into(),
            writable: false,
        }
    }

    #[test]
    fn io_limits_apply_to_the_block_devices_behind_the_view() {
        let sandbox = prepare(
            &SandboxConfig::default(),
            Path::new("/var/lib/jobworker"),
            &[],
        )
        .expect("ok");
        // /usr is on a disk on most hosts (not in the test guest, which runs from a tmpfs).
        match cgroup::block_device_of(Path::new("/usr")) {
            Ok(dev) => assert!(
                sandbox.io_devices.contains(&dev),
                "{:?}",
                sandbox.io_devices
            ),
            Err(_) => assert!(!sandbox.io_devices.contains(&DevNum { major: 0, minor: 0 })),
        }
    }

    #[test]
    fn a_visible_state_directory_is_refused() {
        let shared = tempfile::tempdir().expect("tempdir");
        let state = shared.path().join("state");
        std::fs::create_dir(&state).expect("mkdir");
        let config = SandboxConfig {
            binds: vec![bind(shared.path().to_str().expect("utf-8"), "/data")],
            ..SandboxConfig::default()
        };
        let err = prepare(&config, &state, &[]).expect_err("refused");
        assert!(err.to_string().contains("state directory"), "{err}");
    }

    #[test]
    fn the_directory_of_a_visible_key_is_hidden() {
        let sandbox = prepare(
            &SandboxConfig::default(),
            Path::new("/var/lib/jobworker"),
            &[PathBuf::from("/etc/jobworker/server.key")],
        )
        .expect("ok");
        assert_eq!(sandbox.hidden, [PathBuf::from("/etc/jobworker")]);
    }

    #[test]
    fn a_key_directly_in_a_visible_root_is_refused() {
        let err = prepare(
            &SandboxConfig::default(),
            Path::new("/var/lib/jobworker"),
            &[PathBuf::from("/etc/server.key")],
        )
        .expect_err("refused");
        assert!(err.to_string().contains("directory of their own"), "{err}");
    }

    #[test]
    fn bad_binds_are_refused() {
        let source = tempfile::tempdir().expect("tempdir");
        let source = source.path().to_str().expect("utf-8").to_owned();
        let dotted = format!("{source}/../x");
        for (b, why) in [
            (bind(&source, "/usr/srv"), "overlaps"),
            (bind(&source, "/proc/x"), "/proc"),
            (bind("relative", "/x"), "absolute"),
            (bind(&dotted, "/x"), "absolute"),
            (bind("/does/not/exist", "/x"), "does not exist"),
            (bind("/", "/host"), "whole host"),
        ] {
            let config = SandboxConfig {
                binds: vec![b.clone()],
                ..SandboxConfig::default()
            };
            let err = prepare(&config, Path::new("/var/lib/jobworker"), &[])
                .expect_err("refused")
                .to_string();
            assert!(err.contains(why), "{b:?}: {err}");
        }
    }
}
