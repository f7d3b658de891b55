//! [`Text`]: the message bytes plus, when the whole message is valid UTF-8, the same bytes as `&str`.
//!
//! Design decision: the message is validated once (one fast pass); every value is then a `&str` sub-slice of it,
//! cut at ASCII delimiters, so no per-value validation and no `unsafe`. A message that is not valid UTF-8 is still
//! parsed: each value is converted on its own with `String::from_utf8_lossy` (borrowed when that value happens to
//! be valid, U+FFFD replacements otherwise) and the record is flagged [`LogRecord::is_lossy`]. Non-UTF-8 bytes are
//! therefore never an error and never a panic.
//!
//! [`LogRecord::is_lossy`]: super::LogRecord::is_lossy

use std::borrow::Cow;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Text<'a> {
    pub(crate) bytes: &'a [u8],
    utf8: Option<&'a str>,
}

impl<'a> Text<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Text { bytes, utf8: std::str::from_utf8(bytes).ok() }
    }

    /// The message as `&str`, if it is valid UTF-8.
    pub(crate) fn utf8(&self) -> Option<&'a str> {
        self.utf8
    }

    /// `bytes[start..end]` as text, borrowed whenever possible. Out-of-range spans give "" (never panics).
    #[inline]
    pub(crate) fn cow(&self, start: usize, end: usize) -> Cow<'a, str> {
        if let Some(s) = self.utf8.and_then(|s| s.get(start..end)) {
            return Cow::Borrowed(s);
        }
        match self.bytes.get(start..end) {
            Some(b) => String::from_utf8_lossy(b),
            None => Cow::Borrowed(""),
        }
    }

    /// Bytes produced by unescaping, as text (lossy if they are not UTF-8).
    pub(crate) fn owned(bytes: Vec<u8>) -> Cow<'a, str> {
        match String::from_utf8(bytes) {
            Ok(s) => Cow::Owned(s),
            Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
        }
    }
}
