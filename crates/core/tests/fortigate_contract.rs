//! Contract tests: the emulator's raw answers checked against the shapes recorded in
//! `/work/shared/reference/fortios-rest.md` (envelope fields, the real 404 body, the 401 HTML page and header,
//! error numbers and statuses, dotted-mask subnets, name space, filters, lockout). If these hold, the client tests
//! that run against the emulator say something about a real FortiGate.

use std::collections::BTreeSet;
use std::time::Duration;

use fortimisp_testkit::fortigate::{AdminProfile, EmulatorConfig, FortiGateEmulator, Table};
use serde_json::{json, Value};

struct Raw {
    http: reqwest::Client,
    base: String,
    token: String,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not json ({e}): {}", self.text))
    }
}

impl Raw {
    fn new(emu: &FortiGateEmulator) -> Raw {
        Raw { http: reqwest::Client::new(), base: emu.url().to_string(), token: emu.token() }
    }

    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        self.send_as(&self.token.clone(), method, path, body).await
    }

    async fn send_as(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("emulator answers");
        Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            text: resp.text().await.expect("body"),
        }
    }
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("object").keys().cloned().collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

async fn start() -> (FortiGateEmulator, Raw) {
    let emu = FortiGateEmulator::start(EmulatorConfig::default()).await.expect("start");
    let raw = Raw::new(&emu);
    (emu, raw)
}

#[tokio::test]
async fn success_envelopes_carry_the_recorded_fields() {
    let (emu, raw) = start().await;
    let post = raw
        .send(
            "POST",
            "/api/v2/cmdb/firewall/address?vdom=root",
            Some(json!({"name": "misp-198.51.100.7", "type": "ipmask", "subnet": "198.51.100.7/32", "comment": "c"})),
        )
        .await;
    assert_eq!(post.status, 200);
    let p = post.json();
    for k in [
        "http_method",
        "revision",
        "vdom",
        "path",
        "name",
        "mkey",
        "status",
        "http_status",
        "serial",
        "version",
        "build",
    ] {
        assert!(p.get(k).is_some(), "POST envelope lacks {k}: {p}");
    }
    assert_eq!(p["status"], "success");
    assert_eq!(p["http_status"], 200);
    assert_eq!(p["mkey"], "misp-198.51.100.7");
    assert_eq!(p["path"], "firewall");
    assert_eq!(p["name"], "address");
    assert!(p["build"].is_u64());
    assert_eq!(p["version"], "v7.4.4");

    // GET by name: results is an array even for one entry, subnet in dotted-mask form.
    let get = raw.send("GET", "/api/v2/cmdb/firewall/address/misp-198.51.100.7?vdom=root", None).await;
    let g = get.json();
    assert_eq!(g["http_method"], "GET");
    let results = g["results"].as_array().expect("results array");
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["subnet"], "198.51.100.7 255.255.255.255");
    assert_eq!(results[0]["type"], "ipmask");
    assert!(emu.object("misp-198.51.100.7").is_some());
}

#[tokio::test]
async fn get_of_a_missing_name_is_the_recorded_404_body() {
    let (_emu, raw) = start().await;
    let a = raw.send("GET", "/api/v2/cmdb/firewall/address6/Example?vdom=root", None).await;
    assert_eq!(a.status, 404);
    let v = a.json();
    // The real 6.2.3 body: no `error` field, no `results`.
    assert_eq!(
        keys(&v),
        set(&[
            "http_method",
            "revision",
            "status",
            "http_status",
            "vdom",
            "path",
            "name",
            "mkey",
            "serial",
            "version",
            "build"
        ])
    );
    assert_eq!(v["status"], "error");
    assert_eq!(v["http_status"], 404);
    assert_eq!(v["name"], "address6");
    assert_eq!(v["mkey"], "Example");
}

