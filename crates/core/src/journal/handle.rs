//! [`Journal`], the handle every caller holds: async methods that send a request to the writer and await its
//! answer, and [`Journal::is_degraded`], which never waits.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use tracing::error;

use super::postgres::{PostgresStore, PostgresTarget};
use super::sqlite::SqliteStore;
use super::store::Store;
use super::transfer::{Imported, Row};
use super::writer::{self, Request, Status};
use super::{
    ActionId, ActionKind, BlockRecord, Decision, Error, NewAction, Outcome, PendingAction, PendingQuery, Pruned,
};
use crate::config;

/// Handle on the journal. Cloning is cheap and shares the one writer; `Send + Sync`.
///
/// Dropping a handle does no I/O. When the last clone is dropped, the writer finishes the requests already sent
/// and, if degraded, makes one last attempt to write the buffer back (and logs how many entries are lost if that
/// fails). A process that exits right after should call [`Journal::flush`] first: the writer is a thread of its
/// own and does not hold the process open.
#[derive(Clone)]
pub struct Journal {
    requests: mpsc::Sender<Request>,
    status: Arc<Status>,
    /// `None` for an in-memory or PostgreSQL journal.
    path: Option<Arc<Path>>,
    /// Where it is, for messages: the file's path or the database URL.
    location: Arc<str>,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal").field("location", &self.location).field("degraded", &self.is_degraded()).finish()
    }
}

impl Journal {
    /// Opens (creating if needed) the journal at `path`: parent directory, WAL, busy timeout, schema migrations;
    /// then starts its writer. Synchronous: the daemons call it once at start, before their tasks run.
    ///
    /// # Errors
    /// Any failure, naming `path`: the directory cannot be created, the file cannot be opened or written (a
    /// read-only file fails here, not at the first write), its schema is newer than this build, or the writer
    /// thread cannot be started.
    pub fn open(path: &Path) -> Result<Journal, Error> {
        let store = SqliteStore::open_file(path)?;
        Journal::start(Box::new(store), Some(path))
    }

    /// The journal `[state]` names: PostgreSQL when `url` is set, else the SQLite file at `path`. As
    /// [`Journal::open_or_memory`]: if it cannot be opened it starts degraded (memory only) and keeps trying; the
    /// error is returned (and logged loudly) so the daemon can decide to start anyway.
    ///
    /// # Panics
    /// If the operating system refuses to start a thread.
    pub fn open_config(state: &config::State) -> (Journal, Option<Error>) {
        match &state.postgres {
            Some(target) => {
                let journal = Journal::start_postgres(target).expect("the journal writer thread starts");
                let failure = journal.connect_now().err();
                if let Some(error) = &failure {
                    error!(
                        message = "Journal database cannot be reached; pending actions are kept in memory only until it can.",
                        %error,
                        journal = %target.location(),
                    );
                }
                (journal, failure)
            }
            None => Journal::open_or_memory(&state.path),
        }
    }

    /// The journal `[state]` names, or the error: for commands that must not run on memory alone (export,
    /// import, the lab's checks).
    ///
    /// # Errors
    /// As [`Journal::open`], or the database cannot be reached, refuses the credentials, or is newer.
    pub fn open_strict(state: &config::State) -> Result<Journal, Error> {
        match &state.postgres {
            Some(target) => Journal::open_postgres(target),
            None => Journal::open(&state.path),
        }
    }

    /// Connects to the PostgreSQL database `target` names (migrating it), then starts its writer; the
    /// connection lives on the writer thread.
    ///
    /// # Errors
    /// PostgreSQL cannot be reached or refuses, its schema is newer than this build, or no thread starts.
    pub fn open_postgres(target: &PostgresTarget) -> Result<Journal, Error> {
        let journal = Journal::start_postgres(target)?;
        journal.connect_now()?;
        Ok(journal)
    }

    fn start_postgres(target: &PostgresTarget) -> Result<Journal, Error> {
        let (requests, status) = writer::spawn(Box::new(PostgresStore::unconnected(target.clone())))?;
        Ok(Journal { requests, status, path: None, location: Arc::from(target.location()) })
    }

