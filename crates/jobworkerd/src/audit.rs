//! The audit log: one JSON object per line for every mutating request and every refused
//! request, with the verified identity that made it.
//!
//! A handler opens an [`AuditEntry`] with [`AuditLog::begin`] and closes it with
//! [`AuditEntry::finish`] before it answers, so the record is on disk (in the page cache: no
//! `fsync`) before the client hears the outcome. Each line is written with one `write(2)` on a
//! file opened with `O_APPEND`, which the kernel appends atomically, so concurrent records never
//! interleave and no lock is needed. A mutating request whose client goes away before it
//! finishes is still recorded, with outcome `cancelled`, when its handler is dropped.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use tonic::Status;

use crate::authz::Peer;
use crate::convert::code_name;

/// The RPCs, as the audit log names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    /// `Start`: creates a job.
    Start,
    /// `Stop`: ends a job.
    Stop,
    /// `GetStatus`: reads a job.
    GetStatus,
    /// `List`: reads jobs.
    List,
    /// `StreamOutput`: reads a job's output.
    StreamOutput,
    /// `Wait`: waits for a job's end.
    Wait,
    /// `Remove`: deletes a job and its output.
    Remove,
}

impl Rpc {
    /// The RPC's name in the proto.
    pub fn name(self) -> &'static str {
        match self {
            Rpc::Start => "Start",
            Rpc::Stop => "Stop",
            Rpc::GetStatus => "GetStatus",
            Rpc::List => "List",
            Rpc::StreamOutput => "StreamOutput",
            Rpc::Wait => "Wait",
            Rpc::Remove => "Remove",
        }
    }

    /// Whether the RPC changes anything: those are recorded whatever their outcome; the others
    /// only when refused.
    pub fn mutates(self) -> bool {
        match self {
            Rpc::Start | Rpc::Stop | Rpc::Remove => true,
            Rpc::GetStatus | Rpc::List | Rpc::StreamOutput | Rpc::Wait => false,
        }
    }
}

/// Why the audit log could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the audit log {}", path.display())]
pub struct AuditError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// Where audit records go: an append-only file, or nowhere. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    file: Option<Arc<File>>,
    /// Records that could not be written; exported as a metric, since a failing audit log must
    /// be noticed but must not take the service down with it (the action has happened already).
    write_failures: Counter,
}

impl AuditLog {
    /// No audit log: [`AuditEntry::finish`] does nothing.
    pub fn disabled() -> AuditLog {
        AuditLog {
            file: None,
            write_failures: Counter::default(),
        }
    }

    /// Appends to `path`, created 0600 if missing (an existing file keeps its mode).
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| AuditError {
                path: path.to_owned(),
                source,
            })?;
        Ok(AuditLog {
            file: Some(Arc::new(file)),
            write_failures: Counter::default(),
        })
    }

    /// The count of records that could not be written, for the metrics registry.
    pub fn write_failures(&self) -> Counter {
        self.write_failures.clone()
    }

    /// Starts the record of one request by `peer`. `job_id` is the job the request names, if
    /// any (a Start sets the job it created with [`AuditEntry::set_job`]).
    pub fn begin(&self, peer: &Arc<Peer>, rpc: Rpc, job_id: Option<&str>) -> AuditEntry {
        AuditEntry {
            log: self.clone(),
            peer: peer.clone(),
            rpc,
            job_id: job_id.map(str::to_owned),
            finished: false,
        }
    }
}

/// One request's record, written by [`AuditEntry::finish`] (or, for a mutating request
/// abandoned by its client, when dropped).
#[must_use = "a request's audit record is written by `finish`"]
pub struct AuditEntry {
    log: AuditLog,
    peer: Arc<Peer>,
    rpc: Rpc,
    job_id: Option<String>,
    finished: bool,
}

impl AuditEntry {
    /// Names the job the request created.
    pub fn set_job(&mut self, job_id: impl ToString) {
        self.job_id = Some(job_id.to_string());
    }

    /// Writes the record for `result`, if the log records it (every outcome of a mutating
    /// request, refusals of the others), and returns once it is written.
    pub async fn finish<T>(mut self, result: &Result<T, Status>) {
        self.finished = true;
        let (outcome, message) = match result {
            Ok(_) if !self.rpc.mutates() => return,
            Ok(_) => ("ok", ""),
            Err(status) => (code_name(status.code()), status.message()),
        };
        let Some(line) = self.line(outcome, message) else {
            return;
        };
        let Some(file) = self.log.file.clone() else {
            return;
        };
        // A regular file's write can block on the disk: off the runtime's threads.
        let written = tokio::task::spawn_blocking(move || append(&file, &line)).await;
        let error = match written {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error,
            Err(join) => io::Error::other(join),
        };
        self.log.write_failures.inc();
        tracing::error!(rpc = self.rpc.name(), %error, "cannot write the audit log");
    }

    /// The JSON line for this request with `outcome` and `message`; `None` when there is no
    /// log to write it to.
    fn line(&self, outcome: &str, message: &str) -> Option<Vec<u8>> {
        self.log.file.as_ref()?;
        let identity = self.peer.identity.as_ref().ok();
        let record = Record {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            user: identity.map(|identity| identity.user.as_str()),
            groups: identity.map_or(&[], |identity| identity.groups.as_slice()),
            peer: self.peer.addr.to_string(),
            rpc: self.rpc.name(),
            job_id: self.job_id.as_deref(),
            outcome,
            message,
        };
        // Serialising strings and a slice of strings cannot fail.
        let mut line = serde_json::to_vec(&record).ok()?;
        line.push(b'\n');
        Some(line)
    }
}

impl Drop for AuditEntry {
    fn drop(&mut self) {
        if self.finished || !self.rpc.mutates() {
            return;
        }
        // The client went away mid-request, and with it the handler: the request may still
        // have taken effect (a stop carries on without its caller). Written here, on the
        // runtime thread, because a drop cannot wait; it is one small write, and rare.
        let Some(line) = self.line(
            "cancelled",
            "the client went away before the request finished; its effect is unknown",
        ) else {
            return;
        };
        if let Some(file) = &self.log.file
            && let Err(error) = append(file, &line)
        {
            self.log.write_failures.inc();
            tracing::error!(rpc = self.rpc.name(), %error, "cannot write the audit log");
        }
    }
}

/// One line of the audit log.
#[derive(Serialize)]
struct Record<'a> {
    /// RFC 3339, UTC, milliseconds.
    time: String,
    /// The certificate's CN; null when the request had no usable identity.
    user: Option<&'a str>,
    /// The certificate's O values.
    groups: &'a [String],
    /// The client's address and port.
    peer: String,
    rpc: &'static str,
    job_id: Option<&'a str>,
    /// `ok`, `cancelled`, or the gRPC status code in snake case (e.g. `not_found`).
    outcome: &'a str,
    /// The status message the client received; empty when `ok`.
    message: &'a str,
}

/// Appends `line` with a single `write(2)`: with `O_APPEND` the kernel places it at the end of
/// the file in one piece, whoever else is writing. A short write (disk full) is an error rather
/// than a second write, which could interleave with another record.
fn append(file: &File, line: &[u8]) -> io::Result<()> {
    let written = (&*file).write(line)?;
    if written == line.len() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("only {written} of {} bytes written", line.len()),
        ))
    }
}
