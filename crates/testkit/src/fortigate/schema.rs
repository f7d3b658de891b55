//! What FortiOS 7.x shows about the four address tables and `system/external-resource` beyond the fields a client
//! writes: the default fields of a new entry (an address GET returns the uuid and dozens of defaults, not the five
//! fields written; reference §6c), the `?action=schema` description of a table, and the `with_meta=1` fields. Pure
//! data, no I/O.
//!
//! Field names and defaults follow FortiOS 7.4 (`config firewall address` / `address6` / `addrgrp` / `addrgrp6`,
//! the same names Fortinet's Terraform provider and Ansible collection use with `-` in place of `_`). Only the
//! fields an IP or prefix address can carry are listed, not every type-specific field of later builds; a client
//! that reads objects must ignore what it does not know anyway.

use serde_json::{json, Map, Value};

use super::state::Table;

/// The fields FortiOS fills in on a new entry of `table`, before the ones the client wrote. `uuid` is not here: the
/// database assigns one per entry ([`uuid_for`]).
pub fn defaults(table: Table) -> Map<String, Value> {
    let text = match table {
        Table::Address => ADDRESS_DEFAULTS,
        Table::Address6 => ADDRESS6_DEFAULTS,
        Table::Addrgrp => ADDRGRP_DEFAULTS,
        Table::Addrgrp6 => ADDRGRP6_DEFAULTS,
    };
    serde_json::from_str(text).expect("invariant: the default tables are JSON objects")
}

const ADDRESS_DEFAULTS: &str = r#"{
    "type": "ipmask", "route-tag": 0, "sub-type": "sdn", "clearpass-spt": "unknown", "macaddr": [],
    "start-mac": "00:00:00:00:00:00", "end-mac": "00:00:00:00:00:00", "subnet": "0.0.0.0 0.0.0.0",
    "start-ip": "0.0.0.0", "end-ip": "0.0.0.0", "fqdn": "", "country": "", "wildcard-fqdn": "", "cache-ttl": 0,
    "wildcard": "0.0.0.0 0.0.0.0", "sdn": "", "fsso-group": [], "sso-attribute-value": [], "interface": "",
    "tenant": "", "organization": "", "epg-name": "", "subnet-name": "", "sdn-tag": "", "policy-group": "",
    "obj-tag": "", "obj-type": "ip", "tag-detection-level": "", "tag-type": "", "hw-vendor": "", "hw-model": "",
    "os": "", "sw-version": "", "comment": "", "associated-interface": "", "color": 0, "filter": "",
    "sdn-addr-type": "private", "node-ip-only": "disable", "obj-id": "", "list": [], "tagging": [],
    "allow-routing": "disable", "passive-fqdn-learning": "enable", "fabric-object": "disable"
}"#;

const ADDRESS6_DEFAULTS: &str = r#"{
    "type": "ipprefix", "route-tag": 0, "macaddr": [], "start-mac": "00:00:00:00:00:00",
    "end-mac": "00:00:00:00:00:00", "sdn": "", "ip6": "::/0", "wildcard": ":: ::", "start-ip": "::", "end-ip": "::",
    "fqdn": "", "country": "", "cache-ttl": 0, "color": 0, "obj-id": "", "tagging": [], "comment": "",
    "template": "", "subnet-segment": [], "host-type": "any", "host": "::", "tenant": "", "epg-name": "",
    "sdn-tag": "", "filter": "", "list": [], "sdn-addr-type": "private", "passive-fqdn-learning": "enable",
    "fabric-object": "disable"
}"#;

const ADDRGRP_DEFAULTS: &str = r#"{
    "type": "default", "category": "default", "member": [], "comment": "", "exclude": "disable",
    "exclude-member": [], "color": 0, "tagging": [], "allow-routing": "disable", "fabric-object": "disable"
}"#;

const ADDRGRP6_DEFAULTS: &str = r#"{
    "member": [], "comment": "", "color": 0, "tagging": [], "exclude": "disable", "exclude-member": [],
    "fabric-object": "disable"
}"#;

