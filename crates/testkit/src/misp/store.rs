//! The emulator's data: events, attributes (indexed by value), warninglists, feeds, sightings, and the
//! restSearch engine that reproduces MISP's matching rules.
//!
//! Matching (from MISP 2.5 `MispAttribute::buildFilterConditions` and friends):
//! - `value` is an exact, case-insensitive match against `value1` OR `value2` (composites are stored split);
//!   a value starting or ending with `%` is a LIKE. IPs are normalised on save and on search (IPv6 compressed,
//!   `/32` and `/128` dropped). There is no CIDR containment.
//! - `deleted` defaults to live only; `to_ids`/`published` apply only when sent.
//! - `limit`/`page` are applied before `enforceWarninglist` drops rows (so pages can come back short).
//!
//! Exact lookups go through `by_value`; a paged scan caches its ordered match list per filter set and store
//! generation, so page N costs O(limit) after page 1 even with a million attributes.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;
use serde_json::{Map, Value};

/// One stored attribute. Kept compact (a million of them must fit comfortably): type and category are
/// interned, the uuid is derived from the id unless one was given, the composite halves are split on demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub id: u64,
    pub event_id: u64,
    pub kind: Arc<str>,
    pub category: Arc<str>,
    /// As MISP returns it (normalised on save).
    pub value: String,
    pub to_ids: bool,
    pub deleted: bool,
    pub timestamp: i64,
    uuid: Option<Box<str>>,
    pub comment: String,
    pub tags: Vec<String>,
}

impl Attribute {
    /// The attribute uuid (given, or derived from the id).
    pub fn uuid(&self) -> std::borrow::Cow<'_, str> {
        match &self.uuid {
            Some(uuid) => std::borrow::Cow::Borrowed(uuid),
            None => std::borrow::Cow::Owned(format!("5f0c0000-0000-4000-8000-{:012x}", self.id)),
        }
    }

    /// `value1` and `value2` (MISP stores composites split at the `|`).
    fn halves(&self) -> (&str, Option<&str>) {
        if self.kind.contains('|') {
            if let Some((a, b)) = self.value.split_once('|') {
                return (a, Some(b));
            }
        }
        (&self.value, None)
    }
}

/// Positions of the attributes holding one value; most values are held by one attribute.
#[derive(Debug, Clone)]
enum Positions {
    One(u32),
    Many(Vec<u32>),
}

impl Positions {
    fn push(&mut self, pos: u32) {
        match self {
            Positions::One(first) => *self = Positions::Many(vec![*first, pos]),
            Positions::Many(list) => list.push(pos),
        }
    }

    fn as_slice(&self) -> &[u32] {
        match self {
            Positions::One(p) => std::slice::from_ref(p),
            Positions::Many(list) => list,
        }
    }
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: u64,
    pub uuid: String,
    pub info: String,
    pub published: bool,
    pub tags: Vec<String>,
    pub timestamp: i64,
}

/// A warninglist. `kind` is MISP's type: `cidr` (IP containment) or `string` (exact, case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warninglist {
    pub id: u64,
    pub name: String,
    pub kind: String,
    pub entries: Vec<String>,
    pub enabled: bool,
    nets: Vec<IpNet>,
}

/// A feed: what fetching, caching and the feeds index need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feed {
    pub id: u64,
    pub name: String,
    pub enabled: bool,
    /// When background jobs are off, the inline fetch answers "Fetching the feed has failed."
    pub fails: bool,
    pub provider: String,
    pub url: String,
    /// `misp`, `freetext` or `csv`.
    pub source_format: String,
    /// Whether `/feeds/cacheFeeds` caches it.
    pub caching_enabled: bool,
    /// When it was last cached (epoch), `None` if never (the index shows `false`).
    pub cache_timestamp: Option<i64>,
}

/// A sighting the emulator saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SightingRecord {
    pub id: u64,
    pub attribute_id: u64,
    pub event_id: u64,
    /// The value the client sent.
    pub value: String,
    pub source: String,
    /// `"0"` sighting, `"1"` false positive, `"2"` expiration.
    pub kind: String,
    pub date_sighting: i64,
    pub uuid: String,
}

