//! Job statuses as people read them (aligned tables) and as programs read them (JSON).
//!
//! The JSON field names are an interface: scripts depend on them, so they change only by
//! addition. Times are RFC 3339 in UTC, durations are seconds (a number), sizes are bytes,
//! absent values are `null`.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use comfy_table::{Table, presets};
use jobworker_api::pb;
use serde::Serialize;

use crate::cli::OutputFormat;
use crate::status::{Outcome, State, signal_name};

/// The longest command shown in a `list` row; `status` shows it whole.
const LIST_COMMAND_WIDTH: usize = 60;

/// Spaces between table columns, as kubectl and docker use.
const COLUMN_GAP: u16 = 3;

/// Prints one job (`status`, `stop`).
pub fn print_status(
    out: &mut impl Write,
    status: &pb::JobStatus,
    format: OutputFormat,
) -> io::Result<()> {
    match format {
        OutputFormat::Json => write_json(out, &JobView::of(status)),
        OutputFormat::Table => writeln!(out, "{}", status_table(status)),
    }
}

/// Prints a list of jobs (`list`), oldest first.
pub fn print_list(
    out: &mut impl Write,
    jobs: &[pb::JobStatus],
    format: OutputFormat,
) -> io::Result<()> {
    let mut jobs: Vec<&pb::JobStatus> = jobs.iter().collect();
    jobs.sort_by_key(|job| (started(job), &job.job_id));
    match format {
        OutputFormat::Json => {
            let views: Vec<JobView<'_>> = jobs.into_iter().map(JobView::of).collect();
            write_json(out, &views)
        }
        OutputFormat::Table => writeln!(out, "{}", list_table(&jobs)),
    }
}

fn write_json(out: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

/// One job in JSON.
#[derive(Debug, Serialize)]
struct JobView<'a> {
    id: &'a str,
    owner: &'a str,
    command: &'a str,
    args: &'a [String],
    /// True in `list` rows whose arguments were cut; `env` is then empty.
    command_shortened: bool,
    /// Sorted by name.
    env: BTreeMap<&'a str, &'a str>,
    working_dir: &'a str,
    uid: u32,
    /// `running`, `stopping`, `exited`, `signaled`, `oom-killed`, `lost` or `unknown`.
    state: &'static str,
    exit_code: Option<i32>,
    /// e.g. `SIGTERM`.
    signal: Option<String>,
    stop_requested: bool,
    started_at: Option<String>,
    ended_at: Option<String>,
    cpu_time_seconds: Option<f64>,
    peak_memory_bytes: Option<u64>,
    output: Option<OutputView>,
    /// What is wrong with the job's stored state; `null` when nothing is.
    note: Option<&'a str>,
    limits: LimitsView,
}

impl<'a> JobView<'a> {
    fn of(status: &'a pb::JobStatus) -> JobView<'a> {
        JobView {
            id: &status.job_id,
            owner: &status.owner,
            command: &status.command,
            args: &status.args,
            command_shortened: status.command_shortened,
            env: status
                .env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            working_dir: &status.working_dir,
            uid: status.uid,
            state: State::of(status).kind(),
            exit_code: status.exit_code,
            signal: status.signal.map(signal_name),
            stop_requested: status.stop_requested,
            started_at: status.started_at.as_ref().map(timestamp_precise),
            ended_at: status.ended_at.as_ref().map(timestamp_precise),
            cpu_time_seconds: status.cpu_time.as_ref().map(|d| duration(d).as_secs_f64()),
            peak_memory_bytes: status.peak_memory_bytes,
            output: status.output.as_ref().map(|o| OutputView {
                bytes: o.bytes,
                dropped_bytes: o.dropped_bytes,
                lost_bytes: o.lost_bytes,
            }),
            note: Some(status.note.as_str()).filter(|n| !n.is_empty()),
            limits: LimitsView::of(status.limits.as_ref()),
        }
    }
}

/// What an ended job's output log holds, in JSON.
#[derive(Debug, Serialize)]
struct OutputView {
    bytes: u64,
    dropped_bytes: u64,
    lost_bytes: u64,
}

/// A job's limits in JSON; `null` is "no limit".
#[derive(Debug, Default, Serialize)]
struct LimitsView {
    cpus: Option<f64>,
    memory_bytes: Option<u64>,
    io_read_bps: Option<u64>,
    io_write_bps: Option<u64>,
    io_read_iops: Option<u64>,
    io_write_iops: Option<u64>,
    pids: Option<u64>,
    output_bytes: Option<u64>,
}

impl LimitsView {
    fn of(limits: Option<&pb::Limits>) -> LimitsView {
        limits.map_or_else(LimitsView::default, |l| LimitsView {
            cpus: l.cpus,
            memory_bytes: l.memory_bytes,
            io_read_bps: l.io_read_bps,
            io_write_bps: l.io_write_bps,
            io_read_iops: l.io_read_iops,
            io_write_iops: l.io_write_iops,
            pids: l.pids,
            output_bytes: l.output_bytes,
        })
    }
}

/// A table without borders: columns separated by spaces, no trailing blanks.
pub fn plain_table(header: Option<&[&str]>, rows: Vec<Vec<String>>) -> String {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    if let Some(header) = header {
        table.set_header(header.to_vec());
    }
    for row in rows {
        table.add_row(row);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, COLUMN_GAP));
    }
    table.trim_fmt()
}