/// A uuid for the `n`-th entry created (stable for the entry's life: kept across PUTs). FortiOS assigns
/// time-based (version 1) uuids; these have that layout, made unique by `n`.
pub fn uuid_for(n: u64) -> String {
    format!(
        "{:08x}-{:04x}-51ef-{:04x}-{:012x}",
        0x7a3c_0000u32.wrapping_add((n >> 16) as u32),
        n & 0xffff,
        0x8000 | (n & 0x0fff),
        0x5254_0000_0000u64 + n
    )
}

/// `with_meta=1`: the meta fields FortiOS adds to each result; `q_ref` is how many objects reference the entry
/// (groups holding it, policies using it).
pub fn meta(table: Table, references: usize) -> Map<String, Value> {
    meta_for("firewall", table.as_str(), references)
}

/// [`meta`] for any cmdb table, named by its path and name (`system`, `external-resource`).
pub fn meta_for(path: &str, name: &str, references: usize) -> Map<String, Value> {
    let value = json!({
        "q_ref": references, "q_static": false, "q_no_rename": false, "q_no_edit": false, "q_type": 0,
        "q_path": path, "q_name": name, "q_mkey_type": "string",
    });
    match value {
        Value::Object(map) => map,
        _ => unreachable!("invariant: the literal above is an object"),
    }
}

fn unitary(name: &str, kind: &str, help: &str) -> Value {
    json!({"name": name, "category": "unitary", "type": kind, "help": help})
}

fn sized(name: &str, kind: &str, help: &str, size: u32) -> Value {
    json!({"name": name, "category": "unitary", "type": kind, "help": help, "size": size})
}

fn option(name: &str, help: &str, options: &[(&str, &str)]) -> Value {
    let options: Vec<Value> = options.iter().map(|(n, h)| json!({"name": n, "help": h})).collect();
    json!({"name": name, "category": "unitary", "type": "option", "help": help, "options": options})
}

fn enable_disable(name: &str, help: &str) -> Value {
    option(name, help, &[("enable", "Enable."), ("disable", "Disable.")])
}

fn members(help: &str, datasource: &[&str]) -> Value {
    json!({
        "name": "member", "category": "table", "help": help, "mkey": "name", "mkey_type": "string",
        "children": {"name": {"name": "name", "category": "unitary", "type": "string", "help": "Address name.",
                              "size": 79, "datasource": datasource}},
    })
}