/// What a test gives to [`Store::add_attribute`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeSpec {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
    #[serde(default = "default_true")]
    pub to_ids: bool,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub timestamp: Option<i64>,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

fn default_true() -> bool {
    true
}

impl AttributeSpec {
    /// A `to_ids` attribute of `kind` with `value`, timestamp "now".
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Self {
        AttributeSpec {
            kind: kind.into(),
            value: value.into(),
            to_ids: true,
            deleted: false,
            timestamp: None,
            uuid: None,
            category: None,
            comment: String::new(),
            tags: Vec::new(),
        }
    }
    pub fn to_ids(mut self, to_ids: bool) -> Self {
        self.to_ids = to_ids;
        self
    }
    pub fn deleted(mut self, deleted: bool) -> Self {
        self.deleted = deleted;
        self
    }
    pub fn timestamp(mut self, timestamp: i64) -> Self {
        self.timestamp = Some(timestamp);
        self
    }
    pub fn uuid(mut self, uuid: impl Into<String>) -> Self {
        self.uuid = Some(uuid.into());
        self
    }
    pub fn tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }
}

/// Which rows restSearch matched, before paging and warninglists.
#[derive(Debug)]
pub struct SearchOutcome {
    /// The JSON body, `{"response": {"Attribute": [...]}}`.
    pub body: Vec<u8>,
    pub returned: usize,
    pub skipped: usize,
}

/// A filter the request could not use: MISP answers 400 with this text.
#[derive(Debug)]
pub struct BadFilter(pub String);

#[derive(Debug, Default)]
pub struct Store {
    attributes: Vec<Attribute>,
    /// id -> position in `attributes` (ids are assigned increasing, so positions are in id order).
    positions: HashMap<u64, u32>,
    /// Lowercased normalised value1/value2 -> positions.
    by_value: HashMap<Box<str>, Positions>,
    /// Interned type and category names.
    names: HashSet<Arc<str>>,
    events: HashMap<u64, Event>,
    tag_ids: HashMap<String, u64>,
    pub warninglists: Vec<Warninglist>,
    pub feeds: Vec<Feed>,
    pub sightings: Vec<SightingRecord>,
    next_attribute_id: u64,
    next_event_id: u64,
    uuid_counter: u64,
    /// Bumped on every change that can alter a search result.
    generation: u64,
    cache: Option<(String, u64, Arc<Vec<u32>>)>,
    /// Fixed "now" (epoch) for tests; `None` = the system clock.
    pub now_override: Option<i64>,
}

impl Store {
    pub fn now(&self) -> i64 {
        self.now_override.unwrap_or_else(|| chrono::Utc::now().timestamp())
    }

    fn next_uuid(&mut self) -> String {
        self.uuid_counter += 1;
        let n = self.uuid_counter;
        format!("5f0c0000-{:04x}-4{:03x}-8000-{:012x}", (n >> 40) & 0xffff, (n >> 28) & 0xfff, n & 0xffff_ffff_ffff)
    }

    fn tag_id(&mut self, name: &str) -> u64 {
        let next = self.tag_ids.len() as u64 + 1;
        *self.tag_ids.entry(name.to_string()).or_insert(next)
    }

    /// Creates an event and returns its id.
    pub fn add_event(&mut self, info: &str, published: bool, tags: Vec<String>) -> u64 {
        self.next_event_id += 1;
        let id = self.next_event_id;
        let uuid = self.next_uuid();
        for tag in &tags {
            self.tag_id(tag);
        }
        let timestamp = self.now();
        self.events.insert(id, Event { id, uuid, info: info.to_string(), published, tags, timestamp });
        self.generation += 1;
        id
    }

    pub fn event(&self, id: u64) -> Option<&Event> {
        self.events.get(&id)
    }

    pub fn set_published(&mut self, event_id: u64, published: bool) -> bool {
        let Some(event) = self.events.get_mut(&event_id) else {
            return false;
        };
        event.published = published;
        self.generation += 1;
        true
    }

