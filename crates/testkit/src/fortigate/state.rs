//! The emulated configuration database: four cmdb tables sharing one name space, group members, references, banned
//! IPs, and the FortiOS rules that make the client's life hard (duplicates, in-use, member limits, empty groups).
//!
//! Pure state, no I/O: every operation returns an [`Outcome`] that the HTTP layer turns into an envelope. Entries
//! are stored as FortiOS shows them: the table's default fields and a uuid ([`super::schema`]) under the fields
//! written.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use serde_json::{json, Map, Value};

use super::schema;

/// One cmdb table the emulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Address,
    Address6,
    Addrgrp,
    Addrgrp6,
}

impl Table {
    pub fn from_segment(s: &str) -> Option<Table> {
        match s {
            "address" => Some(Table::Address),
            "address6" => Some(Table::Address6),
            "addrgrp" => Some(Table::Addrgrp),
            "addrgrp6" => Some(Table::Addrgrp6),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Table::Address => "address",
            Table::Address6 => "address6",
            Table::Addrgrp => "addrgrp",
            Table::Addrgrp6 => "addrgrp6",
        }
    }

    pub fn is_group(self) -> bool {
        matches!(self, Table::Addrgrp | Table::Addrgrp6)
    }

    /// Tables whose entries may be members of a group of this table.
    fn member_tables(self) -> [Table; 2] {
        match self {
            Table::Addrgrp6 | Table::Address6 => [Table::Address6, Table::Addrgrp6],
            Table::Addrgrp | Table::Address => [Table::Address, Table::Addrgrp],
        }
    }
}

/// What a state operation produced: success (with GET results) or a FortiOS error.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Success; `results` is `Some` for GETs.
    Ok { results: Option<Value> },
    /// Error: HTTP status and FortiOS error code (`None` = no `error` field, as in the real 404 body).
    Err { http: u16, code: Option<i64>, cli_error: Option<&'static str> },
}

/// An error with no `error` field (the real 404 body, 400 on a bad path).
pub fn bare(http: u16) -> Outcome {
    Outcome::Err { http, code: None, cli_error: None }
}

fn ok() -> Outcome {
    Outcome::Ok { results: None }
}

/// An error with a FortiOS code and CLI text.
pub fn err(http: u16, code: i64, cli_error: &'static str) -> Outcome {
    Outcome::Err { http, code: Some(code), cli_error: Some(cli_error) }
}

/// Characters FortiOS refuses in the text of names and comments (reference §6c: `"` `'` `<` `>`, and `&` `#` `(`
/// `)` in some releases). Written here from the reference, not taken from the client, so the client's own
/// checks are tested.
pub const REFUSED_IN_TEXT: &[char] = &['"', '\'', '<', '>', '&', '#', '(', ')'];

/// The -651 answer for a text field holding a refused character, if `entry` has one in `name` or `comment`.
fn refused_text(entry: &Map<String, Value>) -> Option<Outcome> {
    let bad = |key: &str| entry.get(key).and_then(Value::as_str).is_some_and(|v| v.contains(REFUSED_IN_TEXT));
    if bad("name") {
        Some(err(424, -651, "name: invalid characters"))
    } else if bad("comment") {
        Some(err(424, -651, "comment: invalid characters"))
    } else {
        None
    }
}

/// Knobs that make the emulator behave like one FortiOS build or another.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Entries per group; one more answers -52 with HTTP 500.
    pub group_member_limit: usize,
    /// Entries per address table; one more answers -4 with HTTP 500.
    pub table_limit: usize,
    /// Older FortiOS: a group must keep at least one member (create and last-member delete answer -651).
    pub refuse_empty_groups: bool,
    /// HTTP status sent with -5 (duplicate): 500 on some builds, 424 on others.
    pub duplicate_status: u16,
}

/// One banned-IP (quarantine) entry of the monitor API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BannedEntry {
    pub ip: IpAddr,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds; 0 = never.
    pub expires: i64,
}

#[derive(Debug, Default)]
pub struct Db {
    /// name -> (table, entry). One name space across the four tables, as on FortiOS.
    objects: BTreeMap<String, (Table, Map<String, Value>)>,
    /// Names referenced from outside the emulated tables (a firewall policy).
    policy_refs: BTreeSet<String>,
    pub banned: Vec<BannedEntry>,
    pub revision: u64,
    /// Entries created so far (each gets [`schema::uuid_for`] of its number).
    created: u64,
}

