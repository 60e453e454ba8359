//! Property tests of the log format, its writer and its readers: whatever the job wrote reads
//! back exactly, from any position; whatever happened to the file afterwards is detected, never
//! misread, and everything before the damage is still read.
//!
//! The logs are written by the init's own [`LogWriter`] and read by [`OutputReader`] and
//! [`scan`], on real files. Each property is checked against a model of the log built from the
//! chunk sizes alone (where each frame starts and ends, which output positions it carries), so
//! the expected outcome of a read never comes from the code under test.
//!
//! Each property runs proptest's 256 cases by default, as CI does; `PROPTEST_CASES=1000000`
//! is the long mode (see "Property tests" in docs/benchmarks.md). Damage is detected by each
//! frame's CRC-32C, so a property may fail by a checksum collision, with a chance of 2^-32 per
//! damaged frame: proptest then prints the input, which reproduces it.

use std::fmt::Debug;
use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseResult, TestRunner};
use tokio::sync::watch;

use super::*;

/// One read of the job's pipes: the bytes its init hands to [`LogWriter::append`].
#[derive(Clone)]
struct Write {
    stream: Stream,
    /// What `data` was made from (see [`noise`]).
    seed: u64,
    data: Vec<u8>,
}

impl Debug for Write {
    // Size and seed say what the bytes are; printing up to 64 KiB of them would bury the
    // failing case.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (stream, size, seed) = (self.stream, self.data.len(), self.seed);
        write!(f, "{stream:?} {size} bytes (seed {seed})")
    }
}

fn stream() -> impl Strategy<Value = Stream> {
    prop_oneof![Just(Stream::Stdout), Just(Stream::Stderr)]
}

/// A read's size: mostly small, sometimes anything up to a full frame, sometimes right at the
/// frame's limit. Empty reads are included: the writer stores nothing for them.
fn read_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        16 => 0..=64usize,
        6 => 0..=4096usize,
        1 => 0..=CHUNK,
        1 => CHUNK - 1..=CHUNK,
    ]
}

fn write() -> impl Strategy<Value = Write> {
    (stream(), read_size(), any::<u64>()).prop_map(|(stream, len, seed)| Write {
        stream,
        seed,
        data: noise(seed, len),
    })
}

fn writes() -> impl Strategy<Value = Vec<Write>> {
    prop::collection::vec(write(), 0..10)
}

/// `len` bytes that vary with `seed` (xorshift64): much cheaper than `len` generated values,
/// and a failing case still shrinks by its size.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn filter() -> impl Strategy<Value = StreamFilter> {
    prop_oneof![
        Just(StreamFilter::Both),
        Just(StreamFilter::Stdout),
        Just(StreamFilter::Stderr),
    ]
}

/// Where a reader starts, relative to the output it will find.
#[derive(Debug, Clone)]
enum Start {
    /// A position within the output, its very end included.
    Within(Index),
    /// This many bytes past the end (saturating).
    PastEnd(u64),
}

fn start() -> impl Strategy<Value = Start> {
    prop_oneof![
        6 => any::<Index>().prop_map(Start::Within),
        1 => prop_oneof![1..=3u64, Just(u64::MAX)].prop_map(Start::PastEnd),
    ]
}

impl Start {
    fn position(&self, output: u64) -> u64 {
        match self {
            Start::Within(i) => i.index(output as usize + 1) as u64,
            Start::PastEnd(n) => output.saturating_add(*n),
        }
    }
}

/// Something that happens to a log file after it was written.
#[derive(Debug, Clone)]
enum Damage {
    /// One bit flipped.
    FlipBit { at: Index, bit: u8 },
    /// A few bytes overwritten with others.
    Overwrite { at: Index, bytes: Vec<u8> },
    /// The file cut short, anywhere.
    Truncate { at: Index },
    /// Bytes appended after the last frame.
    Append { bytes: Vec<u8> },
    /// A frame's length set to one no frame has (0, or past [`CHUNK`]), its checksum made to
    /// match: only the length check can tell.
    BadLength { frame: Index, len: u32 },
    /// A frame's stream tag set to one no stream has, its checksum made to match.
    BadTag { frame: Index, tag: u8 },
}

