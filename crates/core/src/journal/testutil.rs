//! Builders and helpers shared by the journal's unit tests.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::Connection;

use super::schema::ts;
use super::{ActionKind, BlockRecord, Decision, Journal, NewAction, PendingAction};

pub fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + secs, 0).single().expect("valid test time")
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("valid test IP")
}

pub fn block(addr: &str, secs: i64) -> NewAction {
    NewAction {
        target: "default".to_owned(),
        kind: ActionKind::Block,
        ip: ip(addr),
        reason: "misp-event=1234 rule=0".to_owned(),
        event_id: Some(1234),
        rule: Some(0),
        comment: Some(format!("fortimisp {} misp-event=1234", ts(&at(secs)))),
        requested_at: at(secs),
    }
}

pub fn unblock(addr: &str, secs: i64) -> NewAction {
    NewAction {
        kind: ActionKind::Unblock,
        reason: "max_age".to_owned(),
        event_id: None,
        rule: None,
        comment: None,
        ..block(addr, secs)
    }
}

pub fn record(addr: &str, secs: i64) -> BlockRecord {
    BlockRecord {
        target: "default".to_owned(),
        ip: ip(addr),
        object: format!("misp-{addr}"),
        group: Some("MISP_BLOCK".to_owned()),
        event_id: Some(1234),
        rule: Some(0),
        reason: "misp-event=1234 rule=0".to_owned(),
        blocked_at: at(secs),
        backend: "address-group".to_owned(),
    }
}

pub fn decision(addr: &str, secs: i64, verdict: &str) -> Decision {
    Decision {
        at: at(secs),
        target: None,
        ip: ip(addr),
        verdict: verdict.to_owned(),
        detail: format!("{verdict} detail"),
        event_id: None,
        rule: None,
    }
}

pub fn ips(pending: &[PendingAction]) -> Vec<String> {
    pending.iter().map(|p| format!("{} {}", p.kind, p.ip)).collect()
}

pub fn file_journal() -> (tempfile::TempDir, PathBuf, Journal) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state").join("state.db");
    let journal = Journal::open(&path).expect("journal opens");
    (dir, path, journal)
}

/// Runs a statement on the writer's own connection.
pub async fn with_conn<T: Send + 'static>(
    journal: &Journal,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
) -> T {
    journal.with_sqlite(move |s| f(s.connection()).expect("test statement runs")).await
}

/// Simulates the file refusing writes (as root, chmod does not): the connection goes read-only.
pub async fn refuse_writes(journal: &Journal, refuse: bool) {
    with_conn(journal, move |c| c.pragma_update(None, "query_only", refuse)).await;
}

pub async fn recent_decisions(journal: &Journal, limit: usize) -> Vec<Decision> {
    journal.recent_decisions(limit).await
}

pub async fn buffered(journal: &Journal) -> usize {
    journal.with_sqlite(|s| s.buffered()).await
}

pub async fn set_retry_interval(journal: &Journal, every: Duration) {
    journal.with_sqlite(move |s| s.set_retry_interval(every)).await;
}
