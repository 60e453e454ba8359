//! The report: one row per measurement, notes that explain them, every error, and the markdown
//! they are printed as.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use crate::machine::{self, Machine};
use crate::stats;

/// Marks the generated part of the output file: text outside the markers (the analysis written
/// by hand) survives a rerun.
const BEGIN: &str = "<!-- jobworker-bench: generated section begins -->";
const END: &str = "<!-- jobworker-bench: generated section ends -->";

/// The command that reproduces the committed results.
const REPRODUCE: &str = "cargo build --release --workspace --locked && \
    sudo cargo run --release --locked -p jobworker-bench -- --out docs/benchmarks.md";

/// One measurement.
#[derive(Debug, Default)]
pub struct Row {
    /// The figure of issue 6 it belongs to ("1" … "5"); floors carry their figure's number.
    pub figure: &'static str,
    /// What was measured.
    pub what: String,
    /// How many operations or how many bytes.
    pub n: String,
    /// The measured value(s).
    pub result: String,
    /// What it is compared with, measured in the same run.
    pub reference: String,
    /// result ÷ reference.
    pub ratio: String,
    /// The goal, if it sets one.
    pub target: String,
    /// Whether the goal was reached; `None` where there is no goal.
    pub met: Option<bool>,
}

/// Everything a run found.
pub struct Report {
    quick: bool,
    machine: Machine,
    rows: Vec<Row>,
    /// Observations that explain the rows (CPU split, per-item memory, …).
    notes: Vec<String>,
    errors: Vec<String>,
    /// Set by [`Report::finish`].
    took: Option<Duration>,
    load_at_end: String,
}

/// How many error messages are kept; the count covers all of them.
const MAX_ERROR_MESSAGES: usize = 20;

impl Report {
    /// An empty report for a run on `machine`.
    pub fn new(quick: bool, machine: Machine) -> Report {
        Report {
            quick,
            machine,
            rows: Vec::new(),
            notes: Vec::new(),
            errors: Vec::new(),
            took: None,
            load_at_end: String::new(),
        }
    }

    /// Adds a row (and prints it at once, so a long run shows progress).
    pub fn row(&mut self, row: Row) {
        eprintln!(
            "  {} {}: {} {}",
            row.figure, row.what, row.result, row.ratio
        );
        self.rows.push(row);
    }

    /// Adds a note under the table.
    pub fn note(&mut self, note: String) {
        eprintln!("  note: {note}");
        self.notes.push(note);
    }

    /// Records an error: the run will exit non-zero.
    pub fn error(&mut self, message: String) {
        eprintln!("  error: {message}");
        self.errors.push(message);
    }

    /// Records every failure among `results` and returns how many there were.
    pub fn errors_in<T>(&mut self, what: &str, results: &[anyhow::Result<T>]) -> usize {
        let failures: Vec<String> = results
            .iter()
            .filter_map(|result| result.as_ref().err())
            .map(|e| format!("{what}: {e:#}"))
            .collect();
        let count = failures.len();
        for failure in failures {
            self.error(failure);
        }
        count
    }

    /// How many errors the run had.
    pub fn error_count(&self) -> usize {
        self.errors.len()
    }

    /// Notes the run's duration and the load at its end.
    pub fn finish(&mut self, took: Duration) {
        self.took = Some(took);
        self.load_at_end = machine::load_average();
    }

    /// The report as markdown, between the generated-section markers.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let push = |md: &mut String, line: &str| {
            md.push_str(line);
            md.push('\n');
        };
        push(&mut md, BEGIN);
        let mode = if self.quick {
            " in quick mode (`--quick`: small sizes, for CI; not the figures of the issue)"
        } else {
            ""
        };
        let took = self.took.map_or(String::new(), |took| {
            format!(", took {:.0} s", took.as_secs_f64())
        });
        push(
            &mut md,
            &format!(
                "Measured {}{mode}{took}. Reproduce (as root): `{REPRODUCE}`.",
                humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
            ),
        );
        push(&mut md, "");
        let m = &self.machine;
        push(
            &mut md,
            &format!(
                "Machine: {} CPUs ({}), {} memory, kernel {}, cgroup {}, state directories on {}. \
                 Load average (1 min) {} at the start, {} at the end: the machine is shared, \
                 other work runs beside the benchmark, so compare the ratios (each figure and \
                 its floor come from the same run, latencies interleaved round by round), not \
                 absolute numbers across runs. The benchmark's clients run on the same CPUs as \
                 the daemon.",
                m.cpus,
                m.cpu_model,
                stats::size(m.memory),
                m.kernel,
                m.cgroup,
                m.state_fs,
                m.load_at_start,
                self.load_at_end,
            ),
        );
        push(&mut md, "");
        push(
            &mut md,
            "| # | measurement | n | result | floor / reference (same run) | ratio | target | met |",
        );
        push(&mut md, "|---|---|---|---|---|---|---|---|");
        for row in &self.rows {
            let met = match row.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            let cells = [
                row.figure,
                &row.what,
                &row.n,
                &row.result,
                &row.reference,
                &row.ratio,
                &row.target,
                met,
            ];
            let cells: Vec<String> = cells.iter().map(|cell| cell.replace('|', "\\|")).collect();
            push(&mut md, &format!("| {} |", cells.join(" | ")));
        }
        push(&mut md, "");
        for note in &self.notes {
            push(&mut md, &format!("- {note}"));
        }
        if !self.notes.is_empty() {
            push(&mut md, "");
        }
        if self.errors.is_empty() {
            push(&mut md, "Errors: none.");
        } else {
            push(&mut md, &format!("Errors: **{}**", self.errors.len()));
            for error in self.errors.iter().take(MAX_ERROR_MESSAGES) {
                push(&mut md, &format!("- {}", error.replace('\n', " ")));
            }
        }
        push(&mut md, END);
        md
    }
}

/// Writes `generated` into `path`: in place of the file's generated section, or as a new file
/// with a title. A file without a generated section is refused rather than overwritten.
pub fn write_file(path: &Path, generated: &str) -> anyhow::Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let text = match existing {
        None => format!("# Benchmarks\n\n{generated}"),
        Some(text) => splice(&text, generated).with_context(|| {
            format!(
                "{} exists but has no generated section ({BEGIN} … {END}); not overwriting it",
                path.display()
            )
        })?,
    };
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// `text` with its generated section replaced by `generated`; `None` without markers.
fn splice(text: &str, generated: &str) -> Option<String> {
    let begin = text.find(BEGIN)?;
    let end = begin + text[begin..].find(END)? + END.len();
    // `generated` ends with a newline after END; so does the section it replaces, usually.
    let after = text[end..].strip_prefix('\n').unwrap_or(&text[end..]);
    Some(format!("{}{generated}{after}", &text[..begin]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rerun_replaces_only_the_generated_section() {
        let old =
            format!("# Benchmarks\n\nintro\n{BEGIN}\nold table\n{END}\n\n## Analysis\nkept\n");
        let new = format!("{BEGIN}\nnew table\n{END}\n");
        let spliced = splice(&old, &new).expect("markers present");
        assert_eq!(
            spliced,
            format!("# Benchmarks\n\nintro\n{BEGIN}\nnew table\n{END}\n\n## Analysis\nkept\n")
        );
    }

    #[test]
    fn a_file_without_markers_is_not_spliced() {
        assert_eq!(splice("# Notes\n", "x"), None);
    }
}
