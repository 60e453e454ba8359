//! A job's output: one append-only log file, one writer (the job's init), any number of
//! readers (in the daemon).
//!
//! The file is a sequence of frames, `[stream u8][len u32 LE][crc u32 LE][len bytes]`, in the
//! order the init read them from the job's pipes, so interleaving between stdout and stderr is
//! kept and bytes are never altered. The CRC-32C covers the stream tag, the length and the
//! payload: a torn or altered frame is detected, never misread.
//!
//! The init appends each frame with one `write(2)`. Readers learn that the file grew through a
//! notification (inotify, see [`crate::follow`]), and that it is complete through the job's end
//! ([`LogEnd`]: its final valid length). Each reader keeps only its own offset, reads the file up
//! to its current size and waits for the next change. So readers never poll, never make the
//! writer wait, and hold at most one read window each, however large the output or slow the
//! reader. A partly written frame at the end of a growing file is simply "not yet"; at the end of
//! a finished log it is a torn write, which the worker cuts off before it publishes the end.
//!
//! Positions: every chunk handed out carries its `offset`, the number of output bytes (stdout
//! and stderr together, payload only) before it. A reader can start at any such position, so a
//! client that lost its connection resumes exactly where it stopped.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::watch;

/// Size of a frame header: stream tag, payload length, CRC-32C.
pub(crate) const HEADER: usize = 9;
/// The most a frame carries. Big enough to amortise a system call and a message per chunk,
/// small enough that a thousand readers cost little.
pub(crate) const CHUNK: usize = 64 * 1024;
/// How much a reader reads at once: one full frame. (Kept under glibc's 128 KiB mmap threshold:
/// larger buffers, freed at this rate by many threads, fragment the heap.)
const WINDOW: usize = HEADER + CHUNK;

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
    /// Position of the first byte in the job's output (both streams counted): pass
    /// `offset + data.len()` to resume after this chunk.
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
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
    /// The log holds a frame that fails its checks (altered outside the worker, or damaged).
    #[error(
        "the job's output log {path} is corrupt at byte {at}; the output before it was delivered"
    )]
    Corrupt {
        /// The log file.
        path: PathBuf,
        /// Where the bad frame starts.
        at: u64,
    },
    /// Part of the job's output could not be stored; everything that was stored has been read.
    #[error(
        "the job's output is incomplete: writing its log {0} failed (is the disk full?); \
         everything stored was delivered"
    )]
    Incomplete(PathBuf),
    /// The reader asked to start past the end of the job's output.
    #[error("offset {offset} is past the end of the job's output ({len} bytes)")]
    OffsetPastEnd {
        /// The requested position.
        offset: u64,
        /// How many output bytes the job has.
        len: u64,
    },
    /// The worker went away while the reader was waiting for more output.
    #[error("the worker shut down while the output was being read")]
    Closed,
}

/// The final shape of a finished job's log, published once the job has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogEnd {
    /// Length of the valid frames; readers stop there.
    pub(crate) len: u64,
    /// Output bytes (payload) stored.
    pub(crate) output_bytes: u64,
    /// Whether some output could not be stored (readers then end with [`OutputError::Incomplete`]).
    pub(crate) lost: bool,
}

/// What the start of a buffer holds.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// A whole, verified frame of `len` bytes whose payload is `HEADER..len`.
    Frame { stream: Stream, len: usize },
    /// Not enough bytes yet for a whole frame: at least `need` are needed.
    Partial { need: usize },
    /// The bytes cannot be the start of a frame.
    Corrupt,
}

/// Parses the frame at the start of `buf`.
fn parse(buf: &[u8]) -> Parsed {
    if buf.len() < HEADER {
        return Parsed::Partial { need: HEADER };
    }
    let Some(stream) = Stream::from_tag(buf[0]) else {
        return Parsed::Corrupt;
    };
    let payload = u32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if payload == 0 || payload > CHUNK {
        return Parsed::Corrupt;
    }
    let len = HEADER + payload;
    if buf.len() < len {
        return Parsed::Partial { need: len };
    }
    let crc = u32::from_le_bytes([buf[5], buf[6], buf[7], buf[8]]);
    if frame_crc(&buf[..5], &buf[HEADER..len]) != crc {
        return Parsed::Corrupt;
    }
    Parsed::Frame { stream, len }
}

