//! The contracts between the worker (inside the daemon) and a job's init (a separate process,
//! possibly outliving the daemon that started it):
//!
//! - [`InitArgs`]: what the init is told to do, passed as its `argv`;
//! - [`StatusRecord`]: what the init reports on the status pipe while the job starts — ready,
//!   or which step failed with which errno;
//! - [`ExitRecord`]: how the job ended, written by the init into the job's directory as its last
//!   act, so that a daemon started later still learns the exact outcome;
//! - the file descriptor numbers the init receives ([`STATUS_FD`] and the rest).
//!
//! Every type here round-trips through its encoding and rejects malformed input with a typed
//! error; none of it needs privileges, so the unit tests below run anywhere.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `argv[0]` that makes [`crate::init::run_if_requested`] run the init.
pub const INIT_ARG0: &str = "jobworker-init";

/// The init's standard input, output and error are `/dev/null`: it never prints.
/// Fd 3: the write end of the status pipe ([`StatusRecord`]s).
pub(crate) const STATUS_FD: i32 = 3;
/// Fd 4: the job's output log, open for writing; the init appends frames to it.
pub(crate) const LOG_FD: i32 = 4;
/// Fd 5: the job's directory, where the init leaves its [`ExitRecord`].
pub(crate) const JOB_DIR_FD: i32 = 5;
/// Fd 6: a sealed memfd holding the compiled syscall filter (classic BPF).
pub(crate) const SECCOMP_FD: i32 = 6;
/// Fd 7, when [`InitArgs::lifeline`] is set: the read end of a pipe whose write end only the
/// daemon holds. End of file on it means the daemon is gone, and the job must end too.
pub(crate) const LIFELINE_FD: i32 = 7;
/// How many descriptors the spawner installs (0 up to and including this number minus one).
pub(crate) const INIT_FDS: usize = 8;

/// A host path made visible in the job at `target`, read-only unless `writable`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The host path.
    pub source: PathBuf,
    /// Where the job sees it (an absolute path in the job's view).
    pub target: PathBuf,
    /// Whether the job may write to it.
    pub writable: bool,
}

/// Everything a job's init needs, passed as its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitArgs {
    /// The job's hostname (its id).
    pub hostname: String,
    /// The job's own user and group.
    pub uid: u32,
    /// The job's own group.
    pub gid: u32,
    /// The command's working directory, inside the job's view.
    pub working_dir: PathBuf,
    /// An empty host directory on which the job's root is assembled (in the job's own mount
    /// namespace; it stays empty on the host).
    pub root_mount: PathBuf,
    /// Host paths visible read-only at the same path, where they exist.
    pub ro_paths: Vec<PathBuf>,
    /// Further binds configured by the operator.
    pub binds: Vec<Bind>,
    /// Directories inside the view hidden behind an empty, read-only tmpfs (the daemon's key
    /// directory, for instance).
    pub hidden: Vec<PathBuf>,
    /// Size cap of each private tmpfs (`/tmp`, `/var/tmp`, `/run`, `/dev/shm`).
    pub tmpfs_bytes: u64,
    /// Most bytes of log (frames, headers included) the init stores; the rest is counted.
    pub output_limit: u64,
    /// Whether [`LIFELINE_FD`] is open (the job dies with the daemon).
    pub lifeline: bool,
    /// The program: absolute, or looked up in the job's `PATH`.
    pub program: String,
    /// Its arguments (`argv[1..]`).
    pub args: Vec<String>,
}

