//! What an external threat feed (`config system external-resource`) holds, pure: the served file read into
//! entries, the entry limit, the push API's commands as set operations, the entry-list status, and the feed
//! events the FortiGate sends to syslog. No I/O and no clock: times come in as arguments.
//!
//! - [`parse_body`]: a feed file into entries (one per line, `#` comment lines and blank lines skipped, CRLF ok).
//! - [`is_valid_entry`]: an IPv4/IPv6 address, a range `a-b` or a CIDR; anything else is kept but counted invalid
//!   (reference §6: FortiOS keeps loading the rest of the file).
//! - [`FeedList`]: the loaded entries in order, after the limit: [`FeedList::load`] for a pulled file (entries
//!   beyond the limit dropped from the end, in file order), [`FeedList::apply`] for a pushed command ([`PushOp`]).
//! - [`FeedState`]: a feed's runtime status (the list, the last fetch, counters) and [`FeedState::entry_list`], the
//!   `results` object of `monitor/system/external-resource/entry-list`.
//! - [`event_line`]: logid 0100022220 / 22222 / 22224 in the default `key=value` syslog format.
//!
//! # Emulator choices where the reference is silent
//! - The limit applies to each feed on its own (the per-resource limit of FortiOS before 7.4.4); feeds are not
//!   summed. Invalid entries count toward it, as lines of the file.
//! - A file keeps its duplicate lines; the push API's `add` and `snapshot` are set operations (an entry already
//!   held is not added twice), `remove` of an absent entry is not an error.
//! - Only full-line `#` comments: an entry is the whole trimmed line (`198.51.100.7 # x` is one invalid entry).
//! - Event field names beyond `logid`, `type`, `subtype`, `level`, `name` (`count`, `dropped`, `limit`, `msg`) are
//!   the emulator's: Fortinet's log reference documents the ids, not the fields.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{json, Value};

/// The device-wide entry limit reported when a test sets none: the per-resource limit of FortiOS before 7.4.4
/// (128K entries, reference §6).
pub const DEFAULT_LIMIT: usize = 131_072;

/// The feed file as entries, in file order: one per line, trimmed, blank lines and `#` comment lines skipped.
pub fn parse_body(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.trim_end_matches('\r').trim())
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// An IPv4/IPv6 address, a range `first-last` (one family, first <= last) or a CIDR (host bits allowed, as
/// FortiOS shows `172.200.1.4/16` valid).
pub fn is_valid_entry(entry: &str) -> bool {
    if entry.parse::<IpAddr>().is_ok() || entry.parse::<IpNet>().is_ok() {
        return true;
    }
    match entry.split_once('-') {
        Some((first, last)) => match (first.trim().parse::<IpAddr>(), last.trim().parse::<IpAddr>()) {
            (Ok(IpAddr::V4(a)), Ok(IpAddr::V4(b))) => a <= b,
            (Ok(IpAddr::V6(a)), Ok(IpAddr::V6(b))) => a <= b,
            _ => false,
        },
        None => false,
    }
}

/// What one command of `POST monitor/system/external-resource/dynamic` does to the feed's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOp {
    /// Add the entries not already held (at the end, in command order).
    Add,
    /// Remove the entries held; absent ones are ignored.
    Remove,
    /// Replace the whole list (duplicates kept once).
    Snapshot,
}

impl PushOp {
    pub fn parse(s: &str) -> Option<PushOp> {
        match s {
            "add" => Some(PushOp::Add),
            "remove" => Some(PushOp::Remove),
            "snapshot" => Some(PushOp::Snapshot),
            _ => None,
        }
    }
}

/// What a load or a push did to a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The loaded entries differ from the ones before.
    pub changed: bool,
    /// Entries dropped beyond the limit.
    pub dropped: usize,
}

/// The entries a feed holds (after the limit), in order, and whether the last change overflowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedList {
    entries: Vec<String>,
    /// Entries beyond the limit dropped at the last load or push.
    dropped: usize,
}