    /// Adds an attribute to an event (created on the fly if missing) and returns its id.
    pub fn add_attribute(&mut self, event_id: u64, spec: AttributeSpec) -> u64 {
        if !self.events.contains_key(&event_id) {
            let id = self.add_event(&format!("event {event_id}"), true, Vec::new());
            // Keep the id the caller asked for.
            if let Some(mut event) = self.events.remove(&id) {
                event.id = event_id;
                self.events.insert(event_id, event);
                self.next_event_id = self.next_event_id.max(event_id);
            }
        }
        self.next_attribute_id += 1;
        let id = self.next_attribute_id;
        let value = normalize_value(&spec.kind, &spec.value);
        for tag in &spec.tags {
            self.tag_id(tag);
        }
        let kind = self.intern(&spec.kind);
        let category = self.intern(spec.category.as_deref().unwrap_or("Network activity"));
        let attribute = Attribute {
            id,
            event_id,
            kind,
            category,
            value,
            to_ids: spec.to_ids,
            deleted: spec.deleted,
            timestamp: spec.timestamp.unwrap_or_else(|| self.now()),
            uuid: spec.uuid.map(String::into_boxed_str),
            comment: spec.comment,
            tags: spec.tags,
        };
        let pos = self.attributes.len() as u32;
        let (v1, v2) = attribute.halves();
        let keys: Vec<String> = std::iter::once(v1).chain(v2).map(str::to_lowercase).collect();
        for key in keys {
            match self.by_value.get_mut(key.as_str()) {
                Some(positions) => positions.push(pos),
                None => {
                    self.by_value.insert(key.into_boxed_str(), Positions::One(pos));
                }
            }
        }
        self.positions.insert(id, pos);
        self.attributes.push(attribute);
        self.generation += 1;
        id
    }

    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(existing) = self.names.get(name) {
            return Arc::clone(existing);
        }
        let interned: Arc<str> = Arc::from(name);
        self.names.insert(Arc::clone(&interned));
        interned
    }

    pub fn attribute(&self, id: u64) -> Option<&Attribute> {
        self.positions.get(&id).map(|&p| &self.attributes[p as usize])
    }

    /// An attribute by id or uuid (MISP takes either wherever an attribute is named in a path).
    pub fn attribute_by_key(&self, key: &str) -> Option<&Attribute> {
        match key.parse::<u64>() {
            Ok(id) => self.attribute(id),
            Err(_) => self.attributes.iter().find(|a| a.uuid().eq_ignore_ascii_case(key)),
        }
    }

    pub fn attribute_count(&self) -> usize {
        self.attributes.len()
    }

    fn attribute_mut(&mut self, id: u64) -> Option<&mut Attribute> {
        let pos = *self.positions.get(&id)?;
        self.generation += 1;
        self.attributes.get_mut(pos as usize)
    }

    /// A timestamp strictly newer than `old`: MISP bumps `Attribute.timestamp` on every edit.
    fn bumped(&self, old: i64) -> i64 {
        self.now().max(old + 1)
    }

    /// Soft delete: `deleted = 1` and a bumped timestamp, as MISP's `deleteAttribute` does.
    pub fn soft_delete(&mut self, id: u64) -> bool {
        let Some(old) = self.attribute(id).map(|a| a.timestamp) else {
            return false;
        };
        let ts = self.bumped(old);
        if let Some(a) = self.attribute_mut(id) {
            a.deleted = true;
            a.timestamp = ts;
        }
        true
    }

    /// Sets `to_ids` and bumps the timestamp.
    pub fn set_to_ids(&mut self, id: u64, to_ids: bool) -> bool {
        let Some(old) = self.attribute(id).map(|a| a.timestamp) else {
            return false;
        };
        let ts = self.bumped(old);
        if let Some(a) = self.attribute_mut(id) {
            a.to_ids = to_ids;
            a.timestamp = ts;
        }
        true
    }

    pub fn add_warninglist(&mut self, name: &str, kind: &str, entries: Vec<String>, enabled: bool) -> u64 {
        let id = self.warninglists.len() as u64 + 1;
        let nets = entries.iter().filter_map(|e| parse_net(e)).collect();
        self.warninglists.push(Warninglist { id, name: name.into(), kind: kind.into(), entries, enabled, nets });
        self.generation += 1;
        id
    }

    pub fn set_warninglist_enabled(&mut self, id: u64, enabled: bool) -> bool {
        self.generation += 1;
        self.warninglists.iter_mut().find(|w| w.id == id).map(|w| w.enabled = enabled).is_some()
    }

    /// Adds a feed (provider `emulator`, a `misp` feed at an example URL, caching off); returns its id.
    pub fn add_feed(&mut self, name: &str, enabled: bool) -> u64 {
        let id = self.feeds.iter().map(|f| f.id).max().unwrap_or(0) + 1;
        self.feeds.push(Feed {
            id,
            name: name.into(),
            enabled,
            fails: false,
            provider: "emulator".into(),
            url: format!("https://feeds.example.org/{id}"),
            source_format: "misp".into(),
            caching_enabled: false,
            cache_timestamp: None,
        });
        id
    }

    /// `/feeds/cacheFeeds/{scope}`: marks the caching-enabled feeds in `scope` (`all`, `freetext` (with `csv`),
    /// `misp`, or a feed id) as cached now; returns how many.
    pub fn cache_feeds(&mut self, scope: &str) -> usize {
        let now = self.now();
        let in_scope = |f: &Feed| match scope {
            "all" => true,
            "freetext" | "csv" => f.source_format == "freetext" || f.source_format == "csv",
            "misp" => f.source_format == "misp",
            id => id.parse::<u64>().is_ok_and(|id| id == f.id),
        };
        let mut cached = 0;
        for feed in self.feeds.iter_mut().filter(|f| f.caching_enabled && in_scope(f)) {
            feed.cache_timestamp = Some(now);
            cached += 1;
        }
        cached
    }

    /// Enabled warninglists `value` hits, with the entry that matched.
    pub fn warninglist_hits(&self, value: &str) -> Vec<(&Warninglist, String)> {
        let lower = value.trim().to_lowercase();
        let as_net = parse_net(&lower);
        let mut hits = Vec::new();
        for list in self.warninglists.iter().filter(|w| w.enabled) {
            if list.kind == "cidr" {
                if let Some(net) = as_net {
                    if let Some(hit) = list.nets.iter().find(|n| n.contains(&net)) {
                        hits.push((list, hit.to_string()));
                    }
                }
            } else if let Some(entry) = list.entries.iter().find(|e| e.to_lowercase() == lower) {
                hits.push((list, entry.clone()));
            }
        }
        hits
    }

    fn attribute_warninglisted(&self, a: &Attribute) -> bool {
        let (v1, v2) = a.halves();
        !self.warninglist_hits(v1).is_empty() || v2.is_some_and(|v| !self.warninglist_hits(v).is_empty())
    }

    /// Live attributes whose value1 or value2 equals `value` (sightings use this).
    pub fn live_by_value(&self, value: &str) -> Vec<&Attribute> {
        let key = normalize_search(value).to_lowercase();
        self.by_value
            .get(key.as_str())
            .map(|ps| ps.as_slice().iter().map(|&p| &self.attributes[p as usize]).filter(|a| !a.deleted).collect())
            .unwrap_or_default()
    }

    /// Runs a restSearch. `filters` is the request body (already unwrapped from `{"request":...}`).
    pub fn rest_search(&mut self, filters: &Map<String, Value>) -> Result<SearchOutcome, BadFilter> {
        let parsed = Filters::parse(filters, self.now())?;
        let mut key_map = filters.clone();
        key_map.remove("page");
        key_map.remove("limit");
        let key = Value::Object(key_map).to_string();
        let matches = match &self.cache {
            Some((k, generation, list)) if *k == key && *generation == self.generation => Arc::clone(list),
            _ => {
                let list = Arc::new(self.matching_positions(&parsed));
                self.cache = Some((key, self.generation, Arc::clone(&list)));
                list
            }
        };
        let window: &[u32] = match parsed.limit {
            Some(limit) => {
                let start = limit.saturating_mul(parsed.page.saturating_sub(1)).min(matches.len());
                let end = start.saturating_add(limit).min(matches.len());
                &matches[start..end]
            }
            None => &matches[..],
        };
        let mut body = Vec::with_capacity(64 + window.len() * 420);
        body.extend_from_slice(br#"{"response": {"Attribute": ["#);
        let mut returned = 0;
        let mut skipped = 0;
        for &pos in window {
            let a = &self.attributes[pos as usize];
            if parsed.enforce_warninglist && self.attribute_warninglisted(a) {
                skipped += 1;
                continue;
            }
            if returned > 0 {
                body.push(b',');
            }
            let rendered = self.render(a, parsed.include_event_tags);
            // Writing a Value into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut body, &rendered);
            returned += 1;
        }
        body.extend_from_slice(b"]}}\n");
        Ok(SearchOutcome { body, returned, skipped })
    }

    fn matching_positions(&self, f: &Filters) -> Vec<u32> {
        let candidates: Box<dyn Iterator<Item = u32> + '_> = match &f.values {
            Some(values) if !values.or.is_empty() && values.or.iter().all(|p| !p.like) => {
                let mut set: Vec<u32> = values
                    .or
                    .iter()
                    .filter_map(|p| self.by_value.get(p.text.as_str()))
                    .flat_map(|ps| ps.as_slice().iter().copied())
                    .collect();
                set.sort_unstable();
                set.dedup();
                Box::new(set.into_iter())
            }
            _ => Box::new(0..self.attributes.len() as u32),
        };
        let mut out: Vec<u32> = candidates.filter(|&p| self.matches(&self.attributes[p as usize], f)).collect();
        if let Some((field, desc)) = &f.order {
            let attrs = &self.attributes;
            match field.as_str() {
                "timestamp" => out.sort_by_key(|&p| (attrs[p as usize].timestamp, attrs[p as usize].id)),
                "event_id" => out.sort_by_key(|&p| (attrs[p as usize].event_id, attrs[p as usize].id)),
                "value" => out.sort_by(|&a, &b| attrs[a as usize].value.cmp(&attrs[b as usize].value)),
                "type" => out.sort_by(|&a, &b| attrs[a as usize].kind.cmp(&attrs[b as usize].kind)),
                _ => {} // id: positions are already in id order
            }
            if *desc {
                out.reverse();
            }
        }
        out
    }

    fn matches(&self, a: &Attribute, f: &Filters) -> bool {
        match f.deleted {
            DeletedFilter::Live if a.deleted => return false,
            DeletedFilter::Only if !a.deleted => return false,
            _ => {}
        }
        if let Some(to_ids) = f.to_ids {
            if a.to_ids != to_ids {
                return false;
            }
        }
        if let Some((from, to)) = f.timestamp {
            if a.timestamp < from || to.is_some_and(|to| a.timestamp > to) {
                return false;
            }
        }
        if let Some(types) = &f.types {
            if !types.or.is_empty() && !types.or.iter().any(|t| t.matches(&a.kind)) {
                return false;
            }
            if types.not.iter().any(|t| t.matches(&a.kind)) {
                return false;
            }
        }
        if let Some(values) = &f.values {
            let (v1, v2) = a.halves();
            let hit = |p: &Pattern| p.matches(v1) || v2.is_some_and(|v| p.matches(v));
            if !values.or.is_empty() && !values.or.iter().any(hit) {
                return false;
            }
            if values.not.iter().any(hit) || !values.and.iter().all(hit) {
                return false;
            }
        }
        let event = self.events.get(&a.event_id);
        if let Some(published) = f.published {
            if event.map(|e| e.published) != Some(published) {
                return false;
            }
        }
        if let Some(tags) = &f.tags {
            let all: Vec<&String> = a.tags.iter().chain(event.map(|e| e.tags.iter()).into_iter().flatten()).collect();
            let hit = |p: &Pattern| all.iter().any(|t| p.matches(t));
            if !tags.or.is_empty() && !tags.or.iter().any(hit) {
                return false;
            }
            if tags.not.iter().any(hit) || !tags.and.iter().all(hit) {
                return false;
            }
        }
        true
    }

    fn render<'a>(&'a self, a: &'a Attribute, include_event_tags: bool) -> Rendered<'a> {
        let event = self.events.get(&a.event_id);
        let mut tags: Vec<RenderedTag<'a>> = a.tags.iter().map(|t| self.render_tag(t, None)).collect();
        if include_event_tags {
            if let Some(event) = event {
                tags.extend(event.tags.iter().map(|t| self.render_tag(t, Some(1))));
            }
        }
        Rendered {
            id: a.id,
            event_id: a.event_id,
            object_id: "0",
            object_relation: None,
            category: &a.category,
            kind: &a.kind,
            to_ids: a.to_ids,
            uuid: a.uuid(),
            timestamp: a.timestamp,
            distribution: "5",
            sharing_group_id: "0",
            comment: &a.comment,
            deleted: a.deleted,
            disable_correlation: false,
            first_seen: None,
            last_seen: None,
            value: &a.value,
            event: RenderedEvent {
                org_id: "1",
                distribution: "1",
                id: a.event_id,
                info: event.map(|e| e.info.as_str()).unwrap_or(""),
                orgc_id: "1",
                uuid: event.map(|e| e.uuid.as_str()).unwrap_or(""),
            },
            tag: tags,
        }
    }

    fn render_tag<'a>(&self, name: &'a str, inherited: Option<u8>) -> RenderedTag<'a> {
        let id = self.tag_ids.get(name).copied().unwrap_or(0);
        RenderedTag { id, name, colour: "#0088cc", numerical_value: None, is_galaxy: false, local: 0, inherited }
    }
}