/// `a.b.c.d/len` or `a.b.c.d m.m.m.m` -> `a.b.c.d m.m.m.m` (what FortiOS returns).
pub fn normalise_subnet(s: &str) -> Option<String> {
    let s = s.trim();
    let (ip, mask) = if let Some((ip, len)) = s.split_once('/') {
        let len: u32 = len.parse().ok()?;
        if len > 32 {
            return None;
        }
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        (ip.parse::<Ipv4Addr>().ok()?, Ipv4Addr::from(mask))
    } else if let Some((ip, mask)) = s.split_once(' ') {
        let mask: Ipv4Addr = mask.trim().parse().ok()?;
        let m = u32::from(mask);
        if m.leading_ones() + m.trailing_zeros() != 32 {
            return None;
        }
        (ip.parse::<Ipv4Addr>().ok()?, mask)
    } else {
        (s.parse::<Ipv4Addr>().ok()?, Ipv4Addr::BROADCAST)
    };
    Some(format!("{ip} {mask}"))
}

/// `2001:db8::7/128` (or a bare address) -> canonical `2001:db8::7/128`.
pub fn normalise_ip6(s: &str) -> Option<String> {
    let (ip, len) = s.trim().split_once('/').unwrap_or((s.trim(), "128"));
    let ip: std::net::Ipv6Addr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    (len <= 128).then(|| format!("{ip}/{len}"))
}

fn member_names(entry: &Map<String, Value>) -> Vec<String> {
    entry
        .get("member")
        .and_then(Value::as_array)
        .map(|m| m.iter().filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_string)).collect())
        .unwrap_or_default()
}

fn member_list(names: &[String]) -> Value {
    Value::Array(names.iter().map(|n| json!({"name": n, "q_origin_key": n})).collect())
}

impl Db {
    fn bump(&mut self) {
        self.revision += 1;
    }

    pub fn get(&self, name: &str) -> Option<&(Table, Map<String, Value>)> {
        self.objects.get(name)
    }

    pub fn entries(&self, table: Table) -> Vec<Map<String, Value>> {
        self.objects.values().filter(|(t, _)| *t == table).map(|(_, e)| e.clone()).collect()
    }

    pub fn names(&self, table: Table) -> Vec<String> {
        self.objects.iter().filter(|(_, (t, _))| *t == table).map(|(n, _)| n.clone()).collect()
    }

    pub fn members(&self, group: &str) -> Option<Vec<String>> {
        match self.objects.get(group) {
            Some((t, e)) if t.is_group() => Some(member_names(e)),
            _ => None,
        }
    }

    pub fn add_policy_ref(&mut self, name: &str) {
        self.policy_refs.insert(name.to_string());
    }

    fn is_referenced(&self, name: &str) -> bool {
        self.references(name) > 0
    }

    /// How many objects reference `name`: the groups holding it and the policies using it (`q_ref`).
    pub fn references(&self, name: &str) -> usize {
        usize::from(self.policy_refs.contains(name))
            + self.objects.values().filter(|(t, e)| t.is_group() && member_names(e).iter().any(|m| m == name)).count()
    }

    /// A new entry as FortiOS stores it: the table's defaults, a fresh uuid, then the fields written (meta fields
    /// such as `q_origin_key`, sent back by clients that PUT what they GET, are not stored).
    fn fill(&mut self, table: Table, written: Map<String, Value>) -> Map<String, Value> {
        self.created += 1;
        let mut entry = schema::defaults(table);
        entry.insert("uuid".into(), schema::uuid_for(self.created).into());
        entry.extend(written.into_iter().filter(|(k, _)| !k.starts_with("q_")));
        entry
    }

    /// Inserts an entry without the API's checks (test seeding); fills the defaults and normalises the address
    /// fields.
    pub fn seed(&mut self, table: Table, entry: Map<String, Value>) {
        let mut entry = self.fill(table, entry);
        normalise_fields(table, &mut entry);
        if let Some(name) = entry.get("name").and_then(Value::as_str).map(str::to_string) {
            self.objects.insert(name, (table, entry));
            self.bump();
        }
    }

