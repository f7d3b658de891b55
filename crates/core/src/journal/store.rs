//! The contract between the writer and a store: what every journal implementation answers. The writer thread is
//! the only caller, so a store is plain synchronous code that owns its connection.

use std::net::IpAddr;

use chrono::{DateTime, Utc};

use super::transfer::{Imported, Row};
use super::{ActionId, BlockRecord, Decision, Error, NewAction, Outcome, PendingAction, PendingQuery, Pruned};

/// A journal implementation behind [`super::Journal`]. Both stores are a [`super::buffered::Buffered`] backend: [`super::sqlite::SqliteStore`] and
/// [`super::postgres::PostgresStore`]; the public
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

    /// Opens the backing store now if it is not open (a database connects on the writer thread); on failure the
    /// store stays degraded and retries on its own.
    fn start(&mut self) -> Result<(), Error>;
    /// Every row, for `integration journal export` (refused while degraded).
    fn export(&mut self) -> Result<Vec<Row>, Error>;
    /// Writes exported rows into an empty journal (refused while degraded, or if it is not empty).
    fn import(&mut self, rows: &[Row]) -> Result<Imported, Error>;

    /// The store itself, for tests that inspect it through the writer's own connection.
    #[cfg(test)]
    fn as_any(&mut self) -> &mut dyn std::any::Any;
}
