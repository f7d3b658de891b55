//! The FortiGate's threat-feed events on the syslog stream (type=event subtype=system): logid 0100022220
//! (updated), 0100022222 (loaded), 0100022224 (overflow: entries beyond the limit were dropped).

use crate::syslog::LogRecord;

/// Which feed event a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Updated,
    Loaded,
    Overflow,
}

/// One feed event, read defensively: real field names are not documented, so every field but the kind may be
/// missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEvent {
    pub kind: EventKind,
    /// The external-resource name.
    pub feed: Option<String>,
    /// Entries loaded.
    pub count: Option<u64>,
    /// Entries dropped beyond the limit.
    pub dropped: Option<u64>,
    pub limit: Option<u64>,
}

/// The feed event `record` carries, if it is one. Cheap for every other line (one logid comparison).
///
/// The logid may be written in full (`0100022220`) or as the 5-digit message id (`22220`). The feed name is read
/// from `name` (what the emulator sends), else `cfgobj`, `resource`, `extname` (real field names are not
/// documented); numbers that do not parse are `None`.
pub fn of(record: &LogRecord<'_>) -> Option<FeedEvent> {
    let logid = record.logid()?;
    let kind = match logid.strip_prefix("01000").unwrap_or(logid) {
        "22220" => EventKind::Updated,
        "22222" => EventKind::Loaded,
        "22224" => EventKind::Overflow,
        _ => return None,
    };
    let feed = ["name", "cfgobj", "resource", "extname"]
        .iter()
        .find_map(|key| record.get(key).map(str::trim).filter(|v| !v.is_empty()))
        .map(str::to_string);
    let number = |key: &str| record.get(key).and_then(|v| v.trim().parse::<u64>().ok());
    Some(FeedEvent { kind, feed, count: number("count"), dropped: number("dropped"), limit: number("limit") })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syslog::parse;

    /// The line the FortiGate emulator sends.
    const OVERFLOW: &str = concat!(
        r#"<189>date=2026-12-03 time=10:00:00 devname="FGT-EMU" devid="FGVMEVEMULATOR01" "#,
        r#"eventtime=1764756000000000000 tz="+0000" logid="0100022224" type="event" subtype="system" "#,
        r#"level="warning" vd="root" logdesc="Threat feed overflow" name="fortimisp-block" count=50000 dropped=12 "#,
        r#"limit=50000 msg="External resource fortimisp-block: 12 entries beyond the limit were dropped""#,
    );

    fn check(line: &str, expected: Option<FeedEvent>) {
        let record = parse(line.as_bytes()).expect("test lines parse");
        assert_eq!(of(&record), expected, "{line}");
    }

    fn event(
        kind: EventKind,
        feed: Option<&str>,
        count: Option<u64>,
        dropped: Option<u64>,
        limit: Option<u64>,
    ) -> FeedEvent {
        FeedEvent { kind, feed: feed.map(str::to_string), count, dropped, limit }
    }

    #[test]
    fn feed_events_are_read_defensively() {
        use EventKind::*;
        let cases: &[(&str, Option<FeedEvent>)] = &[
            (OVERFLOW, Some(event(Overflow, Some("fortimisp-block"), Some(50000), Some(12), Some(50000)))),
            (
                r#"logid="0100022220" type="event" subtype="system" name="fortimisp-block6" count=7"#,
                Some(event(Updated, Some("fortimisp-block6"), Some(7), None, None)),
            ),
            (r#"logid=0100022222 cfgobj="feed-2""#, Some(event(Loaded, Some("feed-2"), None, None, None))),
            (r#"logid=22224 resource=feed count=x"#, Some(event(Overflow, Some("feed"), None, None, None))),
            (r#"logid=22220 extname="feed" name="""#, Some(event(Updated, Some("feed"), None, None, None))),
            (r#"log_id=22222"#, Some(event(Loaded, None, None, None, None))),
            // Other lines.
            (r#"logid="0000000013" type="traffic" srcip=198.51.100.7"#, None),
            (r#"logid="0100022221" name="x""#, None),
            (r#"logid="0100122220" name="x""#, None),
            (r#"type="event" name="fortimisp-block""#, None),
        ];
        for (line, expected) in cases {
            check(line, expected.clone());
        }
    }
}