    /// `?action=default`: what a new entry of `table` holds before anything is written.
    pub fn default_entry(table: Table) -> Value {
        let mut entry = schema::defaults(table);
        entry.insert("name".into(), "".into());
        entry.insert("uuid".into(), "00000000-0000-0000-0000-000000000000".into());
        Value::Object(entry)
    }

    /// `GET /cmdb/firewall/{table}/{name}`: the real 404 carries no `error` field.
    pub fn get_entry(&self, table: Table, name: &str) -> Outcome {
        match self.objects.get(name) {
            Some((t, e)) if *t == table => Outcome::Ok { results: Some(Value::Array(vec![with_origin_key(e)])) },
            _ => bare(404),
        }
    }

    pub fn create(&mut self, table: Table, body: &Value, rules: &Rules) -> Outcome {
        let Some(written) = body.as_object().cloned() else {
            return err(400, -651, "body is not a JSON object");
        };
        let Some(name) = written.get("name").and_then(Value::as_str).map(str::to_string) else {
            return err(424, -651, "name: missing");
        };
        if name.is_empty() || name.chars().count() > 79 {
            return err(424, -651, "name: invalid length");
        }
        if let Some(refusal) = refused_text(&written) {
            return refusal;
        }
        if let Some((t, _)) = self.objects.get(&name) {
            return if *t == table {
                err(rules.duplicate_status, -5, "A duplicate entry already exists.")
            } else if table.is_group() != t.is_group() {
                err(500, -163, "name clashes with an address/addrgrp of the same name")
            } else {
                err(500, -5, "A duplicate entry already exists.")
            };
        }
        if let Some(c) = written.get("comment").and_then(Value::as_str) {
            if c.chars().count() > 255 {
                return err(424, -651, "comment: too long");
            }
        }
        let mut entry = self.fill(table, written);
        match table {
            Table::Address | Table::Address6 => {
                if self.objects.values().filter(|(t, _)| *t == table).count() >= rules.table_limit {
                    return err(500, -4, "Maximum number of entries has been reached.");
                }
                if !normalise_fields(table, &mut entry) {
                    return err(424, -651, "subnet/ip6: invalid");
                }
            }
            Table::Addrgrp | Table::Addrgrp6 => {
                let members = member_names(&entry);
                if members.is_empty() && rules.refuse_empty_groups {
                    return err(500, -651, "member: empty group is not allowed");
                }
                if members.len() > rules.group_member_limit {
                    return err(500, -52, "group member limit reached");
                }
                for m in &members {
                    if !self.member_fits(table, m) {
                        return err(424, -3, "member: entry not found");
                    }
                }
                entry.insert("member".into(), member_list(&members));
            }
        }
        self.objects.insert(name, (table, entry));
        self.bump();
        ok()
    }

    fn member_fits(&self, group_table: Table, member: &str) -> bool {
        matches!(self.objects.get(member), Some((t, _)) if group_table.member_tables().contains(t))
    }

    /// PUT: merges the given fields (a `member` list replaces the whole list, as on FortiOS).
    pub fn update(&mut self, table: Table, name: &str, body: &Value, rules: &Rules) -> Outcome {
        let Some(fields) = body.as_object().cloned() else {
            return err(400, -651, "body is not a JSON object");
        };
        let Some((t, existing)) = self.objects.get(name) else {
            return err(404, -3, "Entry not found.");
        };
        if *t != table {
            return err(404, -3, "Entry not found.");
        }
        if let Some(refusal) = refused_text(&fields) {
            return refusal;
        }
        let mut entry = existing.clone();
        for (k, v) in fields {
            if k != "name" && !k.starts_with("q_") {
                entry.insert(k, v);
            }
        }
        if table.is_group() {
            let members = member_names(&entry);
            if members.is_empty() && rules.refuse_empty_groups {
                return err(500, -651, "member: empty group is not allowed");
            }
            if members.len() > rules.group_member_limit {
                return err(500, -52, "group member limit reached");
            }
            if members.iter().any(|m| !self.member_fits(table, m)) {
                return err(424, -3, "member: entry not found");
            }
            entry.insert("member".into(), member_list(&members));
        } else if !normalise_fields(table, &mut entry) {
            return err(424, -651, "subnet/ip6: invalid");
        }
        self.objects.insert(name.to_string(), (table, entry));
        self.bump();
        ok()
    }

