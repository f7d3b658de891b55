//! What fortimisp writes on the FortiGate, as types: [`ObjectName`] (prefix + IP, never a `/`) and [`Comment`] (the
//! `fortimisp <RFC 3339 UTC> misp-event=<id> …` ownership marker), and the reading of any comment found on the box
//! into a [`CommentKind`]. Pure, no I/O.
//!
//! Ownership rule (contract.md): an object is ours iff its comment starts with `fortimisp ` followed by a valid
//! RFC 3339 time. The placeholder objects carry `fortimisp placeholder`, which is deliberately *not* a marker, so
//! housekeeping can never prune them.

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};

use super::Error;

/// FortiOS name length we stay under (6.0 addrgrp `name` size 63; newer builds allow 79).
pub const MAX_NAME_LEN: usize = 63;
/// FortiOS `comment` size.
pub const MAX_COMMENT_LEN: usize = 255;
/// The marker prefix; a comment is ours if this is followed by an RFC 3339 time.
pub const MARKER: &str = "fortimisp ";
/// Comment of the placeholder members (see [`super`] docs); never parsed as ours.
pub const PLACEHOLDER_COMMENT: &str = "fortimisp placeholder";

/// Address family: which tables and which block group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// The name of an address object fortimisp creates: `object_prefix + IP` (`misp-198.51.100.7`,
/// `misp-2001:db8::7`). Never contains `/` (a `/` breaks mkey paths on some builds), at most [`MAX_NAME_LEN`] chars.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectName(String);

impl ObjectName {
    /// `prefix + ip` in canonical form (IPv6 compressed, as `Ipv6Addr` prints it).
    ///
    /// # Errors
    /// [`Error::InvalidName`] if the prefix holds a `/` or a control character, or the result is too long.
    pub fn for_ip(prefix: &str, ip: IpAddr) -> Result<ObjectName, Error> {
        ObjectName::parse(&format!("{prefix}{ip}"))
    }

    /// Validates any name by the same rules (non-empty, no `/`, no control character, ≤ 63 chars).
    ///
    /// # Errors
    /// [`Error::InvalidName`] naming the rule broken.
    pub fn parse(name: &str) -> Result<ObjectName, Error> {
        let reason = if name.is_empty() {
            Some("empty")
        } else if name.contains('/') {
            Some("contains '/'")
        } else if name.chars().any(char::is_control) {
            Some("contains a control character")
        } else if name.chars().count() > MAX_NAME_LEN {
            Some("longer than 63 characters")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidName { name: name.to_string(), reason }),
            None => Ok(ObjectName(name.to_string())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, not `write_str`: column widths (`{:<48}` in `integration list`) apply.
        f.pad(&self.0)
    }
}

/// The comment fortimisp writes: `fortimisp <RFC 3339 UTC> misp-event=<id>[ more]`, at most 255 bytes (so also
/// at most 255 chars), cut on a char boundary, control characters replaced by spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment(String);

impl Comment {
    /// Builds the marker. `more` is free text (attribute uuid, reason, `manual` …); it is what gets truncated.
    pub fn new(created_at: DateTime<Utc>, event_id: &str, more: &str) -> Comment {
        let mut s = format!(
            "{MARKER}{} misp-event={}",
            created_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            event_id.replace(char::is_whitespace, "_")
        );
        if !more.is_empty() {
            s.push(' ');
            s.push_str(more);
        }
        let mut s: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        if s.len() > MAX_COMMENT_LEN {
            let mut cut = MAX_COMMENT_LEN;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
        }
        Comment(s)
    }

    /// The comment of the placeholder members (not a marker: never pruned).
    pub(crate) fn placeholder() -> Comment {
        Comment(PLACEHOLDER_COMMENT.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Reads any comment found on the box.
    pub fn parse(comment: &str) -> CommentKind {
        parse_comment(comment)
    }
}

impl fmt::Display for Comment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What fortimisp's marker says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub created_at: DateTime<Utc>,
    /// `misp-event=<id>` if present.
    pub event_id: Option<String>,
    /// Everything after the time and the event id.
    pub rest: String,
}

/// A comment as found on the FortiGate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommentKind {
    /// Our marker: the object is fortimisp's.
    Ours(Marker),
    /// `fortimisp placeholder`: ours, but never pruned.
    Placeholder,
    /// The earlier Python service's bare `%Y-%m-%d %H:%M:%S.%f` timestamp (read as UTC).
    Legacy { created_at: DateTime<Utc> },
    /// Anything else: not ours, never touched.
    Foreign,
}

impl CommentKind {
    pub fn is_ours(&self) -> bool {
        matches!(self, CommentKind::Ours(_))
    }
}

fn parse_comment(comment: &str) -> CommentKind {
    if comment == PLACEHOLDER_COMMENT {
        return CommentKind::Placeholder;
    }
    if let Some(rest) = comment.strip_prefix(MARKER) {
        let (time, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        return match DateTime::parse_from_rfc3339(time) {
            Ok(t) => {
                let (event_id, rest) = match tail.strip_prefix("misp-event=") {
                    Some(after) => {
                        let (id, more) = after.split_once(' ').unwrap_or((after, ""));
                        (Some(id.to_string()), more.to_string())
                    }
                    None => (None, tail.to_string()),
                };
                CommentKind::Ours(Marker { created_at: t.with_timezone(&Utc), event_id, rest })
            }
            Err(_) => CommentKind::Foreign,
        };
    }
    let trimmed = comment.trim();
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M:%S"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(trimmed, f).ok())
        .map(|t| CommentKind::Legacy { created_at: t.and_utc() })
        .unwrap_or(CommentKind::Foreign)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).single().expect("valid time")
    }

