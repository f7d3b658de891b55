//! [`parse`]: one framed message → [`LogRecord`]. Pure: no I/O, no clock, no allocation beyond the record's
//! field vector and the values that need unescaping.
//!
//! Steps: trim trailing `\r`, `\n`, `\0`; skip leading spaces; optional `<PRI>`; optional header (RFC 5424 after a
//! PRI when a version number follows; else a BSD timestamp `Mmm dd hh:mm:ss`, wazuh's `YYYY Mmm dd hh:mm:ss`, or a
//! relay's RFC 3339 timestamp, each followed by an optional host); then the body: `CEF:` or `<digit>|` → CEF, `{` →
//! JSON, else `key=value` (csv when the first value is followed by `,key=`).

use std::borrow::Cow;

use super::error::{ErrorKind, ParseError};
use super::record::{Format, Header, LogRecord, Pri};
use super::text::Text;
use super::{cef, json, kv};

/// Typical number of pairs on a FortiGate line; the field vector starts this large so it rarely regrows.
const TYPICAL_FIELDS: usize = 48;

/// Parses one message (already framed: a datagram, or one frame from [`FrameDecoder`](super::FrameDecoder)).
///
/// # Errors
/// A [`ParseError`] with the [`ErrorKind`] and the byte offset in `message`. Non-UTF-8 bytes are not an error
/// (see [`LogRecord::is_lossy`]).
pub fn parse(message: &[u8]) -> Result<LogRecord<'_>, ParseError> {
    let mut end = message.len();
    while end > 0 && matches!(message[end - 1], b'\n' | b'\r' | b'\0') {
        end -= 1;
    }
    let b = &message[..end];
    let text = Text::new(b);
    let mut pos = skip_spaces(b, 0);
    if pos == b.len() {
        return Err(ParseError::new(ErrorKind::Empty, 0));
    }

    let pri = if b[pos] == b'<' {
        let (pri, next) = parse_pri(b, pos)?;
        pos = next;
        Some(pri)
    } else {
        None
    };

    let (header, body) = if pri.is_some() && starts_version(b, pos) {
        rfc5424(text, pos)?
    } else if let Some((header, body)) = rfc3164(text, pos) {
        (header, body)
    } else {
        (Header::None, pos)
    };
    let pos = skip_spaces(b, body);
    if pos == b.len() {
        return Err(ParseError::new(ErrorKind::Truncated, pos));
    }

    let header_format = match header {
        Header::None => Format::Default,
        Header::Rfc3164 { .. } => Format::Rfc3164,
        Header::Rfc5424 { .. } => Format::Rfc5424,
    };
    let rest = &b[pos..];
    let mut rec;
    if rest.starts_with(b"CEF:") || cef_version_pipe(rest) {
        rec = LogRecord::new(Format::Cef, pri, header, TYPICAL_FIELDS);
        let at = if rest.starts_with(b"CEF:") { pos + 4 } else { pos };
        cef::parse(text, at, &mut rec)?;
    } else if rest[0] == b'{' {
        rec = LogRecord::new(Format::Json, pri, header, TYPICAL_FIELDS);
        json::parse(text, pos, &mut rec)?;
        require_fortigate(&rec, pos)?;
    } else if kv::looks_like_csv(b, pos) {
        rec = LogRecord::new(Format::Csv, pri, header, TYPICAL_FIELDS);
        kv::parse_pairs(text, pos, b',', &mut rec);
        require_fortigate(&rec, pos)?;
    } else {
        rec = LogRecord::new(header_format, pri, header, TYPICAL_FIELDS);
        kv::parse_pairs(text, pos, b' ', &mut rec);
        require_fortigate(&rec, pos)?;
    }
    rec.lossy = text.is_lossy();
    Ok(rec)
}