fn list_table(jobs: &[&pb::JobStatus]) -> String {
    let rows = jobs
        .iter()
        .map(|job| {
            vec![
                job.job_id.clone(),
                job.owner.clone(),
                State::of(job).to_string(),
                started(job).map_or_else(String::new, timestamp),
                truncate(&command_line(job), LIST_COMMAND_WIDTH),
            ]
        })
        .collect();
    plain_table(Some(&["ID", "OWNER", "STATE", "STARTED", "COMMAND"]), rows)
}

fn status_table(job: &pb::JobStatus) -> String {
    let mut rows = vec![
        ("ID:", job.job_id.clone()),
        ("Owner:", format!("{} (uid {})", job.owner, job.uid)),
        ("Command:", command_line(job)),
    ];
    if !job.working_dir.is_empty() {
        rows.push(("Working dir:", job.working_dir.clone()));
    }
    if !job.env.is_empty() {
        let mut env: Vec<String> = job
            .env
            .iter()
            .map(|(k, v)| shell_quote(&format!("{k}={v}")))
            .collect();
        env.sort();
        rows.push(("Env:", env.join(" ")));
    }
    rows.push(("State:", State::of(job).to_string()));
    let start = started(job);
    if let Some(start) = start {
        rows.push(("Started:", timestamp(start)));
    }
    if let Some(end) = job.ended_at.as_ref().map(system_time) {
        let ran = start.and_then(|s| end.duration_since(s).ok());
        let ran = ran.map_or_else(String::new, |d| format!(" (ran {})", seconds(d)));
        rows.push(("Ended:", format!("{}{ran}", timestamp(end))));
    }
    if let Some(cpu) = &job.cpu_time {
        rows.push(("CPU time:", seconds(duration(cpu))));
    }
    if let Some(peak) = job.peak_memory_bytes {
        rows.push(("Peak memory:", bytes(peak)));
    }
    if let Some(output) = &job.output {
        let mut text = bytes(output.bytes);
        if output.dropped_bytes > 0 {
            text.push_str(&format!(
                " ({} more dropped past the output limit)",
                bytes(output.dropped_bytes)
            ));
        }
        if output.lost_bytes > 0 {
            text.push_str(&format!(" ({} lost: disk full)", bytes(output.lost_bytes)));
        }
        rows.push(("Output:", text));
    }
    if let State::Ended {
        outcome: Outcome::OomKilled,
        ..
    } = State::of(job)
    {
        rows.push(("Note:", "the job reached its memory limit".to_owned()));
    }
    if !job.note.is_empty() {
        rows.push(("Note:", job.note.clone()));
    }
    rows.push(("Limits:", limits(job.limits.as_ref())));
    plain_table(
        None,
        rows.into_iter()
            .map(|(key, value)| vec![key.to_owned(), value])
            .collect(),
    )
}

