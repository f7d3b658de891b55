//! [`parse`]: one framed message → [`LogRecord`]. Pure: no I/O, no clock, no allocation beyond the record's
//! field vector and the values that need unescaping.
//!
//! Steps: trim trailing `\r`, `\n`, `\0`; skip leading spaces; optional `<PRI>`; optional header (RFC 5424 after a
//! PRI when a version number follows; else a BSD timestamp `Mmm dd hh:mm:ss`, wazuh's `YYYY Mmm dd hh:mm:ss`, or a
//! relay's RFC 3339 timestamp, each followed by an optional host); then the body: `CEF:` or `<digit>|` → CEF, `{` →
//! JSON, else `key=value` (csv when the first value is followed by `,key=`).

use std::borrow::Cow;

use super::error::{ErrorKind, ParseError};
use super::record::{Format, Header, LogRecord, Pri, Rfc5424Header, MAX_MESSAGE};
use super::text::Text;
use super::{cef, json, kv};

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
    if b.len() > MAX_MESSAGE {
        return Err(ParseError::new(ErrorKind::TooLarge, MAX_MESSAGE));
    }
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
        Header::Rfc5424(_) => Format::Rfc5424,
    };
    let rest = &b[pos..];
    let mut rec = LogRecord::new(b, text.utf8(), pri, header);
    if rest.starts_with(b"CEF:") || cef_version_pipe(rest) {
        rec.format = Format::Cef;
        let at = if rest.starts_with(b"CEF:") { pos + 4 } else { pos };
        cef::parse(text, at, &mut rec)?;
    } else if rest[0] == b'{' {
        rec.format = Format::Json;
        json::parse(&mut rec, pos)?;
        require_fortigate(&rec, pos)?;
    } else if kv::looks_like_csv(b, pos) {
        rec.format = Format::Csv;
        kv::parse_pairs(&mut rec, pos, b',');
        require_fortigate(&rec, pos)?;
    } else {
        rec.format = header_format;
        kv::parse_pairs(&mut rec, pos, b' ');
        require_fortigate(&rec, pos)?;
    }
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
    let pri = u8::try_from(value).ok().and_then(Pri::from_value).ok_or(ParseError::new(ErrorKind::BadPri, pos + 1))?;
    Ok((pri, i + 1))
}

/// An RFC 5424 VERSION (1-3 digits, not starting with 0) followed by a space.
fn starts_version(b: &[u8], pos: usize) -> bool {
    let digits = b[pos.min(b.len())..].iter().take_while(|c| c.is_ascii_digit()).count();
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
    let version = b[vs..ve].iter().fold(0u16, |v, d| v * 10 + u16::from(d - b'0'));
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
    let header = Header::Rfc5424(Box::new(Rfc5424Header {
        version,
        timestamp: nil_or(text, spans[0]),
        hostname: nil_or(text, spans[1]),
        app_name: nil_or(text, spans[2]),
        procid: nil_or(text, spans[3]),
        msgid: nil_or(text, spans[4]),
        structured_data: nil_or(text, sd),
    }));
    Ok((header, body))
}

const MONTHS: [&[u8; 3]; 12] =
    [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];

