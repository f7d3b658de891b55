//! Errors of the syslog module: [`ParseError`] for one message that cannot be read, [`FrameError`] for a byte
//! stream that cannot be split into messages. Both are small `Copy` values (no boxing on the hot path) that carry
//! what an operator needs: what went wrong and where.

use thiserror::Error;

/// What kind of problem made a message unreadable. Stable: metrics use [`ErrorKind::as_str`] as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum ErrorKind {
    /// Nothing but whitespace, `\r`, `\n` or `\0`.
    #[error("empty message")]
    Empty,
    /// A `<` that does not start a valid `<0>`..`<191>` priority.
    #[error("bad PRI")]
    BadPri,
    /// An RFC 5424 header (`<PRI>1 ...`) whose fields are malformed.
    #[error("bad RFC 5424 header")]
    BadHeader,
    /// The message ends where more is required (a PRI, a header, a CEF header, a JSON object).
    #[error("truncated message")]
    Truncated,
    /// An escape sequence that the format does not define (JSON bodies only: default and CEF bodies keep unknown
    /// escapes verbatim, as FortiOS does).
    #[error("bad escape")]
    BadEscape,
    /// A JSON body that is not a flat JSON object.
    #[error("bad JSON body")]
    BadJson,
    /// A message of 2 GiB or more (a record indexes its message with 31-bit offsets).
    #[error("message too large")]
    TooLarge,
    /// Readable, but not a FortiGate log: no `key=value` pair with a FortiGate key, or CEF from another vendor.
    #[error("not a FortiGate log")]
    NotFortiGate,
}

impl ErrorKind {
    /// Every kind, for sums over the `parse_errors` metric.
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::Empty,
        ErrorKind::BadPri,
        ErrorKind::BadHeader,
        ErrorKind::Truncated,
        ErrorKind::BadEscape,
        ErrorKind::BadJson,
        ErrorKind::TooLarge,
        ErrorKind::NotFortiGate,
    ];

    /// A short snake_case name, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Empty => "empty",
            ErrorKind::BadPri => "bad_pri",
            ErrorKind::BadHeader => "bad_header",
            ErrorKind::Truncated => "truncated",
            ErrorKind::BadEscape => "bad_escape",
            ErrorKind::BadJson => "bad_json",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::NotFortiGate => "not_fortigate",
        }
    }
}

/// One message could not be parsed. `offset` is the byte offset into the message given to
/// [`parse`](super::parse) where the problem was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
#[error("{kind} at byte {offset}")]
pub struct ParseError {
    pub kind: ErrorKind,
    pub offset: usize,
}

impl ParseError {
    pub(crate) fn new(kind: ErrorKind, offset: usize) -> Self {
        ParseError { kind, offset }
    }
}

/// A byte stream could not be split into messages. The decoder that reported it has already resynchronised:
/// the caller counts the error and keeps reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    /// A message longer than `max_message_bytes`. For an LF-delimited message, `len` is the length seen before
    /// giving up (at least `max + 1`). The message is skipped whole, never truncated.
    #[error("message of {len} bytes exceeds max_message_bytes ({max})")]
    TooLong { len: usize, max: usize },
    /// The stream ended inside an octet-counted frame.
    #[error("stream ended inside a frame ({missing} bytes missing)")]
    Truncated { missing: usize },
}
