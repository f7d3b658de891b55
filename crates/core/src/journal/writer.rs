//! The writer: one thread per journal that owns the [`Store`] and runs the requests the handles send, in order.
//!
//! A request is a closure over the store that answers on its own oneshot; the handle awaits the answer, so no
//! async worker ever waits on SQLite. When the last handle is dropped the channel closes: the writer runs what is
//! still queued, calls [`Store::close`] and ends. A request whose caller stopped waiting still runs (a journal
//! write is never half-sent).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tracing::error;

use super::store::Store;
use super::Error;

/// Requests waiting for the writer. When full, callers wait for room (backpressure on the blocker and the
/// prune pass, which already wait for each answer); nothing is dropped.
pub(super) const QUEUE: usize = 256;

/// One request: runs on the writer thread with the store.
pub(super) type Request = Box<dyn FnOnce(&mut dyn Store) + Send>;

/// What any thread can read about the writer without waiting for it.
#[derive(Debug)]
pub(super) struct Status {
    degraded: AtomicBool,
    /// Becomes true when the writer has ended.
    stopped: watch::Sender<bool>,
}

impl Status {
    pub(super) fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    pub(super) fn set_degraded(&self, degraded: bool) {
        self.degraded.store(degraded, Ordering::Relaxed);
    }

    /// Resolves once the writer thread has ended.
    #[cfg(test)]
    pub(super) fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stopped = self.stopped.subscribe();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    }
}

/// Starts the writer thread for `store`; returns the request channel and the shared status.
pub(super) fn spawn(store: Box<dyn Store>) -> Result<(mpsc::Sender<Request>, Arc<Status>), Error> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let status = Arc::new(Status { degraded: AtomicBool::new(store.is_degraded()), stopped: watch::channel(false).0 });
    let shared = status.clone();
    std::thread::Builder::new().name("journal".into()).spawn(move || run(store, rx, &shared)).map_err(Error::Spawn)?;
    Ok((tx, status))
}

fn run(mut store: Box<dyn Store>, mut requests: mpsc::Receiver<Request>, status: &Status) {
    while let Some(request) = requests.blocking_recv() {
        // A panic inside one request leaves the store consistent (every mutation is one step); its caller sees
        // `WriterGone` (its reply was dropped) and the writer carries on with the next.
        if std::panic::catch_unwind(AssertUnwindSafe(|| request(store.as_mut()))).is_err() {
            error!(message = "A journal request panicked; carrying on with the next.");
        }
        status.set_degraded(store.is_degraded());
    }
    store.close();
    status.set_degraded(store.is_degraded());
    status.stopped.send_replace(true);
}
