//! `key=value` bodies: FortiOS "default" (space separated) and "csv" (comma separated) formats.
//!
//! Rules, all taken from real lines (see `tests/data/corpus`): values are bare (up to the next separator) or
//! double-quoted; inside quotes `\"` and `\\` are escapes and any other backslash is kept verbatim (FortiOS writes
//! `charset\=UTF-8` and means the backslash); `key=` is an empty value; runs of separators and leading spaces are
//! skipped; a token without `=` (FortiOS 4's `time=10: 13:03`) is skipped and counted; junk right after a closing
//! quote (`msg="..."|`) is skipped; a quote never closed runs to the end of the message and flags the record.

use super::scan::{find1, find2};

use super::record::{classify, LogRecord};

/// True if the body is FortiOS csv: the first value is followed by `,` and another `key=`.
pub(crate) fn looks_like_csv(b: &[u8], start: usize) -> bool {
    let n = b.len();
    let mut i = start;
    while i < n && !matches!(b[i], b'=' | b' ' | b',') {
        i += 1;
    }
    if i >= n || b[i] != b'=' {
        return false;
    }
    i += 1;
    if i < n && b[i] == b'"' {
        i = match closing_quote(b, i + 1) {
            Some((close, _)) => close + 1,
            None => return false,
        };
    } else {
        while i < n && !matches!(b[i], b' ' | b',') {
            i += 1;
        }
    }
    if i >= n || b[i] != b',' {
        return false;
    }
    let key_start = i + 1;
    let mut j = key_start;
    while j < n && is_key_byte(b[j]) {
        j += 1;
    }
    j > key_start && j < n && b[j] == b'='
}

#[inline]
fn is_key_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.')
}

/// Finds the quote closing a value whose text starts at `from`; also says whether an escape was seen.
#[inline]
fn closing_quote(b: &[u8], from: usize) -> Option<(usize, bool)> {
    let mut j = from;
    let mut escaped = false;
    while j < b.len() {
        let k = find2(b, j, b'"', b'\\');
        if k >= b.len() {
            return None;
        }
        if b[k] == b'"' {
            return Some((k, escaped));
        }
        if matches!(b.get(k + 1), Some(b'"' | b'\\')) {
            escaped = true;
        }
        j = k + 2;
    }
    None
}

/// `\"` → `"`, `\\` → `\`, every other byte as is.
fn unescape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && matches!(b.get(i + 1), Some(b'"' | b'\\')) {
            out.push(b[i + 1]);
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Parses pairs from `start` to the end; `sep` is `b' '` (default) or `b','` (csv).
pub(crate) fn parse_pairs(rec: &mut LogRecord<'_>, start: usize, sep: u8) {
    let b = rec.bytes;
    let n = b.len();
    let mut i = start;
    loop {
        while i < n && (b[i] == b' ' || b[i] == sep || b[i] == b'\t') {
            i += 1;
        }
        if i >= n {
            break;
        }
        let key_start = i;
        i = find2(b, i, b'=', sep);
        if i >= n || b[i] != b'=' || i == key_start {
            // A bare token, or `=value` with no key: skip it up to the next separator.
            rec.skipped += 1;
            while i < n && b[i] != b' ' && b[i] != sep {
                i += 1;
            }
            continue;
        }
        let key_end = i;
        i += 1;
        let value = if i < n && b[i] == b'"' {
            let value_start = i + 1;
            match closing_quote(b, value_start) {
                Some((close, escaped)) => {
                    i = close + 1;
                    if i < n && b[i] != b' ' && b[i] != sep {
                        i = find2(b, i, b' ', sep);
                    }
                    if escaped {
                        rec.own_bytes(unescape(&b[value_start..close]))
                    } else {
                        rec.span(value_start, close)
                    }
                }
                None => {
                    rec.unterminated = true;
                    i = n;
                    let raw = &b[value_start.min(n)..];
                    if raw.contains(&b'\\') {
                        rec.own_bytes(unescape(raw))
                    } else {
                        rec.span(value_start, n)
                    }
                }
            }
        } else {
            let value_start = i;
            i = find1(b, i, sep);
            rec.span(value_start, i)
        };
        let key = rec.span(key_start, key_end);
        rec.push(classify(&b[key_start..key_end]), key, value);
    }
}