    pub fn delete(&mut self, table: Table, name: &str) -> Outcome {
        match self.objects.get(name) {
            Some((t, _)) if *t == table => {}
            _ => return err(404, -3, "Entry not found."),
        }
        if self.is_referenced(name) {
            return err(500, -23, "Entry is used.");
        }
        self.objects.remove(name);
        self.bump();
        ok()
    }

    /// `DELETE` on the collection: purges every unreferenced entry of the table (the danger the client must avoid).
    pub fn purge(&mut self, table: Table) -> Outcome {
        let victims: Vec<String> = self.names(table).into_iter().filter(|n| !self.is_referenced(n)).collect();
        for v in victims {
            self.objects.remove(&v);
        }
        self.bump();
        ok()
    }

    pub fn get_members(&self, table: Table, group: &str) -> Outcome {
        match self.objects.get(group) {
            Some((t, e)) if *t == table => Outcome::Ok { results: Some(member_list(&member_names(e))) },
            _ => err(404, -3, "Entry not found."),
        }
    }

    pub fn get_member(&self, table: Table, group: &str, member: &str) -> Outcome {
        match self.objects.get(group) {
            Some((t, e)) if *t == table && member_names(e).iter().any(|m| m == member) => {
                Outcome::Ok { results: Some(json!([{"name": member, "q_origin_key": member}])) }
            }
            _ => bare(404),
        }
    }

    pub fn add_member(&mut self, table: Table, group: &str, body: &Value, rules: &Rules) -> Outcome {
        let Some(member) = body.get("name").and_then(Value::as_str).map(str::to_string) else {
            return err(424, -651, "name: missing");
        };
        let mut names = match self.objects.get(group) {
            Some((t, e)) if *t == table => member_names(e),
            _ => return err(404, -3, "Entry not found."),
        };
        if member == group {
            return err(424, -651, "a group cannot contain itself");
        }
        if !self.member_fits(table, &member) {
            return err(424, -3, "Entry not found.");
        }
        if names.contains(&member) {
            return err(rules.duplicate_status, -5, "A duplicate entry already exists.");
        }
        if names.len() >= rules.group_member_limit {
            return err(500, -52, "group member limit reached");
        }
        names.push(member);
        self.set_members(group, &names);
        ok()
    }

    pub fn remove_member(&mut self, table: Table, group: &str, member: &str, rules: &Rules) -> Outcome {
        let mut names = match self.objects.get(group) {
            Some((t, e)) if *t == table => member_names(e),
            _ => return err(404, -3, "Entry not found."),
        };
        let before = names.len();
        names.retain(|n| n != member);
        if names.len() == before {
            return err(404, -3, "Entry not found.");
        }
        if names.is_empty() && rules.refuse_empty_groups {
            return err(500, -651, "member: empty group is not allowed");
        }
        self.set_members(group, &names);
        ok()
    }

    fn set_members(&mut self, group: &str, names: &[String]) {
        if let Some((_, e)) = self.objects.get_mut(group) {
            e.insert("member".into(), member_list(names));
        }
        self.bump();
    }
}

fn with_origin_key(e: &Map<String, Value>) -> Value {
    let mut e = e.clone();
    if let Some(n) = e.get("name").cloned() {
        e.insert("q_origin_key".into(), n);
    }
    Value::Object(e)
}

/// Results of a collection GET, with `q_origin_key` like FortiOS 6.4+.
pub fn listing(entries: Vec<Map<String, Value>>) -> Vec<Value> {
    entries.iter().map(with_origin_key).collect()
}

