"""fortigate-api (vladimirs-git/fortigate-api) against the FortiGate emulator: list, get, create, update and delete
address objects and address groups the way a real client does, and check what FortiOS would answer.

Run by tests/e2e/contract.rs (which starts the emulator over TLS, seeds it and checks its state afterwards), with
the environment:

    FGT_HOST    127.0.0.1
    FGT_PORT    the emulator's HTTPS port
    FGT_TOKEN   the REST API token
    REQUESTS_CA_BUNDLE  the emulator's CA certificate (requests verifies against it)
    FGT_SEEDED  the name of an address the test seeded (a foreign object this script only reads)

Prints one line per check and exits 1 on the first failure. Every object it creates is named `contract-...` and
deleted before it ends.
"""

import os
import sys

PREFIX = "contract-"


def check(name, condition, detail=""):
    if not condition:
        print(f"FAIL {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok   {name}", flush=True)


def error_of(response):
    """The FortiOS error number of an answer (None when the envelope has none)."""
    try:
        return response.json().get("error")
    except ValueError:
        return "not json: " + response.text[:200]


def main():
    from fortigate_api import FortiGateAPI

    api = FortiGateAPI(host=os.environ["FGT_HOST"], port=int(os.environ["FGT_PORT"]), token=os.environ["FGT_TOKEN"],
                       verify=True)
    api.login()  # GET /api/v2/monitor/system/status with the token
    check("login", api.fortigate.is_connected)
    status = api.fortigate.get("api/v2/monitor/system/status").json()
    check("system status", status.get("status") == "success" and status.get("version", "").startswith("v7"), status)

    address = api.cmdb.firewall.address
    addrgrp = api.cmdb.firewall.addrgrp
    seeded = os.environ["FGT_SEEDED"]

    # List and get.
    everything = address.get()
    check("list addresses", any(a["name"] == seeded for a in everything), [a["name"] for a in everything])
    [one] = address.get(name=seeded)
    check("get one address", one["name"] == seeded and one["type"] == "ipmask", one)
    check("get: uuid and defaults", len(one.get("uuid", "")) == 36 and one["color"] == 0
          and one["allow-routing"] == "disable" and len(one) >= 40, sorted(one))
    check("is_exist", address.is_exist(seeded) and not address.is_exist(PREFIX + "missing"))

    # Create, read back, update.
    name = PREFIX + "198.51.100.20"
    created = address.create({"name": name, "type": "ipmask", "subnet": "198.51.100.20/32",
                               "comment": "fortigate-api contract"})
    check("create address", created.status_code == 200, created.text)
    [got] = address.get(name=name)
    check("created: dotted mask", got["subnet"] == "198.51.100.20 255.255.255.255", got["subnet"])
    uuid = got["uuid"]
    check("created: own uuid", len(uuid) == 36 and uuid != one["uuid"], uuid)
    duplicate = address.create({"name": name, "subnet": "198.51.100.20/32"})
    check("create duplicate: -5", duplicate.status_code in (424, 500) and error_of(duplicate) == -5, duplicate.text)
    got["comment"] = "updated by fortigate-api"
    updated = address.update(got)  # PUT back what GET returned, q_origin_key included
    check("update address", updated.status_code == 200, updated.text)
    [got] = address.get(name=name)
    check("updated: comment, same uuid", got["comment"] == "updated by fortigate-api" and got["uuid"] == uuid, got)
    filtered = address.get(filter="name=@" + PREFIX)
    check("filter =@", [a["name"] for a in filtered] == [name], [a["name"] for a in filtered])

    # Characters FortiOS refuses in names and comments: 424 with -651, nothing created or changed.
    refused_name = address.create({"name": PREFIX + "bad<name>", "subnet": "198.51.100.21/32"})
    check("refused character in a name", refused_name.status_code == 424 and error_of(refused_name) == -651,
          refused_name.text)
    check("refused name: nothing created", not address.is_exist(PREFIX + "bad<name>"))
    refused_comment = address.update({"name": name, "comment": 'say "hi"'})
    check("refused character in a comment", refused_comment.status_code == 424
          and error_of(refused_comment) == -651, refused_comment.text)
    check("refused comment: unchanged", address.get(name=name)[0]["comment"] == "updated by fortigate-api")

    # IPv6.
    name6 = PREFIX + "2001-db8--20"
    created6 = api.cmdb.firewall.address6.create({"name": name6, "ip6": "2001:db8::20/128"})
    check("create address6", created6.status_code == 200, created6.text)
    [got6] = api.cmdb.firewall.address6.get(name=name6)
    check("address6: prefix and uuid", got6["ip6"] == "2001:db8::20/128" and len(got6["uuid"]) == 36, got6)

    # Groups.
    group = PREFIX + "group"
    made = addrgrp.create({"name": group, "member": [{"name": name}], "comment": "contract"})
    check("create group", made.status_code == 200, made.text)
    [g] = addrgrp.get(name=group)
    check("group: members and uuid", [m["name"] for m in g["member"]] == [name] and len(g["uuid"]) == 36, g)
    in_use = address.delete(name)
    check("delete an address still in a group: -23", in_use.status_code == 500 and error_of(in_use) == -23,
          in_use.text)
    grown = addrgrp.update({"name": group, "member": [{"name": name}, {"name": seeded}]})
    check("update group members", grown.status_code == 200, grown.text)
    check("group: two members", len(addrgrp.get(name=group)[0]["member"]) == 2)
    missing_member = addrgrp.update({"name": group, "member": [{"name": PREFIX + "nobody"}]})
    check("group member that does not exist: -3", error_of(missing_member) == -3, missing_member.text)

    # Schema.
    schema = api.fortigate.get("api/v2/cmdb/firewall/address?action=schema").json()["results"]
    check("schema: address", schema["mkey"] == "name" and schema["children"]["name"]["size"] == 79, schema)
    schema = api.fortigate.get("api/v2/cmdb/firewall/addrgrp?action=schema").json()["results"]
    check("schema: addrgrp members", schema["children"]["member"]["category"] == "table", schema)

    # Clean up: group first (it references the address), then the addresses.
    check("delete group", addrgrp.delete(group).status_code == 200)
    check("delete address", address.delete(name).status_code == 200)
    check("delete address6", api.cmdb.firewall.address6.delete(name6).status_code == 200)
    gone = address.delete(name)
    check("delete again: 404", gone.status_code == 404 and error_of(gone) == -3, gone.text)
    left = [a["name"] for a in address.get(filter="name=@" + PREFIX)]
    check("nothing left behind", left == [], left)
    api.logout()
    print("fortigate-api contract: all checks passed", flush=True)


if __name__ == "__main__":
    main()