#[tokio::test]
async fn error_numbers_and_statuses() {
    let (emu, raw) = start().await;
    let addr = |n: &str, s: &str| json!({"name": n, "subnet": s, "comment": ""});
    let r = raw.send("POST", "/api/v2/cmdb/firewall/address", Some(addr("a", "10.0.0.1/32"))).await;
    assert_eq!(r.status, 200);
    /// (method, path, body, expected http status, expected error code)
    type Case<'a> = (&'a str, &'a str, Option<Value>, u16, Option<i64>);
    let cases: Vec<Case> = vec![
        ("POST", "/api/v2/cmdb/firewall/address", Some(addr("a", "10.0.0.1/32")), 500, Some(-5)),
        ("POST", "/api/v2/cmdb/firewall/addrgrp", Some(json!({"name": "a", "member": []})), 500, Some(-163)),
        ("POST", "/api/v2/cmdb/firewall/address6", Some(json!({"name": "a", "ip6": "2001:db8::1/128"})), 500, Some(-5)),
        ("POST", "/api/v2/cmdb/firewall/address", Some(addr("bad", "10.0.0.1/33")), 424, Some(-651)),
        ("POST", "/api/v2/cmdb/firewall/addrgrp", Some(json!({"name": "g", "member": [{"name": "a"}]})), 200, None),
        ("POST", "/api/v2/cmdb/firewall/addrgrp/g/member", Some(json!({"name": "a"})), 500, Some(-5)),
        ("POST", "/api/v2/cmdb/firewall/addrgrp/g/member", Some(json!({"name": "missing"})), 424, Some(-3)),
        ("DELETE", "/api/v2/cmdb/firewall/address/a", None, 500, Some(-23)),
        ("DELETE", "/api/v2/cmdb/firewall/address/missing", None, 404, Some(-3)),
        ("DELETE", "/api/v2/cmdb/firewall/addrgrp/g/member/missing", None, 404, Some(-3)),
        ("GET", "/api/v2/cmdb/firewall/addrgrp/g/member/missing", None, 404, None),
        ("GET", "/api/v2/cmdb/firewall/address/198.51.100.7/32", None, 400, None),
        ("GET", "/api/v2/cmdb/firewall/address?vdom=nope", None, 404, None),
    ];
    for (method, path, body, status, code) in cases {
        let a = raw.send(method, path, body).await;
        assert_eq!(a.status, status, "{method} {path}: {}", a.text);
        let v = a.json();
        assert_eq!(v["http_status"], status, "{method} {path}");
        assert_eq!(v.get("error").and_then(Value::as_i64), code, "{method} {path}: {v}");
        assert_eq!(v["status"], if status == 200 { "success" } else { "error" });
    }
    emu.set_duplicate_status(424);
    let a = raw.send("POST", "/api/v2/cmdb/firewall/address", Some(addr("a", "10.0.0.1/32"))).await;
    assert_eq!((a.status, a.json()["error"].as_i64()), (424, Some(-5)));
}

#[tokio::test]
async fn member_limits_and_empty_groups() {
    let (emu, raw) = start().await;
    for n in ["a", "b", "c"] {
        emu.seed_address(n, "10.0.0.1/32", "");
    }
    emu.seed_group(Table::Addrgrp, "g", &["a"], "");
    emu.set_group_member_limit(2);
    let add = |m: &str| json!({"name": m});
    assert_eq!(raw.send("POST", "/api/v2/cmdb/firewall/addrgrp/g/member", Some(add("b"))).await.status, 200);
    let full = raw.send("POST", "/api/v2/cmdb/firewall/addrgrp/g/member", Some(add("c"))).await;
    assert_eq!((full.status, full.json()["error"].as_i64()), (500, Some(-52)));
    emu.set_table_limit(3);
    let table_full =
        raw.send("POST", "/api/v2/cmdb/firewall/address", Some(json!({"name": "d", "subnet": "10.0.0.4/32"}))).await;
    assert_eq!((table_full.status, table_full.json()["error"].as_i64()), (500, Some(-4)));

    emu.set_refuse_empty_groups(true);
    let empty = raw.send("POST", "/api/v2/cmdb/firewall/addrgrp", Some(json!({"name": "e", "member": []}))).await;
    assert_eq!(empty.status, 500);
    assert_eq!(raw.send("DELETE", "/api/v2/cmdb/firewall/addrgrp/g/member/a", None).await.status, 200);
    let last = raw.send("DELETE", "/api/v2/cmdb/firewall/addrgrp/g/member/b", None).await;
    assert_eq!(last.status, 500, "older FortiOS refuses to empty a group");
    assert_eq!(emu.members("g"), Some(vec!["b".to_string()]));
}

