//! The status pipe between the worker and a job's init: fixed-size records, so every write is
//! atomic (well under `PIPE_BUF`) and the reader never sees half a message.
//!
//! The pipe is the init's file descriptor 3. The init writes [`READY`] once the command has been
//! exec'd, or [`ERROR`] if anything before that failed; later [`EXITED`] or [`KILLED`] with the
//! command's exact outcome. End of file without an outcome means the init itself died (SIGKILL).

/// File descriptor number of the status pipe inside the init.
pub(crate) const STATUS_FD: i32 = 3;

/// Size of every record: tag, stage, 32-bit little-endian value.
pub(crate) const RECORD_LEN: usize = 6;

/// The command was exec'd; the job is running.
pub(crate) const READY: u8 = b'R';
/// A step failed before the command ran: stage and errno follow.
pub(crate) const ERROR: u8 = b'E';
/// The command exited: exit code follows.
pub(crate) const EXITED: u8 = b'X';
/// The command was killed: signal number follows.
pub(crate) const KILLED: u8 = b'K';

/// Where a start failed, so the worker can tell the caller's mistakes from its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Stage {
    /// Moving the new process into the job's cgroup.
    CgroupAttach = b'c',
    /// Executing the init program.
    ExecInit = b'i',
    /// The init's arguments were malformed (a bug, not a user error).
    InitArgs = b'a',
    /// Making mounts private, mounting /proc, /sys or /dev/shm.
    Mount = b'm',
    /// Setting the hostname.
    Hostname = b'h',
    /// Bringing up the loopback interface.
    Loopback = b'n',
    /// Forking the command.
    Fork = b'f',
    /// Switching to the job user, dropping capabilities, setting no_new_privs.
    DropPrivileges = b'p',
    /// Changing to the working directory.
    Chdir = b'd',
    /// Executing the command.
    ExecCommand = b'x',
}

impl Stage {
    /// The stage a record names, if it names one.
    pub(crate) fn from_byte(byte: u8) -> Option<Stage> {
        use Stage::*;
        [
            CgroupAttach,
            ExecInit,
            InitArgs,
            Mount,
            Hostname,
            Loopback,
            Fork,
            DropPrivileges,
            Chdir,
            ExecCommand,
        ]
        .into_iter()
        .find(|s| *s as u8 == byte)
    }

    /// What the worker was doing, in words.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Stage::CgroupAttach => "moving the job into its cgroup",
            Stage::ExecInit => "executing the job's init",
            Stage::InitArgs => "passing arguments to the job's init",
            Stage::Mount => "mounting the job's /proc, /sys and /dev/shm",
            Stage::Hostname => "setting the job's hostname",
            Stage::Loopback => "bringing up the job's loopback interface",
            Stage::Fork => "forking the command",
            Stage::DropPrivileges => "switching to the job user",
            Stage::Chdir => "changing to the working directory",
            Stage::ExecCommand => "executing the command",
        }
    }
}

/// Encodes one record.
pub(crate) fn record(tag: u8, stage: u8, value: i32) -> [u8; RECORD_LEN] {
    let v = value.to_le_bytes();
    [tag, stage, v[0], v[1], v[2], v[3]]
}

/// Decodes one record into (tag, stage byte, value).
pub(crate) fn parse(rec: &[u8; RECORD_LEN]) -> (u8, u8, i32) {
    (
        rec[0],
        rec[1],
        i32::from_le_bytes([rec[2], rec[3], rec[4], rec[5]]),
    )
}
