//! The index and view answers of the emulator, shaped as MISP 2.5.1 returns them (MISP/MISP @bb0909a3): pure
//! functions from the emulator's state to the JSON body. The HTTP side (auth, ACL, status codes) is in `routes`.
//!
//! - `GET /users/view/me`: `User` (every column but `server_id` and `authkey`; `password` and `totp` as `*****`),
//!   `Role` (every column but `perm_full`, plus `permission` and `permission_description`), `UserSetting`
//!   (`[]`: PHP's empty array) and `Organisation` (`UsersController::view` + `__massageUserObject`).
//! - `GET /attributes/describeTypes.json`: `{"result": {sane_defaults, types, categories,
//!   category_type_mappings}}` (`AttributesController::describeTypes`). The data (`describe-types.json`) is MISP's
//!   own definitions restricted to the types the emulator stores and fortimisp meets (all 16 categories; each
//!   type's real default category and `to_ids`).
//! - `GET /feeds/index` (and `GET /feeds`): a JSON array of `{"Feed": {...}}` with every column of the feeds table
//!   and `cache_timestamp` (`false` when never cached); `GET /feeds/view/{id}`: one `{"Feed": {...}}` with
//!   `cached_elements` and `coverage_by_other_feeds` (`FeedsController::index`/`view` through `CRUDComponent`).
//! - `POST /feeds/cacheFeeds/{scope}`: `RestResponse::saveSuccessResponse` (`saved`, `success`, `name`, `message`,
//!   `url: /feeds/cacheFeed`).
//! - `POST|GET /sightings/index`: a flat array of sightings with `attribute_uuid` and `Organisation`
//!   (`SightingsController::index`, `Sighting::attachToEvent`, `MISP.showorg` on).
//!
//! Types follow MySQL through CakePHP 2: integer columns are strings, `tinyint(1)` columns booleans, `NULL` null.

use serde_json::{json, Value};

use super::seed::Role;
use super::store::{Feed, SightingRecord, Store};

/// `attributes/describeTypes.json`, served byte for byte (the order of the types is MISP's).
pub const DESCRIBE_TYPES: &str = include_str!("describe-types.json");

/// The user every key belongs to, and its organisation (the host organisation).
const USER_ID: &str = "1";
const ORG_ID: &str = "1";
const ORG_UUID: &str = "5f0c0000-0000-4000-8000-00000000a001";
const ORG_NAME: &str = "ORGNAME";

fn organisation() -> Value {
    json!({
        "id": ORG_ID, "name": ORG_NAME, "date_created": "2024-10-01 00:00:00", "date_modified": "2024-10-01 00:00:00",
        "description": "Automatically generated admin organisation", "type": "ADMIN", "nationality": "",
        "sector": "", "created_by": "0", "uuid": ORG_UUID, "contacts": "", "local": true,
        "restricted_to_domain": [], "landingpage": null,
    })
}

/// `Role`: MISP's `permission` virtual field (0 read only, 1 manage own, 3 publish) and every column.
fn role(role: &Role) -> Value {
    let (permission, description) = match (role.perm_add, role.perm_modify, role.perm_publish) {
        (true, true, true) => ("3", "publish"),
        (true, true, false) => ("1", "manage_own"),
        _ => ("0", "read_only"),
    };
    json!({
        "id": "1", "name": role.name, "created": "2024-10-01 00:00:00", "modified": "2024-10-01 00:00:00",
        "perm_add": role.perm_add, "perm_modify": role.perm_modify, "perm_modify_org": role.perm_modify,
        "perm_publish": role.perm_publish, "perm_delegate": role.perm_site_admin, "perm_sync": false,
        "perm_admin": role.perm_site_admin, "perm_audit": role.perm_site_admin, "perm_auth": role.perm_auth,
        "perm_site_admin": role.perm_site_admin, "perm_regexp_access": role.perm_site_admin,
        "perm_tagger": role.perm_add, "perm_template": role.perm_site_admin,
        "perm_sharing_group": role.perm_site_admin, "perm_tag_editor": role.perm_site_admin,
        "perm_sighting": role.perm_sighting, "perm_object_template": role.perm_site_admin, "default_role": false,
        "memory_limit": "", "max_execution_time": "", "restricted_to_site_admin": false,
        "perm_publish_zmq": role.perm_publish, "perm_publish_kafka": role.perm_publish,
        "perm_decaying": role.perm_add, "enforce_rate_limit": role.enforce_rate_limit,
        "rate_limit_count": role.rate_limit_count.to_string(), "perm_galaxy_editor": role.perm_site_admin,
        "perm_warninglist": role.perm_site_admin, "perm_view_feed_correlations": role.perm_site_admin,
        "perm_analyst_data": role.perm_add, "perm_skip_otp": false,
        "permission": permission, "permission_description": description,
    })
}

/// `GET /users/view/me`.
pub fn me(r: &Role, now: i64) -> Value {
    let now = now.to_string();
    json!({
        "User": {
            "id": USER_ID, "password": "*****", "org_id": ORG_ID, "email": "admin@admin.test", "autoalert": false,
            "invited_by": "0", "gpgkey": null, "certif_public": null, "nids_sid": "4000000", "termsaccepted": true,
            "newsread": "0", "role_id": "1", "change_pw": false, "contactalert": false, "disabled": false,
            "expiration": null, "current_login": now, "last_login": now, "force_logout": false,
            "date_created": null, "date_modified": now, "sub": null, "external_auth_required": false,
            "external_auth_key": null, "last_api_access": now, "notification_daily": false,
            "notification_weekly": false, "notification_monthly": false, "totp": "*****", "hotp_counter": null,
            "last_pw_change": now,
        },
        "Role": role(r),
        "UserSetting": [],
        "Organisation": organisation(),
    })
}

