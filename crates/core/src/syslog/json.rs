//! JSON bodies (FortiOS 7.4.1+ `set format json`): one flat object, `{"date":"2024-01-01","srcip":"10.0.0.1",
//! "srcport":443,...}`.
//!
//! Hand-written so values borrow from the message like the other formats. Strings are unescaped (allocating only
//! when they hold an escape); numbers, `true` and `false` keep their literal text; a nested object or array is
//! kept as its raw JSON text; a `null` member is left out (the line does not carry that field). An undefined escape
//! (`\q`, a bad `\u`) is [`ErrorKind::BadEscape`]; an object cut short is [`ErrorKind::Truncated`]; anything else
//! that is not a JSON object is [`ErrorKind::BadJson`]. Text after the closing `}` is ignored.

use memchr::memchr2;

use super::error::{ErrorKind, ParseError};
use super::record::{classify, LogRecord, Ref};

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

/// A string as found: a span of the message, or unescaped bytes.
enum Str {
    Span(usize, usize),
    Unescaped(Vec<u8>),
}

impl Str {
    fn into_ref(self, rec: &mut LogRecord<'_>) -> Ref {
        match self {
            Str::Span(s, e) => rec.span(s, e),
            Str::Unescaped(bytes) => rec.own_bytes(bytes),
        }
    }
}

impl<'a> Cursor<'a> {
    fn err(&self, kind: ErrorKind) -> ParseError {
        ParseError::new(kind, self.pos)
    }

    fn peek(&self) -> Result<u8, ParseError> {
        self.b.get(self.pos).copied().ok_or_else(|| self.err(ErrorKind::Truncated))
    }

    fn ws(&mut self) {
        while matches!(self.b.get(self.pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), ParseError> {
        if self.peek()? == c {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(ErrorKind::BadJson))
        }
    }

    /// A string starting at the opening quote.
    fn string(&mut self) -> Result<Str, ParseError> {
        self.expect(b'"')?;
        let b = self.b;
        let start = self.pos;
        let mut out: Option<Vec<u8>> = None;
        let mut chunk = start;
        loop {
            let Some(off) = memchr2(b'"', b'\\', &b[self.pos..]) else {
                self.pos = b.len();
                return Err(self.err(ErrorKind::Truncated));
            };
            let k = self.pos + off;
            if b[k] == b'"' {
                self.pos = k + 1;
                return Ok(match out {
                    None => Str::Span(start, k),
                    Some(mut buf) => {
                        buf.extend_from_slice(&b[chunk..k]);
                        Str::Unescaped(buf)
                    }
                });
            }
            let buf = out.get_or_insert_with(Vec::new);
            buf.extend_from_slice(&b[chunk..k]);
            self.pos = k + 1;
            let esc = self.peek()?;
            self.pos += 1;
            match esc {
                b'"' => buf.push(b'"'),
                b'\\' => buf.push(b'\\'),
                b'/' => buf.push(b'/'),
                b'b' => buf.push(8),
                b'f' => buf.push(12),
                b'n' => buf.push(b'\n'),
                b'r' => buf.push(b'\r'),
                b't' => buf.push(b'\t'),
                b'u' => {
                    let c = self.unicode_escape(k)?;
                    let mut utf8 = [0u8; 4];
                    buf.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                }
                _ => return Err(ParseError::new(ErrorKind::BadEscape, k)),
            }
            chunk = self.pos;
        }
    }

    fn hex4(&mut self, escape_at: usize) -> Result<u32, ParseError> {
        let b = self.b;
        let Some(digits) = b.get(self.pos..self.pos + 4) else {
            self.pos = b.len();
            return Err(self.err(ErrorKind::Truncated));
        };
        let mut v = 0u32;
        for &d in digits {
            let x = (d as char).to_digit(16).ok_or(ParseError::new(ErrorKind::BadEscape, escape_at))?;
            v = v * 16 + x;
        }
        self.pos += 4;
        Ok(v)
    }

    /// After `\u`: one code point, pairing surrogates.
    fn unicode_escape(&mut self, escape_at: usize) -> Result<char, ParseError> {
        let hi = self.hex4(escape_at)?;
        let code = if (0xD800..0xDC00).contains(&hi) {
            let b = self.b;
            if b.get(self.pos..self.pos + 2) != Some(b"\\u") {
                return Err(ParseError::new(ErrorKind::BadEscape, escape_at));
            }
            self.pos += 2;
            let lo = self.hex4(escape_at)?;
            if !(0xDC00..0xE000).contains(&lo) {
                return Err(ParseError::new(ErrorKind::BadEscape, escape_at));
            }
            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
        } else {
            hi
        };
        char::from_u32(code).ok_or(ParseError::new(ErrorKind::BadEscape, escape_at))
    }

    /// Skips a nested object/array (strings respected) and returns its raw text.
    fn nested(&mut self) -> Result<(usize, usize), ParseError> {
        let b = self.b;
        let start = self.pos;
        let mut depth = 0usize;
        while self.pos < b.len() {
            match b[self.pos] {
                b'"' => {
                    self.string()?;
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        self.pos += 1;
                        return Ok((start, self.pos));
                    }
                }
                _ => {}
            }
            self.pos += 1;
        }
        Err(self.err(ErrorKind::Truncated))
    }

    /// A number or literal: the bytes up to the next `,`, `}`, `]` or whitespace.
    fn scalar(&mut self) -> Result<(usize, usize, bool), ParseError> {
        let b = self.b;
        let start = self.pos;
        while self.pos < b.len() && !matches!(b[self.pos], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
            self.pos += 1;
        }
        let raw = &b[start..self.pos];
        let valid = matches!(raw, b"true" | b"false" | b"null")
            || (!raw.is_empty()
                && raw.iter().all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E')));
        if !valid {
            return Err(ParseError::new(ErrorKind::BadJson, start));
        }
        Ok((start, self.pos, raw == b"null"))
    }
}

/// Parses a JSON object starting at `start` (at the `{`).
pub(crate) fn parse(rec: &mut LogRecord<'_>, start: usize) -> Result<(), ParseError> {
    let mut cur = Cursor { b: rec.bytes, pos: start };
    cur.expect(b'{')?;
    cur.ws();
    if cur.peek()? == b'}' {
        return Ok(());
    }
    loop {
        cur.ws();
        let key = cur.string()?;
        cur.ws();
        cur.expect(b':')?;
        cur.ws();
        let value = match cur.peek()? {
            b'"' => Some(cur.string()?),
            b'{' | b'[' => {
                let (s, e) = cur.nested()?;
                Some(Str::Span(s, e))
            }
            _ => {
                let (s, e, is_null) = cur.scalar()?;
                (!is_null).then_some(Str::Span(s, e))
            }
        };
        if let Some(value) = value {
            let key = key.into_ref(rec);
            let value = value.into_ref(rec);
            let class = classify(rec.text_of(key).as_bytes());
            rec.push(class, key, value);
        }
        cur.ws();
        match cur.peek()? {
            b',' => cur.pos += 1,
            b'}' => return Ok(()),
            _ => return Err(cur.err(ErrorKind::BadJson)),
        }
    }
}