/// `GET /api/v2/cmdb/firewall/{table}?action=schema`: the table's description (`results` is this object, not
/// an array), as FortiOS 7.x answers it: name, category `table`, help, `mkey` and its type, and one `children`
/// entry per field with its type, help and size or options.
pub fn schema(table: Table) -> Value {
    let name = sized("name", "string", "Address name.", 79);
    let uuid = unitary(
        "uuid",
        "uuid",
        "Universally Unique Identifier (UUID; automatically assigned but can be manually reset).",
    );
    let comment = sized("comment", "var-string", "Comment.", 255);
    let color = json!({"name": "color", "category": "unitary", "type": "integer", "help": "Color of icon on the GUI.",
                       "min-value": 0, "max-value": 32});
    let fabric = enable_disable("fabric-object", "Security Fabric global object setting.");
    let (help, children) = match table {
        Table::Address => (
            "Configure IPv4 addresses.",
            vec![
                name,
                uuid,
                unitary("subnet", "ipv4-classnet-any", "IP address and subnet mask of address."),
                option(
                    "type",
                    "Type of address.",
                    &[
                        ("ipmask", "Standard IPv4 address with subnet mask."),
                        ("iprange", "Range of IPv4 addresses between two specified addresses (inclusive)."),
                        ("fqdn", "Fully Qualified Domain Name address."),
                        ("geography", "IP addresses from a specified country."),
                        ("wildcard", "Standard IPv4 using a wildcard subnet mask."),
                        ("dynamic", "Dynamic address object."),
                        ("interface-subnet", "IP and subnet of interface."),
                        ("mac", "Range of MAC addresses."),
                        ("route-tag", "route-tag addresses."),
                    ],
                ),
                unitary("start-ip", "ipv4-address-any", "First IP address (inclusive) in the range for the address."),
                unitary("end-ip", "ipv4-address-any", "Final IP address (inclusive) in the range for the address."),
                sized("fqdn", "string", "Fully Qualified Domain Name address.", 255),
                sized("country", "string", "IP addresses associated to a specific country.", 2),
                comment,
                color,
                enable_disable("allow-routing", "Enable/disable use of this address in routing configurations."),
                fabric,
            ],
        ),
        Table::Address6 => (
            "Configure IPv6 firewall addresses.",
            vec![
                name,
                uuid,
                unitary(
                    "ip6",
                    "ipv6-network",
                    "IPv6 address prefix (format: xxxx:xxxx:xxxx:xxxx:xxxx:xxxx:xxxx:xxxx/xxx).",
                ),
                option(
                    "type",
                    "Type of IPv6 address object (default = ipprefix).",
                    &[
                        ("ipprefix", "Uses the IP prefix to define a range of IPv6 addresses."),
                        ("iprange", "Range of IPv6 addresses between two specified addresses (inclusive)."),
                        ("fqdn", "Fully qualified domain name."),
                        ("geography", "IPv6 addresses from a specified country."),
                        ("dynamic", "Dynamic address object for SDN."),
                        ("template", "Template."),
                        ("mac", "Range of MAC addresses."),
                        ("route-tag", "route-tag addresses."),
                    ],
                ),
                unitary("start-ip", "ipv6-address", "First IP address (inclusive) in the range for the address."),
                unitary("end-ip", "ipv6-address", "Final IP address (inclusive) in the range for the address."),
                comment,
                color,
                fabric,
            ],
        ),
        Table::Addrgrp => (
            "Configure IPv4 address groups.",
            vec![
                name,
                uuid,
                option(
                    "type",
                    "Address group type.",
                    &[
                        ("default", "Default address group type (address may belong to multiple groups)."),
                        ("folder", "Address folder group (members may not belong to any other group)."),
                    ],
                ),
                members(
                    "Address objects contained within the group.",
                    &["firewall.address.name", "firewall.addrgrp.name"],
                ),
                comment,
                enable_disable("exclude", "Enable/disable address exclusion."),
                color,
                enable_disable("allow-routing", "Enable/disable use of this group in routing configurations."),
                fabric,
            ],
        ),
        Table::Addrgrp6 => (
            "Configure IPv6 address groups.",
            vec![
                name,
                uuid,
                members(
                    "Address objects contained within the group.",
                    &["firewall.address6.name", "firewall.addrgrp6.name"],
                ),
                comment,
                enable_disable("exclude", "Enable/disable address6 exclusion."),
                color,
                fabric,
            ],
        ),
    };
    let children: Map<String, Value> =
        children.into_iter().filter_map(|c| Some((c.get("name")?.as_str()?.to_string(), c))).collect();
    json!({
        "name": table.as_str(), "category": "table", "help": help, "mkey": "name", "mkey_type": "string",
        "children": children,
    })
}

/// The fields FortiOS 7.4 fills in on a new `system/external-resource` entry (`uuid` assigned per entry, the
/// password never shown: see [`super::resource`]).
pub fn resource_defaults() -> Map<String, Value> {
    serde_json::from_str(RESOURCE_DEFAULTS).expect("invariant: the default table is a JSON object")
}

const RESOURCE_DEFAULTS: &str = r#"{
    "status": "enable", "type": "category", "update-method": "feed", "category": 0, "username": "",
    "password": "", "client-cert-auth": "disable", "client-cert": "", "comments": "", "resource": "",
    "user-agent": "", "server-identity-check": "none", "refresh-rate": 5, "source-ip": "0.0.0.0",
    "interface-select-method": "auto", "interface": ""
}"#;

/// Closed choices of `system/external-resource`: field, then the values FortiOS accepts.
pub const RESOURCE_OPTIONS: &[(&str, &[&str])] = &[
    ("status", &["enable", "disable"]),
    ("type", &["category", "domain", "malware", "address", "mac-address", "generic-address"]),
    ("update-method", &["feed", "push"]),
    ("server-identity-check", &["none", "basic", "full"]),
    ("client-cert-auth", &["enable", "disable"]),
    ("interface-select-method", &["auto", "sdwan", "specify"]),
];