fn feed(f: &Feed) -> Value {
    json!({
        "id": f.id.to_string(), "name": f.name, "provider": f.provider, "url": f.url,
        "rules": "{\"tags\":{\"OR\":[],\"NOT\":[]},\"orgs\":{\"OR\":[],\"NOT\":[]},\"url_params\":\"\"}",
        "enabled": f.enabled, "distribution": "3", "sharing_group_id": "0", "tag_id": "0", "default": false,
        "source_format": f.source_format, "fixed_event": true, "delta_merge": false, "event_id": "0",
        "publish": false, "override_ids": false,
        "settings": "{\"csv\":{\"value\":\"\",\"delimiter\":\",\"},\"common\":{\"excluderegex\":\"\"}}",
        "input_source": "network",
        "delete_local_file": false, "lookup_visible": true, "headers": null, "caching_enabled": f.caching_enabled,
        "force_to_ids": false, "orgc_id": "0", "tag_collection_id": "0",
        "cache_timestamp": f.cache_timestamp.map_or(Value::Bool(false), Value::from),
    })
}

/// `GET /feeds/index`: every feed (the key's user is in the host organisation, so `lookup_visible` does not
/// filter), ordered by id.
pub fn feeds_index(store: &Store) -> Value {
    let mut feeds: Vec<&Feed> = store.feeds.iter().collect();
    feeds.sort_by_key(|f| f.id);
    Value::Array(feeds.into_iter().map(|f| json!({"Feed": feed(f)})).collect())
}

/// `GET /feeds/view/{id}`, `None` for an unknown id (MISP: 404 "Invalid Feed.").
pub fn feed_view(store: &Store, id: u64) -> Option<Value> {
    let f = store.feeds.iter().find(|f| f.id == id)?;
    let mut body = feed(f);
    body["cached_elements"] = Value::from(usize::from(f.cache_timestamp.is_some()));
    body["coverage_by_other_feeds"] = Value::from("0%");
    Some(json!({"Feed": body}))
}

/// `POST /feeds/cacheFeeds/{scope}`: the job is queued (background jobs) or run inline.
pub fn cache_feeds_answer(background_jobs: bool) -> Value {
    let message =
        if background_jobs { "Feed caching job initiated." } else { "Caching the feeds has successfully completed." };
    json!({"saved": true, "success": true, "name": message, "message": message, "url": "/feeds/cacheFeed"})
}

fn sighting(s: &SightingRecord, attribute_uuid: String) -> Value {
    json!({
        "id": s.id.to_string(), "attribute_id": s.attribute_id.to_string(), "event_id": s.event_id.to_string(),
        "org_id": ORG_ID, "date_sighting": s.date_sighting.to_string(), "uuid": s.uuid, "source": s.source,
        "type": s.kind, "attribute_uuid": attribute_uuid,
        "Organisation": {"id": ORG_ID, "uuid": ORG_UUID, "name": ORG_NAME},
    })
}

/// `/sightings/index[/{event id}]`: every sighting (of that event), event by event.
pub fn sightings_index(store: &Store, event_id: Option<u64>) -> Value {
    let mut sightings: Vec<&SightingRecord> =
        store.sightings.iter().filter(|s| event_id.is_none_or(|e| s.event_id == e)).collect();
    sightings.sort_by_key(|s| (s.event_id, s.id));
    Value::Array(
        sightings
            .into_iter()
            .map(|s| {
                let uuid = store.attribute(s.attribute_id).map(|a| a.uuid().into_owned()).unwrap_or_default();
                sighting(s, uuid)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_types_is_consistent() {
        let v: Value = serde_json::from_str(DESCRIBE_TYPES).expect("describe-types.json is JSON");
        let r = &v["result"];
        let types: Vec<&str> = r["types"].as_array().expect("types").iter().filter_map(Value::as_str).collect();
        let categories = r["categories"].as_array().expect("categories");
        assert_eq!(categories.len(), 16);
        for t in ["ip-src", "ip-dst", "ip-src|port", "ip-dst|port", "domain|ip"] {
            assert!(types.contains(&t), "{t}");
            assert_eq!(r["sane_defaults"][t]["default_category"], "Network activity", "{t}");
            assert_eq!(r["sane_defaults"][t]["to_ids"], 1, "{t}");
        }
        for t in &types {
            let category = r["sane_defaults"][t]["default_category"].as_str().expect("default category");
            let mapped = r["category_type_mappings"][category].as_array().expect("mapping");
            assert!(mapped.iter().any(|m| m == t), "{t} is not in its default category {category}");
        }
    }

    #[test]
    fn permission_follows_the_role() {
        assert_eq!(role(&Role::default())["permission_description"], "publish");
        let ro = role(&Role::read_only("fortimisp"));
        assert_eq!((ro["permission"].as_str(), ro["perm_auth"].as_bool()), (Some("0"), Some(true)));
        assert!(ro.get("perm_full").is_none());
    }
}
