//! CEF bodies: `CEF:0|Fortinet|Fortigate|<version>|<logid tail>|<type:subtype ...>|<severity>|<extension>`.
//!
//! The `CEF:` marker is optional (some collectors cut it off). The header is split on unescaped `|` (`\|`, `\\`
//! escapes); a vendor other than Fortinet is [`ErrorKind::NotFortiGate`]. In the extension a value runs up to the
//! space before the next `key=` (keys are `[A-Za-z0-9_.-]+`), so values may hold spaces; `\=`, `\\`, `\n`, `\r`
//! are unescaped and any other backslash is kept.
//!
//! Keys are renamed to FortiGate's own names (the contract's mapping): `src`→srcip, `dst`→dstip, `spt`→srcport,
//! `dpt`→dstport, `act`→action, `deviceExternalId`→devid, `dvchost`→devname, `deviceInboundInterface`→srcintf,
//! `deviceOutboundInterface`→dstintf, `externalId`→sessionid, `app`→service, `in`→rcvdbyte, `out`→sentbyte,
//! `sourceTranslatedAddress`→transip, `sourceTranslatedPort`→transport; `cat=type:subtype` becomes `type` and
//! `subtype`; the custom-key prefixes `FTNTFGT`, `FortinetFortiGate` and `ad.` are dropped (`FTNTFGTpolicyid` →
//! policyid). Other CEF keys (`msg`, `duser`, `cs1`, ...) keep their CEF names. The header's name field
//! (`traffic:forward close`) is not turned into fields: only `cat` gives type/subtype.

use std::borrow::Cow;

use memchr::{memchr, memchr2, memrchr};

use super::error::{ErrorKind, ParseError};
use super::record::{classify, CefHeader, LogRecord, Ref};
use super::text::Text;

/// Parses a CEF body starting at `start` (at the version digit, after any `CEF:` marker).
pub(crate) fn parse<'a>(text: Text<'a>, start: usize, rec: &mut LogRecord<'a>) -> Result<(), ParseError> {
    let b = rec.bytes;
    let n = b.len();
    let mut parts: [(usize, usize, bool); 7] = [(0, 0, false); 7];
    let mut i = start;
    for part in parts.iter_mut() {
        let field_start = i;
        let mut escaped = false;
        loop {
            let Some(off) = memchr2(b'|', b'\\', &b[i.min(n)..]) else {
                return Err(ParseError::new(ErrorKind::Truncated, n));
            };
            let k = i + off;
            if b[k] == b'|' {
                *part = (field_start, k, escaped);
                i = k + 1;
                break;
            }
            escaped = true;
            i = k + 2;
        }
    }
    let field = |(s, e, escaped): (usize, usize, bool)| -> Cow<'a, str> {
        if escaped {
            Text::owned(unescape(&b[s..e], b"|\\"))
        } else {
            text.cow(s, e)
        }
    };
    let header = CefHeader {
        version: field(parts[0]),
        vendor: field(parts[1]),
        product: field(parts[2]),
        device_version: field(parts[3]),
        signature_id: field(parts[4]),
        name: field(parts[5]),
        severity: field(parts[6]),
    };
    if !header.vendor.eq_ignore_ascii_case("fortinet") {
        return Err(ParseError::new(ErrorKind::NotFortiGate, parts[1].0));
    }
    rec.cef = Some(Box::new(header));
    parse_extension(rec, i);
    Ok(())
}

#[inline]
fn is_key_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-')
}

/// The first `=` at or after `from` that is not escaped by an odd number of backslashes.
fn unescaped_eq(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < b.len() {
        let k = i + memchr(b'=', &b[i..])?;
        let backslashes = b[..k].iter().rev().take_while(|&&c| c == b'\\').count();
        if backslashes % 2 == 0 {
            return Some(k);
        }
        i = k + 1;
    }
    None
}