/// MISP's JSON export of one attribute: ids and timestamps as strings, flags as booleans.
#[derive(serde::Serialize)]
struct Rendered<'a> {
    #[serde(serialize_with = "as_string")]
    id: u64,
    #[serde(serialize_with = "as_string")]
    event_id: u64,
    object_id: &'static str,
    object_relation: Option<&'static str>,
    category: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    to_ids: bool,
    uuid: std::borrow::Cow<'a, str>,
    #[serde(serialize_with = "as_string")]
    timestamp: i64,
    distribution: &'static str,
    sharing_group_id: &'static str,
    comment: &'a str,
    deleted: bool,
    disable_correlation: bool,
    first_seen: Option<&'static str>,
    last_seen: Option<&'static str>,
    value: &'a str,
    #[serde(rename = "Event")]
    event: RenderedEvent<'a>,
    #[serde(rename = "Tag", skip_serializing_if = "Vec::is_empty")]
    tag: Vec<RenderedTag<'a>>,
}

#[derive(serde::Serialize)]
struct RenderedEvent<'a> {
    org_id: &'static str,
    distribution: &'static str,
    #[serde(serialize_with = "as_string")]
    id: u64,
    info: &'a str,
    orgc_id: &'static str,
    uuid: &'a str,
}

#[derive(serde::Serialize)]
struct RenderedTag<'a> {
    #[serde(serialize_with = "as_string")]
    id: u64,
    name: &'a str,
    colour: &'static str,
    numerical_value: Option<&'static str>,
    is_galaxy: bool,
    local: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    inherited: Option<u8>,
}