/// Why an init command line could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InitArgsError {
    /// `argv[0]` is not [`INIT_ARG0`].
    #[error("not an init command line")]
    NotInit,
    /// An option this version does not know.
    #[error("unknown init option {0:?}")]
    UnknownOption(String),
    /// An option without (all of) its values.
    #[error("init option {0} lacks a value")]
    MissingValue(&'static str),
    /// A required option was not given.
    #[error("init option {0} is required")]
    Missing(&'static str),
    /// A value that should be a number is not.
    #[error("init option {option} has a bad value {value:?}")]
    BadValue {
        /// The option.
        option: &'static str,
        /// What was given.
        value: String,
    },
    /// No program after `--`.
    #[error("the init command line names no program")]
    NoProgram,
    /// The program or an argument is not UTF-8 (the API only carries UTF-8).
    #[error("a program argument is not UTF-8")]
    NotUtf8,
    /// A value contains a NUL byte and cannot become a C string.
    #[error("an init argument contains a NUL byte")]
    Nul,
}

impl InitArgs {
    /// The command line, `argv[0]` included, ready for `execve`.
    pub fn to_argv(&self) -> Result<Vec<CString>, InitArgsError> {
        let mut argv: Vec<Vec<u8>> = vec![INIT_ARG0.into()];
        let mut opt = |name: &str, values: &[&[u8]]| {
            argv.push(name.as_bytes().to_vec());
            argv.extend(values.iter().map(|v| v.to_vec()));
        };
        opt("--hostname", &[self.hostname.as_bytes()]);
        opt("--uid", &[self.uid.to_string().as_bytes()]);
        opt("--gid", &[self.gid.to_string().as_bytes()]);
        opt("--cwd", &[self.working_dir.as_os_str().as_bytes()]);
        opt("--root", &[self.root_mount.as_os_str().as_bytes()]);
        for path in &self.ro_paths {
            opt("--ro", &[path.as_os_str().as_bytes()]);
        }
        for bind in &self.binds {
            let name = if bind.writable {
                "--bind-rw"
            } else {
                "--bind-ro"
            };
            opt(
                name,
                &[
                    bind.source.as_os_str().as_bytes(),
                    bind.target.as_os_str().as_bytes(),
                ],
            );
        }
        for path in &self.hidden {
            opt("--hide", &[path.as_os_str().as_bytes()]);
        }
        opt("--tmpfs-size", &[self.tmpfs_bytes.to_string().as_bytes()]);
        opt(
            "--output-limit",
            &[self.output_limit.to_string().as_bytes()],
        );
        if self.lifeline {
            opt("--lifeline", &[]);
        }
        argv.push(b"--".to_vec());
        argv.push(self.program.clone().into_bytes());
        argv.extend(self.args.iter().map(|a| a.clone().into_bytes()));
        argv.into_iter()
            .map(|a| CString::new(a).map_err(|_| InitArgsError::Nul))
            .collect()
    }

    /// Parses a command line made by [`InitArgs::to_argv`], `argv[0]` included.
    pub fn parse(argv: impl IntoIterator<Item = OsString>) -> Result<InitArgs, InitArgsError> {
        let mut argv = argv.into_iter();
        if argv.next().as_deref() != Some(OsStr::new(INIT_ARG0)) {
            return Err(InitArgsError::NotInit);
        }
        let mut hostname = None;
        let mut uid = None;
        let mut gid = None;
        let mut working_dir = None;
        let mut root_mount = None;
        let mut tmpfs_bytes = None;
        let mut output_limit = None;
        let mut ro_paths = Vec::new();
        let mut binds = Vec::new();
        let mut hidden = Vec::new();
        let mut lifeline = false;
        loop {
            let Some(option) = argv.next() else {
                return Err(InitArgsError::NoProgram);
            };
            let mut value =
                |name: &'static str| argv.next().ok_or(InitArgsError::MissingValue(name));
            match option.as_bytes() {
                b"--hostname" => hostname = Some(utf8(value("--hostname")?)?),
                b"--uid" => uid = Some(number("--uid", value("--uid")?)?),
                b"--gid" => gid = Some(number("--gid", value("--gid")?)?),
                b"--cwd" => working_dir = Some(PathBuf::from(value("--cwd")?)),
                b"--root" => root_mount = Some(PathBuf::from(value("--root")?)),
                b"--ro" => ro_paths.push(PathBuf::from(value("--ro")?)),
                b"--bind-ro" | b"--bind-rw" => {
                    let writable = option.as_bytes() == b"--bind-rw";
                    let source = PathBuf::from(value("--bind-ro/--bind-rw")?);
                    let target = PathBuf::from(value("--bind-ro/--bind-rw")?);
                    binds.push(Bind {
                        source,
                        target,
                        writable,
                    });
                }
                b"--hide" => hidden.push(PathBuf::from(value("--hide")?)),
                b"--tmpfs-size" => {
                    tmpfs_bytes = Some(number("--tmpfs-size", value("--tmpfs-size")?)?)
                }
                b"--output-limit" => {
                    output_limit = Some(number("--output-limit", value("--output-limit")?)?)
                }
                b"--lifeline" => lifeline = true,
                b"--" => break,
                _ => {
                    return Err(InitArgsError::UnknownOption(
                        option.to_string_lossy().chars().take(64).collect(),
                    ));
                }
            }
        }
        let program = utf8(argv.next().ok_or(InitArgsError::NoProgram)?)?;
        let args = argv.map(utf8).collect::<Result<Vec<_>, _>>()?;
        Ok(InitArgs {
            hostname: hostname.ok_or(InitArgsError::Missing("--hostname"))?,
            uid: uid.ok_or(InitArgsError::Missing("--uid"))?,
            gid: gid.ok_or(InitArgsError::Missing("--gid"))?,
            working_dir: working_dir.ok_or(InitArgsError::Missing("--cwd"))?,
            root_mount: root_mount.ok_or(InitArgsError::Missing("--root"))?,
            ro_paths,
            binds,
            hidden,
            tmpfs_bytes: tmpfs_bytes.ok_or(InitArgsError::Missing("--tmpfs-size"))?,
            output_limit: output_limit.ok_or(InitArgsError::Missing("--output-limit"))?,
            lifeline,
            program,
            args,
        })
    }
}

fn utf8(value: OsString) -> Result<String, InitArgsError> {
    value.into_string().map_err(|_| InitArgsError::NotUtf8)
}

fn number<T: std::str::FromStr>(option: &'static str, value: OsString) -> Result<T, InitArgsError> {
    let text = value.to_string_lossy();
    text.parse().map_err(|_| InitArgsError::BadValue {
        option,
        value: text.chars().take(64).collect(),
    })
}

/// The step of a job's start that failed, so the worker can tell the caller's mistakes (a
/// program that does not exist, a working directory outside the job's view) from its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    /// Moving the new process into the job's cgroup.
    CgroupAttach = b'c',
    /// Executing the init program.
    ExecInit = b'i',
    /// The init's arguments were malformed (a bug, not a user error).
    InitArgs = b'a',
    /// Assembling the job's root: binds, tmpfs mounts, /dev, /proc, /sys, pivot_root.
    Root = b'm',
    /// Setting the hostname.
    Hostname = b'h',
    /// Bringing up the loopback interface.
    Loopback = b'n',
    /// Creating the output pipes or reading the syscall filter.
    Pipes = b'o',
    /// Forking the command.
    Fork = b'f',
    /// Switching to the job's user, dropping capabilities, setting no_new_privs.
    DropPrivileges = b'p',
    /// Changing to the working directory.
    Chdir = b'd',
    /// Installing the syscall filter.
    Seccomp = b's',
    /// Executing the command.
    ExecCommand = b'x',
}

