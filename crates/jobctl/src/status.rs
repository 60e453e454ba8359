//! A job's state as jobctl shows it and exits with it.
//!
//! The wire format spreads a state over an enum, two optional numbers and a flag; [`State`]
//! folds them into the one value the rest of the CLI matches on.

use std::fmt;

use jobworker_api::pb;
use nix::sys::signal::Signal;

/// What a job is doing, or how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Still running, nobody asked it to stop.
    Running,
    /// Still running, but a stop was requested: it is in its grace period.
    Stopping,
    /// Ended; `stopped` when it ended because of a stop request.
    Ended { outcome: Outcome, stopped: bool },
    /// A state this version of jobctl does not know (a newer server).
    Unknown(i32),
}

/// How an ended job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The command exited with this code.
    Exited(i32),
    /// The command was killed by this signal number.
    Signaled(i32),
    /// The kernel's OOM killer ended the job at its memory limit.
    OomKilled,
    /// The job ended without a recorded outcome (the daemon died under it).
    Lost,
}

/// SIGKILL's number on every Linux architecture: what the OOM killer sends.
const SIGKILL: i32 = 9;

impl State {
    /// The state `status` describes.
    pub fn of(status: &pb::JobStatus) -> State {
        let outcome = match pb::JobState::try_from(status.state) {
            Ok(pb::JobState::Running) if status.stop_requested => return State::Stopping,
            Ok(pb::JobState::Running) => return State::Running,
            // A server that omits the detail gets a visibly odd but honest value.
            Ok(pb::JobState::Exited) => Outcome::Exited(status.exit_code.unwrap_or(-1)),
            Ok(pb::JobState::Signaled) => Outcome::Signaled(status.signal.unwrap_or(0)),
            Ok(pb::JobState::OomKilled) => Outcome::OomKilled,
            Ok(pb::JobState::Lost) => Outcome::Lost,
            Ok(pb::JobState::Unspecified) | Err(_) => return State::Unknown(status.state),
        };
        State::Ended {
            outcome,
            stopped: status.stop_requested,
        }
    }

    /// The state's kind alone, for JSON: `running`, `stopping`, `exited`, `signaled`,
    /// `oom-killed` or `unknown`.
    pub fn kind(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Stopping => "stopping",
            State::Ended { outcome, .. } => match outcome {
                Outcome::Exited(_) => "exited",
                Outcome::Signaled(_) => "signaled",
                Outcome::OomKilled => "oom-killed",
                Outcome::Lost => "lost",
            },
            State::Unknown(_) => "unknown",
        }
    }
}

impl fmt::Display for State {
    /// `running`, `exited(3)`, `signaled(SIGTERM) (stopped)`, `oom-killed`, ...
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            State::Running => f.write_str("running"),
            State::Stopping => f.write_str("stopping"),
            State::Unknown(value) => write!(f, "unknown({value})"),
            State::Ended { outcome, stopped } => {
                match outcome {
                    Outcome::Exited(code) => write!(f, "exited({code})")?,
                    Outcome::Signaled(signal) => write!(f, "signaled({})", signal_name(signal))?,
                    Outcome::OomKilled => f.write_str("oom-killed")?,
                    Outcome::Lost => f.write_str("lost")?,
                }
                if stopped {
                    f.write_str(" (stopped)")?;
                }
                Ok(())
            }
        }
    }
}

impl Outcome {
    /// The exit status a shell would report for a local process that ended this way:
    /// the code itself, 128+N for signal N, 137 (SIGKILL) for the OOM killer.
    pub fn exit_status(self) -> u8 {
        // Exit codes are 0..=255 on Linux and signals below 128; anything else is a server bug
        // that must not be wrapped into a success.
        let status = match self {
            Outcome::Exited(code) => Some(code),
            Outcome::Signaled(signal) => signal.checked_add(128),
            Outcome::OomKilled => Some(128 + SIGKILL),
            // Nothing is known of how it ended: not a success.
            Outcome::Lost => None,
        };
        status.and_then(|s| u8::try_from(s).ok()).unwrap_or(1)
    }
}

/// `SIGTERM` for 15; the bare number for signals without a name (e.g. real-time ones).
pub fn signal_name(signal: i32) -> String {
    Signal::try_from(signal).map_or_else(|_| signal.to_string(), |s| s.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(
        state: pb::JobState,
        exit_code: Option<i32>,
        signal: Option<i32>,
        stop: bool,
    ) -> pb::JobStatus {
        pb::JobStatus {
            state: state as i32,
            exit_code,
            signal,
            stop_requested: stop,
            ..pb::JobStatus::default()
        }
    }

    #[test]
    fn states_read_like_a_shell_would_say_them() {
        let cases = [
            (status(pb::JobState::Running, None, None, false), "running"),
            (status(pb::JobState::Running, None, None, true), "stopping"),
            (
                status(pb::JobState::Exited, Some(3), None, false),
                "exited(3)",
            ),
            (
                status(pb::JobState::Signaled, None, Some(15), true),
                "signaled(SIGTERM) (stopped)",
            ),
            (
                status(pb::JobState::OomKilled, None, Some(9), false),
                "oom-killed",
            ),
            (
                status(pb::JobState::Unspecified, None, None, false),
                "unknown(0)",
            ),
        ];
        for (status, expected) in cases {
            assert_eq!(State::of(&status).to_string(), expected, "{status:?}");
        }
    }

    #[test]
    fn exit_statuses_follow_the_shell_convention() {
        assert_eq!(Outcome::Exited(0).exit_status(), 0);
        assert_eq!(Outcome::Exited(3).exit_status(), 3);
        assert_eq!(Outcome::Signaled(15).exit_status(), 143);
        assert_eq!(Outcome::Signaled(9).exit_status(), 137);
        assert_eq!(Outcome::OomKilled.exit_status(), 137);
        assert_eq!(
            Outcome::Exited(-1).exit_status(),
            1,
            "never a false success"
        );
    }

    #[test]
    fn unnamed_signals_are_shown_as_numbers() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(40), "40");
    }
}
