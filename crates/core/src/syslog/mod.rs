//! FortiGate syslog: framing and parsing, pure code with no I/O (the listeners live with the daemon).
//!
//! # Layout
//! - [`frame`]: bytes → messages. [`datagram`] for UDP; [`FrameDecoder`] for TCP/TLS streams (RFC 6587 octet
//!   counting and LF framing, detected per frame, `max_message_bytes` enforced without truncating).
//! - [`parse()`]: one message → [`LogRecord`] or [`ParseError`]. Reads `<PRI>`, an optional RFC 3164 / RFC 5424 /
//!   relay header, then any body FortiOS sends: default `key=value`, csv, CEF (keys mapped to FortiGate names) and
//!   JSON. The daemon calls it once per message; `integration parse` and `replay` go through [`describe_line`],
//!   which prints the contract's JSON line.
//! - [`LogRecord`]: borrows from the message (texts are spans of it; only unescaped values are allocated), typed accessors for
//!   the fields the daemon matches on ([`LogRecord::srcip`] → `IpAddr`, [`LogRecord::policyid`], ...), FortiOS 4
//!   aliases, and [`LogRecord::get`] for any other key.
//!
//! # Decisions
//! - Hand-written byte scanning with `memchr`, no parser combinators and no regex: the parser runs once per log
//!   line at firewall log rates (see BENCHMARKS.md).
//! - Lenient where FortiOS is sloppy, strict where the line is not a FortiGate log: unknown keys, duplicate keys
//!   (first wins, [`LogRecord::duplicate_keys`] counts the rest), empty values, stray tokens, an unclosed final
//!   quote are all accepted; a bad `<PRI>`, a truncated header, bad JSON or a non-Fortinet CEF line are errors.
//! - Errors are values ([`ParseError`]: an [`ErrorKind`] and a byte offset); nothing here panics on input.
//! - Non-UTF-8 bytes are repaired lossily per value (U+FFFD) and flagged ([`LogRecord::is_lossy`]), never an
//!   error: an address or policy id next to a garbled message field is still worth reading.
//!
//! # Example
//! ```
//! use fortimisp_core::syslog::{parse, Format};
//!
//! let line = br#"<189>date=2024-05-01 time=10:00:00 devname="fw1" type="traffic" subtype="forward" srcip=198.51.100.7 policyid=7 action="accept""#;
//! let record = parse(line).unwrap();
//! assert_eq!(record.format(), Format::Default);
//! assert_eq!(record.srcip(), Some("198.51.100.7".parse().unwrap()));
//! assert_eq!(record.policyid(), Some(7));
//! assert_eq!(record.action(), Some("accept"));
//! assert_eq!(record.get("devname"), Some("fw1"));
//! ```

mod cef;
mod describe;
mod error;
pub mod frame;
mod json;
mod kv;
mod parse;
mod record;
mod scan;
mod text;

pub use describe::describe_line;
pub use error::{ErrorKind, FrameError, ParseError};
pub use frame::{datagram, FrameDecoder, Framing};
pub use parse::parse;
pub use record::{CefHeader, Format, Header, LogRecord, Pri, Rfc5424Header};