fn as_string<T: std::fmt::Display, S: serde::Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// MISP normalises IPs on save: IPv6 compressed, `/32` and `/128` dropped (AttributeValidationTool).
fn normalize_value(kind: &str, value: &str) -> String {
    let value = value.trim();
    match kind {
        "ip-src" | "ip-dst" => normalize_ip(value),
        "ip-src|port" | "ip-dst|port" => match value.split_once('|') {
            Some((ip, port)) => format!("{}|{}", normalize_ip(ip), port),
            None => value.to_string(),
        },
        "domain|ip" => match value.split_once('|') {
            Some((domain, ip)) => format!("{}|{}", domain, normalize_ip(ip)),
            None => value.to_string(),
        },
        _ => value.to_string(),
    }
}

fn normalize_ip(text: &str) -> String {
    if let Ok(ip) = IpAddr::from_str(text) {
        return ip.to_string();
    }
    if let Some((ip, prefix)) = text.split_once('/') {
        if let (Ok(ip), Ok(prefix)) = (IpAddr::from_str(ip), prefix.parse::<u8>()) {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            return if prefix == max { ip.to_string() } else { format!("{ip}/{prefix}") };
        }
    }
    text.to_string()
}

/// restSearch compresses IPv6 values (and drops a host prefix) before matching.
fn normalize_search(text: &str) -> String {
    normalize_ip(text.trim())
}

