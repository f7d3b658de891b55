//! The threat-feed calls (FortiOS 7.2.1+ push API, entry-list status, the feed objects), typed, on
//! [`Transport`]. Facts: reference §6b. Knows nothing of what a feed should hold (`core::feed` does).
//!
//! The entry-list status's key names vary between releases (reference §6b), so [`FeedStatus`] reads several
//! spellings and leaves a field `None` rather than guess.

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use reqwest::Method;
use serde_json::{json, Value};

use super::api::{first_result, str_field};
use super::transport::{Endpoint, Table, Transport};
use super::Error;

/// One push command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushCommand {
    Add,
    Remove,
    /// Replaces the whole list.
    Snapshot,
}

impl PushCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            PushCommand::Add => "add",
            PushCommand::Remove => "remove",
            PushCommand::Snapshot => "snapshot",
        }
    }
}

/// A feed object (`config system external-resource`), the fields fortimisp checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalResource {
    pub name: String,
    /// `address` for an IP feed.
    pub kind: String,
    pub resource: String,
    /// `feed` (pull) or `push`; FortiOS before 7.2.1 has no such key (`None`: pull).
    pub update_method: Option<String>,
    pub status: Option<String>,
    pub username: Option<String>,
    /// Minutes.
    pub refresh_rate: Option<u64>,
}

/// What the FortiGate reports about one feed (`monitor/system/external-resource/entry-list`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedStatus {
    /// Valid entries loaded.
    pub loaded: Option<u64>,
    pub invalid: Option<u64>,
    /// The device's entry limit.
    pub limit: Option<u64>,
    /// Entries beyond the limit were dropped at the last load.
    pub overflow: Option<bool>,
    pub last_update: Option<DateTime<Utc>>,
    /// E.g. `ok`, or the reason the last fetch failed.
    pub file_status: Option<String>,
}

impl Transport {
    /// `POST /api/v2/monitor/system/external-resource/dynamic`: one `command` on feed `name`.
    pub async fn push_feed(&self, name: &str, command: PushCommand, entries: &[IpNet]) -> Result<(), Error> {
        let entries: Vec<String> = entries.iter().map(|net| entry_text(*net)).collect();
        let body = json!({"commands": [{"name": name, "command": command.as_str(), "entries": entries}]});
        self.call(Method::POST, Endpoint::Monitor("system/external-resource/dynamic"), &[], Some(&body), Some(name))
            .await
            .map(drop)
    }

    /// `GET /api/v2/monitor/system/external-resource/entry-list?mkey=<name>&status_only=true`.
    pub async fn feed_status(&self, name: &str) -> Result<FeedStatus, Error> {
        let query = [("mkey", name), ("status_only", "true")];
        let env = self
            .call(Method::GET, Endpoint::Monitor("system/external-resource/entry-list"), &query, None, Some(name))
            .await?;
        let results = match &env.results {
            Value::Array(items) => items.first().cloned().unwrap_or(Value::Null),
            other => other.clone(),
        };
        Ok(read_status(&results))
    }

    /// One feed object, `None` if there is none of that name.
    pub async fn external_resource(&self, name: &str) -> Result<Option<ExternalResource>, Error> {
        let endpoint = Endpoint::Entry(Table::ExternalResource, name);
        match self.call(Method::GET, endpoint, &[], None, Some(name)).await {
            Ok(env) => Ok(first_result(&env).map(|v| ExternalResource {
                name: str_field(v, "name").unwrap_or(name).to_string(),
                kind: str_field(v, "type").unwrap_or_default().to_string(),
                resource: str_field(v, "resource").unwrap_or_default().to_string(),
                update_method: str_field(v, "update-method").map(str::to_string),
                status: str_field(v, "status").map(str::to_string),
                username: str_field(v, "username").filter(|u| !u.is_empty()).map(str::to_string),
                refresh_rate: v.get("refresh-rate").and_then(number),
            })),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// One feed entry as FortiOS reads it, in a served file and in a push alike: a host network as the bare address,
/// others as CIDR.
#[derive(Debug, Clone, Copy)]
pub struct EntryText(pub IpNet);

impl std::fmt::Display for EntryText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.prefix_len() == self.0.max_prefix_len() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// [`EntryText`] as a string.
pub fn entry_text(net: IpNet) -> String {
    EntryText(net).to_string()
}

/// The entry-list status, read defensively.
pub(crate) fn read_status(v: &Value) -> FeedStatus {
    let first_number = |keys: &[&str]| keys.iter().find_map(|k| v.get(*k).and_then(number));
    let overflow = ["overflow", "is_overflow", "entry_overflow"].iter().find_map(|k| match v.get(*k)? {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => Some(n.as_u64()? != 0),
        Value::String(s) => match s.as_str() {
            "true" | "yes" | "enable" | "1" => Some(true),
            "false" | "no" | "disable" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    });
    FeedStatus {
        loaded: first_number(&["valid_count", "valid_entries", "entry_count", "count"]),
        invalid: first_number(&["invalid_count", "invalid_entries"]),
        limit: first_number(&["limit", "entry_limit", "max_entries"]),
        overflow,
        last_update: first_number(&["last_content_update_time", "last_update", "last_update_time"])
            .filter(|s| *s > 0)
            .and_then(|s| DateTime::from_timestamp(s as i64, 0)),
        file_status: ["resource_file_status", "status"].iter().find_map(|k| str_field(v, k)).map(str::to_string),
    }
}

/// A number sent as a JSON number or as a string of digits.
fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_read_under_each_spelling_and_missing_keys_stay_none() {
        let a = read_status(&json!({"status": "enable", "resource_file_status": "ok",
            "last_content_update_time": 1764756000, "valid_count": 12, "invalid_count": 1, "limit": 131072,
            "overflow": false}));
        assert_eq!(a.loaded, Some(12));
        assert_eq!(a.invalid, Some(1));
        assert_eq!(a.limit, Some(131072));
        assert_eq!(a.overflow, Some(false));
        assert_eq!(a.file_status.as_deref(), Some("ok"));
        assert_eq!(a.last_update.unwrap().timestamp(), 1764756000);
        let b = read_status(&json!({"entry_count": "7", "entry_limit": "300000", "is_overflow": 1,
            "last_content_update_time": 0}));
        assert_eq!((b.loaded, b.limit, b.overflow, b.last_update), (Some(7), Some(300000), Some(true), None));
        assert_eq!(read_status(&json!({"entries": []})), FeedStatus::default());
    }

    #[test]
    fn hosts_are_written_bare_and_networks_as_cidr() {
        assert_eq!(entry_text("198.51.100.7/32".parse().unwrap()), "198.51.100.7");
        assert_eq!(entry_text("2001:db8::7/128".parse().unwrap()), "2001:db8::7");
        assert_eq!(entry_text("203.0.113.0/24".parse().unwrap()), "203.0.113.0/24");
    }
}