impl Stage {
    const ALL: [Stage; 12] = [
        Stage::CgroupAttach,
        Stage::ExecInit,
        Stage::InitArgs,
        Stage::Root,
        Stage::Hostname,
        Stage::Loopback,
        Stage::Pipes,
        Stage::Fork,
        Stage::DropPrivileges,
        Stage::Chdir,
        Stage::Seccomp,
        Stage::ExecCommand,
    ];

    fn from_byte(byte: u8) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| *s as u8 == byte)
    }

    /// What the worker was doing, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Stage::CgroupAttach => "moving the job into its cgroup",
            Stage::ExecInit => "executing the job's init",
            Stage::InitArgs => "passing arguments to the job's init",
            Stage::Root => "assembling the job's filesystem view",
            Stage::Hostname => "setting the job's hostname",
            Stage::Loopback => "bringing up the job's loopback interface",
            Stage::Pipes => "creating the job's output pipes",
            Stage::Fork => "forking the command",
            Stage::DropPrivileges => "switching to the job's user",
            Stage::Chdir => "changing to the working directory",
            Stage::Seccomp => "installing the job's syscall filter",
            Stage::ExecCommand => "executing the command",
        }
    }
}

/// What the init tells the worker while the job starts. Fixed-size records, so every write is
/// atomic on a pipe (well under `PIPE_BUF`) and a reader never sees half of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusRecord {
    /// The command has been exec'd: the job runs.
    Ready,
    /// A step failed before the command ran.
    Failed {
        /// The step.
        stage: Stage,
        /// The errno it failed with.
        errno: i32,
    },
}