/// `cpus=0.5 memory=256MiB pids=1024`, or `none`.
fn limits(limits: Option<&pb::Limits>) -> String {
    let Some(l) = limits else {
        return "none".to_owned();
    };
    let mut parts = Vec::new();
    if let Some(cpus) = l.cpus {
        parts.push(format!("cpus={cpus}"));
    }
    let sizes = [
        ("memory", l.memory_bytes),
        ("io-read-bps", l.io_read_bps),
        ("io-write-bps", l.io_write_bps),
        ("max-output", l.output_bytes),
    ];
    for (name, value) in sizes {
        if let Some(value) = value {
            parts.push(format!("{name}={}", bytes(value)));
        }
    }
    let counts = [
        ("io-read-iops", l.io_read_iops),
        ("io-write-iops", l.io_write_iops),
        ("pids", l.pids),
    ];
    for (name, value) in counts {
        if let Some(value) = value {
            parts.push(format!("{name}={value}"));
        }
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(" ")
    }
}

/// The command as one would type it into a shell: arguments quoted where needed.
fn command_line(job: &pb::JobStatus) -> String {
    std::iter::once(&job.command)
        .chain(&job.args)
        .map(|word| shell_quote(word))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `word` unchanged if a shell would read it as one word, else in single quotes.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// At most `width` characters, with an ellipsis when cut.
fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// When the job started; `None` only from a server that left it out.
fn started(job: &pb::JobStatus) -> Option<SystemTime> {
    job.started_at.as_ref().map(system_time)
}

/// RFC 3339 UTC, to the second: for people.
fn timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// RFC 3339 UTC, to the microsecond: for programs, which compute durations from them.
fn timestamp_precise(time: &prost_types::Timestamp) -> String {
    humantime::format_rfc3339_micros(system_time(time)).to_string()
}

/// A protobuf timestamp as a time; before 1970 (never sent) as the epoch.
fn system_time(time: &prost_types::Timestamp) -> SystemTime {
    u64::try_from(time.seconds)
        .ok()
        .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)))
        .and_then(|t| t.checked_add(Duration::from_nanos(u64::try_from(time.nanos).unwrap_or(0))))
        .unwrap_or(UNIX_EPOCH)
}

/// A protobuf duration; a negative one (never sent) as zero.
fn duration(value: &prost_types::Duration) -> Duration {
    let seconds = u64::try_from(value.seconds).unwrap_or(0);
    let nanos = u32::try_from(value.nanos).unwrap_or(0);
    Duration::new(seconds, 0).saturating_add(Duration::from_nanos(u64::from(nanos)))
}

/// `1.234s`.
fn seconds(duration: Duration) -> String {
    format!("{:.3}s", duration.as_secs_f64())
}

