//! A job's output: one append-only log file, one writer, any number of readers.
//!
//! The file is a sequence of frames, `[stream: u8][len: u32 LE][len bytes]`, in the order the
//! worker read them from the job's pipes, so interleaving between stdout and stderr is kept and
//! bytes are never altered. The writer publishes how many bytes of whole frames are in the file
//! through a `watch` channel; each reader keeps only its own offset, reads the file up to that
//! length and then waits for the next change. So readers never poll, never make the writer wait,
//! and hold at most one read buffer each, however large the output or slow the reader.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::watch;

/// Size of a frame header.
const HEADER: usize = 5;
/// The most a frame carries, and the most a reader reads at once. Big enough to amortise a
/// system call and a message per chunk, small enough that a thousand readers cost little.
pub(crate) const CHUNK: usize = 64 * 1024;

/// Which of the job's output streams a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The job's standard output.
    Stdout,
    /// The job's standard error.
    Stderr,
}

impl Stream {
    fn tag(self) -> u8 {
        match self {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        }
    }

    fn from_tag(tag: u8) -> Option<Stream> {
        match tag {
            1 => Some(Stream::Stdout),
            2 => Some(Stream::Stderr),
            _ => None,
        }
    }
}

/// Which streams a reader wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamFilter {
    /// Both, in the order the job wrote them.
    #[default]
    Both,
    /// Only standard output.
    Stdout,
    /// Only standard error.
    Stderr,
}

impl StreamFilter {
    fn wants(self, stream: Stream) -> bool {
        match self {
            StreamFilter::Both => true,
            StreamFilter::Stdout => stream == Stream::Stdout,
            StreamFilter::Stderr => stream == Stream::Stderr,
        }
    }
}

/// Bytes from one stream, exactly as the job wrote them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Where the bytes came from.
    pub stream: Stream,
    /// The bytes.
    pub data: Bytes,
}

/// What the writer has committed: whole frames up to `len`; `closed` once nothing more comes;
/// `lost` once some output could not be stored (e.g. a full disk).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Progress {
    len: u64,
    closed: bool,
    lost: bool,
}

/// Why reading a job's output failed.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// Reading the log file failed.
    #[error("cannot read the job's output log {path}: {source}")]
    Read {
        /// The log file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The log file does not hold well-formed frames (it was modified outside the worker).
    #[error("the job's output log {0} is corrupt")]
    Corrupt(PathBuf),
    /// Part of the job's output could not be stored; everything that was stored has been read.
    #[error(
        "the job's output is incomplete: writing its log {0} failed (is the disk full?); \
         everything stored was delivered"
    )]
    Incomplete(PathBuf),
}

/// The writing end, owned by the job's supervisor thread. Dropping it closes the log, so
/// readers always reach an end even if the supervisor fails.
pub(crate) struct LogWriter {
    file: File,
    len: u64,
    progress: watch::Sender<Progress>,
}

/// A handle to a job's log from which readers are made. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Log {
    path: Arc<PathBuf>,
    progress: watch::Receiver<Progress>,
}

/// Creates the log file at `path` (which must not exist), readable by the worker only.
pub(crate) fn create(path: &Path) -> io::Result<(LogWriter, Log)> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let (progress, rx) = watch::channel(Progress::default());
    let writer = LogWriter {
        file,
        len: 0,
        progress,
    };
    let log = Log {
        path: Arc::new(path.to_owned()),
        progress: rx,
    };
    Ok((writer, log))
}

impl LogWriter {
    /// Appends one frame. `frame[..HEADER]` is scratch space for the header; the payload is
    /// `frame[HEADER..]`, at most [`CHUNK`] bytes. One `write` call per frame.
    pub(crate) fn append(&mut self, stream: Stream, frame: &mut [u8]) -> io::Result<()> {
        let payload = frame.len() - HEADER;
        debug_assert!(payload > 0 && payload <= CHUNK);
        frame[0] = stream.tag();
        frame[1..HEADER].copy_from_slice(&(payload as u32).to_le_bytes());
        self.file.write_all(frame)?;
        self.len += frame.len() as u64;
        let len = self.len;
        self.progress.send_modify(|p| p.len = len);
        Ok(())
    }

    /// A buffer with room for one header and [`CHUNK`] bytes of payload.
    pub(crate) fn frame_buffer() -> Vec<u8> {
        vec![0; HEADER + CHUNK]
    }

    /// Where a frame's payload starts in a [`frame_buffer`](Self::frame_buffer).
    pub(crate) const PAYLOAD: usize = HEADER;
}

