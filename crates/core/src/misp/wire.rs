//! Response DTOs. MISP sends ids and timestamps as strings, booleans as `true`, `1` or `"1"`, and sometimes
//! omits fields; these types accept all of those so a harmless variation never fails a sync.

use std::collections::HashMap;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::Value;

/// `{"response": {"Attribute": [...]}}`, the fast path: the whole page in one typed pass.
#[derive(Debug, Deserialize)]
pub(crate) struct SearchEnvelope {
    pub response: SearchResponse,
}

#[derive(Debug, Deserialize)]
pub(crate) struct SearchResponse {
    #[serde(rename = "Attribute", default)]
    pub attribute: Vec<WireAttribute>,
}

/// One element of `{"response": {"Attribute": [...]}}`.
#[derive(Debug, Deserialize)]
pub(crate) struct WireAttribute {
    #[serde(deserialize_with = "u64_lenient")]
    pub id: u64,
    #[serde(deserialize_with = "u64_lenient")]
    pub event_id: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
    #[serde(default)]
    pub uuid: String,
    #[serde(default, deserialize_with = "bool_lenient")]
    pub to_ids: bool,
    #[serde(default, deserialize_with = "bool_lenient")]
    pub deleted: bool,
    #[serde(default, deserialize_with = "i64_lenient")]
    pub timestamp: i64,
    #[serde(rename = "Tag", default)]
    pub tag: Vec<WireTag>,
    #[serde(rename = "EventTag", default)]
    pub event_tag: Vec<WireEventTag>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireTag {
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireEventTag {
    #[serde(rename = "Tag")]
    pub tag: Option<WireTag>,
}

/// `GET /servers/getVersion`.
#[derive(Debug, Deserialize)]
pub(crate) struct WireVersion {
    pub version: String,
    #[serde(default)]
    pub pymisp_recommended_version: Option<String>,
    #[serde(default, deserialize_with = "bool_lenient")]
    pub perm_sync: bool,
    #[serde(default, deserialize_with = "bool_lenient")]
    pub perm_sighting: bool,
}

/// `GET /users/view/me`.
#[derive(Debug, Deserialize)]
pub(crate) struct WireMe {
    #[serde(rename = "User")]
    pub user: WireUser,
    #[serde(rename = "Role")]
    pub role: WireRole,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireUser {
    #[serde(deserialize_with = "u64_lenient")]
    pub id: u64,
    #[serde(default)]
    pub email: String,
    #[serde(default, deserialize_with = "u64_lenient_opt")]
    pub org_id: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireRole {
    #[serde(default)]
    pub name: String,
    #[serde(default, deserialize_with = "bool_lenient")]
    pub perm_sighting: bool,
    #[serde(default, deserialize_with = "bool_lenient")]
    pub perm_site_admin: bool,
    #[serde(default, deserialize_with = "bool_lenient")]
    pub enforce_rate_limit: bool,
    #[serde(default, deserialize_with = "u64_lenient_opt")]
    pub rate_limit_count: Option<u64>,
}

/// `{"Sighting": {...}}` on success (sometimes a list).
#[derive(Debug, Deserialize)]
pub(crate) struct WireSighting {
    #[serde(default, deserialize_with = "string_lenient_opt")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "u64_lenient_opt")]
    pub attribute_id: Option<u64>,
    #[serde(default, deserialize_with = "u64_lenient_opt")]
    pub event_id: Option<u64>,
}

/// One warninglist hit in `/warninglists/checkValue`.
#[derive(Debug, Deserialize)]
pub(crate) struct WireWarninglistHit {
    #[serde(default, deserialize_with = "u64_lenient_opt")]
    pub id: Option<u64>,
    #[serde(default)]
    pub name: String,
    #[serde(default, deserialize_with = "string_lenient_opt")]
    pub matched: Option<String>,
}

/// checkValue: `[]` when nothing hits, else an object keyed by value.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum WireCheckValue {
    Hits(HashMap<String, Vec<WireWarninglistHit>>),
    // Only the shape matters: `[]` means no hit.
    Empty(#[allow(dead_code)] Vec<Value>),
}

fn u64_from_value<E: de::Error>(value: &Value) -> Result<u64, E> {
    match value {
        Value::Number(n) => n.as_u64().ok_or_else(|| E::custom(format!("not an unsigned integer: {n}"))),
        Value::String(s) => s.trim().parse().map_err(|_| E::custom(format!("not an unsigned integer: {s:?}"))),
        other => Err(E::custom(format!("expected an id, got {other}"))),
    }
}

pub(crate) fn u64_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    u64_from_value(&Value::deserialize(d)?)
}

pub(crate) fn u64_lenient_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        other => u64_from_value(&other).map(Some),
    }
}

pub(crate) fn i64_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(0),
        Value::Number(n) => n.as_i64().ok_or_else(|| de::Error::custom(format!("not an integer: {n}"))),
        Value::String(s) => s.trim().parse().map_err(|_| de::Error::custom(format!("not an integer: {s:?}"))),
        other => Err(de::Error::custom(format!("expected a timestamp, got {other}"))),
    }
}

pub(crate) fn bool_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(b),
        Value::Number(n) => Ok(n.as_i64() != Some(0)),
        Value::String(s) => match s.as_str() {
            "" | "0" | "false" => Ok(false),
            "1" | "true" => Ok(true),
            other => Err(de::Error::custom(format!("not a boolean: {other:?}"))),
        },
        other => Err(de::Error::custom(format!("expected a boolean, got {other}"))),
    }
}

pub(crate) fn string_lenient_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Null => None,
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_fields_accept_strings_numbers_and_bools() {
        let cases = [
            r#"{"id":"12","event_id":"3","type":"ip-src","value":"198.51.100.7","uuid":"u","to_ids":true,
                "deleted":false,"timestamp":"1617875568"}"#,
            r#"{"id":12,"event_id":3,"type":"ip-src","value":"198.51.100.7","uuid":"u","to_ids":"1",
                "deleted":0,"timestamp":1617875568}"#,
        ];
        for case in cases {
            let a: WireAttribute = serde_json::from_str(case).expect("fixture parses");
            assert_eq!((a.id, a.event_id, a.to_ids, a.deleted, a.timestamp), (12, 3, true, false, 1617875568));
        }
    }

    #[test]
    fn check_value_accepts_empty_array_and_object() {
        let cases: [(&str, usize); 3] =
            [("[]", 0), ("{}", 0), (r#"{"10.0.0.1":[{"id":"3","name":"RFC 1918","matched":"10.0.0.0/8"}]}"#, 1)];
        for (body, hits) in cases {
            let parsed: WireCheckValue = serde_json::from_str(body).expect("fixture parses");
            let n = match parsed {
                WireCheckValue::Hits(map) => map.len(),
                WireCheckValue::Empty(list) => list.len(),
            };
            assert_eq!(n, hits, "{body}");
        }
    }
}
