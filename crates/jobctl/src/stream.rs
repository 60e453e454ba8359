//! Copying a job's output stream to our stdout and stderr, byte for byte.
//!
//! The bytes are written exactly as received (never decoded as text) through large buffers,
//! which are flushed whenever the stream has nothing more ready: a fast stream moves in big
//! writes, and a slow one still shows each line as soon as it arrives.

use std::fs::File;
use std::future::poll_fn;
use std::io::{self, BufWriter, Write};
use std::os::fd::AsFd;
use std::task::Poll;

use futures::StreamExt;
use jobworker_api::pb;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tonic::Streaming;

use crate::connection::Connection;
use crate::error::{self, Failure};

/// Per-stream buffer: two 64 KiB messages per write(2), fewer system calls than messages.
const BUFFER: usize = 128 * 1024;

/// Our stdout and stderr, buffered.
pub struct Sink {
    /// A duplicate of fd 1: `std::io::Stdout` is line-buffered, which would split binary
    /// output into a write(2) per newline.
    stdout: BufWriter<File>,
    /// A duplicate of fd 2.
    stderr: BufWriter<File>,
    /// Bytes were written since the last flush.
    unflushed: bool,
}

impl Sink {
    /// Buffered writers on duplicates of our stdout and stderr.
    pub fn new() -> Result<Sink, Failure> {
        let dup = |fd: std::os::fd::BorrowedFd<'_>| {
            fd.try_clone_to_owned()
                .map(File::from)
                .map_err(|e| error::system("cannot duplicate stdout or stderr", &e))
        };
        Ok(Sink {
            stdout: BufWriter::with_capacity(BUFFER, dup(io::stdout().as_fd())?),
            stderr: BufWriter::with_capacity(BUFFER, dup(io::stderr().as_fd())?),
            unflushed: false,
        })
    }

    fn write(&mut self, message: &pb::StreamOutputResponse) -> io::Result<()> {
        self.unflushed = true;
        if message.stream == pb::OutputStream::Stderr as i32 {
            self.stderr.write_all(&message.data)
        } else {
            // The server sends only stdout and stderr; an unknown value is treated as the
            // main stream rather than dropped.
            self.stdout.write_all(&message.data)
        }
    }

    /// Writes out everything buffered.
    pub fn flush(&mut self) -> io::Result<()> {
        self.unflushed = false;
        self.stdout.flush()?;
        self.stderr.flush()
    }
}

/// Why following the output stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The server sent all of it: the job's output is complete.
    Complete,
    /// SIGINT (Ctrl-C). Following again resumes where it stopped.
    Interrupted,
    /// Whoever reads our stdout or stderr has gone (e.g. `| head`).
    BrokenPipe,
}

/// SIGINT as a stream of events, so Ctrl-C is ours to handle instead of killing the process.
pub fn interrupts() -> Result<Signal, Failure> {
    signal(SignalKind::interrupt()).map_err(|e| error::system("cannot handle Ctrl-C", &e))
}

/// One step of [`follow`]'s loop.
enum Event {
    Interrupted,
    Message(Option<Result<pb::StreamOutputResponse, tonic::Status>>),
    /// Nothing is ready and bytes are buffered: time to flush.
    Idle,
}

/// Copies `output` into `sink` until it ends, Ctrl-C is pressed, or our output is closed.
///
/// Whatever was received is flushed before returning.
pub async fn follow(
    output: &mut Streaming<pb::StreamOutputResponse>,
    sink: &mut Sink,
    interrupts: &mut Signal,
    connection: &Connection,
) -> Result<Ending, Failure> {
    let result = copy(output, sink, interrupts, connection).await;
    let flushed = sink.flush();
    match (result, flushed) {
        (Ok(Ending::BrokenPipe), _) => Ok(Ending::BrokenPipe),
        (Ok(_), Err(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Ending::BrokenPipe),
        (Ok(_), Err(e)) => Err(error::write(&e)),
        (result, _) => result,
    }
}

async fn copy(
    output: &mut Streaming<pb::StreamOutputResponse>,
    sink: &mut Sink,
    interrupts: &mut Signal,
    connection: &Connection,
) -> Result<Ending, Failure> {
    loop {
        let event = poll_fn(|cx| {
            // Ctrl-C first, so that a stream that is always ready cannot starve it.
            if interrupts.poll_recv(cx).is_ready() {
                return Poll::Ready(Event::Interrupted);
            }
            match output.poll_next_unpin(cx) {
                Poll::Ready(message) => Poll::Ready(Event::Message(message)),
                Poll::Pending if sink.unflushed => Poll::Ready(Event::Idle),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        let written = match event {
            Event::Interrupted => return Ok(Ending::Interrupted),
            Event::Message(None) => return Ok(Ending::Complete),
            Event::Message(Some(Err(status))) => return Err(connection.failure(&status)),
            Event::Message(Some(Ok(message))) => sink.write(&message),
            Event::Idle => sink.flush(),
        };
        match written {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(Ending::BrokenPipe),
            Err(e) => return Err(error::write(&e)),
        }
    }
}
