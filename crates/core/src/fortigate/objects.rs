//! What fortimisp writes on the FortiGate, as types: [`ObjectName`] (prefix + IP, never a `/`) and [`Comment`] (the
//! `fortimisp <RFC 3339 UTC> misp-event=<id> …` ownership marker), and the reading of any comment found on the box
//! into a [`CommentKind`]. Pure, no I/O.
//!
//! This module is also the one place that decides what a FortiOS text field may hold
//! (`/work/shared/reference/fortios-rest.md` §4 and §6c): [`MAX_NAME_LEN`], [`MAX_PREFIX_LEN`],
//! [`MAX_GROUP_NAME_LEN`], [`MAX_COMMENT_LEN`] and [`is_refused`]. Config validation calls [`check_prefix`] and
//! [`check_group_name`], so a config that validates always yields valid [`ObjectName`]s. Names with a refused
//! character are refused ([`Error::InvalidName`]); in comments, which carry MISP data and the operator's
//! `--comment`, each refused character is replaced by `_` ([`Comment::new`]).
//!
//! Ownership rule (contract.md): an object is ours iff its comment starts with `fortimisp ` followed by a valid
//! RFC 3339 time. The placeholder objects carry `fortimisp placeholder`, which is deliberately *not* a marker, so
//! housekeeping can never prune them.

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};

use super::Error;

/// FortiOS name length we stay under: addrgrp `name` is 63 on 6.0 (newer builds allow 79 for addresses), and
/// names are one namespace across addresses and groups.
pub const MAX_NAME_LEN: usize = 63;
/// FortiOS `comment` size.
pub const MAX_COMMENT_LEN: usize = 255;
/// The longest IP address text (`ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff`).
pub const MAX_IP_TEXT_LEN: usize = 39;
/// Longest `object_prefix`: prefix + the longest IP address fits in [`MAX_NAME_LEN`].
pub const MAX_PREFIX_LEN: usize = MAX_NAME_LEN - MAX_IP_TEXT_LEN;
/// Longest `block_group` / `block_group6`: the group plus its last overflow suffix (`-201`, see
/// [`super::MAX_OVERFLOW_GROUPS`]) fits in [`MAX_NAME_LEN`].
pub const MAX_GROUP_NAME_LEN: usize = MAX_NAME_LEN - OVERFLOW_SUFFIX_LEN;
/// `-` and the digits of the highest overflow number, `MAX_OVERFLOW_GROUPS + 1`.
const OVERFLOW_SUFFIX_LEN: usize = 1 + digits(super::MAX_OVERFLOW_GROUPS + 1);
/// The characters FortiOS refuses in the text of names and comments (fortios-rest.md §6c: `"` `'` `<` `>`, and
/// `&` `#` `(` `)` in some releases), plus the backslash; control characters are refused too ([`is_refused`]).
pub const REFUSED_CHARS: &[char] = &['"', '\'', '<', '>', '&', '#', '(', ')', '\\'];
/// The marker prefix; a comment is ours if this is followed by an RFC 3339 time.
pub const MARKER: &str = "fortimisp ";
/// Comment of the placeholder members (see [`super`] docs); never parsed as ours.
pub const PLACEHOLDER_COMMENT: &str = "fortimisp placeholder";
/// How the comment of `integration validate`'s probe object starts; never parsed as ours.
pub const PROBE_COMMENT: &str = "fortimisp validate probe";

const fn digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Whether FortiOS refuses `c` in a name or comment: one of [`REFUSED_CHARS`] or a control character.
pub fn is_refused(c: char) -> bool {
    c.is_control() || REFUSED_CHARS.contains(&c)
}

/// What is wrong with a name, by the rules of every name fortimisp writes: empty, `/`, a refused character, or
/// longer than `max` characters (then `too_long` is the reason).
fn name_problem(name: &str, max: usize, too_long: &'static str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.contains('/') {
        Some("contains '/'")
    } else if name.chars().any(is_refused) {
        Some("contains a character FortiOS refuses (quotes, < > & # ( ), backslash or a control character)")
    } else if name.chars().count() > max {
        Some(too_long)
    } else {
        None
    }
}