#[tokio::test]
async fn unauthorized_is_an_html_page_with_www_authenticate() {
    let (_emu, raw) = start().await;
    let a = raw.send_as("wrong", "GET", "/api/v2/cmdb/firewall/address", None).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.headers.get("www-authenticate").and_then(|v| v.to_str().ok()), Some("error=\"invalid_token\""));
    assert!(a.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").starts_with("text/html"));
    assert!(serde_json::from_str::<Value>(&a.text).is_err(), "401 body is not JSON");
    // No header at all is the same.
    let resp = reqwest::get(format!("{}/api/v2/monitor/system/status", raw.base)).await.expect("answer");
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test]
async fn url_query_token_is_refused_from_7_4_5() {
    for (version, status) in [("v7.4.4", 200), ("v7.4.5", 401), ("v7.6.0", 200), ("v7.6.1", 401), ("v6.4.15", 200)] {
        let emu = FortiGateEmulator::start(EmulatorConfig { version: version.into(), ..EmulatorConfig::default() })
            .await
            .expect("start");
        let url = format!("{}/api/v2/monitor/system/status?access_token={}", emu.url(), emu.token());
        let got = reqwest::get(url).await.expect("answer").status().as_u16();
        assert_eq!(got, status, "{version}");
    }
}

#[tokio::test(start_paused = true)]
async fn lockout_after_failures_doubles_and_ignores_the_token() {
    let emu = FortiGateEmulator::start(EmulatorConfig {
        lockout_threshold: 3,
        lockout_duration: Duration::from_secs(60),
        ..EmulatorConfig::default()
    })
    .await
    .expect("start");
    let raw = Raw::new(&emu);
    let path = "/api/v2/monitor/system/status";
    for _ in 0..3 {
        assert_eq!(raw.send_as("wrong", "GET", path, None).await.status, 401);
    }
    assert_eq!(raw.send("GET", path, None).await.status, 429, "good token refused during lockout");
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(raw.send("GET", path, None).await.status, 200, "lockout lifted, success resets");
    for _ in 0..3 {
        assert_eq!(raw.send_as("wrong", "GET", path, None).await.status, 401);
    }
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(raw.send("GET", path, None).await.status, 429, "second lockout is 120 s");
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(raw.send("GET", path, None).await.status, 200);
}

#[tokio::test]
async fn names_are_percent_decoded_per_segment() {
    let (emu, raw) = start().await;
    emu.seed_address("198.51.100.7/32", "198.51.100.7/32", "legacy");
    let a = raw.send("GET", "/api/v2/cmdb/firewall/address/198.51.100.7%2F32", None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["results"][0]["name"], "198.51.100.7/32");
    // %2F in the JSON body is literal, as on FortiOS.
    raw.send("POST", "/api/v2/cmdb/firewall/address", Some(json!({"name": "x%2F32", "subnet": "10.0.0.1/32"}))).await;
    assert!(emu.object("x%2F32").is_some());
}