fn damage() -> impl Strategy<Value = Damage> {
    let bytes = |max| prop::collection::vec(any::<u8>(), 1..=max);
    prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Damage::FlipBit { at, bit }),
        (any::<Index>(), bytes(16)).prop_map(|(at, bytes)| Damage::Overwrite { at, bytes }),
        any::<Index>().prop_map(|at| Damage::Truncate { at }),
        bytes(64).prop_map(|bytes| Damage::Append { bytes }),
        (
            any::<Index>(),
            prop_oneof![Just(0), CHUNK as u32 + 1..=u32::MAX]
        )
            .prop_map(|(frame, len)| Damage::BadLength { frame, len }),
        (any::<Index>(), prop_oneof![Just(0u8), 3..=u8::MAX])
            .prop_map(|(frame, tag)| Damage::BadTag { frame, tag }),
    ]
}

/// A log as the writer must have laid it out: one frame per non-empty write, in order.
struct Model {
    frames: Vec<Frame>,
}

/// One frame: where it is in the file, what it carries, and where that is in the output.
struct Frame {
    stream: Stream,
    /// File offset of its header.
    at: usize,
    /// File offset just past its payload.
    end: usize,
    /// Output position of its first payload byte.
    position: u64,
    data: Vec<u8>,
}

/// How a read of a log ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// `None`: the whole log was read.
    End,
    /// A frame that fails its checks, at this file offset.
    Corrupt { at: u64 },
    /// The start position is past the end of the output.
    PastEnd { offset: u64, len: u64 },
    /// Anything else (never expected).
    Other(String),
}

impl Model {
    fn of(writes: &[Write]) -> Model {
        let mut frames = Vec::new();
        let (mut at, mut position) = (0, 0);
        for write in writes.iter().filter(|w| !w.data.is_empty()) {
            let end = at + HEADER + write.data.len();
            frames.push(Frame {
                stream: write.stream,
                at,
                end,
                position,
                data: write.data.clone(),
            });
            at = end;
            position += write.data.len() as u64;
        }
        Model { frames }
    }

    /// Length of the log file.
    fn len(&self) -> usize {
        self.frames.last().map_or(0, |f| f.end)
    }

    /// Bytes of output in the whole log.
    fn output(&self) -> u64 {
        self.output_before(self.len())
    }

    /// Bytes of output in the frames that end at or before file offset `end`.
    fn output_before(&self, end: usize) -> u64 {
        self.whole_frames_before(end)
            .map(|f| f.data.len() as u64)
            .sum()
    }

    fn whole_frames_before(&self, end: usize) -> impl Iterator<Item = &Frame> {
        self.frames.iter().take_while(move |f| f.end <= end)
    }

    /// The end of the last whole frame at or before file offset `at` (0 if none).
    fn boundary_before(&self, at: usize) -> usize {
        self.whole_frames_before(at).last().map_or(0, |f| f.end)
    }

    /// Where the valid frames of `file` end, given that the log was `original` and that
    /// readers stop at `end`: at the last frame boundary before the first byte that differs
    /// (or is missing).
    fn valid_len(&self, original: &[u8], file: &[u8], end: usize) -> usize {
        let visible = &file[..end.min(file.len())];
        let same = visible
            .iter()
            .zip(original)
            .take_while(|(a, b)| a == b)
            .count();
        self.boundary_before(same)
    }

    /// What a reader of `file` from `from`, stopping at `end`, must hand out, and how it must
    /// end.
    fn expected_read(
        &self,
        original: &[u8],
        file: &[u8],
        end: usize,
        filter: StreamFilter,
        from: u64,
    ) -> (Vec<Chunk>, Outcome) {
        let valid = self.valid_len(original, file, end);
        let chunks = self
            .whole_frames_before(valid)
            .filter(|f| filter.wants(f.stream))
            .filter(|f| f.position + f.data.len() as u64 > from)
            .map(|f| {
                let offset = f.position.max(from);
                Chunk {
                    stream: f.stream,
                    offset,
                    data: Bytes::copy_from_slice(&f.data[(offset - f.position) as usize..]),
                }
            })
            .collect();
        let output = self.output_before(valid);
        let outcome = if valid < end {
            Outcome::Corrupt { at: valid as u64 }
        } else if from > output {
            Outcome::PastEnd {
                offset: from,
                len: output,
            }
        } else {
            Outcome::End
        };
        (chunks, outcome)
    }

