//! Framing: bytes from a socket → one syslog message at a time. Pure code, no sockets: the listener owns the
//! buffer and the socket and calls in here (like mini-redis's `frame.rs` and `connection.rs`).
//!
//! - UDP: one datagram is one message; [`datagram`] strips trailing `\n`, `\r\n`, `\0` and enforces the size limit.
//! - TCP/TLS: [`FrameDecoder`] handles RFC 6587 octet counting (`LEN SP MSG`, what FortiOS `mode reliable` sends)
//!   and LF-delimited ("non-transparent") framing. The method is detected at every frame boundary: a frame that
//!   starts with a non-zero digit run followed by a space is octet-counted, anything else runs to the next `\n`.
//!   Per-frame detection covers "per connection" and also relays that mix both on one connection.
//!
//! Invariants: a message longer than `max_message_bytes` is reported once as [`FrameError::TooLong`] and skipped
//! whole (never truncated, never a panic), after which the decoder is back in sync; the decoder never asks the
//! caller to buffer more than `max_message_bytes` plus a length prefix. "Not enough bytes yet" is
//! [`Outcome::Incomplete`], not an error.

use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};
use memchr::memchr;

use super::error::FrameError;

/// How the last frame was delimited (for metrics and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Framing {
    /// RFC 6587 §3.4.1 `MSG-LEN SP SYSLOG-MSG`.
    OctetCounting,
    /// RFC 6587 §3.4.2, trailer `\n` (a `\r` or `\0` before it is dropped).
    LineFeed,
}

/// The result of one [`FrameDecoder::decode_slice`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input the caller must drop (advance past) before the next call, whatever the outcome.
    pub consumed: usize,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A message: this range of the input (within `..consumed`), trailer and length prefix excluded.
    Message(Range<usize>),
    /// More bytes are needed.
    Incomplete,
    /// A bad frame was skipped (or is being skipped); carry on calling.
    Error(FrameError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At a frame boundary.
    Start,
    /// Inside an oversized octet-counted frame: this many bytes still to drop.
    SkipBytes(usize),
    /// Inside an oversized LF frame: drop up to and including the next `\n`.
    SkipLine,
}

/// Splits a TCP byte stream into syslog messages. One per connection.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max: usize,
    state: State,
    last: Option<Framing>,
}

/// RFC 6587 lengths have no leading zero; `usize::MAX` has 20 digits.
const MAX_LEN_DIGITS: usize = 20;

impl FrameDecoder {
    /// A decoder that rejects messages longer than `max_message_bytes` (the `[syslog]` key of that name).
    pub fn new(max_message_bytes: usize) -> Self {
        FrameDecoder { max: max_message_bytes, state: State::Start, last: None }
    }

    /// The framing of the last frame seen, if any.
    pub fn framing(&self) -> Option<Framing> {
        self.last
    }

    /// Decodes at most one message from the front of `buf`. Zero-copy: the message is a range of `buf`.
    pub fn decode_slice(&mut self, buf: &[u8]) -> Step {
        let mut i = 0;
        loop {
            match self.state {
                State::SkipBytes(remaining) => {
                    let take = remaining.min(buf.len() - i);
                    i += take;
                    if take < remaining {
                        self.state = State::SkipBytes(remaining - take);
                        return incomplete(i);
                    }
                    self.state = State::Start;
                }
                State::SkipLine => match memchr(b'\n', &buf[i..]) {
                    Some(off) => {
                        i += off + 1;
                        self.state = State::Start;
                    }
                    None => return incomplete(buf.len()),
                },
                State::Start => return self.frame(buf, i),
            }
        }
    }