fn digits(b: &[u8], pos: usize, count: usize) -> bool {
    b.get(pos..pos + count).is_some_and(|d| d.iter().all(u8::is_ascii_digit))
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
    let day = b[i.min(b.len())..].iter().take_while(|c| c.is_ascii_digit()).count();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    /// `Some(v)`: the key is present with value `v` (first occurrence); `None`: the key is absent.
    type Want = &'static [(&'static str, Option<&'static str>)];

    enum Expect {
        Ok(Format, Want),
        Err(ErrorKind, usize),
    }

    /// The one caller of `parse` in the table tests.
    fn check(name: &str, input: &[u8], expect: &Expect) {
        let got = parse(input);
        match (expect, &got) {
            (Expect::Ok(format, fields), Ok(record)) => {
                assert_eq!(record.format(), *format, "{name}: format");
                for (key, value) in fields.iter() {
                    assert_eq!(record.get(key), *value, "{name}: field {key}\n record: {record:#?}");
                }
            }
            (Expect::Err(kind, offset), Err(error)) => {
                assert_eq!((error.kind, error.offset), (*kind, *offset), "{name}: error");
            }
            (Expect::Ok(..), Err(error)) => panic!("{name}: expected a record, got error {error}"),
            (Expect::Err(kind, _), Ok(record)) => {
                panic!("{name}: expected {kind}, got {record:#?}")
            }
        }
    }

    #[test]
    fn table() {
        use Expect::{Err as E, Ok as O};
        use Format::*;
        let cases: &[(&str, &[u8], Expect)] = &[
            // --- default format
            ("pri + default body", br#"<189>date=2019-04-04 time=09:19:21 devname="fw01" type="traffic" subtype="forward" srcip=172.30.0.1 policyid=12 action="close""#,
                O(Default, &[("devname", Some("fw01")), ("srcip", Some("172.30.0.1")), ("policyid", Some("12")), ("action", Some("close"))])),
            ("no pri", br#"date=2019-04-04 type="traffic" srcip=10.0.0.1"#, O(Default, &[("type", Some("traffic"))])),
            ("body starts with devname", br#"<190>devname="firewall" devid="FG201E" vd="root" date=2021-05-07"#, O(Default, &[("devname", Some("firewall")), ("vd", Some("root"))])),
            ("body starts with logver (FortiAnalyzer)", br#"logver=0702071577 itime=1700000000 devid="FG100F" type="traffic""#, O(Default, &[("logver", Some("0702071577")), ("itime", Some("1700000000"))])),
            ("body starts with eventtime", br#"<185>eventtime=1702257752722386015 tz="+0100" logid="0100032002" type="event""#, O(Default, &[("eventtime", Some("1702257752722386015"))])),
            ("body starts with type", br#"type=traffic subtype=forward srcip=1.2.3.4"#, O(Default, &[("subtype", Some("forward"))])),
            ("leading spaces", b"  \t time=15:22:43 devname=\"abc\" type=\"traffic\"", O(Default, &[("time", Some("15:22:43")), ("devname", Some("abc"))])),
            ("crlf and nul stripped", b"<189>type=traffic action=deny\r\n\0", O(Default, &[("action", Some("deny"))])),
            ("duplicate tz keeps first", br#"<188>timestamp=1678299766 tz="UTC-5:00" devname="FG6K" tz="-0500" type="utm""#, O(Default, &[("tz", Some("UTC-5:00"))])),
            ("empty values", br#"<190>date= desc="x" type=event user= cookies="" vd=root"#, O(Default, &[("date", Some("")), ("user", Some("")), ("cookies", Some("")), ("vd", Some("root"))])),
            ("(null) and N/A kept", br#"type=event fctemssn="(null)" user="N/A" assignip=N/A"#, O(Default, &[("fctemssn", Some("(null)")), ("user", Some("N/A")), ("assignip", Some("N/A"))])),
            ("commas and ip= inside quotes", br#"<190>date= msg="Send new version object to device (sn:FSA1, ip=127.0.0.1): objid=0, curr_ver=00091.03310" type=event"#,
                O(Default, &[("msg", Some("Send new version object to device (sn:FSA1, ip=127.0.0.1): objid=0, curr_ver=00091.03310")), ("ip", None), ("objid", None), ("type", Some("event"))])),
            ("mixed quoting", br#"date=2016-06-15 devname=Device_Name vd="root" logdesc="IPsec DPD failed" action=dpd status=dp"#, O(Default, &[("devname", Some("Device_Name")), ("vd", Some("root")), ("logdesc", Some("IPsec DPD failed")), ("action", Some("dpd"))])),
            ("escaped quote", br#"type=utm forwardedfor="a\"></script>" level=warning"#, O(Default, &[("forwardedfor", Some(r#"a"></script>"#)), ("level", Some("warning"))])),
            ("escaped backslash", br#"type=utm filename="sample\\test.xls" x=1"#, O(Default, &[("filename", Some(r"sample\test.xls")), ("x", Some("1"))])),
            ("other backslashes verbatim", br#"type=utm rawdata="text/html; charset\=UTF-8" x=1"#, O(Default, &[("rawdata", Some(r"text/html; charset\=UTF-8"))])),
            ("junk after closing quote", br#"type=event msg="logged in from https(172.16.1.2)"| next=1"#, O(Default, &[("msg", Some("logged in from https(172.16.1.2)")), ("next", Some("1"))])),
            ("unterminated quote runs to end", br#"type=event action="SIM Change" msg="FX04 STATE: connecting"#, O(Default, &[("msg", Some("FX04 STATE: connecting")), ("action", Some("SIM Change"))])),
            ("runs of spaces", br#"type=event logdesc="FortiExtender"   action="Cellular Connected""#, O(Default, &[("action", Some("Cellular Connected"))])),
            ("stray token skipped", b"date=2011-07-24 time=10: 13:03 devname=Device_Name type=traffic", O(Default, &[("time", Some("10:")), ("devname", Some("Device_Name"))])),
            ("FortiOS 4 names kept as sent", b"log_id=0038016004 type=traffic status=deny src=10.3.3.3 dst=10.4.4.4", O(Default, &[("src", Some("10.3.3.3")), ("srcip", None), ("status", Some("deny")), ("action", None)])),
            ("ipv6 addresses", b"<189>type=traffic srcip=2001:db8::7 dstip=fe80::1 srcport=443", O(Default, &[("srcip", Some("2001:db8::7"))])),
            // --- headers
            ("bsd header without host", b"Dec 23 11:13:03 date=2011-07-24 devname=Device_Name type=traffic", O(Rfc3164, &[("date", Some("2011-07-24"))])),
            ("bsd header with host", br#"<134>Mar 22 19:21:00 10.10.10.10 date=2016-03-22 type=anomaly vd="root""#, O(Rfc3164, &[("vd", Some("root")), ("devname", None)])),
            ("bsd header, space-padded day", b"<134>Mar  2 09:01:00 fw1 type=traffic", O(Rfc3164, &[("type", Some("traffic"))])),
            ("wazuh header", br#"2018 Apr 09 16:03:37 inwazuhmgr->172.24.0.253 date=2018-04-09 devname=BA-RSYS-FW type="utm""#, O(Rfc3164, &[("devname", Some("BA-RSYS-FW"))])),
            ("relay rfc3339 header", br#"2026-04-03T00:33:02.518842+00:00 192.168.2.1 date=2026-04-02 devname="FGVM" type="event""#, O(Rfc3164, &[("devname", Some("FGVM"))])),
            ("rfc5424 nil fields", br#"<165>1 2022-11-14T06:54:03Z use2-dmz-fw02 - - - - eventtime=1668408842876531561 type="utm" srcip=10.80.28.193"#, O(Rfc5424, &[("type", Some("utm")), ("devname", None)])),
            ("rfc5424 with sd and bom", b"<165>1 2024-01-01T00:00:00Z fw app 12 ID47 [ex@32473 a=\"x]\\\"y\"][b c=\"d\"] \xEF\xBB\xBFdate=2024-01-01 type=traffic", O(Rfc5424, &[("date", Some("2024-01-01"))])),
            ("rfc5424 + csv body is csv", b"<165>1 2024-01-01T00:00:00Z fw - - - - date=2024-01-01,type=traffic,srcip=1.2.3.4", O(Csv, &[("srcip", Some("1.2.3.4"))])),
            ("rfc5424 truncated", b"<165>1 2022-11-14T06:54:03Z host", E(ErrorKind::Truncated, 32)),
            ("rfc5424 bad sd", b"<165>1 ts host app pid msgid x type=traffic", E(ErrorKind::BadHeader, 29)),
            // --- csv
            ("csv with quoted commas", br#"date=2016-02-12,time=14:10:42,type=anomaly,vd="vdom1",service="icmp/146/81",attack="a, b",srcip=1.1.1.1,dstport=20882"#,
                O(Csv, &[("attack", Some("a, b")), ("srcip", Some("1.1.1.1")), ("dstport", Some("20882")), ("vd", Some("vdom1"))])),
            ("csv with spaces in bare values", br#"<189>date=2018-07-26,msg=hello world,type=traffic,x="""#, O(Csv, &[("msg", Some("hello world")), ("x", Some(""))])),
            // --- CEF
            ("cef mapping", b"CEF:0|Fortinet|Fortigate|v6.0.4|00013|traffic:forward timeout|3|deviceExternalId=FGVM2V src=1.1.1.1 spt=49260 deviceInboundInterface=port1 dst=3.3.3.3 dpt=80 proto=6 FortinetFortiGateaction=timeout FTNTFGTpolicyid=1 cat=traffic:forward dvchost=fw1 ad.custom=yes",
                O(Cef, &[("devid", Some("FGVM2V")), ("srcip", Some("1.1.1.1")), ("srcport", Some("49260")), ("srcintf", Some("port1")), ("dstip", Some("3.3.3.3")), ("dstport", Some("80")), ("proto", Some("6")), ("action", Some("timeout")), ("policyid", Some("1")), ("type", Some("traffic")), ("subtype", Some("forward")), ("devname", Some("fw1")), ("custom", Some("yes")), ("cat", None), ("src", None)])),
            ("cef values with spaces and escapes", br"CEF:0|Fortinet|Fortigate|v6|1|a\|b|3|msg=Configuration is changed a\=b c\\d\nx duser= act=close FTNTFGTref=http://x/?vn\=EICAR",
                O(Cef, &[("msg", Some("Configuration is changed a=b c\\d\nx")), ("duser", Some("")), ("action", Some("close")), ("ref", Some("http://x/?vn=EICAR"))])),
            ("cef without marker", b"0|Fortinet|Fortigate|v6.0.3|18433|utm:anomaly anomaly clear_session|7|deviceExternalId=FGT5 cat=utm:anomaly act=clear_session", O(Cef, &[("type", Some("utm")), ("action", Some("clear_session"))])),
            ("cef cat without colon, plain keys", b"0|Fortinet|FortiGate-100F|7.2.8,build1639 (GA)|0100032001|system event login|4|dvchost=TESTHOST vd=root cat=event subtype=system tz=+0100 tz=\"+0000\"", O(Cef, &[("type", Some("event")), ("subtype", Some("system")), ("devname", Some("TESTHOST")), ("tz", Some("+0100"))])),
            ("cef behind a bsd header", b"<189>Nov 13 08:45:47 FGT CEF:0|Fortinet|Fortigate|v7|13|traffic:forward close|3|src=1.2.3.4 act=close", O(Cef, &[("srcip", Some("1.2.3.4"))])),
            ("cef header with spaces, no host", b"CEF:0|Fortinet|Fortigate|v5.6.0|18433|anomaly:anomaly clear_ session|7|src=1.1.1.1", O(Cef, &[("srcip", Some("1.1.1.1"))])),
            ("cef other vendor", b"CEF:0|Cisco|ASA|9|1|x|3|src=1.1.1.1", E(ErrorKind::NotFortiGate, 6)),
            ("cef truncated header", b"CEF:0|Fortinet|Fortigate|v6", E(ErrorKind::Truncated, 27)),
            // --- JSON
            ("json body", br#"<189>{"date":"2024-01-01","type":"traffic","subtype":"forward","srcip":"10.0.0.1","srcport":443,"policyid":7,"action":"accept","ok":true,"nothing":null,"nested":{"a":[1,"]"]}}"#,
                O(Json, &[("srcport", Some("443")), ("policyid", Some("7")), ("ok", Some("true")), ("nothing", None), ("nested", Some(r#"{"a":[1,"]"]}"#))])),
            ("json escapes", br#"{"type":"event","msg":"a\"b\\c\/d\n\u00e9\ud83d\ude00"}"#, O(Json, &[("msg", Some("a\"b\\c/d\n\u{e9}\u{1F600}"))])),
            ("json behind rfc5424 header", br#"<189>1 2024-01-01T00:00:00Z fw - - - - {"type":"traffic", "srcip" : "2001:db8::1"}"#, O(Json, &[("srcip", Some("2001:db8::1"))])),
            ("json bad escape", br#"{"type":"a\q"}"#, E(ErrorKind::BadEscape, 10)),
            ("json bad surrogate", br#"{"type":"\ud800x"}"#, E(ErrorKind::BadEscape, 9)),
            ("json truncated", br#"{"type":"traffic","srcip":"1.2"#, E(ErrorKind::Truncated, 30)),
            ("json garbage", br#"{"type" "x"}"#, E(ErrorKind::BadJson, 8)),
            ("json not fortigate", br#"{"hello":"world"}"#, E(ErrorKind::NotFortiGate, 0)),
            // --- errors
            ("empty", b"\r\n", E(ErrorKind::Empty, 0)),
            ("pri too large", b"<192>type=traffic", E(ErrorKind::BadPri, 1)),
            ("pri not a number", b"<abc>type=traffic", E(ErrorKind::BadPri, 1)),
            ("pri leading zero", b"<01>type=traffic", E(ErrorKind::BadPri, 3)),
            ("pri unclosed", b"<18", E(ErrorKind::Truncated, 3)),
            ("pri only", b"<189>", E(ErrorKind::Truncated, 5)),
            ("not fortigate text", b"<13>hello world", E(ErrorKind::NotFortiGate, 4)),
            ("not fortigate kv", b"IN=eth0 OUT= SRC=10.0.0.1 DST=10.0.0.2", E(ErrorKind::NotFortiGate, 0)),
        ];
        for (name, input, expect) in cases {
            check(name, input, expect);
        }
    }

    #[test]
    fn accessors() {
        let r = parse(br#"<189>date=2024-05-01 devname="fw1" devid="FG1" vd="root" type="traffic" subtype="forward" srcip=2001:db8::7 dstip=198.51.100.9 srcport=5000 dstport=443 proto=6 srcintf="wan1" dstintf="lan" policyid=7 action="deny" logid="0000000013""#).expect("parses");
        assert_eq!(r.srcip(), Some("2001:db8::7".parse::<IpAddr>().expect("literal")));
        assert_eq!(r.dstip(), Some("198.51.100.9".parse::<IpAddr>().expect("literal")));
        assert_eq!((r.srcport(), r.dstport(), r.proto(), r.policyid()), (Some(5000), Some(443), Some(6), Some(7)));
        assert_eq!((r.action(), r.log_type(), r.subtype()), (Some("deny"), Some("traffic"), Some("forward")));
        assert_eq!((r.devname(), r.devid(), r.vd()), (Some("fw1"), Some("FG1"), Some("root")));
        assert_eq!((r.srcintf(), r.dstintf(), r.logid()), (Some("wan1"), Some("lan"), Some("0000000013")));
        assert_eq!(r.pri(), Some(Pri { facility: 23, severity: 5 }));
        assert!(!r.is_legacy());

        // FortiOS 4 aliases resolve through the accessors, not through `get`.
        let r = parse(b"Dec 23 11:13:03 date=2011-07-24 devname=D device_id=FGT9 log_id=0038016004 type=traffic status=deny src=10.3.3.3 dst=10.4.4.4 src_port=1111 dst_port=2222 src_int=N/A").expect("parses");
        assert!(r.is_legacy());
        assert_eq!(r.srcip(), Some("10.3.3.3".parse::<IpAddr>().expect("literal")));
        assert_eq!(r.dstip(), Some("10.4.4.4".parse::<IpAddr>().expect("literal")));
        assert_eq!((r.srcport(), r.dstport()), (Some(1111), Some(2222)));
        assert_eq!(
            (r.action(), r.devid(), r.logid(), r.srcintf()),
            (Some("deny"), Some("FGT9"), Some("0038016004"), Some("N/A"))
        );
        assert_eq!(r.get("srcip"), None);
        assert_eq!(r.skipped_tokens(), 0);
        assert_eq!(r.header(), &Header::Rfc3164 { timestamp: "Dec 23 11:13:03".into(), hostname: None });

        // status is not an action on a FortiOS 5+ line.
        let r = parse(br#"logid="0100032002" type="event" status="failed""#).expect("parses");
        assert_eq!(r.action(), None);

        // Not an address: text stays readable, the typed accessor says None.
        let r = parse(b"CEF:0|Fortinet|Fortigate|v6|1|x|3|src=example.com dst=N/A").expect("parses");
        assert_eq!((r.srcip_str(), r.srcip(), r.dstip()), (Some("example.com"), None, None));
        assert_eq!(r.cef_header().map(|h| h.vendor.as_ref()), Some("Fortinet"));
    }

    #[test]
    fn duplicates_and_borrowing() {
        let line = br#"tz="+0100" type=event tz="+0200" msg="a\"b" tz=x type=y"#;
        let r = parse(line).expect("parses");
        assert_eq!(r.get("tz"), Some("+0100"));
        assert_eq!(r.log_type(), Some("event"));
        assert_eq!(r.duplicate_keys(), 3);
        assert_eq!(r.len(), 6);
        let keys: Vec<&str> = r.fields().map(|(k, _)| k).collect();
        assert_eq!(keys, ["tz", "type", "msg"]);
        // Only the escaped value is a copy; everything else points into the message.
        let inside = |s: &str| line.as_ptr_range().contains(&s.as_ptr());
        for (key, value) in r.raw_fields() {
            assert!(inside(key), "{key}");
            assert_eq!(inside(value), key != "msg", "{key}={value}");
        }
    }

    #[test]
    fn non_utf8_is_lossy_per_value() {
        let r = parse(b"type=traffic srcip=10.0.0.1 msg=\"caf\xe9\" user=\xff\xfe").expect("parses");
        assert!(r.is_lossy());
        assert_eq!(r.srcip(), Some("10.0.0.1".parse::<IpAddr>().expect("literal")));
        assert_eq!(r.get("msg"), Some("caf\u{FFFD}"));
        assert_eq!(r.get("user"), Some("\u{FFFD}\u{FFFD}"));
        assert_eq!(r.raw_fields().next(), Some(("type", "traffic")));
    }

    #[test]
    fn rfc5424_header_fields() {
        let r = parse(b"<165>1 2003-10-11T22:14:15.003Z fw.example.com fortigate - ID47 [x@1 k=\"v\"] type=traffic")
            .expect("parses");
        assert_eq!(
            r.header(),
            &Header::Rfc5424(Box::new(Rfc5424Header {
                version: 1,
                timestamp: Some("2003-10-11T22:14:15.003Z".into()),
                hostname: Some("fw.example.com".into()),
                app_name: Some("fortigate".into()),
                procid: None,
                msgid: Some("ID47".into()),
                structured_data: Some("[x@1 k=\"v\"]".into()),
            }))
        );
        assert_eq!(r.pri().map(|p| (p.facility, p.severity, p.severity_name())), Some((20, 5, "notice")));
    }
}
