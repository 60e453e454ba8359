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
use std::os::fd::AsRawFd;
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
        let read_error = |source| OutputError::Read {
            path: self.path.to_path_buf(),
            source,
        };
        // Output is almost always still in the page cache (just written, or just read by
        // another reader): read it right here. Only a read that would wait for the disk goes to
        // the blocking pool, so a cold page cache never stalls the runtime, and a cached one
        // costs no thread hop (a hop per chunk cost a quarter of the daemon's CPU when
        // streaming; see docs/benchmarks.md).
        let read = match read_cached(&self.file, self.offset, want).map_err(read_error)? {
            Some(read) => read,
            None => {
                let file = self.file.clone();
                let offset = self.offset;
                tokio::task::spawn_blocking(move || {
                    let mut buf = BytesMut::zeroed(want);
                    file.read_exact_at(&mut buf, offset).map(|()| buf)
                })
                .await
                .map_err(io::Error::other)
                .and_then(|r| r)
                .map_err(read_error)?
            }
        };
        self.offset += read.len() as u64;
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

/// Reads up to `want` bytes at `offset` if the page cache holds (the first of) them, without
/// ever blocking: `preadv2` with `RWF_NOWAIT`. `None` when the read would have to wait for the
/// disk, or the file system cannot tell; the caller then reads on the blocking pool.
///
/// A short read (only the start of the range cached) is fine: the reader parses frames from
/// whatever it has. The buffer is not zeroed first: the kernel fills the part it returns.
fn read_cached(file: &File, offset: u64, want: usize) -> io::Result<Option<BytesMut>> {
    let mut buf = BytesMut::with_capacity(want);
    let iov = libc::iovec {
        iov_base: buf.spare_capacity_mut().as_mut_ptr().cast(),
        iov_len: want,
    };
    let offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    // SAFETY: the kernel writes at most `want` bytes into the buffer's spare capacity, which
    // holds at least `want` bytes.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    match usize::try_from(n) {
        // Nothing cached at the offset: the blocking read will report a real end of file.
        Ok(0) => Ok(None),
        Ok(n) => {
            // SAFETY: the kernel initialised the first `n` bytes.
            unsafe { buf.set_len(n) };
            Ok(Some(buf))
        }
        Err(_) => {
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                // Not cached (EAGAIN), no RWF_NOWAIT support on this file system or kernel
                // (EOPNOTSUPP), or a signal (EINTR): the blocking read handles all three.
                Some(libc::EAGAIN | libc::EOPNOTSUPP | libc::EINTR) => Ok(None),
                _ => Err(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_bytes_are_read_without_the_blocking_pool() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        std::fs::write(&path, b"just written, so in the page cache").expect("write");
        let file = File::open(&path).expect("open");

        let read = read_cached(&file, 5, 7).expect("read");

        assert_eq!(read.as_deref(), Some(&b"written"[..]));
    }

    #[test]
    fn nothing_past_the_end_is_left_to_the_blocking_read_to_report() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        std::fs::write(&path, b"short").expect("write");
        let file = File::open(&path).expect("open");

        assert!(read_cached(&file, 5, 10).expect("read").is_none());
    }
}