impl LogWriter {
    /// Records that output was lost, so every reader reports it at the end instead of
    /// presenting a truncated log as complete.
    pub(crate) fn mark_lost(&mut self) {
        self.progress.send_modify(|p| p.lost = true);
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.progress.send_modify(|p| p.closed = true);
    }
}

impl Log {
    /// A reader from the first byte.
    pub(crate) fn reader(&self, filter: StreamFilter) -> Result<OutputReader, OutputError> {
        let file = File::open(&*self.path).map_err(|source| OutputError::Read {
            path: self.path.to_path_buf(),
            source,
        })?;
        Ok(OutputReader {
            file: Arc::new(file),
            path: self.path.clone(),
            progress: self.progress.clone(),
            filter,
            offset: 0,
            pending: Bytes::new(),
            frame: None,
        })
    }

    /// The log file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads a job's output from the first byte, following it until the job has ended and
/// everything has been read. Dropping it releases everything it holds.
#[derive(Debug)]
pub struct OutputReader {
    file: Arc<File>,
    path: Arc<PathBuf>,
    progress: watch::Receiver<Progress>,
    filter: StreamFilter,
    /// File offset of the first byte not yet read into `pending`.
    offset: u64,
    /// Bytes read from the file and not yet handed out.
    pending: Bytes,
    /// The frame being handed out: its stream and how many payload bytes remain.
    frame: Option<(Stream, usize)>,
}

impl OutputReader {
    /// The next chunk, or `None` once the job has ended and all its output was read.
    ///
    /// Cancel-safe: dropping the future loses nothing, the next call resumes where this one was.
    pub async fn next(&mut self) -> Result<Option<Chunk>, OutputError> {
        loop {
            match self.frame {
                Some((_, 0)) => self.frame = None,
                Some((stream, left)) if !self.filter.wants(stream) => {
                    // Skip the frame: drop what was read of it, seek past the rest.
                    let have = left.min(self.pending.len());
                    self.pending.advance(have);
                    self.offset += (left - have) as u64;
                    self.frame = None;
                }
                Some((stream, left)) if !self.pending.is_empty() => {
                    let data = self.pending.split_to(left.min(self.pending.len()));
                    self.frame = Some((stream, left - data.len()));
                    return Ok(Some(Chunk { stream, data }));
                }
                None if self.pending.len() >= HEADER => {
                    let header = self.pending.split_to(HEADER);
                    let stream = Stream::from_tag(header[0]).ok_or_else(|| self.corrupt())?;
                    let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
                    self.frame = Some((stream, len as usize));
                }
                // Mid-frame with nothing buffered, or less than a header buffered.
                _ => {
                    if !self.fill().await? {
                        if self.frame.is_some() || !self.pending.is_empty() {
                            return Err(self.corrupt());
                        }
                        if self.progress.borrow().lost {
                            return Err(OutputError::Incomplete(self.path.to_path_buf()));
                        }
                        return Ok(None);
                    }
                }
            }
        }
    }

    fn corrupt(&self) -> OutputError {
        OutputError::Corrupt(self.path.to_path_buf())
    }

    /// Waits for committed bytes past our offset and reads a chunk of them into `pending`.
    /// Returns false at the end of the log.
    async fn fill(&mut self) -> Result<bool, OutputError> {
        let committed = loop {
            let progress = *self.progress.borrow_and_update();
            if progress.len > self.offset {
                break progress.len;
            }
            if progress.closed {
                return Ok(false);
            }
            if self.progress.changed().await.is_err() {
                // The writer is gone (its Drop marked the log closed); re-check once.
                let progress = *self.progress.borrow();
                if progress.len > self.offset {
                    break progress.len;
                }
                return Ok(false);
            }
        };
        let want = (committed - self.offset).min((HEADER + CHUNK) as u64) as usize;
        let file = self.file.clone();
        let offset = self.offset;
        // Page-cache reads are fast but may block on a cold disk: keep them off the runtime.
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = BytesMut::zeroed(want);
            file.read_exact_at(&mut buf, offset).map(|()| buf)
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r)
        .map_err(|source| OutputError::Read {
            path: self.path.to_path_buf(),
            source,
        })?;
        self.offset += want as u64;
        self.pending = if self.pending.is_empty() {
            read.freeze()
        } else {
            // A header split across two reads: join its pieces (at most HEADER-1 bytes held).
            let mut joined = BytesMut::with_capacity(self.pending.len() + read.len());
            joined.extend_from_slice(&self.pending);
            joined.extend_from_slice(&read);
            joined.freeze()
        };
        Ok(true)
    }
}