    fn frame(&mut self, buf: &[u8], mut i: usize) -> Step {
        // Between frames: stray trailers (some senders end octet-counted frames with `\n`).
        while i < buf.len() && matches!(buf[i], b'\n' | b'\r' | b'\0') {
            i += 1;
        }
        if i == buf.len() {
            return incomplete(i);
        }
        let start = i;
        if matches!(buf[i], b'1'..=b'9') {
            let ndigits = buf[i..].iter().take(MAX_LEN_DIGITS + 1).take_while(|c| c.is_ascii_digit()).count();
            match buf.get(i + ndigits) {
                None if ndigits <= MAX_LEN_DIGITS => return incomplete(start),
                Some(b' ') if ndigits <= MAX_LEN_DIGITS => {
                    self.last = Some(Framing::OctetCounting);
                    let len = buf[i..i + ndigits]
                        .iter()
                        .fold(0usize, |n, d| n.saturating_mul(10).saturating_add(usize::from(d - b'0')));
                    let body = i + ndigits + 1;
                    if len > self.max {
                        self.state = State::SkipBytes(len);
                        let mut step = self.decode_slice_from(buf, body);
                        step.outcome = Outcome::Error(FrameError::TooLong { len, max: self.max });
                        return step;
                    }
                    if buf.len() - body < len {
                        return incomplete(start);
                    }
                    let mut end = body + len;
                    while end > body && matches!(buf[end - 1], b'\n' | b'\r' | b'\0') {
                        end -= 1;
                    }
                    return Step { consumed: body + len, outcome: Outcome::Message(body..end) };
                }
                _ => {}
            }
        }
        // LF-delimited.
        self.last = Some(Framing::LineFeed);
        match memchr(b'\n', &buf[start..]) {
            Some(off) => {
                let lf = start + off;
                if lf - start > self.max {
                    return Step {
                        consumed: lf + 1,
                        outcome: Outcome::Error(FrameError::TooLong { len: lf - start, max: self.max }),
                    };
                }
                let mut end = lf;
                while end > start && matches!(buf[end - 1], b'\r' | b'\0') {
                    end -= 1;
                }
                Step { consumed: lf + 1, outcome: Outcome::Message(start..end) }
            }
            None if buf.len() - start > self.max => {
                self.state = State::SkipLine;
                Step {
                    consumed: buf.len(),
                    outcome: Outcome::Error(FrameError::TooLong { len: buf.len() - start, max: self.max }),
                }
            }
            None => incomplete(start),
        }
    }

    /// Drops what it can of an oversized frame right away, so the caller's buffer does not fill with it.
    fn decode_slice_from(&mut self, buf: &[u8], from: usize) -> Step {
        if let State::SkipBytes(remaining) = self.state {
            let take = remaining.min(buf.len() - from);
            self.state = if take == remaining { State::Start } else { State::SkipBytes(remaining - take) };
            return incomplete(from + take);
        }
        incomplete(from)
    }

    /// The stream has ended: what is left in `buf` (after all `decode_slice` calls returned `Incomplete`).
    /// An unterminated last line is a message; a cut octet-counted frame is [`FrameError::Truncated`].
    pub fn finish_slice(&mut self, buf: &[u8]) -> Option<Result<Range<usize>, FrameError>> {
        let state = std::mem::replace(&mut self.state, State::Start);
        match state {
            State::SkipBytes(_) | State::SkipLine => return None,
            State::Start => {}
        }
        let mut start = 0;
        while start < buf.len() && matches!(buf[start], b'\n' | b'\r' | b'\0') {
            start += 1;
        }
        if start == buf.len() {
            return None;
        }
        let ndigits = buf[start..].iter().take_while(|c| c.is_ascii_digit()).count();
        if buf[start] != b'0' && buf.get(start + ndigits) == Some(&b' ') && ndigits <= MAX_LEN_DIGITS {
            let len = buf[start..start + ndigits]
                .iter()
                .fold(0usize, |n, d| n.saturating_mul(10).saturating_add(usize::from(d - b'0')));
            let have = buf.len() - (start + ndigits + 1);
            return Some(Err(FrameError::Truncated { missing: len.saturating_sub(have) }));
        }
        let mut end = buf.len();
        while end > start && matches!(buf[end - 1], b'\r' | b'\0' | b'\n') {
            end -= 1;
        }
        if end - start > self.max {
            return Some(Err(FrameError::TooLong { len: end - start, max: self.max }));
        }
        Some(Ok(start..end))
    }

