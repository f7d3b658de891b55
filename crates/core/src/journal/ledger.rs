//! The `blocks` table, the ledger of blocks fortimisp made: opened by a block, closed by an unblock.

use std::net::IpAddr;

use rusqlite::{params, Connection};

use super::schema::{ts, SqlIp, SqlTime};
use super::BlockRecord;

/// Opens an entry; an open entry for the same IP is replaced.
pub(super) fn open(db: &Connection, b: &BlockRecord) -> rusqlite::Result<()> {
    db.prepare_cached(
        "INSERT INTO blocks (ip, object, grp, event_id, rule, reason, blocked_at, backend, target)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (target, ip) WHERE unblocked_at IS NULL DO UPDATE SET
           object = excluded.object, grp = excluded.grp, event_id = excluded.event_id,
           rule = excluded.rule, reason = excluded.reason, blocked_at = excluded.blocked_at,
           backend = excluded.backend",
    )?
    .execute(params![
        b.ip.to_string(),
        b.object,
        b.group,
        b.event_id,
        b.rule,
        b.reason,
        ts(&b.blocked_at),
        b.backend,
        b.target
    ])?;
    Ok(())
}

/// Closes the open entry for `ip` on `target`, or records a closed one if the ledger never saw the block.
pub(super) fn close(db: &Connection, target: &str, ip: IpAddr, reason: &str, at: &str) -> rusqlite::Result<()> {
    let ip = ip.to_string();
    let closed = db
        .prepare_cached(
            "UPDATE blocks SET unblocked_at = ?2, unblock_reason = ?3
             WHERE ip = ?1 AND target = ?4 AND unblocked_at IS NULL",
        )?
        .execute(params![ip, at, reason, target])?;
    if closed == 0 {
        db.prepare_cached("INSERT INTO blocks (ip, unblocked_at, unblock_reason, target) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![ip, at, reason, target])?;
    }
    Ok(())
}

/// Deletes entries closed before `cutoff`; open ones are never pruned.
pub(super) fn prune(db: &Connection, cutoff: &str) -> rusqlite::Result<usize> {
    db.prepare_cached("DELETE FROM blocks WHERE unblocked_at IS NOT NULL AND unblocked_at < ?1")?.execute([cutoff])
}

/// Open entries, oldest block first.
pub(super) fn load_active(db: &Connection) -> rusqlite::Result<Vec<BlockRecord>> {
    let mut stmt = db.prepare_cached(
        "SELECT ip, object, grp, event_id, rule, reason, blocked_at, backend, target FROM blocks
         WHERE unblocked_at IS NULL ORDER BY blocked_at, id",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok(BlockRecord {
            ip: row.get::<_, SqlIp>(0)?.0,
            object: row.get(1)?,
            group: row.get(2)?,
            event_id: row.get(3)?,
            rule: row.get(4)?,
            reason: row.get(5)?,
            blocked_at: row.get::<_, SqlTime>(6)?.0,
            backend: row.get(7)?,
            target: row.get(8)?,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use crate::journal::testutil::*;
    use crate::journal::{BlockRecord, Journal};

    #[tokio::test]
    async fn block_ledger_opens_and_closes() {
        let journal = Journal::in_memory();
        journal.record_block(&record("198.51.100.1", 1)).await.expect("block");
        journal.record_block(&record("2001:db8::2", 2)).await.expect("block");
        // a re-block replaces the open entry
        let reblocked = BlockRecord { reason: "misp-event=99".into(), ..record("198.51.100.1", 3) };
        journal.record_block(&reblocked).await.expect("block");
        assert_eq!(journal.active_blocks().await.expect("active"), vec![record("2001:db8::2", 2), reblocked.clone()]);
        journal.record_unblock("default", ip("2001:db8::2"), "max_age", at(4)).await.expect("unblock");
        // a removal the ledger never saw is still recorded, closed
        journal.record_unblock("default", ip("198.51.100.77"), "adopt_legacy", at(5)).await.expect("unblock");
        assert_eq!(journal.active_blocks().await.expect("active"), vec![reblocked]);
        let closed: Vec<(String, String)> = with_conn(&journal, |c| {
            let mut s =
                c.prepare("SELECT ip, unblock_reason FROM blocks WHERE unblocked_at IS NOT NULL ORDER BY id")?;
            let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await;
        assert_eq!(
            closed,
            [("2001:db8::2".to_owned(), "max_age".to_owned()), ("198.51.100.77".to_owned(), "adopt_legacy".to_owned())]
        );
    }
}