    /// `log` (this log, perhaps torn) as the init's writes made it: its whole frames one by
    /// one, then what is left of a torn last write.
    fn pieces(&self, log: &[u8]) -> Vec<Vec<u8>> {
        let mut pieces: Vec<Vec<u8>> = self
            .whole_frames_before(log.len())
            .map(|f| log[f.at..f.end].to_vec())
            .collect();
        let valid = self.boundary_before(log.len());
        if valid < log.len() {
            pieces.push(log[valid..].to_vec());
        }
        pieces
    }

    /// Applies `damage` to `file`, a copy of this log.
    fn damage(&self, file: &mut Vec<u8>, damage: &Damage) {
        match damage {
            Damage::FlipBit { at, bit } if !file.is_empty() => {
                let at = at.index(file.len());
                file[at] ^= 1 << bit;
            }
            Damage::Overwrite { at, bytes } if !file.is_empty() => {
                let at = at.index(file.len());
                let n = bytes.len().min(file.len() - at);
                file[at..at + n].copy_from_slice(&bytes[..n]);
            }
            Damage::Truncate { at } => file.truncate(at.index(file.len() + 1)),
            Damage::Append { bytes } => file.extend_from_slice(bytes),
            Damage::BadLength { frame, len } if !self.frames.is_empty() => {
                let frame = &self.frames[frame.index(self.frames.len())];
                reseal(file, frame, |header| {
                    header[1..5].copy_from_slice(&len.to_le_bytes())
                });
            }
            Damage::BadTag { frame, tag } if !self.frames.is_empty() => {
                let frame = &self.frames[frame.index(self.frames.len())];
                reseal(file, frame, |header| header[0] = *tag);
            }
            // Nothing to damage in an empty log.
            _ => {}
        }
    }
}

/// Changes `frame`'s header in `file` (if the file still holds all of the frame) and gives it
/// the checksum of the changed header and the payload, as a writer would have.
fn reseal(file: &mut [u8], frame: &Frame, change: impl FnOnce(&mut [u8])) {
    if file.len() < frame.end {
        return;
    }
    change(&mut file[frame.at..frame.at + 5]);
    let crc = frame_crc(
        &file[frame.at..frame.at + 5],
        &file[frame.at + HEADER..frame.end],
    );
    file[frame.at + 5..frame.at + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// A runtime and a directory per test: the properties run many cases each.
struct Scratch {
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    log: Arc<PathBuf>,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        Scratch {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            log: Arc::new(dir.path().join("output.log")),
            _dir: dir,
        }
    }

    /// A new, empty log file. Not the old one truncated: on ext4, a file truncated to zero is
    /// flushed to disk when closed, which made the cases wait for the disk.
    fn new_log(&self) -> File {
        match std::fs::remove_file(&*self.log) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("remove the last case's log: {e}"),
        }
        File::create_new(&*self.log).expect("create the log")
    }

    /// Writes `writes` to a new log with the init's writer; returns the file's bytes.
    fn write_log(&self, writes: &[Write]) -> Vec<u8> {
        let file = self.new_log();
        let mut writer = LogWriter::new(file, u64::MAX);
        let mut frame = LogWriter::frame_buffer();
        for write in writes {
            frame[HEADER..HEADER + write.data.len()].copy_from_slice(&write.data);
            writer.append(write.stream, &mut frame, write.data.len());
        }
        assert_eq!(writer.dropped_bytes + writer.lost_bytes, 0);
        std::fs::read(&*self.log).expect("read the log back")
    }

    fn replace_log(&self, bytes: &[u8]) {
        self.new_log().write_all(bytes).expect("rewrite the log");
    }

    /// Reads the log of a job that has ended (its log ending at `end`) from `from`.
    fn read_finished(&self, end: usize, filter: StreamFilter, from: u64) -> (Vec<Chunk>, Outcome) {
        let end = LogEnd {
            len: end as u64,
            output_bytes: 0,
            lost: false,
        };
        self.runtime.block_on(async {
            let (_grow_tx, grow) = watch::channel(());
            let (_end_tx, end) = watch::channel(Some(end));
            read_to_end(&self.log, grow, end, filter, from).await
        })
    }

    /// Reads the log of a running job from `from` while the job writes it: `pieces` of the
    /// log appended one `write(2)` each (the init's whole frames, perhaps a torn last one),
    /// each announced to readers; then the worker concludes the job: cuts the log to `valid`
    /// and publishes the end. The reader runs between the writes (a current-thread runtime
    /// switches tasks only where one waits), so it sees the log grow.
    fn read_following(
        &self,
        pieces: Vec<Vec<u8>>,
        valid: usize,
        filter: StreamFilter,
        from: u64,
    ) -> (Vec<Chunk>, Outcome) {
        let file = self.new_log();
        self.runtime.block_on(async {
            let (grow_tx, grow) = watch::channel(());
            let (end_tx, end) = watch::channel(None);
            let job = tokio::spawn(async move {
                let mut file = file;
                for piece in pieces {
                    file.write_all(&piece).expect("append to the log");
                    grow_tx.send_replace(());
                    tokio::task::yield_now().await;
                }
                file.set_len(valid as u64).expect("cut the torn write off");
                end_tx.send_replace(Some(LogEnd {
                    len: valid as u64,
                    output_bytes: 0,
                    lost: false,
                }));
                // Kept until the reader is done: a closed channel would end it early.
                (grow_tx, end_tx)
            });
            let read = read_to_end(&self.log, grow, end, filter, from).await;
            drop(job.await.expect("the job's writes"));
            read
        })
    }

    fn scan(&self) -> Scan {
        scan(&File::open(&*self.log).expect("open the log")).expect("scan")
    }
}