/// A body is FortiGate's if it carries at least one key that FortiGate logs always use.
fn require_fortigate(rec: &LogRecord<'_>, body: usize) -> Result<(), ParseError> {
    if rec.marker || rec.hot.iter().any(|&i| i != u16::MAX) {
        Ok(())
    } else {
        Err(ParseError::new(ErrorKind::NotFortiGate, body))
    }
}

fn skip_spaces(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t') {
        i += 1;
    }
    i
}

/// `<PRI>` at `pos` (which holds `<`): 1-3 digits, no leading zero unless `<0>`, at most 191.
fn parse_pri(b: &[u8], pos: usize) -> Result<(Pri, usize), ParseError> {
    let mut i = pos + 1;
    let mut value: u32 = 0;
    while i < b.len() && b[i].is_ascii_digit() && i - pos <= 3 {
        value = value * 10 + u32::from(b[i] - b'0');
        i += 1;
    }
    let digits = i - pos - 1;
    if i >= b.len() {
        return Err(ParseError::new(ErrorKind::Truncated, i));
    }
    if digits == 0 || b[i] != b'>' || (digits > 1 && b[pos + 1] == b'0') {
        return Err(ParseError::new(ErrorKind::BadPri, i));
    }
    let pri = u8::try_from(value)
        .ok()
        .and_then(Pri::from_value)
        .ok_or(ParseError::new(ErrorKind::BadPri, pos + 1))?;
    Ok((pri, i + 1))
}

/// An RFC 5424 VERSION (1-3 digits, not starting with 0) followed by a space.
fn starts_version(b: &[u8], pos: usize) -> bool {
    let digits = b[pos.min(b.len())..]
        .iter()
        .take_while(|c| c.is_ascii_digit())
        .count();
    (1..=3).contains(&digits) && b[pos] != b'0' && b.get(pos + digits) == Some(&b' ')
}

/// `0|` (a CEF version then `|`): CEF whose `CEF:` marker was cut off upstream.
fn cef_version_pipe(rest: &[u8]) -> bool {
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    (1..=2).contains(&digits) && rest.get(digits) == Some(&b'|')
}

/// Reads one space-terminated header token starting at `pos`; `Truncated` if the message ends first.
fn token(b: &[u8], pos: usize) -> Result<(usize, usize), ParseError> {
    match memchr::memchr(b' ', &b[pos.min(b.len())..]) {
        Some(off) if off > 0 => Ok((pos, pos + off)),
        Some(_) => Err(ParseError::new(ErrorKind::BadHeader, pos)),
        None => Err(ParseError::new(ErrorKind::Truncated, b.len())),
    }
}

fn nil_or<'a>(text: Text<'a>, (s, e): (usize, usize)) -> Option<Cow<'a, str>> {
    (text.bytes.get(s..e) != Some(b"-")).then(|| text.cow(s, e))
}

