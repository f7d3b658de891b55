//! Moving a journal between stores (`integration journal export` / `import`): every row of the three tables as
//! JSON lines, one object per row with its `table`, in the same shape whichever store wrote it. This is how an
//! operator moves a SQLite journal to PostgreSQL: export with the SQLite config, import with the PostgreSQL one.
//!
//! Import is only into an empty journal ([`super::Error::NotEmpty`] otherwise): rows keep their ids, so ids a
//! daemon holds stay valid and nothing is merged or guessed.

use std::io::{BufRead, Write};
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ActionKind;

/// One row of one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "table", rename_all = "lowercase", deny_unknown_fields)]
pub enum Row {
    #[serde(rename = "actions")]
    Action(ActionRow),
    #[serde(rename = "decisions")]
    Decision(DecisionRow),
    #[serde(rename = "blocks")]
    Block(BlockRow),
}

/// A row of `actions`, finished or pending.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRow {
    pub id: i64,
    pub target: String,
    pub kind: ActionKind,
    pub ip: IpAddr,
    pub reason: String,
    pub event_id: Option<i64>,
    pub rule: Option<i64>,
    pub comment: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// `pending`, `done`, `failed` or `skipped`.
    pub state: String,
    pub outcome: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A row of `decisions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRow {
    pub id: i64,
    pub target: Option<String>,
    pub at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
    pub repeats: i64,
    pub ip: IpAddr,
    pub verdict: String,
    pub detail: String,
    pub event_id: Option<i64>,
    pub rule: Option<i64>,
}

/// A row of `blocks`, the ledger (open or closed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRow {
    pub id: i64,
    pub target: String,
    pub ip: IpAddr,
    pub object: Option<String>,
    pub group: Option<String>,
    pub event_id: Option<i64>,
    pub rule: Option<i64>,
    pub reason: Option<String>,
    pub blocked_at: Option<DateTime<Utc>>,
    pub backend: Option<String>,
    pub unblocked_at: Option<DateTime<Utc>>,
    pub unblock_reason: Option<String>,
}

/// Rows written by an import, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Imported {
    pub actions: usize,
    pub decisions: usize,
    pub blocks: usize,
}

impl Imported {
    pub(super) fn count(&mut self, row: &Row) {
        match row {
            Row::Action(_) => self.actions += 1,
            Row::Decision(_) => self.decisions += 1,
            Row::Block(_) => self.blocks += 1,
        }
    }
}

/// A problem reading or writing JSON lines.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("line {line}: {source}")]
    Parse { line: usize, source: serde_json::Error },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Writes `rows` as JSON lines.
///
/// # Errors
/// When `out` refuses a write.
pub fn write_lines(rows: &[Row], out: &mut dyn Write) -> Result<(), TransferError> {
    for row in rows {
        serde_json::to_writer(&mut *out, row).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Reads JSON lines (blank lines skipped).
///
/// # Errors
/// The first line that is not a row, with its number.
pub fn read_lines(input: &mut dyn BufRead) -> Result<Vec<Row>, TransferError> {
    let mut rows = Vec::new();
    for (n, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        rows.push(serde_json::from_str(&line).map_err(|source| TransferError::Parse { line: n + 1, source })?);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::testutil::{at, ip};

    #[test]
    fn rows_round_trip_as_json_lines() {
        let rows = vec![
            Row::Decision(DecisionRow {
                id: 3,
                target: None,
                at: at(1),
                last_at: at(2),
                repeats: 1,
                ip: ip("2001:db8::1"),
                verdict: "block".into(),
                detail: "d".into(),
                event_id: Some(7),
                rule: None,
            }),
            Row::Block(BlockRow {
                id: 1,
                target: "default".into(),
                ip: ip("198.51.100.7"),
                object: None,
                group: None,
                event_id: None,
                rule: None,
                reason: None,
                blocked_at: None,
                backend: None,
                unblocked_at: Some(at(3)),
                unblock_reason: Some("adopt_legacy".into()),
            }),
        ];
        let mut out = Vec::new();
        write_lines(&rows, &mut out).expect("write");
        let text = String::from_utf8(out.clone()).expect("utf-8");
        assert!(text.starts_with("{\"table\":\"decisions\",\"id\":3,"), "{text}");
        assert_eq!(read_lines(&mut out.as_slice()).expect("read"), rows);
        let bad = b"\n{\"table\":\"nope\"}\n";
        let error = read_lines(&mut bad.as_slice()).expect_err("unknown table").to_string();
        assert!(error.starts_with("line 2:"), "{error}");
    }
}