/// A malformed record or file from the other side of the process boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The bytes do not form a record of the expected kind.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The checksum does not match: the record was torn or altered.
    #[error("{0} fails its checksum")]
    Checksum(&'static str),
}

impl StatusRecord {
    /// Size of every record.
    pub const LEN: usize = 6;

    /// The record's bytes: tag, stage, errno (little-endian i32).
    pub fn encode(self) -> [u8; Self::LEN] {
        let (tag, stage, value) = match self {
            StatusRecord::Ready => (b'R', 0, 0),
            StatusRecord::Failed { stage, errno } => (b'E', stage as u8, errno),
        };
        let v = value.to_le_bytes();
        [tag, stage, v[0], v[1], v[2], v[3]]
    }

    /// Parses one record.
    pub fn decode(bytes: &[u8; Self::LEN]) -> Result<StatusRecord, RecordError> {
        let value = i32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
        match (bytes[0], bytes[1]) {
            (b'R', 0) if value == 0 => Ok(StatusRecord::Ready),
            (b'E', stage) => match Stage::from_byte(stage) {
                Some(stage) if value > 0 => Ok(StatusRecord::Failed {
                    stage,
                    errno: value,
                }),
                _ => Err(RecordError::Malformed("status record")),
            },
            _ => Err(RecordError::Malformed("status record")),
        }
    }
}

/// How the command ended, as the init saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
    /// The daemon went away (the lifeline closed), so the init killed the job.
    Abandoned,
}

/// The job's last word, written by its init to `exit` in the job's directory just before the
/// init exits. A daemon that was not running when the job ended learns the outcome from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitRecord {
    /// How the command ended.
    pub outcome: Outcome,
    /// Length of the log's valid frames; anything after it is a torn write to cut off.
    pub log_len: u64,
    /// Output bytes stored in the log (payload only).
    pub output_bytes: u64,
    /// Output bytes read past the output limit and dropped.
    pub dropped_bytes: u64,
    /// Output bytes that could not be written (a full disk, an I/O error).
    pub lost_bytes: u64,
    /// When the job ended.
    pub ended_at: SystemTime,
}

/// The file name of the exit record in a job's directory.
pub const EXIT_FILE: &str = "exit";
/// Where the init writes the record before renaming it to [`EXIT_FILE`]; the worker creates it
/// with its space allocated.
pub const EXIT_TMP_FILE: &str = "exit.tmp";

impl ExitRecord {
    /// Size of the encoded record.
    pub const LEN: usize = 56;
    const MAGIC: &'static [u8; 4] = b"JWX1";