    /// Connects on the writer thread and waits for the answer (synchronously: called once at start, before the
    /// queue has anything in it). On failure the store is left degraded and retries on its own.
    fn connect_now(&self) -> Result<(), Error> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let status = self.status.clone();
        let request: Request = Box::new(move |store| {
            let result = store.start();
            status.set_degraded(store.is_degraded());
            let _ = reply.send(result);
        });
        self.requests.try_send(request).map_err(|_| Error::WriterGone)?;
        answer.recv().map_err(|_| Error::WriterGone)?
    }

    /// Opens `path`, or, if that fails, starts degraded with nothing but memory and keeps trying to open `path`
    /// every [`super::RETRY_INTERVAL`]; once it opens, what was buffered is written to it. The error is returned
    /// (and already logged loudly) so the daemon can decide to start anyway.
    ///
    /// # Panics
    /// If the operating system refuses to start a thread.
    pub fn open_or_memory(path: &Path) -> (Journal, Option<Error>) {
        let (store, failure) = match SqliteStore::open_file(path) {
            Ok(store) => (store, None),
            Err(error) => {
                error!(
                    message = "Journal cannot be opened; pending actions are kept in memory only until it can.",
                    %error,
                    path = %path.display(),
                );
                (SqliteStore::unopened_file(path), Some(error))
            }
        };
        let journal = Journal::start(Box::new(store), Some(path)).expect("the journal writer thread starts");
        (journal, failure)
    }

    /// A journal in an in-memory SQLite database, for tests.
    ///
    /// # Panics
    /// If the operating system refuses to start a thread.
    #[cfg(test)]
    pub(crate) fn in_memory() -> Journal {
        Journal::start(Box::new(SqliteStore::memory()), None).expect("the journal writer thread starts")
    }

    fn start(store: Box<dyn Store>, path: Option<&Path>) -> Result<Journal, Error> {
        let (requests, status) = writer::spawn(store)?;
        let location = path.map_or_else(|| ":memory:".to_owned(), |p| p.display().to_string());
        Ok(Journal { requests, status, path: path.map(Arc::from), location: Arc::from(location) })
    }

    /// Runs `call` on the writer and returns its answer.
    async fn call<T: Send + 'static>(
        &self,
        call: impl FnOnce(&mut dyn Store) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        let status = self.status.clone();
        let request: Request = Box::new(move |store| {
            let result = call(store);
            // Before the answer, so a caller that saw its write buffered also sees the flag.
            status.set_degraded(store.is_degraded());
            // The caller may have stopped waiting; the write is done either way.
            let _ = reply.send(result);
        });
        self.requests.send(request).await.map_err(|_| Error::WriterGone)?;
        answer.await.map_err(|_| Error::WriterGone)?
    }

    /// Queues an action. Idempotent: if an action of the same kind for the same IP is already pending, its id is
    /// returned and nothing is added.
    pub async fn enqueue(&self, action: &NewAction) -> Result<ActionId, Error> {
        let action = action.clone();
        self.call(move |store| store.enqueue(&action)).await
    }

    /// The pending queue, oldest first (by `requested_at`, then id): what a restart resumes. Healthy, it reads the
    /// file, so it includes what the other daemon queued; degraded, it is this process's in-memory view.
    pub async fn pending(&self) -> Result<Vec<PendingAction>, Error> {
        self.pending_where(PendingQuery::default()).await
    }

    /// [`Journal::pending`] restricted to one kind (the integration daemon resumes blocks, housekeeping unblocks).
    pub async fn pending_of(&self, kind: ActionKind) -> Result<Vec<PendingAction>, Error> {
        self.pending_where(PendingQuery { kind: Some(kind), ..PendingQuery::default() }).await
    }

    /// The pending actions `query` selects (a kind, a target, the oldest N), oldest first.
    pub async fn pending_where(&self, query: PendingQuery) -> Result<Vec<PendingAction>, Error> {
        self.call(move |store| store.pending(&query)).await
    }

    /// How many pending actions `query` selects (its limit ignored).
    pub async fn count_pending(&self, query: PendingQuery) -> Result<usize, Error> {
        self.call(move |store| store.count_pending(&query)).await
    }

    /// Notes a failed attempt: `attempts += 1`, `last_error = error`. The action stays pending. A no-op on an
    /// action already completed.
    ///
    /// # Errors
    /// [`Error::UnknownAction`] if the id was never queued.
    pub async fn record_attempt(&self, id: ActionId, error: &str) -> Result<(), Error> {
        let (error, at) = (error.to_owned(), Utc::now());
        self.call(move |store| store.record_attempt(id, &error, at)).await
    }

    /// Closes an action with its outcome; it leaves the pending queue for good. A no-op on an action already
    /// completed (the first outcome stays).
    ///
    /// # Errors
    /// [`Error::UnknownAction`] if the id was never queued.
    pub async fn complete(&self, id: ActionId, outcome: &Outcome) -> Result<(), Error> {
        let (outcome, at) = (outcome.clone(), Utc::now());
        self.call(move |store| store.complete(id, &outcome, at)).await
    }

    /// Adds a decision to the audit trail; a repeat of the latest decision for the same IP only bumps its counter.
    pub async fn record_decision(&self, decision: &Decision) -> Result<(), Error> {
        let decision = decision.clone();
        self.call(move |store| store.record_decision(&decision)).await
    }

    /// Opens a ledger entry for a completed block. If the IP already has an open entry, it is replaced: the
    /// caller's record is the latest truth (e.g. the object was recreated with a new comment).
    pub async fn record_block(&self, block: &BlockRecord) -> Result<(), Error> {
        let block = block.clone();
        self.call(move |store| store.record_block(&block)).await
    }

    /// Closes the open ledger entry for `ip` on `target`. A removal of a block the ledger never saw (made before the journal,
    /// adopted from the legacy service, or lost while degraded) is still recorded, as a closed entry.
    pub async fn record_unblock(&self, target: &str, ip: IpAddr, reason: &str, at: DateTime<Utc>) -> Result<(), Error> {
        let (target, reason) = (target.to_owned(), reason.to_owned());
        self.call(move |store| store.record_unblock(&target, ip, &reason, at)).await
    }

    /// Open ledger entries, oldest block first.
    pub async fn active_blocks(&self) -> Result<Vec<BlockRecord>, Error> {
        self.call(|store| store.active_blocks()).await
    }

    /// Open ledger entries of one target, oldest block first.
    pub async fn active_blocks_of(&self, target: &str) -> Result<Vec<BlockRecord>, Error> {
        let mut all = self.active_blocks().await?;
        all.retain(|b| b.target == target);
        Ok(all)
    }

    /// Deletes history older than `older_than`: decisions last seen before it, actions finished before it and
    /// ledger entries closed before it. Pending actions and open blocks are never pruned. The daemon calls this
    /// daily; freed pages are reused, so the file stops growing.
    ///
    /// # Errors
    /// When the file cannot be written (nothing is buffered: pruning can wait for the next day).
    pub async fn prune(&self, older_than: DateTime<Utc>) -> Result<Pruned, Error> {
        self.call(move |store| store.prune(older_than)).await
    }

    /// True while writes are kept in memory because the file refuses them. Never waits: it reads a flag the
    /// writer updates after every request.
    pub fn is_degraded(&self) -> bool {
        self.status.is_degraded()
    }

    /// Tries now to write what is buffered (and to open the file if it never opened). Returns how many entries
    /// were written. The daemons call it on shutdown; while running, writes retry every
    /// [`super::RETRY_INTERVAL`].
    pub async fn flush(&self) -> Result<usize, Error> {
        self.call(|store| store.flush()).await
    }

    /// The file's path, `None` for an in-memory or PostgreSQL journal.
    pub fn path(&self) -> Option<PathBuf> {
        self.path.as_deref().map(Path::to_owned)
    }

    /// Where the journal is: the file's path or the database URL (never with a password).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Every row of the three tables (`integration journal export`).
    ///
    /// # Errors
    /// While degraded (the rows in memory are not all there is), or when the store cannot be read.
    pub async fn export(&self) -> Result<Vec<Row>, Error> {
        self.call(|store| store.export()).await
    }

    /// Writes exported rows, ids kept, into this journal, which must be empty (`integration journal import`).
    ///
    /// # Errors
    /// [`Error::NotEmpty`], a degraded journal, or a row the store refuses (nothing is written then).
    pub async fn import(&self, rows: Vec<Row>) -> Result<Imported, Error> {
        self.call(move |store| store.import(&rows)).await
    }

    /// Runs `inspect` on the SQLite store, on the writer thread.
    #[cfg(test)]
    pub(super) async fn with_sqlite<T: Send + 'static>(
        &self,
        inspect: impl FnOnce(&mut SqliteStore) -> T + Send + 'static,
    ) -> T {
        self.call(move |store| Ok(inspect(store.as_any().downcast_mut().expect("a SQLite journal"))))
            .await
            .expect("the writer answers")
    }

    /// The latest `limit` decisions, newest first (buffered ones included), from either store.
    #[cfg(test)]
    pub(super) async fn recent_decisions(&self, limit: usize) -> Vec<Decision> {
        self.call(move |store| {
            let any = store.as_any();
            if let Some(sqlite) = any.downcast_mut::<SqliteStore>() {
                return sqlite.recent_decisions(limit);
            }
            any.downcast_mut::<PostgresStore>().expect("a SQLite or PostgreSQL journal").recent_decisions(limit)
        })
        .await
        .expect("recent decisions")
    }

    /// Resolves once the writer thread has ended (after the last handle is dropped).
    #[cfg(test)]
    pub(super) fn writer_thread(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.status.stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::testutil::*;

    #[test]
    fn journal_is_send_sync_and_clone_shares() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Journal>();
    }

    /// The other daemon holds the write lock: the writer waits on it, but a current-thread runtime keeps running
    /// its other tasks and `is_degraded` answers at once. (With the old synchronous journal the enqueue blocked
    /// the only runtime thread and `is_degraded` waited on the same mutex, for up to `BUSY_TIMEOUT`.)
    #[test]
    fn a_busy_file_does_not_block_the_runtime() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let (_dir, path, journal) = file_journal();
            let other = rusqlite::Connection::open(&path).expect("the other daemon's connection");
            other.execute_batch("BEGIN IMMEDIATE").expect("the other daemon takes the write lock");
            let writer = journal.clone();
            let write = tokio::spawn(async move { writer.enqueue(&block("198.51.100.1", 1)).await });
            // The writer now waits for the lock (or is about to); this runtime's only thread is free.
            let (ping, pong) = oneshot::channel();
            let other_task = tokio::spawn(async move { ping.send(7).expect("receiver waits") });
            assert_eq!(pong.await.expect("the other task ran"), 7);
            other_task.await.expect("other task");
            assert!(!journal.is_degraded(), "answered at once, while the write waits");
            assert!(!write.is_finished(), "the write waits for the lock");
            other.execute_batch("COMMIT").expect("the other daemon releases the lock");
            let id = write.await.expect("task").expect("enqueue once the lock is free");
            assert!(!journal.is_degraded());
            assert_eq!(journal.pending().await.expect("pending")[0].id, id);
        });
    }

    #[tokio::test]
    async fn a_dropped_caller_still_gets_its_write() {
        let journal = Journal::in_memory();
        let action = block("198.51.100.1", 1);
        let write = journal.enqueue(&action);
        // Polled once (the request is sent), then dropped before the answer.
        let mut write = Box::pin(write);
        let _ = futures::poll!(write.as_mut());
        drop(write);
        assert_eq!(ips(&journal.pending().await.expect("pending")), ["block 198.51.100.1"]);
    }
}