/// `GET /api/v2/cmdb/system/external-resource?action=schema`.
pub fn resource_schema() -> Value {
    let children = vec![
        sized("name", "string", "External resource name.", 35),
        unitary(
            "uuid",
            "uuid",
            "Universally Unique Identifier (UUID; automatically assigned but can be manually reset).",
        ),
        enable_disable("status", "Enable/disable user resource."),
        option(
            "type",
            "User resource type.",
            &[
                ("category", "FortiGuard category."),
                ("domain", "Domain Name."),
                ("malware", "Malware hash."),
                ("address", "Firewall IP address."),
                ("mac-address", "Firewall MAC address."),
                ("generic-address", "Generic addresses."),
            ],
        ),
        option(
            "update-method",
            "External resource update method.",
            &[
                ("feed", "FortiGate unit will pull update from the external resource."),
                ("push", "External resource update is pushed to the FortiGate unit through the FortiGate RESTAPI."),
            ],
        ),
        unitary("category", "integer", "User resource category."),
        sized("username", "string", "HTTP basic authentication user name.", 64),
        sized("password", "password", "HTTP basic authentication password.", 128),
        enable_disable("client-cert-auth", "Enable/disable using client certificate for TLS authentication."),
        sized("client-cert", "string", "Client certificate name.", 79),
        sized("comments", "var-string", "Comment.", 255),
        sized("resource", "string", "URL of external resource.", 511),
        sized("user-agent", "var-string", "HTTP User-Agent header (default = 'curl/7.58.0').", 255),
        option(
            "server-identity-check",
            "Certificate verification option.",
            &[
                ("none", "No certificate verification."),
                ("basic", "Check server certificate only."),
                ("full", "Check server certificate and verify the domain matches in the server certificate."),
            ],
        ),
        json!({"name": "refresh-rate", "category": "unitary", "type": "integer",
               "help": "Time interval to refresh external resource (1 - 43200 min, default = 5 min).",
               "min-value": 1, "max-value": 43200}),
        unitary("source-ip", "ipv4-address", "Source IPv4 address used to communicate with server."),
        option(
            "interface-select-method",
            "Specify how to select outgoing interface to reach server.",
            &[
                ("auto", "Set outgoing interface automatically."),
                ("sdwan", "Set outgoing interface by SD-WAN or policy routing rules."),
                ("specify", "Set outgoing interface manually."),
            ],
        ),
        sized("interface", "string", "Specify outgoing interface to reach server.", 15),
    ];
    let children: Map<String, Value> =
        children.into_iter().filter_map(|c| Some((c.get("name")?.as_str()?.to_string(), c))).collect();
    json!({
        "name": "external-resource", "category": "table", "help": "Configure external resource.", "mkey": "name",
        "mkey_type": "string", "children": children,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_written_field_and_every_default_is_in_the_schema() {
        for table in [Table::Address, Table::Address6, Table::Addrgrp, Table::Addrgrp6] {
            let schema = schema(table);
            let children = schema["children"].as_object().expect("children");
            for field in ["name", "uuid", "comment", "color"] {
                assert!(children.contains_key(field), "{table:?}: {field}");
            }
            for field in defaults(table).keys() {
                // Every default the GET shows is a real field: the schema lists the ones a client writes.
                assert!(!field.is_empty() && !field.contains('_'), "{table:?}: {field} (FortiOS uses '-')");
            }
            assert_eq!(schema["mkey"], "name");
        }
    }

    #[test]
    fn every_external_resource_default_and_option_is_in_its_schema() {
        let schema = resource_schema();
        let children = schema["children"].as_object().expect("children");
        for field in resource_defaults().keys() {
            assert!(children.contains_key(field), "external-resource: {field}");
        }
        for (field, values) in RESOURCE_OPTIONS {
            let options: Vec<&str> = children[*field]["options"]
                .as_array()
                .expect("options")
                .iter()
                .filter_map(|o| o["name"].as_str())
                .collect();
            assert_eq!(&options, values, "{field}");
        }
        assert_eq!(children["name"]["size"], 35);
        assert_eq!(children["resource"]["size"], 511);
    }

    #[test]
    fn uuids_are_unique_and_well_formed() {
        let a = uuid_for(1);
        let b = uuid_for(2);
        assert_ne!(a, b);
        for u in [a, b, uuid_for(u64::from(u32::MAX) + 7)] {
            let parts: Vec<usize> = u.split('-').map(str::len).collect();
            assert_eq!(parts, [8, 4, 4, 4, 12], "{u}");
            assert!(u.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{u}");
        }
    }
}
