//! The contract between the writer and a store: what every journal implementation answers. The writer thread is
//! the only caller, so a store is plain synchronous code that owns its connection.

use std::net::IpAddr;

use chrono::{DateTime, Utc};

use super::{ActionId, BlockRecord, Decision, Error, NewAction, Outcome, PendingAction, PendingQuery, Pruned};

/// A journal implementation behind [`super::Journal`]. Today's is [`super::sqlite::SqliteStore`]; the public
/// methods of `Journal` document the semantics each method must keep (idempotent enqueue, first outcome wins,
/// writes kept in memory rather than refused while the backing store is unavailable).
pub(crate) trait Store: Send {
    fn enqueue(&mut self, action: &NewAction) -> Result<ActionId, Error>;
    fn pending(&mut self, query: &PendingQuery) -> Result<Vec<PendingAction>, Error>;
    /// How many pending actions `query` selects (its limit ignored).
    fn count_pending(&mut self, query: &PendingQuery) -> Result<usize, Error>;
    fn record_attempt(&mut self, id: ActionId, error: &str, at: DateTime<Utc>) -> Result<(), Error>;
    fn complete(&mut self, id: ActionId, outcome: &Outcome, at: DateTime<Utc>) -> Result<(), Error>;
    fn record_decision(&mut self, decision: &Decision) -> Result<(), Error>;
    fn record_block(&mut self, block: &BlockRecord) -> Result<(), Error>;
    fn record_unblock(&mut self, target: &str, ip: IpAddr, reason: &str, at: DateTime<Utc>) -> Result<(), Error>;
    fn active_blocks(&mut self) -> Result<Vec<BlockRecord>, Error>;
    fn prune(&mut self, older_than: DateTime<Utc>) -> Result<Pruned, Error>;
    /// Writes back what is buffered in memory; how many entries were written.
    fn flush(&mut self) -> Result<usize, Error>;
    /// True while writes are kept in memory.
    fn is_degraded(&self) -> bool;
    /// The last call, when every handle is gone: a last chance for buffered writes, reported if they are lost.
    fn close(&mut self);

    /// The SQLite store, for tests that inspect the file through the writer's own connection.
    #[cfg(test)]
    fn as_sqlite(&mut self) -> Option<&mut super::sqlite::SqliteStore> {
        None
    }
}
