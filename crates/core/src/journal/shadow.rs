//! Degraded mode's memory, the same for every store: the writes the store refused ([`Op`], kept in order), the
//! shadow of the pending queue that keeps enqueue, pending and complete working meanwhile ([`Shadow`]), and
//! [`replay_ops`], the order and id translation with which a store writes them back once it takes writes again.
//! The state machine around them is [`super::buffered`]; the SQL, each store's own.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use chrono::{DateTime, Utc};

use super::{ActionId, ActionKind, BlockRecord, Decision, NewAction, Outcome, PendingAction, PendingQuery};

/// A write, as kept in memory while degraded and replayed in order when the file is writable again.
#[derive(Debug, Clone)]
pub(super) enum Op {
    /// `mem_id`: the negative id handed out while degraded; 0 when written directly.
    Enqueue {
        mem_id: i64,
        action: NewAction,
    },
    Attempt {
        id: i64,
        error: String,
        at: DateTime<Utc>,
    },
    Complete {
        id: i64,
        outcome: Outcome,
        at: DateTime<Utc>,
    },
    Decision(Decision),
    Block(BlockRecord),
    Unblock {
        target: String,
        ip: IpAddr,
        reason: String,
        at: DateTime<Utc>,
    },
}

/// What an [`Op`] did to the file.
#[derive(Debug)]
pub(super) enum Applied {
    Enqueued(PendingAction),
    Written,
    /// Attempt/complete on an id that is not in the file at all.
    NoSuchAction,
}

/// The in-memory shadow of the pending queue: the rows last read from the file plus this process's writes since.
#[derive(Debug, Default)]
pub(super) struct Shadow {
    pub(super) by_id: BTreeMap<i64, PendingAction>,
    by_key: HashMap<(String, ActionKind, IpAddr), i64>,
}

impl Shadow {
    pub(super) fn from_rows(rows: Vec<PendingAction>) -> Shadow {
        let mut shadow = Shadow::default();
        for row in rows {
            shadow.insert(row);
        }
        shadow
    }

    pub(super) fn insert(&mut self, p: PendingAction) {
        self.by_key.entry((p.target.clone(), p.kind, p.ip)).or_insert(p.id.0);
        self.by_id.entry(p.id.0).or_insert(p);
    }

    pub(super) fn find(&self, target: &str, kind: ActionKind, ip: IpAddr) -> Option<ActionId> {
        self.by_key.get(&(target.to_owned(), kind, ip)).map(|id| ActionId(*id))
    }

    pub(super) fn remove(&mut self, id: i64) -> bool {
        match self.by_id.remove(&id) {
            Some(p) => {
                let key = (p.target, p.kind, p.ip);
                if self.by_key.get(&key) == Some(&id) {
                    self.by_key.remove(&key);
                }
                true
            }
            None => false,
        }
    }

    pub(super) fn attempt(&mut self, id: i64, error: &str) -> bool {
        match self.by_id.get_mut(&id) {
            Some(p) => {
                p.attempts = p.attempts.saturating_add(1);
                p.last_error = Some(error.to_owned());
                true
            }
            None => false,
        }
    }

    /// The entries `query` selects, oldest first.
    pub(super) fn list_where(&self, query: &PendingQuery) -> Vec<PendingAction> {
        let mut all: Vec<PendingAction> = self.by_id.values().filter(|p| query.selects(p)).cloned().collect();
        all.sort_by_key(|p| (p.requested_at, p.id.0.unsigned_abs()));
        all.truncate(query.limit.unwrap_or(usize::MAX));
        all
    }

    /// Takes in what a read of the file returned for `query`: the entries it selects are replaced when the read
    /// was complete (no limit); a limited read only adds.
    pub(super) fn refresh(&mut self, query: &PendingQuery, rows: Vec<PendingAction>) {
        if query.limit.is_none() {
            let stale: Vec<i64> = self.by_id.values().filter(|p| query.selects(p)).map(|p| p.id.0).collect();
            for id in stale {
                self.remove(id);
            }
        }
        for row in rows {
            self.insert(row);
        }
    }
}

/// The ledger as the file has it (`base`) with the buffered writes on top.
pub(super) fn active_blocks(mut base: Vec<BlockRecord>, backlog: &[Op]) -> Vec<BlockRecord> {
    for op in backlog {
        match op {
            Op::Block(b) => {
                base.retain(|x| (x.ip, &x.target) != (b.ip, &b.target));
                base.push(b.clone());
            }
            Op::Unblock { target, ip, .. } => base.retain(|x| (x.ip, &x.target) != (*ip, target)),
            _ => {}
        }
    }
    base
}