fn parse_net(text: &str) -> Option<IpNet> {
    IpAddr::from_str(text.trim()).map(IpNet::from).ok().or_else(|| IpNet::from_str(text.trim()).ok())
}

#[derive(Debug, Clone)]
struct Pattern {
    /// Lowercased; for LIKE, the `%`-separated pieces.
    text: String,
    like: bool,
}

impl Pattern {
    fn new(raw: &str, normalize: bool) -> Self {
        let like = raw.starts_with('%') || raw.ends_with('%');
        let text = if normalize && !like { normalize_search(raw) } else { raw.trim().to_string() };
        Pattern { text: text.to_lowercase(), like }
    }

    /// Case-insensitive, as MySQL's default collation.
    fn matches(&self, candidate: &str) -> bool {
        if !self.like {
            return if self.text.is_ascii() {
                candidate.eq_ignore_ascii_case(&self.text)
            } else {
                candidate.to_lowercase() == self.text
            };
        }
        like_match(&self.text, &candidate.to_lowercase())
    }
}

/// SQL LIKE with `%` only (case-insensitive inputs).
fn like_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('%').collect();
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            continue;
        }
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

#[derive(Debug, Default)]
struct ListFilter {
    or: Vec<Pattern>,
    not: Vec<Pattern>,
    and: Vec<Pattern>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeletedFilter {
    Live,
    Only,
    Both,
}

struct Filters {
    values: Option<ListFilter>,
    types: Option<ListFilter>,
    tags: Option<ListFilter>,
    to_ids: Option<bool>,
    published: Option<bool>,
    deleted: DeletedFilter,
    timestamp: Option<(i64, Option<i64>)>,
    enforce_warninglist: bool,
    include_event_tags: bool,
    limit: Option<usize>,
    page: usize,
    order: Option<(String, bool)>,
}

impl Filters {
    fn parse(m: &Map<String, Value>, now: i64) -> Result<Self, BadFilter> {
        let list = |key: &str, normalize: bool| -> Result<Option<ListFilter>, BadFilter> {
            match m.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => parse_list(v, normalize).map(Some),
            }
        };
        let values = list("value", true)?;
        let types = list("type", false)?;
        let tags = list("tags", false)?;
        let to_ids = match m.get("to_ids") {
            Some(Value::String(s)) if s == "exclude" => Some(false),
            Some(v) => flag(v),
            None => None,
        };
        let published = m.get("published").and_then(flag);
        let deleted = match m.get("deleted") {
            None | Some(Value::Null) => DeletedFilter::Live,
            Some(Value::Array(items)) => {
                let set: HashSet<bool> = items.iter().filter_map(flag).collect();
                match (set.contains(&false), set.contains(&true)) {
                    (true, true) => DeletedFilter::Both,
                    (false, true) => DeletedFilter::Only,
                    _ => DeletedFilter::Live,
                }
            }
            Some(v) => match flag(v) {
                Some(true) => DeletedFilter::Only,
                _ => DeletedFilter::Live,
            },
        };
        let ts_value = m.get("timestamp").or_else(|| m.get("attribute_timestamp"));
        let timestamp = match ts_value {
            None | Some(Value::Null) => None,
            Some(Value::Array(pair)) if pair.len() == 2 => {
                Some((parse_time(&pair[0], now)?, Some(parse_time(&pair[1], now)?)))
            }
            Some(v) => Some((parse_time(v, now)?, None)),
        };
        let limit = match m.get("limit") {
            None | Some(Value::Null) => None,
            Some(v) => Some(as_u64(v).ok_or_else(|| BadFilter("Invalid limit.".into()))? as usize),
        };
        let page = match m.get("page") {
            None | Some(Value::Null) => 1,
            Some(v) => as_u64(v).ok_or_else(|| BadFilter("Invalid page.".into()))?.max(1) as usize,
        };
        let order = match m.get("order").and_then(Value::as_str) {
            None => None,
            Some(text) => {
                let mut words = text.split_whitespace();
                let field = words.next().unwrap_or("id");
                let field = field.strip_prefix("Attribute.").unwrap_or(field).to_string();
                let desc = words.next().is_some_and(|d| d.eq_ignore_ascii_case("desc"));
                Some((field, desc))
            }
        };
        if let Some(format) = m.get("returnFormat").and_then(Value::as_str) {
            if format != "json" {
                return Err(BadFilter(format!("The emulator only speaks returnFormat json, not {format}.")));
            }
        }
        Ok(Filters {
            values,
            types,
            tags,
            to_ids,
            published,
            deleted,
            timestamp,
            enforce_warninglist: m.get("enforceWarninglist").and_then(flag).unwrap_or(false),
            include_event_tags: m.get("includeEventTags").and_then(flag).unwrap_or(false),
            limit,
            page,
            order,
        })
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// MISP booleans: true/false, 0/1, "0"/"1", "true"/"false".
fn flag(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_i64().map(|n| n != 0),
        Value::String(s) => match s.as_str() {
            "1" | "true" => Some(true),
            "0" | "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(u8::from(*b).to_string()),
        _ => None,
    }
}

/// `"a"`, `"a&&!b"`, `["a","!b"]`, `{"OR":[..],"NOT":[..],"AND":[..]}` (MISP `convert_filters`).
fn parse_list(v: &Value, normalize: bool) -> Result<ListFilter, BadFilter> {
    let mut out = ListFilter::default();
    let push_plain = |s: &str, out: &mut ListFilter| {
        for piece in s.split("&&").filter(|p| !p.is_empty()) {
            match piece.strip_prefix('!') {
                Some(neg) => out.not.push(Pattern::new(neg, normalize)),
                None => out.or.push(Pattern::new(piece, normalize)),
            }
        }
    };
    match v {
        Value::Array(items) => {
            for item in items {
                let s = scalar(item).ok_or_else(|| BadFilter("Invalid filter value.".into()))?;
                push_plain(&s, &mut out);
            }
        }
        Value::Object(map) => {
            for (key, inner) in map {
                let items: Vec<String> = match inner {
                    Value::Array(items) => items.iter().filter_map(scalar).collect(),
                    other => scalar(other).into_iter().collect(),
                };
                let target = match key.to_ascii_uppercase().as_str() {
                    "OR" => &mut out.or,
                    "NOT" => &mut out.not,
                    "AND" => &mut out.and,
                    _ => return Err(BadFilter(format!("Invalid filter operator {key}."))),
                };
                target.extend(items.iter().map(|s| Pattern::new(s, normalize)));
            }
        }
        other => {
            let s = scalar(other).ok_or_else(|| BadFilter("Invalid filter value.".into()))?;
            push_plain(&s, &mut out);
        }
    }
    Ok(out)
}

/// Epoch, numeric string, or a relative `5d`/`12h`/`30m`/`45s`/`2w` (MISP `resolveTimeDelta`).
fn parse_time(v: &Value, now: i64) -> Result<i64, BadFilter> {
    if let Some(n) = v.as_i64() {
        return Ok(n);
    }
    let s = v.as_str().ok_or_else(|| BadFilter("Invalid timestamp.".into()))?.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = num.parse().map_err(|_| BadFilter(format!("Invalid timestamp {s}.")))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(BadFilter(format!("Invalid timestamp {s}."))),
    };
    Ok(now - n * secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like() {
        let cases = [
            ("%/%", "198.51.100.0/24", true),
            ("%/%", "198.51.100.7", false),
            ("198.51.%", "198.51.100.7", true),
            ("%.7", "198.51.100.7", true),
            ("%.8", "198.51.100.7", false),
            ("1%7", "198.51.100.7", true),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(like_match(pattern, text), expected, "{pattern} {text}");
        }
    }

    #[test]
    fn normalisation() {
        let cases = [
            ("ip-dst", "2001:0db8:0000:0000:0000:0000:0000:0007", "2001:db8::7"),
            ("ip-dst", "198.51.100.7/32", "198.51.100.7"),
            ("ip-dst", "2001:db8::7/128", "2001:db8::7"),
            ("ip-dst", "198.51.100.0/24", "198.51.100.0/24"),
            ("ip-src|port", "2001:DB8:0:0::7|443", "2001:db8::7|443"),
            ("domain|ip", "Evil.example|203.0.113.5", "Evil.example|203.0.113.5"),
        ];
        for (kind, input, expected) in cases {
            assert_eq!(normalize_value(kind, input), expected, "{kind} {input}");
        }
    }
}