/// Fills defaults and normalises `subnet` / `ip6`; false if they do not parse.
fn normalise_fields(table: Table, entry: &mut Map<String, Value>) -> bool {
    match table {
        Table::Address => {
            let ty =
                entry.entry("type").or_insert_with(|| Value::from("ipmask")).as_str().unwrap_or("ipmask").to_string();
            if ty == "ipmask" {
                let subnet = entry.get("subnet").and_then(Value::as_str).unwrap_or("0.0.0.0/0");
                match normalise_subnet(subnet) {
                    Some(s) => {
                        // FortiOS 7.x prints an ipmask entry's address and mask in start-ip / end-ip too.
                        if let Some((ip, mask)) = s.split_once(' ') {
                            entry.insert("start-ip".into(), Value::from(ip));
                            entry.insert("end-ip".into(), Value::from(mask));
                        }
                        entry.insert("subnet".into(), Value::from(s));
                    }
                    None => return false,
                }
            }
            entry.entry("comment").or_insert_with(|| Value::from(""));
            true
        }
        Table::Address6 => {
            let ty = entry
                .entry("type")
                .or_insert_with(|| Value::from("ipprefix"))
                .as_str()
                .unwrap_or("ipprefix")
                .to_string();
            if ty == "ipprefix" {
                let ip6 = entry.get("ip6").and_then(Value::as_str).unwrap_or("::/0");
                match normalise_ip6(ip6) {
                    Some(s) => {
                        entry.insert("ip6".into(), Value::from(s));
                    }
                    None => return false,
                }
            }
            entry.entry("comment").or_insert_with(|| Value::from(""));
            true
        }
        Table::Addrgrp | Table::Addrgrp6 => {
            entry.entry("comment").or_insert_with(|| Value::from(""));
            entry.entry("member").or_insert_with(|| Value::Array(vec![]));
            true
        }
    }
}

/// One `filter=` expression: `field==v`, `field!=v`, `field=@v` (contains), `field!@v`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    field: String,
    op: FilterOp,
    value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FilterOp {
    Eq,
    Ne,
    Contains,
    NotContains,
}

impl Filter {
    /// Parses one expression; `None` if no known operator.
    pub fn parse(s: &str) -> Option<Filter> {
        const OPS: [(&str, FilterOp); 4] =
            [("==", FilterOp::Eq), ("!=", FilterOp::Ne), ("=@", FilterOp::Contains), ("!@", FilterOp::NotContains)];
        let (at, op, len) =
            OPS.iter().filter_map(|(tok, op)| s.find(tok).map(|i| (i, *op, tok.len()))).min_by_key(|(i, _, _)| *i)?;
        Some(Filter { field: s[..at].to_string(), op, value: s[at + len..].to_string() })
    }

    pub fn matches(&self, entry: &Map<String, Value>) -> bool {
        let v = match entry.get(&self.field) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        match self.op {
            FilterOp::Eq => v == self.value,
            FilterOp::Ne => v != self.value,
            FilterOp::Contains => v.contains(&self.value),
            FilterOp::NotContains => !v.contains(&self.value),
        }
    }
}

/// `filter` groups: each `filter=` parameter is ANDed; commas inside one parameter are ORed.
pub fn matches_all(groups: &[Vec<Filter>], entry: &Map<String, Value>) -> bool {
    groups.iter().all(|any| any.iter().any(|f| f.matches(entry)))
}

/// `format=name|comment` keeps only these fields.
pub fn project(entry: Value, fields: Option<&[String]>) -> Value {
    match (entry, fields) {
        (Value::Object(m), Some(keep)) => Value::Object(m.into_iter().filter(|(k, _)| keep.contains(k)).collect()),
        (e, _) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_normalise_to_dotted_mask() {
        let cases = [
            ("198.51.100.7/32", Some("198.51.100.7 255.255.255.255")),
            ("198.51.100.7", Some("198.51.100.7 255.255.255.255")),
            ("10.0.0.0/8", Some("10.0.0.0 255.0.0.0")),
            ("10.0.0.0 255.255.0.0", Some("10.0.0.0 255.255.0.0")),
            ("10.0.0.0 255.0.255.0", None),
            ("10.0.0.0/33", None),
            ("nope", None),
        ];
        for (input, expected) in cases {
            assert_eq!(normalise_subnet(input).as_deref(), expected, "{input}");
        }
    }

    #[test]
    fn filters_parse_and_match() {
        let mut e = Map::new();
        e.insert("name".into(), "misp-1.2.3.4".into());
        e.insert("comment".into(), "fortimisp 2025-01-01T00:00:00Z misp-event=1".into());
        let cases = [
            ("name==misp-1.2.3.4", true),
            ("name!=misp-1.2.3.4", false),
            ("comment=@fortimisp ", true),
            ("comment!@fortimisp", false),
            ("comment=@a=b", false),
        ];
        for (f, expected) in cases {
            assert_eq!(Filter::parse(f).expect(f).matches(&e), expected, "{f}");
        }
        assert_eq!(Filter::parse("nameXvalue"), None);
    }
}