#[tokio::test]
async fn filter_format_and_paging() {
    let (emu, raw) = start().await;
    emu.seed_address("misp-1", "10.0.0.1/32", "fortimisp 2025-01-01T00:00:00Z misp-event=1");
    emu.seed_address("misp-2", "10.0.0.2/32", "fortimisp 2025-01-01T00:00:00Z misp-event=2");
    emu.seed_address("other", "10.0.0.3/32", "hand made");
    let names = |a: Answer| -> Vec<String> {
        a.json()["results"]
            .as_array()
            .expect("array")
            .iter()
            .map(|e| e["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let base = "/api/v2/cmdb/firewall/address?vdom=root";
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("&filter=comment=@fortimisp%20", vec!["misp-1", "misp-2"]),
        ("&filter=name==other", vec!["other"]),
        ("&filter=name!=other", vec!["misp-1", "misp-2"]),
        ("&filter=comment!@fortimisp", vec!["other"]),
        ("&filter=name==misp-1,name==other", vec!["misp-1", "other"]),
        ("&filter=comment=@fortimisp&filter=name!=misp-1", vec!["misp-2"]),
        ("&start=1&count=1", vec!["misp-2"]),
        ("&filter=comment%3D%40fortimisp", vec!["misp-1", "misp-2"]),
    ];
    for (q, want) in cases {
        assert_eq!(names(raw.send("GET", &format!("{base}{q}"), None).await), want, "{q}");
    }
    let a = raw.send("GET", &format!("{base}&format=name|subnet&filter=name==misp-1"), None).await;
    assert_eq!(a.json()["results"], json!([{"name": "misp-1", "subnet": "10.0.0.1 255.255.255.255"}]));
}

#[tokio::test]
async fn delete_on_a_collection_purges_unreferenced_entries() {
    let (emu, raw) = start().await;
    emu.seed_address("kept", "10.0.0.1/32", "");
    emu.seed_address("lost", "10.0.0.2/32", "");
    emu.seed_group(Table::Addrgrp, "g", &["kept"], "");
    let a = raw.send("DELETE", "/api/v2/cmdb/firewall/address", None).await;
    assert_eq!(a.status, 200);
    assert_eq!(emu.names(Table::Address), vec!["kept"]);
    assert_eq!(emu.route_count("DELETE /api/v2/cmdb/firewall/address"), 1);
}

#[tokio::test]
async fn monitor_endpoints() {
    let (_emu, raw) = start().await;
    let s = raw.send("GET", "/api/v2/monitor/system/status", None).await.json();
    assert_eq!(s["status"], "success");
    assert_eq!(s["version"], "v7.4.4");
    assert!(s["results"].is_object());
    let add = raw
        .send(
            "POST",
            "/api/v2/monitor/user/banned/add_users",
            Some(json!({"ip_addresses": ["198.51.100.7"], "expiry": 60})),
        )
        .await;
    assert_eq!(add.status, 200);
    let missing = raw.send("POST", "/api/v2/monitor/user/banned/add_users", Some(json!({}))).await;
    assert_eq!(missing.status, 400);
    let list = raw.send("GET", "/api/v2/monitor/user/banned", None).await.json();
    assert_eq!(list["results"][0]["ip_address"], "198.51.100.7");
    raw.send("POST", "/api/v2/monitor/user/banned/clear_all", Some(json!({}))).await;
    let list = raw.send("GET", "/api/v2/monitor/user/banned", None).await.json();
    assert_eq!(list["results"], json!([]));
}

/// Reference §6c: FortiOS refuses `"` `'` `<` `>` `&` `#` `(` `)` in the text of names and comments. The emulator
/// answers such a write with 424 and -651 (input value invalid) and creates or changes nothing.
#[tokio::test]
async fn refused_characters_in_names_and_comments_are_input_errors() {
    let emu = FortiGateEmulator::start(EmulatorConfig::default()).await.expect("emulator");
    let raw = Raw::new(&emu);
    let path = "/api/v2/cmdb/firewall/address?vdom=root";
    for c in ['"', '\'', '<', '>', '&', '#', '(', ')'] {
        for (name, comment) in [(format!("misp-a{c}b"), "fine".to_string()), ("misp-c".into(), format!("x {c} y"))] {
            let body = json!({"name": name, "subnet": "198.51.100.7/32", "comment": comment});
            let answer = raw.send("POST", path, Some(body)).await;
            assert_eq!(answer.status, 424, "{name:?} {comment:?}: {}", answer.text);
            let env = answer.json();
            assert_eq!(env["status"], "error");
            assert_eq!(env["error"], -651, "{}", answer.text);
            assert!(emu.object(&name).is_none());
        }
    }
    // The same text without them is accepted; a PUT of a refused comment changes nothing.
    let body = json!({"name": "misp-c", "subnet": "198.51.100.7/32", "comment": "fine"});
    assert_eq!(raw.send("POST", path, Some(body)).await.status, 200);
    let put = raw.send("PUT", "/api/v2/cmdb/firewall/address/misp-c?vdom=root", Some(json!({"comment": "<b>"}))).await;
    assert_eq!((put.status, put.json()["error"].clone()), (424, json!(-651)));
    assert_eq!(emu.object("misp-c").expect("object").1["comment"], "fine");
}

/// Reference §6c: FortiOS returns every address with its uuid and many default fields, not only the ones written.
/// The uuid is assigned at creation, differs between objects and stays the same across reads and updates.
#[tokio::test]
async fn address_get_returns_the_uuid_and_the_default_fields() {
    let (emu, raw) = start().await;
    let path = "/api/v2/cmdb/firewall/address";
    for (name, ip) in [("misp-a", "198.51.100.7/32"), ("misp-b", "198.51.100.8/32")] {
        let body = json!({"name": name, "type": "ipmask", "subnet": ip, "comment": "c"});
        assert_eq!(raw.send("POST", path, Some(body)).await.status, 200);
    }
    let get = |name: &'static str| {
        let raw = &raw;
        async move { raw.send("GET", &format!("{path}/{name}"), None).await.json()["results"][0].clone() }
    };
    let a = get("misp-a").await;
    let fields = keys(&a);
    assert!(fields.len() >= 40, "{} fields: {fields:?}", fields.len());
    for (field, want) in [
        ("name", json!("misp-a")),
        ("q_origin_key", json!("misp-a")),
        ("subnet", json!("198.51.100.7 255.255.255.255")),
        ("type", json!("ipmask")),
        ("comment", json!("c")),
        ("color", json!(0)),
        ("allow-routing", json!("disable")),
        ("fabric-object", json!("disable")),
        ("sdn-addr-type", json!("private")),
        ("macaddr", json!([])),
        ("tagging", json!([])),
    ] {
        assert_eq!(a[field], want, "{field}: {a}");
    }
    let uuid = a["uuid"].as_str().expect("uuid").to_string();
    let shape: Vec<usize> = uuid.split('-').map(str::len).collect();
    assert_eq!(shape, [8, 4, 4, 4, 12], "{uuid}");
    assert_ne!(get("misp-b").await["uuid"], a["uuid"], "one uuid per object");
    let put = raw.send("PUT", &format!("{path}/misp-a"), Some(json!({"comment": "d", "q_origin_key": "x"}))).await;
    assert_eq!(put.status, 200);
    let after = get("misp-a").await;
    assert_eq!((after["uuid"].as_str(), after["comment"].as_str()), (Some(uuid.as_str()), Some("d")));
    assert_eq!(after["q_origin_key"], "misp-a", "meta fields sent back are not stored");
    // Groups and IPv6 too; `format=` still narrows the fields.
    emu.seed_address6("misp-6", "2001:db8::7/128", "");
    emu.seed_group(Table::Addrgrp, "g", &["misp-a"], "");
    let g = raw.send("GET", "/api/v2/cmdb/firewall/addrgrp/g", None).await.json()["results"][0].clone();
    assert!(g["uuid"].is_string() && g["exclude"] == "disable" && g["type"] == "default", "{g}");
    let a6 = raw.send("GET", "/api/v2/cmdb/firewall/address6/misp-6", None).await.json()["results"][0].clone();
    assert!(a6["uuid"].is_string() && a6["host-type"] == "any" && a6["ip6"] == "2001:db8::7/128", "{a6}");
    let narrow = raw.send("GET", &format!("{path}?format=name|uuid"), None).await.json();
    for item in narrow["results"].as_array().expect("results") {
        assert_eq!(keys(item), set(&["name", "uuid"]), "{item}");
    }
}

/// `?action=schema` describes the table (reference §2) instead of listing it; `?action=default` is a new entry.
#[tokio::test]
async fn schema_and_default_actions_describe_the_tables() {
    let (emu, raw) = start().await;
    emu.seed_address("misp-a", "198.51.100.7/32", "");
    let schema = raw.send("GET", "/api/v2/cmdb/firewall/address?action=schema", None).await;
    assert_eq!(schema.status, 200);
    let r = &schema.json()["results"];
    assert!(r.is_object(), "schema results are one object, not the listing: {r}");
    assert_eq!(
        (r["name"].as_str(), r["category"].as_str(), r["mkey"].as_str()),
        (Some("address"), Some("table"), Some("name"))
    );
    let children = &r["children"];
    assert_eq!(children["name"]["size"], 79);
    assert_eq!(children["comment"]["size"], 255);
    assert_eq!(children["uuid"]["type"], "uuid");
    let types: Vec<&str> =
        children["type"]["options"].as_array().expect("options").iter().filter_map(|o| o["name"].as_str()).collect();
    assert!(types.contains(&"ipmask") && types.contains(&"iprange"), "{types:?}");
    let grp = raw.send("GET", "/api/v2/cmdb/firewall/addrgrp?action=schema", None).await.json();
    assert_eq!(grp["results"]["children"]["member"]["category"], "table");
    assert_eq!(grp["results"]["children"]["member"]["mkey"], "name");
    let grp6 = raw.send("GET", "/api/v2/cmdb/firewall/addrgrp6?action=schema", None).await.json();
    assert_eq!(grp6["results"]["name"], "addrgrp6");
    let default = raw.send("GET", "/api/v2/cmdb/firewall/address?action=default", None).await.json();
    assert_eq!((default["results"]["type"].as_str(), default["results"]["name"].as_str()), (Some("ipmask"), Some("")));
}

/// `with_meta=1` adds `q_ref`: how many groups and policies reference the entry.
#[tokio::test]
async fn with_meta_counts_references() {
    let (emu, raw) = start().await;
    emu.seed_address("a", "10.0.0.1/32", "");
    emu.seed_group(Table::Addrgrp, "g1", &["a"], "");
    emu.seed_group(Table::Addrgrp, "g2", &["a"], "");
    emu.reference_by_policy("g1");
    let q_ref = |name: &'static str| {
        let raw = &raw;
        async move {
            let v = raw.send("GET", &format!("/api/v2/cmdb/firewall/{name}?with_meta=1"), None).await.json();
            v["results"][0]["q_ref"].clone()
        }
    };
    assert_eq!(q_ref("address/a").await, json!(2));
    assert_eq!(q_ref("addrgrp/g1").await, json!(1));
    assert_eq!(q_ref("addrgrp/g2").await, json!(0));
    let plain = raw.send("GET", "/api/v2/cmdb/firewall/addrgrp/g1", None).await.json();
    assert!(plain["results"][0].get("q_ref").is_none(), "meta only when asked");
}

