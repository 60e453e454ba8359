//! Where files live when nobody says otherwise: the XDG base directories.
//!
//! Both programs need the same answer: `jobworkerd certs init` writes the development PKI to
//! [`default_pki_dir`] and `jobctl` reads it from there. It is outside any repository or working
//! directory on purpose, so that private keys are never committed by accident.

use std::env;
use std::path::PathBuf;

/// How [`default_pki_dir`] reads in help texts and documentation.
pub const DEFAULT_PKI_DIR_HELP: &str =
    "$XDG_DATA_HOME/jobworker/dev-pki, or ~/.local/share/jobworker/dev-pki";

/// `$XDG_DATA_HOME/jobworker/dev-pki`, or `~/.local/share/jobworker/dev-pki` when that
/// variable is unset; `None` if neither it nor `$HOME` is usable.
pub fn default_pki_dir() -> Option<PathBuf> {
    Some(data_home()?.join("jobworker").join("dev-pki"))
}

/// `$XDG_DATA_HOME`, else `~/.local/share`.
pub fn data_home() -> Option<PathBuf> {
    base_dir("XDG_DATA_HOME", ".local/share")
}

/// `$XDG_CONFIG_HOME`, else `~/.config`.
pub fn config_home() -> Option<PathBuf> {
    base_dir("XDG_CONFIG_HOME", ".config")
}

/// The XDG rule: the variable if it holds an absolute path (relative ones are to be ignored),
/// else the fallback below `$HOME`.
fn base_dir(variable: &str, fallback: &str) -> Option<PathBuf> {
    let absolute = |value: Option<std::ffi::OsString>| {
        value.map(PathBuf::from).filter(|path| path.is_absolute())
    };
    absolute(env::var_os(variable))
        .or_else(|| absolute(env::var_os("HOME")).map(|home| home.join(fallback)))
}
