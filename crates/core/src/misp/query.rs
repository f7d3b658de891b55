//! [`SearchQuery`]: the `attributes/restSearch` filters fortimisp sends, as a builder.
//!
//! The builder only holds filters; the [`super::Client`] adds `value` batches, `limit`/`page` and the default
//! `order` when it pages. [`SearchQuery::to_body`] is the single place the JSON body is written.

use serde_json::{json, Map, Value};

/// Which soft-deleted attributes to include (`deleted` filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Deleted {
    /// Live attributes only (MISP's default, `deleted: 0`).
    #[default]
    Live,
    /// Deleted attributes only (`deleted: 1`).
    Only,
    /// Both (`deleted: [0,1]`), for incremental syncs that must see removals.
    Both,
}

/// The order paged syncs use unless told otherwise: MISP has no default ORDER BY, so pages would not be stable.
pub const DEFAULT_ORDER: &str = "Attribute.id asc";

/// restSearch filters. `Default` is "everything live, any type".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchQuery {
    values: Vec<String>,
    exclude_values: Vec<String>,
    types: Vec<String>,
    to_ids: Option<bool>,
    published: Option<bool>,
    enforce_warninglist: bool,
    tags: Vec<String>,
    exclude_tags: Vec<String>,
    timestamp: Option<i64>,
    deleted: Deleted,
    order: Option<String>,
    include_event_tags: Option<bool>,
}

impl SearchQuery {
    /// An empty query (all live attributes).
    pub fn new() -> Self {
        Self::default()
    }

    /// Match these values exactly (either half of composites; `%` at either end makes a LIKE).
    pub fn values<I, S>(mut self, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.values = values.into_iter().map(Into::into).collect();
        self
    }

    /// Exclude attributes with these values (`value: {"NOT": [...]}`).
    pub fn exclude_values<I, S>(mut self, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.exclude_values = values.into_iter().map(Into::into).collect();
        self
    }

    /// Restrict to these attribute types (`ip-src`, `ip-dst|port`, ...).
    pub fn types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.types = types.into_iter().map(Into::into).collect();
        self
    }

    /// `to_ids` filter (not applied by MISP for JSON unless sent).
    pub fn to_ids(mut self, to_ids: bool) -> Self {
        self.to_ids = Some(to_ids);
        self
    }

    /// `published` filter (event published flag).
    pub fn published(mut self, published: bool) -> Self {
        self.published = Some(published);
        self
    }

    /// Drop attributes that hit an enabled warninglist (server side).
    pub fn enforce_warninglist(mut self, enforce: bool) -> Self {
        self.enforce_warninglist = enforce;
        self
    }

    /// Only attributes whose attribute or event carries one of these tags.
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Exclude attributes whose attribute or event carries one of these tags.
    pub fn exclude_tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.exclude_tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// `Attribute.timestamp >= since` (epoch seconds), for incremental syncs.
    pub fn since(mut self, since: i64) -> Self {
        self.timestamp = Some(since);
        self
    }

    /// Which soft-deleted attributes to include.
    pub fn deleted(mut self, deleted: Deleted) -> Self {
        self.deleted = deleted;
        self
    }

    /// Result order, e.g. `"Attribute.id asc"`. Paged requests default to [`DEFAULT_ORDER`].
    pub fn order(mut self, order: impl Into<String>) -> Self {
        self.order = Some(order.into());
        self
    }

    /// Ask MISP to attach event tags to each attribute (MISP's restSearch default is on).
    pub fn include_event_tags(mut self, include: bool) -> Self {
        self.include_event_tags = Some(include);
        self
    }

    /// The values currently set.
    pub fn value_list(&self) -> &[String] {
        &self.values
    }

    /// The order set, if any.
    pub fn order_value(&self) -> Option<&str> {
        self.order.as_deref()
    }

    /// The JSON body for one request; `paging` is `(limit, page)`.
    pub fn to_body(&self, paging: Option<(u32, u32)>) -> Value {
        let mut body = Map::new();
        body.insert("returnFormat".into(), json!("json"));
        match (self.values.is_empty(), self.exclude_values.is_empty()) {
            (true, true) => {}
            (false, true) => {
                body.insert("value".into(), json!(self.values));
            }
            (values_empty, false) => {
                let mut filter = Map::new();
                if !values_empty {
                    filter.insert("OR".into(), json!(self.values));
                }
                filter.insert("NOT".into(), json!(self.exclude_values));
                body.insert("value".into(), Value::Object(filter));
            }
        }
        if !self.types.is_empty() {
            body.insert("type".into(), json!(self.types));
        }
        if let Some(to_ids) = self.to_ids {
            body.insert("to_ids".into(), json!(u8::from(to_ids)));
        }
        if let Some(published) = self.published {
            body.insert("published".into(), json!(u8::from(published)));
        }
        if self.enforce_warninglist {
            body.insert("enforceWarninglist".into(), json!(1));
        }
        if !self.tags.is_empty() || !self.exclude_tags.is_empty() {
            let mut filter = Map::new();
            if !self.tags.is_empty() {
                filter.insert("OR".into(), json!(self.tags));
            }
            if !self.exclude_tags.is_empty() {
                filter.insert("NOT".into(), json!(self.exclude_tags));
            }
            body.insert("tags".into(), Value::Object(filter));
        }
        if let Some(ts) = self.timestamp {
            body.insert("timestamp".into(), json!(ts));
        }
        match self.deleted {
            Deleted::Live => {}
            Deleted::Only => {
                body.insert("deleted".into(), json!(1));
            }
            Deleted::Both => {
                body.insert("deleted".into(), json!([0, 1]));
            }
        }
        if let Some(include) = self.include_event_tags {
            body.insert("includeEventTags".into(), json!(u8::from(include)));
        }
        if let Some((limit, page)) = paging {
            body.insert("limit".into(), json!(limit));
            body.insert("page".into(), json!(page));
            body.insert("order".into(), json!(self.order.as_deref().unwrap_or(DEFAULT_ORDER)));
        } else if let Some(order) = &self.order {
            body.insert("order".into(), json!(order));
        }
        Value::Object(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        type Case = (SearchQuery, Option<(u32, u32)>, Value);
        let cases: Vec<Case> = vec![
            (SearchQuery::new(), None, json!({"returnFormat":"json"})),
            (
                SearchQuery::new()
                    .values(["198.51.100.7"])
                    .types(["ip-src"])
                    .to_ids(true)
                    .published(false)
                    .enforce_warninglist(true),
                None,
                json!({"returnFormat":"json","value":["198.51.100.7"],"type":["ip-src"],"to_ids":1,
                       "published":0,"enforceWarninglist":1}),
            ),
            (
                SearchQuery::new().tags(["tlp:white"]).exclude_tags(["fp"]).since(100).deleted(Deleted::Both),
                Some((500, 3)),
                json!({"returnFormat":"json","tags":{"OR":["tlp:white"],"NOT":["fp"]},"timestamp":100,
                       "deleted":[0,1],"limit":500,"page":3,"order":"Attribute.id asc"}),
            ),
            (
                SearchQuery::new().exclude_values(["%/%"]).deleted(Deleted::Only).order("timestamp desc"),
                None,
                json!({"returnFormat":"json","value":{"NOT":["%/%"]},"deleted":1,
                       "order":"timestamp desc"}),
            ),
        ];
        for (query, paging, expected) in cases {
            assert_eq!(query.to_body(paging), expected, "{query:?}");
        }
    }
}
