//! Copying a job's output stream to our stdout and stderr, byte for byte, across reconnects.
//!
//! The bytes are written exactly as received (never decoded as text) through large buffers,
//! which are flushed whenever the stream has nothing more ready: a fast stream moves in big
//! writes, and a slow one still shows each line as soon as it arrives.
//!
//! Every chunk carries its position in the job's output, so a [`Follower`] knows the offset of
//! the next byte it needs: when the connection breaks (e.g. the server restarts) it asks again
//! from there, and whatever the server resends that was already written is skipped. The output
//! is the same bytes an unbroken stream would have given.

use std::fs::File;
use std::future::poll_fn;
use std::io::{self, BufWriter, Write};
use std::os::fd::AsFd;
use std::task::Poll;

use futures::StreamExt;
use jobworker_api::pb;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tonic::Streaming;

use crate::connection::{Connection, Reconnect};
use crate::error::{self, Failure};

/// Per-stream buffer: several messages per write(2), fewer system calls than messages.
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

    fn write(&mut self, stream: i32, data: &[u8]) -> io::Result<()> {
        self.unflushed = true;
        if stream == pb::OutputStream::Stderr as i32 {
            self.stderr.write_all(data)
        } else {
            // The server sends only stdout and stderr; an unknown value is treated as the
            // main stream rather than dropped.
            self.stdout.write_all(data)
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
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// The server sent all of it and the job has ended with this status.
    Complete(Box<pb::JobStatus>),
    /// SIGINT (Ctrl-C). Following again resumes where it stopped.
    Interrupted,
    /// Whoever reads our stdout or stderr has gone (e.g. `| head`).
    BrokenPipe,
}

/// SIGINT as a stream of events, so Ctrl-C is ours to handle instead of killing the process.
pub fn interrupts() -> Result<Signal, Failure> {
    signal(SignalKind::interrupt()).map_err(|e| error::system("cannot handle Ctrl-C", &e))
}

/// One job's output, followed from a position that advances with every byte written.
pub struct Follower {
    job_id: String,
    /// As in `StreamOutputRequest.streams`: empty for both.
    streams: Vec<i32>,
    /// The position of the next byte we need.
    offset: u64,
    /// The open stream, if any.
    output: Option<Streaming<pb::StreamOutputResponse>>,
    reconnect: Reconnect,
}

/// What one pass over an open stream ended with.
enum Pass {
    Done(Ending),
    /// The stream broke with this status; it may be worth reopening.
    Broken(tonic::Status),
}

impl Follower {
    /// Follows `job_id`'s output from its first byte; `streams` as in the request.
    pub fn new(job_id: String, streams: Vec<i32>) -> Follower {
        Follower {
            job_id,
            streams,
            offset: 0,
            output: None,
            reconnect: Reconnect::new(),
        }
    }

    /// Opens the stream once, so that a first error (unknown job, refused certificate) is
    /// reported as it is, before anything else happens.
    pub async fn open(&mut self, connection: &Connection) -> Result<(), tonic::Status> {
        let request = pb::StreamOutputRequest {
            job_id: self.job_id.clone(),
            streams: self.streams.clone(),
            offset: self.offset,
        };
        let output = connection
            .client
            .clone()
            .stream_output(request)
            .await?
            .into_inner();
        self.output = Some(output);
        Ok(())
    }

    /// Copies the output into `sink` until the job has ended and all of it was written,
    /// Ctrl-C is pressed, or our output is closed. A broken connection is reopened where it
    /// stopped (see [`Reconnect`] for how long we try).
    ///
    /// Whatever was received is flushed before returning.
    pub async fn follow(
        &mut self,
        sink: &mut Sink,
        interrupts: &mut Signal,
        connection: &Connection,
    ) -> Result<Ending, Failure> {
        let result = self.run(sink, interrupts, connection).await;
        let flushed = sink.flush();
        match (result, flushed) {
            (Ok(Ending::BrokenPipe), _) => Ok(Ending::BrokenPipe),
            (Ok(_), Err(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Ending::BrokenPipe),
            (Ok(_), Err(e)) => Err(error::write(&e)),
            (result, _) => result,
        }
    }

    async fn run(
        &mut self,
        sink: &mut Sink,
        interrupts: &mut Signal,
        connection: &Connection,
    ) -> Result<Ending, Failure> {
        loop {
            let broken = match self.output.as_mut() {
                Some(output) => match copy(output, &mut self.offset, sink, interrupts).await? {
                    Pass::Done(ending) => return Ok(ending),
                    Pass::Broken(status) => status,
                },
                None => match self.open(connection).await {
                    Ok(()) => {
                        self.reconnect.succeeded(Some(self.offset));
                        continue;
                    }
                    Err(status) => status,
                },
            };
            self.output = None;
            // Show what we have before a notice about the connection.
            if let Err(e) = sink.flush() {
                return match e.kind() {
                    io::ErrorKind::BrokenPipe => Ok(Ending::BrokenPipe),
                    _ => Err(error::write(&e)),
                };
            }
            let pause = self.reconnect.failed(&broken, connection)?;
            tokio::select! {
                _ = interrupts.recv() => return Ok(Ending::Interrupted),
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// One step of [`copy`]'s loop.
enum Event {
    Interrupted,
    Message(Option<Result<pb::StreamOutputResponse, tonic::Status>>),
    /// Nothing is ready and bytes are buffered: time to flush.
    Idle,
}

/// Copies one open stream into `sink`, advancing `offset` past every byte written.
async fn copy(
    output: &mut Streaming<pb::StreamOutputResponse>,
    offset: &mut u64,
    sink: &mut Sink,
    interrupts: &mut Signal,
) -> Result<Pass, Failure> {
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
            Event::Interrupted => return Ok(Pass::Done(Ending::Interrupted)),
            Event::Message(None) => {
                // The server always ends a stream with OutputEnd or an error: a stream that
                // just stops was cut on the way.
                return Ok(Pass::Broken(tonic::Status::unavailable(
                    "the output stream ended before the job did",
                )));
            }
            Event::Message(Some(Err(status))) => return Ok(Pass::Broken(status)),
            Event::Message(Some(Ok(message))) => match message.frame {
                Some(pb::stream_output_response::Frame::Chunk(chunk)) => {
                    write_new(sink, offset, &chunk)
                }
                Some(pb::stream_output_response::Frame::End(end)) => {
                    let status = end.status.unwrap_or_default();
                    return Ok(Pass::Done(Ending::Complete(Box::new(status))));
                }
                // A frame kind from a newer server: nothing we can show.
                None => Ok(()),
            },
            Event::Idle => sink.flush(),
        };
        match written {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                return Ok(Pass::Done(Ending::BrokenPipe));
            }
            Err(e) => return Err(error::write(&e)),
        }
    }
}

/// Writes the part of `chunk` at or past `offset` and moves `offset` past it. Chunks start at
/// the requested offset, so the overlap is empty unless a server resends; a gap is normal when
/// only one stream is selected (the other stream's bytes lie in between).
fn write_new(sink: &mut Sink, offset: &mut u64, chunk: &pb::OutputChunk) -> io::Result<()> {
    let end = chunk.offset.saturating_add(chunk.data.len() as u64);
    if end <= *offset {
        return Ok(());
    }
    let skip = usize::try_from(offset.saturating_sub(chunk.offset)).unwrap_or(usize::MAX);
    let fresh = chunk.data.get(skip..).unwrap_or_default();
    sink.write(chunk.stream, fresh)?;
    *offset = end;
    Ok(())
}