async fn read_to_end(
    log: &Arc<PathBuf>,
    grow: watch::Receiver<()>,
    end: watch::Receiver<Option<LogEnd>>,
    filter: StreamFilter,
    from: u64,
) -> (Vec<Chunk>, Outcome) {
    let mut chunks = Vec::new();
    let mut reader = match OutputReader::open(log.clone(), grow, end, filter, from) {
        Ok(reader) => reader,
        Err(e) => return (chunks, Outcome::Other(e.to_string())),
    };
    loop {
        match reader.next().await {
            Ok(Some(chunk)) => chunks.push(chunk),
            Ok(None) => return (chunks, Outcome::End),
            Err(OutputError::Corrupt { at, .. }) => return (chunks, Outcome::Corrupt { at }),
            Err(OutputError::OffsetPastEnd { offset, len }) => {
                return (chunks, Outcome::PastEnd { offset, len });
            }
            Err(e) => return (chunks, Outcome::Other(e.to_string())),
        }
    }
}

/// Checks a read against the model's expectation; the failure names the first difference
/// rather than printing both reads whole.
fn same_read(
    what: &str,
    got: (Vec<Chunk>, Outcome),
    want: (Vec<Chunk>, Outcome),
) -> TestCaseResult {
    let shape = |chunks: &[Chunk]| -> Vec<(Stream, u64, usize)> {
        chunks
            .iter()
            .map(|c| (c.stream, c.offset, c.data.len()))
            .collect()
    };
    prop_assert_eq!(
        shape(&got.0),
        shape(&want.0),
        "{}: chunks (stream, offset, size)",
        what
    );
    for (got_chunk, want_chunk) in got.0.iter().zip(&want.0) {
        prop_assert!(
            got_chunk.data == want_chunk.data,
            "{}: the chunk at offset {} holds other bytes than were written there",
            what,
            got_chunk.offset
        );
    }
    prop_assert_eq!(got.1, want.1, "{}: how the read ended", what);
    Ok(())
}

/// Runs `property` on proptest's number of cases (`PROPTEST_CASES`, 256 unless set), panicking
/// with the smallest failing input found.
fn check<S>(strategy: S, property: impl Fn(S::Value) -> TestCaseResult)
where
    S: Strategy,
    S::Value: Debug,
{
    let config = Config {
        source_file: Some(file!()),
        ..Config::default()
    };
    if let Err(failure) = TestRunner::new(config).run(&strategy, property) {
        panic!("{failure}");
    }
}

#[test]
fn written_output_reads_back_exactly_from_any_position() {
    let scratch = Scratch::new();
    check((writes(), start(), filter()), |(writes, start, filter)| {
        let model = Model::of(&writes);
        let log = scratch.write_log(&writes);
        prop_assert_eq!(log.len(), model.len(), "one frame per non-empty write");
        prop_assert_eq!(
            scratch.scan(),
            Scan {
                valid_len: log.len() as u64,
                output_bytes: model.output(),
                trailing: false,
            }
        );
        let from = start.position(model.output());
        same_read(
            "finished log",
            scratch.read_finished(log.len(), filter, from),
            model.expected_read(&log, &log, log.len(), filter, from),
        )?;
        same_read(
            "running job's log",
            scratch.read_following(model.pieces(&log), log.len(), filter, from),
            model.expected_read(&log, &log, log.len(), filter, from),
        )
    });
}