/// Replays `backlog` in order inside the caller's transaction, translating memory ids; `apply` writes one entry
/// and says whether a failure means the store is unavailable (then the whole replay fails and is retried later).
/// Returns the new memory → store ids. Entries the store rejects for their content are skipped and reported in
/// `skipped`, so one bad entry cannot keep the journal degraded forever.
pub(super) fn replay_ops<E: std::fmt::Display>(
    backlog: &[Op],
    known: &HashMap<i64, i64>,
    skipped: &mut Vec<(Op, String)>,
    mut apply: impl FnMut(&Op, &dyn Fn(i64) -> i64) -> Result<Applied, E>,
    is_unavailable: impl Fn(&E) -> bool,
) -> Result<HashMap<i64, i64>, E> {
    let mut remap: HashMap<i64, i64> = HashMap::new();
    for op in backlog {
        let translate = |id: i64| remap.get(&id).or_else(|| known.get(&id)).copied().unwrap_or(id);
        match apply(op, &translate) {
            Ok(Applied::Enqueued(row)) => {
                if let Op::Enqueue { mem_id, .. } = op {
                    remap.insert(*mem_id, row.id.0);
                }
            }
            Ok(Applied::Written) => {}
            Ok(Applied::NoSuchAction) => skipped.push((op.clone(), "no such action".to_owned())),
            Err(error) if is_unavailable(&error) => return Err(error),
            Err(error) => skipped.push((op.clone(), error.to_string())),
        }
    }
    Ok(remap)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::journal::testutil::*;
    use crate::journal::{Journal, Outcome, MAX_BUFFERED_DECISIONS};

    #[tokio::test]
    async fn degraded_keeps_working_in_memory_and_flushes_back() {
        let (_dir, path, journal) = file_journal();
        let before = journal.enqueue(&block("198.51.100.1", 1)).await.expect("enqueue");
        refuse_writes(&journal, true).await;

        // writes succeed from memory; ids stay stable; idempotency holds across file and memory
        let during = journal.enqueue(&block("198.51.100.2", 2)).await.expect("enqueue while degraded");
        assert!(journal.is_degraded());
        assert!(during.0 < 0, "memory id {during}");
        assert_eq!(journal.enqueue(&block("198.51.100.2", 3)).await.expect("enqueue"), during);
        assert_eq!(journal.enqueue(&block("198.51.100.1", 3)).await.expect("enqueue"), before);
        journal.record_attempt(during, "fortigate: 503").await.expect("attempt");
        journal.complete(before, &Outcome::Done).await.expect("complete while degraded");
        journal.record_block(&record("198.51.100.1", 4)).await.expect("block while degraded");
        journal.record_decision(&decision("198.51.100.2", 5, "block")).await.expect("decision while degraded");
        let pending = journal.pending().await.expect("pending while degraded");
        assert_eq!(ips(&pending), ["block 198.51.100.2"]);
        assert_eq!(pending[0].attempts, 1);
        assert_eq!(journal.active_blocks().await.expect("active"), vec![record("198.51.100.1", 4)]);
        assert_eq!(recent_decisions(&journal, 5).await, vec![decision("198.51.100.2", 5, "block")]);
        assert_eq!(buffered(&journal).await, 5);
        assert!(journal.flush().await.is_err(), "still refused");

        // the file takes writes again: the buffer lands there and the memory id keeps working
        refuse_writes(&journal, false).await;
        assert_eq!(journal.flush().await.expect("flush"), 5);
        assert!(!journal.is_degraded());
        journal.record_attempt(during, "timeout").await.expect("attempt by memory id after flush");
        let other = Journal::open(&path).expect("another process");
        let pending = other.pending().await.expect("pending");
        assert_eq!(ips(&pending), ["block 198.51.100.2"]);
        assert_eq!((pending[0].attempts, pending[0].last_error.as_deref()), (2, Some("timeout")));
        assert_eq!(other.active_blocks().await.expect("active"), vec![record("198.51.100.1", 4)]);
        assert_eq!(recent_decisions(&other, 5).await, vec![decision("198.51.100.2", 5, "block")]);
        journal.complete(during, &Outcome::Done).await.expect("complete by memory id");
        assert_eq!(other.pending().await.expect("pending"), vec![]);
    }

    #[tokio::test]
    async fn degraded_flushes_on_a_later_write() {
        let (_dir, path, journal) = file_journal();
        set_retry_interval(&journal, Duration::ZERO).await;
        refuse_writes(&journal, true).await;
        journal.enqueue(&block("198.51.100.1", 1)).await.expect("enqueue");
        assert!(journal.is_degraded());
        refuse_writes(&journal, false).await;
        journal.enqueue(&block("198.51.100.2", 2)).await.expect("enqueue");
        assert!(!journal.is_degraded());
        let other = Journal::open(&path).expect("another process");
        assert_eq!(ips(&other.pending().await.expect("pending")), ["block 198.51.100.1", "block 198.51.100.2"]);
    }

    #[tokio::test]
    async fn file_deleted_or_replaced_degrades_then_moves_to_the_new_file() {
        // Works as root: the journal notices the path no longer names its file (WAL mode alone would keep writing
        // into the unlinked file and lose everything at exit).
        let (_dir, path, journal) = file_journal();
        let first = journal.enqueue(&block("198.51.100.1", 1)).await.expect("enqueue");
        let second = journal.enqueue(&block("198.51.100.3", 3)).await.expect("enqueue");
        journal.record_attempt(second, "timeout").await.expect("attempt");
        let state_dir = path.parent().expect("parent");
        std::fs::remove_dir_all(state_dir).expect("remove");
        std::fs::create_dir_all(&path).expect("directory where the file was");

        let id = journal.enqueue(&block("198.51.100.2", 2)).await.expect("enqueue while degraded");
        assert!(journal.is_degraded());
        let expected = ["block 198.51.100.1", "block 198.51.100.2", "block 198.51.100.3"];
        assert_eq!(ips(&journal.pending().await.expect("pending")), expected);
        journal.complete(id, &Outcome::Done).await.expect("complete while degraded");
        journal.complete(first, &Outcome::Done).await.expect("complete of a lost-file id while degraded");
        assert_eq!(ips(&journal.pending().await.expect("pending")), ["block 198.51.100.3"]);
        assert!(journal.flush().await.is_err(), "a directory is in the way");

        // the operator fixes it: the queue moves to the new file, old ids still work
        std::fs::remove_dir(&path).expect("remove directory");
        assert_eq!(journal.flush().await.expect("flush"), 3);
        let other = Journal::open(&path).expect("new file");
        let pending = other.pending().await.expect("pending");
        assert_eq!(ips(&pending), ["block 198.51.100.3"]);
        assert_eq!((pending[0].id, pending[0].attempts), (second, 1));
        journal.complete(second, &Outcome::Done).await.expect("complete by old id");
        assert_eq!(other.pending().await.expect("pending"), vec![]);
        let next = journal.enqueue(&block("198.51.100.4", 4)).await.expect("enqueue");
        assert!(next > second, "new ids do not reuse old ones");
    }

    #[tokio::test]
    async fn open_or_memory_starts_degraded_and_adopts_the_file_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocker = dir.path().join("state");
        std::fs::write(&blocker, b"a file where the directory should be").expect("write");
        let path = blocker.join("state.db");
        let (journal, error) = Journal::open_or_memory(&path);
        let message = error.expect("open failed").to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(journal.is_degraded());
        let id = journal.enqueue(&block("198.51.100.1", 1)).await.expect("enqueue in memory");
        journal.enqueue(&block("198.51.100.2", 2)).await.expect("enqueue in memory");
        journal.complete(id, &Outcome::Done).await.expect("complete in memory");
        assert_eq!(ips(&journal.pending().await.expect("pending")), ["block 198.51.100.2"]);
        assert!(journal.flush().await.is_err(), "path still blocked");

        std::fs::remove_file(&blocker).expect("unblock the path");
        assert_eq!(journal.flush().await.expect("flush"), 3);
        assert!(!journal.is_degraded());
        let reopened = Journal::open(&path).expect("file now exists");
        assert_eq!(ips(&reopened.pending().await.expect("pending")), ["block 198.51.100.2"]);
    }

    #[tokio::test]
    async fn buffered_decisions_are_capped_actions_are_not() {
        let (_dir, _path, journal) = file_journal();
        refuse_writes(&journal, true).await;
        for n in 0..=MAX_BUFFERED_DECISIONS {
            let addr = format!("10.0.{}.{}", n / 256 % 256, n % 256);
            journal.record_decision(&decision(&addr, 0, "clean")).await.expect("decision");
        }
        journal.enqueue(&block("198.51.100.1", 1)).await.expect("enqueue");
        assert_eq!(buffered(&journal).await, MAX_BUFFERED_DECISIONS + 1);
        refuse_writes(&journal, false).await;
        assert_eq!(journal.flush().await.expect("flush"), MAX_BUFFERED_DECISIONS + 1);
        assert_eq!(recent_decisions(&journal, usize::MAX).await.len(), MAX_BUFFERED_DECISIONS);
        assert_eq!(ips(&journal.pending().await.expect("pending")), ["block 198.51.100.1"]);
    }

    /// When the last handle goes while degraded, the writer (not `Drop`) makes one last attempt to write the
    /// buffer back before it ends.
    #[tokio::test]
    async fn the_writer_writes_the_buffer_back_when_the_last_handle_goes() {
        let (_dir, path, journal) = file_journal();
        refuse_writes(&journal, true).await;
        journal.enqueue(&block("198.51.100.1", 1)).await.expect("enqueue while degraded");
        assert!(journal.is_degraded());
        refuse_writes(&journal, false).await;
        let writer = journal.writer_thread();
        drop(journal);
        writer.await;
        let reopened = Journal::open(&path).expect("reopen");
        assert_eq!(ips(&reopened.pending().await.expect("pending")), ["block 198.51.100.1"]);
    }
}