    /// Magic, outcome tag and value, the counters, end time in ns since the epoch, CRC-32C of
    /// everything before it. All integers little-endian.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let (tag, value) = match self.outcome {
            Outcome::Exited(code) => (b'X', code),
            Outcome::Signaled(signal) => (b'K', signal),
            Outcome::Abandoned => (b'A', 0),
        };
        let ended = self
            .ended_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let mut out = [0u8; Self::LEN];
        out[0..4].copy_from_slice(Self::MAGIC);
        out[4] = tag;
        out[8..12].copy_from_slice(&value.to_le_bytes());
        out[12..20].copy_from_slice(&self.log_len.to_le_bytes());
        out[20..28].copy_from_slice(&self.output_bytes.to_le_bytes());
        out[28..36].copy_from_slice(&self.dropped_bytes.to_le_bytes());
        out[36..44].copy_from_slice(&self.lost_bytes.to_le_bytes());
        out[44..52].copy_from_slice(&ended.to_le_bytes());
        let crc = crc32c::crc32c(&out[..52]);
        out[52..56].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses and verifies a record.
    pub fn decode(bytes: &[u8]) -> Result<ExitRecord, RecordError> {
        const WHAT: &str = "exit record";
        if bytes.len() != Self::LEN || &bytes[0..4] != Self::MAGIC {
            return Err(RecordError::Malformed(WHAT));
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let crc = u32::from_le_bytes([bytes[52], bytes[53], bytes[54], bytes[55]]);
        if crc32c::crc32c(&bytes[..52]) != crc {
            return Err(RecordError::Checksum(WHAT));
        }
        let value = i32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let outcome = match bytes[4] {
            b'X' => Outcome::Exited(value),
            b'K' => Outcome::Signaled(value),
            b'A' => Outcome::Abandoned,
            _ => return Err(RecordError::Malformed(WHAT)),
        };
        Ok(ExitRecord {
            outcome,
            log_len: u64_at(12),
            output_bytes: u64_at(20),
            dropped_bytes: u64_at(28),
            lost_bytes: u64_at(36),
            ended_at: UNIX_EPOCH + Duration::from_nanos(u64_at(44)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn args() -> InitArgs {
        InitArgs {
            hostname: "67e55044-10b1-426f-9247-bb680e5fe0c8".into(),
            uid: 1_879_048_200,
            gid: 1_879_048_200,
            working_dir: "/tmp/work dir".into(),
            root_mount: "/var/lib/jobworker/root".into(),
            ro_paths: vec!["/usr".into(), "/etc".into()],
            binds: vec![
                Bind {
                    source: "/srv/data".into(),
                    target: "/data".into(),
                    writable: false,
                },
                Bind {
                    source: "/srv/out put".into(),
                    target: "/out".into(),
                    writable: true,
                },
            ],
            hidden: vec!["/etc/jobworker".into()],
            tmpfs_bytes: 64 << 20,
            output_limit: 1 << 30,
            lifeline: true,
            program: "sh".into(),
            args: vec!["-c".into(), "echo -- --uid 0".into(), String::new()],
        }
    }

    fn os(argv: &[CString]) -> Vec<OsString> {
        argv.iter()
            .map(|c| OsString::from_vec(c.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn init_args_round_trip() {
        let original = args();
        let argv = original.to_argv().expect("argv");
        assert_eq!(InitArgs::parse(os(&argv)), Ok(original));
    }

    #[test]
    fn init_args_round_trip_without_lifeline_binds_or_arguments() {
        let original = InitArgs {
            binds: vec![],
            hidden: vec![],
            ro_paths: vec![],
            lifeline: false,
            args: vec![],
            ..args()
        };
        let argv = original.to_argv().expect("argv");
        assert_eq!(InitArgs::parse(os(&argv)), Ok(original));
    }

    #[test]
    fn command_arguments_that_look_like_options_stay_arguments() {
        let original = InitArgs {
            program: "--uid".into(),
            args: vec!["--".into(), "--lifeline".into()],
            ..args()
        };
        let parsed = InitArgs::parse(os(&original.to_argv().expect("argv"))).expect("parse");
        assert_eq!(parsed.program, "--uid");
        assert_eq!(parsed.args, ["--", "--lifeline"]);
    }

    #[test]
    fn malformed_init_command_lines_are_refused() {
        let good = os(&args().to_argv().expect("argv"));
        let mut wrong_arg0 = good.clone();
        wrong_arg0[0] = "sh".into();
        assert_eq!(InitArgs::parse(wrong_arg0), Err(InitArgsError::NotInit));

        let no_program: Vec<OsString> = good.iter().take_while(|a| *a != "--").cloned().collect();
        assert_eq!(InitArgs::parse(no_program), Err(InitArgsError::NoProgram));

        let mut bad_uid = good.clone();
        let at = bad_uid.iter().position(|a| a == "--uid").expect("uid");
        bad_uid[at + 1] = "-1".into();
        assert!(matches!(
            InitArgs::parse(bad_uid),
            Err(InitArgsError::BadValue {
                option: "--uid",
                ..
            })
        ));

        let without_gid: Vec<OsString> = {
            let at = good.iter().position(|a| a == "--gid").expect("gid");
            good.iter()
                .enumerate()
                .filter(|(i, _)| *i != at && *i != at + 1)
                .map(|(_, a)| a.clone())
                .collect()
        };
        assert_eq!(
            InitArgs::parse(without_gid),
            Err(InitArgsError::Missing("--gid"))
        );

        let mut unknown = good.clone();
        unknown.insert(1, "--privileged".into());
        assert!(matches!(
            InitArgs::parse(unknown),
            Err(InitArgsError::UnknownOption(_))
        ));

        let truncated = vec![OsString::from(INIT_ARG0), "--uid".into()];
        assert_eq!(
            InitArgs::parse(truncated),
            Err(InitArgsError::MissingValue("--uid"))
        );

        let not_utf8 = {
            let mut v = good.clone();
            v.push(OsString::from_vec(vec![0xff, 0xfe]));
            v
        };
        assert_eq!(InitArgs::parse(not_utf8), Err(InitArgsError::NotUtf8));
    }

    #[test]
    fn a_nul_byte_cannot_reach_execve() {
        let bad = InitArgs {
            args: vec!["a\0b".into()],
            ..args()
        };
        assert_eq!(bad.to_argv(), Err(InitArgsError::Nul));
    }

    #[test]
    fn status_records_round_trip() {
        let mut records = vec![StatusRecord::Ready];
        for stage in Stage::ALL {
            records.push(StatusRecord::Failed {
                stage,
                errno: libc::ENOENT,
            });
        }
        for record in records {
            assert_eq!(StatusRecord::decode(&record.encode()), Ok(record));
        }
    }

    #[test]
    fn malformed_status_records_are_refused() {
        for bad in [
            [0u8; 6],
            *b"R\x01\0\0\0\0",
            *b"E?\x02\0\0\0",
            *b"Ex\0\0\0\0",
            *b"Z\0\0\0\0\0",
        ] {
            assert!(StatusRecord::decode(&bad).is_err(), "{bad:?}");
        }
    }

    fn exit_record(outcome: Outcome) -> ExitRecord {
        ExitRecord {
            outcome,
            log_len: 123_456_789_012,
            output_bytes: 1 << 40,
            dropped_bytes: 17,
            lost_bytes: 0,
            ended_at: UNIX_EPOCH + Duration::from_nanos(1_764_500_000_123_456_789),
        }
    }

    #[test]
    fn exit_records_round_trip() {
        for outcome in [
            Outcome::Exited(0),
            Outcome::Exited(255),
            Outcome::Signaled(9),
            Outcome::Abandoned,
        ] {
            let record = exit_record(outcome);
            assert_eq!(ExitRecord::decode(&record.encode()), Ok(record));
        }
    }

    #[test]
    fn a_torn_or_altered_exit_record_is_detected() {
        let bytes = exit_record(Outcome::Exited(3)).encode();
        assert!(ExitRecord::decode(&bytes[..40]).is_err());
        for at in 0..bytes.len() {
            let mut flipped = bytes;
            flipped[at] ^= 0x10;
            assert!(
                ExitRecord::decode(&flipped).is_err(),
                "a flipped bit at byte {at} went unnoticed"
            );
        }
    }
}