impl FeedList {
    /// A pulled file's entries: the first `limit` are kept, the rest dropped (FortiOS truncates the last entries,
    /// log id 22224).
    pub fn load(&mut self, mut lines: Vec<String>, limit: usize) -> Change {
        let dropped = lines.len().saturating_sub(limit);
        lines.truncate(limit);
        let changed = lines != self.entries;
        self.entries = lines;
        self.dropped = dropped;
        Change { changed, dropped }
    }

    /// A pushed command, as a set operation, then the limit (an `add` beyond it drops the newest entries).
    pub fn apply(&mut self, op: PushOp, entries: &[String], limit: usize) -> Change {
        let before = self.entries.clone();
        let mut next = match op {
            PushOp::Snapshot => Vec::new(),
            PushOp::Add | PushOp::Remove => self.entries.clone(),
        };
        match op {
            PushOp::Remove => next.retain(|e| !entries.contains(e)),
            PushOp::Add | PushOp::Snapshot => {
                for e in entries.iter().map(|e| e.trim()) {
                    if !e.is_empty() && !next.iter().any(|held| held == e) {
                        next.push(e.to_string());
                    }
                }
            }
        }
        let dropped = next.len().saturating_sub(limit);
        next.truncate(limit);
        self.entries = next;
        self.dropped = dropped;
        Change { changed: self.entries != before, dropped }
    }

    /// The loaded entries, in order.
    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    pub fn valid_count(&self) -> usize {
        self.entries.iter().filter(|e| is_valid_entry(e)).count()
    }

    pub fn invalid_count(&self) -> usize {
        self.entries.len() - self.valid_count()
    }

    /// Entries dropped beyond the limit at the last change (0: no overflow).
    pub fn dropped(&self) -> usize {
        self.dropped
    }
}

/// `resource_file_status` of the entry-list status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileStatus {
    /// No fetch has been tried (a new feed, or a push-only one).
    #[default]
    NotFetched,
    /// The last fetch answered the file (200) or "not modified" (304): what FortiOS 7.4.2 reports.
    Downloaded,
    /// The last fetch failed (transport, TLS, HTTP status other than 200/304); the previous list stays.
    FetchFailed,
}

impl FileStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FileStatus::NotFetched => "not-fetched",
            FileStatus::Downloaded => "downloaded",
            FileStatus::FetchFailed => "fetch-failed",
        }
    }
}

/// A feed's runtime state beside its configuration: what it holds and how its fetches went.
#[derive(Debug, Clone, Default)]
pub struct FeedState {
    pub list: FeedList,
    pub file_status: FileStatus,
    /// Unix seconds of the last load or push that changed the list; 0 before the first.
    pub last_content_update: i64,
    /// Unix seconds of the last fetch attempt; 0 before the first.
    pub conn_attempt: i64,
    /// HTTP status of the last fetch (0: none yet, or no answer).
    pub http_status: u16,
    /// Fetch attempts made (successful or not).
    pub fetches: u64,
    /// Why the last fetch failed (`None` after a successful one).
    pub last_error: Option<String>,
    /// `ETag` of the last file loaded, sent back as `If-None-Match`.
    pub etag: Option<String>,
    /// `Last-Modified` of the last file loaded, sent back as `If-Modified-Since`.
    pub last_modified: Option<String>,
}

/// How a fetch answered, for [`FeedState::fetched`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// 200: the file's text, and the validators to send next time.
    File { body: String, etag: Option<String>, last_modified: Option<String> },
    /// 304: the file has not changed since the validators sent.
    NotModified,
    /// No usable answer: an HTTP status other than 200/304 (`status`), or none (transport or TLS failure).
    Failed { status: Option<u16>, error: String },
}