    #[test]
    fn object_names() {
        let cases: [(&str, &str, Result<&str, &str>); 6] = [
            ("misp-", "198.51.100.7", Ok("misp-198.51.100.7")),
            ("misp-", "2001:db8::7", Ok("misp-2001:db8::7")),
            ("misp-", "2001:0db8:0000::0007", Ok("misp-2001:db8::7")),
            ("a/b-", "198.51.100.7", Err("contains '/'")),
            ("", "198.51.100.7", Ok("198.51.100.7")),
            (
                "a-very-long-prefix-that-pushes-us-over-",
                "2001:db8:1234:5678:9abc:def0:1234:5678",
                Err("longer than 63 characters"),
            ),
        ];
        for (prefix, ip, expected) in cases {
            let ip: IpAddr = ip.parse().expect("test ip");
            let got = ObjectName::for_ip(prefix, ip);
            match (got, expected) {
                (Ok(n), Ok(want)) => assert_eq!(n.as_str(), want),
                (Err(Error::InvalidName { reason, .. }), Err(want)) => assert_eq!(reason, want),
                (got, want) => panic!("{prefix}{ip}: got {got:?}, want {want:?}"),
            }
        }
        assert!(ObjectName::parse("").is_err());
        assert!(ObjectName::parse("198.51.100.7/32").is_err());
    }

    #[test]
    fn comments_build_and_parse_back() {
        let c = Comment::new(t0(), "1234", "attr=abc");
        assert_eq!(c.as_str(), "fortimisp 2025-01-02T03:04:05Z misp-event=1234 attr=abc");
        match Comment::parse(c.as_str()) {
            CommentKind::Ours(m) => {
                assert_eq!(m.created_at, t0());
                assert_eq!(m.event_id.as_deref(), Some("1234"));
                assert_eq!(m.rest, "attr=abc");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn long_comments_truncate_on_char_boundary() {
        let more = "é".repeat(300);
        let c = Comment::new(t0(), "9", &more);
        assert!(c.as_str().len() <= MAX_COMMENT_LEN);
        assert!(c.as_str().chars().count() <= MAX_COMMENT_LEN);
        assert!(Comment::parse(c.as_str()).is_ours());
        let c = Comment::new(t0(), "9", "line\nbreak\ttab");
        assert!(!c.as_str().contains('\n'));
    }

    #[test]
    fn comment_kinds() {
        let legacy = Utc.with_ymd_and_hms(2023, 5, 6, 7, 8, 9).single().expect("valid");
        let cases = [
            ("fortimisp 2025-01-02T03:04:05Z misp-event=1", true),
            ("fortimisp 2025-01-02T04:04:05+01:00", true),
            ("fortimisp placeholder", false),
            ("fortimisp yesterday", false),
            ("fortimisp", false),
            ("created by fortimisp 2025-01-02T03:04:05Z", false),
            ("", false),
        ];
        for (c, ours) in cases {
            assert_eq!(Comment::parse(c).is_ours(), ours, "{c:?}");
        }
        assert_eq!(Comment::parse("fortimisp placeholder"), CommentKind::Placeholder);
        assert_eq!(
            Comment::parse("2023-05-06 07:08:09.123456"),
            CommentKind::Legacy { created_at: legacy + chrono::Duration::microseconds(123_456) }
        );
        assert_eq!(Comment::parse("2023-05-06 07:08:09"), CommentKind::Legacy { created_at: legacy });
        assert_eq!(Comment::parse("2023-05-06"), CommentKind::Foreign);
        match Comment::parse("fortimisp 2025-01-02T03:04:05Z manual block") {
            CommentKind::Ours(m) => {
                assert_eq!(m.event_id, None);
                assert_eq!(m.rest, "manual block");
            }
            other => panic!("{other:?}"),
        }
    }
}
