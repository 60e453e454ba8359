//! Telling readers that a running job's log grew.
//!
//! The job's init writes the log; the daemon only reads it, and may not even be the daemon that
//! started the job. One inotify instance per worker watches every running job's log for
//! `IN_MODIFY`; one task turns the events into ticks of the job's `grow` channel, which readers
//! that caught up wait on. A watch is removed when its job ends (the [`Watch`] guard).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The inotify instance, readable through tokio.
struct Instance(Inotify);

impl AsRawFd for Instance {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

type Watches = Mutex<HashMap<WatchDescriptor, watch::Sender<()>>>;

/// The worker's log watcher. Dropping it ends its task.
pub(crate) struct LogWatcher {
    inotify: Arc<AsyncFd<Instance>>,
    /// Held for lookups only, never across `.await` or I/O.
    watches: Arc<Watches>,
    /// Reads events until the watcher is dropped.
    task: JoinHandle<()>,
}

/// A watch on one log; dropping it removes the watch.
pub(crate) struct Watch {
    wd: WatchDescriptor,
    inotify: Arc<AsyncFd<Instance>>,
    watches: Arc<Watches>,
}

fn lock(watches: &Watches) -> MutexGuard<'_, HashMap<WatchDescriptor, watch::Sender<()>>> {
    // Inserts and removes only: a panic cannot leave the map half-updated.
    watches
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl LogWatcher {
    /// Starts the watcher. Needs a tokio runtime.
    pub(crate) fn new() -> io::Result<LogWatcher> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        // SAFETY: `Instance` owns the inotify descriptor, so it stays open and the same for as
        // long as the AsyncFd (which owns the Instance) exists.
        let inotify =
            unsafe { AsyncFd::register(Instance(inotify)) }.map_err(|e| e.into_parts().1)?;
        let inotify = Arc::new(inotify);
        let watches: Arc<Watches> = Arc::default();
        let task = tokio::spawn(dispatch(inotify.clone(), watches.clone()));
        Ok(LogWatcher {
            inotify,
            watches,
            task,
        })
    }

    /// Ticks `grow` whenever the file at `path` is written to, until the returned guard is
    /// dropped.
    pub(crate) fn watch(&self, path: &Path, grow: watch::Sender<()>) -> io::Result<Watch> {
        let wd = self
            .inotify
            .get_ref()
            .0
            .add_watch(path, AddWatchFlags::IN_MODIFY)?;
        lock(&self.watches).insert(wd, grow);
        Ok(Watch {
            wd,
            inotify: self.inotify.clone(),
            watches: self.watches.clone(),
        })
    }
}

impl Drop for LogWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        lock(&self.watches).remove(&self.wd);
        // EINVAL when the file is already gone (the kernel removed the watch itself).
        let _ = self.inotify.get_ref().0.rm_watch(self.wd);
    }
}

/// Reads events until the instance fails; each modification ticks its job's channel.
async fn dispatch(inotify: Arc<AsyncFd<Instance>>, watches: Arc<Watches>) {
    loop {
        let Ok(mut ready) = inotify.readable().await else {
            return;
        };
        let events = match ready.try_io(|fd| fd.get_ref().0.read_events().map_err(io::Error::from))
        {
            Ok(Ok(events)) => events,
            Ok(Err(e)) => {
                tracing::error!("cannot read log notifications: {e}");
                return;
            }
            // Spurious readiness: wait again.
            Err(_would_block) => continue,
        };
        let watches = lock(&watches);
        for event in events {
            if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                // Events were lost: wake every reader, each re-reads its log.
                for grow in watches.values() {
                    grow.send_replace(());
                }
            } else if let Some(grow) = watches.get(&event.wd) {
                grow.send_replace(());
            }
        }
    }
}