impl FeedState {
    /// Records one fetch of the feed's resource at `now` (Unix seconds) and returns the events it produces. A file
    /// is loaded under `limit`; a failure keeps the list in force (reference §6) and only marks the status.
    pub fn fetched(&mut self, feed: &str, outcome: Fetched, limit: usize, now: i64) -> Vec<FeedEvent> {
        self.fetches += 1;
        self.conn_attempt = now;
        match outcome {
            Fetched::File { body, etag, last_modified } => {
                let change = self.list.load(parse_body(&body), limit);
                self.http_status = 200;
                self.file_status = FileStatus::Downloaded;
                self.last_error = None;
                self.last_content_update = now;
                self.etag = etag;
                self.last_modified = last_modified;
                events_for(feed, change, self.list.entries().len(), limit, true)
            }
            Fetched::NotModified => {
                self.http_status = 304;
                self.file_status = FileStatus::Downloaded;
                self.last_error = None;
                Vec::new()
            }
            Fetched::Failed { status, error } => {
                self.http_status = status.unwrap_or(0);
                self.file_status = FileStatus::FetchFailed;
                self.last_error = Some(error);
                Vec::new()
            }
        }
    }

    /// Applies one pushed command at `now` and returns its events (updated when the list changed, overflow when
    /// entries were dropped). `resource_file_status` is left alone: nothing was fetched.
    pub fn pushed(&mut self, feed: &str, op: PushOp, entries: &[String], limit: usize, now: i64) -> Vec<FeedEvent> {
        let change = self.list.apply(op, entries, limit);
        if change.changed {
            self.last_content_update = now;
        }
        events_for(feed, change, self.list.entries().len(), limit, false)
    }

    /// The `results` object of `GET monitor/system/external-resource/entry-list?mkey=<feed>`, shaped like a
    /// FortiOS 7.4.2 answer (`valid` a JSON boolean, `status` "success") plus the device `limit` of later
    /// releases. `status_only` leaves out `entries`.
    pub fn entry_list(&self, limit: usize, status_only: bool) -> Value {
        let mut results = json!({
            "status": "success",
            "resource_file_status": self.file_status.as_str(),
            "last_content_update_time": self.last_content_update,
            "conn_attempt_time": self.conn_attempt,
            "http_status_code": self.http_status,
            "valid_count": self.list.valid_count(),
            "invalid_count": self.list.invalid_count(),
            "limit": limit,
            "overflow": self.list.dropped() > 0,
        });
        if !status_only {
            let entries: Vec<Value> =
                self.list.entries().iter().map(|e| json!({"entry": e, "valid": is_valid_entry(e)})).collect();
            results["entries"] = Value::Array(entries);
        }
        results
    }
}

/// One threat-feed event the FortiGate logs (type=event subtype=system).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    /// 0100022220: the feed's content changed (a load with new content, or a push).
    Updated { feed: String, count: usize },
    /// 0100022222: a file was loaded (every successful fetch of a file).
    Loaded { feed: String, count: usize },
    /// 0100022224: entries beyond the limit were dropped.
    Overflow { feed: String, count: usize, dropped: usize, limit: usize },
}

/// Who is logging and when, for [`event_line`].
#[derive(Debug, Clone)]
pub struct Device<'a> {
    pub devname: &'a str,
    pub devid: &'a str,
    pub vdom: &'a str,
}