/// Admin profiles: a call the profile does not allow answers 403 with the envelope and no error number; what it
/// allows works as before, and nothing changes on a refused write.
#[tokio::test]
async fn admin_profiles_refuse_with_403() {
    let (emu, raw) = start().await;
    emu.seed_address("a", "10.0.0.1/32", "");
    let addr = json!({"name": "b", "subnet": "10.0.0.2/32"});
    let ban = json!({"ip_addresses": ["198.51.100.7"], "expiry": 60});
    /// (profile, method, path, body, expected status)
    type Case<'a> = (AdminProfile, &'a str, &'a str, Option<Value>, u16);
    let cases: Vec<Case> = vec![
        (AdminProfile::READ_ONLY, "GET", "/api/v2/cmdb/firewall/address/a", None, 200),
        (AdminProfile::READ_ONLY, "GET", "/api/v2/cmdb/firewall/addrgrp", None, 200),
        (AdminProfile::READ_ONLY, "POST", "/api/v2/cmdb/firewall/address", Some(addr.clone()), 403),
        (AdminProfile::READ_ONLY, "DELETE", "/api/v2/cmdb/firewall/address/a", None, 403),
        (AdminProfile::READ_ONLY, "POST", "/api/v2/cmdb/firewall/addrgrp", Some(json!({"name": "g"})), 403),
        (AdminProfile::READ_ONLY, "GET", "/api/v2/monitor/user/banned", None, 200),
        (AdminProfile::READ_ONLY, "POST", "/api/v2/monitor/user/banned/add_users", Some(ban.clone()), 403),
        (AdminProfile::NO_MONITOR, "GET", "/api/v2/monitor/user/banned", None, 403),
        (AdminProfile::NO_MONITOR, "POST", "/api/v2/monitor/user/banned/add_users", Some(ban.clone()), 403),
        (AdminProfile::NO_MONITOR, "GET", "/api/v2/monitor/system/status", None, 200),
        (AdminProfile::NO_MONITOR, "POST", "/api/v2/cmdb/firewall/address", Some(addr.clone()), 200),
    ];
    for (profile, method, path, body, status) in cases {
        emu.set_profile(profile);
        let a = raw.send(method, path, body).await;
        assert_eq!(a.status, status, "{profile:?} {method} {path}: {}", a.text);
        let v = a.json();
        assert_eq!(v["http_status"], status, "{method} {path}");
        if status == 403 {
            assert_eq!(v["status"], "error");
            assert!(v.get("error").is_none(), "no error number on 403: {v}");
        }
    }
    assert!(emu.object("a").is_some(), "the refused delete changed nothing");
    assert!(emu.banned().is_empty(), "the refused bans changed nothing");
}
