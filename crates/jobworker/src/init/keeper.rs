//! The init's life after the command started: copy the output into the log, forward signals,
//! reap, and record the end.
//!
//! One `poll` loop over the command's stdout and stderr, the signalfd and (when the job must die
//! with the daemon) the lifeline. The job ends when the command ends: the init then SIGKILLs
//! whatever the command left behind, reaps it, reads what the pipes still buffer without
//! waiting for their end of file (a copy of a pipe held outside the job cannot keep the job
//! alive), writes the exit record and exits; the kernel tears the namespaces down after it.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::time::SystemTime;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::{FORWARDED, KILL_REQUEST, Started};
use crate::output::{HEADER, LogWriter, Stream};
use crate::protocol::{EXIT_FILE, EXIT_TMP_FILE, ExitRecord, Outcome};

/// The most read from each pipe after the job's processes are gone: more than a pipe can hold
/// (1 MiB is the kernel's default `pipe-max-size`), so everything buffered is kept, yet bounded
/// if a process outside the job kept writing into a copy of the pipe.
const DRAIN_LIMIT: usize = 4 << 20;

/// Keeps the job until it ends; returns the init's exit status.
pub(super) fn keep(
    job: Started,
    mut log: LogWriter,
    job_dir: OwnedFd,
    lifeline: Option<OwnedFd>,
) -> i32 {
    let Started {
        command,
        stdout,
        stderr,
        signals,
        frame,
    } = job;
    let mut pipes = [Some(File::from(stdout)), Some(File::from(stderr))];
    // Allocated and touched before the command runs (see `init::start`): a job that fills its
    // memory (say, with a tmpfs it cannot free) must not leave its keeper without a buffer.
    let mut frame = frame;
    let mut lifeline = lifeline.map(File::from);
    let outcome = loop {
        let mut fds: Vec<PollFd> = Vec::with_capacity(4);
        for pipe in pipes.iter().flatten() {
            fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
        }
        fds.push(PollFd::new(signals.as_fd(), PollFlags::POLLIN));
        if let Some(lifeline) = &lifeline {
            fds.push(PollFd::new(lifeline.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            // Cannot wait for anything any more: end the job rather than spin.
            Err(_) => break None,
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let mut at = 0;
        for (pipe, stream) in pipes.iter_mut().zip([Stream::Stdout, Stream::Stderr]) {
            let Some(file) = pipe else { continue };
            if ready[at] && !copy_chunk(file, stream, &mut log, &mut frame) {
                *pipe = None;
            }
            at += 1;
        }
        let mut ended = None;
        if ready[at] {
            ended = handle_signals(&signals, command);
        }
        if lifeline.is_some() && ready[at + 1] {
            // Readable means end of file: the daemon that held the write end is gone. (Nothing
            // is ever written to it.)
            lifeline = None;
            ended = Some(Outcome::Abandoned);
        }
        if let Some(outcome) = ended {
            break Some(outcome);
        }
    };
    // The command has ended (or the daemon is gone): end the rest of the job.
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    let mut outcome = outcome;
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(status) => {
                if outcome.is_none() {
                    outcome = outcome_of(status, command);
                }
            }
            Err(Errno::EINTR) => {}
            // ECHILD: every process of the job is gone.
            Err(_) => break,
        }
    }
    for (pipe, stream) in pipes.iter_mut().zip([Stream::Stdout, Stream::Stderr]) {
        if let Some(file) = pipe.take() {
            drain(file, stream, &mut log, &mut frame);
        }
    }
    let record = ExitRecord {
        outcome: outcome.unwrap_or(Outcome::Signaled(libc::SIGKILL)),
        log_len: log.len(),
        output_bytes: log.output_bytes,
        dropped_bytes: log.dropped_bytes,
        lost_bytes: log.lost_bytes,
        ended_at: SystemTime::now(),
    };
    match write_exit_record(&job_dir, &record) {
        Ok(()) => 0,
        // The worker then finds no record and reports the job as lost.
        Err(_) => 2,
    }
}

/// Handles every signal that arrived; returns the command's outcome once it has been reaped.
fn handle_signals(signals: &nix::sys::signalfd::SignalFd, command: Pid) -> Option<Outcome> {
    let mut outcome = None;
    while let Ok(Some(info)) = signals.read_signal() {
        let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else {
            continue;
        };
        if signal == Signal::SIGCHLD {
            // One SIGCHLD may stand for several exited children: reap them all.
            while let Ok(status) = waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                if status == WaitStatus::StillAlive {
                    break;
                }
                if let Some(o) = outcome_of(status, command) {
                    outcome = Some(o);
                }
            }
        } else if signal == KILL_REQUEST {
            // -1: every process in the namespace but the init itself.
            let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        } else if FORWARDED.contains(&signal) {
            let _ = kill(Pid::from_raw(-1), signal);
        }
    }
    outcome
}

/// The command's outcome, if `status` is the command's end.
fn outcome_of(status: WaitStatus, command: Pid) -> Option<Outcome> {
    match status {
        WaitStatus::Exited(pid, code) if pid == command => Some(Outcome::Exited(code)),
        WaitStatus::Signaled(pid, signal, _) if pid == command => {
            Some(Outcome::Signaled(signal as i32))
        }
        _ => None,
    }
}

/// One read from a job's pipe into the log. Returns false at end of file.
fn copy_chunk(pipe: &mut File, stream: Stream, log: &mut LogWriter, frame: &mut [u8]) -> bool {
    match pipe.read(&mut frame[HEADER..]) {
        Ok(0) => false,
        Ok(n) => {
            log.append(stream, frame, n);
            true
        }
        Err(e) if e.kind() == ErrorKind::Interrupted || e.kind() == ErrorKind::WouldBlock => true,
        Err(_) => false,
    }
}

/// Reads what `pipe` still buffers, without waiting for more.
fn drain(pipe: File, stream: Stream, log: &mut LogWriter, frame: &mut [u8]) {
    let Ok(flags) = fcntl(&pipe, FcntlArg::F_GETFL) else {
        return;
    };
    let nonblocking = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    if fcntl(&pipe, FcntlArg::F_SETFL(nonblocking)).is_err() {
        return;
    }
    let mut pipe = pipe;
    let mut read = 0;
    while read < DRAIN_LIMIT {
        match pipe.read(&mut frame[HEADER..]) {
            Ok(0) => return,
            Ok(n) => {
                log.append(stream, frame, n);
                read += n;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // WouldBlock: nothing more is buffered.
            Err(_) => return,
        }
    }
}

/// Writes the record next to the log: into `exit.tmp`, which the worker created with its blocks
/// already allocated (so the record is written even when the job filled the disk), then renamed,
/// so a reader finds a whole record or none.
fn write_exit_record(job_dir: &OwnedFd, record: &ExitRecord) -> Result<(), Errno> {
    let fd = nix::fcntl::openat(
        job_dir,
        EXIT_TMP_FILE,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )?;
    let file = File::from(fd);
    std::os::unix::fs::FileExt::write_all_at(&file, &record.encode(), 0)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    drop(file);
    nix::fcntl::renameat(job_dir, EXIT_TMP_FILE, job_dir, EXIT_FILE)
}