/// The events a load or push produces: updated when the content changed, loaded after a file load, overflow when
/// entries were dropped.
pub fn events_for(feed: &str, change: Change, count: usize, limit: usize, loaded_file: bool) -> Vec<FeedEvent> {
    let mut events = Vec::new();
    if change.changed {
        events.push(FeedEvent::Updated { feed: feed.to_string(), count });
    }
    if loaded_file {
        events.push(FeedEvent::Loaded { feed: feed.to_string(), count });
    }
    if change.dropped > 0 {
        events.push(FeedEvent::Overflow { feed: feed.to_string(), count, dropped: change.dropped, limit });
    }
    events
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `event` as FortiOS's default syslog format: `<PRI>` (facility local7, severity from the level) then
/// `key=value` pairs, strings quoted, numbers bare. `at` is the event time in Unix nanoseconds (UTC, `tz="+0000"`).
pub fn event_line(event: &FeedEvent, device: &Device<'_>, at_nanos: i64) -> String {
    let (logid, logdesc, level, feed, fields, msg) = match event {
        FeedEvent::Updated { feed, count } => (
            "0100022220",
            "Threat feed updated",
            "information",
            feed,
            format!("count={count}"),
            format!("External resource {feed} updated, {count} entries"),
        ),
        FeedEvent::Loaded { feed, count } => (
            "0100022222",
            "Threat feed loaded",
            "information",
            feed,
            format!("count={count}"),
            format!("External resource {feed} loaded with {count} entries"),
        ),
        FeedEvent::Overflow { feed, count, dropped, limit } => (
            "0100022224",
            "Threat feed overflow",
            "warning",
            feed,
            format!("count={count} dropped={dropped} limit={limit}"),
            format!("External resource {feed} exceeded the limit of {limit} entries, {dropped} entries dropped"),
        ),
    };
    // local7 (23) * 8 + severity; information = 6, warning = 4.
    let pri = 23 * 8 + if level == "warning" { 4 } else { 6 };
    let secs = at_nanos.div_euclid(1_000_000_000);
    let when = chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default();
    format!(
        "<{pri}>date={} time={} devname={} devid={} eventtime={at_nanos} tz=\"+0000\" logid=\"{logid}\" \
         type=\"event\" subtype=\"system\" level=\"{level}\" vd={} logdesc=\"{logdesc}\" name={} {fields} msg={}",
        when.format("%Y-%m-%d"),
        when.format("%H:%M:%S"),
        quote(device.devname),
        quote(device.devid),
        quote(device.vdom),
        quote(feed),
        quote(&msg),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_feed_body_is_one_entry_per_line_without_comments_or_blank_lines() {
        let body =
            "# fortimisp feed\r\n198.51.100.7\r\n\r\n  203.0.113.0/24  \n#198.51.100.8\n2001:db8::1\nnot-an-ip\n";
        assert_eq!(parse_body(body), strings(&["198.51.100.7", "203.0.113.0/24", "2001:db8::1", "not-an-ip"]));
        assert!(parse_body("").is_empty());
        assert!(parse_body("# only a comment\n\n").is_empty());
    }

    #[test]
    fn entries_are_addresses_ranges_or_cidrs() {
        let cases = [
            ("198.51.100.7", true),
            ("2001:db8::1", true),
            ("203.0.113.0/24", true),
            ("172.200.1.4/16", true),
            ("2001:0db8::eade:27ff:fe04:9a01/120", true),
            ("172.16.8.1-172.16.8.100", true),
            ("2001:db8::1-2001:db8::ff", true),
            ("172.16.8.100-172.16.8.1", false),
            ("172.16.8.1-2001:db8::1", false),
            ("203.0.113.0/33", false),
            ("198.51.100.7 # note", false),
            ("example.com", false),
            ("", false),
        ];
        for (entry, valid) in cases {
            assert_eq!(is_valid_entry(entry), valid, "{entry:?}");
        }
    }

    #[test]
    fn a_load_keeps_the_first_entries_up_to_the_limit_in_file_order() {
        let mut list = FeedList::default();
        let change = list.load(strings(&["a", "198.51.100.1", "198.51.100.2", "198.51.100.3"]), 3);
        assert_eq!(list.entries(), strings(&["a", "198.51.100.1", "198.51.100.2"]).as_slice());
        assert_eq!(change, Change { changed: true, dropped: 1 });
        assert_eq!((list.valid_count(), list.invalid_count(), list.dropped()), (2, 1, 1));
        // The same file again: nothing changed, still over the limit.
        let again = list.load(strings(&["a", "198.51.100.1", "198.51.100.2", "198.51.100.3"]), 3);
        assert_eq!(again, Change { changed: false, dropped: 1 });
        // A smaller file under the limit clears the overflow.
        let smaller = list.load(strings(&["198.51.100.1"]), 3);
        assert_eq!(smaller, Change { changed: true, dropped: 0 });
        assert_eq!(list.dropped(), 0);
    }

    #[test]
    fn push_commands_are_set_operations() {
        let mut list = FeedList::default();
        let c = list.apply(PushOp::Add, &strings(&["198.51.100.7", "203.0.113.0/24", "198.51.100.7"]), 10);
        assert_eq!(list.entries(), strings(&["198.51.100.7", "203.0.113.0/24"]).as_slice());
        assert_eq!(c, Change { changed: true, dropped: 0 });
        // Adding what is held changes nothing.
        assert_eq!(list.apply(PushOp::Add, &strings(&["198.51.100.7"]), 10), Change { changed: false, dropped: 0 });
        // Removing an absent entry is fine; removing a held one removes only it.
        assert!(!list.apply(PushOp::Remove, &strings(&["192.0.2.1"]), 10).changed);
        assert!(list.apply(PushOp::Remove, &strings(&["198.51.100.7", "192.0.2.1"]), 10).changed);
        assert_eq!(list.entries(), strings(&["203.0.113.0/24"]).as_slice());
        // A snapshot replaces the whole list.
        list.apply(PushOp::Snapshot, &strings(&["2001:db8::1", "bogus", "2001:db8::1"]), 10);
        assert_eq!(list.entries(), strings(&["2001:db8::1", "bogus"]).as_slice());
        assert_eq!((list.valid_count(), list.invalid_count()), (1, 1));
        // An empty snapshot empties it.
        list.apply(PushOp::Snapshot, &[], 10);
        assert!(list.entries().is_empty());
    }

    #[test]
    fn a_push_beyond_the_limit_drops_the_newest_entries() {
        let mut list = FeedList::default();
        list.apply(PushOp::Add, &strings(&["192.0.2.1", "192.0.2.2"]), 3);
        let c = list.apply(PushOp::Add, &strings(&["192.0.2.3", "192.0.2.4", "192.0.2.5"]), 3);
        assert_eq!(c, Change { changed: true, dropped: 2 });
        assert_eq!(list.entries(), strings(&["192.0.2.1", "192.0.2.2", "192.0.2.3"]).as_slice());
    }

    #[test]
    fn the_entry_list_status_reports_counts_overflow_and_entries() {
        let mut state = FeedState::default();
        state.list.load(strings(&["198.51.100.7", "bogus", "192.0.2.1"]), 2);
        state.file_status = FileStatus::Downloaded;
        state.last_content_update = 1_700_000_000;
        let full = state.entry_list(2, false);
        assert_eq!(full["valid_count"], 1);
        assert_eq!(full["invalid_count"], 1);
        assert_eq!(full["overflow"], true);
        assert_eq!(full["limit"], 2);
        assert_eq!(full["resource_file_status"], "downloaded");
        assert_eq!(full["last_content_update_time"], 1_700_000_000);
        assert_eq!(
            full["entries"],
            json!([{"entry": "198.51.100.7", "valid": true}, {"entry": "bogus", "valid": false}])
        );
        assert!(state.entry_list(2, true).get("entries").is_none());
        assert_eq!(FeedState::default().entry_list(5, true)["resource_file_status"], "not-fetched");
    }

    #[test]
    fn a_failed_fetch_keeps_the_last_list_in_force() {
        let mut state = FeedState::default();
        let file = |body: &str| Fetched::File { body: body.into(), etag: Some("\"v1\"".into()), last_modified: None };
        let events = state.fetched("f", file("198.51.100.7\n198.51.100.8\n"), 10, 100);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(
            (state.fetches, state.conn_attempt, state.last_content_update, state.http_status),
            (1, 100, 100, 200)
        );
        assert_eq!(state.etag.as_deref(), Some("\"v1\""));
        let failed = Fetched::Failed { status: Some(401), error: "401 Unauthorized".into() };
        assert!(state.fetched("f", failed, 10, 200).is_empty());
        assert_eq!(state.list.entries(), strings(&["198.51.100.7", "198.51.100.8"]).as_slice());
        assert_eq!(state.file_status, FileStatus::FetchFailed);
        assert_eq!(
            (state.fetches, state.conn_attempt, state.last_content_update, state.http_status),
            (2, 200, 100, 401)
        );
        assert_eq!(state.last_error.as_deref(), Some("401 Unauthorized"));
        assert!(state.fetched("f", Fetched::NotModified, 10, 300).is_empty());
        assert_eq!(
            (state.file_status, state.http_status, state.last_error.clone()),
            (FileStatus::Downloaded, 304, None)
        );
        assert_eq!(state.last_content_update, 100);
    }

    #[test]
    fn a_push_updates_the_list_and_its_time_only_when_it_changes_it() {
        let mut state = FeedState::default();
        let events = state.pushed("f", PushOp::Add, &strings(&["192.0.2.1"]), 10, 50);
        assert_eq!(events, [FeedEvent::Updated { feed: "f".into(), count: 1 }]);
        assert_eq!(state.last_content_update, 50);
        assert!(state.pushed("f", PushOp::Add, &strings(&["192.0.2.1"]), 10, 60).is_empty());
        assert_eq!(state.last_content_update, 50);
        assert_eq!(state.file_status, FileStatus::NotFetched);
    }

    #[test]
    fn events_follow_the_change() {
        let changed = Change { changed: true, dropped: 0 };
        let kinds = |events: Vec<FeedEvent>| -> Vec<&'static str> {
            events
                .iter()
                .map(|e| match e {
                    FeedEvent::Updated { .. } => "updated",
                    FeedEvent::Loaded { .. } => "loaded",
                    FeedEvent::Overflow { .. } => "overflow",
                })
                .collect()
        };
        assert_eq!(kinds(events_for("f", changed, 1, 5, true)), ["updated", "loaded"]);
        assert_eq!(kinds(events_for("f", Change { changed: false, dropped: 0 }, 1, 5, true)), ["loaded"]);
        assert_eq!(kinds(events_for("f", Change { changed: false, dropped: 2 }, 5, 5, true)), ["loaded", "overflow"]);
        assert_eq!(kinds(events_for("f", changed, 1, 5, false)), ["updated"]);
        assert!(events_for("f", Change { changed: false, dropped: 0 }, 1, 5, false).is_empty());
    }

    #[test]
    fn an_event_line_is_fortios_default_format() {
        let device = Device { devname: "fortigate-emulator", devid: "FGVMEVEMULATOR01", vdom: "root" };
        let event = FeedEvent::Overflow { feed: "misp-block".into(), count: 3, dropped: 2, limit: 3 };
        let line = event_line(&event, &device, 1_796_292_000_123_456_789);
        assert_eq!(
            line,
            "<188>date=2026-12-03 time=10:00:00 devname=\"fortigate-emulator\" devid=\"FGVMEVEMULATOR01\" \
             eventtime=1796292000123456789 tz=\"+0000\" logid=\"0100022224\" type=\"event\" subtype=\"system\" \
             level=\"warning\" vd=\"root\" logdesc=\"Threat feed overflow\" name=\"misp-block\" count=3 dropped=2 \
             limit=3 msg=\"External resource misp-block exceeded the limit of 3 entries, 2 entries dropped\""
        );
        let loaded = event_line(&FeedEvent::Loaded { feed: "f".into(), count: 7 }, &device, 0);
        assert!(loaded.starts_with("<190>date=1970-01-01 time=00:00:00 "), "{loaded}");
        assert!(loaded.contains(" logid=\"0100022222\" ") && loaded.contains(" count=7 "), "{loaded}");
    }
}