fn parse_extension(rec: &mut LogRecord<'_>, start: usize) {
    let b = rec.bytes;
    let n = b.len();
    let mut key_start = start;
    while key_start < n && b[key_start] == b' ' {
        key_start += 1;
    }
    let Some(mut eq) = unescaped_eq(b, key_start) else {
        return;
    };
    // Junk before the first key (e.g. a stray word): keep only the last word as the key.
    if let Some(sp) = memrchr(b' ', &b[key_start..eq]) {
        rec.skipped += 1;
        key_start += sp + 1;
    }
    loop {
        let value_start = eq + 1;
        let mut search = value_start;
        let (mut value_end, next) = loop {
            let Some(e2) = unescaped_eq(b, search) else {
                break (n, None);
            };
            if let Some(off) = memrchr(b' ', &b[value_start..e2]) {
                let sp = value_start + off;
                if sp + 1 < e2 && b[sp + 1..e2].iter().all(|&c| is_key_byte(c)) {
                    break (sp, Some((sp + 1, e2)));
                }
            }
            search = e2 + 1;
        };
        while value_end > value_start && b[value_end - 1] == b' ' {
            value_end -= 1;
        }
        let raw = &b[value_start.min(value_end)..value_end];
        let value =
            if raw.contains(&b'\\') { rec.own_bytes(unescape_value(raw)) } else { rec.span(value_start, value_end) };
        push_mapped(rec, key_start, eq, value);
        match next {
            Some((ks, e2)) => {
                key_start = ks;
                eq = e2;
            }
            None => break,
        }
    }
}

/// Renames a CEF key and pushes the pair (`cat` becomes type + subtype).
fn push_mapped(rec: &mut LogRecord<'_>, key_start: usize, key_end: usize, value: Ref) {
    let raw = &rec.bytes[key_start..key_end];
    for prefix in [&b"FTNTFGT"[..], b"FortinetFortiGate", b"ad."] {
        if raw.len() > prefix.len() && raw.starts_with(prefix) {
            let key = rec.span(key_start + prefix.len(), key_end);
            rec.push(classify(&raw[prefix.len()..]), key, value);
            return;
        }
    }
    let mapped: &'static str = match raw {
        b"src" => "srcip",
        b"dst" => "dstip",
        b"spt" => "srcport",
        b"dpt" => "dstport",
        b"act" => "action",
        b"deviceExternalId" => "devid",
        b"dvchost" => "devname",
        b"deviceInboundInterface" => "srcintf",
        b"deviceOutboundInterface" => "dstintf",
        b"externalId" => "sessionid",
        b"app" => "service",
        b"in" => "rcvdbyte",
        b"out" => "sentbyte",
        b"sourceTranslatedAddress" => "transip",
        b"sourceTranslatedPort" => "transport",
        b"cat" => {
            // `type:subtype`; a `cat` without `:` is the type alone.
            let (log_type, subtype) = match rec.split_span(value, b':') {
                Some((t, s)) => (t, Some(s)),
                None => match rec.text_of(value).split_once(':') {
                    Some((t, s)) => {
                        let (t, s) = (t.to_owned(), s.to_owned());
                        (rec.own(Cow::Owned(t)), Some(rec.own(Cow::Owned(s))))
                    }
                    None => (value, None),
                },
            };
            let key = rec.own(Cow::Borrowed("type"));
            rec.push(classify(b"type"), key, log_type);
            if let Some(subtype) = subtype {
                let key = rec.own(Cow::Borrowed("subtype"));
                rec.push(classify(b"subtype"), key, subtype);
            }
            return;
        }
        _ => {
            let key = rec.span(key_start, key_end);
            rec.push(classify(raw), key, value);
            return;
        }
    };
    let key = rec.own(Cow::Borrowed(mapped));
    rec.push(classify(mapped.as_bytes()), key, value);
}

/// Header unescape: a backslash before one of `specials` is dropped.
fn unescape(b: &[u8], specials: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b.get(i + 1) {
            Some(c) if b[i] == b'\\' && specials.contains(c) => {
                out.push(*c);
                i += 2;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// Extension unescape: `\=` `\\` `\n` `\r`; other backslashes kept.
fn unescape_value(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let replacement = match b.get(i + 1) {
                Some(b'=') => Some(b'='),
                Some(b'\\') => Some(b'\\'),
                Some(b'n') => Some(b'\n'),
                Some(b'r') => Some(b'\r'),
                _ => None,
            };
            if let Some(c) = replacement {
                out.push(c);
                i += 2;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}
