//! [`describe_line`]: the JSON line `integration parse` prints for one input line (contract.md):
//! `{"line":N,"format":"...","fields":{...}}` or `{"line":N,"error":"..."}`.
//!
//! Fields are the body's pairs in line order, each key once (first occurrence wins), FortiGate names (CEF keys
//! mapped), values as strings. Header data (PRI, timestamp, host) is not a field: `devname` is only what the body
//! says. Written by hand (no serde on internal types, per the style guide); the output is always valid JSON.

use std::fmt::Write;

use super::parse::parse;

/// Describes one line (trailing `\r`, `\n`, `\0` ignored). `line_no` is printed as given (1-based by convention).
pub fn describe_line(line_no: usize, input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len() + 64);
    // Writing to a String cannot fail.
    let _ = write!(out, "{{\"line\":{line_no},");
    match parse(input) {
        Ok(record) => {
            out.push_str("\"format\":\"");
            out.push_str(record.format().as_str());
            out.push_str("\",\"fields\":{");
            for (i, (key, value)) in record.fields().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json_string(&mut out, key);
                out.push(':');
                push_json_string(&mut out, value);
            }
            out.push_str("}}");
        }
        Err(error) => {
            out.push_str("\"error\":");
            push_json_string(&mut out, &error.to_string());
            out.push('}');
        }
    }
    out
}

/// Appends `s` as a JSON string literal.
pub(crate) fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    let mut last = 0;
    for (i, c) in s.char_indices() {
        let escape = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[last..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push_str(escape);
        }
        last = i + c.len_utf8();
    }
    out.push_str(&s[last..]);
    out.push('"');
}