/// Checks an `object_prefix`: every `prefix + IP` (and the placeholders) is then a valid [`ObjectName`]. An empty
/// prefix passes here; whether one is allowed is the caller's rule.
///
/// # Errors
/// [`Error::InvalidName`] naming the rule broken.
pub fn check_prefix(prefix: &str) -> Result<(), Error> {
    match name_problem(
        prefix,
        MAX_PREFIX_LEN,
        "longer than 24 characters (prefix + the longest IPv6 address must fit in 63)",
    ) {
        Some("empty") | None => Ok(()),
        Some(reason) => Err(Error::InvalidName { name: prefix.to_string(), reason }),
    }
}

/// Checks a `block_group` / `block_group6`: the group and each of its overflow groups are then valid names.
///
/// # Errors
/// [`Error::InvalidName`] naming the rule broken.
pub fn check_group_name(name: &str) -> Result<(), Error> {
    match name_problem(
        name,
        MAX_GROUP_NAME_LEN,
        "longer than 59 characters (the group + its overflow suffix -201 must fit in 63)",
    ) {
        Some(reason) => Err(Error::InvalidName { name: name.to_string(), reason }),
        None => Ok(()),
    }
}

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
    /// [`Error::InvalidName`] if the prefix holds a `/` or a refused character, or the result is too long.
    pub fn for_ip(prefix: &str, ip: IpAddr) -> Result<ObjectName, Error> {
        ObjectName::parse(&format!("{prefix}{ip}"))
    }

    /// Validates any name by the same rules (non-empty, no `/`, no refused character, ≤ 63 chars).
    ///
    /// # Errors
    /// [`Error::InvalidName`] naming the rule broken.
    pub fn parse(name: &str) -> Result<ObjectName, Error> {
        match name_problem(name, MAX_NAME_LEN, "longer than 63 characters") {
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
/// at most 255 chars), cut on a char boundary, control characters replaced by spaces and the other refused
/// characters ([`REFUSED_CHARS`]) by `_`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment(String);

impl Comment {
    /// Builds the marker. `more` is free text (attribute uuid, reason, an operator's `--comment` …); it is what
    /// gets truncated. Refused characters are replaced, never refused: the text comes from MISP and operators.
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
        let mut s: String = s
            .chars()
            .map(|c| match c {
                c if c.is_control() => ' ',
                c if is_refused(c) => '_',
                c => c,
            })
            .collect();
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

    /// The comment of `integration validate`'s probe object: says what it is and that it may be deleted. Not a
    /// marker (the word after `fortimisp ` is not a time), so housekeeping and `list` never take it for a block.
    pub(crate) fn probe(created_at: DateTime<Utc>) -> Comment {
        Comment(format!(
            "{PROBE_COMMENT} {}: created and deleted by integration validate, safe to delete",
            created_at.to_rfc3339_opts(SecondsFormat::Secs, true)
        ))
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

    /// Refused characters: replaced in comments (whatever the source), refused in names.
    #[test]
    fn refused_characters() {
        let c = Comment::new(t0(), "7 (x)", r#"say "hi" <b> & 'you' #1 (a\b)"#);
        assert_eq!(c.as_str(), "fortimisp 2025-01-02T03:04:05Z misp-event=7__x_ say _hi_ _b_ _ _you_ _1 _a_b_");
        assert!(!c.as_str().contains(REFUSED_CHARS));
        assert!(Comment::parse(c.as_str()).is_ours());
        for ch in REFUSED_CHARS {
            let name = format!("misp{ch}");
            assert!(matches!(ObjectName::parse(&name), Err(Error::InvalidName { .. })), "{name:?}");
            assert!(check_prefix(&name).is_err() && check_group_name(&name).is_err(), "{name:?}");
        }
        assert!(check_prefix("").is_ok());
        assert!(check_group_name("").is_err());
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
        let probe = Comment::probe(legacy);
        assert!(probe.as_str().starts_with(PROBE_COMMENT) && probe.as_str().contains("safe to delete"));
        assert!(!probe.as_str().contains(REFUSED_CHARS) && probe.as_str().len() <= MAX_COMMENT_LEN);
        assert_eq!(Comment::parse(probe.as_str()), CommentKind::Foreign, "a probe is never taken for a block");
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
