//! The HTTP side of the emulator: one fallback handler that records the request, applies latency and faults,
//! checks the key like MISP's `AppController`, then dispatches by route.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::{Extension, Router};
use serde_json::{json, Map, Value};

use super::{views, ConnKill, Fault, FeedFetch, RateCheck, RecordedRequest, Shared, REQUEST_LOG_CAPACITY};

/// MISP's text for a refused key (`AppController`, REST branch).
pub const AUTH_FAILED: &str = "Authentication failed. Please make sure you pass the API key of an API enabled user \
                               along in the Authorization header.";
const NO_PERMISSION: &str = "You do not have permission to use this functionality.";
const NO_VALID_ATTRIBUTES: &str =
    "Could not add the Sighting. Reason: No valid attributes found that match the criteria.";

pub(crate) fn router(shared: Shared) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

/// `/feeds/fetchFromFeed/3.json` -> `feeds/fetchFromFeed`.
fn route_name(path: &str) -> String {
    let trimmed = path.trim_start_matches('/');
    let trimmed = trimmed.strip_suffix(".json").unwrap_or(trimmed);
    let parts: Vec<&str> = trimmed.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        ["feeds"] => "feeds/index".into(),
        ["feeds", action @ ("fetchFromFeed" | "view" | "cacheFeeds"), ..] => format!("feeds/{action}"),
        ["sightings", action @ ("add" | "index"), ..] => format!("sightings/{action}"),
        _ => parts.join("/"),
    }
}

