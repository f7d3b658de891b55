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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_lines() {
        let cases: &[(usize, &[u8], &str)] = &[
            (
                1,
                b"<189>date=2024-05-01 type=\"traffic\" srcip=10.0.0.1 tz=a tz=b msg=\"say \\\"hi\\\"\\ttab\"\r\n",
                r#"{"line":1,"format":"default","fields":{"date":"2024-05-01","type":"traffic","srcip":"10.0.0.1","tz":"a","msg":"say \"hi\"\\ttab"}}"#,
            ),
            (
                2,
                b"CEF:0|Fortinet|Fortigate|v7|13|traffic:forward close|3|src=1.2.3.4 dpt=443 cat=traffic:forward msg=a\\nb",
                r#"{"line":2,"format":"cef","fields":{"srcip":"1.2.3.4","dstport":"443","type":"traffic","subtype":"forward","msg":"a\nb"}}"#,
            ),
            (3, b"<999>type=traffic", r#"{"line":3,"error":"bad PRI at byte 1"}"#),
            (4, b"", r#"{"line":4,"error":"empty message at byte 0"}"#),
            (5, b"hello", r#"{"line":5,"error":"not a FortiGate log at byte 0"}"#),
            (6, b"type=x ctl=\"\x01\"", r#"{"line":6,"format":"default","fields":{"type":"x","ctl":"\u0001"}}"#),
        ];
        for (line_no, input, want) in cases {
            assert_eq!(describe_line(*line_no, input), *want);
        }
    }
}