#[test]
fn a_torn_last_write_is_found_and_cut_off_and_everything_before_it_is_read() {
    let scratch = Scratch::new();
    check(
        (writes(), any::<Index>(), start(), filter()),
        |(writes, cut, start, filter)| {
            let model = Model::of(&writes);
            let log = scratch.write_log(&writes);
            let torn = &log[..cut.index(log.len() + 1)];
            let valid = model.boundary_before(torn.len());
            let from = start.position(model.output_before(valid));

            // A running job's torn last write is "not yet"; the worker then cuts it off.
            same_read(
                "running job's log, torn write cut off at its end",
                scratch.read_following(model.pieces(torn), valid, filter, from),
                model.expected_read(&log, &log[..valid], valid, filter, from),
            )?;
            scratch.replace_log(torn);
            prop_assert_eq!(
                scratch.scan(),
                Scan {
                    valid_len: valid as u64,
                    output_bytes: model.output_before(valid),
                    trailing: valid < torn.len(),
                },
                "the recovery scan finds where the whole frames end"
            );
            // A finished log that still ends in a torn write is damage: the worker cuts it off
            // before publishing the end, so a reader never expects one.
            same_read(
                "torn finished log",
                scratch.read_finished(torn.len(), filter, from),
                model.expected_read(&log, torn, torn.len(), filter, from),
            )
        },
    );
}

#[test]
fn damage_anywhere_is_reported_where_it_starts_and_nothing_after_it_is_delivered() {
    let scratch = Scratch::new();
    check(
        (
            writes(),
            prop::collection::vec(damage(), 1..4),
            start(),
            filter(),
        ),
        |(writes, damages, start, filter)| {
            let model = Model::of(&writes);
            let log = scratch.write_log(&writes);
            let mut damaged = log.clone();
            for damage in &damages {
                model.damage(&mut damaged, damage);
            }
            scratch.replace_log(&damaged);

            let valid = model.valid_len(&log, &damaged, damaged.len());
            prop_assert_eq!(
                scratch.scan(),
                Scan {
                    valid_len: valid as u64,
                    output_bytes: model.output_before(valid),
                    trailing: valid < damaged.len(),
                }
            );
            let from = start.position(model.output());
            // Read to the end of the file as it is now, and to the end the writer recorded
            // (bytes appended past it are not part of the log; bytes missing from it are damage).
            same_read(
                "to the end of the damaged file",
                scratch.read_finished(damaged.len(), filter, from),
                model.expected_read(&log, &damaged, damaged.len(), filter, from),
            )?;
            same_read(
                "to the recorded end",
                scratch.read_finished(log.len(), filter, from),
                model.expected_read(&log, &damaged, log.len(), filter, from),
            )
        },
    );
}

#[test]
fn a_file_of_random_bytes_yields_no_output() {
    let scratch = Scratch::new();
    // Half the files start like a frame (a real tag, a small length, often with all of its
    // bytes there), so that the checksum is what refuses them.
    let frame_like = (
        prop_oneof![Just(1u8), Just(2u8)],
        1..=128u32,
        prop::collection::vec(any::<u8>(), 0..256),
    )
        .prop_map(|(tag, len, rest)| {
            let mut bytes = vec![tag];
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend(rest);
            bytes
        });
    let files = prop_oneof![prop::collection::vec(any::<u8>(), 0..2048), frame_like];
    check((files, filter()), |(bytes, filter)| {
        scratch.replace_log(&bytes);
        let nothing = Model { frames: Vec::new() };
        prop_assert_eq!(
            scratch.scan(),
            Scan {
                valid_len: 0,
                output_bytes: 0,
                trailing: !bytes.is_empty(),
            }
        );
        same_read(
            "random file",
            scratch.read_finished(bytes.len(), filter, 0),
            nothing.expected_read(&[], &bytes, bytes.len(), filter, 0),
        )
    });
}