/// The numeric id at the end of `/controller/action/{id}[.json]`.
fn last_id(path: &str) -> Option<u64> {
    path.trim_end_matches(".json").rsplit('/').next().and_then(|s| s.parse().ok())
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut response = Response::new(Body::from(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// CakePHP's exception body: `{"name": text, "message": text, "url": path}`.
fn error(status: StatusCode, text: &str, path: &str) -> Response {
    json_response(status, &json!({"name": text, "message": text, "url": path}))
}

fn set_header(response: &mut Response, name: &'static str, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        response.headers_mut().insert(name, v);
    }
}

/// Keys the request presents: `Authorization` then `X-MISP-AUTH`, comma lists split, `Basic ...` ignored,
/// only `^[a-zA-Z0-9]{40}$` considered (as MISP does).
fn presented_keys(headers: &HeaderMap) -> Vec<String> {
    let mut keys = Vec::new();
    for name in ["authorization", "x-misp-auth"] {
        let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        if value.starts_with("Basic") {
            continue;
        }
        keys.extend(
            value
                .split(',')
                .map(str::trim)
                .filter(|k| k.len() == 40 && k.chars().all(|c| c.is_ascii_alphanumeric()))
                .map(str::to_string),
        );
    }
    keys
}

fn is_rest(headers: &HeaderMap, route: &str) -> bool {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    accept.contains("json") || accept.contains("xml") || accept.contains("csv") || route == "attributes/restSearch"
}

/// Unwraps `{"request": {...}}` (and `{"Sighting": {...}}` for sightings).
fn unwrap_body(body: &Value, extra: Option<&str>) -> Value {
    let mut current = body.clone();
    for key in ["request"].into_iter().chain(extra) {
        if let Some(inner) = current.get(key) {
            current = inner.clone();
        }
    }
    current
}

async fn handle(
    State(shared): State<Shared>,
    Extension(kill): Extension<ConnKill>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let route = route_name(&path);
    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);

    // Record, then pick latency and a fault under the lock.
    let (latency, fault) = {
        let mut inner = shared.lock().unwrap_or_else(|p| p.into_inner());
        *inner.counts.entry(route.clone()).or_default() += 1;
        let authorized = presented_keys(&headers).iter().any(|k| inner.keys.contains(k));
        if inner.log.len() >= REQUEST_LOG_CAPACITY {
            inner.log.pop_front();
        }
        inner.log.push_back(RecordedRequest {
            method: method.to_string(),
            route: route.clone(),
            path: path.clone(),
            body: json_body.clone(),
            authorized,
        });
        let page = unwrap_body(&json_body, None).get("page").and_then(|p| match p {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        });
        let mut chosen = None;
        if let Some(i) = inner.faults.iter().position(|rule| {
            rule.route.as_ref().is_none_or(|r| *r == route)
                && rule.page.is_none_or(|p| page.unwrap_or(1) == p)
                && rule.times != Some(0)
        }) {
            let rule = &mut inner.faults[i];
            chosen = Some(rule.fault.clone());
            if let Some(times) = &mut rule.times {
                *times -= 1;
                if *times == 0 {
                    inner.faults.remove(i);
                }
            }
        }
        (inner.latency, chosen)
    };
    if let Some(latency) = latency {
        tokio::time::sleep(latency).await;
    }
    let mut force_auth_failure = false;
    match fault {
        None => {}
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::Drop) => {
            kill.0.notify_one();
            std::future::pending::<()>().await;
        }
        Some(Fault::InvalidJson) => {
            let mut response = Response::new(Body::from(r#"{"response": {"Attribute": [{"id":"1","event_"#));
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return response;
        }
        Some(Fault::Status { status, content_type, body }) => {
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if let Ok(ct) = HeaderValue::from_str(&content_type) {
                response.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            return response;
        }
        Some(Fault::AuthFailure) => force_auth_failure = true,
    }

    let mut inner = shared.lock().unwrap_or_else(|p| p.into_inner());
    // A role without "Auth key access" (perm_auth) cannot log in by key: the same 403 as a wrong key.
    let authorized =
        !force_auth_failure && inner.role.perm_auth && presented_keys(&headers).iter().any(|k| inner.keys.contains(k));
    if !authorized {
        if !is_rest(&headers, &route) {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::FOUND;
            response.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/users/login"));
            return response;
        }
        return error(StatusCode::FORBIDDEN, AUTH_FAILED, &path);
    }

    match route.as_str() {
        "servers/getVersion" => json_response(
            StatusCode::OK,
            &json!({
                "version": inner.version,
                "pymisp_recommended_version": inner.version,
                "perm_sync": false,
                "perm_sighting": inner.role.perm_sighting,
                "perm_galaxy_editor": false,
                "request_encoding": ["gzip", "br"],
                "filter_sightings": true,
            }),
        ),
        "users/view/me" => {
            let now = inner.store.now();
            json_response(StatusCode::OK, &views::me(&inner.role, now))
        }
        "attributes/describeTypes" => {
            let mut response = Response::new(Body::from(views::DESCRIBE_TYPES));
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        "feeds/index" if method == Method::GET => json_response(StatusCode::OK, &views::feeds_index(&inner.store)),
        "feeds/view" if method == Method::GET => {
            // ACL `host_org_user`: the key's user is in the host organisation, so any role may read a feed.
            match last_id(&path).and_then(|id| views::feed_view(&inner.store, id)) {
                Some(body) => json_response(StatusCode::OK, &body),
                None => error(StatusCode::NOT_FOUND, "Invalid Feed.", &path),
            }
        }
        "feeds/cacheFeeds" if method == Method::POST => {
            if !inner.role.perm_site_admin {
                return error(StatusCode::FORBIDDEN, NO_PERMISSION, &path);
            }
            let scope = path.trim_end_matches(".json").strip_prefix("/feeds/cacheFeeds/").unwrap_or("freetext");
            inner.store.cache_feeds(scope);
            json_response(StatusCode::OK, &views::cache_feeds_answer(inner.background_jobs))
        }
        "sightings/index" => {
            let event = path.trim_end_matches(".json").strip_prefix("/sightings/index/").and_then(|s| s.parse().ok());
            json_response(StatusCode::OK, &views::sightings_index(&inner.store, event))
        }
        "attributes/restSearch" => {
            let rate = inner.rate_check();
            let mut response = match rate {
                RateCheck::Forbidden => {
                    return error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "API searches are not allowed for this user role.",
                        &path,
                    )
                }
                RateCheck::Exceeded { limit, reset } => {
                    let mut response =
                        error(StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded.", "/attributes/restSearch");
                    set_header(&mut response, "X-Rate-Limit-Limit", limit);
                    set_header(&mut response, "X-Rate-Limit-Remaining", 0);
                    set_header(&mut response, "X-Rate-Limit-Reset", reset);
                    return response;
                }
                RateCheck::NotLimited | RateCheck::Allowed { .. } => {
                    rest_search(&mut inner, &method, &uri, &json_body, &path)
                }
            };
            if let RateCheck::Allowed { limit, remaining, reset } = rate {
                set_header(&mut response, "X-Rate-Limit-Limit", limit);
                set_header(&mut response, "X-Rate-Limit-Remaining", remaining);
                set_header(&mut response, "X-Rate-Limit-Reset", reset);
            }
            response
        }
        "feeds/fetchFromAllFeeds" => {
            if !inner.role.perm_site_admin {
                return error(StatusCode::FORBIDDEN, NO_PERMISSION, &path);
            }
            let mut message = None;
            let feeds: Vec<_> = inner.store.feeds.iter().filter(|f| f.enabled).cloned().collect();
            for feed in feeds {
                if inner.background_jobs {
                    message = Some("Pull queued for background execution.");
                } else if !feed.fails {
                    message = Some("Fetching the feed has successfully completed.");
                }
            }
            let result = message.unwrap_or("No feed enabled.").to_string();
            inner.feed_fetches.push(FeedFetch { feed_id: None, result: result.clone() });
            json_response(StatusCode::OK, &json!({"result": result}))
        }
        "feeds/fetchFromFeed" => {
            if !inner.role.perm_site_admin {
                return error(StatusCode::FORBIDDEN, NO_PERMISSION, &path);
            }
            let Some(feed) = last_id(&path).and_then(|id| inner.store.feeds.iter().find(|f| f.id == id).cloned())
            else {
                return error(StatusCode::NOT_FOUND, "Invalid feed.", &path);
            };
            let result = if !feed.enabled {
                "Feed is currently not enabled. Make sure you enable it."
            } else if inner.background_jobs {
                "Pull queued for background execution."
            } else if feed.fails {
                "Fetching the feed has failed."
            } else {
                "Fetching the feed has successfully completed."
            };
            inner.feed_fetches.push(FeedFetch { feed_id: Some(feed.id), result: result.to_string() });
            json_response(StatusCode::OK, &json!({"result": result}))
        }
        "sightings/add" if method == Method::POST => {
            if !inner.role.perm_sighting {
                return error(StatusCode::FORBIDDEN, NO_PERMISSION, &path);
            }
            add_sighting(&mut inner, &json_body, &path)
        }
        "warninglists/checkValue" if method == Method::POST => {
            let data = match unwrap_body(&json_body, Some("Warninglist")) {
                Value::Array(items) => items,
                Value::Null => Vec::new(),
                other => vec![other],
            };
            let values: Vec<String> = data
                .iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect();
            if values.is_empty() {
                return error(StatusCode::NOT_FOUND, "No valid data received.", &path);
            }
            let mut hits = Map::new();
            for value in values {
                let found: Vec<Value> = inner
                    .store
                    .warninglist_hits(&value)
                    .into_iter()
                    .map(|(list, matched)| json!({"id": list.id.to_string(), "name": list.name, "matched": matched}))
                    .collect();
                if !found.is_empty() {
                    hits.insert(value, Value::Array(found));
                }
            }
            // PHP encodes an empty array as `[]`, not `{}`.
            let body = if hits.is_empty() { json!([]) } else { Value::Object(hits) };
            json_response(StatusCode::OK, &body)
        }
        _ => error(StatusCode::NOT_FOUND, "Not Found", &path),
    }
}

fn rest_search(inner: &mut super::Inner, method: &Method, uri: &Uri, body: &Value, path: &str) -> Response {
    if *method == Method::GET {
        let text = if uri.query().is_none() {
            "Restsearch queries using GET and no parameters are not allowed. If you have passed parameters via a \
             JSON body, make sure you use POST requests."
        } else {
            "The emulator only takes restSearch filters as a POSTed JSON body."
        };
        return error(StatusCode::BAD_REQUEST, text, path);
    }
    let filters = match unwrap_body(body, None) {
        Value::Object(map) if !map.is_empty() => map,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "Either specify the search terms in the url, or POST a json with the filter parameters.",
                path,
            )
        }
    };
    match inner.store.rest_search(&filters) {
        Ok(outcome) => {
            let mut response = Response::new(Body::from(outcome.body));
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            set_header(&mut response, "X-Result-Count", outcome.returned);
            set_header(&mut response, "X-Skipped-Elements-Count", outcome.skipped);
            set_header(&mut response, "X-Export-Module-Used", "json");
            set_header(&mut response, "X-Response-Format", "json");
            response
        }
        Err(bad) => error(StatusCode::BAD_REQUEST, &bad.0, path),
    }
}

fn add_sighting(inner: &mut super::Inner, body: &Value, path: &str) -> Response {
    let data = unwrap_body(body, Some("Sighting"));
    let kind = match data.get("type") {
        None | Some(Value::Null) => "0".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    if !["0", "1", "2"].contains(&kind.as_str()) {
        return json_response(
            StatusCode::OK,
            &json!({"message": "Could not add the Sighting. Reason: Invalid type, please change it before posting a sighting."}),
        );
    }
    let source = data.get("source").and_then(Value::as_str).unwrap_or("").trim().to_string();
    let now = inner.store.now();
    let timestamp = data.get("timestamp").and_then(|t| t.as_i64().or_else(|| t.as_str()?.parse().ok())).unwrap_or(now);
    let mut values: Vec<String> = Vec::new();
    if let Some(v) = data.get("value").and_then(Value::as_str) {
        values.push(v.to_string());
    }
    if let Some(Value::Array(list)) = data.get("values") {
        values.extend(list.iter().filter_map(Value::as_str).map(str::to_string));
    }
    let by_id = path.trim_end_matches(".json").strip_prefix("/sightings/add/").map(str::to_string).or_else(|| {
        data.get("id").or_else(|| data.get("uuid")).and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    });
    let mut targets: Vec<(u64, u64, String)> = Vec::new();
    for value in &values {
        targets.extend(inner.store.live_by_value(value).into_iter().map(|a| (a.id, a.event_id, value.clone())));
    }
    if let Some(key) = by_id {
        let found = inner.store.attribute_by_key(&key).filter(|a| !a.deleted);
        if let Some(a) = found {
            targets.push((a.id, a.event_id, a.value.clone()));
        }
    }
    if targets.is_empty() {
        return json_response(StatusCode::OK, &json!({"message": NO_VALID_ATTRIBUTES}));
    }
    let mut last = Value::Null;
    for (attribute_id, event_id, value) in targets {
        let id = inner.store.sightings.len() as u64 + 1;
        let uuid = format!("5f5a0000-0000-4000-8000-{id:012x}");
        last = json!({"id": id.to_string(), "attribute_id": attribute_id.to_string(),
                      "event_id": event_id.to_string(), "org_id": "1", "date_sighting": timestamp.to_string(),
                      "uuid": uuid, "source": source, "type": kind});
        inner.store.sightings.push(super::SightingRecord {
            id,
            attribute_id,
            event_id,
            value,
            source: source.clone(),
            kind: kind.clone(),
            date_sighting: timestamp,
            uuid,
        });
    }
    json_response(StatusCode::OK, &json!({"Sighting": last}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_names() {
        let cases = [
            ("/attributes/restSearch", "attributes/restSearch"),
            ("/attributes/restSearch.json", "attributes/restSearch"),
            ("/feeds/fetchFromFeed/12", "feeds/fetchFromFeed"),
            ("/sightings/add/5", "sightings/add"),
            ("/sightings/index", "sightings/index"),
            ("/feeds", "feeds/index"),
            ("/feeds/index", "feeds/index"),
            ("/feeds/view/3", "feeds/view"),
            ("/feeds/cacheFeeds/all", "feeds/cacheFeeds"),
            ("/attributes/describeTypes.json", "attributes/describeTypes"),
            ("/servers/getVersion", "servers/getVersion"),
        ];
        for (path, expected) in cases {
            assert_eq!(route_name(path), expected);
        }
    }

    #[test]
    fn keys_presented() {
        let key = "0123456789abcdefghijABCDEFGHIJ0123456789";
        let cases: Vec<(&str, String, Vec<&str>)> = vec![
            ("authorization", key.to_string(), vec![key]),
            ("x-misp-auth", key.to_string(), vec![key]),
            ("authorization", format!("short, {key}"), vec![key]),
            ("authorization", format!("Basic {key}"), vec![]),
            ("authorization", format!("Bearer {key}"), vec![]),
        ];
        for (name, value, expected) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_str(&value).expect("test header"));
            assert_eq!(presented_keys(&headers), expected, "{name}: {value}");
        }
    }
}