fn frame_crc(head: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(head), payload)
}

/// Fills in the header of a frame whose payload is `frame[HEADER..]`.
pub(crate) fn seal_frame(stream: Stream, frame: &mut [u8]) {
    debug_assert!(frame.len() > HEADER && frame.len() <= HEADER + CHUNK);
    let payload = (frame.len() - HEADER) as u32;
    frame[0] = stream.tag();
    frame[1..5].copy_from_slice(&payload.to_le_bytes());
    let crc = frame_crc(&frame[..5], &frame[HEADER..]);
    frame[5..HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// The most a log may grow to for an output limit of `limit` bytes (payload): room for the
/// framing of output that comes in chunks of 1 KiB or more on average (the usual case comes in
/// 64 KiB chunks, with 0.014% of framing). Output that trickles in tinier chunks stops being
/// stored at this size, before the payload limit, so a log never exceeds what the worker
/// reserved for it.
pub(crate) fn log_cap(limit: u64) -> u64 {
    limit.saturating_add(limit / 64).saturating_add(4096)
}

/// The init's end of a log: appends frames until the output limit, then counts what it drops.
/// A failed write is cut back off (so the log never holds a torn frame in its middle) and ends
/// storing; the bytes that could not be stored are counted as lost.
pub(crate) struct LogWriter {
    file: File,
    /// Length of the valid frames written.
    len: u64,
    /// Most payload bytes to store.
    limit: u64,
    /// Most bytes the file may hold (see [`log_cap`]).
    cap: u64,
    /// Payload bytes stored.
    pub(crate) output_bytes: u64,
    /// Payload bytes read past the limit.
    pub(crate) dropped_bytes: u64,
    /// Payload bytes that could not be written.
    pub(crate) lost_bytes: u64,
    failed: bool,
}

impl LogWriter {
    /// A writer for the empty log `file`, storing at most `limit` bytes of output.
    pub(crate) fn new(file: File, limit: u64) -> LogWriter {
        LogWriter {
            file,
            len: 0,
            limit,
            cap: log_cap(limit),
            output_bytes: 0,
            dropped_bytes: 0,
            lost_bytes: 0,
            failed: false,
        }
    }

    /// A buffer with room for one header and [`CHUNK`] bytes of payload, every page touched
    /// (so it is charged to memory now).
    pub(crate) fn frame_buffer() -> Vec<u8> {
        vec![1; HEADER + CHUNK]
    }

    /// Stores the `n` payload bytes in `frame[HEADER..HEADER + n]` (as much as the limit allows).
    pub(crate) fn append(&mut self, stream: Stream, frame: &mut [u8], n: usize) {
        if n == 0 {
            return;
        }
        if self.failed {
            self.lost_bytes += n as u64;
            return;
        }
        let room =
            (self.limit - self.output_bytes).min(self.cap.saturating_sub(self.len + HEADER as u64));
        let keep = n.min(usize::try_from(room).unwrap_or(usize::MAX));
        self.dropped_bytes += (n - keep) as u64;
        if keep == 0 {
            return;
        }
        let frame = &mut frame[..HEADER + keep];
        seal_frame(stream, frame);
        match self.file.write(frame) {
            Ok(written) if written == frame.len() => {
                self.len += written as u64;
                self.output_bytes += keep as u64;
            }
            // A short write or an error (ENOSPC, EIO): cut the partial frame back off and stop
            // storing, so the log stays a sequence of whole frames.
            _ => {
                self.failed = true;
                self.lost_bytes += keep as u64;
                let _ = self.file.set_len(self.len);
            }
        }
    }

    /// Length of the valid frames written.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }
}

/// What a recovery scan found in a log whose writer did not say how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Length of the leading run of valid frames.
    pub(crate) valid_len: u64,
    /// Their payload bytes.
    pub(crate) output_bytes: u64,
    /// Whether anything followed them (a torn last write, or damage).
    pub(crate) trailing: bool,
}

/// Reads a log from the start and finds where its valid frames end. Blocking.
pub(crate) fn scan(file: &File) -> io::Result<Scan> {
    let size = file.metadata()?.len();
    let mut scan = Scan {
        valid_len: 0,
        output_bytes: 0,
        trailing: false,
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut filled = 0usize;
    let mut start = 0usize;
    let mut file_pos = 0u64;
    loop {
        match parse(&buf[start..filled]) {
            Parsed::Frame { len, .. } => {
                start += len;
                scan.valid_len += len as u64;
                scan.output_bytes += (len - HEADER) as u64;
            }
            Parsed::Corrupt => break,
            Parsed::Partial { .. } => {
                buf.copy_within(start..filled, 0);
                filled -= start;
                start = 0;
                let n = file.read_at(&mut buf[filled..], file_pos)?;
                if n == 0 {
                    break;
                }
                file_pos += n as u64;
                filled += n;
            }
        }
    }
    scan.trailing = scan.valid_len < size;
    Ok(scan)
}

/// Reads a job's output from a position, following it until the job has ended and everything
/// has been read. Dropping it releases everything it holds.
#[derive(Debug)]
pub struct OutputReader {
    file: Arc<File>,
    path: Arc<PathBuf>,
    /// Ticks whenever the log file grows.
    grow: watch::Receiver<()>,
    /// Set once the job has ended: the log is complete.
    end: watch::Receiver<Option<LogEnd>>,
    filter: StreamFilter,
    /// File offset of `pending`'s first byte: always the start of a frame.
    offset: u64,
    /// Bytes read from `offset` on and not yet handed out.
    pending: Bytes,
    /// Output position (payload bytes of both streams) at `offset`.
    position: u64,
    /// Output position to start handing out at.
    from: u64,
    /// Whether `pending` is final: read, or cut to the valid end, once the job had ended. Only
    /// then is a frame that fails its checks damage (see [`OutputReader::next`]).
    settled: bool,
}

impl OutputReader {
    /// A reader of the log at `path` from output position `from`.
    pub(crate) fn open(
        path: Arc<PathBuf>,
        grow: watch::Receiver<()>,
        end: watch::Receiver<Option<LogEnd>>,
        filter: StreamFilter,
        from: u64,
    ) -> Result<OutputReader, OutputError> {
        let file = File::open(&*path).map_err(|source| OutputError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(OutputReader {
            file: Arc::new(file),
            path,
            grow,
            end,
            filter,
            offset: 0,
            pending: Bytes::new(),
            position: 0,
            from,
            settled: false,
        })
    }

    /// The next chunk, or `None` once the job has ended and all its output was read.
    ///
    /// Cancel-safe: dropping the future loses nothing, the next call resumes where this one was.
    pub async fn next(&mut self) -> Result<Option<Chunk>, OutputError> {
        loop {
            let need = match parse(&self.pending) {
                Parsed::Frame { stream, len } => {
                    if let Some(chunk) = self.take_frame(stream, len) {
                        return Ok(Some(chunk));
                    }
                    continue;
                }
                Parsed::Corrupt if self.settled => {
                    return Err(OutputError::Corrupt {
                        path: self.path.to_path_buf(),
                        at: self.offset,
                    });
                }
                Parsed::Corrupt => {
                    // Not yet damage: when a job ends, the worker cuts a torn last write off its
                    // log, and a read racing with that cut can see zeros past the new end (the
                    // kernel clears the rest of the page). Read again once the job has ended, or
                    // the log has grown; only bytes read after the end are judged.
                    self.pending = Bytes::new();
                    if self.end.borrow().is_none() {
                        self.changed().await?;
                    }
                    continue;
                }
                Parsed::Partial { need } => need,
            };
            // Sampled before reading: if the job had ended by now, this read sees its whole log.
            let end = *self.end.borrow();
            self.grow.borrow_and_update();
            let limit = end.map_or(u64::MAX, |e| e.len);
            // Bytes past the valid end of a finished log (a torn write the writer cut back off
            // after this reader saw it) are not part of the log.
            let valid = usize::try_from(limit.saturating_sub(self.offset)).unwrap_or(usize::MAX);
            if self.pending.len() > valid {
                self.pending.truncate(valid);
            }
            self.settled = end.is_some();
            let have = self.pending.len();
            if self.offset + (have as u64) < limit && self.fill(need, limit).await? > have {
                continue;
            }
            if let Some(end) = end {
                return self.finish(end);
            }
            self.changed().await?;
        }
    }

    /// Waits until the log has grown or the job has ended.
    async fn changed(&mut self) -> Result<(), OutputError> {
        tokio::select! {
            changed = self.grow.changed() => changed.map_err(|_| OutputError::Closed),
            changed = self.end.changed() => changed.map_err(|_| OutputError::Closed),
        }
    }

    /// Hands out the verified frame at the start of `pending`, or skips it (a stream not
    /// wanted, or before the start position). `None` when skipped.
    fn take_frame(&mut self, stream: Stream, len: usize) -> Option<Chunk> {
        let payload = (len - HEADER) as u64;
        let frame_at = self.position;
        let mut data = self.pending.slice(HEADER..len);
        self.pending.advance(len);
        if self.pending.is_empty() {
            // Release the read window now, not at the next read: an idle follower holds nothing.
            self.pending = Bytes::new();
        }
        self.offset += len as u64;
        self.position += payload;
        if frame_at + payload <= self.from || !self.filter.wants(stream) {
            return None;
        }
        let offset = frame_at.max(self.from);
        data.advance((offset - frame_at) as usize);
        Some(Chunk {
            stream,
            offset,
            data,
        })
    }

    /// At the end of a finished log.
    fn finish(&mut self, end: LogEnd) -> Result<Option<Chunk>, OutputError> {
        if !self.pending.is_empty() || self.offset < end.len {
            // Short of the valid end: a frame runs past it (the worker cuts torn frames off
            // before publishing the end), or the file ends before it (cut short after the job
            // ended, even between two frames). Damage either way, never a clean end.
            return Err(OutputError::Corrupt {
                path: self.path.to_path_buf(),
                at: self.offset,
            });
        }
        if self.from > self.position {
            return Err(OutputError::OffsetPastEnd {
                offset: self.from,
                len: self.position,
            });
        }
        if end.lost {
            return Err(OutputError::Incomplete(self.path.to_path_buf()));
        }
        Ok(None)
    }

    /// Reads a window from `offset` (re-reading any partial frame held, so frames are never
    /// joined from two buffers) into `pending`, at least `need` bytes if the file has them and
    /// never past `limit`. Returns how many bytes `pending` holds now.
    async fn fill(&mut self, need: usize, limit: u64) -> Result<usize, OutputError> {
        let room = usize::try_from(limit - self.offset).unwrap_or(usize::MAX);
        let want = need.max(WINDOW).min(room);
        let read_error = |source| OutputError::Read {
            path: self.path.to_path_buf(),
            source,
        };
        // Output is almost always still in the page cache (just written, or just read by
        // another reader): read it right here. Only a read that would wait for the disk goes to
        // the blocking pool, so a cold page cache never stalls the runtime, and a cached one
        // costs no thread hop (a hop per chunk cost a quarter of the daemon's CPU when
        // streaming; see docs/benchmarks.md).
        // A cached read may come back short: the rest of the window is on disk (evicted, e.g.
        // by the job's memory limit, while this reader lagged). If it does not hold the frame
        // `need`s, read from disk: the caller takes a read that adds nothing for the end of
        // what the file holds.
        let enough = need.min(room);
        let read = match read_cached(&self.file, self.offset, want).map_err(read_error)? {
            Some(read) if read.len() >= enough => read,
            _ => {
                let file = self.file.clone();
                let offset = self.offset;
                tokio::task::spawn_blocking(move || read_at(&file, offset, want))
                    .await
                    .map_err(io::Error::other)
                    .and_then(|r| r)
                    .map_err(read_error)?
            }
        };
        if read.len() > self.pending.len() {
            self.pending = read.freeze();
        }
        Ok(self.pending.len())
    }
}

/// Reads up to `want` bytes at `offset`, fewer at the end of the file. Blocking.
fn read_at(file: &File, offset: u64, want: usize) -> io::Result<BytesMut> {
    let mut buf = BytesMut::zeroed(want);
    let mut got = 0;
    while got < want {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
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
        // Nothing cached at the offset, or the end of the file: the blocking read tells which.
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

/// The path of a job's log inside its directory.
pub(crate) fn log_path(job_dir: &Path) -> PathBuf {
    job_dir.join("output.log")
}

#[cfg(test)]
mod properties;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Encodes frames the way the init writes them.
    pub(crate) fn frames(chunks: &[(Stream, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (stream, data) in chunks {
            for piece in data.chunks(CHUNK) {
                let mut frame = vec![0u8; HEADER + piece.len()];
                frame[HEADER..].copy_from_slice(piece);
                seal_frame(*stream, &mut frame);
                out.extend_from_slice(&frame);
            }
        }
        out
    }

    fn finished(bytes: &[u8]) -> (tempfile::TempDir, Arc<PathBuf>, LogEnd) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = Arc::new(dir.path().join("log"));
        std::fs::write(&*path, bytes).expect("write");
        let end = LogEnd {
            len: bytes.len() as u64,
            output_bytes: 0,
            lost: false,
        };
        (dir, path, end)
    }

    async fn read_all(
        path: Arc<PathBuf>,
        end: LogEnd,
        filter: StreamFilter,
        from: u64,
    ) -> Result<Vec<Chunk>, OutputError> {
        let (_grow_tx, grow) = watch::channel(());
        let (_end_tx, end) = watch::channel(Some(end));
        let mut reader = OutputReader::open(path, grow, end, filter, from)?;
        let mut chunks = Vec::new();
        while let Some(chunk) = reader.next().await? {
            chunks.push(chunk);
        }
        Ok(chunks)
    }

    fn joined(chunks: &[Chunk]) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.data.iter().copied()).collect()
    }

    #[tokio::test]
    async fn a_finished_log_only_partly_in_the_page_cache_is_read_whole() {
        // A reader behind the writer finds part of a frame in the page cache and the rest on
        // disk (evicted, e.g. by the job's memory limit): its non-blocking read comes back
        // short. That is not the end of the log, nor damage.
        use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
        let data: Vec<u8> = (0..4 * CHUNK).map(|i| (i % 251) as u8).collect();
        let log = frames(&[(Stream::Stdout, &data)]);
        // On a disk-backed file system: a tmpfs has no page cache to evict from, and the test
        // would pass without testing anything. $TMPDIR if set (the v2 guest's scratch disk), else
        // /var/tmp.
        let base = std::env::var_os("TMPDIR").map_or_else(|| "/var/tmp".into(), PathBuf::from);
        let fs = nix::sys::statfs::statfs(&base).expect("statfs");
        assert_ne!(
            fs.filesystem_type(),
            nix::sys::statfs::TMPFS_MAGIC,
            "{} is a tmpfs: set TMPDIR to a directory on a disk",
            base.display()
        );
        let dir = tempfile::tempdir_in(&base).expect("tempdir");
        let path = Arc::new(dir.path().join("log"));
        std::fs::write(&*path, &log).expect("write");
        let file = File::open(&*path).expect("open");
        file.sync_all().expect("fsync");
        posix_fadvise(&file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED).expect("evict");
        // Bring back only the first frame and a half, without readahead.
        posix_fadvise(&file, 0, 0, PosixFadviseAdvice::POSIX_FADV_RANDOM).expect("advise");
        let mut head = vec![0u8; WINDOW + WINDOW / 2];
        file.read_exact_at(&mut head, 0).expect("read");
        let end = LogEnd {
            len: log.len() as u64,
            output_bytes: data.len() as u64,
            lost: false,
        };
        let chunks = read_all(path, end, StreamFilter::Both, 0)
            .await
            .expect("the whole log reads back");
        assert_eq!(joined(&chunks), data);
    }

    #[tokio::test]
    async fn frames_are_read_back_with_their_stream_and_position() {
        let big = vec![7u8; CHUNK + 10];
        let log = frames(&[
            (Stream::Stdout, b"hello "),
            (Stream::Stderr, b"oops"),
            (Stream::Stdout, &big),
        ]);
        let (_dir, path, end) = finished(&log);
        let chunks = read_all(path, end, StreamFilter::Both, 0)
            .await
            .expect("read");
        let summary: Vec<(Stream, u64, usize)> = chunks
            .iter()
            .map(|c| (c.stream, c.offset, c.data.len()))
            .collect();
        assert_eq!(
            summary,
            [
                (Stream::Stdout, 0, 6),
                (Stream::Stderr, 6, 4),
                (Stream::Stdout, 10, CHUNK),
                (Stream::Stdout, 10 + CHUNK as u64, 10),
            ]
        );
    }

    #[tokio::test]
    async fn a_reader_resumes_at_any_position_without_gap_or_duplicate() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let log = frames(&[
            (Stream::Stdout, &data[..100_000]),
            (Stream::Stderr, &data[100_000..100_003]),
            (Stream::Stdout, &data[100_003..]),
        ]);
        let (_dir, path, end) = finished(&log);
        for from in [
            0u64, 1, 65_535, 65_536, 99_999, 100_001, 100_003, 199_999, 200_000,
        ] {
            let chunks = read_all(path.clone(), end, StreamFilter::Both, from)
                .await
                .expect("read");
            assert_eq!(joined(&chunks), &data[from as usize..], "from {from}");
            if let Some(first) = chunks.first() {
                assert_eq!(first.offset, from);
            }
        }
        let past = read_all(path, end, StreamFilter::Both, 200_001).await;
        assert!(
            matches!(
                past,
                Err(OutputError::OffsetPastEnd {
                    offset: 200_001,
                    len: 200_000
                })
            ),
            "{past:?}"
        );
    }

    #[tokio::test]
    async fn a_filter_keeps_one_stream_and_positions_count_both() {
        let log = frames(&[
            (Stream::Stdout, b"out1"),
            (Stream::Stderr, b"err1"),
            (Stream::Stdout, b"out2"),
        ]);
        let (_dir, path, end) = finished(&log);
        let chunks = read_all(path, end, StreamFilter::Stdout, 0)
            .await
            .expect("read");
        assert_eq!(joined(&chunks), b"out1out2");
        assert_eq!(chunks[1].offset, 8);
    }

    #[tokio::test]
    async fn a_flipped_bit_anywhere_is_reported_not_delivered() {
        let log = frames(&[(Stream::Stdout, b"0123456789"), (Stream::Stderr, b"abc")]);
        for at in 0..log.len() {
            let mut bad = log.clone();
            bad[at] ^= 0x04;
            let (_dir, path, end) = finished(&bad);
            let result = read_all(path, end, StreamFilter::Both, 0).await;
            match result {
                Err(OutputError::Corrupt { .. }) => {}
                Ok(chunks) => panic!("flip at {at} delivered {:?}", joined(&chunks)),
                Err(other) => panic!("flip at {at}: unexpected {other}"),
            }
        }
    }

    #[tokio::test]
    async fn a_log_cut_short_between_two_frames_after_the_job_ended_is_reported() {
        let log = frames(&[(Stream::Stdout, b"first"), (Stream::Stderr, b"second")]);
        let (_dir, path, end) = finished(&log);
        let first_frame = HEADER + 5;
        std::fs::write(&*path, &log[..first_frame]).expect("cut the log");
        let (_grow_tx, grow) = watch::channel(());
        let (_end_tx, end) = watch::channel(Some(end));
        let mut reader = OutputReader::open(path, grow, end, StreamFilter::Both, 0).expect("open");
        let first = reader
            .next()
            .await
            .expect("the first frame")
            .expect("a chunk");
        assert_eq!(&first.data[..], b"first");
        let rest = reader.next().await;
        assert!(
            matches!(rest, Err(OutputError::Corrupt { at, .. }) if at == first_frame as u64),
            "a log shorter than its recorded end must be reported, not end cleanly: {rest:?}"
        );
    }

    #[tokio::test]
    async fn bad_bytes_past_the_end_a_running_log_is_cut_to_are_not_damage() {
        // What a follower can read while the worker cuts a torn write off a job's log: zeros
        // where the torn frame was, from a read that raced with the cut.
        let good = frames(&[(Stream::Stdout, b"kept")]);
        let mut seen = good.clone();
        seen.extend_from_slice(&[0; HEADER + 3]);
        let (_dir, path, _) = finished(&seen);
        let (_grow_tx, grow) = watch::channel(());
        let (end_tx, end) = watch::channel(None);
        let mut reader =
            OutputReader::open(path.clone(), grow, end, StreamFilter::Both, 0).expect("open");
        let kept = reader
            .next()
            .await
            .expect("the whole frame")
            .expect("a chunk");
        assert_eq!(&kept.data[..], b"kept");
        let conclude = async {
            tokio::task::yield_now().await;
            std::fs::write(&*path, &good).expect("cut the torn write off");
            end_tx.send_replace(Some(LogEnd {
                len: good.len() as u64,
                output_bytes: 4,
                lost: false,
            }));
        };
        let (rest, ()) = tokio::join!(reader.next(), conclude);
        assert!(
            matches!(rest, Ok(None)),
            "bytes past the end a running job's log is cut to are not damage: {rest:?}"
        );
    }

    #[test]
    fn a_scan_finds_the_end_of_the_valid_frames() {
        let good = frames(&[(Stream::Stdout, &[1u8; 70_000]), (Stream::Stderr, b"xy")]);
        let mut torn = good.clone();
        torn.extend_from_slice(&frames(&[(Stream::Stdout, b"lost tail")])[..12]);
        let (_dir, path, _) = finished(&torn);
        let file = File::open(&*path).expect("open");
        assert_eq!(
            scan(&file).expect("scan"),
            Scan {
                valid_len: good.len() as u64,
                output_bytes: 70_002,
                trailing: true,
            }
        );
    }

    #[tokio::test]
    async fn a_follower_sees_appended_frames_and_ends_with_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = Arc::new(dir.path().join("log"));
        let file = File::create(&*path).expect("create");
        let (grow_tx, grow) = watch::channel(());
        let (end_tx, end) = watch::channel(None);
        let mut reader =
            OutputReader::open(path.clone(), grow, end, StreamFilter::Both, 0).expect("open");
        let mut writer = LogWriter::new(file, u64::MAX);
        let reading = tokio::spawn(async move {
            let mut all = Vec::new();
            while let Some(chunk) = reader.next().await.expect("next") {
                all.extend_from_slice(&chunk.data);
            }
            all
        });
        let mut expected = Vec::new();
        for i in 0..50u8 {
            let mut buf = LogWriter::frame_buffer();
            let text = format!("line {i}\n");
            buf[HEADER..HEADER + text.len()].copy_from_slice(text.as_bytes());
            writer.append(Stream::Stdout, &mut buf, text.len());
            expected.extend_from_slice(text.as_bytes());
            grow_tx.send_replace(());
            tokio::task::yield_now().await;
        }
        end_tx.send_replace(Some(LogEnd {
            len: writer.len(),
            output_bytes: writer.output_bytes,
            lost: false,
        }));
        assert_eq!(reading.await.expect("reader"), expected);
    }

    #[test]
    fn the_writer_stops_storing_at_its_limit_and_counts_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let file = File::create(&path).expect("create");
        let mut writer = LogWriter::new(file, 15);
        for _ in 0..3 {
            let mut buf = LogWriter::frame_buffer();
            writer.append(Stream::Stdout, &mut buf, 10);
        }
        assert_eq!(writer.output_bytes, 15);
        assert_eq!(writer.dropped_bytes, 15);
        assert_eq!(writer.len(), std::fs::metadata(&path).expect("stat").len());
        assert_eq!(writer.len(), 2 * HEADER as u64 + 15);
    }

    #[test]
    fn output_in_tiny_chunks_stops_at_the_log_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let file = File::create(&path).expect("create");
        let limit = 64 * 1024;
        let mut writer = LogWriter::new(file, limit);
        for _ in 0..100_000 {
            let mut buf = LogWriter::frame_buffer();
            writer.append(Stream::Stdout, &mut buf, 1);
        }
        assert!(
            writer.len() <= log_cap(limit),
            "{} > {}",
            writer.len(),
            log_cap(limit)
        );
        assert!(writer.output_bytes < limit);
        assert_eq!(writer.output_bytes + writer.dropped_bytes, 100_000);
    }
}