/// `256MiB`, `1.5GiB`, `512B`: binary units, as the limits are given.
fn bytes(value: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if value < 1024 {
        return format!("{value}B");
    }
    // Precision is irrelevant here: this is for display only.
    #[allow(clippy::cast_precision_loss)]
    let mut scaled = value as f64 / 1024.0;
    let mut unit = 0;
    while scaled >= 1024.0 && unit + 1 < UNITS.len() {
        scaled /= 1024.0;
        unit += 1;
    }
    if scaled.fract() == 0.0 {
        format!("{scaled:.0}{}", UNITS[unit])
    } else {
        format!("{scaled:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> pb::JobStatus {
        pb::JobStatus {
            job_id: "7f9c1e2a-3b4d-4e5f-8a6b-9c0d1e2f3a4b".into(),
            owner: "alice".into(),
            command: "sh".into(),
            args: vec!["-c".into(), "exit 3".into()],
            state: pb::JobState::Exited as i32,
            exit_code: Some(3),
            uid: 1_879_048_193,
            working_dir: "/".into(),
            env: [("GREETING".to_owned(), "hello world".to_owned())].into(),
            started_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ended_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_001,
                nanos: 500_000_000,
            }),
            cpu_time: Some(prost_types::Duration {
                seconds: 0,
                nanos: 12_000_000,
            }),
            output: Some(pb::OutputSummary {
                bytes: 2048,
                dropped_bytes: 0,
                lost_bytes: 0,
            }),
            peak_memory_bytes: Some(3 << 20),
            limits: Some(pb::Limits {
                cpus: Some(0.5),
                memory_bytes: Some(256 << 20),
                pids: Some(1024),
                ..pb::Limits::default()
            }),
            ..pb::JobStatus::default()
        }
    }

    #[test]
    fn list_is_an_aligned_table_without_borders() {
        let mut out = Vec::new();
        print_list(&mut out, &[job()], OutputFormat::Table).expect("print");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "ID                                     OWNER   STATE       STARTED                COMMAND\n\
             7f9c1e2a-3b4d-4e5f-8a6b-9c0d1e2f3a4b   alice   exited(3)   2023-11-14T22:13:20Z   sh -c 'exit 3'\n"
        );
    }

    #[test]
    fn status_shows_everything_known_about_the_job() {
        let mut out = Vec::new();
        print_status(&mut out, &job(), OutputFormat::Table).expect("print");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "ID:            7f9c1e2a-3b4d-4e5f-8a6b-9c0d1e2f3a4b\n\
             Owner:         alice (uid 1879048193)\n\
             Command:       sh -c 'exit 3'\n\
             Working dir:   /\n\
             Env:           'GREETING=hello world'\n\
             State:         exited(3)\n\
             Started:       2023-11-14T22:13:20Z\n\
             Ended:         2023-11-14T22:13:21Z (ran 1.500s)\n\
             CPU time:      0.012s\n\
             Peak memory:   3MiB\n\
             Output:        2KiB\n\
             Limits:        cpus=0.5 memory=256MiB pids=1024\n"
        );
    }

    #[test]
    fn json_has_stable_field_names() {
        let mut out = Vec::new();
        print_status(&mut out, &job(), OutputFormat::Json).expect("print");
        let value: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(value["id"], "7f9c1e2a-3b4d-4e5f-8a6b-9c0d1e2f3a4b");
        assert_eq!(value["state"], "exited");
        assert_eq!(value["exit_code"], 3);
        assert_eq!(value["signal"], serde_json::Value::Null);
        assert_eq!(value["args"], serde_json::json!(["-c", "exit 3"]));
        assert_eq!(value["started_at"], "2023-11-14T22:13:20.000000Z");
        assert_eq!(value["ended_at"], "2023-11-14T22:13:21.500000Z");
        assert_eq!(value["cpu_time_seconds"], 0.012);
        assert_eq!(value["env"]["GREETING"], "hello world");
        assert_eq!(value["working_dir"], "/");
        assert_eq!(value["output"]["bytes"], 2048);
        assert_eq!(value["note"], serde_json::Value::Null);
        assert_eq!(value["limits"]["memory_bytes"], 256 << 20);
        assert_eq!(value["limits"]["io_read_bps"], serde_json::Value::Null);
    }

    #[test]
    fn an_empty_list_is_an_empty_json_array() {
        let mut out = Vec::new();
        print_list(&mut out, &[], OutputFormat::Json).expect("print");
        assert_eq!(out, b"[]\n");
    }

    #[test]
    fn words_are_quoted_only_when_a_shell_needs_it() {
        assert_eq!(shell_quote("/bin/ls"), "/bin/ls");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn sizes_are_shown_in_binary_units() {
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(256 << 20), "256MiB");
        assert_eq!(bytes(3 << 29), "1.5GiB");
    }

    #[test]
    fn timestamps_are_utc_rfc3339() {
        let time = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 999_999_999,
        };
        assert_eq!(timestamp(system_time(&time)), "2023-11-14T22:13:20Z");
        assert_eq!(timestamp_precise(&time), "2023-11-14T22:13:20.999999Z");
        let before_1970 = prost_types::Timestamp {
            seconds: -5,
            nanos: 0,
        };
        assert_eq!(
            timestamp_precise(&before_1970),
            "1970-01-01T00:00:00.000000Z"
        );
    }
}
