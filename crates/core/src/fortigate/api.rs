//! One typed method per FortiOS REST call, on [`Transport`]: address and addrgrp tables (cmdb), system status
//! and banned IPs (monitor). With `transport`, the only code that knows FortiOS paths, body shapes and fields.
//! Knows nothing of block groups: a group here is any addrgrp.
//!
//! Idempotent writes turn "already exists" / "already gone" into [`Change::Unchanged`] rather than errors.

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use reqwest::Method;
use serde_json::{json, Value};

use super::objects::{Comment, Family, ObjectName};
use super::transport::{classify, Endpoint, Envelope, Table, Transport};
use super::Error;

/// Page size of collection GETs.
const PAGE: usize = 1000;

/// Result of an idempotent write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The box changed.
    Applied,
    /// Nothing to do: already exists / already gone / already a member / not a member.
    Unchanged,
}

/// `GET /api/v2/monitor/system/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemStatus {
    /// E.g. `v7.4.4`.
    pub version: String,
    pub build: Option<u64>,
    pub serial: Option<String>,
    pub hostname: Option<String>,
}

impl SystemStatus {
    /// `v7.4.4` -> `(7, 4, 4)`, for feature detection.
    pub fn version_triple(&self) -> Option<(u32, u32, u32)> {
        let mut parts = self.version.trim_start_matches('v').split('.').map(|p| p.parse::<u32>().ok());
        Some((parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0)))
    }
}

/// An address or address6 entry as read from the box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressEntry {
    pub name: String,
    pub family: Family,
    /// `subnet` (dotted mask or CIDR) or `ip6`, if the entry has one that parses.
    pub network: Option<IpNet>,
    pub comment: String,
}

/// An addrgrp / addrgrp6 entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub members: Vec<String>,
    pub comment: String,
}

/// A group read with `with_meta=1`: the group, and how many objects (policies, other groups) reference it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMeta {
    pub group: Group,
    /// FortiOS's `q_ref`; `None` when the box did not send it.
    pub references: Option<u64>,
}

/// One banned-IP (quarantine) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BannedIp {
    pub ip: IpAddr,
    pub created: Option<DateTime<Utc>>,
    /// `None` = never expires.
    pub expires: Option<DateTime<Utc>>,
    pub source: Option<String>,
}

impl Transport {
    /// `GET /api/v2/monitor/system/status`: version for feature detection (also a cheap auth check).
    pub async fn system_status(&self) -> Result<SystemStatus, Error> {
        let env = self.call(Method::GET, Endpoint::Monitor("system/status"), &[], None, None).await?;
        let version =
            env.version.clone().ok_or_else(|| Error::Protocol { detail: "system status without version".into() })?;
        Ok(SystemStatus {
            version,
            build: env.build,
            serial: env.serial.clone(),
            hostname: env.results.get("hostname").and_then(Value::as_str).map(str::to_string),
        })
    }