/// `VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP SD [SP MSG]`.
fn rfc5424(text: Text<'_>, pos: usize) -> Result<(Header<'_>, usize), ParseError> {
    let b = text.bytes;
    let (vs, ve) = token(b, pos)?;
    let version = b[vs..ve]
        .iter()
        .fold(0u16, |v, d| v * 10 + u16::from(d - b'0'));
    let mut spans = [(0usize, 0usize); 5];
    let mut i = ve + 1;
    for span in spans.iter_mut() {
        *span = token(b, i)?;
        i = span.1 + 1;
    }
    // STRUCTURED-DATA: "-" or one or more [...] elements; `"`-quoted param values may hold `]` and `\"`.
    let sd_start = i;
    if i >= b.len() {
        return Err(ParseError::new(ErrorKind::Truncated, i));
    }
    if b[i] == b'-' {
        i += 1;
    } else if b[i] == b'[' {
        while i < b.len() && b[i] == b'[' {
            let mut in_quotes = false;
            i += 1;
            loop {
                let Some(&c) = b.get(i) else {
                    return Err(ParseError::new(ErrorKind::Truncated, i));
                };
                match c {
                    b'\\' if in_quotes => i += 1,
                    b'"' => in_quotes = !in_quotes,
                    b']' if !in_quotes => break,
                    _ => {}
                }
                i += 1;
            }
            i += 1;
        }
    } else {
        return Err(ParseError::new(ErrorKind::BadHeader, i));
    }
    let sd = (sd_start, i.min(b.len()));
    if i < b.len() && b[i] != b' ' {
        return Err(ParseError::new(ErrorKind::BadHeader, i));
    }
    let mut body = (i + 1).min(b.len());
    if b[body..].starts_with(b"\xEF\xBB\xBF") {
        body += 3;
    }
    let header = Header::Rfc5424 {
        version,
        timestamp: nil_or(text, spans[0]),
        hostname: nil_or(text, spans[1]),
        app_name: nil_or(text, spans[2]),
        procid: nil_or(text, spans[3]),
        msgid: nil_or(text, spans[4]),
        structured_data: nil_or(text, sd),
    };
    Ok((header, body))
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

fn digits(b: &[u8], pos: usize, count: usize) -> bool {
    b.get(pos..pos + count)
        .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
}

/// `Mmm dd hh:mm:ss` (day as `d`, ` d` or `dd`) at `pos`; returns the end.
fn bsd_timestamp(b: &[u8], pos: usize) -> Option<usize> {
    let month = b.get(pos..pos + 3)?;
    if !MONTHS.iter().any(|m| &m[..] == month) || b.get(pos + 3) != Some(&b' ') {
        return None;
    }
    let mut i = pos + 4;
    if b.get(i) == Some(&b' ') {
        i += 1;
    }
    let day = b[i.min(b.len())..]
        .iter()
        .take_while(|c| c.is_ascii_digit())
        .count();
    if !(1..=2).contains(&day) || b.get(i + day) != Some(&b' ') {
        return None;
    }
    i += day + 1;
    let ok = digits(b, i, 2)
        && b.get(i + 2) == Some(&b':')
        && digits(b, i + 3, 2)
        && b.get(i + 5) == Some(&b':')
        && digits(b, i + 6, 2);
    ok.then_some(i + 8)
}

/// `YYYY-MM-DDT...` up to the next space (a relay's RFC 3339 timestamp); returns the end.
fn rfc3339_timestamp(b: &[u8], pos: usize) -> Option<usize> {
    let ok = digits(b, pos, 4)
        && b.get(pos + 4) == Some(&b'-')
        && digits(b, pos + 5, 2)
        && b.get(pos + 7) == Some(&b'-')
        && digits(b, pos + 8, 2)
        && b.get(pos + 10) == Some(&b'T');
    if !ok {
        return None;
    }
    Some(memchr::memchr(b' ', &b[pos..]).map_or(b.len(), |off| pos + off))
}

/// A token that starts the body rather than naming a host.
fn starts_body(token: &[u8]) -> bool {
    token.contains(&b'=') || token.starts_with(b"CEF:") || token.starts_with(b"{") || cef_version_pipe(token)
}

/// A BSD-style header (see module docs). `None` if there is none at `pos`.
fn rfc3164(text: Text<'_>, pos: usize) -> Option<(Header<'_>, usize)> {
    let b = text.bytes;
    let ts_end = if digits(b, pos, 4) && b.get(pos + 4) == Some(&b' ') {
        bsd_timestamp(b, pos + 5)?
    } else {
        bsd_timestamp(b, pos).or_else(|| rfc3339_timestamp(b, pos))?
    };
    let timestamp = text.cow(pos, ts_end);
    let host_start = skip_spaces(b, ts_end);
    let host_end = memchr::memchr(b' ', &b[host_start..]).map_or(b.len(), |off| host_start + off);
    let host = &b[host_start..host_end];
    if host.is_empty() || starts_body(host) {
        return Some((Header::Rfc3164 { timestamp, hostname: None }, host_start));
    }
    let hostname = Some(text.cow(host_start, host_end));
    Some((Header::Rfc3164 { timestamp, hostname }, host_end))
}