    /// [`decode_slice`](Self::decode_slice) on a `BytesMut` read buffer: advances it and returns the message as
    /// a zero-copy `Bytes`. `Ok(None)` = need more bytes. After an `Err`, keep calling: the decoder has skipped
    /// (or is skipping) the bad frame.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let step = self.decode_slice(buf);
        match step.outcome {
            Outcome::Message(range) => {
                let frame = buf.split_to(step.consumed).freeze();
                Ok(Some(frame.slice(range)))
            }
            Outcome::Incomplete => {
                buf.advance(step.consumed);
                Ok(None)
            }
            Outcome::Error(error) => {
                buf.advance(step.consumed);
                Err(error)
            }
        }
    }

    /// At end of stream, after [`decode`](Self::decode) returned `Ok(None)`: the last message, if any.
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let result = self.finish_slice(buf);
        let all = buf.split().freeze();
        match result {
            None => Ok(None),
            Some(Ok(range)) => Ok(Some(all.slice(range))),
            Some(Err(error)) => Err(error),
        }
    }
}

fn incomplete(consumed: usize) -> Step {
    Step { consumed, outcome: Outcome::Incomplete }
}

/// One UDP datagram as a message: trailing `\n`, `\r`, `\0` stripped.
///
/// # Errors
/// [`FrameError::TooLong`] if the message (trailer excluded) is longer than `max_message_bytes`.
pub fn datagram(datagram: &[u8], max_message_bytes: usize) -> Result<&[u8], FrameError> {
    let mut end = datagram.len();
    while end > 0 && matches!(datagram[end - 1], b'\n' | b'\r' | b'\0') {
        end -= 1;
    }
    if end > max_message_bytes {
        return Err(FrameError::TooLong { len: end, max: max_message_bytes });
    }
    Ok(&datagram[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Ev {
        Msg(&'static str),
        Err(FrameError),
    }

    /// The one caller of the decoder in these tests: feeds `chunks` one after another into a `BytesMut` (as a
    /// socket would deliver them), drains after each, then signals end of stream. Returns everything seen.
    fn run(max: usize, chunks: &[&[u8]]) -> Vec<Result<String, FrameError>> {
        let mut decoder = FrameDecoder::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(msg)) => out.push(Ok(String::from_utf8_lossy(&msg).into_owned())),
                    Ok(None) => break,
                    Err(e) => out.push(Err(e)),
                }
            }
        }
        match decoder.decode_eof(&mut buf) {
            Ok(Some(msg)) => out.push(Ok(String::from_utf8_lossy(&msg).into_owned())),
            Ok(None) => {}
            Err(e) => out.push(Err(e)),
        }
        out
    }

    fn check(name: &str, max: usize, chunks: &[&[u8]], want: &[Ev]) {
        let want: Vec<Result<String, FrameError>> = want
            .iter()
            .map(|e| match e {
                Ev::Msg(m) => Ok((*m).to_string()),
                Ev::Err(e) => Err(*e),
            })
            .collect();
        assert_eq!(run(max, chunks), want, "{name}: chunked");
        // Same stream, one byte at a time: partial reads must not change the result (except that an oversized
        // LF line is given up on as soon as it passes `max`, so its reported length is "at least max + 1").
        let joined: Vec<u8> = chunks.concat();
        let bytes: Vec<&[u8]> = joined.chunks(1).collect();
        let at_least = |r: &Result<String, FrameError>| match r {
            Err(FrameError::TooLong { len, max }) => Err(FrameError::TooLong { len: (*len).min(max + 1), max: *max }),
            other => other.clone(),
        };
        let got: Vec<_> = run(max, &bytes).iter().map(at_least).collect();
        let want: Vec<_> = want.iter().map(at_least).collect();
        assert_eq!(got, want, "{name}: byte by byte");
    }

    #[test]
    fn table() {
        use Ev::{Err as E, Msg as M};
        let too_long = |len| E(FrameError::TooLong { len, max: 16 });
        type Case<'a> = (&'a str, &'a [&'a [u8]], &'a [Ev]);
        let cases: &[Case] = &[
            ("octet counting", &[b"5 <1>ab3 <2>"], &[M("<1>ab"), M("<2>")]),
            (
                "octet counting split",
                &[b"1", b"1 <189>ty", b"pe=x10 <189>a=b\nc"],
                &[M("<189>type=x"), M("<189>a=b\nc")],
            ),
            ("octet frame keeps inner newline, strips trailer", &[b"6 a\nb\r\n\n4 cdef"], &[M("a\nb"), M("cdef")]),
            ("lf", &[b"<1>a=1\n<2>b=2\r\n\n<3>c=3"], &[M("<1>a=1"), M("<2>b=2"), M("<3>c=3")]),
            ("lf split", &[b"<1>a", b"=1\n<2", b">b=2\n"], &[M("<1>a=1"), M("<2>b=2")]),
            ("mixed on one connection", &[b"3 abc<1>lf line\n4 defg"], &[M("abc"), M("<1>lf line"), M("defg")]),
            ("digits without space are lf", &[b"2026-04 a=b\n", b"42\n"], &[M("2026-04 a=b"), M("42")]),
            ("nul trailer", &[b"<1>a=1\0\n"], &[M("<1>a=1")]),
            ("octet oversize skipped whole", &[b"20 0123456789", b"0123456789", b"3 abc"], &[too_long(20), M("abc")]),
            ("lf oversize skipped whole", &[b"<1>0123456789", b"0123456789\n<2>ok\n"], &[too_long(23), M("<2>ok")]),
            ("exactly max is fine", &[b"16 0123456789abcdef"], &[M("0123456789abcdef")]),
            ("eof inside octet frame", &[b"10 abc"], &[E(FrameError::Truncated { missing: 7 })]),
            ("eof after only a length", &[b"12 "], &[E(FrameError::Truncated { missing: 12 })]),
            ("empty stream", &[b"", b"\n\n"], &[]),
        ];
        for (name, chunks, want) in cases {
            check(name, 16, chunks, want);
        }
    }

    #[test]
    fn lf_oversize_byte_by_byte_reports_once() {
        let out = run(4, &[b"<1>abcdefgh\n", b"ok\n"]);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(matches!(out[0], Err(FrameError::TooLong { max: 4, .. })));
        assert_eq!(out[1], Ok("ok".to_string()));
    }

    #[test]
    fn slice_api_is_zero_copy_ranges() {
        let mut d = FrameDecoder::new(100);
        let buf = b"3 abc<1>x=1\n";
        let step = d.decode_slice(buf);
        assert_eq!(step, Step { consumed: 5, outcome: Outcome::Message(2..5) });
        assert_eq!(d.framing(), Some(Framing::OctetCounting));
        let step = d.decode_slice(&buf[5..]);
        assert_eq!(step, Step { consumed: 7, outcome: Outcome::Message(0..6) });
        assert_eq!(d.framing(), Some(Framing::LineFeed));
    }

    #[test]
    fn datagrams() {
        type Case<'a> = (&'a [u8], Result<&'a [u8], FrameError>);
        let cases: &[Case] = &[
            (b"<189>a=b\n", Ok(b"<189>a=b")),
            (b"<189>a=b\r\n", Ok(b"<189>a=b")),
            (b"<189>a=b\0", Ok(b"<189>a=b")),
            (b"<189>a\nb", Ok(b"<189>a\nb")),
            (b"0123456789", Err(FrameError::TooLong { len: 10, max: 8 })),
        ];
        for (input, want) in cases {
            assert_eq!(datagram(input, 8), *want, "{input:?}");
        }
    }
}