    /// One address (v4) or address6 entry by name (any name, legacy `a.b.c.d/32` included).
    pub async fn get_address(&self, family: Family, name: &str) -> Result<Option<AddressEntry>, Error> {
        let endpoint = Endpoint::Entry(Table::addresses(family), name);
        match self.call(Method::GET, endpoint, &[], None, Some(name)).await {
            Ok(env) => Ok(first_result(&env).map(|e| address_entry(family, e))),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST` an address (`/32`, type `ipmask`) or address6 (`/128`, type `ipprefix`) named `name`.
    /// -5 (already exists) is [`Change::Unchanged`]; the caller decides whether the existing object is ours.
    pub async fn create_address(&self, name: &ObjectName, ip: IpAddr, comment: &Comment) -> Result<Change, Error> {
        let family = Family::of(ip);
        let body = match ip {
            IpAddr::V4(v4) => {
                json!({"name": name.as_str(), "type": "ipmask", "subnet": format!("{v4}/32"),
                                     "comment": comment.as_str()})
            }
            IpAddr::V6(v6) => {
                json!({"name": name.as_str(), "type": "ipprefix", "ip6": format!("{v6}/128"),
                                     "comment": comment.as_str()})
            }
        };
        self.create(Table::addresses(family), name.as_str(), &body).await
    }

    /// `POST` to a collection; -5 = [`Change::Unchanged`].
    async fn create(&self, table: Table, name: &str, body: &Value) -> Result<Change, Error> {
        match self.call(Method::POST, Endpoint::Collection(table), &[], Some(body), Some(name)).await {
            Ok(_) => Ok(Change::Applied),
            Err(Error::AlreadyExists { .. }) => Ok(Change::Unchanged),
            Err(e) => Err(e),
        }
    }

    /// `DELETE` one address entry by name. -3/404 = [`Change::Unchanged`]; -23 = [`Error::InUse`].
    /// Does not check ownership: the domain operations do.
    pub async fn delete_address(&self, family: Family, name: &str) -> Result<Change, Error> {
        self.delete(Table::addresses(family), name).await
    }

    async fn delete(&self, table: Table, name: &str) -> Result<Change, Error> {
        match self.call(Method::DELETE, Endpoint::Entry(table, name), &[], None, Some(name)).await {
            Ok(_) => Ok(Change::Applied),
            Err(Error::NotFound { .. }) => Ok(Change::Unchanged),
            Err(e) => Err(e),
        }
    }

    /// All entries of the address (v4) or address6 table matching `filter` (FortiOS syntax, e.g.
    /// `comment=@fortimisp `), only the fields `name|comment|subnet` (or `ip6`), paged with `start`/`count`.
    pub(crate) async fn list_addresses(
        &self,
        family: Family,
        filter: Option<&str>,
    ) -> Result<Vec<AddressEntry>, Error> {
        let format = match family {
            Family::V4 => "name|comment|subnet",
            Family::V6 => "name|comment|ip6",
        };
        let mut out = Vec::new();
        let mut start = 0usize;
        loop {
            let (start_s, count_s) = (start.to_string(), PAGE.to_string());
            let mut query = vec![("format", format), ("start", start_s.as_str()), ("count", count_s.as_str())];
            if let Some(f) = filter {
                query.push(("filter", f));
            }
            let env =
                self.call(Method::GET, Endpoint::Collection(Table::addresses(family)), &query, None, None).await?;
            let page = env
                .results
                .as_array()
                .ok_or_else(|| Error::Protocol { detail: "collection results is not an array".into() })?;
            out.extend(page.iter().map(|e| address_entry(family, e)));
            if page.len() < PAGE {
                return Ok(out);
            }
            start += page.len();
        }
    }

    /// One group (`None` if missing).
    pub async fn get_group(&self, family: Family, name: &str) -> Result<Option<Group>, Error> {
        let endpoint = Endpoint::Entry(Table::groups(family), name);
        match self.call(Method::GET, endpoint, &[], None, Some(name)).await {
            Ok(env) => Ok(first_result(&env).map(|g| Group {
                name: str_field(g, "name").unwrap_or(name).to_string(),
                members: member_names(g.get("member")),
                comment: str_field(g, "comment").unwrap_or_default().to_string(),
            })),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One group with its reference count (`with_meta=1`, `None` if missing).
    pub async fn group_with_meta(&self, family: Family, name: &str) -> Result<Option<GroupMeta>, Error> {
        let endpoint = Endpoint::Entry(Table::groups(family), name);
        match self.call(Method::GET, endpoint, &[("with_meta", "1")], None, Some(name)).await {
            Ok(env) => Ok(first_result(&env).map(|g| GroupMeta {
                group: Group {
                    name: str_field(g, "name").unwrap_or(name).to_string(),
                    members: member_names(g.get("member")),
                    comment: str_field(g, "comment").unwrap_or_default().to_string(),
                },
                references: g.get("q_ref").and_then(Value::as_u64),
            })),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST` a group with initial members; -5 = [`Change::Unchanged`].
    pub async fn create_group(
        &self,
        family: Family,
        name: &str,
        members: &[&str],
        comment: &str,
    ) -> Result<Change, Error> {
        let member: Vec<Value> = members.iter().map(|m| json!({"name": m})).collect();
        let body = json!({"name": name, "member": member, "comment": comment});
        self.create(Table::groups(family), name, &body).await
    }

    /// Member names of a group via the child table (`GET …/addrgrp/{g}/member`).
    pub async fn group_members(&self, family: Family, group: &str) -> Result<Vec<String>, Error> {
        let env =
            self.call(Method::GET, Endpoint::Members(Table::groups(family), group), &[], None, Some(group)).await?;
        Ok(member_names(Some(&env.results)))
    }

    /// Whether `member` is in `group` (`GET …/member/{m}`, 404 = no).
    pub async fn is_member(&self, family: Family, group: &str, member: &str) -> Result<bool, Error> {
        let endpoint = Endpoint::Member(Table::groups(family), group, member);
        match self.call(Method::GET, endpoint, &[], None, Some(member)).await {
            Ok(env) => Ok(first_result(&env).is_some()),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Child-table add (`POST …/addrgrp/{g}/member {"name": m}`). -5 = [`Change::Unchanged`]; -4/-52 =
    /// [`Error::Full`] naming the group; a missing group or member = [`Error::NotFound`].
    pub async fn add_member(&self, family: Family, group: &str, member: &str) -> Result<Change, Error> {
        let body = json!({"name": member});
        let endpoint = Endpoint::Members(Table::groups(family), group);
        match self.call(Method::POST, endpoint, &[], Some(&body), Some(member)).await {
            Ok(_) => Ok(Change::Applied),
            Err(Error::AlreadyExists { .. }) => Ok(Change::Unchanged),
            Err(Error::Full { code, .. }) => Err(Error::Full { name: group.to_string(), code }),
            Err(e) => Err(e),
        }
    }

    /// Child-table remove (`DELETE …/addrgrp/{g}/member/{m}`). -3/404 = [`Change::Unchanged`].
    pub async fn remove_member(&self, family: Family, group: &str, member: &str) -> Result<Change, Error> {
        let endpoint = Endpoint::Member(Table::groups(family), group, member);
        match self.call(Method::DELETE, endpoint, &[], None, Some(member)).await {
            Ok(_) => Ok(Change::Applied),
            Err(Error::NotFound { .. }) => Ok(Change::Unchanged),
            Err(e) => Err(e),
        }
    }

    // ---- banned-IP (quarantine) backend ----

    /// `POST /api/v2/monitor/user/banned/add_users`; `expiry` `None` = no expiry (0).
    pub async fn ban(&self, ip: IpAddr, expiry: Option<Duration>) -> Result<(), Error> {
        let secs = expiry.map_or(0, |d| d.as_secs().max(1));
        let body = json!({"ip_addresses": [ip.to_string()], "expiry": secs});
        self.banned_action("user/banned/add_users", ip, &body).await
    }

    /// `POST /api/v2/monitor/user/banned/add_users` with an empty list: bans nobody, and proves the profile may
    /// ban (a profile without the permission answers 403 before the list is read).
    pub async fn ban_nobody(&self) -> Result<(), Error> {
        let body = json!({"ip_addresses": [], "expiry": 1});
        self.call(Method::POST, Endpoint::Monitor("user/banned/add_users"), &[], Some(&body), None).await.map(drop)
    }

    /// `POST /api/v2/monitor/user/banned/clear_users`.
    pub async fn unban(&self, ip: IpAddr) -> Result<(), Error> {
        let body = json!({"ip_addresses": [ip.to_string()]});
        self.banned_action("user/banned/clear_users", ip, &body).await
    }

    async fn banned_action(&self, action: &'static str, ip: IpAddr, body: &Value) -> Result<(), Error> {
        let ip = ip.to_string();
        self.call(Method::POST, Endpoint::Monitor(action), &[], Some(body), Some(&ip)).await.map(drop)
    }

    /// `GET /api/v2/monitor/user/banned`.
    pub async fn list_banned(&self) -> Result<Vec<BannedIp>, Error> {
        let env = self.call(Method::GET, Endpoint::Monitor("user/banned"), &[], None, None).await?;
        let epoch = |v: Option<&Value>| {
            v.and_then(Value::as_i64).filter(|s| *s > 0).and_then(|s| DateTime::from_timestamp(s, 0))
        };
        Ok(env
            .results
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|b| {
                        Some(BannedIp {
                            ip: str_field(b, "ip_address")?.parse().ok()?,
                            created: epoch(b.get("created")),
                            expires: epoch(b.get("expires")),
                            source: str_field(b, "source").map(str::to_string),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// Reads one answer as every request does (classification, then the typed readers on success). For the fuzz
/// targets and the bad-input tests; re-exported as `fortigate::classify_response`.
pub(crate) fn read_response(status: u16, body: &[u8]) -> Result<usize, Error> {
    let env = classify(status, None, body, Some("fuzz"))?;
    let mut seen = member_names(Some(&env.results)).len();
    if let Some(first) = first_result(&env) {
        for family in [Family::V4, Family::V6] {
            seen += usize::from(address_entry(family, first).network.is_some());
        }
        seen += member_names(first.get("member")).len();
    }
    Ok(seen)
}

pub(crate) fn first_result(env: &Envelope) -> Option<&Value> {
    match &env.results {
        Value::Array(items) => items.first(),
        Value::Object(_) => Some(&env.results),
        _ => None,
    }
}

pub(crate) fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn member_names(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|m| m.iter().filter_map(|e| str_field(e, "name").map(str::to_string)).collect())
        .unwrap_or_default()
}

/// `a.b.c.d m.m.m.m` (what FortiOS returns), `a.b.c.d/len`, or an `ip6` prefix.
pub(crate) fn parse_network(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Some((ip, mask)) = s.split_once(' ') {
        let ip: IpAddr = ip.parse().ok()?;
        let mask: IpAddr = mask.trim().parse().ok()?;
        return IpNet::with_netmask(ip, mask).ok();
    }
    s.parse::<IpNet>().ok().or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

fn address_entry(family: Family, e: &Value) -> AddressEntry {
    let field = match family {
        Family::V4 => "subnet",
        Family::V6 => "ip6",
    };
    AddressEntry {
        name: str_field(e, "name").unwrap_or_default().to_string(),
        family,
        network: str_field(e, field).and_then(parse_network),
        comment: str_field(e, "comment").unwrap_or_default().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_in_both_forms() {
        let cases = [
            ("198.51.100.7 255.255.255.255", Some("198.51.100.7/32")),
            ("10.0.0.0 255.0.0.0", Some("10.0.0.0/8")),
            ("198.51.100.7/32", Some("198.51.100.7/32")),
            ("2001:db8::7/128", Some("2001:db8::7/128")),
            ("10.0.0.0 255.0.255.0", None),
            ("", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_network(s).map(|n| n.to_string()).as_deref(), want, "{s:?}");
        }
    }

    #[test]
    fn versions_parse() {
        let s = |v: &str| SystemStatus { version: v.into(), build: None, serial: None, hostname: None };
        assert_eq!(s("v7.4.4").version_triple(), Some((7, 4, 4)));
        assert_eq!(s("v6.2").version_triple(), Some((6, 2, 0)));
        assert_eq!(s("garbage").version_triple(), None);
    }
}
